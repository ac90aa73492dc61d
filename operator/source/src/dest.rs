//! The staging directory of one fetch: a hidden sibling of the destination that holds the
//! bare repository (`git/`) and the checked-out files (`tree/`). Only the files are renamed
//! into place, so the destination never has a `.git` and is never half-written; a fetch
//! that fails leaves the previous destination as it was.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A path and what went wrong with it.
pub(crate) type IoFailure = (PathBuf, io::Error);

/// Removed with everything in it when dropped.
#[derive(Debug)]
pub(crate) struct Staging {
    root: PathBuf,
}

impl Staging {
    /// Makes a new staging directory beside `dest` (creating `dest`'s parent). A sibling
    /// rather than a system temporary directory, so the final rename stays on one file
    /// system (the cache volume, in a pod).
    pub(crate) fn beside(dest: &Path) -> Result<Staging, IoFailure> {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let name = dest.file_name().ok_or_else(|| {
            (
                dest.to_path_buf(),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the destination has no final component",
                ),
            )
        })?;
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| (parent.clone(), e))?;
        loop {
            let mut hidden = std::ffi::OsString::from(".");
            hidden.push(name);
            hidden.push(format!(
                ".fetch-{}-{}",
                std::process::id(),
                SEQUENCE.fetch_add(1, Ordering::Relaxed)
            ));
            let root = parent.join(hidden);
            match std::fs::create_dir(&root) {
                Ok(()) => {
                    let staging = Staging { root };
                    let tree = staging.tree_dir();
                    std::fs::create_dir(&tree).map_err(|e| (tree, e))?;
                    return Ok(staging);
                }
                // Left behind by an earlier process with the same pid: take the next name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err((root, e)),
            }
        }
    }

    /// Where the bare repository goes.
    pub(crate) fn git_dir(&self) -> PathBuf {
        self.root.join("git")
    }

    /// Where the files are checked out.
    pub(crate) fn tree_dir(&self) -> PathBuf {
        self.root.join("tree")
    }

    /// Puts the checked-out files at `dest`, replacing what was there. The old destination
    /// is moved aside first and only removed (with the staging directory) once the new one
    /// is in place, so a failed rename leaves it intact.
    pub(crate) fn replace(self, dest: &Path) -> Result<(), IoFailure> {
        let old = self.root.join("old");
        let had_old = match std::fs::rename(dest, &old) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err((dest.to_path_buf(), e)),
        };
        if let Err(e) = std::fs::rename(self.tree_dir(), dest) {
            if had_old {
                // Best effort: the rename error is what the caller needs to see.
                let _ = std::fs::rename(&old, dest);
            }
            return Err((dest.to_path_buf(), e));
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Nothing to report to: a leftover directory is inside the build's directory of
        // the cache, which is removed with the build.
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
