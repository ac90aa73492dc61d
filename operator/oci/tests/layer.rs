//! Layer writer and applier against real trees on disk: determinism, round trips of every
//! file kind, whiteouts and opaque directories.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use common::*;
use stagecoach_oci::layer::{
    ApplyOptions, Change, LayerOptions, LayerSource, apply_layer, apply_layer_blob, write_layer,
    write_layer_to,
};
use stagecoach_oci::{Compression, ContentStore, Digest};

const EPOCH: u64 = 2_000_000_000;

fn opts(compression: Compression) -> LayerOptions {
    LayerOptions {
        compression,
        source_date_epoch: Some(EPOCH),
    }
}

fn uncompressed(store: &ContentStore, digest: &Digest) -> Vec<u8> {
    let f = store.open_blob(digest).unwrap();
    let (_, mut dec) = stagecoach_oci::compression::Decoder::detect(f).unwrap();
    let mut out = Vec::new();
    dec.read_to_end(&mut out).unwrap();
    out
}

#[test]
fn same_tree_twice_gives_the_same_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    build_fixture(&a, false);
    build_fixture(&b, true);
    let store = ContentStore::open(tmp.path().join("store")).unwrap();
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let la = write_layer(&store, &a, LayerSource::Tree, &opts(c)).unwrap();
        let la2 = write_layer(&store, &a, LayerSource::Tree, &opts(c)).unwrap();
        let lb = write_layer(&store, &b, LayerSource::Tree, &opts(c)).unwrap();
        assert_eq!(la, la2, "{c}: same tree written twice");
        assert_eq!(la, lb, "{c}: same content built in another order");
        assert_eq!(la.compression, c);
        store.verify(&la.digest).unwrap();
        assert_eq!(store.size(&la.digest).unwrap(), la.size);
        let tar = uncompressed(&store, &la.digest);
        assert_eq!(Digest::of_bytes(&tar), la.diff_id);
        assert_eq!(tar.len() as u64, la.uncompressed_size);
    }
    // Every compression wraps the very same tar.
    let plain = write_layer(&store, &a, LayerSource::Tree, &opts(Compression::None)).unwrap();
    let gz = write_layer(&store, &a, LayerSource::Tree, &opts(Compression::Gzip)).unwrap();
    let zst = write_layer(&store, &a, LayerSource::Tree, &opts(Compression::Zstd)).unwrap();
    assert_eq!(plain.diff_id, gz.diff_id);
    assert_eq!(plain.diff_id, zst.diff_id);
    assert_eq!(plain.digest, plain.diff_id);
    assert_ne!(gz.digest, zst.digest);

    // Touching files after the epoch changes nothing; touching before it does.
    set_mtime(&a.join("etc/config"), EPOCH as i64 + 500);
    let touched = write_layer(&store, &a, LayerSource::Tree, &opts(Compression::Gzip)).unwrap();
    let b_touched = {
        set_mtime(&b.join("etc/config"), EPOCH as i64 + 9_999);
        write_layer(&store, &b, LayerSource::Tree, &opts(Compression::Gzip)).unwrap()
    };
    assert_eq!(touched.digest, b_touched.digest);
    set_mtime(&a.join("etc/config"), 5);
    let older = write_layer(&store, &a, LayerSource::Tree, &opts(Compression::Gzip)).unwrap();
    assert_ne!(older.digest, touched.digest);
}

#[test]
fn write_layer_to_matches_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    build_fixture(&root, false);
    let store = ContentStore::open(tmp.path().join("store")).unwrap();
    let stored = write_layer(&store, &root, LayerSource::Tree, &opts(Compression::Zstd)).unwrap();
    let (bytes, streamed) = write_layer_to(
        Vec::new(),
        &root,
        LayerSource::Tree,
        &opts(Compression::Zstd),
    )
    .unwrap();
    assert_eq!(stored, streamed);
    assert_eq!(Digest::of_bytes(&bytes), stored.digest);
}

#[test]
fn tree_round_trips_through_write_and_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build_fixture(&src, false);
    let store = ContentStore::open(tmp.path().join("store")).unwrap();
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let layer = write_layer(&store, &src, LayerSource::Tree, &opts(c)).unwrap();
        let dst = tmp.path().join(format!("dst-{c}"));
        fs::create_dir(&dst).unwrap();
        let stats = apply_layer_blob(
            &store,
            &layer.digest,
            Some(&layer.diff_id),
            &dst,
            &ApplyOptions::default(),
        )
        .unwrap();
        assert_eq!(stats.compression, c);
        assert_eq!(stats.diff_id, layer.diff_id);
        assert_eq!(stats.skipped_devices, 0);
        let want = snapshot(
            &src,
            SnapshotOptions {
                clamp: Some(EPOCH as i64),
                ..Default::default()
            },
        );
        let got = snapshot(&dst, SnapshotOptions::default());
        assert_same_tree(&want, &got);
        // Spot checks that the comparison really covers what matters.
        assert_eq!(got[Path::new("bin/setuid")].mode, 0o4755);
        assert_eq!(got[Path::new("tmp")].mode, 0o1777);
        assert_eq!(got[Path::new("future")].mtime, EPOCH as i64);
        assert_eq!(
            got[Path::new("data/sub/hard3")].hardlink_group,
            Some(PathBuf::from("data/hard1"))
        );
        assert_eq!(
            got[Path::new("with-user-xattr")].xattrs["user.stagecoach.test"],
            b"value\0with nul"
        );
        if is_root() {
            assert_eq!(got[Path::new("owned")].uid, 1234);
            assert_eq!(got[Path::new("big-ids")].gid, 4_000_000);
            assert_eq!(got[Path::new("owned-link")].uid, 42);
            assert_eq!(got[Path::new("dev/null")].rdev, (1, 3));
            assert_eq!(
                got[Path::new("ping")].xattrs["security.capability"],
                net_bind_capability()
            );
        }
    }
}

#[test]
fn hard_links_are_link_entries_after_the_first_occurrence() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build_fixture(&src, false);
    let (tar, _) = write_layer_to(
        Vec::new(),
        &src,
        LayerSource::Tree,
        &opts(Compression::None),
    )
    .unwrap();
    let mut archive = tar::Archive::new(&tar[..]);
    let mut seen = Vec::new();
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let h = e.header();
        assert_eq!(h.username_bytes(), Some(&b""[..]), "{path} has a uname");
        assert_eq!(h.groupname_bytes(), Some(&b""[..]), "{path} has a gname");
        if path.starts_with("data/hard") || path.starts_with("data/sub/hard") {
            seen.push((
                path,
                h.entry_type(),
                e.link_name_bytes().map(|l| l.into_owned()),
                e.size(),
            ));
        }
    }
    assert_eq!(
        seen,
        vec![
            ("data/hard1".into(), tar::EntryType::Regular, None, 70_000),
            (
                "data/hard2".into(),
                tar::EntryType::Link,
                Some(b"data/hard1".to_vec()),
                0
            ),
            (
                "data/sub/hard3".into(),
                tar::EntryType::Link,
                Some(b"data/hard1".to_vec()),
                0
            ),
        ]
    );
    let names = list_entries(&tar);
    let mut sorted = names.clone();
    sorted
        .sort_by(|a, b| Path::new(a.trim_end_matches('/')).cmp(Path::new(b.trim_end_matches('/'))));
    assert_eq!(names, sorted, "entries are not in path order");
    assert!(names.contains(&"data/".to_owned()), "{names:?}");
    assert!(!names.iter().any(|n| n.is_empty() || n == "./"));
}

/// Lower tree for the change tests.
fn build_lower(root: &Path) {
    mkdir(&root.join("a/sub"), 0o755);
    write_file(&root.join("a/keep"), b"keep v1", 0o644);
    write_file(&root.join("a/gone"), b"gone", 0o644);
    write_file(&root.join("a/sub/x"), b"x", 0o644);
    mkdir(&root.join("d/olddir"), 0o755);
    write_file(&root.join("d/old1"), b"old1", 0o644);
    write_file(&root.join("d/olddir/y"), b"y", 0o644);
    write_file(&root.join("e/file-to-dir"), b"file", 0o644);
    write_file(&root.join("f/dir-to-file/z"), b"z", 0o644);
    symlink("a", &root.join("s"));
    write_file(&root.join("untouched"), b"same", 0o644);
}

#[test]
fn whiteouts_and_opaque_directories_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let lower_src = tmp.path().join("lower");
    fs::create_dir(&lower_src).unwrap();
    build_lower(&lower_src);
    let store = ContentStore::open(tmp.path().join("store")).unwrap();
    let base = write_layer(
        &store,
        &lower_src,
        LayerSource::Tree,
        &opts(Compression::Gzip),
    )
    .unwrap();

    // The "stage": base applied, then modified as a RUN step would.
    let work = tmp.path().join("work");
    fs::create_dir(&work).unwrap();
    apply_layer_blob(&store, &base.digest, None, &work, &ApplyOptions::default()).unwrap();
    fs::remove_file(work.join("a/gone")).unwrap();
    fs::remove_dir_all(work.join("a/sub")).unwrap();
    write_file(&work.join("a/keep"), b"keep v2", 0o600);
    write_file(&work.join("a/new"), b"new", 0o644);
    fs::remove_dir_all(work.join("d")).unwrap();
    mkdir(&work.join("d/newdir"), 0o700);
    write_file(&work.join("d/new1"), b"new1", 0o644);
    write_file(&work.join("d/newdir/w"), b"w", 0o644);
    fs::remove_file(work.join("e/file-to-dir")).unwrap();
    write_file(&work.join("e/file-to-dir/child"), b"child", 0o644);
    fs::remove_dir_all(work.join("f/dir-to-file")).unwrap();
    write_file(&work.join("f/dir-to-file"), b"now a file", 0o644);

    let changes = vec![
        Change::Delete("a/gone".into()),
        Change::Delete("/a/sub".into()),
        Change::Delete("a/sub/x".into()),
        Change::Write("a/keep".into()),
        Change::Write("a/new".into()),
        Change::Opaque("d".into()),
        Change::Delete("d/old1".into()),
        Change::Delete("e/file-to-dir".into()),
        Change::WriteTree("e/file-to-dir".into()),
        Change::Delete("f/dir-to-file".into()),
        Change::Write("./f/dir-to-file".into()),
    ];
    let diff = write_layer(
        &store,
        &work,
        LayerSource::Changes(&changes),
        &opts(Compression::Zstd),
    )
    .unwrap();
    let names = list_entries(&uncompressed(&store, &diff.digest));
    assert_eq!(
        names,
        vec![
            "a/",
            "a/.wh.gone",
            "a/.wh.sub",
            "a/keep",
            "a/new",
            "d/",
            "d/.wh..wh..opq",
            "d/new1",
            "d/newdir/",
            "d/newdir/w",
            "e/",
            "e/file-to-dir/",
            "e/file-to-dir/child",
            "f/",
            "f/dir-to-file",
        ]
    );

    // A fresh root with base + diff must equal the stage's root.
    let replay = tmp.path().join("replay");
    fs::create_dir(&replay).unwrap();
    apply_layer_blob(
        &store,
        &base.digest,
        None,
        &replay,
        &ApplyOptions::default(),
    )
    .unwrap();
    let stats = apply_layer_blob(
        &store,
        &diff.digest,
        Some(&diff.diff_id),
        &replay,
        &ApplyOptions::default(),
    )
    .unwrap();
    assert_eq!(stats.whiteouts, 3);
    let want = snapshot(
        &work,
        SnapshotOptions {
            clamp: Some(EPOCH as i64),
            ..Default::default()
        },
    );
    // Directories not in the diff keep the base's (clamped) times in the replay, while in
    // `work` applying left them as they were: both come from the same base layer.
    assert_same_tree(&want, &snapshot(&replay, SnapshotOptions::default()));
    assert!(!replay.join("d/old1").exists());
    assert!(!replay.join("d/olddir").exists());
    assert_eq!(fs::read(replay.join("a/keep")).unwrap(), b"keep v2");

    // Same changes, listed in another order and with duplicates: same layer.
    let mut shuffled = changes.clone();
    shuffled.reverse();
    shuffled.push(Change::Write("a/new".into()));
    let again = write_layer(
        &store,
        &work,
        LayerSource::Changes(&shuffled),
        &opts(Compression::Zstd),
    )
    .unwrap();
    assert_eq!(again, diff);
}

#[test]
fn opaque_marker_after_children_keeps_them() {
    // Other builders may put the marker after entries of the same directory.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    write_file(&root.join("d/old"), b"old", 0o644);
    write_file(&root.join("d/keepdir/lower"), b"lower", 0o644);
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, kind: tar::EntryType, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add("d/", tar::EntryType::Directory, b"");
    add("d/keepdir/", tar::EntryType::Directory, b"");
    add("d/new", tar::EntryType::Regular, b"new");
    add("d/.wh..wh..opq", tar::EntryType::Regular, b"");
    add("d/after", tar::EntryType::Regular, b"after");
    let tar = b.into_inner().unwrap();
    apply_layer(&root, &tar[..], &ApplyOptions::default()).unwrap();
    let mut names: Vec<String> = walkdir::WalkDir::new(root.join("d"))
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .map(|e| {
            e.unwrap()
                .path()
                .strip_prefix(&root)
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    names.sort();
    assert_eq!(names, vec!["d/after", "d/keepdir", "d/new"]);
}

#[test]
fn change_under_a_symlinked_parent_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    write_file(&root.join("real/file"), b"f", 0o644);
    symlink("real", &root.join("link"));
    let store = ContentStore::open(tmp.path().join("store")).unwrap();
    let err = write_layer(
        &store,
        &root,
        LayerSource::Changes(&[Change::Write("link/file".into())]),
        &opts(Compression::Gzip),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("is not a directory"),
        "unexpected error: {err}"
    );
    let err = write_layer(
        &store,
        &root,
        LayerSource::Changes(&[Change::Write("../outside".into())]),
        &opts(Compression::Gzip),
    )
    .unwrap_err();
    assert!(err.to_string().contains("leaves the root"), "{err}");
    // Nothing half-written is left in the store.
    let leftovers: Vec<_> = fs::read_dir(store.blobs_dir()).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn applying_as_unprivileged_skips_what_needs_root() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build_fixture(&src, false);
    let (tar, _) = write_layer_to(
        Vec::new(),
        &src,
        LayerSource::Tree,
        &opts(Compression::Gzip),
    )
    .unwrap();
    let dst = tmp.path().join("dst");
    fs::create_dir(&dst).unwrap();
    let unprivileged = ApplyOptions {
        privileged: false,
        xattrs: true,
        ..ApplyOptions::default()
    };
    let stats = apply_layer(&dst, &tar[..], &unprivileged).unwrap();
    assert!(dst.join("etc/config").is_file());
    if is_root() {
        // Root can still mknod and set capabilities; nothing needed skipping, but owners
        // were not applied.
        let m = fs::symlink_metadata(dst.join("owned")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&m), 0);
        assert_eq!(stats.skipped_devices, 0);
    }
}

#[test]
fn root_reached_through_a_symlink_and_symlinked_write_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    write_file(&real.join("usr/bin/tool"), b"tool", 0o755);
    symlink("usr/bin", &real.join("bin"));
    symlink("real", &tmp.path().join("alias"));
    let store = ContentStore::open(tmp.path().join("store")).unwrap();
    let o = opts(Compression::None);
    let direct = write_layer(&store, &real, LayerSource::Tree, &o).unwrap();
    let via_link = write_layer(&store, &tmp.path().join("alias"), LayerSource::Tree, &o).unwrap();
    assert_eq!(direct, via_link);
    assert_eq!(direct.entries, 4, "bin, usr/, usr/bin/, usr/bin/tool");

    // WriteTree of a symlink to a directory writes the symlink, not what it points to.
    let (tar, _) = write_layer_to(
        Vec::new(),
        &real,
        LayerSource::Changes(&[Change::WriteTree("bin".into())]),
        &o,
    )
    .unwrap();
    assert_eq!(list_entries(&tar), vec!["bin"]);
}

#[test]
fn protected_paths_are_never_touched() {
    // A layer applied in place over a container's root must leave its mount points alone:
    // an entry for one is skipped, a whiteout of one does nothing, and removing or making
    // opaque a directory that holds one empties the rest of it only.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_file(&src.join("etc/hosts"), b"from the layer", 0o644);
    write_file(
        &src.join("etc/passwd"),
        b"root:x:0:0::/root:/bin/sh\n",
        0o644,
    );
    write_file(&src.join("dev/null"), b"not a device", 0o644);
    mkdir(&src.join("run"), 0o755);
    write_file(&src.join("cache/new"), b"new", 0o644);
    let store = ContentStore::open(tmp.path().join("store")).unwrap();
    let changes = vec![
        Change::Write("etc/hosts".into()),
        Change::Write("etc/passwd".into()),
        Change::Write("dev/null".into()),
        Change::Delete("data".into()),
        Change::Delete("run/secret".into()),
        Change::Opaque("cache".into()),
    ];
    let layer = write_layer(
        &store,
        &src,
        LayerSource::Changes(&changes),
        &opts(Compression::Gzip),
    )
    .unwrap();

    let root = tmp.path().join("root");
    write_file(&root.join("etc/hosts"), b"kubelet's", 0o644);
    write_file(&root.join("dev/null"), b"the device", 0o644);
    write_file(&root.join("data/vol/kept"), b"volume", 0o644);
    write_file(&root.join("data/old"), b"old", 0o644);
    write_file(&root.join("run/secret"), b"s3cret", 0o400);
    write_file(&root.join("cache/mnt/kept"), b"cache volume", 0o644);
    write_file(&root.join("cache/lower"), b"lower", 0o644);
    let options = ApplyOptions {
        protected: ["etc/hosts", "dev", "data/vol", "run/secret", "cache/mnt"]
            .iter()
            .map(|p| root.join(p))
            .collect(),
        ..ApplyOptions::default()
    };
    apply_layer_blob(&store, &layer.digest, Some(&layer.diff_id), &root, &options).unwrap();
    let read = |p: &str| fs::read(root.join(p)).unwrap();
    assert_eq!(read("etc/hosts"), b"kubelet's");
    assert_eq!(
        read("etc/passwd"),
        b"root:x:0:0::/root:/bin/sh\n",
        "others are written"
    );
    assert_eq!(read("dev/null"), b"the device");
    assert_eq!(read("data/vol/kept"), b"volume");
    assert!(
        !root.join("data/old").exists(),
        "the rest of a removed directory goes"
    );
    assert_eq!(read("run/secret"), b"s3cret");
    assert_eq!(read("cache/mnt/kept"), b"cache volume");
    assert!(
        !root.join("cache/lower").exists(),
        "opaque clears what is not protected"
    );
    assert_eq!(read("cache/new"), b"new");

    // Without protection the same layer replaces them (the test can fail).
    let plain = tmp.path().join("plain");
    write_file(&plain.join("etc/hosts"), b"kubelet's", 0o644);
    apply_layer_blob(
        &store,
        &layer.digest,
        None,
        &plain,
        &ApplyOptions::default(),
    )
    .unwrap();
    assert_eq!(
        fs::read(plain.join("etc/hosts")).unwrap(),
        b"from the layer"
    );
}
