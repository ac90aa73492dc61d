//! A build context: a directory with its `.dockerignore` rules, and the resolution of COPY/ADD
//! sources against it. Ignored files behave as if they were never sent (BuildKit applies the
//! rules when it transfers the context), a directory that is excluded but holds re-included
//! files exists only to carry them, source paths are cleaned so `..` cannot climb out, and
//! symlinks are resolved inside the root (see [`crate::rootpath`]). The same type, with no
//! ignore rules, serves `COPY --from=<stage>` over a stage's root filesystem.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::dockerignore::{self, IgnoreError, PatternMatcher};
use crate::pattern::{self, Flavor, Glob, PatternError};
use crate::rootpath::{self, RootPathError};

/// Errors resolving sources.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The root cannot be used.
    #[error("build context {path}: {source}")]
    Root {
        /// The context directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `.dockerignore` or `--exclude` patterns are invalid.
    #[error(transparent)]
    Ignore(#[from] IgnoreError),
    /// A wildcard source is malformed.
    #[error("source {source_path:?}: {error}")]
    Pattern {
        /// The source as written.
        source_path: String,
        /// The pattern error.
        error: PatternError,
    },
    /// A literal source does not exist (or is ignored).
    #[error("{path:?}: not found")]
    NotFound {
        /// The cleaned source path, absolute within the context.
        path: String,
    },
    /// A wildcard source matched nothing.
    #[error("{source_path:?}: no source files were specified")]
    NoSourceFiles {
        /// The source as written.
        source_path: String,
    },
    /// Resolving a path inside the context failed.
    #[error(transparent)]
    Resolve(#[from] RootPathError),
    /// Reading a file or directory failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The path relative to the context.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What a path is, symlinks not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe: copied as a new, empty one (as BuildKit's copier and buildah do).
    Fifo,
    /// A socket or device: skipped by copies (device nodes would need mknod, which
    /// builder pods do not have; a socket is no file to ship).
    Other,
}

impl FileKind {
    fn of(meta: &Metadata) -> Self {
        let t = meta.file_type();
        if t.is_symlink() {
            Self::Symlink
        } else if t.is_dir() {
            Self::Dir
        } else if t.is_file() {
            Self::File
        } else if std::os::unix::fs::FileTypeExt::is_fifo(&t) {
            Self::Fifo
        } else {
            Self::Other
        }
    }
}

/// One resolved COPY/ADD source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The source as named, cleaned, relative to the context root (`""` for the root).
    pub rel: String,
    /// For `--parents`: the part of `rel` kept below the destination (after a `/./` pivot,
    /// else all of it).
    pub keep: String,
    /// On disk, with symlinks followed inside the context (BuildKit follows a source's own
    /// symlinks).
    pub path: PathBuf,
    /// The file type after following.
    pub kind: FileKind,
    /// For a wildcard match: its path below the wildcard's literal prefix directory (what
    /// `--exclude` patterns see for a matched entry itself).
    pub match_rel: Option<String>,
}

/// A file or directory found under a directory source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path below the source directory, '/'-separated.
    pub rel: String,
    /// On disk (not followed: symlinks stay symlinks).
    pub path: PathBuf,
    /// The type.
    pub kind: FileKind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Modification time, seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
    /// Device and inode, to keep hard links within one copy.
    pub inode: (u64, u64),
    /// Link count (a regular file with more than one may share its inode with another entry).
    pub nlink: u64,
}

impl Entry {
    pub(crate) fn from_meta(rel: String, path: PathBuf, meta: &Metadata) -> Self {
        Self {
            rel,
            path,
            kind: FileKind::of(meta),
            mode: meta.mode() & 0o7777,
            mtime: (meta.mtime(), u32::try_from(meta.mtime_nsec()).unwrap_or(0)),
            inode: (meta.dev(), meta.ino()),
            nlink: meta.nlink(),
        }
    }
}

/// A directory that COPY and ADD read from.
#[derive(Debug, Clone)]
pub struct BuildContext {
    root: PathBuf,
    ignore: PatternMatcher,
}

impl BuildContext {
    /// A context rooted at `root`, with the rules of `root/.dockerignore` if there is one.
    pub fn open(root: &Path) -> Result<Self, ContextError> {
        let patterns = dockerignore::read(root)?;
        Self::with_patterns(root, &patterns)
    }

    /// A context for a build of `dockerfile`: `<Dockerfile>.dockerignore` next to it is used
    /// when it exists, else `root/.dockerignore` (see [`dockerignore::read_for`]).
    pub fn open_for(root: &Path, dockerfile: &Path) -> Result<Self, ContextError> {
        let patterns = dockerignore::read_for(root, Some(dockerfile))?;
        Self::with_patterns(root, &patterns)
    }

    /// A context rooted at `root` with the given ignore patterns (none for a stage's root).
    pub fn with_patterns<S: AsRef<str>>(root: &Path, patterns: &[S]) -> Result<Self, ContextError> {
        let meta = std::fs::metadata(root).map_err(|source| ContextError::Root {
            path: root.display().to_string(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(ContextError::Root {
                path: root.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        Ok(Self {
            root: root.to_path_buf(),
            ignore: PatternMatcher::new(patterns).map_err(IgnoreError::from)?,
        })
    }

    /// The context directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `.dockerignore` excludes `rel` (relative to the root).
    pub fn is_ignored(&self, rel: &str) -> bool {
        !rel.is_empty() && self.ignore.matches(rel)
    }

    /// Whether `rel` exists in the context as sent: not ignored, or an ignored directory that
    /// still holds a re-included file.
    fn visible(&self, rel: &str, path: &Path, kind: FileKind) -> Result<bool, ContextError> {
        if !self.is_ignored(rel) {
            return Ok(true);
        }
        if kind != FileKind::Dir || !self.ignore.has_exclusions() {
            return Ok(false);
        }
        let none = PatternMatcher::default();
        Ok(!self.walk_dir(path, rel, "", &none)?.is_empty())
    }

    /// Resolves one source as written (already expanded). Wildcards (`*`, `?`, `[...]`) are
    /// matched per path component with Go's `filepath.Match`; matches come sorted. With
    /// `parents`, a `/./` in the source marks where the kept path starts.
    pub fn resolve(&self, source: &str, parents: bool) -> Result<Vec<Source>, ContextError> {
        let (before, after) = match source.find("/./") {
            Some(i) if parents => (&source[..i], &source[i + 3..]),
            _ => ("", source),
        };
        let prefix = rel_clean(before);
        let full = rel_clean(&format!("{before}/{after}"));
        // Cleaning `before/after` together could let `..` in `after` climb above the pivot;
        // then nothing is kept below it.
        let keep_from = if prefix.is_empty() || full.starts_with(&format!("{prefix}/")) {
            prefix.len()
        } else {
            0
        };
        let components: Vec<&str> = if full.is_empty() {
            Vec::new()
        } else {
            full.split('/').collect()
        };
        let first_meta = components.iter().position(|c| pattern::has_meta(c));
        let wildcard = first_meta.is_some();
        // Length of the literal directory prefix a wildcard match is relative to.
        let literal_len = first_meta.map(|i| components[..i].join("/").len());
        let mut candidates: Vec<String> = vec![String::new()];
        for component in &components {
            if !pattern::has_meta(component) {
                for c in &mut candidates {
                    *c = join(c, component);
                }
                continue;
            }
            let glob =
                Glob::new(component, Flavor::Component).map_err(|error| ContextError::Pattern {
                    source_path: source.to_string(),
                    error,
                })?;
            let mut next = Vec::new();
            for dir in &candidates {
                let resolved = rootpath::resolve(&self.root, dir, true)?;
                let Ok(entries) = std::fs::read_dir(&resolved.path) else {
                    continue;
                };
                let mut names: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| glob.matches(n))
                    .collect();
                names.sort();
                next.extend(names.into_iter().map(|n| join(dir, &n)));
            }
            candidates = next;
        }
        let mut out = Vec::new();
        for rel in candidates {
            let resolved = rootpath::resolve(&self.root, &rel, true)?;
            let meta = match std::fs::symlink_metadata(&resolved.path) {
                Ok(m) => m,
                Err(_) if wildcard => continue,
                Err(_) => return Err(not_found(&rel)),
            };
            let kind = FileKind::of(&meta);
            if !self.visible(&rel, &resolved.path, kind)?
                || (resolved.rel != rel && !self.visible(&resolved.rel, &resolved.path, kind)?)
            {
                if wildcard {
                    continue;
                }
                return Err(not_found(&rel));
            }
            let keep = rel
                .get(keep_from..)
                .unwrap_or("")
                .trim_start_matches('/')
                .to_string();
            let match_rel = literal_len.map(|n| {
                rel.get(n..)
                    .unwrap_or("")
                    .trim_start_matches('/')
                    .to_string()
            });
            out.push(Source {
                keep: if parents { keep } else { String::new() },
                rel,
                path: resolved.path,
                kind,
                match_rel,
            });
        }
        if out.is_empty() {
            return Err(ContextError::NoSourceFiles {
                source_path: source.to_string(),
            });
        }
        Ok(out)
    }

    /// Everything under a directory source, sorted, with ignored and `excludes`-matched
    /// entries left out (an excluded directory is still entered when some pattern is an
    /// exception, and kept only if it holds something). As in BuildKit's copier, `excludes`
    /// match paths relative to the source directory (`COPY --exclude=setup/** root/ /`
    /// drops `root/setup`).
    pub fn walk(
        &self,
        source: &Source,
        excludes: &PatternMatcher,
    ) -> Result<Vec<Entry>, ContextError> {
        let base = source
            .path
            .strip_prefix(&self.root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.walk_dir(&source.path, &base, "", excludes)
    }

    /// Whether `--exclude` patterns drop a top-level source: only wildcard matches can be,
    /// by their path below the wildcard's literal prefix (`COPY --exclude=*.txt hom* /d/`
    /// skips `home.txt`); a source named literally is always copied.
    pub fn excluded(source: &Source, excludes: &PatternMatcher) -> bool {
        source
            .match_rel
            .as_deref()
            .is_some_and(|m| !m.is_empty() && excludes.matches(m))
    }

    /// `ctx_rel` is the directory's real path in the context (for `.dockerignore`),
    /// `named_rel` the prefix `--exclude` patterns see before paths below it.
    fn walk_dir(
        &self,
        dir: &Path,
        ctx_rel: &str,
        named_rel: &str,
        excludes: &PatternMatcher,
    ) -> Result<Vec<Entry>, ContextError> {
        let mut out = Vec::new();
        self.walk_into(dir, ctx_rel, named_rel, "", excludes, &mut out)?;
        Ok(out)
    }

    fn walk_into(
        &self,
        dir: &Path,
        ctx_rel: &str,
        named_rel: &str,
        below: &str,
        excludes: &PatternMatcher,
        out: &mut Vec<Entry>,
    ) -> Result<(), ContextError> {
        let io = |source| ContextError::Io {
            path: join(ctx_rel, below),
            source,
        };
        let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(dir)
            .map_err(io)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        names.sort();
        for name in names {
            let name_str = name.to_string_lossy().into_owned();
            let rel_below = join(below, &name_str);
            let path = dir.join(&name);
            let meta = std::fs::symlink_metadata(&path).map_err(|source| ContextError::Io {
                path: join(ctx_rel, &rel_below),
                source,
            })?;
            let ignored = self.is_ignored(&join(ctx_rel, &rel_below));
            let excluded = excludes.matches(&join(named_rel, &rel_below));
            let entry = Entry::from_meta(rel_below.clone(), path.clone(), &meta);
            if entry.kind == FileKind::Dir {
                let may_hold = (!ignored || self.ignore.has_exclusions())
                    && (!excluded || excludes.has_exclusions());
                if !may_hold {
                    continue;
                }
                let mark = out.len();
                self.walk_into(&path, ctx_rel, named_rel, &rel_below, excludes, out)?;
                if (!ignored && !excluded) || out.len() > mark {
                    out.insert(mark, entry);
                }
            } else if !ignored && !excluded {
                out.push(entry);
            }
        }
        Ok(())
    }
}

fn not_found(rel: &str) -> ContextError {
    ContextError::NotFound {
        path: format!("/{rel}"),
    }
}

/// Cleans a source path into a root-relative one; `..` cannot leave the root.
fn rel_clean(path: &str) -> String {
    pattern::clean(&format!("/{path}"))
        .trim_start_matches('/')
        .to_string()
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn context(files: &[&str], ignore: &str) -> (tempfile::TempDir, BuildContext) {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            write(dir.path(), f, f);
        }
        std::fs::write(dir.path().join(".dockerignore"), ignore).unwrap();
        let ctx = BuildContext::open(dir.path()).unwrap();
        (dir, ctx)
    }

    fn rels(sources: &[Source]) -> Vec<&str> {
        sources.iter().map(|s| s.rel.as_str()).collect()
    }

    #[test]
    fn literal_and_wildcard_sources() {
        let (_d, ctx) = context(
            &[
                "a.txt",
                "b.txt",
                "c.md",
                "src/x/main.go",
                "src/y/main.go",
                "src/z/lib.go",
            ],
            "",
        );
        assert_eq!(rels(&ctx.resolve("a.txt", false).unwrap()), ["a.txt"]);
        assert_eq!(rels(&ctx.resolve("/a.txt", false).unwrap()), ["a.txt"]);
        assert_eq!(rels(&ctx.resolve("../../a.txt", false).unwrap()), ["a.txt"]);
        assert_eq!(
            rels(&ctx.resolve("*.txt", false).unwrap()),
            ["a.txt", "b.txt"]
        );
        assert_eq!(
            rels(&ctx.resolve("[ab].*", false).unwrap()),
            ["a.txt", "b.txt"]
        );
        assert_eq!(
            rels(&ctx.resolve("src/*/main.go", false).unwrap()),
            ["src/x/main.go", "src/y/main.go"]
        );
        assert_eq!(rels(&ctx.resolve(".", false).unwrap()), [""]);
        let e = ctx.resolve("missing.txt", false).unwrap_err();
        assert_eq!(e.to_string(), "\"/missing.txt\": not found");
        let e = ctx.resolve("*.rs", false).unwrap_err();
        assert_eq!(e.to_string(), "\"*.rs\": no source files were specified");
        assert!(matches!(
            ctx.resolve("[a", false),
            Err(ContextError::Pattern { .. })
        ));
    }

    #[test]
    fn ignored_files_do_not_exist() {
        let (_d, ctx) = context(
            &[
                "keep.txt",
                "secret.env",
                "docs/a.md",
                "docs/keep.md",
                "logs/x.log",
            ],
            "*.env\ndocs\n!docs/keep.md\nlogs\n",
        );
        assert!(matches!(
            ctx.resolve("secret.env", false),
            Err(ContextError::NotFound { .. })
        ));
        assert!(ctx.resolve("logs", false).is_err());
        assert_eq!(
            rels(&ctx.resolve("*", false).unwrap()),
            [".dockerignore", "docs", "keep.txt"]
        );
        let docs = &ctx.resolve("docs", false).unwrap()[0];
        let entries = ctx.walk(docs, &PatternMatcher::default()).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(names, ["keep.md"]);
        let root = &ctx.resolve(".", false).unwrap()[0];
        let all: Vec<_> = ctx
            .walk(root, &PatternMatcher::default())
            .unwrap()
            .into_iter()
            .map(|e| e.rel)
            .collect();
        assert_eq!(all, [".dockerignore", "docs", "docs/keep.md", "keep.txt"]);
    }

    #[test]
    fn excludes_and_parents() {
        let (_d, ctx) = context(
            &[
                "hom1.txt",
                "home.md",
                "homer.go",
                "app/a/b/c.txt",
                "app/a/b/d.go",
            ],
            "",
        );
        let ex = PatternMatcher::new(&["*.txt"]).unwrap();
        let kept: Vec<_> = ctx
            .resolve("hom*", false)
            .unwrap()
            .into_iter()
            .filter(|s| !BuildContext::excluded(s, &ex))
            .map(|s| s.rel)
            .collect();
        assert_eq!(kept, ["home.md", "homer.go"]);
        let app = &ctx.resolve("app", false).unwrap()[0];
        assert!(!BuildContext::excluded(
            app,
            &PatternMatcher::new(&["app"]).unwrap()
        ));
        let ex = PatternMatcher::new(&["**/*.go"]).unwrap();
        let names: Vec<_> = ctx
            .walk(app, &ex)
            .unwrap()
            .into_iter()
            .map(|e| e.rel)
            .collect();
        assert_eq!(names, ["a", "a/b", "a/b/c.txt"]);

        let s = ctx.resolve("app/a/b/c.txt", true).unwrap();
        assert_eq!(s[0].keep, "app/a/b/c.txt");
        let s = ctx.resolve("./app/./a/b/*.txt", true).unwrap();
        assert_eq!(s[0].keep, "a/b/c.txt");
        assert_eq!(s[0].rel, "app/a/b/c.txt");
        let s = ctx.resolve("app/./a/../../hom1.txt", true).unwrap();
        assert_eq!(s[0].keep, "hom1.txt");
        assert_eq!(ctx.resolve("app/./a", false).unwrap()[0].keep, "");
    }

    #[test]
    fn symlinks_stay_in_the_context() {
        let (d, ctx) = context(&["real/file", "top.txt"], "");
        symlink("/real", d.path().join("abs")).unwrap();
        symlink("../../../../top.txt", d.path().join("real/up")).unwrap();
        symlink("/etc/passwd", d.path().join("passwd")).unwrap();
        let s = &ctx.resolve("abs/file", false).unwrap()[0];
        assert_eq!(s.path, d.path().join("real/file"));
        let s = &ctx.resolve("real/up", false).unwrap()[0];
        assert_eq!(
            s.path,
            d.path().join("top.txt"),
            "followed, but inside the root"
        );
        assert!(
            ctx.resolve("passwd", false).is_err(),
            "/etc/passwd of the host is never reached"
        );
        let dir = &ctx.resolve("abs", false).unwrap()[0];
        assert_eq!(dir.kind, FileKind::Dir);
        let entries = ctx.walk(dir, &PatternMatcher::default()).unwrap();
        let up = entries.iter().find(|e| e.rel == "up").unwrap();
        assert_eq!(
            up.kind,
            FileKind::Symlink,
            "links inside a directory stay links"
        );
    }
}

/// Copies the files a projected volume (a ConfigMap's or Secret's, mounted in a pod) shows
/// under `src` into `dst` as plain files and directories: such a volume is a farm of
/// symlinks into a hidden `..data` directory, whose `..*` entries are the kubelet's own
/// bookkeeping and are skipped. Files get mode 0644, directories 0755. Returns how many
/// files were copied.
pub fn copy_projected(src: &Path, dst: &Path) -> std::io::Result<usize> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dst)?;
    let mut copied = 0;
    let mut entries: Vec<_> = std::fs::read_dir(src)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("..") {
            continue;
        }
        let from = entry.path();
        let to = dst.join(&name);
        // Followed on purpose: the visible names are links to the projected data.
        let meta = std::fs::metadata(&from)?;
        if meta.is_dir() {
            copied += copy_projected(&from, &to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
        } else if meta.is_file() {
            std::fs::copy(&from, &to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))?;
            copied += 1;
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod projected_tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    #[test]
    fn a_projected_volume_becomes_plain_files() {
        // What the kubelet makes of a ConfigMap with items a.txt and dir/b.txt.
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        let data = vol.join("..2026_12_04_00_00_00.1");
        std::fs::create_dir_all(data.join("dir")).unwrap();
        std::fs::write(data.join("a.txt"), "a").unwrap();
        std::fs::write(data.join("dir/b.txt"), "b").unwrap();
        symlink("..2026_12_04_00_00_00.1", vol.join("..data")).unwrap();
        symlink("..data/a.txt", vol.join("a.txt")).unwrap();
        symlink("..data/dir", vol.join("dir")).unwrap();
        let out = tmp.path().join("out");
        assert_eq!(copy_projected(&vol, &out).unwrap(), 2);
        assert_eq!(std::fs::read_to_string(out.join("a.txt")).unwrap(), "a");
        assert_eq!(std::fs::read_to_string(out.join("dir/b.txt")).unwrap(), "b");
        let meta = std::fs::symlink_metadata(out.join("dir")).unwrap();
        assert!(meta.is_dir() && !meta.file_type().is_symlink());
        assert_eq!(
            std::fs::metadata(out.join("a.txt"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o644
        );
        let names: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "no ..data in the copy: {names:?}");
    }
}
