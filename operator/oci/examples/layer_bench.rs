//! Measures the layer writer and applier on a synthetic root filesystem.
//!
//! `cargo run --release -p stagecoach-oci --example layer_bench -- [FILES] [DIR]`
//!
//! Builds a tree of FILES regular files (default 100 000) in directories of 100, with sizes
//! spread between 0 and 8 KiB (mean about 2.6 KiB, like a distribution's /usr) and
//! text-like content so that compression does real work; then writes it as a layer with
//! each compression into a content store on the same filesystem, and applies the gzip layer
//! onto an empty directory. The tree is freshly written, so it is in the page cache: the
//! figures are CPU and syscall cost, not disk reads.

use std::error::Error;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use stagecoach_oci::layer::{
    ApplyOptions, LayerOptions, LayerSource, apply_layer_blob, write_layer,
};
use stagecoach_oci::{Compression, ContentStore};

const WORDS: &[&str] = &[
    "static", "const", "return", "include", "function", "struct", "value", "error", "buffer",
    "the", "of", "and", "layer", "image", "config", "0x1f", "{", "}", "(", ");", "\n", "\t",
];

/// Deterministic pseudo-random numbers (xorshift), so every run builds the same tree.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn build_tree(root: &Path, files: usize) -> Result<u64, Box<dyn Error>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut total = 0u64;
    let mut content = Vec::with_capacity(9000);
    for i in 0..files {
        let dir = root
            .join(format!("d{:03}", i / 10_000))
            .join(format!("e{:03}", (i / 100) % 100));
        if i.is_multiple_of(100) {
            fs::create_dir_all(&dir)?;
        }
        // Skewed sizes: many small files, some larger ones.
        let r = rng.next();
        let size = match r % 10 {
            0..=5 => (r >> 8) % 1024,
            6..=8 => (r >> 8) % 6144,
            _ => (r >> 8) % 8192 + 2048,
        } as usize;
        content.clear();
        while content.len() < size {
            let w = WORDS[(rng.next() % WORDS.len() as u64) as usize];
            content.extend_from_slice(w.as_bytes());
            content.push(b' ');
            if rng.next().is_multiple_of(7) {
                write!(content, "{}", rng.next() % 100_000)?;
            }
        }
        content.truncate(size);
        fs::write(dir.join(format!("f{i:06}.txt")), &content)?;
        total += size as u64;
    }
    Ok(total)
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let files: usize = match args.next() {
        Some(n) => n.parse()?,
        None => 100_000,
    };
    let keep;
    let base: PathBuf = match args.next() {
        Some(d) => PathBuf::from(d),
        None => {
            keep = tempfile::tempdir()?;
            keep.path().to_owned()
        }
    };
    let root = base.join("root");
    fs::create_dir_all(&root)?;
    let t = Instant::now();
    let bytes = build_tree(&root, files)?;
    println!(
        "tree: {files} files, {:.1} MB of content, built in {:.2} s",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let store = ContentStore::open(base.join("store"))?;
    let mut gzip_layer = None;
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let options = LayerOptions {
            compression,
            source_date_epoch: Some(0),
        };
        let t = Instant::now();
        let layer = write_layer(&store, &root, LayerSource::Tree, &options)?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "write {compression:>4}: {:.2} s, {:.0} files/s, {:.1} MB/s of tar ({:.1} MB tar -> {:.1} MB blob), {} entries",
            secs,
            files as f64 / secs,
            layer.uncompressed_size as f64 / 1e6 / secs,
            layer.uncompressed_size as f64 / 1e6,
            layer.size as f64 / 1e6,
            layer.entries
        );
        if compression == Compression::Gzip {
            gzip_layer = Some(layer);
        }
    }
    if let Some(layer) = gzip_layer {
        let dest = base.join("applied");
        fs::create_dir_all(&dest)?;
        let t = Instant::now();
        let stats = apply_layer_blob(
            &store,
            &layer.digest,
            Some(&layer.diff_id),
            &dest,
            &ApplyOptions::default(),
        )?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "apply gzip: {:.2} s, {:.0} entries/s, {:.1} MB/s of tar",
            secs,
            stats.entries as f64 / secs,
            stats.uncompressed_size as f64 / 1e6 / secs
        );
    }
    Ok(())
}
