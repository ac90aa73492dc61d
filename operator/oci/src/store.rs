//! The content-addressed blob store on the cache volume: `<root>/blobs/sha256/<hex>`.
//!
//! Contract: a blob file, once it has its final name, is complete, verified and never
//! written again. Writers stream into a uniquely named temporary file in the same directory
//! (`.tmp-*`), fsync it, and rename it into place; when two processes put the same blob, both
//! renames carry identical bytes, so whichever lands last changes nothing a reader can see.
//! Readers therefore need no locks. Temporary files left by a crashed writer are named
//! `.tmp-*` and are for the garbage collector to remove by age.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::TempPath;

use crate::digest::{Digest, HashingWriter};

const TMP_PREFIX: &str = ".tmp-";
/// Blobs are read-only: nothing may rewrite one in place.
const BLOB_MODE: u32 = 0o444;
const WRITE_BUFFER: usize = 256 * 1024;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error, with the path it concerns.
    #[error("content store: {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The blob is not in the store.
    #[error("content store: blob {digest} not found at {path}")]
    NotFound {
        /// The missing digest.
        digest: Digest,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// What was written does not have the digest the caller promised.
    #[error("content store: expected {expected} but the data written has digest {actual}")]
    DigestMismatch {
        /// The promised digest.
        expected: Digest,
        /// The digest of the data.
        actual: Digest,
    },
    /// What was written does not have the size the caller promised.
    #[error("content store: blob {digest} was expected to be {expected} bytes but is {actual}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The promised size.
        expected: u64,
        /// The actual size.
        actual: u64,
    },
    /// A blob asked for in memory is larger than the caller allows.
    #[error("content store: blob {digest} is {size} bytes, more than the {limit} allowed here")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A stored blob's digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// A content-addressed store rooted at a directory.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
    blobs: PathBuf,
}

impl ContentStore {
    /// Opens the store at `root`, creating `blobs/sha256` if needed (concurrent creation by
    /// several processes is fine).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        let blobs = stagecoach_protocol::CacheLayout::new(&root)
            .blobs()
            .join("sha256");
        fs::create_dir_all(&blobs).map_err(io_err("create directory", &blobs))?;
        Ok(ContentStore { root, blobs })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding the blobs (`<root>/blobs/sha256`).
    pub fn blobs_dir(&self) -> &Path {
        &self.blobs
    }

    /// Where a blob lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Whether the blob is present.
    pub fn exists(&self, digest: &Digest) -> Result<bool, StoreError> {
        let path = self.blob_path(digest);
        match fs::symlink_metadata(&path) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("inspect", &path)(e)),
        }
    }

    /// Marks a blob as used now (its mtime), when it is stored again: garbage collection
    /// of a shared cache removes unreferenced blobs by age, and a blob a build just asked for
    /// is not old. Best effort: a store that cannot be touched still works.
    pub fn touch(&self, digest: &Digest) {
        if let Ok(f) = fs::File::open(self.blob_path(digest)) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// The blob's size.
    pub fn size(&self, digest: &Digest) -> Result<u64, StoreError> {
        let path = self.blob_path(digest);
        match fs::symlink_metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound {
                digest: digest.clone(),
                path,
            }),
            Err(e) => Err(io_err("inspect", &path)(e)),
        }
    }

    /// Opens the blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, StoreError> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::NotFound {
                    digest: digest.clone(),
                    path: path.clone(),
                }
            } else {
                io_err("open", &path)(e)
            }
        })
    }

    /// Reads a small blob (a manifest or config) into memory, refusing anything larger than
    /// `limit` bytes so a layer is never loaded by mistake.
    pub fn read_to_vec(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, StoreError> {
        let size = self.size(digest)?;
        if size > limit {
            return Err(StoreError::TooLarge {
                digest: digest.clone(),
                size,
                limit,
            });
        }
        let path = self.blob_path(digest);
        let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        self.open_blob(digest)?
            .take(limit.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(io_err("read", &path))?;
        Ok(buf)
    }

    /// Starts writing a new blob whose digest is not known yet.
    pub fn writer(&self) -> Result<BlobWriter, StoreError> {
        let tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(&self.blobs)
            .map_err(io_err("create temporary file in", &self.blobs))?;
        let (file, tmp) = tmp.into_parts();
        Ok(BlobWriter {
            store: self.clone(),
            tmp,
            out: HashingWriter::new(BufWriter::with_capacity(WRITE_BUFFER, file)),
        })
    }

    /// Streams `reader` into the store. With `expected`, the data must have that digest or
    /// nothing is stored; if the blob is already present, `reader` is not read at all.
    pub fn put<R: Read>(
        &self,
        mut reader: R,
        expected: Option<&Digest>,
    ) -> Result<BlobInfo, StoreError> {
        if let Some(d) = expected
            && self.exists(d)?
        {
            self.touch(d);
            return Ok(BlobInfo {
                digest: d.clone(),
                size: self.size(d)?,
            });
        }
        let mut w = self.writer()?;
        let tmp_path = w.tmp.to_path_buf();
        io::copy(&mut reader, &mut w).map_err(io_err("write", &tmp_path))?;
        match expected {
            Some(d) => w.commit_expected(d, None),
            None => w.commit(),
        }
    }

    /// Stores a byte slice.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<BlobInfo, StoreError> {
        let digest = Digest::of_bytes(bytes);
        self.put(bytes, Some(&digest))
    }

    /// Re-reads a blob and checks that its content still has its name's digest.
    pub fn verify(&self, digest: &Digest) -> Result<(), StoreError> {
        let path = self.blob_path(digest);
        let mut f = self.open_blob(digest)?;
        let mut h = HashingWriter::new(io::sink());
        io::copy(&mut f, &mut h).map_err(io_err("read", &path))?;
        let (_, actual, _) = h.finish();
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Makes `digest` present in `other` as well: a hard link when both stores share a
    /// filesystem (blobs are immutable, so sharing the inode is safe), a verified copy
    /// otherwise.
    pub fn copy_blob_to(&self, digest: &Digest, other: &ContentStore) -> Result<(), StoreError> {
        if other.exists(digest)? {
            other.touch(digest);
            return Ok(());
        }
        let src = self.blob_path(digest);
        let dst = other.blob_path(digest);
        match fs::hard_link(&src, &dst) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            // Any other failure (another filesystem, links not allowed): copy instead.
            Err(_) => {}
        }
        let f = self.open_blob(digest)?;
        other.put(f, Some(digest)).map(|_| ())
    }
}

/// A blob being written. Dropping it without `commit` deletes the temporary file.
#[derive(Debug)]
pub struct BlobWriter {
    store: ContentStore,
    tmp: TempPath,
    out: HashingWriter<BufWriter<File>>,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.out.size()
    }

    /// Finishes the blob and moves it to its content address.
    pub fn commit(self) -> Result<BlobInfo, StoreError> {
        self.finish(None, None)
    }

    /// Finishes the blob only if it has the expected digest (and size, when given).
    pub fn commit_expected(
        self,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobInfo, StoreError> {
        self.finish(Some(expected), expected_size)
    }

    fn finish(
        self,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<BlobInfo, StoreError> {
        let BlobWriter { store, tmp, out } = self;
        let (buffered, digest, size) = out.finish();
        let tmp_path = tmp.to_path_buf();
        let file = buffered
            .into_inner()
            .map_err(|e| io_err("write", &tmp_path)(e.into_error()))?;
        if let Some(exp) = expected
            && exp != &digest
        {
            return Err(StoreError::DigestMismatch {
                expected: exp.clone(),
                actual: digest,
            });
        }
        if let Some(exp) = expected_size
            && exp != size
        {
            return Err(StoreError::SizeMismatch {
                digest,
                expected: exp,
                actual: size,
            });
        }
        let info = BlobInfo {
            digest: digest.clone(),
            size,
        };
        let dst = store.blob_path(&digest);
        if store.exists(&digest)? {
            // Someone stored it first; ours is dropped (and deleted) unused.
            store.touch(&digest);
            return Ok(info);
        }
        file.set_permissions(fs::Permissions::from_mode(BLOB_MODE))
            .map_err(io_err("set permissions on", &tmp_path))?;
        // Data must be on disk before the name is, or a crash could leave a complete-looking
        // name over a partly written file.
        file.sync_all().map_err(io_err("sync", &tmp_path))?;
        drop(file);
        tmp.persist(&dst)
            .map_err(|e| io_err("rename temporary file to", &dst)(e.error))?;
        sync_dir(store.blobs_dir())?;
        Ok(info)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Makes a rename durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    crate::atomic::sync_dir(dir).map_err(io_err("sync directory", dir))
}
