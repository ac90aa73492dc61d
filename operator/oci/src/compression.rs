//! Layer compression: gzip, zstd or none, with fixed settings so that the same tar stream
//! always compresses to the same bytes (no timestamp or file name in the gzip header, one
//! compression level, single-threaded zstd). Reading detects the format from magic bytes
//! rather than trusting a media type, because Docker-era registries mislabel layers.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};

use flate2::Compression as GzLevel;
use flate2::GzBuilder;
use flate2::bufread::MultiGzDecoder;
use flate2::write::GzEncoder;

use crate::media_type;

/// Gzip level 6 is zlib's and Go's default: the size/speed point registries and other
/// builders use. Fixed because a different level gives different bytes and digests.
const GZIP_LEVEL: u32 = 6;
/// zstd's default level, fixed for the same reason.
const ZSTD_LEVEL: i32 = 3;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// How a layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (the default; every registry and runtime reads it).
    #[default]
    Gzip,
    /// zstd (smaller and faster; needs containerd ≥ 1.5 or a recent CRI-O to run).
    Zstd,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            Compression::None => media_type::OCI_LAYER_TAR,
            Compression::Gzip => media_type::OCI_LAYER_TAR_GZIP,
            Compression::Zstd => media_type::OCI_LAYER_TAR_ZSTD,
        }
    }

    /// Detects the compression from the first bytes of a stream (four are enough). Anything
    /// that is neither gzip nor zstd is taken as plain tar; the tar reader then rejects what
    /// is not tar either.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&ZSTD_MAGIC) {
            Compression::Zstd
        } else if head.starts_with(&GZIP_MAGIC) {
            Compression::Gzip
        } else {
            Compression::None
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

/// The stream a [`Decoder`] reads: the bytes consumed for detection, then the rest.
pub type Rewound<R> = BufReader<io::Chain<io::Cursor<Vec<u8>>, R>>;

/// A compressing writer; `finish` must be called to write the trailer.
pub enum Encoder<W: Write> {
    /// Pass-through.
    None(W),
    /// gzip.
    Gzip(GzEncoder<W>),
    /// zstd.
    Zstd(zstd::Encoder<'static, W>),
}

impl<W: Write> fmt::Debug for Encoder<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Encoder::None(_) => "none",
            Encoder::Gzip(_) => "gzip",
            Encoder::Zstd(_) => "zstd",
        };
        write!(f, "Encoder({kind})")
    }
}

impl<W: Write> Encoder<W> {
    /// Starts compressing into `inner`.
    pub fn new(inner: W, compression: Compression) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Encoder::None(inner),
            // GzBuilder writes mtime 0 and no file name unless asked: the header is fixed.
            Compression::Gzip => {
                Encoder::Gzip(GzBuilder::new().write(inner, GzLevel::new(GZIP_LEVEL)))
            }
            Compression::Zstd => Encoder::Zstd(zstd::Encoder::new(inner, ZSTD_LEVEL)?),
        })
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

/// A decompressing reader over a stream whose compression was detected from its magic.
pub enum Decoder<R: BufRead> {
    /// Plain.
    None(R),
    /// gzip; multi-member streams (concatenated gzip) are read to the end.
    Gzip(Box<MultiGzDecoder<R>>),
    /// zstd.
    Zstd(zstd::Decoder<'static, R>),
}

impl<R: BufRead> fmt::Debug for Decoder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Decoder::None(_) => "none",
            Decoder::Gzip(_) => "gzip",
            Decoder::Zstd(_) => "zstd",
        };
        write!(f, "Decoder({kind})")
    }
}

impl<R: Read> Decoder<Rewound<R>> {
    /// Detects the compression of `reader` and decodes it. The magic is read with a loop
    /// rather than peeked, because a pipe may deliver fewer bytes than a buffer refill asks.
    pub fn detect(mut reader: R) -> io::Result<(Compression, Self)> {
        let mut head = vec![0u8; ZSTD_MAGIC.len()];
        let mut filled = 0;
        while filled < head.len() {
            match reader.read(&mut head[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        head.truncate(filled);
        let compression = Compression::detect(&head);
        let buffered = BufReader::with_capacity(128 * 1024, io::Cursor::new(head).chain(reader));
        let decoder = match compression {
            Compression::None => Decoder::None(buffered),
            Compression::Gzip => Decoder::Gzip(Box::new(MultiGzDecoder::new(buffered))),
            Compression::Zstd => Decoder::Zstd(zstd::Decoder::with_buffer(buffered)?),
        };
        Ok((compression, decoder))
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::None(r) => r.read(buf),
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(c: Compression) -> Vec<u8> {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut enc = Encoder::new(Vec::new(), c).unwrap();
        enc.write_all(&data).unwrap();
        let compressed = enc.finish().unwrap();
        let (detected, mut dec) = Decoder::detect(&compressed[..]).unwrap();
        assert_eq!(detected, c);
        let mut out = Vec::new();
        dec.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        compressed
    }

    #[test]
    fn all_compressions_round_trip_and_are_detected() {
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(round_trip(c), round_trip(c), "{c} is not deterministic");
        }
    }

    #[test]
    fn gzip_header_has_no_time_or_name() {
        let gz = round_trip(Compression::Gzip);
        // Bytes 4..8 are MTIME; FLG (byte 3) must not announce FNAME or FCOMMENT.
        assert_eq!(&gz[4..8], &[0, 0, 0, 0]);
        assert_eq!(gz[3] & 0b0001_1000, 0);
    }

    #[test]
    fn short_input_is_plain() {
        let (c, _) = Decoder::detect(&b"ab"[..]).unwrap();
        assert_eq!(c, Compression::None);
    }
}
