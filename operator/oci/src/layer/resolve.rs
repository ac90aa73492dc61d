//! Resolving a directory path inside a root as if the root were `/`, the way a process in
//! the container would see it: symlinks are followed, but an absolute target starts again at
//! the root and `..` never climbs above it. The result contains no symlinks, so the applier
//! can create the final entry with no-follow operations and cannot land outside the root,
//! whatever symlinks earlier entries or lower layers planted.
//!
//! Assumption: nobody else modifies the root while a layer is applied (the stage executor
//! owns it); the resolution is a sequence of lstat calls, not an atomic kernel walk.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Linux's own limit on symlinks followed in one lookup.
const MAX_SYMLINK_HOPS: usize = 40;
/// Mode of directories a layer implies but does not list (what Docker and containerd use).
const IMPLIED_DIR_MODE: u32 = 0o755;

/// Why a directory could not be resolved inside the root. Internal: the applier turns it
/// into an `ApplyError`, or ignores it where a missing directory just means "nothing to do".
#[derive(Debug, thiserror::Error)]
pub(super) enum ResolveError {
    /// A component is missing and creation was not asked for.
    #[error("{0} does not exist")]
    NotFound(PathBuf),
    /// A component is a file, device or socket.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// Too many symlinks (a loop).
    #[error("too many levels of symbolic links at {0}")]
    TooManyLinks(PathBuf),
    /// Any other failure.
    #[error("cannot resolve {0}: {1}")]
    Io(PathBuf, #[source] io::Error),
}

enum Seg {
    Up,
    Name(OsString),
}

fn push_segments(pending: &mut VecDeque<Seg>, path: &Path) -> bool {
    // Prepend in order: the target's components come before what was still pending.
    let mut segs: Vec<Seg> = Vec::new();
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

/// Resolves `rel` (relative, already free of `..`) to a real directory under `root`,
/// creating missing directories with mode 0755 when `create` is set.
pub(super) fn resolve_dir(root: &Path, rel: &Path, create: bool) -> Result<PathBuf, ResolveError> {
    let mut real = root.to_path_buf();
    let mut depth = 0usize;
    let mut hops = 0usize;
    let mut pending = VecDeque::new();
    push_segments(&mut pending, rel);
    while let Some(seg) = pending.pop_front() {
        let name = match seg {
            Seg::Up => {
                if depth > 0 {
                    real.pop();
                    depth -= 1;
                }
                continue;
            }
            Seg::Name(n) => n,
        };
        let candidate = real.join(&name);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.is_dir() => {
                real = candidate;
                depth += 1;
            }
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(ResolveError::TooManyLinks(candidate));
                }
                let target = fs::read_link(&candidate)
                    .map_err(|e| ResolveError::Io(candidate.clone(), e))?;
                if push_segments(&mut pending, &target) {
                    real = root.to_path_buf();
                    depth = 0;
                }
            }
            Ok(_) => return Err(ResolveError::NotADirectory(candidate)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Err(ResolveError::NotFound(candidate));
                }
                fs::DirBuilder::new()
                    .mode(IMPLIED_DIR_MODE)
                    .create(&candidate)
                    .and_then(|()| {
                        // The umask may have narrowed the mode.
                        fs::set_permissions(
                            &candidate,
                            fs::Permissions::from_mode(IMPLIED_DIR_MODE),
                        )
                    })
                    .map_err(|e| ResolveError::Io(candidate.clone(), e))?;
                real = candidate;
                depth += 1;
            }
            Err(e) => return Err(ResolveError::Io(candidate, e)),
        }
    }
    Ok(real)
}
