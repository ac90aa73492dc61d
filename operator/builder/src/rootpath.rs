//! Path resolution inside a directory treated as `/`, the way a chrooted process would see
//! it: `..` stops at the root, an absolute symlink target starts again from the root and a
//! relative one from the link's directory. Both the build context (symlinks never lead out of
//! it) and the stage root filesystem (writes never land outside it) go through this.

use std::path::{Path, PathBuf};

/// Symlinks followed in one resolution before giving up, as Linux does (ELOOP after 40).
const MAX_LINKS: usize = 40;

/// Errors resolving a path inside a root.
#[derive(Debug, thiserror::Error)]
pub enum RootPathError {
    /// Too many symlinks (probably a loop).
    #[error("resolving {path:?}: too many levels of symbolic links")]
    TooManyLinks {
        /// The path being resolved.
        path: String,
    },
    /// A component could not be inspected.
    #[error("resolving {path:?}: {source}")]
    Io {
        /// The path being resolved.
        path: String,
        /// The I/O error.
        source: std::io::Error,
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

/// Resolves `path` ('/'-separated, absolute or relative to the root) inside `root`. Every
/// symlink met on the way is followed within the root; the last component is followed only
/// when `follow_final` is set. Components that do not exist are kept as written, so the
/// result also names where a new file would go.
pub fn resolve(root: &Path, path: &str, follow_final: bool) -> Result<Resolved, RootPathError> {
    let mut pending: Vec<String> = path.split('/').rev().map(str::to_string).collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(component) = pending.pop() {
        match component.as_str() {
            "" | "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let is_last = pending.iter().all(|c| c.is_empty() || c == ".");
        let mut candidate = root.to_path_buf();
        candidate.extend(&done);
        candidate.push(&component);
        let meta = match std::fs::symlink_metadata(&candidate) {
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => None,
            Err(source) => {
                return Err(RootPathError::Io {
                    path: path.to_string(),
                    source,
                });
            }
        };
        let is_link = meta.is_some_and(|m| m.file_type().is_symlink());
        if !is_link || (is_last && !follow_final) {
            done.push(component);
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(RootPathError::TooManyLinks {
                path: path.to_string(),
            });
        }
        let target = std::fs::read_link(&candidate).map_err(|source| RootPathError::Io {
            path: path.to_string(),
            source,
        })?;
        let target = target.to_string_lossy().into_owned();
        if target.starts_with('/') {
            done.clear();
        }
        pending.extend(target.split('/').rev().map(str::to_string));
    }
    let mut resolved = root.to_path_buf();
    resolved.extend(&done);
    Ok(Resolved {
        path: resolved,
        rel: done.join("/"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn stays_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
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
}
