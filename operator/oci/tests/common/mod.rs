//! Shared helpers for the integration tests: building trees with every kind of file, and
//! describing a tree completely so that two trees can be compared.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, FileTimes};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Everything a layer should carry about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub content: Vec<u8>,
    pub link: Option<PathBuf>,
    pub rdev: (u32, u32),
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// For multiply-linked files: the first path (in sorted order) sharing the inode.
    pub hardlink_group: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
pub struct SnapshotOptions {
    /// Clamp mtimes as a layer with this SOURCE_DATE_EPOCH would.
    pub clamp: Option<i64>,
    /// Compare directory mtimes (tools differ in whether they restore them).
    pub dir_mtimes: bool,
    pub owners: bool,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            clamp: None,
            dir_mtimes: true,
            owners: true,
        }
    }
}

pub fn snapshot(root: &Path, opts: SnapshotOptions) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root)
        .min_depth(1)
        .sort_by_file_name()
        .follow_links(false)
    {
        let entry = entry.unwrap();
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap().to_owned();
        let m = fs::symlink_metadata(path).unwrap();
        let ft = m.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else {
            "other"
        };
        let mut mtime = m.mtime();
        if let Some(c) = opts.clamp {
            mtime = mtime.min(c);
        }
        if kind == "dir" && !opts.dir_mtimes {
            mtime = 0;
        }
        let hardlink_group = if kind == "file" && m.nlink() > 1 {
            Some(
                inodes
                    .entry((m.dev(), m.ino()))
                    .or_insert_with(|| rel.clone())
                    .clone(),
            )
        } else {
            None
        };
        out.insert(
            rel,
            Node {
                kind,
                mode: m.mode() & 0o7777,
                uid: if opts.owners { m.uid() } else { 0 },
                gid: if opts.owners { m.gid() } else { 0 },
                mtime,
                content: if kind == "file" {
                    fs::read(path).unwrap()
                } else {
                    Vec::new()
                },
                link: if kind == "symlink" {
                    Some(fs::read_link(path).unwrap())
                } else {
                    None
                },
                rdev: if kind == "char" || kind == "block" {
                    (rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev()))
                } else {
                    (0, 0)
                },
                xattrs: xattrs(path),
                hardlink_group,
            },
        );
    }
    out
}

pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut names = vec![0u8; 4096];
    let n = match rustix::fs::llistxattr(path, &mut names[..]) {
        Ok(n) => n,
        Err(_) => return BTreeMap::new(),
    };
    let mut out = BTreeMap::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).unwrap().to_owned();
        let mut value = vec![0u8; 4096];
        let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]).unwrap();
        out.insert(name, value[..len].to_vec());
    }
    out
}

/// Asserts two snapshots are equal, printing the first differences readably.
pub fn assert_same_tree(expected: &BTreeMap<PathBuf, Node>, actual: &BTreeMap<PathBuf, Node>) {
    let mut problems = Vec::new();
    for (p, e) in expected {
        match actual.get(p) {
            None => problems.push(format!("missing: {}", p.display())),
            Some(a) if a != e => problems.push(format!(
                "differs: {}\n  want {e:?}\n  got  {a:?}",
                p.display()
            )),
            Some(_) => {}
        }
    }
    for p in actual.keys() {
        if !expected.contains_key(p) {
            problems.push(format!("unexpected: {}", p.display()));
        }
    }
    assert!(
        problems.is_empty(),
        "trees differ:\n{}",
        problems.join("\n")
    );
}

pub fn set_mtime(path: &Path, secs: i64) {
    let ts = Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: ts,
            last_modification: ts,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

pub fn write_file(path: &Path, content: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    let mut f = File::create(path).unwrap();
    f.write_all(content).unwrap();
    f.set_permissions(fs::Permissions::from_mode(mode)).unwrap();
    f.set_times(
        FileTimes::new().set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)),
    )
    .unwrap();
}

pub fn mkdir(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn symlink(target: &str, path: &Path) {
    std::os::unix::fs::symlink(target, path).unwrap();
}

/// A `security.capability` value (VFS_CAP_REVISION_2, effective) granting
/// CAP_NET_BIND_SERVICE, as `setcap cap_net_bind_service+ep` writes it.
pub fn net_bind_capability() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    v.extend_from_slice(&(1u32 << 10).to_le_bytes()); // permitted, low word
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable, low word
    v.extend_from_slice(&0u32.to_le_bytes()); // permitted, high word
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable, high word
    v
}

/// A long path component chain (> 100 bytes in total, each component < 100).
pub fn long_dir() -> PathBuf {
    PathBuf::from("long")
        .join("a".repeat(60))
        .join("b".repeat(60))
        .join("c".repeat(60))
}

type Step = Box<dyn Fn(&Path)>;

/// Builds a tree with every kind of entry a layer must carry. `reverse` creates things in a
/// different order (different inode numbers and directory order on disk) with the same
/// result. Privileged parts (owners, device nodes, file capabilities) only as root.
pub fn build_fixture(root: &Path, reverse: bool) {
    let mut steps: Vec<Step> = vec![
        Box::new(|r| {
            mkdir(&r.join("bin"), 0o755);
            write_file(&r.join("bin/tool"), b"#!/bin/sh\necho tool\n", 0o755);
            write_file(&r.join("bin/setuid"), b"suid", 0o4755);
        }),
        Box::new(|r| {
            mkdir(&r.join("etc"), 0o755);
            write_file(&r.join("etc/config"), b"key=value\n", 0o644);
            symlink("config", &r.join("etc/link-to-config"));
            symlink("/etc/config", &r.join("etc/abs-link"));
            symlink("../nowhere/dangling", &r.join("etc/dangling"));
        }),
        Box::new(|r| {
            mkdir(&r.join("data/sub"), 0o750);
            mkdir(&r.join("data"), 0o755);
            write_file(&r.join("data/hard1"), &vec![7u8; 70_000], 0o640);
            fs::hard_link(r.join("data/hard1"), r.join("data/hard2")).unwrap();
            fs::hard_link(r.join("data/hard1"), r.join("data/sub/hard3")).unwrap();
            mkdir(&r.join("data/empty"), 0o700);
            mkdir(&r.join("tmp"), 0o1777);
        }),
        Box::new(|r| {
            let dir = r.join(long_dir());
            mkdir(&dir, 0o755);
            write_file(&dir.join(format!("{}.txt", "f".repeat(99))), b"long", 0o644);
            let target = "t".repeat(150);
            symlink(&target, &r.join("long/long-target-link"));
        }),
        Box::new(|r| {
            rustix::fs::mknodat(
                CWD,
                r.join("fifo"),
                FileType::Fifo,
                Mode::from_bits_truncate(0o620),
                0,
            )
            .unwrap();
            write_file(&r.join("with-user-xattr"), b"x", 0o644);
            rustix::fs::lsetxattr(
                r.join("with-user-xattr"),
                "user.stagecoach.test",
                b"value\0with nul",
                XattrFlags::empty(),
            )
            .unwrap();
            write_file(&r.join("empty-file"), b"", 0o600);
            write_file(&r.join("future"), b"from the future", 0o644);
        }),
    ];
    if is_root() {
        steps.push(Box::new(|r| {
            write_file(&r.join("owned"), b"owned", 0o640);
            std::os::unix::fs::lchown(r.join("owned"), Some(1234), Some(5678)).unwrap();
            write_file(&r.join("big-ids"), b"big", 0o644);
            std::os::unix::fs::lchown(r.join("big-ids"), Some(3_000_000), Some(4_000_000)).unwrap();
            symlink("owned", &r.join("owned-link"));
            std::os::unix::fs::lchown(r.join("owned-link"), Some(42), Some(43)).unwrap();
            write_file(&r.join("ping"), b"\x7fELF pretend", 0o755);
            rustix::fs::lsetxattr(
                r.join("ping"),
                "security.capability",
                &net_bind_capability(),
                XattrFlags::empty(),
            )
            .unwrap();
            mkdir(&r.join("dev"), 0o755);
            rustix::fs::mknodat(
                CWD,
                r.join("dev/null"),
                FileType::CharacterDevice,
                Mode::from_bits_truncate(0o666),
                rustix::fs::makedev(1, 3),
            )
            .unwrap();
            rustix::fs::mknodat(
                CWD,
                r.join("dev/loop9"),
                FileType::BlockDevice,
                Mode::from_bits_truncate(0o660),
                rustix::fs::makedev(7, 9),
            )
            .unwrap();
        }));
    }
    if reverse {
        steps.reverse();
    }
    for step in &steps {
        step(root);
    }
    // Times last: creating children moved the directories' mtimes.
    let mut t = 1_000_000i64;
    let mut paths: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.unwrap().path().to_owned())
        .collect();
    paths.sort();
    for p in paths {
        t += 17;
        set_mtime(&p, t);
    }
    set_mtime(&root.join("future"), 4_000_000_000);
}

pub fn list_entries(tar_bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(tar_bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            String::from_utf8_lossy(&e.path_bytes()).into_owned()
        })
        .collect()
}

pub fn name(s: &str) -> &OsStr {
    OsStr::from_bytes(s.as_bytes())
}
