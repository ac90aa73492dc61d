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

use stagecoach_oci::layer::{ApplyOptions, apply_layer_blob};
use stagecoach_oci::{ContentStore, Digest};
use stagecoach_protocol::{CacheLayout, LayerRecord};

use super::{LocalError, Log};
use crate::executor::{MissedStep, StackError};

/// Room for `lowerdir=` in the mount options, which must fit in one page with the rest.
const MAX_LOWERDIR: usize = 3 * 1024;

/// The options of a writable overlay mount.
fn overlay_data(lowerdir: &str, upper: &Path, work: &Path) -> String {
    format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upper.display(),
        work.display()
    )
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LocalError {
    let path = path.to_owned();
    move |source| LocalError::Io {
        action,
        path,
        source,
    }
}

/// The unpacked images under `<cache>/roots`.
#[derive(Debug)]
pub struct RootCache {
    dir: PathBuf,
    log: Log,
    // Cleared after the first failed mount, so the fallback is decided (and said) once.
    overlay: AtomicBool,
}

impl RootCache {
    /// The cache under `cache_dir/roots`.
    pub fn open(layout: &CacheLayout, log: Log) -> Result<Self, LocalError> {
        let dir = layout.roots();
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        // STAGECOACH_BUILD_OVERLAY=0 forces the plain-directory path (tests compare both).
        let overlay = std::env::var("STAGECOACH_BUILD_OVERLAY").as_deref() != Ok("0");
        Ok(RootCache {
            dir,
            log,
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
    ) -> Result<PathBuf, LocalError> {
        let done = self.dir.join(manifest.hex());
        if done.is_dir() {
            return Ok(done);
        }
        let t0 = std::time::Instant::now();
        let tmp = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(&self.dir)
            .map_err(io_err("create a directory in", &self.dir))?;
        crate::job::apply_layers(store, tmp.path(), layers, &ApplyOptions::default()).map_err(
            |source| LocalError::Job {
                stage: what.to_string(),
                source: Box::new(source),
            },
        )?;
        match std::fs::rename(tmp.path(), &done) {
            Ok(()) => {
                // Renamed away: nothing left for the guard to delete.
                let _ = tmp.keep();
            }
            // Another build finished the same image first; ours is dropped with `tmp`.
            Err(_) if done.is_dir() => {}
            Err(e) => return Err(io_err("rename into", &done)(e)),
        }
        (self.log)(&format!(
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
    ) -> Result<Option<PathBuf>, LocalError> {
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
        let data = overlay_data(&lowerdir, &upper, &work);
        Ok(self.mount(&merged, &data)?.then_some(merged))
    }

    /// Makes a finished stage's root read-only: remounts it with its upper directory as one
    /// more lower layer. Returns the new stack (top first) for stages built on it, or
    /// `None` (the root stays as it is) when that cannot be done.
    pub fn freeze(
        &self,
        stage_dir: &Path,
        lowers: &[PathBuf],
    ) -> Result<Option<Vec<PathBuf>>, LocalError> {
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
        let previous = stack[1..]
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let restore = overlay_data(
            &previous,
            &stage_dir.join("upper"),
            &stage_dir.join("overlay-work"),
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
    fn lowerdir(&self, lowers: &[PathBuf]) -> Result<Option<String>, LocalError> {
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
    fn mount(&self, target: &Path, data: &str) -> Result<bool, LocalError> {
        if !self.overlay.load(Ordering::Relaxed) {
            return Ok(false);
        }
        self.mount_anyway(target, data)
    }

    fn mount_anyway(&self, target: &Path, data: &str) -> Result<bool, LocalError> {
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
            (self.log)(&format!(
                "[build] overlay mounts unavailable ({why}); each stage unpacks its base instead"
            ));
        }
    }
}

/// Unmounts every mount at or below `dir`, deepest first (detached, so a stray open file
/// does not keep a build's work directory from being removed).
pub fn unmount_all_under(dir: &Path, log: Log) {
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
        return;
    };
    let Ok(canonical) = std::fs::canonicalize(dir) else {
        return;
    };
    let mut points: Vec<PathBuf> = crate::snapshot::mount_points(&info)
        .into_iter()
        .filter(|p| p.starts_with(&canonical))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        if let Err(e) = rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH) {
            log(&format!("warning: could not unmount {}: {e}", p.display()));
        }
    }
}

/// Cache hits taken as overlay layers: each hit layer is unpacked once, ever, into
/// `roots/chains/<chain ID>` (its changes relative to the chain below, in overlay's own
/// format) and the stage root is remounted with it on top. Only while the stage has only hit
/// (the executor asks no later), so the root is exactly its chain and the directory is valid
/// for every build that reaches the same chain.
///
/// A missed step that ran over an exact chain is promoted the other way round: its upper
/// directory, checked against the layer's change list and given the layer's times
/// ([`super::promote`]), is renamed to the layer's chain directory and the root remounted over
/// it with a fresh upper. The cold build has just written those files; the next build's hit
/// stacks them instead of unpacking the layer again.
#[derive(Debug)]
pub struct ChainStack<'a> {
    roots: &'a RootCache,
    store: &'a ContentStore,
    stage_dir: PathBuf,
    label: String,
    state: std::sync::Mutex<StackState>,
}

#[derive(Debug, Clone)]
struct StackState {
    chain: Digest,
    lowers: Vec<PathBuf>,
}

impl<'a> ChainStack<'a> {
    /// A stack for the root mounted in `stage_dir`, whose lowers `lowers` (top first) show
    /// exactly the chain `chain`.
    pub fn new(
        roots: &'a RootCache,
        store: &'a ContentStore,
        stage_dir: &Path,
        chain: Digest,
        lowers: Vec<PathBuf>,
    ) -> Self {
        ChainStack {
            roots,
            store,
            stage_dir: stage_dir.to_owned(),
            label: "build".to_string(),
            state: std::sync::Mutex::new(StackState { chain, lowers }),
        }
    }

    /// Names the stage in log lines.
    pub fn with_label(mut self, label: &str) -> Self {
        self.label = label.to_string();
        self
    }

    /// The current chain and lowers.
    pub fn current(&self) -> (Digest, Vec<PathBuf>) {
        let st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (st.chain.clone(), st.lowers.clone())
    }

    fn stack_inner(&self, layer: &LayerRecord) -> Result<bool, LocalError> {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let digest = layer.digest.clone();
        let diff_id = layer.diff_id.clone();
        let next = Digest::of_bytes(format!("{} {diff_id}", st.chain).as_bytes());
        let upper = self.stage_dir.join("upper");
        let upper_empty = std::fs::read_dir(&upper)
            .map_err(io_err("read", &upper))?
            .next()
            .is_none();
        let mut lowers = vec![self.roots.dir.join("chains").join(next.hex())];
        lowers.extend(st.lowers.iter().cloned());
        if !upper_empty || self.roots.lowerdir(&lowers)?.is_none() {
            return Ok(false);
        }
        if !lowers[0].is_dir()
            && !self
                .roots
                .make_chain(self.store, &st.lowers, &digest, &diff_id, &lowers[0])?
        {
            return Ok(false);
        }
        let merged = self.stage_dir.join("rootfs");
        let Some(lowerdir) = self.roots.lowerdir(&lowers)? else {
            return Ok(false);
        };
        rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| io_err("unmount", &merged)(e.into()))?;
        let work = self.stage_dir.join("overlay-work");
        let data = |lowerdir: &str| overlay_data(lowerdir, &upper, &work);
        if self.roots.mount_anyway(&merged, &data(&lowerdir))? {
            st.chain = next;
            st.lowers = lowers;
            return Ok(true);
        }
        // Put the previous stack back and let the executor extract the layer.
        let previous = self.roots.lowerdir(&st.lowers)?.unwrap_or_default();
        if self.roots.mount_anyway(&merged, &data(&previous))? {
            Ok(false)
        } else {
            Err(io_err("remount", &merged)(std::io::Error::other(
                "overlay refused the stage's previous layers again",
            )))
        }
    }
}

impl crate::executor::HitStacker for ChainStack<'_> {
    fn stack(&self, layer: &LayerRecord) -> Result<bool, StackError> {
        Ok(self.stack_inner(layer)?)
    }

    fn exact(&self) -> bool {
        // Holding the lock: a stack or promotion in between would change the answer.
        let _st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        upper_is_empty(&self.stage_dir.join("upper"))
    }

    fn promote(&self, step: &MissedStep<'_>) -> Result<bool, StackError> {
        Ok(self.promote_inner(step)?)
    }
}

fn upper_is_empty(upper: &Path) -> bool {
    std::fs::read_dir(upper)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false)
}

fn device_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.dev())
}

impl ChainStack<'_> {
    fn say(&self, what: &str) {
        (self.roots.log)(&format!("[{}] {what}", self.label));
    }

    fn promote_inner(&self, step: &MissedStep<'_>) -> Result<bool, LocalError> {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let t0 = std::time::Instant::now();
        let next = Digest::of_bytes(format!("{} {}", st.chain, step.layer.diff_id).as_bytes());
        let chains = self.roots.dir.join("chains");
        let dest = chains.join(next.hex());
        // Another build made this chain already: theirs stays, ours goes with the work
        // directory, and the stage carries on over its upper as before.
        if dest.is_dir() {
            return Ok(false);
        }
        let mut lowers = vec![dest.clone()];
        lowers.extend(st.lowers.iter().cloned());
        let (Some(lowerdir), Some(previous)) = (
            self.roots.lowerdir(&lowers)?,
            self.roots.lowerdir(&st.lowers)?,
        ) else {
            return Ok(false);
        };
        let upper = self.stage_dir.join("upper");
        let plan = match super::promote::check(&upper, step) {
            Ok(plan) => plan,
            Err(refusal) => {
                self.say(&format!(
                    "layer {} stays in the stage (not kept as a chain directory): {refusal}",
                    step.layer.digest
                ));
                return Ok(false);
            }
        };
        std::fs::create_dir_all(&chains).map_err(io_err("create", &chains))?;
        // A rename cannot cross filesystems; the layer is unpacked on the next hit instead.
        if device_of(&chains).is_none() || device_of(&chains) != device_of(&upper) {
            return Ok(false);
        }
        let merged = self.stage_dir.join("rootfs");
        let work = self.stage_dir.join("overlay-work");
        // Not detached: the upper directory must be free of every mount before it becomes a
        // lower one. A busy root stays as it is.
        if let Err(e) = rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::empty()) {
            self.say(&format!(
                "layer {} stays in the stage: unmount: {e}",
                step.layer.digest
            ));
            return Ok(false);
        }
        let moved = super::promote::normalize(&upper, &plan)
            .map_err(|e| ("set times in", e))
            .and_then(|()| std::fs::rename(&upper, &dest).map_err(|e| ("rename", e)));
        if let Err((action, e)) = moved {
            // Lost a race for the same chain, or the times could not be set: the stage
            // goes on over its own upper directory, as before promotion.
            if !dest.is_dir() {
                self.say(&format!(
                    "layer {} stays in the stage: cannot {action} {}: {e}",
                    step.layer.digest,
                    upper.display()
                ));
            }
            return self
                .remount(&merged, &previous, &upper, &work)
                .map(|()| false);
        }
        std::fs::create_dir(&upper).map_err(io_err("create", &upper))?;
        if self
            .roots
            .mount_anyway(&merged, &overlay_data(&lowerdir, &upper, &work))?
        {
            st.chain = next;
            st.lowers = lowers;
            self.say(&format!(
                "layer {} kept as a chain directory ({} entries) in {:.2}s",
                step.layer.digest,
                plan.len(),
                t0.elapsed().as_secs_f64()
            ));
            return Ok(true);
        }
        // Nothing stacks the new directory yet: take it back as the stage's upper.
        std::fs::remove_dir(&upper).map_err(io_err("remove", &upper))?;
        std::fs::rename(&dest, &upper).map_err(io_err("rename into", &upper))?;
        self.remount(&merged, &previous, &upper, &work)
            .map(|()| false)
    }

    fn remount(
        &self,
        merged: &Path,
        lowerdir: &str,
        upper: &Path,
        work: &Path,
    ) -> Result<(), LocalError> {
        if self
            .roots
            .mount_anyway(merged, &overlay_data(lowerdir, upper, work))?
        {
            Ok(())
        } else {
            Err(io_err("remount", merged)(std::io::Error::other(
                "overlay refused the stage's own layers again",
            )))
        }
    }
}

impl RootCache {
    /// Unpacks the layer `digest` over the stack `lowers` into the chain directory `dir`:
    /// extracted through an overlay mount, so the kernel records deletions as whiteouts and
    /// copies parent directories' metadata up. False when the mount is refused.
    fn make_chain(
        &self,
        store: &ContentStore,
        lowers: &[PathBuf],
        digest: &Digest,
        diff_id: &Digest,
        dir: &Path,
    ) -> Result<bool, LocalError> {
        let chains = self.dir.join("chains");
        std::fs::create_dir_all(&chains).map_err(io_err("create", &chains))?;
        let tmp = tempfile::Builder::new()
            .prefix(".make-")
            .tempdir_in(&chains)
            .map_err(io_err("create a directory in", &chains))?;
        let (upper, work, mnt) = (
            tmp.path().join("upper"),
            tmp.path().join("work"),
            tmp.path().join("mnt"),
        );
        for d in [&upper, &work, &mnt] {
            std::fs::create_dir(d).map_err(io_err("create", d))?;
        }
        let Some(lowerdir) = self.lowerdir(lowers)? else {
            return Ok(false);
        };
        if !self.mount_anyway(&mnt, &overlay_data(&lowerdir, &upper, &work))? {
            return Ok(false);
        }
        let applied =
            apply_layer_blob(store, digest, Some(diff_id), &mnt, &ApplyOptions::default());
        rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::empty())
            .map_err(|e| io_err("unmount", &mnt)(e.into()))?;
        applied.map_err(|source| LocalError::Chain {
            layer: digest.clone(),
            source,
        })?;
        match std::fs::rename(&upper, dir) {
            Ok(()) => Ok(true),
            // Another build made the same chain first.
            Err(_) if dir.is_dir() => Ok(true),
            Err(e) => Err(io_err("rename into", dir)(e)),
        }
    }
}
