//! Path resolution inside a directory treated as `/`, the way a chrooted process would see
//! it: `..` stops at the root, an absolute symlink target starts again from the root and a
//! relative one from the link's directory, at most 40 links per lookup (as Linux). This is
//! the one home of that rule: the layer applier (every write of a layer lands inside the
//! root, whatever symlinks earlier entries or lower layers planted), and the stage executor's
//! build context, COPY destinations, user lookup and RUN mount targets all resolve through
//! it.
//!
//! Assumption: nobody else modifies the root while it is resolved (the executor owns it);
//! the resolution is a sequence of lstat calls, not an atomic kernel walk.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Linux's own limit on symlinks followed in one lookup.
const MAX_SYMLINK_HOPS: usize = 40;
/// Mode of directories a path implies but that do not exist (what Docker and containerd use).
const IMPLIED_DIR_MODE: u32 = 0o755;

/// Why a path could not be resolved inside a root.
#[derive(Debug, thiserror::Error)]
pub enum RootPathError {
    /// Too many symlinks (probably a loop).
    #[error("resolving {}: too many levels of symbolic links", path.display())]
    TooManyLinks {
        /// The path being resolved.
        path: PathBuf,
    },
    /// A directory on the way is missing and creating it was not asked for.
    #[error("{} does not exist", path.display())]
    NotFound {
        /// The missing directory, on disk.
        path: PathBuf,
    },
    /// A component that must be a directory is a file, device or socket.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The component, on disk.
        path: PathBuf,
    },
    /// A component could not be inspected or created.
    #[error("resolving {}: {source}", path.display())]
    Io {
        /// The path being resolved.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// A path resolved inside a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Where it is on disk (always under the root).
    pub path: PathBuf,
    /// The same path relative to the root, '/'-separated, `""` for the root itself.
    pub rel: String,
}

/// What a walk does with a component that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// Keep it as written (the result names where a new entry would go).
    Keep,
    /// Fail with [`RootPathError::NotFound`].
    Fail,
    /// Create it as a directory with the implied mode.
    Create,
}

enum Seg {
    Up,
    Name(OsString),
}

/// Puts `path`'s components in front of what is pending; true when it is absolute.
fn push_front(pending: &mut VecDeque<Seg>, path: &Path) -> bool {
    let mut segs = Vec::new();
    let mut absolute = false;
    for c in path.components() {
        match c {
            Component::RootDir => absolute = true,
            Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => segs.push(Seg::Up),
            Component::Normal(n) => segs.push(Seg::Name(n.to_owned())),
        }
    }
    for s in segs.into_iter().rev() {
        pending.push_front(s);
    }
    absolute
}

/// The shared walk: follows symlinks inside `root` (the last component only with
/// `follow_final`), handles missing components by `missing`, and with `dirs_only` requires
/// every component to be a directory.
fn walk(
    root: &Path,
    path: &Path,
    follow_final: bool,
    missing: Missing,
    dirs_only: bool,
) -> Result<Vec<OsString>, RootPathError> {
    let mut pending = VecDeque::new();
    push_front(&mut pending, path);
    let mut done: Vec<OsString> = Vec::new();
    let mut hops = 0usize;
    while let Some(seg) = pending.pop_front() {
        let name = match seg {
            Seg::Up => {
                done.pop();
                continue;
            }
            Seg::Name(n) => n,
        };
        let is_last = pending.is_empty();
        let mut candidate = root.to_path_buf();
        candidate.extend(&done);
        candidate.push(&name);
        let meta = match fs::symlink_metadata(&candidate) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            // A file where a directory was expected: nothing below it exists.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => None,
            Err(source) => {
                return Err(RootPathError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        match meta {
            Some(m) if m.file_type().is_symlink() && (follow_final || !is_last) => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(RootPathError::TooManyLinks {
                        path: path.to_owned(),
                    });
                }
                let target = fs::read_link(&candidate).map_err(|source| RootPathError::Io {
                    path: path.to_owned(),
                    source,
                })?;
                if push_front(&mut pending, &target) {
                    done.clear();
                }
            }
            Some(m) if dirs_only && !m.is_dir() && !m.file_type().is_symlink() => {
                return Err(RootPathError::NotADirectory { path: candidate });
            }
            Some(_) => done.push(name),
            None => match missing {
                Missing::Keep => done.push(name),
                Missing::Fail => return Err(RootPathError::NotFound { path: candidate }),
                Missing::Create => {
                    fs::DirBuilder::new()
                        .mode(IMPLIED_DIR_MODE)
                        .create(&candidate)
                        // The umask may have narrowed the mode.
                        .and_then(|()| {
                            fs::set_permissions(
                                &candidate,
                                fs::Permissions::from_mode(IMPLIED_DIR_MODE),
                            )
                        })
                        .map_err(|source| RootPathError::Io {
                            path: candidate.clone(),
                            source,
                        })?;
                    done.push(name);
                }
            },
        }
    }
    Ok(done)
}

/// Resolves `path` ('/'-separated, absolute or relative to the root) inside `root`. Every
/// symlink met on the way is followed within the root; the last component is followed only
/// when `follow_final` is set. Components that do not exist are kept as written, so the
/// result also names where a new file would go.
pub fn resolve(root: &Path, path: &str, follow_final: bool) -> Result<Resolved, RootPathError> {
    let done = walk(root, Path::new(path), follow_final, Missing::Keep, false)?;
    let mut resolved = root.to_path_buf();
    resolved.extend(&done);
    let rel = done
        .iter()
        .map(|c| c.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/");
    Ok(Resolved {
        path: resolved,
        rel,
    })
}

/// Resolves `rel` to a real directory under `root` containing no symlinks, so an entry can
/// be created in it with no-follow operations. Missing directories are created (mode 0755)
/// when `create` is set and are [`RootPathError::NotFound`] otherwise; a component that is
/// not a directory is [`RootPathError::NotADirectory`].
pub fn resolve_dir(root: &Path, rel: &Path, create: bool) -> Result<PathBuf, RootPathError> {
    let missing = if create {
        Missing::Create
    } else {
        Missing::Fail
    };
    let done = walk(root, rel, true, missing, true)?;
    let mut real = root.to_path_buf();
    real.extend(&done);
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn stays_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        symlink("/etc", root.join("etc-link")).unwrap();
        symlink("../../..", root.join("a/b/up")).unwrap();
        symlink("b", root.join("a/rel")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();

        let r = resolve(root, "/../../x", true).unwrap();
        assert_eq!(r.rel, "x");
        let r = resolve(root, "etc-link/passwd", true).unwrap();
        assert_eq!(r.path, root.join("etc/passwd"));
        let r = resolve(root, "a/b/up/secret", true).unwrap();
        assert_eq!(r.rel, "secret");
        let r = resolve(root, "a/b/up/up/x", true).unwrap();
        assert_eq!(
            r.rel, "up/x",
            "no `up` at the root: the name is kept as written"
        );
        let r = resolve(root, "a/rel/f", true).unwrap();
        assert_eq!(r.rel, "a/b/f");
        let r = resolve(root, "a/rel", false).unwrap();
        assert_eq!(r.rel, "a/rel");
        let r = resolve(root, "a/rel/", false).unwrap();
        assert_eq!(r.rel, "a/rel", "a trailing slash does not force following");
        assert!(matches!(
            resolve(root, "loop1", true),
            Err(RootPathError::TooManyLinks { .. })
        ));
        assert_eq!(resolve(root, "/", true).unwrap().rel, "");
    }

    #[test]
    fn directories_are_real_created_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("file"), b"x").unwrap();
        symlink("/a", root.join("abs")).unwrap();
        assert_eq!(
            resolve_dir(root, Path::new("abs/b"), false).unwrap(),
            root.join("a/b")
        );
        assert!(matches!(
            resolve_dir(root, Path::new("a/missing"), false),
            Err(RootPathError::NotFound { .. })
        ));
        assert!(matches!(
            resolve_dir(root, Path::new("file/x"), true),
            Err(RootPathError::NotADirectory { .. })
        ));
        let made = resolve_dir(root, Path::new("abs/new/deeper"), true).unwrap();
        assert_eq!(made, root.join("a/new/deeper"));
        assert!(made.is_dir());
    }
}
