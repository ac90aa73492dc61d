//! Measures the snapshot walk and diff on a generated root of 100 000 files (1 000
//! directories of 100 files each, plus a few symlinks), then after changing 100 files.
//! Not a timed test: it prints figures. Run with
//! `cargo run --release -p stagecoach-builder --example snapshot_bench [FILES] [DIR]`.
//! DIR defaults to a temporary directory (on /tmp, so mind whether that is tmpfs).

use std::path::Path;
use std::time::Instant;

use stagecoach_builder::snapshot::{Snapshot, SnapshotOptions, diff};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let files: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let tmp;
    let root: &Path = match args.next() {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            tmp = tempfile::tempdir_in(d)?;
            tmp.path()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path()
        }
    };
    let per_dir = 100;
    let t = Instant::now();
    for i in 0..files {
        let dir = root.join(format!("d{:04}", i / per_dir));
        if i % per_dir == 0 {
            std::fs::create_dir_all(&dir)?;
            std::os::unix::fs::symlink("../d0000", dir.join("link"))?;
        }
        std::fs::write(dir.join(format!("f{:03}", i % per_dir)), b"x")?;
    }
    println!(
        "generated {files} files in {} dirs under {} in {:.2?}",
        files.div_ceil(per_dir),
        root.display(),
        t.elapsed()
    );
    let options = SnapshotOptions::for_root(root, &[])?;
    let mut no_xattrs = options.clone();
    no_xattrs.xattrs = false;
    for round in 1..=3 {
        let t = Instant::now();
        let s = Snapshot::take(root, &options)?;
        let with = t.elapsed();
        let t = Instant::now();
        let s2 = Snapshot::take(root, &no_xattrs)?;
        let without = t.elapsed();
        println!(
            "walk {round}: {} entries, {with:.2?} with xattrs, {without:.2?} without ({} entries)",
            s.len(),
            s2.len()
        );
    }
    let before = Snapshot::take(root, &options)?;
    for i in 0..100 {
        std::fs::write(
            root.join(format!("d{:04}/f000", i * 7 % (files / per_dir))),
            b"yy",
        )?;
    }
    std::fs::remove_dir_all(root.join("d0001"))?;
    let t = Instant::now();
    let after = Snapshot::take(root, &options)?;
    let walk = t.elapsed();
    let t = Instant::now();
    let changes = diff(&before, &after);
    println!(
        "after 100 edits and one removed dir: walk {walk:.2?}, diff {:.2?}, {} changes",
        t.elapsed(),
        changes.len()
    );
    Ok(())
}
