//! Running the plan's waves on this machine. Every stage gets its own root (an overlay over
//! the cached unpacked image at the bottom of its `FROM` chain, or a plain directory) and
//! runs as a [`StageJob`] through [`run_job`], the wiring builder pods use too; the stages of
//! one wave run on their own threads. A wave is waited for as a whole: when a stage fails,
//! the others of its wave finish what they are doing and the build stops before the next.
//!
//! Images named by `COPY --from=<image>` are unpacked once, before the first wave, and handed
//! to every stage that reads them like a finished stage's root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use stagecoach_dockerfile::Dockerfile;
use stagecoach_dockerfile::planner::{Base, Plan};
use stagecoach_oci::{ContentStore, Digest, ImageConfig};
use stagecoach_protocol::job::{
    ImageInput, JOB_VERSION, JobBase, JobOptions, SecretInput, StageInput, StageJob,
};
use stagecoach_protocol::{CacheLayout, LayerRecord};

use super::roots::{ChainStack, RootCache, unmount_all_under};
use super::{LocalError, Log, Pulled};
use crate::executor::{HitStacker, ProgressEvent};
use crate::job::{JobEnv, run_job};
use crate::runc::RuncRunner;

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
    /// That config's digest (the blob is in the store).
    pub config_digest: Digest,
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
    log: Log,
    // Held (flock, exclusive) until the directory is removed.
    _lock: std::fs::File,
}

const LOCK_FILE: &str = ".lock";

impl WorkDir {
    /// A new, uniquely named directory under `parent`; stale ones are removed first.
    pub fn create(parent: &Path, log: Log) -> Result<Self, LocalError> {
        let io = |action| {
            move |source| LocalError::Io {
                action,
                path: parent.to_owned(),
                source,
            }
        };
        std::fs::create_dir_all(parent).map_err(io("create"))?;
        remove_stale(parent, log);
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
        Ok(WorkDir {
            dir,
            log,
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
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
fn remove_stale(parent: &Path, log: Log) {
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
            log(&format!(
                "[build] removing the work directory of an earlier build that did not finish: {}",
                path.display()
            ));
            unmount_all_under(&path, log);
            if let Err(e) = std::fs::remove_dir_all(&path) {
                log(&format!(
                    "warning: could not remove {}: {e}",
                    path.display()
                ));
            }
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        unmount_all_under(&self.dir, self.log);
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            (self.log)(&format!(
                "warning: could not remove the work directory {}: {e}",
                self.dir.display()
            ));
        }
    }
}

/// Everything the stages of one build share.
#[derive(Debug)]
pub struct LocalBuild<'a> {
    /// The Dockerfile's text (each stage's job carries it).
    pub dockerfile_text: &'a str,
    /// The Dockerfile's path (absolute, or relative to the context), for its own
    /// `<Dockerfile>.dockerignore`; `None` when it came from standard input.
    pub dockerfile_path: Option<PathBuf>,
    /// The parsed Dockerfile.
    pub dockerfile: &'a Dockerfile,
    /// Its plan.
    pub plan: &'a Plan,
    /// The cache.
    pub layout: &'a CacheLayout,
    /// Its content store.
    pub store: &'a ContentStore,
    /// The build context directory.
    pub context: &'a Path,
    /// The pulled images.
    pub pulled: &'a Pulled,
    /// Their unpacked roots.
    pub roots: &'a RootCache,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--secret` ids and files.
    pub secrets: &'a [(String, PathBuf)],
    /// Timestamps in layers and configs.
    pub source_date_epoch: u64,
    /// Where progress goes.
    pub log: Log,
}

impl LocalBuild<'_> {
    /// Runs every wave; returns the finished stages by index.
    pub fn run_waves(&self, work: &WorkDir) -> Result<BTreeMap<usize, Done>, LocalError> {
        let runner = RuncRunner::new()
            .with_bundle_parent(work.path().join("bundles"))
            .with_state_root(work.path().join("runc"));
        for dir in ["bundles", "runc"] {
            let path = work.path().join(dir);
            std::fs::create_dir_all(&path).map_err(|source| LocalError::Io {
                action: "create",
                path: path.clone(),
                source,
            })?;
        }
        let images = self.unpack_copy_images()?;
        let mut done: BTreeMap<usize, Done> = BTreeMap::new();
        for wave in &self.plan.waves {
            let results: Vec<Result<Done, LocalError>> = std::thread::scope(|scope| {
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
                            Err(LocalError::Panicked {
                                stage: self.plan.stages[i].label(),
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
    /// other builds), named as the instruction writes it.
    fn unpack_copy_images(&self) -> Result<Vec<ImageInput>, LocalError> {
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
            let pulled = self.pulled.get(name).ok_or_else(|| LocalError::NotPulled {
                image: name.clone(),
            })?;
            let root = self
                .roots
                .image_root(self.store, &pulled.manifest, &pulled.layers, name)?;
            out.push(ImageInput {
                name: name.clone(),
                root,
                pull: None,
            });
        }
        Ok(out)
    }

    /// Makes the stage's root: an overlay over the lowers with the remaining layers to apply,
    /// or, without overlay, a plain directory with all of them to apply. Returns the root,
    /// the lowers used and the layers the job applies.
    fn prepare_root(
        &self,
        index: usize,
        work: &WorkDir,
        layers: &[LayerRecord],
        lower: Lowers,
    ) -> Result<(PathBuf, Lowers, Vec<LayerRecord>), LocalError> {
        if let Some((lowers, covered)) = &lower
            && let Some(root) = self.roots.mount_stage(lowers, &work.stage_dir(index))?
        {
            let rest = layers.get(*covered..).unwrap_or_default().to_vec();
            return Ok((root, lower, rest));
        }
        let root = work.stage_root(index);
        std::fs::create_dir_all(&root).map_err(|source| LocalError::Io {
            action: "create",
            path: root.clone(),
            source,
        })?;
        // A plain directory: nothing for stages built on this one to stack.
        Ok((root, None, layers.to_vec()))
    }

    /// What the stage starts from, as its job says it, with the overlay lowers and the
    /// chain ID its root starts as.
    fn base(
        &self,
        index: usize,
        done: &BTreeMap<usize, Done>,
    ) -> Result<(JobBase, Vec<LayerRecord>, Lowers, Option<Digest>), LocalError> {
        let planned = &self.plan.stages[index];
        match &planned.base {
            Base::Scratch => Ok((JobBase::Scratch, Vec::new(), None, None)),
            Base::Image(image) => {
                let pulled = self
                    .pulled
                    .get(image)
                    .ok_or_else(|| LocalError::NotPulled {
                        image: image.clone(),
                    })?;
                let lower = if self.roots.overlay_enabled() {
                    let root = self.roots.image_root(
                        self.store,
                        &pulled.manifest,
                        &pulled.layers,
                        &planned.label(),
                    )?;
                    Some((vec![root], pulled.layers.len()))
                } else {
                    None
                };
                let chain = stagecoach_oci::chain_ids(&pulled.config.rootfs.diff_ids).pop();
                let config =
                    serde_json::to_value(&pulled.config).map_err(|source| LocalError::Encode {
                        stage: planned.label(),
                        source,
                    })?;
                let base = JobBase::Image {
                    reference: pulled.reference.clone(),
                    manifest: pulled.manifest.clone(),
                    config,
                    layers: pulled.layers.clone(),
                };
                Ok((base, pulled.layers.clone(), lower, chain))
            }
            Base::Stage(j) => {
                let parent = done.get(j).ok_or_else(|| LocalError::NotRun {
                    stage: planned.label(),
                    needed: *j,
                })?;
                let base = JobBase::Stage {
                    index: *j,
                    config: parent.config_digest.clone(),
                    layers: parent.layers.clone(),
                };
                Ok((
                    base,
                    parent.layers.clone(),
                    parent.lower.clone(),
                    parent.chain.clone(),
                ))
            }
        }
    }

    fn run_stage(
        &self,
        index: usize,
        work: &WorkDir,
        done: &BTreeMap<usize, Done>,
        images: &[ImageInput],
        runner: &RuncRunner,
    ) -> Result<Done, LocalError> {
        let planned = &self.plan.stages[index];
        let label = planned.label();
        let (base, layers, lower, chain) = self.base(index, done)?;
        let t0 = std::time::Instant::now();
        let (root, lower, apply) = self.prepare_root(index, work, &layers, lower)?;
        let stack = match (&lower, chain) {
            (Some((lowers, _)), Some(chain)) => Some(
                ChainStack::new(
                    self.roots,
                    self.store,
                    &work.stage_dir(index),
                    chain,
                    lowers.clone(),
                )
                .with_label(&label),
            ),
            _ => None,
        };
        let applied = apply.len();
        let job = StageJob {
            version: JOB_VERSION,
            build: work
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            dockerfile: self.dockerfile_text.to_string(),
            dockerfile_path: self.dockerfile_path.clone(),
            stage: index,
            label: label.clone(),
            build_args: self.build_args.clone(),
            base,
            root,
            apply,
            context: self.context.to_owned(),
            cache: self.layout.root().to_owned(),
            stages: planned
                .depends_on
                .iter()
                .map(|&j| StageInput {
                    index: j,
                    name: self.plan.stages[j].name.clone(),
                    root: work.stage_root(j),
                    ready: None,
                })
                .collect(),
            images: images
                .iter()
                .filter(|image| {
                    planned
                        .images
                        .iter()
                        .any(|i| i.eq_ignore_ascii_case(&image.name))
                })
                .cloned()
                .collect(),
            secrets: self
                .secrets
                .iter()
                .map(|(id, path)| SecretInput {
                    id: id.clone(),
                    path: path.clone(),
                })
                .collect(),
            options: JobOptions {
                no_cache: self.no_cache,
                source_date_epoch: self.source_date_epoch,
                ..JobOptions::default()
            },
            export: None,
            export_shared: false,
            export_paths: None,
            result: None,
            cache_mounts: Vec::new(),
            wait_for: Vec::new(),
        };
        let log = self.log;
        let mut first_step = true;
        let mut progress = |event: &ProgressEvent<'_>| {
            if first_step && applied > 0 {
                // The job applied the parent layers the overlay does not hold.
                first_step = false;
                log(&format!(
                    "[{label}] root: {applied} layers applied in {:.1}s",
                    t0.elapsed().as_secs_f64()
                ));
            }
            match event {
                ProgressEvent::StepStarted { .. } => log(&event.to_string()),
                _ => log(&format!("[{label}] {event}")),
            }
        };
        let env = JobEnv {
            runner,
            stacker: stack.as_ref().map(|s| s as &dyn HitStacker),
        };
        let outcome = run_job(&job, env, &mut progress).map_err(|source| LocalError::Job {
            stage: label.clone(),
            source: Box::new(source),
        })?;
        match (
            outcome.error,
            outcome.config,
            outcome.result.config_digest.clone(),
        ) {
            (None, Some(config), Some(config_digest)) => {
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
                log(&format!(
                    "[{label}] done in {:.1}s, {} of {} steps cached",
                    outcome.result.duration_ms as f64 / 1000.0,
                    outcome.result.cache_hits,
                    outcome.result.steps.len()
                ));
                Ok(Done {
                    label,
                    config,
                    config_digest,
                    layers: outcome.result.layers,
                    lower,
                    chain,
                })
            }
            (Some(source), _, _) => Err(LocalError::Stage {
                stage: label,
                source: Box::new(source),
                tail: outcome
                    .result
                    .failed_step
                    .map(|f| f.tail)
                    .unwrap_or_default(),
            }),
            (None, _, _) => Err(LocalError::NoConfig { stage: label }),
        }
    }
}
