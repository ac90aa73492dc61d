//! Cross-checks with a real tool: GNU tar must read our layers (plain, gzip, zstd) into the
//! same tree we wrote them from, and our applier must read what GNU tar writes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;
use stagecoach_oci::Compression;
use stagecoach_oci::layer::{ApplyOptions, LayerOptions, LayerSource, apply_layer, write_layer_to};

const EPOCH: u64 = 2_000_000_000;

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn gnu_tar() -> bool {
    Command::new("tar")
        .arg("--version")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("GNU tar"))
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn extract_with_gnu_tar(archive: &Path, flag: Option<&str>, dest: &Path) {
    fs::create_dir(dest).unwrap();
    let mut cmd = Command::new("tar");
    if let Some(f) = flag {
        cmd.arg(f);
    }
    cmd.args([
        "--xattrs",
        "--xattrs-include=*",
        "--numeric-owner",
        "--same-permissions",
        "--same-owner",
        "-xf",
    ])
    .arg(archive)
    .arg("-C")
    .arg(dest);
    run(&mut cmd);
}

#[test]
fn gnu_tar_reads_our_layers() {
    if !gnu_tar() {
        eprintln!("skipped: GNU tar not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build_fixture(&src, false);
    let want = snapshot(
        &src,
        SnapshotOptions {
            clamp: Some(EPOCH as i64),
            owners: is_root(),
            ..Default::default()
        },
    );
    let cases = [
        (Compression::None, None, "tar"),
        (Compression::Gzip, Some("-z"), "tar.gz"),
        (Compression::Zstd, Some("--zstd"), "tar.zst"),
    ];
    for (compression, flag, ext) in cases {
        if compression == Compression::Zstd && !have("zstd", "--version") {
            eprintln!("zstd case skipped: zstd not installed");
            continue;
        }
        let archive = tmp.path().join(format!("layer.{ext}"));
        let file = fs::File::create(&archive).unwrap();
        let (_, info) = write_layer_to(
            file,
            &src,
            LayerSource::Tree,
            &LayerOptions {
                compression,
                source_date_epoch: Some(EPOCH),
            },
        )
        .unwrap();
        assert_eq!(info.size, fs::metadata(&archive).unwrap().len());
        // The listing must work and show the long names in full.
        let mut list = Command::new("tar");
        if let Some(f) = flag {
            list.arg(f);
        }
        let listing = run(list.arg("-tvf").arg(&archive));
        let long = long_dir().join(format!("{}.txt", "f".repeat(99)));
        assert!(
            listing.contains(long.to_str().unwrap()),
            "long name missing from:\n{listing}"
        );
        let dest = tmp.path().join(format!("gnu-{ext}"));
        extract_with_gnu_tar(&archive, flag, &dest);
        let got = snapshot(
            &dest,
            SnapshotOptions {
                owners: is_root(),
                ..Default::default()
            },
        );
        assert_same_tree(&want, &got);
        if compression == Compression::Gzip {
            // gzip itself must find the stream intact (CRC and length trailer).
            run(Command::new("gzip").arg("-t").arg(&archive));
        }
    }
}

#[test]
fn we_read_what_gnu_tar_writes() {
    if !gnu_tar() {
        eprintln!("skipped: GNU tar not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build_fixture(&src, false);
    for (flag, format) in [("-z", "posix"), ("--zstd", "gnu"), ("-z", "gnu")] {
        if flag == "--zstd" && !have("zstd", "--version") {
            continue;
        }
        let archive = tmp.path().join(format!("gnu-{format}-{}.tar", &flag[1..]));
        run(Command::new("tar")
            .arg(flag)
            .arg(format!("--format={format}"))
            .args(["--xattrs", "--xattrs-include=*", "--sort=name", "-cf"])
            .arg(&archive)
            .arg("-C")
            .arg(&src)
            .arg("."));
        let dest = tmp.path().join(format!("ours-{format}-{}", &flag[1..]));
        fs::create_dir(&dest).unwrap();
        let f = fs::File::open(&archive).unwrap();
        apply_layer(&dest, f, &ApplyOptions::default()).unwrap();
        // GNU format has no xattrs; compare without them there.
        let mut want = snapshot(&src, SnapshotOptions::default());
        let mut got = snapshot(&dest, SnapshotOptions::default());
        if format == "gnu" {
            for n in want.values_mut().chain(got.values_mut()) {
                n.xattrs.clear();
            }
        }
        assert_same_tree(&want, &got);
    }
}
