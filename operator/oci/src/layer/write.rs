//! The layer writer: turns a directory tree, or a list of changes under a root, into a
//! deterministic tar stream and compresses it into the content store.
//!
//! Determinism is the point. The bytes depend only on the files' paths, types, contents,
//! modes, owners, link targets, device numbers, xattrs and (clamped) mtimes, never on
//! directory read order, inode numbers, the user database, or the time of the build:
//! entries are sorted by path component (so a parent always precedes its children), a hard
//! link's first occurrence in that order carries the data, uname/gname are left empty,
//! mtimes are clamped to SOURCE_DATE_EPOCH, and headers are USTAR with a PAX record only when
//! a value does not fit (long names, big ids, xattrs), built the same way every time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use tar::{EntryType, Header};
use walkdir::WalkDir;

use super::{OPAQUE_MARKER, WHITEOUT_PREFIX, normalize_relative};
use crate::compression::{Compression, Encoder};
use crate::digest::{Digest, HashingWriter};
use crate::manifest::Descriptor;
use crate::store::{ContentStore, StoreError};

/// Largest value an 8-byte octal header field (uid, gid, mode) holds.
const MAX_OCTAL_8: u64 = 0o7_777_777;
/// Largest value a 12-byte octal header field (size, mtime) holds.
const MAX_OCTAL_12: u64 = 0o77_777_777_777;
const NAME_FIELD_LEN: usize = 100;

/// Xattrs that describe the host rather than the file: an SELinux label comes from the
/// node's policy and overlayfs keeps its bookkeeping in `*.overlay.*`. Recording them would
/// make the same build give different layers on different nodes.
fn xattr_is_host_specific(name: &str) -> bool {
    name == "security.selinux"
        || name.starts_with("trusted.overlay.")
        || name.starts_with("user.overlay.")
}

/// Why a layer could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LayerWriteError {
    /// Reading a file of the tree failed.
    #[error("layer writer: cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Writing the tar or compressed stream failed.
    #[error("layer writer: writing the layer stream failed: {0}")]
    Output(#[source] io::Error),
    /// A change names a path outside the root.
    #[error("layer writer: change path {0} leaves the root (it contains `..` or is empty)")]
    InvalidPath(PathBuf),
    /// A path's parent is not a directory in this layer (a symlink or a file).
    #[error("layer writer: parent of {0} is not a directory")]
    ParentNotDirectory(PathBuf),
    /// An opaque change names something that is not a directory.
    #[error("layer writer: opaque change {0} is not a directory")]
    NotADirectory(PathBuf),
    /// A file changed size or identity while it was being written.
    #[error("layer writer: {0} changed while the layer was being written")]
    FileChanged(PathBuf),
    /// Storing the blob failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> LayerWriteError + 'a {
    move |source| LayerWriteError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// How to write a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerOptions {
    /// Compression of the blob.
    pub compression: Compression,
    /// SOURCE_DATE_EPOCH: mtimes later than this are written as this. `None` keeps mtimes
    /// as they are (not reproducible unless the tree's mtimes are).
    pub source_date_epoch: Option<u64>,
}

/// One change in a root, relative to the layers below. Paths are relative to the root (a
/// leading `/` is accepted); `..` is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Added or modified: written with its current content and metadata. For a directory
    /// only the directory itself; its children need their own changes.
    Write(PathBuf),
    /// The path and, for a directory, everything below it (a `COPY` of a directory).
    WriteTree(PathBuf),
    /// Removed: written as a whiteout. Ignored when the path exists again in the root
    /// (then it was replaced, and the written entry replaces it), or when an ancestor is
    /// itself deleted or opaque.
    Delete(PathBuf),
    /// A directory replaced wholesale: written with all its current contents and an opaque
    /// marker, so nothing below it from lower layers shows through.
    Opaque(PathBuf),
}

/// What to put in a layer.
#[derive(Debug, Clone, Copy)]
pub enum LayerSource<'a> {
    /// Everything below the root (not the root directory itself).
    Tree,
    /// The listed changes. Every parent directory of a written or deleted path is written
    /// too, as BuildKit does, so the layer applies the same on any base.
    Changes(&'a [Change]),
}

/// A written layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// Digest of the (compressed) blob.
    pub digest: Digest,
    /// Size of the blob.
    pub size: u64,
    /// DiffID: digest of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Size of the uncompressed tar stream.
    pub uncompressed_size: u64,
    /// Compression used.
    pub compression: Compression,
    /// Number of tar entries (PAX headers not counted).
    pub entries: u64,
}

impl LayerInfo {
    /// The OCI media type of the blob.
    pub fn media_type(&self) -> &'static str {
        self.compression.layer_media_type()
    }

    /// The descriptor to put in a manifest.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(self.media_type(), self.digest.clone(), self.size)
    }
}

/// Writes a layer from `root` into `store`, streaming: the tar is compressed and hashed as it
/// is produced and lands in the store under its digest.
pub fn write_layer(
    store: &ContentStore,
    root: &Path,
    source: LayerSource<'_>,
    options: &LayerOptions,
) -> Result<LayerInfo, LayerWriteError> {
    let blob = store.writer()?;
    let (blob, summary) = write_tar(blob, root, source, options)?;
    let info = blob.commit()?;
    Ok(LayerInfo {
        digest: info.digest,
        size: info.size,
        diff_id: summary.diff_id,
        uncompressed_size: summary.tar_size,
        compression: options.compression,
        entries: summary.entries,
    })
}

/// Writes a layer to any writer (a file for `docker load`, a pipe for a registry upload)
/// and returns the writer with the layer's digests.
pub fn write_layer_to<W: Write>(
    out: W,
    root: &Path,
    source: LayerSource<'_>,
    options: &LayerOptions,
) -> Result<(W, LayerInfo), LayerWriteError> {
    let (hashing, summary) = write_tar(HashingWriter::new(out), root, source, options)?;
    let (out, digest, size) = hashing.finish();
    Ok((
        out,
        LayerInfo {
            digest,
            size,
            diff_id: summary.diff_id,
            uncompressed_size: summary.tar_size,
            compression: options.compression,
            entries: summary.entries,
        },
    ))
}

struct TarSummary {
    diff_id: Digest,
    tar_size: u64,
    entries: u64,
}

fn write_tar<W: Write>(
    out: W,
    root: &Path,
    source: LayerSource<'_>,
    options: &LayerOptions,
) -> Result<(W, TarSummary), LayerWriteError> {
    let encoder = Encoder::new(out, options.compression).map_err(LayerWriteError::Output)?;
    let mut w = TarWriter {
        builder: tar::Builder::new(HashingWriter::new(encoder)),
        root: root.to_owned(),
        epoch: options.source_date_epoch,
        links: HashMap::new(),
        xattr_names: Vec::new(),
        xattr_value: Vec::new(),
        entries: 0,
    };
    match source {
        LayerSource::Tree => w.write_tree()?,
        LayerSource::Changes(changes) => w.write_changes(changes)?,
    }
    let entries = w.entries;
    let hashing = w.builder.into_inner().map_err(LayerWriteError::Output)?;
    let (encoder, diff_id, tar_size) = hashing.finish();
    let out = encoder.finish().map_err(LayerWriteError::Output)?;
    Ok((
        out,
        TarSummary {
            diff_id,
            tar_size,
            entries,
        },
    ))
}

/// One item of a change layer, keyed for sorting.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Entry(PathBuf),
    Whiteout(PathBuf),
    Opaque(PathBuf),
}

/// The sort key: path components as bytes. The opaque marker sorts as an empty component,
/// so it comes right after its directory and before anything inside it; appliers that
/// process the marker on sight then never delete what this layer adds.
fn sort_key(item: &Item) -> Vec<Vec<u8>> {
    let comps = |p: &Path| -> Vec<Vec<u8>> {
        p.components()
            .map(|c| c.as_os_str().as_bytes().to_vec())
            .collect()
    };
    match item {
        Item::Entry(p) => comps(p),
        Item::Whiteout(p) => {
            let mut k = p.parent().map(comps).unwrap_or_default();
            let mut name = WHITEOUT_PREFIX.as_bytes().to_vec();
            name.extend_from_slice(p.file_name().map_or(&[][..], OsStr::as_bytes));
            k.push(name);
            k
        }
        Item::Opaque(p) => {
            let mut k = comps(p);
            k.push(Vec::new());
            k
        }
    }
}

struct TarWriter<W: Write> {
    builder: tar::Builder<HashingWriter<Encoder<W>>>,
    root: PathBuf,
    epoch: Option<u64>,
    /// First entry name of every multiply-linked inode written so far.
    links: HashMap<(u64, u64), Vec<u8>>,
    xattr_names: Vec<u8>,
    xattr_value: Vec<u8>,
    entries: u64,
}

/// What kind of entry a path became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Dir,
    Other,
    Skipped,
}

impl<W: Write> TarWriter<W> {
    fn write_tree(&mut self) -> Result<(), LayerWriteError> {
        let root = self.root.clone();
        // Sorted siblings in pre-order is exactly component order: parents first. The root
        // itself may be reached through a symlink (the caller chose it); nothing below it is.
        let walk = WalkDir::new(&root)
            .min_depth(1)
            .follow_links(false)
            .follow_root_links(true)
            .sort_by_file_name();
        for entry in walk {
            let entry = entry.map_err(|e| {
                let path = e.path().unwrap_or(&root).to_owned();
                LayerWriteError::Io {
                    action: "walk",
                    path,
                    source: e.into(),
                }
            })?;
            let rel = entry
                .path()
                .strip_prefix(&root)
                .map_err(|_| LayerWriteError::InvalidPath(entry.path().to_owned()))?
                .to_owned();
            self.write_path(&rel)?;
        }
        Ok(())
    }

    fn write_changes(&mut self, changes: &[Change]) -> Result<(), LayerWriteError> {
        let items = self.collect_changes(changes)?;
        // Directories written so far: a child is only written under a real directory of
        // this layer, which is what keeps a symlinked parent from being read through.
        let mut dirs: HashSet<PathBuf> = HashSet::new();
        for item in items.into_values() {
            let path = match &item {
                Item::Entry(p) | Item::Whiteout(p) | Item::Opaque(p) => p,
            };
            let parent_ok = match path.parent() {
                None => true,
                Some(p) if p.as_os_str().is_empty() => true,
                Some(p) => dirs.contains(p),
            };
            let in_dir = matches!(item, Item::Opaque(_));
            if !parent_ok || (in_dir && !dirs.contains(path.as_path())) {
                return Err(LayerWriteError::ParentNotDirectory(self.root.join(path)));
            }
            match item {
                Item::Entry(p) => {
                    if self.write_path(&p)? == Written::Dir {
                        dirs.insert(p);
                    }
                }
                Item::Whiteout(p) => {
                    let mut name = p
                        .parent()
                        .map(|d| d.as_os_str().as_bytes().to_vec())
                        .unwrap_or_default();
                    if !name.is_empty() {
                        name.push(b'/');
                    }
                    name.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
                    name.extend_from_slice(p.file_name().map_or(&[][..], OsStr::as_bytes));
                    self.write_marker(name)?;
                }
                Item::Opaque(p) => {
                    let mut name = p.as_os_str().as_bytes().to_vec();
                    name.push(b'/');
                    name.extend_from_slice(OPAQUE_MARKER.as_bytes());
                    self.write_marker(name)?;
                }
            }
        }
        Ok(())
    }

    /// Expands and orders a change list.
    fn collect_changes(
        &self,
        changes: &[Change],
    ) -> Result<BTreeMap<Vec<Vec<u8>>, Item>, LayerWriteError> {
        let clean = |p: &Path| -> Result<PathBuf, LayerWriteError> {
            match normalize_relative(p) {
                Some(c) if !c.as_os_str().is_empty() => Ok(c),
                _ => Err(LayerWriteError::InvalidPath(p.to_owned())),
            }
        };
        let mut items: Vec<Item> = Vec::new();
        let mut deleted: Vec<PathBuf> = Vec::new();
        let mut hidden: HashSet<PathBuf> = HashSet::new();
        for change in changes {
            match change {
                Change::Write(p) => items.push(Item::Entry(clean(p)?)),
                Change::WriteTree(p) => self.expand_tree(&clean(p)?, &mut items)?,
                Change::Opaque(p) => {
                    let p = clean(p)?;
                    let full = self.root.join(&p);
                    let meta = fs::symlink_metadata(&full).map_err(io_err("inspect", &full))?;
                    if !meta.is_dir() {
                        return Err(LayerWriteError::NotADirectory(full));
                    }
                    self.expand_tree(&p, &mut items)?;
                    items.push(Item::Opaque(p.clone()));
                    hidden.insert(p);
                }
                Change::Delete(p) => {
                    let p = clean(p)?;
                    deleted.push(p.clone());
                    hidden.insert(p);
                }
            }
        }
        for p in deleted {
            let covered = p.ancestors().skip(1).any(|a| hidden.contains(a));
            let full = self.root.join(&p);
            let exists = match fs::symlink_metadata(&full) {
                Ok(_) => true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(io_err("inspect", &full)(e)),
            };
            if !covered && !exists {
                items.push(Item::Whiteout(p));
            }
        }
        let mut map = BTreeMap::new();
        for item in items {
            let path = match &item {
                Item::Entry(p) | Item::Whiteout(p) | Item::Opaque(p) => p.clone(),
            };
            for ancestor in path.ancestors().skip(1) {
                if ancestor.as_os_str().is_empty() {
                    break;
                }
                let parent = Item::Entry(ancestor.to_owned());
                let key = sort_key(&parent);
                if map.contains_key(&key) {
                    // Its own ancestors were added with it.
                    break;
                }
                map.insert(key, parent);
            }
            map.insert(sort_key(&item), item);
        }
        Ok(map)
    }

    fn expand_tree(&self, rel: &Path, items: &mut Vec<Item>) -> Result<(), LayerWriteError> {
        let start = self.root.join(rel);
        // A symlink named by the change is written as the symlink, never walked through.
        let walk = WalkDir::new(&start)
            .follow_links(false)
            .follow_root_links(false);
        for entry in walk {
            let entry = entry.map_err(|e| {
                let path = e.path().unwrap_or(&start).to_owned();
                LayerWriteError::Io {
                    action: "walk",
                    path,
                    source: e.into(),
                }
            })?;
            let sub = entry
                .path()
                .strip_prefix(&self.root)
                .map_err(|_| LayerWriteError::InvalidPath(entry.path().to_owned()))?;
            items.push(Item::Entry(sub.to_owned()));
        }
        Ok(())
    }

    fn clamp_mtime(&self, mtime: i64) -> u64 {
        let t = u64::try_from(mtime).unwrap_or(0);
        let t = match self.epoch {
            Some(e) => t.min(e),
            None => t,
        };
        t.min(MAX_OCTAL_12)
    }

    /// Writes one path of the root as a tar entry.
    fn write_path(&mut self, rel: &Path) -> Result<Written, LayerWriteError> {
        let full = self.root.join(rel);
        let meta = fs::symlink_metadata(&full).map_err(io_err("inspect", &full))?;
        let ft = meta.file_type();
        let mut name = rel.as_os_str().as_bytes().to_vec();
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        self.collect_xattrs(&full, &mut pax)?;

        if ft.is_file() {
            return self.write_file(&full, name, &meta, pax);
        }
        let mut header = new_header();
        let written = if ft.is_dir() {
            name.push(b'/');
            header.set_entry_type(EntryType::Directory);
            Written::Dir
        } else if ft.is_symlink() {
            let target = fs::read_link(&full).map_err(io_err("read link", &full))?;
            header.set_entry_type(EntryType::Symlink);
            set_link_name(&mut header, target.as_os_str().as_bytes(), &mut pax)?;
            Written::Other
        } else if ft.is_char_device() || ft.is_block_device() {
            header.set_entry_type(if ft.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            });
            let dev = meta.rdev();
            header
                .set_device_major(rustix::fs::major(dev))
                .and_then(|()| header.set_device_minor(rustix::fs::minor(dev)))
                .map_err(LayerWriteError::Output)?;
            Written::Other
        } else if ft.is_fifo() {
            header.set_entry_type(EntryType::Fifo);
            Written::Other
        } else {
            // Sockets cannot be archived; they are runtime objects anyway.
            return Ok(Written::Skipped);
        };
        self.fill_common(&mut header, &meta, &mut pax);
        header.set_size(0);
        self.append(header, name, pax, io::empty())?;
        Ok(written)
    }

    fn write_file(
        &mut self,
        full: &Path,
        name: Vec<u8>,
        meta: &Metadata,
        mut pax: Vec<(String, Vec<u8>)>,
    ) -> Result<Written, LayerWriteError> {
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key).cloned() {
                let mut header = new_header();
                header.set_entry_type(EntryType::Link);
                set_link_name(&mut header, &first, &mut pax)?;
                self.fill_common(&mut header, meta, &mut pax);
                header.set_size(0);
                self.append(header, name, pax, io::empty())?;
                return Ok(Written::Other);
            }
            self.links.insert(key, name.clone());
        }
        // O_NOFOLLOW: if the file was swapped for a symlink since the walk, fail rather than
        // archive whatever the link points to.
        let fd = rustix::fs::open(
            full,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| io_err("open", full)(e.into()))?;
        let file = File::from(fd);
        let fmeta = file.metadata().map_err(io_err("inspect", full))?;
        if fmeta.ino() != meta.ino() || fmeta.dev() != meta.dev() || !fmeta.is_file() {
            return Err(LayerWriteError::FileChanged(full.to_owned()));
        }
        let size = fmeta.len();
        let mut header = new_header();
        header.set_entry_type(EntryType::Regular);
        self.fill_common(&mut header, &fmeta, &mut pax);
        header.set_size(size);
        if size > MAX_OCTAL_12 {
            pax.push(("size".to_owned(), size.to_string().into_bytes()));
        }
        let mut reader = ExactReader {
            inner: file,
            remaining: size,
            path: full,
            failure: None,
        };
        let appended = self.append(header, name, pax, &mut reader);
        // A read failure surfaces from the tar builder as a bare io::Error; report the file.
        if let Some(failure) = reader.failure.take() {
            return Err(failure);
        }
        appended?;
        Ok(Written::Other)
    }

    /// Mode, owner and time, the same for every entry type.
    fn fill_common(&self, header: &mut Header, meta: &Metadata, pax: &mut Vec<(String, Vec<u8>)>) {
        header.set_mode(meta.mode() & 0o7777);
        let (uid, gid) = (u64::from(meta.uid()), u64::from(meta.gid()));
        header.set_uid(uid);
        header.set_gid(gid);
        if uid > MAX_OCTAL_8 {
            pax.push(("uid".to_owned(), uid.to_string().into_bytes()));
        }
        if gid > MAX_OCTAL_8 {
            pax.push(("gid".to_owned(), gid.to_string().into_bytes()));
        }
        header.set_mtime(self.clamp_mtime(meta.mtime()));
    }

    fn collect_xattrs(
        &mut self,
        full: &Path,
        pax: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<(), LayerWriteError> {
        let names = &mut self.xattr_names;
        loop {
            if names.is_empty() {
                names.resize(1024, 0);
            }
            match rustix::fs::llistxattr(full, &mut names[..]) {
                Ok(n) => {
                    names.truncate(n);
                    break;
                }
                Err(rustix::io::Errno::RANGE) => {
                    let need = rustix::fs::llistxattr_query(full)
                        .map_err(|e| io_err("list xattrs of", full)(e.into()))?;
                    let len = need.max(names.len() * 2);
                    names.resize(len, 0);
                }
                Err(rustix::io::Errno::NOTSUP) => {
                    names.clear();
                    break;
                }
                Err(e) => return Err(io_err("list xattrs of", full)(e.into())),
            }
        }
        let mut found: Vec<(String, Vec<u8>)> = Vec::new();
        for raw in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            // PAX keys are UTF-8; a non-UTF-8 xattr name cannot be recorded portably.
            let Ok(name) = std::str::from_utf8(raw) else {
                continue;
            };
            if xattr_is_host_specific(name) {
                continue;
            }
            let value = &mut self.xattr_value;
            loop {
                if value.is_empty() {
                    value.resize(256, 0);
                }
                match rustix::fs::lgetxattr(full, name, &mut value[..]) {
                    Ok(n) => {
                        found.push((format!("SCHILY.xattr.{name}"), value[..n].to_vec()));
                        break;
                    }
                    Err(rustix::io::Errno::RANGE) => {
                        let need = rustix::fs::lgetxattr_query(full, name)
                            .map_err(|e| io_err("read xattr of", full)(e.into()))?;
                        let len = need.max(value.len() * 2);
                        value.resize(len, 0);
                    }
                    // Removed between list and get.
                    Err(rustix::io::Errno::NODATA) => break,
                    Err(e) => return Err(io_err("read xattr of", full)(e.into())),
                }
            }
        }
        // The walk fills `names` afresh next time; keep the allocation.
        names.clear();
        pax.extend(found);
        Ok(())
    }

    /// Writes the PAX header (if any) and the entry.
    fn append<R: Read>(
        &mut self,
        mut header: Header,
        name: Vec<u8>,
        mut pax: Vec<(String, Vec<u8>)>,
        data: R,
    ) -> Result<(), LayerWriteError> {
        if let Some(ustar) = header.as_ustar_mut() {
            let n = name.len().min(NAME_FIELD_LEN);
            ustar.name[..n].copy_from_slice(&name[..n]);
        }
        if name.len() > NAME_FIELD_LEN {
            pax.push(("path".to_owned(), name));
        }
        if !pax.is_empty() {
            pax.sort();
            let mut body = Vec::new();
            for (k, v) in &pax {
                pax_record(&mut body, k, v);
            }
            let mut ph = new_header();
            if let Some(ustar) = ph.as_ustar_mut() {
                let pax_name = b"././@PaxHeader";
                ustar.name[..pax_name.len()].copy_from_slice(pax_name);
            }
            ph.set_entry_type(EntryType::XHeader);
            ph.set_mode(0o644);
            ph.set_uid(0);
            ph.set_gid(0);
            ph.set_mtime(header.mtime().unwrap_or(0));
            ph.set_size(body.len() as u64);
            ph.set_cksum();
            self.builder
                .append(&ph, &body[..])
                .map_err(LayerWriteError::Output)?;
        }
        header.set_cksum();
        self.builder
            .append(&header, data)
            .map_err(LayerWriteError::Output)?;
        self.entries += 1;
        Ok(())
    }

    /// An empty regular file: a whiteout or an opaque marker. Fixed metadata, so the
    /// marker's bytes depend only on its name.
    fn write_marker(&mut self, name: Vec<u8>) -> Result<(), LayerWriteError> {
        let mut header = new_header();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(self.epoch.unwrap_or(0).min(MAX_OCTAL_12));
        header.set_size(0);
        self.append(header, name, Vec::new(), io::empty())
    }
}

/// A USTAR header with the device fields zeroed rather than empty: some readers (the `tar`
/// crate among them) reject an empty numeric field.
fn new_header() -> Header {
    let mut h = Header::new_ustar();
    if let Some(ustar) = h.as_ustar_mut() {
        ustar.set_device_major(0);
        ustar.set_device_minor(0);
    }
    h
}

fn set_link_name(
    header: &mut Header,
    target: &[u8],
    pax: &mut Vec<(String, Vec<u8>)>,
) -> Result<(), LayerWriteError> {
    if target.len() > NAME_FIELD_LEN {
        pax.push(("linkpath".to_owned(), target.to_vec()));
        header
            .set_link_name_literal(&target[..NAME_FIELD_LEN])
            .map_err(LayerWriteError::Output)
    } else {
        header
            .set_link_name_literal(target)
            .map_err(LayerWriteError::Output)
    }
}

/// Appends one PAX record, `"<len> <key>=<value>\n"`, where `<len>` counts the whole record
/// including its own digits.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let rest = key.len() + value.len() + 3;
    let mut total = rest + 1;
    loop {
        let candidate = rest + total.to_string().len();
        if candidate == total {
            break;
        }
        total = candidate;
    }
    out.extend_from_slice(total.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Reads exactly `remaining` bytes: the tar header already promised that size, so a file
/// that shrinks underneath must fail the layer rather than corrupt it. Failures are kept
/// with their path for the caller.
struct ExactReader<'a> {
    inner: File,
    remaining: u64,
    path: &'a Path,
    failure: Option<LayerWriteError>,
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        match self.inner.read(&mut buf[..want]) {
            Ok(0) => {
                self.failure = Some(LayerWriteError::FileChanged(self.path.to_owned()));
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while being archived",
                ))
            }
            Ok(n) => {
                self.remaining -= n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let kind = e.kind();
                self.failure = Some(io_err("read", self.path)(e));
                Err(io::Error::new(kind, "reading a file of the layer failed"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        let mut out = Vec::new();
        pax_record(&mut out, "path", b"abc");
        assert_eq!(out, b"12 path=abc\n");
        let mut out = Vec::new();
        // 3 + 4 + 1 + 2 = 10 without the length; with two digits it is 12... pick a value
        // that crosses the digit boundary: rest = 98 needs "100" → 101? No: 98 + 3 = 101.
        let value = vec![b'x'; 91];
        pax_record(&mut out, "path", &value);
        let len: usize = std::str::from_utf8(&out[..out.iter().position(|b| *b == b' ').unwrap()])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, out.len());
    }

    #[test]
    fn opaque_marker_sorts_before_children_and_whiteouts_by_name() {
        let a = sort_key(&Item::Entry(PathBuf::from("d")));
        let m = sort_key(&Item::Opaque(PathBuf::from("d")));
        let c = sort_key(&Item::Entry(PathBuf::from("d/!first")));
        let w = sort_key(&Item::Whiteout(PathBuf::from("d/x")));
        let sib = sort_key(&Item::Entry(PathBuf::from("d.txt")));
        assert!(a < m && m < c && c < w && w < sib);
    }
}
