//! Mount points inside a root filesystem that a RUN needs but the stage must never see: the
//! one home for them, used by the runc runner (runc's own `/proc`, `/dev`, `/etc/hosts`, …)
//! and by the executor (each `RUN --mount` target).
//!
//! runc creates a missing mount destination itself and leaves it behind, so a `FROM scratch`
//! root would gain `/proc`, `/dev`, `/sys`, `/etc/hosts` and so on in its next layer. Instead
//! we create every missing destination (and missing parent directories) before the run,
//! remember exactly what we created, and remove it afterwards. A directory we created is
//! removed only while empty: if the process put files there (say `/etc/passwd` next to our
//! `/etc/hosts` placeholder), the directory is the process's change and stays.
//!
//! Creating and removing entries bumps the parent directory's mtime; when the process did not
//! change that directory itself (its mtime is still the one we left) we put the original
//! access and modification times back, so a metadata walk does not report it as changed.
//! The ctime cannot be restored; a snapshot must not rely on it.

use std::fs::{self, DirBuilder, FileTimes, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::rootpath::{self, RootPathError};

/// Why placeholders could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceholderError {
    /// A destination could not be resolved inside the root.
    #[error("mount point: {0}")]
    Resolve(#[from] RootPathError),
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, and on what.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// A mount destination inside the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The path inside the root ('/'-separated, absolute).
    pub path: String,
    /// Whether the mount's source is a file (the placeholder is an empty file).
    pub file: bool,
}

/// A pre-existing directory we added an entry to.
#[derive(Debug)]
struct Touched {
    dir: PathBuf,
    accessed: SystemTime,
    modified: SystemTime,
    /// Its mtime once all placeholders existed; a different mtime later means the process
    /// changed the directory too.
    modified_after: Option<SystemTime>,
}

/// What [`prepare`] created, to be undone by [`Placeholders::remove`].
#[derive(Debug, Default)]
pub struct Placeholders {
    /// Created entries in creation order (parents before children).
    created: Vec<(PathBuf, bool)>,
    touched: Vec<Touched>,
}

fn io_error(what: &str, path: &Path, source: std::io::Error) -> PlaceholderError {
    PlaceholderError::Io {
        what: format!("{what} {}", path.display()),
        source,
    }
}

fn times(path: &Path) -> Result<(SystemTime, SystemTime), PlaceholderError> {
    let meta = fs::metadata(path).map_err(|e| io_error("inspecting", path, e))?;
    let accessed = meta
        .accessed()
        .map_err(|e| io_error("inspecting", path, e))?;
    let modified = meta
        .modified()
        .map_err(|e| io_error("inspecting", path, e))?;
    Ok((accessed, modified))
}

/// Creates the missing `destinations` inside `rootfs`. On error, whatever was already
/// created is removed again before returning.
pub fn prepare(
    rootfs: &Path,
    destinations: &[Destination],
) -> Result<Placeholders, PlaceholderError> {
    let mut placeholders = Placeholders::default();
    match placeholders.create_all(rootfs, destinations) {
        Ok(()) => Ok(placeholders),
        Err(e) => {
            // Best effort: the first error is the one worth reporting.
            let _ = placeholders.remove();
            Err(e)
        }
    }
}

impl Placeholders {
    fn create_all(
        &mut self,
        rootfs: &Path,
        destinations: &[Destination],
    ) -> Result<(), PlaceholderError> {
        for destination in destinations {
            let want_file = destination.file;
            // Resolve as runc will (symlinks followed, scoped to the root), so the
            // placeholder lands where runc mounts, e.g. through a dangling
            // `/etc/resolv.conf` symlink.
            let resolved = rootpath::resolve(rootfs, &destination.path, true)?;
            let components: Vec<&str> = resolved.rel.split('/').filter(|c| !c.is_empty()).collect();
            let mut current = rootfs.to_path_buf();
            for (index, component) in components.iter().enumerate() {
                let parent = current.clone();
                current.push(component);
                match fs::symlink_metadata(&current) {
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error("inspecting", &current, e)),
                }
                self.touch(&parent)?;
                let is_last = index + 1 == components.len();
                if is_last && want_file {
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o644)
                        .open(&current)
                        .map_err(|e| io_error("creating mount point", &current, e))?;
                    self.created.push((current.clone(), false));
                } else {
                    DirBuilder::new()
                        .mode(0o755)
                        .create(&current)
                        .map_err(|e| io_error("creating mount point", &current, e))?;
                    self.created.push((current.clone(), true));
                }
            }
        }
        for touched in &mut self.touched {
            touched.modified_after = Some(times(&touched.dir)?.1);
        }
        Ok(())
    }

    /// Records a directory's times before we first add to it (unless we created it).
    fn touch(&mut self, dir: &Path) -> Result<(), PlaceholderError> {
        if self.created.iter().any(|(p, _)| p == dir) || self.touched.iter().any(|t| t.dir == dir) {
            return Ok(());
        }
        let (accessed, modified) = times(dir)?;
        self.touched.push(Touched {
            dir: dir.to_path_buf(),
            accessed,
            modified,
            modified_after: None,
        });
        Ok(())
    }

    /// Whether anything was created.
    pub fn is_empty(&self) -> bool {
        self.created.is_empty()
    }

    /// Removes what was created, children first, and restores the touched directories'
    /// times. Returns the first error; keeps going after one so as much as possible is undone.
    pub fn remove(&mut self) -> Result<(), PlaceholderError> {
        let mut first_error: Option<PlaceholderError> = None;
        // Decide before removing anything, since the removals themselves change mtimes.
        let untouched_by_process: Vec<bool> = self
            .touched
            .iter()
            .map(|t| {
                t.modified_after.is_some()
                    && fs::metadata(&t.dir).and_then(|m| m.modified()).ok() == t.modified_after
            })
            .collect();
        let mut all_removed = true;
        while let Some((path, is_dir)) = self.created.pop() {
            let result = if is_dir {
                fs::remove_dir(&path)
            } else {
                fs::remove_file(&path)
            };
            match result {
                Ok(()) => {}
                // Gone already (the process removed it) or holds the process's files: both
                // are the process's doing and belong in the snapshot.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) if is_dir && e.kind() == ErrorKind::DirectoryNotEmpty => {
                    all_removed = false;
                }
                Err(e) => {
                    all_removed = false;
                    first_error.get_or_insert(io_error("removing mount point", &path, e));
                }
            }
        }
        if all_removed {
            for (touched, untouched) in self.touched.iter().zip(untouched_by_process) {
                if !untouched {
                    continue;
                }
                let restore = fs::File::open(&touched.dir).and_then(|f| {
                    f.set_times(
                        FileTimes::new()
                            .set_accessed(touched.accessed)
                            .set_modified(touched.modified),
                    )
                });
                if let Err(e) = restore {
                    first_error.get_or_insert(io_error("restoring times of", &touched.dir, e));
                }
            }
        }
        self.touched.clear();
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
