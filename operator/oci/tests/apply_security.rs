//! Hostile layers: the applier must never create, change or remove anything outside the
//! root, whatever names, links and symlinks a layer carries.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use stagecoach_oci::layer::{ApplyError, ApplyOptions, apply_layer};
use tar::EntryType;

/// Builds a tar with raw names, bypassing the `tar` crate's own `..` checks.
struct Evil {
    builder: tar::Builder<Vec<u8>>,
}

impl Evil {
    fn new() -> Self {
        Evil {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn entry(mut self, name: &str, kind: EntryType, link: &str, data: &[u8]) -> Self {
        let mut h = tar::Header::new_ustar();
        {
            let u = h.as_ustar_mut().unwrap();
            u.name[..name.len()].copy_from_slice(name.as_bytes());
            u.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(if kind == EntryType::Directory {
            0o700
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, EntryType::Regular, "", data)
    }

    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, EntryType::Symlink, target, b"")
    }

    fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name, EntryType::Link, target, b"")
    }

    fn dir(self, name: &str) -> Self {
        self.entry(name, EntryType::Directory, "", b"")
    }

    fn bytes(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

struct Sandbox {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn sandbox() -> Sandbox {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&outside).unwrap();
    write_file(&outside.join("victim"), b"untouched", 0o644);
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
    Sandbox {
        _tmp: tmp,
        root,
        outside,
    }
}

fn outside_untouched(s: &Sandbox) {
    let names: Vec<String> = fs::read_dir(&s.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["victim"],
        "something was written outside the root"
    );
    assert_eq!(fs::read(s.outside.join("victim")).unwrap(), b"untouched");
    let mode = fs::metadata(&s.outside).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755, "the outside directory's mode changed");
    assert_eq!(
        fs::metadata(s.outside.join("victim"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o644
    );
}

fn apply(s: &Sandbox, tar: &[u8]) -> Result<(), ApplyError> {
    apply_layer(&s.root, tar, &ApplyOptions::default()).map(|_| ())
}

#[test]
fn dot_dot_names_are_refused() {
    for name in ["../outside/pwned", "a/../../outside/pwned", "./../pwned"] {
        let s = sandbox();
        let tar = Evil::new().file(name, b"pwned").bytes();
        let err = apply(&s, &tar).unwrap_err();
        assert!(
            matches!(err, ApplyError::PathTraversal { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(".."), "{err}");
        outside_untouched(&s);
    }
}

#[test]
fn whiteouts_cannot_name_dot_or_dot_dot() {
    for name in ["a/.wh..", "a/.wh...", ".wh.."] {
        let s = sandbox();
        let tar = Evil::new().file(name, b"").bytes();
        let err = apply(&s, &tar).unwrap_err();
        assert!(
            matches!(err, ApplyError::PathTraversal { .. }),
            "{name}: {err}"
        );
        outside_untouched(&s);
    }
}

#[test]
fn absolute_names_land_inside_the_root() {
    let s = sandbox();
    let victim = s.outside.join("victim");
    let tar = Evil::new().file(victim.to_str().unwrap(), b"pwned").bytes();
    apply(&s, &tar).unwrap();
    outside_untouched(&s);
    let inside = s.root.join(victim.strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside).unwrap(), b"pwned");
}

#[test]
fn writing_through_an_absolute_symlink_stays_inside() {
    let s = sandbox();
    let out = s.outside.to_str().unwrap().to_owned();
    let tar = Evil::new()
        .symlink("escape", &out)
        .file("escape/pwned", b"pwned")
        .file("escape/victim", b"overwritten")
        .dir("escape/sub/")
        .bytes();
    apply(&s, &tar).unwrap();
    outside_untouched(&s);
    // As in the container, /outside/... inside the root is where the files went.
    let inside = s.root.join(out.trim_start_matches('/'));
    assert_eq!(fs::read(inside.join("pwned")).unwrap(), b"pwned");
    assert_eq!(fs::read(inside.join("victim")).unwrap(), b"overwritten");
    assert!(inside.join("sub").is_dir());
    assert!(
        fs::symlink_metadata(s.root.join("escape"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn writing_through_a_relative_symlink_cannot_climb_out() {
    let s = sandbox();
    let tar = Evil::new()
        .symlink("up", "../../../../../../..")
        .file("up/pwned", b"pwned")
        .symlink("a/b/deeper", "../../../outside")
        .file("a/b/deeper/victim", b"overwritten")
        .bytes();
    apply(&s, &tar).unwrap();
    outside_untouched(&s);
    assert_eq!(fs::read(s.root.join("pwned")).unwrap(), b"pwned");
    assert_eq!(
        fs::read(s.root.join("outside/victim")).unwrap(),
        b"overwritten"
    );
}

#[test]
fn symlink_planted_in_a_lower_layer_is_not_followed_out() {
    let s = sandbox();
    // The lower layer, already applied: a symlink pointing outside (as a real path).
    std::os::unix::fs::symlink(&s.outside, s.root.join("lower-link")).unwrap();
    let tar = Evil::new()
        .file("lower-link/victim", b"overwritten")
        .bytes();
    apply(&s, &tar).unwrap();
    outside_untouched(&s);
}

#[test]
fn replacing_a_symlink_does_not_write_through_it() {
    let s = sandbox();
    let victim = s.outside.join("victim");
    let tar = Evil::new()
        .symlink("link", victim.to_str().unwrap())
        .file("link", b"replaced")
        .bytes();
    apply(&s, &tar).unwrap();
    outside_untouched(&s);
    assert_eq!(fs::read(s.root.join("link")).unwrap(), b"replaced");
}

#[test]
fn directory_metadata_is_not_applied_through_a_later_symlink() {
    let s = sandbox();
    // `d/` asks for mode 0700 (applied at the end), then `d` becomes a symlink outside.
    let tar = Evil::new()
        .dir("d/")
        .symlink("d", s.outside.to_str().unwrap())
        .bytes();
    apply(&s, &tar).unwrap();
    outside_untouched(&s);
}

#[test]
fn hard_links_must_stay_inside() {
    let s = sandbox();
    let tar = Evil::new().hardlink("h", "../outside/victim").bytes();
    let err = apply(&s, &tar).unwrap_err();
    assert!(matches!(err, ApplyError::BadHardLink { .. }), "{err}");

    // An absolute target names a path inside the root, never the host's file.
    let s = sandbox();
    let tar = Evil::new()
        .hardlink("h", s.outside.join("victim").to_str().unwrap())
        .bytes();
    let err = apply(&s, &tar).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    outside_untouched(&s);

    // Nor through a symlinked directory.
    let s = sandbox();
    let tar = Evil::new()
        .symlink("out", s.outside.to_str().unwrap())
        .hardlink("h", "out/victim")
        .bytes();
    let err = apply(&s, &tar).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    outside_untouched(&s);
    assert!(!s.root.join("h").exists());

    // A legitimate link works.
    let s = sandbox();
    let tar = Evil::new().file("a", b"content").hardlink("b", "a").bytes();
    apply(&s, &tar).unwrap();
    assert_eq!(fs::read(s.root.join("b")).unwrap(), b"content");
}

#[test]
fn whiteout_through_a_symlink_does_not_delete_outside() {
    let s = sandbox();
    let tar = Evil::new()
        .symlink("out", s.outside.to_str().unwrap())
        .file("out/.wh.victim", b"")
        .symlink("rel", "../outside")
        .file("rel/.wh.victim", b"")
        .bytes();
    apply(&s, &tar).unwrap();
    outside_untouched(&s);
}

#[test]
fn opaque_marker_through_a_symlink_does_not_clear_outside() {
    let s = sandbox();
    let tar = Evil::new()
        .symlink("out", s.outside.to_str().unwrap())
        .file("out/.wh..wh..opq", b"")
        .symlink("rel", "../outside")
        .file("rel/.wh..wh..opq", b"")
        .bytes();
    apply(&s, &tar).unwrap();
    outside_untouched(&s);
}

#[test]
fn symlink_loops_are_reported() {
    let s = sandbox();
    let tar = Evil::new()
        .symlink("loop1", "loop2")
        .symlink("loop2", "loop1")
        .file("loop1/x", b"")
        .bytes();
    let err = apply(&s, &tar).unwrap_err();
    assert!(matches!(err, ApplyError::SymlinkLoop(_)), "{err}");
}

#[test]
fn truncated_and_garbage_streams_fail_cleanly() {
    let s = sandbox();
    let tar = Evil::new().file("big", &vec![1u8; 10_000]).bytes();
    let err = apply(&s, &tar[..3000]).unwrap_err();
    assert!(matches!(err, ApplyError::Read(_)), "{err}");
    let err = apply(&s, &[0x1f, 0x8b, 0, 1, 2, 3, 4, 5, 6, 7]).unwrap_err();
    assert!(matches!(err, ApplyError::Read(_)), "{err}");
    assert!(Path::new(&s.root).is_dir());
}
