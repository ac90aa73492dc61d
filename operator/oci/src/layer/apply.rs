//! The layer applier: extracts a layer (gzip, zstd or plain, detected from magic bytes)
//! onto a root directory, the way a container runtime stacks layers. This is how a stage
//! re-applies its base and parent layers and how a cache hit replays a stored layer.
//!
//! Guarantees: nothing is ever created, changed or removed outside the root. Entry names
//! with `..` and hard links whose target has `..` are refused; parents are resolved inside
//! the root (symlinks followed as the container would see them, see `resolve`); the final
//! component is never followed. An existing file is replaced by unlinking it and creating a
//! new one, never by writing through it, so hard links into lower layers stay intact. The
//! diffID of the layer is computed on the way, so callers can check it against the image
//! config. On error the root is left partly applied: the caller discards it.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, FileTimes, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use tar::EntryType;

use super::{OPAQUE_MARKER, WHITEOUT_META_PREFIX, WHITEOUT_PREFIX, normalize_relative_bytes};
use crate::compression::{Compression, Decoder};
use crate::digest::{Digest, HashingReader};
use crate::rootpath::{RootPathError, resolve_dir};
use crate::store::{ContentStore, StoreError};

const COPY_BUFFER: usize = 128 * 1024;

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A filesystem operation under the root failed.
    #[error("layer applier: cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The layer stream is not a readable (compressed) tar.
    #[error("layer applier: reading the layer stream failed: {0}")]
    Read(#[source] io::Error),
    /// An entry name climbs out of the root.
    #[error("layer applier: entry {entry:?} refused: its path contains `..`")]
    PathTraversal {
        /// The entry name as found in the layer.
        entry: String,
    },
    /// A hard link's target is unusable.
    #[error("layer applier: hard link {entry:?} to {target:?} refused: {reason}")]
    BadHardLink {
        /// The entry name.
        entry: String,
        /// The link target as found in the layer.
        target: String,
        /// Why.
        reason: &'static str,
    },
    /// A symlink or hard link entry without a target.
    #[error("layer applier: link entry {0:?} has no target")]
    MissingLinkName(String),
    /// A parent path component is a file.
    #[error("layer applier: {0} is not a directory")]
    NotADirectory(PathBuf),
    /// A symlink loop in a parent path.
    #[error("layer applier: too many levels of symbolic links at {0}")]
    SymlinkLoop(PathBuf),
    /// An entry type we cannot apply (GNU sparse files, for example).
    #[error("layer applier: entry {entry:?} has unsupported type {kind}")]
    Unsupported {
        /// The entry name.
        entry: String,
        /// Its tar type.
        kind: String,
    },
    /// A numeric id in the layer does not fit the platform.
    #[error("layer applier: entry {entry:?} has owner {id} which is out of range")]
    IdOutOfRange {
        /// The entry name.
        entry: String,
        /// The id.
        id: u64,
    },
    /// The uncompressed layer is not the one the image config names.
    #[error("layer applier: layer {digest} has diffID {actual}, the image config says {expected}")]
    DiffIdMismatch {
        /// The blob.
        digest: Digest,
        /// From the config.
        expected: Digest,
        /// What the data hashed to.
        actual: Digest,
    },
    /// Opening the blob failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ApplyError + 'a {
    move |source| ApplyError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn errno_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> ApplyError + 'a {
    move |e| io_err(action, path)(e.into())
}

fn resolve_err(e: RootPathError) -> ApplyError {
    match e {
        RootPathError::NotFound { path } => ApplyError::Io {
            action: "find",
            source: io::Error::from(io::ErrorKind::NotFound),
            path,
        },
        RootPathError::NotADirectory { path } => ApplyError::NotADirectory(path),
        RootPathError::TooManyLinks { path } => ApplyError::SymlinkLoop(path),
        RootPathError::Io { path, source } => ApplyError::Io {
            action: "resolve",
            path,
            source,
        },
    }
}

/// How to apply a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Running with the privileges of root (in the container's user namespace at least):
    /// owners are set from the layer, device nodes made, and every xattr set, and a failure
    /// of any of these is an error. Without it, owners are left to the current user, and
    /// device nodes and xattrs the kernel refuses are skipped and counted, as rootless
    /// runtimes do.
    pub privileged: bool,
    /// Set the layer's xattrs (`security.capability` among them).
    pub xattrs: bool,
    /// Real paths (as this process sees them) that applying never creates, replaces,
    /// removes or changes, nor anything below them: a layer applied in place over a
    /// container's own root must leave its mount points (`/etc/hosts`, volumes), `/proc`,
    /// `/sys` and `/dev` alone. Entries for them are skipped; removing a directory that holds
    /// one empties the rest of it.
    pub protected: Vec<PathBuf>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            privileged: rustix::process::geteuid().is_root(),
            xattrs: true,
            protected: Vec::new(),
        }
    }
}

/// What applying a layer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyStats {
    /// Compression found in the stream.
    pub compression: Compression,
    /// Digest of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Size of the uncompressed tar stream.
    pub uncompressed_size: u64,
    /// Entries created (whiteouts and markers not counted).
    pub entries: u64,
    /// Whiteouts and opaque markers processed.
    pub whiteouts: u64,
    /// Device nodes skipped for lack of privilege.
    pub skipped_devices: u64,
    /// Xattrs skipped for lack of privilege or filesystem support.
    pub skipped_xattrs: u64,
}

/// Applies the layer blob `digest` from `store` onto `root`. With `expected_diff_id` (from
/// the image config's `rootfs.diff_ids`) the uncompressed stream must match it; the root has
/// been modified by then, so a mismatch means the root must be thrown away.
pub fn apply_layer_blob(
    store: &ContentStore,
    digest: &Digest,
    expected_diff_id: Option<&Digest>,
    root: &Path,
    options: &ApplyOptions,
) -> Result<ApplyStats, ApplyError> {
    let file = store.open_blob(digest)?;
    let stats = apply_layer(root, file, options)?;
    if let Some(expected) = expected_diff_id
        && expected != &stats.diff_id
    {
        return Err(ApplyError::DiffIdMismatch {
            digest: digest.clone(),
            expected: expected.clone(),
            actual: stats.diff_id,
        });
    }
    Ok(stats)
}

/// Applies a layer stream onto `root`, which must exist.
pub fn apply_layer<R: Read>(
    root: &Path,
    reader: R,
    options: &ApplyOptions,
) -> Result<ApplyStats, ApplyError> {
    let meta = fs::metadata(root).map_err(io_err("open root", root))?;
    if !meta.is_dir() {
        return Err(ApplyError::NotADirectory(root.to_owned()));
    }
    let (compression, decoder) = Decoder::detect(reader).map_err(ApplyError::Read)?;
    let mut hashing = HashingReader::new(decoder);
    let mut applier = Applier {
        root: root.to_owned(),
        options: options.clone(),
        parent_cache: None,
        unpacked: HashSet::new(),
        dirs: Vec::new(),
        buffer: vec![0; COPY_BUFFER],
        entries: 0,
        whiteouts: 0,
        skipped_devices: 0,
        skipped_xattrs: 0,
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let entries = archive.entries().map_err(ApplyError::Read)?;
        for entry in entries {
            let mut entry = entry.map_err(ApplyError::Read)?;
            applier.apply_entry(&mut entry)?;
        }
    }
    // The tar reader stops at the end-of-archive blocks; the diffID covers every byte.
    io::copy(&mut hashing, &mut io::sink()).map_err(ApplyError::Read)?;
    let (_, diff_id, uncompressed_size) = hashing.finish();
    applier.finish_dirs()?;
    Ok(ApplyStats {
        compression,
        diff_id,
        uncompressed_size,
        entries: applier.entries,
        whiteouts: applier.whiteouts,
        skipped_devices: applier.skipped_devices,
        skipped_xattrs: applier.skipped_xattrs,
    })
}

/// A directory whose mode and mtime are set once the whole layer is in: adding children
/// would move the mtime, and a read-only mode would stop an unprivileged applier from
/// adding them.
struct DirFinal {
    rel: PathBuf,
    mode: u32,
    mtime: i64,
}

/// Metadata of one entry, gathered from its header and PAX records.
struct EntryMeta {
    name: String,
    kind: EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    link: Option<Vec<u8>>,
    device: (u32, u32),
}

struct Applier {
    root: PathBuf,
    options: ApplyOptions,
    /// The last parent resolved, (relative, real). Dropped whenever an entry removes
    /// something or creates a symlink, the only operations that change how a path
    /// resolves.
    parent_cache: Option<(PathBuf, PathBuf)>,
    /// Real paths this layer created, which an opaque marker must keep.
    unpacked: HashSet<PathBuf>,
    dirs: Vec<DirFinal>,
    buffer: Vec<u8>,
    entries: u64,
    whiteouts: u64,
    skipped_devices: u64,
    skipped_xattrs: u64,
}

impl Applier {
    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ApplyError> {
        let path_bytes = entry.path_bytes().into_owned();
        let display = String::from_utf8_lossy(&path_bytes).into_owned();
        let header = entry.header();
        let mut kind = header.entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        // Pre-POSIX archives mark directories only by a trailing slash.
        if kind == EntryType::Regular && path_bytes.ends_with(b"/") {
            kind = EntryType::Directory;
        }
        let Some(rel) = normalize_relative_bytes(&path_bytes) else {
            return Err(ApplyError::PathTraversal { entry: display });
        };
        let (Some(name), Some(parent)) = (rel.file_name(), rel.parent()) else {
            // The root directory itself: its metadata belongs to whoever owns the root.
            return Ok(());
        };
        let (name, parent) = (name.to_owned(), parent.to_owned());
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            return self.opaque(&parent);
        }
        if name_bytes.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
            return Ok(());
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(&parent, hidden, display);
        }

        let bad = |e: io::Error| ApplyError::Read(e);
        let mut meta = EntryMeta {
            kind,
            mode: lenient(header.mode().map(u64::from), &header.as_old().mode).map_err(bad)? as u32
                & 0o7777,
            uid: lenient(header.uid(), &header.as_old().uid).map_err(bad)?,
            gid: lenient(header.gid(), &header.as_old().gid).map_err(bad)?,
            mtime: i64::try_from(lenient(header.mtime(), &header.as_old().mtime).map_err(bad)?)
                .unwrap_or(i64::MAX),
            xattrs: Vec::new(),
            link: None,
            // Only device entries are required to fill these fields.
            device: if matches!(kind, EntryType::Char | EntryType::Block) {
                (
                    header.device_major().map_err(bad)?.unwrap_or(0),
                    header.device_minor().map_err(bad)?.unwrap_or(0),
                )
            } else {
                (0, 0)
            },
            name: display,
        };
        meta.link = entry.link_name_bytes().map(|l| l.into_owned());
        if let Some(exts) = entry.pax_extensions().map_err(bad)? {
            for ext in exts {
                let ext = ext.map_err(bad)?;
                let key = ext.key_bytes();
                if let Some(xattr) = key.strip_prefix(b"SCHILY.xattr.") {
                    meta.xattrs
                        .push((xattr.to_vec(), ext.value_bytes().to_vec()));
                } else if key == b"mtime" {
                    // Fractional seconds are allowed; the whole part is what we keep.
                    let text = String::from_utf8_lossy(ext.value_bytes());
                    if let Ok(secs) = text.split('.').next().unwrap_or("").parse::<i64>() {
                        meta.mtime = secs;
                    }
                }
            }
        }
        self.create(entry, &parent, &name, meta)
    }

    fn parent_dir(&mut self, rel: &Path) -> Result<PathBuf, ApplyError> {
        if let Some((cached_rel, real)) = &self.parent_cache
            && cached_rel == rel
        {
            return Ok(real.clone());
        }
        let real = resolve_dir(&self.root, rel, true).map_err(resolve_err)?;
        self.parent_cache = Some((rel.to_owned(), real.clone()));
        Ok(real)
    }

    /// Whether `path` is protected or below a protected path.
    fn is_protected(&self, path: &Path) -> bool {
        self.options.protected.iter().any(|p| path.starts_with(p))
    }

    /// Whether a protected path lies strictly below `path`.
    fn holds_protected(&self, path: &Path) -> bool {
        self.options
            .protected
            .iter()
            .any(|p| p != path && p.starts_with(path))
    }

    fn remove_existing(&mut self, path: &Path, meta: &Metadata) -> Result<(), ApplyError> {
        self.parent_cache = None;
        if self.is_protected(path) {
            return Ok(());
        }
        if meta.is_dir() && self.holds_protected(path) {
            // Empty it around what must stay; the directory itself stays too.
            let children = fs::read_dir(path).map_err(io_err("read directory", path))?;
            for child in children {
                let child = child.map_err(io_err("read directory", path))?;
                let child_path = child.path();
                let m =
                    fs::symlink_metadata(&child_path).map_err(io_err("inspect", &child_path))?;
                self.remove_existing(&child_path, &m)?;
            }
            return Ok(());
        }
        if meta.is_dir() {
            // std's remove_dir_all never follows symlinks found inside.
            fs::remove_dir_all(path).map_err(io_err("remove directory", path))
        } else {
            fs::remove_file(path).map_err(io_err("remove", path))
        }
    }

    fn whiteout(&mut self, parent: &Path, hidden: &[u8], entry: String) -> Result<(), ApplyError> {
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(ApplyError::PathTraversal { entry });
        }
        self.whiteouts += 1;
        let dir = match resolve_dir(&self.root, parent, false) {
            Ok(d) => d,
            // Nothing below a missing or non-directory parent to delete.
            Err(RootPathError::NotFound { .. } | RootPathError::NotADirectory { .. }) => {
                return Ok(());
            }
            Err(e) => return Err(resolve_err(e)),
        };
        let target = dir.join(OsStr::from_bytes(hidden));
        match fs::symlink_metadata(&target) {
            Ok(m) => self.remove_existing(&target, &m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("inspect", &target)(e)),
        }
    }

    fn opaque(&mut self, dir_rel: &Path) -> Result<(), ApplyError> {
        self.whiteouts += 1;
        self.parent_cache = None;
        let dir = resolve_dir(&self.root, dir_rel, true).map_err(resolve_err)?;
        self.clear_lower(&dir)
    }

    /// Removes everything under `dir` that this layer did not create.
    fn clear_lower(&mut self, dir: &Path) -> Result<(), ApplyError> {
        let children = fs::read_dir(dir).map_err(io_err("read directory", dir))?;
        for child in children {
            let child = child.map_err(io_err("read directory", dir))?;
            let path = child.path();
            let meta = fs::symlink_metadata(&path).map_err(io_err("inspect", &path))?;
            if self.is_protected(&path) {
                continue;
            }
            if self.unpacked.contains(&path) || (meta.is_dir() && self.holds_protected(&path)) {
                if meta.is_dir() {
                    self.clear_lower(&path)?;
                }
            } else {
                self.remove_existing(&path, &meta)?;
            }
        }
        Ok(())
    }

    fn create<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: &Path,
        name: &OsStr,
        meta: EntryMeta,
    ) -> Result<(), ApplyError> {
        let dir = self.parent_dir(parent)?;
        let target = dir.join(name);
        if self.is_protected(&target) {
            return Ok(());
        }
        let existing = match fs::symlink_metadata(&target) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("inspect", &target)(e)),
        };
        match meta.kind {
            EntryType::Directory => {
                match &existing {
                    Some(m) if m.is_dir() => {}
                    other => {
                        if let Some(m) = other {
                            self.remove_existing(&target, m)?;
                        }
                        fs::DirBuilder::new()
                            .mode(0o700)
                            .create(&target)
                            .map_err(io_err("create directory", &target))?;
                    }
                }
                self.chown_path(&target, &meta)?;
                self.set_xattrs(&target, &meta)?;
                self.dirs.push(DirFinal {
                    rel: parent.join(name),
                    mode: meta.mode,
                    mtime: meta.mtime,
                });
            }
            EntryType::Regular | EntryType::Continuous => {
                if let Some(m) = &existing {
                    self.remove_existing(&target, m)?;
                }
                self.write_file(entry, &target, &meta)?;
            }
            EntryType::Symlink => {
                let link = meta
                    .link
                    .clone()
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| ApplyError::MissingLinkName(meta.name.clone()))?;
                if let Some(m) = &existing {
                    self.remove_existing(&target, m)?;
                }
                self.parent_cache = None;
                std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)
                    .map_err(io_err("create symlink", &target))?;
                self.chown_path(&target, &meta)?;
                self.set_xattrs(&target, &meta)?;
                self.set_times_nofollow(&target, meta.mtime)?;
            }
            EntryType::Link => self.hard_link(&target, existing.as_ref(), &meta)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                if let Some(m) = &existing {
                    self.remove_existing(&target, m)?;
                }
                if !self.make_node(&target, &meta)? {
                    return Ok(());
                }
                self.chown_path(&target, &meta)?;
                // A node we just made, not a symlink: a path-based chmod cannot go astray.
                fs::set_permissions(&target, fs::Permissions::from_mode(meta.mode))
                    .map_err(io_err("set mode of", &target))?;
                self.set_xattrs(&target, &meta)?;
                self.set_times_nofollow(&target, meta.mtime)?;
            }
            other => {
                return Err(ApplyError::Unsupported {
                    entry: meta.name,
                    kind: format!("{other:?}"),
                });
            }
        }
        self.entries += 1;
        self.unpacked.insert(target);
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        target: &Path,
        meta: &EntryMeta,
    ) -> Result<(), ApplyError> {
        // create_new is O_EXCL: it never follows or reuses whatever is at the name.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(OFlags::CLOEXEC.bits() as i32)
            .open(target)
            .map_err(io_err("create", target))?;
        loop {
            let n = match entry.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ApplyError::Read(e)),
            };
            file.write_all(&self.buffer[..n])
                .map_err(io_err("write", target))?;
        }
        if self.options.privileged {
            let (uid, gid) = ids(meta)?;
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(io_err("change owner of", target))?;
        }
        // After chown, which clears set-id bits.
        file.set_permissions(fs::Permissions::from_mode(meta.mode))
            .map_err(io_err("set mode of", target))?;
        // After chown too, which drops security.capability.
        if self.options.xattrs {
            for (name, value) in &meta.xattrs {
                let set = rustix::fs::fsetxattr(
                    &file,
                    OsStr::from_bytes(name),
                    value,
                    XattrFlags::empty(),
                );
                self.xattr_result(set, target, name)?;
            }
        }
        let t = system_time(meta.mtime);
        file.set_times(FileTimes::new().set_accessed(t).set_modified(t))
            .map_err(io_err("set times of", target))
    }

    fn hard_link(
        &mut self,
        target: &Path,
        existing: Option<&Metadata>,
        meta: &EntryMeta,
    ) -> Result<(), ApplyError> {
        let link = meta
            .link
            .clone()
            .ok_or_else(|| ApplyError::MissingLinkName(meta.name.clone()))?;
        let bad = |reason: &'static str| ApplyError::BadHardLink {
            entry: meta.name.clone(),
            target: String::from_utf8_lossy(&link).into_owned(),
            reason,
        };
        let rel = normalize_relative_bytes(&link).ok_or_else(|| bad("its target contains `..`"))?;
        let (Some(src_name), Some(src_parent)) = (rel.file_name(), rel.parent()) else {
            return Err(bad("its target is the root"));
        };
        let src_dir = match resolve_dir(&self.root, src_parent, false) {
            Ok(d) => d,
            Err(RootPathError::NotFound { .. } | RootPathError::NotADirectory { .. }) => {
                return Err(bad("its target does not exist"));
            }
            Err(e) => return Err(resolve_err(e)),
        };
        let src = src_dir.join(src_name);
        let src_meta = match fs::symlink_metadata(&src) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(bad("its target does not exist"));
            }
            Err(e) => return Err(io_err("inspect", &src)(e)),
        };
        if src_meta.is_dir() {
            return Err(bad("its target is a directory"));
        }
        if let Some(m) = existing {
            if m.dev() == src_meta.dev() && m.ino() == src_meta.ino() {
                return Ok(());
            }
            self.remove_existing(target, m)?;
        }
        // linkat without AT_SYMLINK_FOLLOW: a symlink target is linked as the symlink.
        fs::hard_link(&src, target).map_err(io_err("create hard link", target))
    }

    /// Makes a device node or fifo; false when it was skipped for lack of privilege.
    fn make_node(&mut self, target: &Path, meta: &EntryMeta) -> Result<bool, ApplyError> {
        let file_type = match meta.kind {
            EntryType::Char => FileType::CharacterDevice,
            EntryType::Block => FileType::BlockDevice,
            _ => FileType::Fifo,
        };
        let dev = rustix::fs::makedev(meta.device.0, meta.device.1);
        match rustix::fs::mknodat(
            CWD,
            target,
            file_type,
            Mode::from_bits_truncate(meta.mode),
            dev,
        ) {
            Ok(()) => Ok(true),
            Err(Errno::PERM) if !self.options.privileged && file_type != FileType::Fifo => {
                self.skipped_devices += 1;
                Ok(false)
            }
            Err(e) => Err(errno_err("create device node", target)(e)),
        }
    }

    fn chown_path(&self, target: &Path, meta: &EntryMeta) -> Result<(), ApplyError> {
        if !self.options.privileged {
            return Ok(());
        }
        let (uid, gid) = ids(meta)?;
        std::os::unix::fs::lchown(target, Some(uid), Some(gid))
            .map_err(io_err("change owner of", target))
    }

    fn set_xattrs(&mut self, target: &Path, meta: &EntryMeta) -> Result<(), ApplyError> {
        if !self.options.xattrs {
            return Ok(());
        }
        for (name, value) in &meta.xattrs {
            let set =
                rustix::fs::lsetxattr(target, OsStr::from_bytes(name), value, XattrFlags::empty());
            self.xattr_result(set, target, name)?;
        }
        Ok(())
    }

    fn xattr_result(
        &mut self,
        result: Result<(), Errno>,
        target: &Path,
        name: &[u8],
    ) -> Result<(), ApplyError> {
        match result {
            Ok(()) => Ok(()),
            Err(Errno::PERM | Errno::ACCESS | Errno::NOTSUP) if !self.options.privileged => {
                self.skipped_xattrs += 1;
                Ok(())
            }
            Err(e) => Err(ApplyError::Io {
                action: "set xattr on",
                path: target.to_owned(),
                source: io::Error::new(
                    io::Error::from(e).kind(),
                    format!("{}: {e}", String::from_utf8_lossy(name)),
                ),
            }),
        }
    }

    fn set_times_nofollow(&self, target: &Path, mtime: i64) -> Result<(), ApplyError> {
        let ts = Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: ts,
            last_modification: ts,
        };
        rustix::fs::utimensat(CWD, target, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(errno_err("set times of", target))
    }

    /// Sets directory modes and mtimes. Each directory is found again by resolving its
    /// parent, because later entries may have replaced it or one of
    /// its parents; whatever is no longer a directory is skipped.
    fn finish_dirs(&mut self) -> Result<(), ApplyError> {
        let dirs = std::mem::take(&mut self.dirs);
        for d in dirs.iter().rev() {
            let (Some(name), Some(parent)) = (d.rel.file_name(), d.rel.parent()) else {
                continue;
            };
            let real = match resolve_dir(&self.root, parent, false) {
                Ok(r) => r.join(name),
                Err(RootPathError::NotFound { .. } | RootPathError::NotADirectory { .. }) => {
                    continue;
                }
                Err(e) => return Err(resolve_err(e)),
            };
            // NOFOLLOW + DIRECTORY: if the name is now a symlink or a file, leave it alone.
            let fd = match rustix::fs::open(
                &real,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => return Err(errno_err("open directory", &real)(e)),
            };
            let dir = File::from(fd);
            dir.set_permissions(fs::Permissions::from_mode(d.mode))
                .map_err(io_err("set mode of", &real))?;
            let t = system_time(d.mtime);
            dir.set_times(FileTimes::new().set_accessed(t).set_modified(t))
                .map_err(io_err("set times of", &real))?;
        }
        Ok(())
    }
}

/// A numeric header field, with an empty field (all NULs or spaces) read as 0 the way GNU
/// tar and Go's archive/tar read it; some writers leave unused fields empty.
fn lenient(parsed: io::Result<u64>, raw: &[u8]) -> io::Result<u64> {
    match parsed {
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        other => other,
    }
}

fn ids(meta: &EntryMeta) -> Result<(u32, u32), ApplyError> {
    let conv = |id: u64| {
        u32::try_from(id).map_err(|_| ApplyError::IdOutOfRange {
            entry: meta.name.clone(),
            id,
        })
    };
    Ok((conv(meta.uid)?, conv(meta.gid)?))
}

fn system_time(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}
