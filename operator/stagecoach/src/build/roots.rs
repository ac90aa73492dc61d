//! Unpacked base images, kept in the cache between builds, and stage roots mounted over them.
//!
//! Unpacking a base image costs seconds (the golang image: 2.8 s) and a build may start
//! several stages from it. So each pulled image is unpacked once into `roots/<manifest
//! digest>` under the cache directory, and a stage's root is an overlay mount: that directory
//! as the read-only lower layer, the stage's own upper directory in the build's work
//! directory. Stage layers on top (for `FROM <stage>`) and cache hits are applied into the
//! mount as before; snapshots walk the merged view, so the executor sees an ordinary tree.
//!
//! Contract: a directory under `roots/` is complete when it has its final name (it is
//! unpacked under a temporary name and renamed), and nothing ever writes into it afterwards:
//! overlay keeps writes in the upper directory, and `COPY --from=<image>` only reads. Where
//! overlay mounts are not possible (no privilege, or a cache on a filesystem overlay cannot
//! use as upper layer) every stage unpacks its base into a plain directory instead.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use stagecoach_builder::executor::LayerRecord;
use stagecoach_oci::layer::{ApplyOptions, apply_layer_blob};
use stagecoach_oci::{ContentStore, Digest};

use super::{BuildError, log};

/// Room for `lowerdir=` in the mount options, which must fit in one page with the rest.
const MAX_LOWERDIR: usize = 3 * 1024;

/// Applies `layers` onto `root` in order, checking each diffID.
pub fn apply_layers(
    store: &ContentStore,
    root: &Path,
    layers: &[LayerRecord],
    what: &str,
) -> Result<(), BuildError> {
    let err = |message: String| BuildError::Stage {
        stage: what.to_string(),
        message,
    };
    for layer in layers {
        let digest = Digest::parse(&layer.digest).map_err(|e| err(e.to_string()))?;
        let diff_id = Digest::parse(&layer.diff_id).map_err(|e| err(e.to_string()))?;
        apply_layer_blob(
            store,
            &digest,
            Some(&diff_id),
            root,
            &ApplyOptions::default(),
        )
        .map_err(|e| err(format!("unpacking layer {digest}: {e}")))?;
    }
    Ok(())
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.display().to_string();
    move |source| BuildError::Io {
        action,
        path,
        source,
    }
}

/// The unpacked images under `<cache>/roots`.
#[derive(Debug)]
pub struct RootCache {
    dir: PathBuf,
    // Cleared after the first failed mount, so the fallback is decided (and said) once.
    overlay: AtomicBool,
}

impl RootCache {
    /// The cache under `cache_dir/roots`.
    pub fn open(cache_dir: &Path) -> Result<Self, BuildError> {
        let dir = cache_dir.join("roots");
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        // STAGECOACH_BUILD_OVERLAY=0 forces the plain-directory path (tests compare both).
        let overlay = std::env::var("STAGECOACH_BUILD_OVERLAY").as_deref() != Ok("0");
        Ok(RootCache {
            dir,
            overlay: AtomicBool::new(overlay),
        })
    }

    /// The unpacked root of the image whose manifest is `manifest`, unpacked now if no
    /// earlier build did. Concurrent builds may both unpack it; the first rename wins.
    pub fn image_root(
        &self,
        store: &ContentStore,
        manifest: &Digest,
        layers: &[LayerRecord],
        what: &str,
    ) -> Result<PathBuf, BuildError> {
        let done = self.dir.join(manifest.hex());
        if done.is_dir() {
            return Ok(done);
        }
        let t0 = std::time::Instant::now();
        let tmp = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(&self.dir)
            .map_err(io_err("create a directory in", &self.dir))?;
        apply_layers(store, tmp.path(), layers, what)?;
        match std::fs::rename(tmp.path(), &done) {
            Ok(()) => {
                // Renamed away: nothing left for the guard to delete.
                let _ = tmp.keep();
            }
            // Another build finished the same image first; ours is dropped with `tmp`.
            Err(_) if done.is_dir() => {}
            Err(e) => return Err(io_err("rename into", &done)(e)),
        }
        log(format!(
            "[{what}] unpacked {} layers into the cache in {:.1}s",
            layers.len(),
            t0.elapsed().as_secs_f64()
        ));
        Ok(done)
    }

    /// Whether stage roots are still tried as overlay mounts.
    pub fn overlay_enabled(&self) -> bool {
        self.overlay.load(Ordering::Relaxed)
    }

    /// Mounts an overlay at `stage_dir/rootfs` with `lowers` (top first) beneath; `None` when
    /// overlay mounts do not work here (said once), or the stack is too long for one mount,
    /// and the caller unpacks instead.
    pub fn mount_stage(
        &self,
        lowers: &[PathBuf],
        stage_dir: &Path,
    ) -> Result<Option<PathBuf>, BuildError> {
        if !self.overlay.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let upper = stage_dir.join("upper");
        let work = stage_dir.join("overlay-work");
        let merged = stage_dir.join("rootfs");
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        let Some(lowerdir) = self.lowerdir(lowers)? else {
            return Ok(None);
        };
        let data = format!(
            "lowerdir={lowerdir},upperdir={},workdir={}",
            upper.display(),
            work.display()
        );
        Ok(self.mount(&merged, &data)?.then_some(merged))
    }

    /// Makes a finished stage's root read-only: remounts it with its upper directory as one
    /// more lower layer. Returns the new stack (top first) for stages built on it, or
    /// `None` (the root stays as it is) when that cannot be done.
    pub fn freeze(
        &self,
        stage_dir: &Path,
        lowers: &[PathBuf],
    ) -> Result<Option<Vec<PathBuf>>, BuildError> {
        let merged = stage_dir.join("rootfs");
        let mut stack = vec![stage_dir.join("upper")];
        stack.extend(lowers.iter().cloned());
        let Some(lowerdir) = self.lowerdir(&stack)? else {
            return Ok(None);
        };
        rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| io_err("unmount", &merged)(e.into()))?;
        // Without an upper directory overlay mounts read-only.
        if self.mount(&merged, &format!("lowerdir={lowerdir}"))? {
            return Ok(Some(stack));
        }
        // Put the writable mount back: later stages may still read this root.
        let restore = format!(
            "lowerdir={},upperdir={},workdir={}",
            stack[1..]
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(":"),
            stage_dir.join("upper").display(),
            stage_dir.join("overlay-work").display()
        );
        if self.mount_anyway(&merged, &restore)? {
            Ok(None)
        } else {
            Err(io_err("remount", &merged)(std::io::Error::other(
                "overlay refused the stage's own layers again",
            )))
        }
    }

    /// The `lowerdir=` value for `lowers`, or `None` when a path cannot be written in mount
    /// options or the whole would not fit in them (one page).
    fn lowerdir(&self, lowers: &[PathBuf]) -> Result<Option<String>, BuildError> {
        let mut parts = Vec::with_capacity(lowers.len());
        for p in lowers {
            let text = p.to_string_lossy();
            // The option string cannot quote these characters.
            if text.contains([',', ':', '\\']) {
                self.disable("the cache path contains ',', ':' or '\\'");
                return Ok(None);
            }
            parts.push(text.into_owned());
        }
        let joined = parts.join(":");
        Ok((joined.len() < MAX_LOWERDIR).then_some(joined))
    }

    /// Mounts an overlay; false (after saying why, once, and turning overlay off for the
    /// rest of the build) when the kernel refuses.
    fn mount(&self, target: &Path, data: &str) -> Result<bool, BuildError> {
        if !self.overlay.load(Ordering::Relaxed) {
            return Ok(false);
        }
        self.mount_anyway(target, data)
    }

    fn mount_anyway(&self, target: &Path, data: &str) -> Result<bool, BuildError> {
        let data = std::ffi::CString::new(data)
            .map_err(|e| io_err("mount an overlay at", target)(std::io::Error::other(e)))?;
        match rustix::mount::mount(
            "overlay",
            target,
            "overlay",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        ) {
            Ok(()) => Ok(true),
            Err(e) => {
                self.disable(&format!("mount overlay: {e}"));
                Ok(false)
            }
        }
    }

    fn disable(&self, why: &str) {
        if self.overlay.swap(false, Ordering::Relaxed) {
            log(format!(
                "[build] overlay mounts unavailable ({why}); each stage unpacks its base instead"
            ));
        }
    }
}

/// Unmounts every mount at or below `dir`, deepest first (detached, so a stray open file
/// does not keep a build's work directory from being removed).
pub fn unmount_all_under(dir: &Path) {
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
        return;
    };
    let Ok(canonical) = std::fs::canonicalize(dir) else {
        return;
    };
    let mut points: Vec<PathBuf> = stagecoach_builder::snapshot::mount_points(&info)
        .into_iter()
        .filter(|p| p.starts_with(&canonical))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        if let Err(e) = rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH) {
            log(format!("warning: could not unmount {}: {e}", p.display()));
        }
    }
}
