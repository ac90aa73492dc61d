//! COPY and ADD: first a plan — the list of directories, files and symlinks to create in the
//! stage's root filesystem, with BuildKit's destination rules applied — then the copy itself.
//!
//! The rules, as BuildKit applies them:
//! * the destination is relative to WORKDIR unless absolute; a destination ending in `/` (or
//!   `.`) is a directory, created when missing; so is a destination that already is one;
//! * a file source lands inside a directory destination under its own name, otherwise at the
//!   destination path; a directory source copies its *contents* into the destination;
//! * several sources (or a wildcard matching several) need a directory destination ending in
//!   `/`;
//! * missing parent directories are created 0755 and owned like the copied files; an
//!   existing destination directory keeps its own metadata, nested directories take the
//!   source's;
//! * files are owned 0:0 unless `--chown`; modes and mtimes are kept unless `--chmod`
//!   (applied to files and directories alike); symlinks are copied as symlinks;
//! * `--parents` keeps each source's path (below a `/./` pivot) under the destination;
//! * `--exclude` patterns match paths below a directory source, and a wildcard match by its
//!   path below the wildcard's literal prefix;
//! * files sharing an inode in the source share one in the copy (hard links kept);
//! * ADD extracts a local tar archive (recognised by content, see [`crate::archive`]) into
//!   the destination, which is then always a directory, unless `--unpack=false`; a URL
//!   source (downloaded beforehand, see [`crate::remote`]) is a file, 0600 unless
//!   `--chmod`, extracted only with `--unpack=true`.
//!
//! Writing never follows a symlink out of the root: parents are resolved as if chrooted and
//! the last component of a file or symlink is replaced, never written through.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::archive::{self, ArchiveError, ExtractOptions};
use crate::context::{BuildContext, ContextError, FileKind, Source};
use crate::dockerignore::{IgnoreError, PatternMatcher};
use crate::pattern::clean;
use crate::remote::{self, Download};
use crate::rootpath::{self, RootPathError};
use crate::users::Owner;

/// Errors planning or performing a copy.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Several sources and a destination that is not a directory.
    #[error(
        "When using {keyword} with more than one source file, the destination must be a \
         directory and end with a /"
    )]
    NeedDirectory {
        /// `COPY` or `ADD`.
        keyword: String,
    },
    /// A `--chmod` value that is not an octal mode.
    #[error(
        "invalid chmod parameter: '{value}'. it should be octal string and between 0 and 07777"
    )]
    BadChmod {
        /// The value as given.
        value: String,
    },
    /// Resolving a source failed.
    #[error("{keyword}: {error}")]
    Source {
        /// `COPY` or `ADD`.
        keyword: String,
        /// What went wrong.
        error: ContextError,
    },
    /// `--exclude` patterns are invalid.
    #[error(transparent)]
    Exclude(#[from] IgnoreError),
    /// Something this part of the executor does not do yet.
    #[error("{keyword} {source_path}: {what} is not supported yet")]
    Unsupported {
        /// `COPY` or `ADD`.
        keyword: String,
        /// The source concerned.
        source_path: String,
        /// What is missing.
        what: &'static str,
    },
    /// A directory would have to replace a file.
    #[error("cannot copy to non-directory: {dest}")]
    NotADirectory {
        /// The destination inside the root.
        dest: String,
    },
    /// A file would have to replace a directory.
    #[error("cannot replace directory {dest} with a non-directory")]
    IsADirectory {
        /// The destination inside the root.
        dest: String,
    },
    /// Resolving a destination inside the root failed.
    #[error(transparent)]
    Resolve(#[from] RootPathError),
    /// Extracting an archive failed (or it tried to leave its destination).
    #[error("ADD {archive}: {source}")]
    Archive {
        /// The archive's source path or URL.
        archive: String,
        /// What went wrong.
        source: ArchiveError,
    },
    /// An I/O error on a named path.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path (destination inside the root, or source on disk).
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A heredoc used as a source (`COPY <<EOF /x`), content already expanded when it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeredocSource {
    /// The delimiter, which is also the file name.
    pub name: String,
    /// The file content.
    pub content: String,
}

/// A COPY or ADD after expansion, ready to plan.
#[derive(Debug, Clone, Default)]
pub struct CopySpec {
    /// `ADD` rather than `COPY` (URLs and archives are ADD's own).
    pub is_add: bool,
    /// Sources as written (after expansion); heredoc names included.
    pub sources: Vec<String>,
    /// Heredoc bodies, matched to `sources` by name.
    pub heredocs: Vec<HeredocSource>,
    /// The destination (after expansion).
    pub dest: String,
    /// The stage's WORKDIR (absolute; empty means `/`).
    pub workdir: String,
    /// `--chown`, resolved (see [`crate::users::resolve_chown`]); `None` means 0:0.
    pub owner: Option<Owner>,
    /// `--chmod`, parsed with [`parse_chmod`].
    pub chmod: Option<u32>,
    /// `--exclude` patterns.
    pub excludes: Vec<String>,
    /// `--parents`.
    pub parents: bool,
    /// `ADD --unpack` (`None`: local archives are unpacked, downloads are not).
    pub unpack: Option<bool>,
    /// `ADD <url>` sources already downloaded, matched to `sources` by URL. A URL source
    /// without one is refused: planning never touches the network.
    pub downloads: Vec<Download>,
}

impl CopySpec {
    fn keyword(&self) -> String {
        if self.is_add { "ADD" } else { "COPY" }.to_string()
    }
}

/// Where an operation's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpSource {
    /// Nothing: a directory to make.
    None,
    /// A regular file on disk.
    File(PathBuf),
    /// Literal content (a heredoc).
    Content(Vec<u8>),
    /// A symlink target, copied as written.
    Link(String),
    /// A named pipe to make.
    Fifo,
    /// A hard link to a file an earlier op of the same plan wrote (absolute path in the
    /// root): files sharing an inode in the source share one in the copy.
    HardLink(String),
    /// A tar archive (possibly compressed) extracted into the op's destination directory.
    Archive {
        /// The archive on disk.
        path: PathBuf,
        /// Entries keep the archive's owners (no `--chown`); otherwise they take the op's.
        keep_owners: bool,
    },
}

/// One thing to create in the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOp {
    /// Absolute, cleaned path inside the root.
    pub dest: String,
    /// File, directory or symlink.
    pub kind: FileKind,
    /// The content.
    pub source: OpSource,
    /// Permission bits (ignored for symlinks).
    pub mode: u32,
    /// Owner.
    pub owner: Owner,
    /// Modification time to set; `None` leaves the time of writing.
    pub mtime: Option<(i64, u32)>,
    /// For directories: whether an existing directory takes this op's metadata (nested
    /// directories do; the destination and created parents do not).
    pub overwrite_metadata: bool,
    /// The source path relative to its context, for messages and cache keys.
    pub source_rel: Option<String>,
}

/// The outcome of planning.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopyPlan {
    /// Operations in the order they must run (parents first).
    pub ops: Vec<CopyOp>,
}

/// Parses `--chmod` (octal only, up to 07777).
pub fn parse_chmod(value: &str) -> Result<u32, CopyError> {
    match u32::from_str_radix(value, 8) {
        Ok(mode) if mode <= 0o7777 && !value.is_empty() => Ok(mode),
        _ => Err(CopyError::BadChmod {
            value: value.to_string(),
        }),
    }
}

/// The absolute destination for `dest` under `workdir`, and whether it names a directory.
pub fn destination(workdir: &str, dest: &str) -> (String, bool) {
    let is_dir = dest.is_empty() || dest == "." || dest.ends_with('/');
    let abs = if dest.starts_with('/') {
        clean(dest)
    } else {
        let wd = if workdir.is_empty() { "/" } else { workdir };
        clean(&format!("{wd}/{dest}"))
    };
    (abs, is_dir)
}

fn join_abs(dir: &str, rel: &str) -> String {
    if rel.is_empty() {
        return dir.to_string();
    }
    clean(&format!("{dir}/{rel}"))
}

fn base_name(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap_or(rel)
}

fn is_url(source: &str) -> bool {
    remote::is_http_url(source) || remote::is_git_url(source)
}

struct Planner<'a> {
    spec: &'a CopySpec,
    owner: Owner,
    ensured: BTreeSet<String>,
    ops: Vec<CopyOp>,
    /// First destination of each multiply-linked source inode.
    inodes: std::collections::BTreeMap<(u64, u64), String>,
}

impl Planner<'_> {
    /// Adds "create if missing" ops for every ancestor of `dest`, parents first.
    fn ensure_parents(&mut self, dest: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = dest.split('/').filter(|p| !p.is_empty()).collect();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            prefix.push('/');
            prefix.push_str(part);
            self.ensure_dir(&prefix.clone());
        }
    }

    fn ensure_dir(&mut self, dest: &str) {
        if dest == "/" || !self.ensured.insert(dest.to_string()) {
            return;
        }
        self.ops.push(CopyOp {
            dest: dest.to_string(),
            kind: FileKind::Dir,
            source: OpSource::None,
            mode: 0o755,
            owner: self.owner,
            mtime: None,
            overwrite_metadata: false,
            source_rel: None,
        });
    }

    /// For `--parents`: the directories of the kept path (all of them for a directory
    /// source, all but the last component for a file) are created like BuildKit's copier
    /// creates them, with their source's mode and mtime, after the destination itself.
    fn kept_parents(
        &mut self,
        context: &BuildContext,
        source: &Source,
        dest: &str,
        include_self: bool,
    ) -> Result<(), CopyError> {
        self.ensure_parents(&join_abs(dest, "x"));
        self.ensure_dir(dest);
        let parts: Vec<&str> = source.keep.split('/').filter(|c| !c.is_empty()).collect();
        let count = if include_self {
            parts.len()
        } else {
            parts.len().saturating_sub(1)
        };
        // Where the kept path starts inside the named source path.
        let base = source
            .rel
            .strip_suffix(source.keep.as_str())
            .unwrap_or("")
            .trim_end_matches('/')
            .to_string();
        let mut kept = String::new();
        for part in parts.iter().take(count) {
            kept = join_rel(&kept, part);
            let in_context = join_rel(&base, &kept);
            let on_disk = rootpath::resolve(context.root(), &in_context, true)?.path;
            let meta = std::fs::metadata(&on_disk).map_err(|e| CopyError::Io {
                op: "reading",
                path: on_disk.display().to_string(),
                source: e,
            })?;
            let path = join_abs(dest, &kept);
            if self.ensured.contains(&path) {
                continue;
            }
            self.push(CopyOp {
                dest: path,
                kind: FileKind::Dir,
                source: OpSource::None,
                mode: self.spec.chmod.unwrap_or(meta.mode() & 0o7777),
                owner: self.owner,
                mtime: Some((meta.mtime(), u32::try_from(meta.mtime_nsec()).unwrap_or(0))),
                overwrite_metadata: false,
                source_rel: Some(in_context),
            });
        }
        Ok(())
    }

    /// An archive extracted into `dest`, which becomes a directory whatever its spelling
    /// (BuildKit's unpack makes it with its parents, owned like the copy).
    fn archive(&mut self, path: &Path, dest: &str, source_rel: String) {
        self.ensure_parents(dest);
        self.ensure_dir(dest);
        self.ops.push(CopyOp {
            dest: dest.to_string(),
            kind: FileKind::Dir,
            source: OpSource::Archive {
                path: path.to_owned(),
                keep_owners: self.spec.owner.is_none(),
            },
            mode: 0o755,
            owner: self.owner,
            mtime: None,
            overwrite_metadata: false,
            source_rel: Some(source_rel),
        });
    }

    /// One non-directory at `dest`, its parents made as needed, with the plan's owner.
    fn push_file(
        &mut self,
        dest: String,
        kind: FileKind,
        source: OpSource,
        mode: u32,
        mtime: Option<(i64, u32)>,
        source_rel: Option<String>,
    ) {
        self.ensure_parents(&dest);
        let owner = self.owner;
        self.push(CopyOp {
            dest,
            kind,
            source,
            mode,
            owner,
            mtime,
            overwrite_metadata: true,
            source_rel,
        });
    }

    fn push(&mut self, op: CopyOp) {
        if op.kind == FileKind::Dir {
            self.ensured.insert(op.dest.clone());
        }
        self.ops.push(op);
    }
}

/// Plans a COPY/ADD from `context` into the root filesystem at `rootfs` (read only to see
/// whether the destination already is a directory).
pub fn plan(context: &BuildContext, spec: &CopySpec, rootfs: &Path) -> Result<CopyPlan, CopyError> {
    let keyword = spec.keyword();
    let source_err = |error| CopyError::Source {
        keyword: keyword.clone(),
        error,
    };
    let excludes = PatternMatcher::new(&spec.excludes).map_err(IgnoreError::from)?;
    let (dest, dest_says_dir) = destination(&spec.workdir, &spec.dest);

    enum Item<'s> {
        Heredoc(&'s HeredocSource),
        Download(&'s Download),
        Context(Source),
    }
    let mut items = Vec::new();
    for source in &spec.sources {
        if let Some(h) = spec.heredocs.iter().find(|h| &h.name == source) {
            items.push(Item::Heredoc(h));
            continue;
        }
        if spec.is_add && is_url(source) {
            match spec.downloads.iter().find(|d| &d.url == source) {
                Some(d) if !remote::is_git_url(source) => {
                    items.push(Item::Download(d));
                    continue;
                }
                _ => {
                    return Err(CopyError::Unsupported {
                        keyword,
                        source_path: source.clone(),
                        what: if remote::is_git_url(source) {
                            "ADD from a git repository"
                        } else {
                            "ADD from a URL that was not downloaded first"
                        },
                    });
                }
            }
        }
        for s in context.resolve(source, spec.parents).map_err(source_err)? {
            if !BuildContext::excluded(&s, &excludes) {
                items.push(Item::Context(s));
            }
        }
    }
    // With --parents every source keeps its own path below the destination, so the rule
    // about several sources does not apply.
    if items.len() > 1 && !dest_says_dir && !spec.parents {
        return Err(CopyError::NeedDirectory { keyword });
    }
    let existing = rootpath::resolve(rootfs, &dest, true)?;
    let dest_is_dir = dest_says_dir || existing.path.is_dir();

    let owner = spec.owner.unwrap_or_default();
    let mut p = Planner {
        spec,
        owner,
        ensured: BTreeSet::new(),
        ops: Vec::new(),
        inodes: std::collections::BTreeMap::new(),
    };
    for item in items {
        match item {
            Item::Heredoc(h) => {
                let target = if dest_is_dir {
                    join_abs(&dest, &h.name)
                } else {
                    dest.clone()
                };
                p.push_file(
                    target,
                    FileKind::File,
                    OpSource::Content(h.content.clone().into_bytes()),
                    spec.chmod.unwrap_or(0o644),
                    None,
                    None,
                );
            }
            Item::Download(d) => {
                // Remote archives are extracted only on request (BuildKit's `--unpack`
                // default is false for URLs).
                if spec.unpack == Some(true) && archive::is_archive(&d.path) {
                    p.archive(&d.path, &dest, d.url.clone());
                    continue;
                }
                let target = if dest_is_dir {
                    join_abs(&dest, &d.name)
                } else {
                    dest.clone()
                };
                p.push_file(
                    target,
                    FileKind::File,
                    OpSource::File(d.path.clone()),
                    spec.chmod.unwrap_or(0o600),
                    d.mtime.map(|t| (t, 0)),
                    Some(d.url.clone()),
                );
            }
            Item::Context(s) if s.kind == FileKind::Dir => {
                let top = if p.spec.parents {
                    p.kept_parents(context, &s, &dest, true)?;
                    join_abs(&dest, &s.keep)
                } else {
                    dest.clone()
                };
                p.ensure_parents(&top);
                p.ensure_dir(&top);
                for entry in context.walk(&s, &excludes).map_err(source_err)? {
                    let (source, mode) = match entry.kind {
                        FileKind::Other => continue,
                        FileKind::Dir => (OpSource::None, spec.chmod.unwrap_or(entry.mode)),
                        FileKind::Fifo => (OpSource::Fifo, spec.chmod.unwrap_or(entry.mode)),
                        FileKind::File => {
                            let dest = join_abs(&top, &entry.rel);
                            let source = match (entry.nlink > 1)
                                .then(|| p.inodes.get(&entry.inode))
                                .flatten()
                            {
                                Some(first) => OpSource::HardLink(first.clone()),
                                None => {
                                    if entry.nlink > 1 {
                                        p.inodes.insert(entry.inode, dest);
                                    }
                                    OpSource::File(entry.path.clone())
                                }
                            };
                            (source, spec.chmod.unwrap_or(entry.mode))
                        }
                        FileKind::Symlink => {
                            let target =
                                std::fs::read_link(&entry.path).map_err(|e| CopyError::Io {
                                    op: "reading link",
                                    path: entry.path.display().to_string(),
                                    source: e,
                                })?;
                            (OpSource::Link(target.to_string_lossy().into_owned()), 0o777)
                        }
                    };
                    p.push(CopyOp {
                        dest: join_abs(&top, &entry.rel),
                        kind: entry.kind,
                        source,
                        mode,
                        owner,
                        mtime: Some(entry.mtime),
                        overwrite_metadata: true,
                        source_rel: Some(join_rel(&s.rel, &entry.rel)),
                    });
                }
            }
            Item::Context(s) if matches!(s.kind, FileKind::File | FileKind::Fifo) => {
                if s.kind == FileKind::File
                    && spec.is_add
                    && spec.unpack != Some(false)
                    && archive::is_archive(&s.path)
                {
                    p.archive(&s.path, &dest, s.rel.clone());
                    continue;
                }
                let target = if p.spec.parents {
                    p.kept_parents(context, &s, &dest, false)?;
                    join_abs(&dest, &s.keep)
                } else if dest_is_dir {
                    join_abs(&dest, base_name(&s.rel))
                } else {
                    dest.clone()
                };
                let meta = std::fs::metadata(&s.path).map_err(|e| CopyError::Io {
                    op: "reading",
                    path: s.path.display().to_string(),
                    source: e,
                })?;
                let source = if s.kind == FileKind::Fifo {
                    OpSource::Fifo
                } else {
                    OpSource::File(s.path.clone())
                };
                p.push_file(
                    target,
                    s.kind,
                    source,
                    spec.chmod.unwrap_or(meta.mode() & 0o7777),
                    Some((meta.mtime(), u32::try_from(meta.mtime_nsec()).unwrap_or(0))),
                    Some(s.rel.clone()),
                );
            }
            // Device nodes would need mknod, which builder pods do not have; sockets are no
            // files to ship.
            Item::Context(_) => {}
        }
    }
    Ok(CopyPlan { ops: p.ops })
}

/// The plan BuildKit runs for `WORKDIR <path>` (other than `/`): the directory and its
/// missing parents created 0755, owned by the stage's USER (resolved by the caller), and
/// nothing changed where they exist.
pub fn workdir_plan(path: &str, owner: Owner) -> CopyPlan {
    let spec = CopySpec::default();
    let mut p = Planner {
        spec: &spec,
        owner,
        ensured: BTreeSet::new(),
        ops: Vec::new(),
        inodes: std::collections::BTreeMap::new(),
    };
    let dest = clean(&format!("/{path}"));
    p.ensure_parents(&dest);
    p.ensure_dir(&dest);
    CopyPlan { ops: p.ops }
}

fn join_rel(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

/// How [`apply`] treats ownership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Set owners (needs CAP_CHOWN); off for unprivileged dry runs and tests.
    pub set_owner: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self { set_owner: true }
    }
}

fn io_err<'a>(op: &'static str, path: &'a str) -> impl FnOnce(std::io::Error) -> CopyError + 'a {
    move |source| CopyError::Io {
        op,
        path: path.to_string(),
        source,
    }
}

/// Performs a plan in the root filesystem at `rootfs`.
pub fn apply(plan: &CopyPlan, rootfs: &Path, options: ApplyOptions) -> Result<(), CopyError> {
    // A directory's mtime changes while its contents are written, and a read-only mode would
    // stop an unprivileged writer filling it, so directory modes and times are set at the
    // end, deepest first (owners at once: a chown would clear setgid set earlier).
    let mut dir_finish: Vec<(PathBuf, &CopyOp)> = Vec::new();
    for op in &plan.ops {
        if let OpSource::Archive { path, keep_owners } = &op.source {
            let target = rootpath::resolve(rootfs, &op.dest, true)?.path;
            if !target.is_dir() {
                return Err(CopyError::NotADirectory {
                    dest: op.dest.clone(),
                });
            }
            let extract = ExtractOptions {
                chown: (!keep_owners).then_some(op.owner),
                implied_owner: op.owner,
                set_owner: options.set_owner,
            };
            archive::extract(path, &target, extract).map_err(|source| CopyError::Archive {
                archive: op.source_rel.clone().unwrap_or_default(),
                source,
            })?;
            continue;
        }
        let (parent, name) = match op.dest.rfind('/') {
            Some(i) => (&op.dest[..i], &op.dest[i + 1..]),
            None => ("", op.dest.as_str()),
        };
        if op.kind == FileKind::Dir {
            let resolved = rootpath::resolve(rootfs, &op.dest, true)?;
            let target = resolved.path;
            match std::fs::symlink_metadata(&target) {
                Ok(meta) if meta.is_dir() => {
                    if op.overwrite_metadata {
                        set_owner(&target, op, options)?;
                        dir_finish.push((target, op));
                    }
                }
                Ok(_) => {
                    return Err(CopyError::NotADirectory {
                        dest: op.dest.clone(),
                    });
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    create_missing_parents(rootfs, &resolved.rel, op, options)?;
                    std::fs::create_dir(&target).map_err(io_err("creating", &op.dest))?;
                    set_owner(&target, op, options)?;
                    dir_finish.push((target, op));
                }
                Err(e) => return Err(io_err("inspecting", &op.dest)(e)),
            }
            continue;
        }
        if name.is_empty() {
            return Err(CopyError::IsADirectory {
                dest: op.dest.clone(),
            });
        }
        let parent_path = rootpath::resolve(rootfs, parent, true)?.path;
        let target = parent_path.join(name);
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => {
                return Err(CopyError::IsADirectory {
                    dest: op.dest.clone(),
                });
            }
            Ok(_) => std::fs::remove_file(&target).map_err(io_err("replacing", &op.dest))?,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspecting", &op.dest)(e)),
        }
        match &op.source {
            OpSource::Link(link) => {
                std::os::unix::fs::symlink(link, &target)
                    .map_err(io_err("creating symlink", &op.dest))?;
                if options.set_owner {
                    std::os::unix::fs::lchown(&target, Some(op.owner.uid), Some(op.owner.gid))
                        .map_err(io_err("chown", &op.dest))?;
                }
                if let Some(t) = op.mtime {
                    set_mtime(&target, t, &op.dest)?;
                }
            }
            OpSource::File(from) => {
                let mut input =
                    std::fs::File::open(from).map_err(io_err("opening source for", &op.dest))?;
                let mut output = create_new(&target, &op.dest)?;
                std::io::copy(&mut input, &mut output).map_err(io_err("writing", &op.dest))?;
                drop(output);
                set_metadata(&target, op, options, &op.dest)?;
            }
            OpSource::Content(bytes) => {
                let mut output = create_new(&target, &op.dest)?;
                std::io::Write::write_all(&mut output, bytes)
                    .map_err(io_err("writing", &op.dest))?;
                drop(output);
                set_metadata(&target, op, options, &op.dest)?;
            }
            OpSource::Fifo => {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &target,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(op.mode & 0o777),
                    0,
                )
                .map_err(|e| io_err("making fifo", &op.dest)(e.into()))?;
                set_metadata(&target, op, options, &op.dest)?;
            }
            OpSource::HardLink(first) => {
                let existing = rootpath::resolve(rootfs, first, false)?.path;
                std::fs::hard_link(&existing, &target).map_err(io_err("linking", &op.dest))?;
            }
            OpSource::None | OpSource::Archive { .. } => {}
        }
    }
    for (path, op) in dir_finish.iter().rev() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(op.mode))
            .map_err(io_err("chmod", &op.dest))?;
        if let Some(t) = op.mtime {
            set_mtime(path, t, &op.dest)?;
        }
    }
    Ok(())
}

/// Creates the missing ancestors of `rel` (already resolved, so free of symlinks where it
/// exists) 0755 with the op's owner. Only needed when a symlink in the root sent the
/// destination somewhere the plan's own parent directories do not cover.
fn create_missing_parents(
    rootfs: &Path,
    rel: &str,
    op: &CopyOp,
    options: ApplyOptions,
) -> Result<(), CopyError> {
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let mut path = rootfs.to_path_buf();
    let parent = CopyOp {
        mode: 0o755,
        mtime: None,
        ..op.clone()
    };
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(CopyError::NotADirectory {
                    dest: op.dest.clone(),
                });
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                std::fs::create_dir(&path).map_err(io_err("creating", &op.dest))?;
                set_metadata(&path, &parent, options, &op.dest)?;
            }
            Err(e) => return Err(io_err("inspecting", &op.dest)(e)),
        }
    }
    Ok(())
}

/// Creates a file that must not exist yet: `O_EXCL` also refuses a symlink planted there.
fn create_new(target: &Path, dest: &str) -> Result<std::fs::File, CopyError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)
        .map_err(io_err("creating", dest))
}

fn set_owner(target: &Path, op: &CopyOp, options: ApplyOptions) -> Result<(), CopyError> {
    if options.set_owner {
        std::os::unix::fs::lchown(target, Some(op.owner.uid), Some(op.owner.gid))
            .map_err(io_err("chown", &op.dest))?;
    }
    Ok(())
}

/// Owner first, then mode (a chown clears setuid/setgid bits), then time.
fn set_metadata(
    target: &Path,
    op: &CopyOp,
    options: ApplyOptions,
    dest: &str,
) -> Result<(), CopyError> {
    set_owner(target, op, options)?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(op.mode))
        .map_err(io_err("chmod", dest))?;
    if let Some(t) = op.mtime {
        set_mtime(target, t, dest)?;
    }
    Ok(())
}

fn set_mtime(target: &Path, (sec, nsec): (i64, u32), dest: &str) -> Result<(), CopyError> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, utimensat};
    let ts = Timespec {
        tv_sec: sec,
        tv_nsec: nsec.into(),
    };
    let times = Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    utimensat(CWD, target, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| io_err("setting times of", dest)(e.into()))
}
