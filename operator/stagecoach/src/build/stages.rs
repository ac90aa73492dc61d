//! Running the plan's waves on this machine. Every stage gets a fresh root directory with its
//! base's layers applied from the content store (a stage built on another stage re-applies
//! that stage's layers, so the two never share a directory), and the stages of one wave run
//! on their own threads. A wave is waited for as a whole: when a stage fails, the others of
//! its wave finish what they are doing and the build stops before the next wave.
//!
//! Images named by `COPY --from=<image>` are unpacked once, before the first wave, and handed
//! to every stage that reads them like a finished stage's root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use stagecoach_builder::context::BuildContext;
use stagecoach_builder::executor::{
    BaseImage, ExecutorOptions, LayerRecord, ProgressEvent, StageExecutor, StageSource, StageSpec,
};
use stagecoach_builder::image_state::ArgSource;
use stagecoach_builder::runc::RuncRunner;
use stagecoach_dockerfile::Dockerfile;
use stagecoach_dockerfile::planner::{Base, Plan};
use stagecoach_oci::{ContentStore, Digest, ImageConfig};

use super::pull::Pulled;
use super::roots::{ChainStack, RootCache, apply_layers, unmount_all_under};
use super::{BuildError, log};

/// Read-only directories (top first) an overlay stacks to show a root, and how many of the
/// stage's layers they hold.
type Lowers = Option<(Vec<PathBuf>, usize)>;

/// A finished stage: what a target's image or a later `FROM <stage>` needs.
#[derive(Debug, Clone)]
pub struct Done {
    /// The stage's label.
    pub label: String,
    /// Its image config.
    pub config: ImageConfig,
    /// All its layers, the base's first.
    pub layers: Vec<LayerRecord>,
    /// Read-only directories (top first) whose overlay shows this stage's final root, and
    /// how many of `layers` they cover: a stage built on this one mounts them as its lower
    /// layers. After the stage, that is its own upper directory over its lowers; without
    /// overlay, nothing.
    pub lower: Lowers,
    /// The chain ID its root is exactly (every step a cache hit), for stacking the hits of
    /// a stage built on it.
    pub chain: Option<Digest>,
}

/// The build's scratch space: one directory per stage root, runc bundles and state. Removed
/// when dropped, so nothing of a build is left behind, whether it succeeded or not. A build
/// that was killed cannot remove its own: each work directory holds a lock for as long as its
/// build runs, and a new build removes the unlocked ones it finds.
#[derive(Debug)]
pub struct WorkDir {
    dir: PathBuf,
    // Held (flock, exclusive) until the directory is removed.
    _lock: std::fs::File,
}

const LOCK_FILE: &str = ".lock";

impl WorkDir {
    /// A new, uniquely named directory under `parent`; stale ones are removed first.
    pub fn create(parent: &Path) -> Result<Self, BuildError> {
        let io = |action| {
            move |source| BuildError::Io {
                action,
                path: parent.display().to_string(),
                source,
            }
        };
        std::fs::create_dir_all(parent).map_err(io("create"))?;
        remove_stale(parent);
        // Made under another prefix and renamed once locked, so no other build ever sees a
        // `build-*` directory whose lock is free while its build runs.
        let fresh = tempfile::Builder::new()
            .prefix("new-")
            .tempdir_in(parent)
            .map_err(io("create a work directory in"))?;
        let lock =
            std::fs::File::create(fresh.path().join(LOCK_FILE)).map_err(io("create a lock in"))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io("lock a work directory in")(e.into()))?;
        let name = fresh
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().replacen("new-", "build-", 1))
            .unwrap_or_else(|| "build-unnamed".to_string());
        let dir = parent.join(name);
        std::fs::rename(fresh.path(), &dir).map_err(io("rename a work directory in"))?;
        // The rename moved it; the guard must not delete a path that no longer exists.
        let _ = fresh.keep();
        Ok(WorkDir { dir, _lock: lock })
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    fn stage_dir(&self, index: usize) -> PathBuf {
        self.dir.join(format!("stage-{index}"))
    }

    fn stage_root(&self, index: usize) -> PathBuf {
        self.stage_dir(index).join("rootfs")
    }
}

/// Removes work directories of builds that no longer run (their lock is free). Failures
/// only warn: a leftover directory costs disk space, not correctness.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_work = entry.file_name().to_string_lossy().starts_with("build-");
        if !is_work || !path.is_dir() {
            continue;
        }
        // No lock file yet: a build between creating the directory and locking it.
        let Ok(lock) = std::fs::File::open(path.join(LOCK_FILE)) else {
            continue;
        };
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok() {
            log(format!(
                "[build] removing the work directory of an earlier build that did not finish: {}",
                path.display()
            ));
            unmount_all_under(&path);
            if let Err(e) = std::fs::remove_dir_all(&path) {
                log(format!("warning: could not remove {}: {e}", path.display()));
            }
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        unmount_all_under(&self.dir);
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            log(format!(
                "warning: could not remove the work directory {}: {e}",
                self.dir.display()
            ));
        }
    }
}

/// Everything the stages of one build share.
#[derive(Debug)]
pub struct Run<'a> {
    /// The parsed Dockerfile.
    pub dockerfile: &'a Dockerfile,
    /// Its plan.
    pub plan: &'a Plan,
    /// The content store (also the cache root).
    pub store: &'a ContentStore,
    /// The build context.
    pub context: &'a BuildContext,
    /// The pulled base images.
    pub pulled: &'a Pulled,
    /// Their unpacked roots.
    pub roots: &'a RootCache,
    /// Build args and the global ARG scope.
    pub args: ArgSource,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--secret` ids and files.
    pub secrets: &'a [(String, PathBuf)],
    /// Timestamps in layers and configs.
    pub source_date_epoch: u64,
}

impl Run<'_> {
    /// Runs every wave; returns the finished stages by index.
    pub fn run_waves(&self, work: &WorkDir) -> Result<BTreeMap<usize, Done>, BuildError> {
        let runner = RuncRunner::new()
            .with_bundle_parent(work.path().join("bundles"))
            .with_state_root(work.path().join("runc"));
        for dir in ["bundles", "runc"] {
            let path = work.path().join(dir);
            std::fs::create_dir_all(&path).map_err(|source| BuildError::Io {
                action: "create",
                path: path.display().to_string(),
                source,
            })?;
        }
        let images = self.unpack_copy_images()?;
        let mut done: BTreeMap<usize, Done> = BTreeMap::new();
        for wave in &self.plan.waves {
            let results: Vec<Result<Done, BuildError>> = std::thread::scope(|scope| {
                let handles: Vec<_> = wave
                    .iter()
                    .map(|&i| {
                        let done = &done;
                        let images = &images;
                        let runner = &runner;
                        scope.spawn(move || self.run_stage(i, work, done, images, runner))
                    })
                    .collect();
                handles
                    .into_iter()
                    .zip(wave)
                    .map(|(h, &i)| {
                        h.join().unwrap_or_else(|_| {
                            Err(BuildError::Stage {
                                stage: self.plan.stages[i].label(),
                                message: "the stage's thread panicked".into(),
                            })
                        })
                    })
                    .collect()
            });
            let mut first_error = None;
            for (result, &i) in results.into_iter().zip(wave) {
                match result {
                    Ok(d) => {
                        done.insert(i, d);
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        Ok(done)
    }

    /// The unpacked root of each image read by `COPY --from=<image>` (read only, shared with
    /// other builds), named as the instruction writes it (the executor matches `--from`
    /// values lower-cased).
    fn unpack_copy_images(&self) -> Result<Vec<StageSource>, BuildError> {
        let mut names: Vec<&String> = self
            .plan
            .waves
            .iter()
            .flatten()
            .flat_map(|&i| self.plan.stages[i].images.iter())
            .collect();
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            let pulled = self.pulled.get(name).ok_or_else(|| BuildError::Pull {
                image: name.clone(),
                message: "not pulled".into(),
            })?;
            let root =
                self.roots
                    .image_root(self.store, &pulled.manifest, &pulled.base.layers, name)?;
            out.push(StageSource {
                name: Some(name.to_ascii_lowercase()),
                root,
            });
        }
        Ok(out)
    }

    /// Makes the stage's root: an overlay over the cached unpacked image at the bottom of
    /// its `FROM` chain with the remaining layers applied, or, without overlay, a plain
    /// directory with all of them applied. Returns the root and the lower layers used.
    fn prepare_root(
        &self,
        index: usize,
        work: &WorkDir,
        base: &BaseImage,
        lower: Lowers,
        label: &str,
    ) -> Result<(PathBuf, Lowers), BuildError> {
        let t0 = std::time::Instant::now();
        if let Some((lowers, covered)) = &lower
            && let Some(root) = self.roots.mount_stage(lowers, &work.stage_dir(index))?
        {
            let rest = base.layers.get(*covered..).unwrap_or_default();
            apply_layers(self.store, &root, rest, label)?;
            log(format!(
                "[{label}] root: cached base + {} layers in {:.1}s",
                rest.len(),
                t0.elapsed().as_secs_f64()
            ));
            return Ok((root, lower));
        }
        let root = work.stage_root(index);
        std::fs::create_dir_all(&root).map_err(|source| BuildError::Io {
            action: "create",
            path: root.display().to_string(),
            source,
        })?;
        apply_layers(self.store, &root, &base.layers, label)?;
        if !base.layers.is_empty() {
            log(format!(
                "[{label}] root: {} layers unpacked in {:.1}s",
                base.layers.len(),
                t0.elapsed().as_secs_f64()
            ));
        }
        // A plain directory: nothing for stages built on this one to stack.
        Ok((root, None))
    }

    fn run_stage(
        &self,
        index: usize,
        work: &WorkDir,
        done: &BTreeMap<usize, Done>,
        images: &[StageSource],
        runner: &RuncRunner,
    ) -> Result<Done, BuildError> {
        let planned = &self.plan.stages[index];
        let label = planned.label();
        let stage_err = |message: String| BuildError::Stage {
            stage: label.clone(),
            message,
        };
        let (base, lower) = match &planned.base {
            Base::Scratch => (BaseImage::default(), None),
            Base::Image(image) => {
                let pulled = self
                    .pulled
                    .get(image)
                    .ok_or_else(|| stage_err(format!("base image {image} was not pulled")))?;
                let lower = if self.roots.overlay_enabled() {
                    let root = self.roots.image_root(
                        self.store,
                        &pulled.manifest,
                        &pulled.base.layers,
                        &label,
                    )?;
                    Some((vec![root], pulled.base.layers.len()))
                } else {
                    None
                };
                (pulled.base.clone(), lower)
            }
            Base::Stage(j) => {
                let parent = done
                    .get(j)
                    .ok_or_else(|| stage_err(format!("base stage {j} has not run")))?;
                let base = BaseImage {
                    config: Some(parent.config.clone()),
                    layers: parent.layers.clone(),
                };
                (base, parent.lower.clone())
            }
        };
        let chain = match &planned.base {
            Base::Image(_) => {
                let diff_ids = base
                    .config
                    .as_ref()
                    .map(|c| c.rootfs.diff_ids.clone())
                    .unwrap_or_default();
                stagecoach_oci::chain_ids(&diff_ids).pop()
            }
            Base::Stage(j) => done.get(j).and_then(|d| d.chain.clone()),
            Base::Scratch => None,
        };
        let (root, lower) = self.prepare_root(index, work, &base, lower, &label)?;
        let stack = match (&lower, chain) {
            (Some((lowers, _)), Some(chain)) => Some(ChainStack::new(
                self.roots,
                self.store,
                &work.stage_dir(index),
                chain,
                lowers.clone(),
            )),
            _ => None,
        };
        let options = ExecutorOptions {
            no_cache: self.no_cache,
            source_date_epoch: self.source_date_epoch,
            ..ExecutorOptions::default()
        };
        let mut executor = StageExecutor::new(self.store, &root, self.context, runner, options)
            .map_err(|e| stage_err(e.to_string()))?;
        if let Some(stack) = &stack {
            executor = executor.with_stacker(stack);
        }
        for &j in &planned.depends_on {
            executor = executor.with_stage(
                j,
                StageSource {
                    name: self.plan.stages[j].name.clone(),
                    root: work.stage_root(j),
                },
            );
        }
        for (id, path) in self.secrets {
            executor = executor.with_secret(id, path);
        }
        // External images get indices past the stages so they never shadow one.
        for (n, image) in images.iter().enumerate() {
            if planned
                .images
                .iter()
                .any(|i| Some(i.to_ascii_lowercase()) == image.name)
            {
                executor = executor.with_stage(self.plan.stages.len() + n, image.clone());
            }
        }
        let spec = StageSpec {
            label: label.clone(),
            instructions: &self.dockerfile.stages[index].instructions,
            escape: self.dockerfile.escape,
            args: self.args.clone(),
            base,
        };
        let mut progress = |event: &ProgressEvent<'_>| match event {
            ProgressEvent::StepStarted { .. } => log(event.to_string()),
            _ => log(format!("[{label}] {event}")),
        };
        let outcome = executor.run(&spec, &mut progress);
        match (outcome.error, outcome.config) {
            (None, Some(config)) => {
                // Children built on this stage stack its upper directory over its lowers
                // instead of applying its layers again; the root becomes read-only.
                // Hits may have stacked more lowers; an empty upper means the root is
                // exactly that chain.
                let (lower, chain) = match (&stack, lower) {
                    (Some(stack), Some(_)) => {
                        let (chain, lowers) = stack.current();
                        let upper = work.stage_dir(index).join("upper");
                        let pure = std::fs::read_dir(&upper)
                            .map(|mut d| d.next().is_none())
                            .unwrap_or(false);
                        (Some((lowers, 0)), pure.then_some(chain))
                    }
                    (_, lower) => (lower, None),
                };
                let lower = match lower {
                    Some((lowers, _)) => self
                        .roots
                        .freeze(&work.stage_dir(index), &lowers)?
                        .map(|stack| (stack, outcome.result.layers.len())),
                    None => None,
                };
                log(format!(
                    "[{label}] done in {:.1}s, {} of {} steps cached",
                    outcome.result.duration_ms as f64 / 1000.0,
                    outcome.result.cache_hits,
                    outcome.result.steps.len()
                ));
                Ok(Done {
                    label,
                    config,
                    layers: outcome.result.layers,
                    lower,
                    chain,
                })
            }
            (Some(error), _) => {
                let mut message = error.to_string();
                if let Some(failed) = &outcome.result.failed_step
                    && !failed.tail.is_empty()
                {
                    message.push_str("\n  last output:");
                    for line in &failed.tail {
                        message.push_str("\n  | ");
                        message.push_str(line);
                    }
                }
                Err(stage_err(message))
            }
            (None, None) => Err(stage_err("the stage produced no config".into())),
        }
    }
}
