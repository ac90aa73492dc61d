//! Filesystem snapshots: a metadata-only walk of a root filesystem (lstat, link targets and a
//! cheap hash of xattrs; file contents are never read) and the diff of two walks into the
//! ordered [`Change`] list `stagecoach-oci` writes as a layer. This is how the executor finds
//! what a RUN (or COPY, or WORKDIR) changed without an overlay filesystem: walk before, run,
//! walk after, diff.
//!
//! Choices worth knowing:
//! - An entry counts as modified when any of type, mode, owner, size, mtime (with
//!   nanoseconds), ctime, inode, device, link target or xattrs differ. ctime is included
//!   because chmod, chown and link-count changes move it even when mtime is kept; the price is
//!   that a content-identical rewrite is "modified" and lands in the layer again, which is
//!   what BuildKit's and kaniko's metadata differs do as well. Contents are never compared:
//!   reading every file after every step is what this walk exists to avoid. Directories are
//!   the exception for ctime: runc (and the executor's own mount stubs) create and remove
//!   mount points and restore the parent's mtime, which only ctime would still show, and a
//!   directory's own chmod/chown/xattr changes are compared directly anyway.
//! - A directory whose inode changed (removed and made again) is written as *opaque*: all its
//!   current contents plus the opaque marker, so nothing of the old one shows through. A
//!   directory that stayed gets per-path whiteouts for what disappeared from it instead.
//! - Excluded paths are never walked and never reported: mount points of this process under
//!   the root (from `/proc/self/mountinfo`), the executor's own directories, and the contents
//!   of `/proc`, `/sys` and `/dev` (the directories themselves are kept, as images carry them).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use stagecoach_oci::Change;

/// Errors walking a root.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A directory or entry could not be read.
    #[error("snapshot: cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The root is not a directory.
    #[error("snapshot: {0} is not a directory")]
    NotADirectory(PathBuf),
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The type of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Block or character device.
    Device,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

/// The metadata of one path, as lstat sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    /// Type.
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Status-change time (seconds, nanoseconds).
    pub ctime: (i64, i64),
    /// Inode number.
    pub ino: u64,
    /// Device holding the entry.
    pub dev: u64,
    /// Device number for device nodes.
    pub rdev: u64,
    /// Symlink target.
    pub link: Option<OsString>,
    /// FNV-1a over xattr names and values (0 when there are none).
    pub xattrs: u64,
}

impl EntryMeta {
    fn from_metadata(meta: &Metadata) -> Self {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            EntryKind::Symlink
        } else if ft.is_block_device() || ft.is_char_device() {
            EntryKind::Device
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_socket() {
            EntryKind::Socket
        } else {
            EntryKind::File
        };
        EntryMeta {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
            rdev: meta.rdev(),
            link: None,
            xattrs: 0,
        }
    }
}

/// One walked path, relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// Path relative to the root (never empty: the root itself is not listed).
    pub path: PathBuf,
    /// Its metadata.
    pub meta: EntryMeta,
}

/// What to leave out of a walk. Paths are relative to the root.
#[derive(Debug, Clone, Default)]
pub struct SnapshotOptions {
    /// Paths skipped entirely (not listed, not descended into).
    pub exclude: HashSet<PathBuf>,
    /// Directories that are listed but whose contents are not walked.
    pub skip_contents: HashSet<PathBuf>,
    /// Whether to read xattrs (off saves one syscall per entry on filesystems without them).
    pub xattrs: bool,
}

impl SnapshotOptions {
    /// The defaults for a stage root: `/proc`, `/sys` and `/dev` contents skipped, mount
    /// points of this process under `root` excluded, and the given own directories
    /// (absolute host paths, or paths under `root`) excluded.
    pub fn for_root(root: &Path, own_dirs: &[PathBuf]) -> Result<Self, SnapshotError> {
        let mut options = SnapshotOptions {
            xattrs: true,
            ..SnapshotOptions::default()
        };
        for d in ["proc", "sys", "dev"] {
            options.skip_contents.insert(PathBuf::from(d));
        }
        let mountinfo = match std::fs::read("/proc/self/mountinfo") {
            Ok(bytes) => bytes,
            // No /proc (unusual sandboxes): nothing is mounted that we could see anyway.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("read", Path::new("/proc/self/mountinfo"))(e)),
        };
        let canonical_root = std::fs::canonicalize(root).map_err(io_err("resolve", root))?;
        for point in mount_points(&mountinfo) {
            if let Some(rel) = relative_under(&canonical_root, &point) {
                options.exclude.insert(rel);
            }
        }
        for dir in own_dirs {
            let rel = if dir.is_absolute() {
                let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
                relative_under(&canonical_root, &abs)
            } else {
                Some(dir.clone())
            };
            if let Some(rel) = rel {
                options.exclude.insert(rel);
            }
        }
        Ok(options)
    }

    /// Adds a path (relative to the root, a leading `/` allowed) to skip entirely.
    pub fn exclude(&mut self, path: &Path) {
        if let Some(rel) = clean_relative(path) {
            self.exclude.insert(rel);
        }
    }
}

/// `path` relative to `root` when it is strictly below it.
fn relative_under(root: &Path, path: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix(root).ok()?;
    (!rel.as_os_str().is_empty()).then(|| rel.to_owned())
}

fn clean_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Mount points listed in a `/proc/<pid>/mountinfo` text (field 5, octal escapes decoded).
pub fn mount_points(mountinfo: &[u8]) -> Vec<PathBuf> {
    mountinfo
        .split(|b| *b == b'\n')
        .filter_map(|line| line.split(|b| *b == b' ').nth(4))
        .filter(|f| !f.is_empty())
        .map(|f| PathBuf::from(OsString::from_vec(unescape_octal(f))))
        .collect()
}

/// The kernel escapes space, tab, newline and backslash in mountinfo as `\ooo`.
fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 3 < field.len()
            && field[i + 1..i + 4]
                .iter()
                .all(|d| (b'0'..=b'7').contains(d))
        {
            let v = field[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// A walk of a root: every path below it (minus exclusions) in component order, which is
/// pre-order with sorted siblings, so parents come before their children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The entries, sorted by path components.
    pub entries: Vec<SnapshotEntry>,
}

impl Snapshot {
    /// Walks `root` (which must be a directory).
    pub fn take(root: &Path, options: &SnapshotOptions) -> Result<Snapshot, SnapshotError> {
        let meta = std::fs::metadata(root).map_err(io_err("inspect", root))?;
        if !meta.is_dir() {
            return Err(SnapshotError::NotADirectory(root.to_owned()));
        }
        let mut walker = Walker {
            root,
            options,
            entries: Vec::new(),
            xattr_buf: vec![0; 1024],
        };
        walker.dir(Path::new(""))?;
        Ok(Snapshot {
            entries: walker.entries,
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the walk found nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks an entry up by relative path.
    pub fn get(&self, path: &Path) -> Option<&EntryMeta> {
        self.entries
            .binary_search_by(|e| e.path.as_path().cmp(path))
            .ok()
            .and_then(|i| self.entries.get(i))
            .map(|e| &e.meta)
    }
}

struct Walker<'a> {
    root: &'a Path,
    options: &'a SnapshotOptions,
    entries: Vec<SnapshotEntry>,
    xattr_buf: Vec<u8>,
}

impl Walker<'_> {
    fn dir(&mut self, rel: &Path) -> Result<(), SnapshotError> {
        let full = self.root.join(rel);
        let read = std::fs::read_dir(&full).map_err(io_err("read directory", &full))?;
        let mut children: Vec<(OsString, Metadata)> = Vec::new();
        for entry in read {
            let entry = entry.map_err(io_err("read directory", &full))?;
            // DirEntry::metadata is an fstatat relative to the open directory: no path
            // resolution from the root for each of 100 000 files.
            let meta = entry
                .metadata()
                .map_err(|e| io_err("inspect", &entry.path())(e))?;
            children.push((entry.file_name(), meta));
        }
        children.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (name, meta) in children {
            let child = rel.join(&name);
            if self.options.exclude.contains(&child) {
                continue;
            }
            let mut em = EntryMeta::from_metadata(&meta);
            let child_full = self.root.join(&child);
            if em.kind == EntryKind::Symlink {
                em.link = Some(
                    std::fs::read_link(&child_full)
                        .map_err(io_err("read link", &child_full))?
                        .into_os_string(),
                );
            }
            if self.options.xattrs {
                em.xattrs = self.xattr_hash(&child_full)?;
            }
            let is_dir = em.kind == EntryKind::Dir;
            self.entries.push(SnapshotEntry {
                path: child.clone(),
                meta: em,
            });
            if is_dir && !self.options.skip_contents.contains(&child) {
                self.dir(&child)?;
            }
        }
        Ok(())
    }

    fn xattr_hash(&mut self, path: &Path) -> Result<u64, SnapshotError> {
        let names = match read_xattr_list(path, &mut self.xattr_buf) {
            Ok(n) => n,
            // No xattr support on this filesystem: nothing to compare.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => {
                return Ok(0);
            }
            Err(e) => return Err(io_err("list xattrs of", path)(e)),
        };
        if names.is_empty() {
            return Ok(0);
        }
        let mut h = Fnv::new();
        for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            h.write(name);
            h.write(&[0]);
            let value = read_xattr(path, OsStr::from_bytes(name))
                .map_err(|e| io_err("read xattr of", path)(e))?;
            h.write(&(value.len() as u64).to_le_bytes());
            h.write(&value);
        }
        Ok(h.0)
    }
}

fn read_xattr_list(path: &Path, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    loop {
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(n) => return Ok(buf[..n].to_vec()),
            Err(rustix::io::Errno::RANGE) => {
                let need: usize = rustix::fs::llistxattr(path, &mut [0u8; 0][..])?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn read_xattr(path: &Path, name: &OsStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => {
                let need: usize = rustix::fs::lgetxattr(path, name, &mut [0u8; 0][..])?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// FNV-1a, 64 bits: xattrs only need a change detector, not a cryptographic hash.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Whether `b` differs from `a` in anything the layer would carry (or that reveals a content
/// change: size, mtime, ctime, inode).
fn modified(a: &EntryMeta, b: &EntryMeta) -> bool {
    a.kind != b.kind
        || a.mode != b.mode
        || a.uid != b.uid
        || a.gid != b.gid
        || a.mtime != b.mtime
        // A directory's ctime also moves when a runtime adds and removes a mount point in
        // it and restores its mtime; mode, owner and xattr changes are compared directly.
        || (a.kind != EntryKind::Dir && a.ctime != b.ctime)
        || a.link != b.link
        || a.xattrs != b.xattrs
        || a.rdev != b.rdev
        // A directory's size is filesystem bookkeeping; its changes show in mtime anyway.
        || (a.kind != EntryKind::Dir && (a.size != b.size || a.ino != b.ino || a.dev != b.dev))
}

/// The changes from `before` to `after`, for [`stagecoach_oci::write_layer`]:
/// - added or modified paths: [`Change::Write`] (a directory alone; new children get their
///   own entries);
/// - removed paths: one [`Change::Delete`] for the topmost removed path only;
/// - a directory replaced by a file (or the reverse): a `Write` of the new entry, which
///   replaces the old one when applied; the old directory's children are not listed;
/// - a directory removed and made again (new inode): [`Change::Opaque`], and nothing below it.
pub fn diff(before: &Snapshot, after: &Snapshot) -> Vec<Change> {
    let a = &before.entries;
    let b = &after.entries;
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    let skip_under = |entries: &[SnapshotEntry], mut k: usize, dir: &Path| -> usize {
        while k < entries.len() && entries[k].path.starts_with(dir) {
            k += 1;
        }
        k
    };
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.path.as_path().cmp(y.path.as_path()),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let old = &a[i];
                out.push(Change::Delete(old.path.clone()));
                i = skip_under(a, i + 1, &old.path);
            }
            std::cmp::Ordering::Greater => {
                out.push(Change::Write(b[j].path.clone()));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (old, new) = (&a[i], &b[j]);
                let old_dir = old.meta.kind == EntryKind::Dir;
                let new_dir = new.meta.kind == EntryKind::Dir;
                if old_dir && new_dir && old.meta.ino != new.meta.ino {
                    out.push(Change::Opaque(new.path.clone()));
                    i = skip_under(a, i + 1, &old.path);
                    j = skip_under(b, j + 1, &new.path);
                    continue;
                }
                if modified(&old.meta, &new.meta) {
                    out.push(Change::Write(new.path.clone()));
                }
                i += 1;
                j += 1;
                if old_dir && !new_dir {
                    i = skip_under(a, i, &old.path);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields_are_decoded() {
        let text = b"22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                     30 22 0:5 / /a\\040b rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mount_points(text),
            [PathBuf::from("/proc"), PathBuf::from("/a b")]
        );
    }

    #[test]
    fn clean_relative_paths() {
        assert_eq!(
            clean_relative(Path::new("/run/secrets/x")),
            Some(PathBuf::from("run/secrets/x"))
        );
        assert_eq!(clean_relative(Path::new("/")), None);
    }

    fn take(root: &Path) -> Snapshot {
        Snapshot::take(root, &SnapshotOptions::default()).unwrap()
    }

    fn changes(before: &Snapshot, after: &Snapshot) -> Vec<String> {
        let mut v: Vec<String> = diff(before, after)
            .into_iter()
            .map(|c| match c {
                Change::Write(p) => format!("W {}", p.display()),
                Change::WriteTree(p) => format!("T {}", p.display()),
                Change::Delete(p) => format!("D {}", p.display()),
                Change::Opaque(p) => format!("O {}", p.display()),
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn diff_covers_adds_edits_deletes_and_replacements() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for d in ["keep", "gone/deep", "todir", "redo/old", "asfile"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("keep/same"), "x").unwrap();
        std::fs::write(r.join("keep/edit"), "x").unwrap();
        std::fs::write(r.join("keep/mode"), "x").unwrap();
        std::fs::write(r.join("gone/deep/f"), "x").unwrap();
        std::fs::write(r.join("todir/f"), "x").unwrap();
        std::fs::write(r.join("redo/old/f"), "x").unwrap();
        std::fs::write(r.join("asfile/f"), "x").unwrap();
        std::fs::write(r.join("file2dir"), "x").unwrap();
        let before = take(r);
        assert!(before.get(Path::new("keep/same")).is_some());

        std::fs::write(r.join("keep/edit"), "yy").unwrap();
        std::fs::set_permissions(
            r.join("keep/mode"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(r.join("keep/new"), "n").unwrap();
        std::fs::remove_dir_all(r.join("gone")).unwrap();
        std::fs::remove_file(r.join("todir/f")).unwrap();
        // Made before the old one goes, so the inode cannot be reused (it would be on tmpfs,
        // and then the right answer is per-path whiteouts instead).
        std::fs::create_dir_all(r.join("redo.tmp/new")).unwrap();
        std::fs::remove_dir_all(r.join("redo")).unwrap();
        std::fs::rename(r.join("redo.tmp"), r.join("redo")).unwrap();
        std::fs::remove_dir_all(r.join("asfile")).unwrap();
        std::fs::write(r.join("asfile"), "now a file").unwrap();
        std::fs::remove_file(r.join("file2dir")).unwrap();
        std::fs::create_dir(r.join("file2dir")).unwrap();
        std::fs::write(r.join("file2dir/x"), "x").unwrap();
        let after = take(r);
        assert_eq!(
            changes(&before, &after),
            [
                "D gone",
                "D todir/f",
                "O redo",
                "W asfile",
                "W file2dir",
                "W file2dir/x",
                "W keep",
                "W keep/edit",
                "W keep/mode",
                "W keep/new",
                "W todir",
            ]
        );
        assert!(changes(&after, &take(r)).is_empty(), "a walk is stable");
    }

    #[test]
    fn exclusions_are_not_walked() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for d in ["proc/1", "mnt/cache", "own"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("own/x"), "x").unwrap();
        let mut options = SnapshotOptions::for_root(r, &[r.join("own")]).unwrap();
        options.exclude(Path::new("/mnt/cache"));
        let s = Snapshot::take(r, &options).unwrap();
        let paths: Vec<_> = s.entries.iter().map(|e| e.path.clone()).collect();
        assert_eq!(
            paths,
            [PathBuf::from("mnt"), PathBuf::from("proc")],
            "proc kept without contents; own dir and excluded path skipped"
        );
    }
}
