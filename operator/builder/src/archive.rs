//! ADD's archive handling: telling a tar archive (plain, gzip, bzip2, xz or zstd) from any
//! other file by its content, and extracting one into a directory of the stage's root.
//!
//! Detection follows BuildKit: the compression is recognised by its magic bytes and the
//! decompressed stream must start with a valid tar header (checksum correct), so a
//! `notes.tar.gz` that is really text, or a gzipped file that is not a tar, is copied as is.
//!
//! Extraction follows BuildKit's `ADD` (and Docker's before it):
//! * the destination directory is the archive's root: entry names are cleaned, a name that
//!   climbs out of it with `..` is refused, and every path — including symlinks the archive
//!   itself plants, absolute ones too — is resolved with [`crate::rootpath`] inside that
//!   directory, so nothing lands outside it (and so outside the stage's root);
//! * existing directories are merged and take the entry's metadata; anything else at an
//!   entry's path is replaced;
//! * entries keep their modes and mtimes; owners are the archive's, or the `--chown` owner
//!   when given (BuildKit ≥ 0.23 applies `--chown` to extracted entries), and are only set
//!   when the caller may chown; `--chmod` does not apply to extracted entries;
//! * hard links inside the archive become hard links; whiteout files are ordinary files;
//! * device nodes and fifos are skipped, as COPY skips them (builder pods cannot mknod).

use std::fs::File;
use std::io::{self, BufReader, Cursor, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use stagecoach_oci::compression::Decoder;
use tar::EntryType;

use crate::rootpath::{self, RootPathError};
use crate::users::Owner;

const BZIP2_MAGIC: &[u8] = b"BZh";
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
const TAR_BLOCK: usize = 512;

/// Errors extracting an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An entry (or a hard link's target) names a path outside the destination.
    #[error("archive path {entry:?} is outside the extraction directory")]
    Escapes {
        /// The name as stored in the archive.
        entry: String,
    },
    /// A directory would have to be made where a non-directory is.
    #[error("extracting {entry:?}: {path} is not a directory")]
    NotADirectory {
        /// The entry.
        entry: String,
        /// The path inside the destination.
        path: String,
    },
    /// Resolving a path inside the destination failed.
    #[error(transparent)]
    Resolve(#[from] RootPathError),
    /// Reading the archive or writing an entry failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The archive or the entry.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a str) -> impl FnOnce(io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        op,
        path: path.to_string(),
        source,
    }
}

/// The decompressed content of a file, its compression recognised by magic bytes (gzip and
/// zstd through `stagecoach-oci`'s layer decoder, bzip2 and xz here).
fn open_decompressed(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut file = File::open(path)?;
    let mut head = vec![0u8; XZ_MAGIC.len()];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(filled);
    let is_bzip2 = head.starts_with(BZIP2_MAGIC);
    let is_xz = head.starts_with(XZ_MAGIC);
    let rewound = Cursor::new(head).chain(file);
    Ok(if is_bzip2 {
        Box::new(bzip2::read::MultiBzDecoder::new(BufReader::new(rewound)))
    } else if is_xz {
        Box::new(liblzma::read::XzDecoder::new_multi_decoder(BufReader::new(
            rewound,
        )))
    } else {
        Box::new(Decoder::detect(rewound)?.1)
    })
}

/// Whether `path` is a regular file holding a tar archive, possibly compressed. Unreadable
/// or undecodable files are not archives: they are then copied, and a read error shows there.
pub fn is_archive(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => {}
        _ => return false,
    }
    let Ok(mut reader) = open_decompressed(path) else {
        return false;
    };
    let mut block = [0u8; TAR_BLOCK];
    let mut filled = 0;
    while filled < block.len() {
        match reader.read(&mut block[filled..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => filled += n,
        }
    }
    valid_tar_header(&block)
}

/// A tar header block whose checksum is right. An all-zero block (an empty archive's end
/// marker) does not count, as Go's tar reader reports it as the end, not an entry.
fn valid_tar_header(block: &[u8; TAR_BLOCK]) -> bool {
    if block.iter().all(|b| *b == 0) {
        return false;
    }
    let Ok(stored) = tar::Header::from_byte_slice(block).cksum() else {
        return false;
    };
    // The checksum field itself counts as eight spaces. Old writers summed signed bytes.
    let field = 148..156;
    let (mut unsigned, mut signed) = (0u32, 0i64);
    for (i, b) in block.iter().enumerate() {
        let b = if field.contains(&i) { b' ' } else { *b };
        unsigned += u32::from(b);
        signed += i64::from(b.cast_signed());
    }
    stored == unsigned || i64::from(stored) == signed
}

/// Cleans an entry name to a relative path inside the destination (`""` for the destination
/// itself); `None` when `..` would climb out of it.
fn clean_entry(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// How [`extract`] sets owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractOptions {
    /// `--chown`: every entry gets this owner; `None` keeps the archive's owners.
    pub chown: Option<Owner>,
    /// Owner of directories the archive implies but does not list.
    pub implied_owner: Owner,
    /// Whether owners are set at all (needs CAP_CHOWN).
    pub set_owner: bool,
}

/// A directory whose mode and times are set once everything inside it is written.
struct DirFinish {
    path: PathBuf,
    mode: u32,
    mtime: i64,
}

/// Extracts the archive at `archive` into the directory `dest` (which must exist), treating
/// `dest` as the archive's root.
pub fn extract(archive: &Path, dest: &Path, options: ExtractOptions) -> Result<(), ArchiveError> {
    let shown = archive.display().to_string();
    let reader = open_decompressed(archive).map_err(io_err("opening", &shown))?;
    let mut tar = tar::Archive::new(reader);
    let mut dirs: Vec<DirFinish> = Vec::new();
    for entry in tar.entries().map_err(io_err("reading", &shown))? {
        let mut entry = entry.map_err(io_err("reading", &shown))?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
                | EntryType::Char
                | EntryType::Block
                | EntryType::Fifo
        ) {
            continue;
        }
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = clean_entry(&raw).ok_or_else(|| ArchiveError::Escapes { entry: raw.clone() })?;
        if name.is_empty() {
            // The archive's own root: the destination keeps its metadata.
            continue;
        }
        let header = entry.header();
        let mode = header.mode().map_err(io_err("reading", &raw))? & 0o7777;
        let mtime = header
            .mtime()
            .ok()
            .and_then(|t| i64::try_from(t).ok())
            .unwrap_or(0);
        let owner = match options.chown {
            Some(o) => o,
            None => Owner {
                uid: header
                    .uid()
                    .ok()
                    .and_then(|u| u32::try_from(u).ok())
                    .unwrap_or(0),
                gid: header
                    .gid()
                    .ok()
                    .and_then(|g| u32::try_from(g).ok())
                    .unwrap_or(0),
            },
        };
        let is_dir = kind == EntryType::Directory;
        // A directory entry merges into what its path leads to (`lib/` into a `lib -> usr/lib`
        // link); anything else replaces the last component itself.
        let resolved = rootpath::resolve(dest, &name, is_dir)?;
        if resolved.rel.is_empty() {
            continue;
        }
        make_parents(dest, &resolved.rel, &raw, options)?;
        let target = resolved.path;
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() && is_dir => {}
            Ok(m) if m.is_dir() => {
                std::fs::remove_dir_all(&target).map_err(io_err("replacing", &raw))?;
            }
            Ok(_) => std::fs::remove_file(&target).map_err(io_err("replacing", &raw))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspecting", &raw)(e)),
        }
        match kind {
            EntryType::Directory => {
                if !target.is_dir() {
                    std::fs::create_dir(&target).map_err(io_err("creating", &raw))?;
                }
                chown(&target, owner, options, &raw)?;
                dirs.push(DirFinish {
                    path: target,
                    mode,
                    mtime,
                });
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(io_err("creating symlink", &raw))?;
                chown(&target, owner, options, &raw)?;
                set_mtime(&target, mtime, &raw)?;
            }
            EntryType::Link => {
                let link_raw = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let link = clean_entry(&link_raw)
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| ArchiveError::Escapes {
                        entry: link_raw.clone(),
                    })?;
                // The target's own last component is linked, not followed: a hard link to a
                // symlink is a second name for the symlink, wherever it points.
                let existing = rootpath::resolve(dest, &link, false)?.path;
                std::fs::hard_link(&existing, &target).map_err(io_err("linking", &raw))?;
            }
            // Regular files, and the kinds tar readers treat as such (contiguous, sparse).
            _ => {
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io_err("creating", &raw))?;
                io::copy(&mut entry, &mut out).map_err(io_err("writing", &raw))?;
                drop(out);
                // Owner before mode: a chown clears setuid and setgid bits.
                chown(&target, owner, options, &raw)?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
                    .map_err(io_err("chmod", &raw))?;
                set_mtime(&target, mtime, &raw)?;
            }
        }
    }
    // Writing into a directory changes its mtime, and a read-only mode would stop an
    // unprivileged writer, so directories are finished last, deepest (latest) first.
    for d in dirs.iter().rev() {
        let shown = d.path.display().to_string();
        std::fs::set_permissions(&d.path, std::fs::Permissions::from_mode(d.mode))
            .map_err(io_err("chmod", &shown))?;
        set_mtime(&d.path, d.mtime, &shown)?;
    }
    Ok(())
}

/// Creates the missing parents of `rel` (resolved, so free of symlinks where it exists)
/// 0755 with the implied owner, as BuildKit does for directories an archive does not list.
fn make_parents(
    dest: &Path,
    rel: &str,
    entry: &str,
    options: ExtractOptions,
) -> Result<(), ArchiveError> {
    let parts: Vec<&str> = rel.split('/').collect();
    let mut path = dest.to_path_buf();
    let mut shown = String::new();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        path.push(part);
        shown.push('/');
        shown.push_str(part);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ArchiveError::NotADirectory {
                    entry: entry.to_string(),
                    path: shown,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&path).map_err(io_err("creating", entry))?;
                let owner = options.chown.unwrap_or(options.implied_owner);
                chown(&path, owner, options, entry)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .map_err(io_err("chmod", entry))?;
            }
            Err(e) => return Err(io_err("inspecting", entry)(e)),
        }
    }
    Ok(())
}

fn chown(
    target: &Path,
    owner: Owner,
    options: ExtractOptions,
    entry: &str,
) -> Result<(), ArchiveError> {
    if !options.set_owner {
        return Ok(());
    }
    // Only when it differs: an unchanged owner needs no syscall, and a chown clears setgid.
    if let Ok(m) = std::fs::symlink_metadata(target)
        && (m.uid(), m.gid()) == (owner.uid, owner.gid)
    {
        return Ok(());
    }
    std::os::unix::fs::lchown(target, Some(owner.uid), Some(owner.gid))
        .map_err(io_err("chown", entry))
}

fn set_mtime(target: &Path, sec: i64, entry: &str) -> Result<(), ArchiveError> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, utimensat};
    let ts = Timespec {
        tv_sec: sec,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    utimensat(CWD, target, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| io_err("setting times of", entry)(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_stay_inside() {
        assert_eq!(clean_entry("./a/b/").as_deref(), Some("a/b"));
        assert_eq!(clean_entry("/etc/x").as_deref(), Some("etc/x"));
        assert_eq!(clean_entry("a/../b").as_deref(), Some("b"));
        assert_eq!(clean_entry("./").as_deref(), Some(""));
        assert_eq!(clean_entry("../../etc/x"), None);
        assert_eq!(clean_entry("a/../../x"), None);
    }

    #[test]
    fn zero_and_garbage_blocks_are_not_headers() {
        assert!(!valid_tar_header(&[0u8; TAR_BLOCK]));
        let mut garbage = [b'x'; TAR_BLOCK];
        assert!(!valid_tar_header(&garbage));
        let mut h = tar::Header::new_ustar();
        h.set_path("a").unwrap();
        h.set_size(0);
        h.set_cksum();
        garbage.copy_from_slice(h.as_bytes());
        assert!(valid_tar_header(&garbage));
    }
}
