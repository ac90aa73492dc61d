//! The stage executor: runs one planned stage's instructions over a root filesystem and
//! turns each one that changes files into an OCI layer in the content store.
//!
//! Flow, per instruction: apply its effect on the [`ImageState`] (always: it is cheap and
//! later keys depend on it), compute its cache key from the previous key (the chain starts
//! at the base image's config digest, or `scratch`), then
//! - metadata instructions (ENV, LABEL, CMD, …) add a history entry with `empty_layer`;
//! - COPY/ADD, WORKDIR and RUN look their key up in `keys/<key>` (unless `no_cache`); a hit
//!   applies the stored layer (`ADD <url>` sources are downloaded first either way: the key
//!   covers their content). A miss executes the instruction between two
//!   [`snapshot`](crate::snapshot) walks, writes the diff as a layer with
//!   `write_layer(Changes)` and records the key. A step whose diff is empty makes no layer
//!   and its history says `empty_layer`, as BuildKit's exporter does.
//!
//! Guarantees: every store write is a temporary file renamed into place, so concurrent
//! stage pods never see half a blob or half a key; RUN mount stubs the executor created are
//! removed again, and secret files are never walked, so they cannot reach a layer; a failure
//! stops the stage at the failing instruction and is reported with a stable reason and a
//! typed exit code ([`ExitCode`]).
//!
//! Assumptions: the caller has already unpacked the base image's layers into the root and
//! passes their descriptors in [`BaseImage`]; it owns the root and nothing else writes there
//! while the stage runs. Secrets are not part of cache keys (BuildKit does the same): a new
//! secret value does not re-run a step.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use stagecoach_dockerfile::instructions::{
    Add, CommandLine, Copy as CopyInstr, Instruction, Located, NetworkMode, Run, Sharing, Transfer,
};
use stagecoach_dockerfile::parser::Heredoc;
use stagecoach_dockerfile::shell::ShellLex;
use stagecoach_oci::config::{ConfigError, rfc3339_utc};
use stagecoach_oci::layer::{ApplyError, LayerWriteError, apply_layer_blob, write_layer};
use stagecoach_oci::store::StoreError;
use stagecoach_oci::{
    ApplyOptions, Compression, ContentStore, ImageConfig, LayerOptions, LayerSource,
};

use crate::cache_key::{self, CacheKey, CacheKeyError};
use crate::context::{BuildContext, ContextError};
use crate::copy::{self, CopyError, CopySpec, HeredocSource};
use crate::image_state::{ArgSource, HistoryEntry, ImageState, StateError, parse_trigger};
use crate::remote::{self, FetchError};
use crate::rootpath::{self, RootPathError};
use crate::runner::{RunMount, RunNetwork, RunRequest, Runner, RunnerError};
use crate::snapshot::{self, Snapshot, SnapshotError, SnapshotOptions};
use crate::users::{self, Owner, UserError};

use stagecoach_protocol::layout::CacheLayout;
pub use stagecoach_protocol::reason::{ExitCode, StageReason};
pub use stagecoach_protocol::result::{FailedStep, LayerRecord, Outcome, StageResult, StepRecord};

mod copy_step;
mod error;
mod keys;
mod mounts;
mod progress;
mod run_step;

pub use error::{ExecutorError, no_space};
pub use keys::{CacheEntry, KeyStore};
pub use progress::{Progress, ProgressEvent};

use error::io_err;

/// The image a stage starts from. Its layers must already be applied to the root.
#[derive(Debug, Clone, Default)]
pub struct BaseImage {
    /// The base's config; `None` for `FROM scratch`.
    pub config: Option<ImageConfig>,
    /// The base's layers, in order.
    pub layers: Vec<LayerRecord>,
}

/// Another stage's exported root, for `COPY --from` and `RUN --mount=from=`.
#[derive(Debug, Clone)]
pub struct StageSource {
    /// Its `AS` name (lower-cased), if any.
    pub name: Option<String>,
    /// The directory holding its root filesystem or artifacts.
    pub root: PathBuf,
}

/// One stage to run.
#[derive(Debug, Clone)]
pub struct StageSpec<'a> {
    /// The label in progress lines (stage name or index).
    pub label: String,
    /// The stage's instructions.
    pub instructions: &'a [Located],
    /// The Dockerfile's escape character.
    pub escape: char,
    /// Build args and the global scope.
    pub args: ArgSource,
    /// The base image.
    pub base: BaseImage,
}

/// Knobs.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// Skip cache lookups (keys are still written).
    pub no_cache: bool,
    /// SOURCE_DATE_EPOCH: mtimes in layers are clamped to it and `created` fields use it.
    pub source_date_epoch: u64,
    /// Layer compression.
    pub compression: Compression,
    /// Set owners when copying (needs CAP_CHOWN).
    pub set_owner: bool,
    /// How cached layers are applied.
    pub apply: ApplyOptions,
    /// Architecture of a `FROM scratch` stage's config.
    pub architecture: String,
    /// RUN timeout.
    pub run_timeout: Option<Duration>,
    /// Output lines kept for failure reports.
    pub tail_lines: usize,
    /// Directories to leave out of snapshots besides mount points (absolute host paths or
    /// paths in the root): the executor's own binary, the cache volume, …
    pub own_dirs: Vec<PathBuf>,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        Self {
            no_cache: false,
            source_date_epoch: 0,
            compression: Compression::default(),
            set_owner: rustix::process::geteuid().is_root(),
            apply: ApplyOptions::default(),
            architecture: "amd64".to_string(),
            run_timeout: None,
            tail_lines: 20,
            own_dirs: Vec::new(),
        }
    }
}

/// Everything a run produced: the result, the error behind a failure, and on success the
/// image config (also stored as a blob) and the final state (for `FROM <this stage>`).
#[derive(Debug)]
pub struct StageOutcome {
    /// The structured result.
    pub result: StageResult,
    /// The failure.
    pub error: Option<ExecutorError>,
    /// The image config.
    pub config: Option<ImageConfig>,
}

impl StageOutcome {
    /// The process exit code.
    pub fn exit_code(&self) -> ExitCode {
        self.error
            .as_ref()
            .map_or(ExitCode::Ok, ExecutorError::exit_code)
    }
}

/// Why a [`HitStacker`] failed (its own error, kept as the source).
pub type StackError = Box<dyn std::error::Error + Send + Sync>;

/// Takes a cache hit's layer into the root without extracting it (an overlay stack on one
/// machine). Asked only while every step so far was a hit or a promoted miss, so the root is
/// exactly the base plus those layers; `Ok(false)` means "extract it as usual".
pub trait HitStacker: Send + Sync {
    /// Makes `layer` the root's top layer.
    fn stack(&self, layer: &LayerRecord) -> Result<bool, StackError>;

    /// Whether the root is exactly the stacked chain right now (nothing written over it).
    /// Asked before a missed step runs: only then does what the step writes over the chain
    /// hold that step's changes alone, and [`HitStacker::promote`] may be asked after it.
    fn exact(&self) -> bool {
        false
    }

    /// After a missed step that ran over an exact chain wrote its layer: keeps what the step
    /// wrote as that layer's own chain directory, so the root stays exactly a chain and the
    /// next build's hit on `step.layer` finds it made. `Ok(false)`: the root is left as it
    /// was (what the step wrote stays over the chain).
    fn promote(&self, step: &MissedStep<'_>) -> Result<bool, StackError> {
        let _ = step;
        Ok(false)
    }
}

/// A missed step's layer and how it was made, for [`HitStacker::promote`]: the promoted
/// directory must show exactly what unpacking the layer would.
#[derive(Debug, Clone, Copy)]
pub struct MissedStep<'s> {
    /// The layer written.
    pub layer: &'s LayerRecord,
    /// The changes it was written from (paths relative to the root).
    pub changes: &'s [stagecoach_oci::Change],
    /// What the snapshots left out (never in the layer).
    pub snapshot: &'s SnapshotOptions,
    /// SOURCE_DATE_EPOCH: the layer's mtimes are clamped to it.
    pub source_date_epoch: u64,
}

/// Runs stages over one root directory.
pub struct StageExecutor<'a> {
    store: &'a ContentStore,
    layout: CacheLayout,
    keys: KeyStore,
    rootfs: PathBuf,
    context: &'a BuildContext,
    runner: &'a dyn Runner,
    stages: BTreeMap<usize, StageSource>,
    secrets: BTreeMap<String, PathBuf>,
    stacker: Option<&'a dyn HitStacker>,
    options: ExecutorOptions,
}

impl std::fmt::Debug for StageExecutor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageExecutor")
            .field("rootfs", &self.rootfs)
            .field("store", &self.store.root())
            .field("context", &self.context.root())
            .field("stages", &self.stages)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What the run loop accumulates.
#[derive(Default)]
struct Record {
    steps: Vec<StepRecord>,
    new_layers: Vec<LayerRecord>,
    history: Vec<HistoryEntry>,
    hits: usize,
    failed: Option<FailedStep>,
}

/// One step's inputs.
struct Step<'s> {
    number: usize,
    line: usize,
    original: &'s str,
    instruction: &'s Instruction,
}

/// The per-stage mutable state of the loop.
struct Cursor {
    state: ImageState,
    parent_key: String,
    /// Every file step so far was a cache hit or a miss promoted to a chain layer (the root
    /// is the base plus those layers, unless a stacker refused one and it was extracted).
    only_hits: bool,
    /// The walk of the root as it is now; `None` after something changed it without a walk.
    baseline: Option<Snapshot>,
}

/// One step and the loop state it reads and advances, passed down the step functions as
/// one argument.
struct StepCtx<'c, 's> {
    step: &'c Step<'s>,
    cursor: &'c mut Cursor,
    record: &'c mut Record,
    progress: &'c mut dyn Progress,
}

/// What executing a file step produced.
struct FileOutcome {
    layer: Option<LayerRecord>,
    cached: bool,
}

impl<'a> StageExecutor<'a> {
    /// An executor writing into `store` (whose root is the cache root: `keys/`, `mounts/`),
    /// running over `rootfs`, reading COPY sources from `context` and RUN steps through
    /// `runner`.
    pub fn new(
        store: &'a ContentStore,
        rootfs: &Path,
        context: &'a BuildContext,
        runner: &'a dyn Runner,
        options: ExecutorOptions,
    ) -> Result<Self, ExecutorError> {
        Ok(Self {
            keys: KeyStore::open(store.root())?,
            layout: CacheLayout::new(store.root()),
            store,
            rootfs: rootfs.to_owned(),
            context,
            runner,
            stages: BTreeMap::new(),
            secrets: BTreeMap::new(),
            stacker: None,
            options,
        })
    }

    /// Makes another stage's exported root available by index.
    pub fn with_stage(mut self, index: usize, source: StageSource) -> Self {
        self.stages.insert(index, source);
        self
    }

    /// Takes cache hits through `stacker` while the stage has only hit.
    pub fn with_stacker(mut self, stacker: &'a dyn HitStacker) -> Self {
        self.stacker = Some(stacker);
        self
    }

    /// Makes a secret file available to `RUN --mount=type=secret,id=<id>`.
    pub fn with_secret(mut self, id: &str, path: &Path) -> Self {
        self.secrets.insert(id.to_string(), path.to_owned());
        self
    }

    /// Runs the stage. Never panics and always returns a result; on failure the root is left
    /// as the failing step left it (the caller throws it away).
    pub fn run(&self, stage: &StageSpec<'_>, progress: &mut dyn Progress) -> StageOutcome {
        let started = Instant::now();
        let mut record = Record::default();
        let run = self.run_inner(stage, progress, &mut record);
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut layers = stage.base.layers.clone();
        layers.extend(record.new_layers.iter().cloned());
        match run {
            Ok((config, blob)) => StageOutcome {
                result: StageResult {
                    outcome: Outcome::Succeeded,
                    reason: None,
                    message: None,
                    failed_step: None,
                    exit_code: 0,
                    layers,
                    config_digest: Some(blob.digest.clone()),
                    config_size: Some(blob.size),
                    cache_hits: record.hits,
                    steps: record.steps,
                    duration_ms,
                },
                error: None,
                config: Some(config),
            },
            Err(error) => StageOutcome {
                result: StageResult {
                    outcome: Outcome::Failed,
                    reason: Some(error.reason()),
                    message: Some(error.to_string()),
                    failed_step: record.failed,
                    exit_code: error.exit_code().code(),
                    layers,
                    config_digest: None,
                    config_size: None,
                    cache_hits: record.hits,
                    steps: record.steps,
                    duration_ms,
                },
                error: Some(error),
                config: None,
            },
        }
    }

    fn run_inner(
        &self,
        stage: &StageSpec<'_>,
        progress: &mut dyn Progress,
        record: &mut Record,
    ) -> Result<(ImageConfig, stagecoach_oci::BlobInfo), ExecutorError> {
        let lex = ShellLex::new(stage.escape);
        let (mut state, parent_key) = match &stage.base.config {
            Some(config) => {
                let (_, desc) = config.to_blob()?;
                (
                    ImageState::from_image_config(config),
                    desc.digest.to_string(),
                )
            }
            None => (ImageState::scratch(), "scratch".to_string()),
        };
        // ONBUILD triggers of the base run first, as BuildKit does, at the FROM line.
        let first_line = stage.instructions.first().map_or(0, |l| l.line);
        let mut triggers = Vec::new();
        for t in state.take_onbuild_triggers() {
            let instruction = parse_trigger(&t).map_err(|source| ExecutorError::State {
                line: first_line,
                source,
            })?;
            triggers.push(Located {
                line: first_line,
                end_line: first_line,
                original: t,
                instruction,
            });
        }
        let all: Vec<&Located> = triggers.iter().chain(stage.instructions.iter()).collect();
        let mut cursor = Cursor {
            state,
            parent_key,
            only_hits: true,
            baseline: None,
        };
        let total = all.len();
        for (i, located) in all.iter().enumerate() {
            let step = Step {
                number: i + 1,
                line: located.line,
                original: &located.original,
                instruction: &located.instruction,
            };
            progress.on_event(&ProgressEvent::StepStarted {
                stage: &stage.label,
                step: step.number,
                total,
                instruction: step.original,
                line: step.line,
            });
            let t0 = Instant::now();
            let mut ctx = StepCtx {
                step: &step,
                cursor: &mut cursor,
                record: &mut *record,
                progress: &mut *progress,
            };
            let result = self.step(&lex, stage, &mut ctx);
            let outcome = match result {
                Ok(o) => o,
                Err(e) => {
                    if record.failed.is_none() {
                        record.failed = Some(FailedStep {
                            instruction: step.original.to_string(),
                            line: step.line,
                            exit_code: None,
                            tail: Vec::new(),
                        });
                    }
                    return Err(e);
                }
            };
            let duration = t0.elapsed();
            if outcome.cached {
                record.hits += 1;
            }
            record.steps.push(StepRecord {
                step: step.number,
                line: step.line,
                keyword: step.instruction.keyword().to_string(),
                cached: outcome.cached,
                duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                layer: outcome.layer.as_ref().map(|l| l.digest.clone()),
            });
            progress.on_event(&ProgressEvent::StepDone {
                step: step.number,
                duration,
                cached: outcome.cached,
            });
        }
        let config = self.final_config(stage, &cursor.state, record)?;
        let bytes = config.to_canonical_json()?;
        let blob = self.store.put_bytes(&bytes)?;
        Ok((config, blob))
    }

    fn final_config(
        &self,
        stage: &StageSpec<'_>,
        state: &ImageState,
        record: &Record,
    ) -> Result<ImageConfig, ExecutorError> {
        let mut config = stage
            .base
            .config
            .clone()
            .unwrap_or_else(|| ImageConfig::new_linux(&self.options.architecture));
        let created = rfc3339_utc(i64::try_from(self.options.source_date_epoch).unwrap_or(0));
        config.created = Some(created.clone());
        state.write_to(&mut config);
        let mut layers = record.new_layers.iter();
        for h in &record.history {
            let entry = h.to_oci(Some(created.clone()));
            if h.empty_layer {
                config.push_empty(entry);
            } else {
                let layer = layers.next().ok_or_else(|| ExecutorError::Io {
                    action: "match history to layers in",
                    path: self.rootfs.clone(),
                    source: io::Error::other("more layer history entries than layers"),
                })?;
                config.push_layer(layer.diff_id.clone(), entry);
            }
        }
        Ok(config)
    }

    fn step(
        &self,
        lex: &ShellLex,
        stage: &StageSpec<'_>,
        ctx: &mut StepCtx<'_, '_>,
    ) -> Result<FileOutcome, ExecutorError> {
        let step = ctx.step;
        let line = step.line;
        let state_err = |source| ExecutorError::State { line, source };
        match step.instruction {
            Instruction::Run(run) => self.step_run(stage, ctx, run),
            Instruction::Copy(CopyInstr { transfer, from }) => {
                self.step_copy(lex, ctx, transfer, from.as_deref(), None)
            }
            Instruction::Add(add) => {
                if add.keep_git_dir {
                    return Err(ExecutorError::Unsupported {
                        line,
                        what: "ADD --keep-git-dir (ADD from a git repository)".into(),
                    });
                }
                self.step_copy(lex, ctx, &add.transfer, None, Some(add))
            }
            Instruction::Workdir(_) => {
                let applied = ctx
                    .cursor
                    .state
                    .apply(lex, step.instruction, &stage.args)
                    .map_err(state_err)?;
                let mut history = applied.history.unwrap_or_else(|| HistoryEntry {
                    created_by: step.original.to_string(),
                    empty_layer: true,
                    comment: String::new(),
                });
                let used = arg_values(&ctx.cursor.state, &applied.used_args);
                if history.empty_layer {
                    let key = CacheKey::new(&ctx.cursor.parent_key, &history.created_by).args(used);
                    ctx.cursor.parent_key = key.digest();
                    ctx.record.history.push(history);
                    return Ok(FileOutcome {
                        layer: None,
                        cached: false,
                    });
                }
                let owner = if ctx.cursor.state.user.is_empty() {
                    Owner::default()
                } else {
                    // BuildKit creates WORKDIR as the current USER.
                    let user = ctx.cursor.state.user.clone();
                    users::resolve_chown(&self.rootfs, &user)
                        .map_err(|source| ExecutorError::User { line, source })?
                };
                let key = CacheKey::new(
                    &ctx.cursor.parent_key,
                    &format!("{}\nowner={}:{}", history.created_by, owner.uid, owner.gid),
                )
                .args(used)
                .digest();
                let dir = ctx.cursor.state.working_dir.clone();
                history.empty_layer = false;
                self.file_step(ctx, key, history, &[], |ex, _| {
                    let plan = copy::workdir_plan(&dir, owner);
                    ex.apply_plan(&plan, &ex.rootfs, line)
                })
            }
            other => {
                let applied = ctx
                    .cursor
                    .state
                    .apply(lex, other, &stage.args)
                    .map_err(state_err)?;
                let text = applied
                    .history
                    .as_ref()
                    .map_or(step.original, |h| h.created_by.as_str())
                    .to_string();
                let used = arg_values(&ctx.cursor.state, &applied.used_args);
                ctx.cursor.parent_key = CacheKey::new(&ctx.cursor.parent_key, &text)
                    .args(used)
                    .digest();
                if let Some(h) = applied.history {
                    ctx.record.history.push(h);
                }
                Ok(FileOutcome {
                    layer: None,
                    cached: false,
                })
            }
        }
    }

    /// A step that may change files: a cache hit applies (or stacks) the recorded layer; a
    /// miss runs `execute` between two snapshots and records the diff under `key`.
    fn file_step(
        &self,
        ctx: &mut StepCtx<'_, '_>,
        key: String,
        mut history: HistoryEntry,
        excluded: &[PathBuf],
        execute: impl FnOnce(&Self, &mut dyn Progress) -> Result<(), ExecutorError>,
    ) -> Result<FileOutcome, ExecutorError> {
        ctx.cursor.parent_key = key.clone();
        if !self.options.no_cache
            && let Some(entry) = self.keys.get(&key)
            && self.entry_usable(&entry)?
        {
            // Its last use, for garbage collection's age and LRU order.
            self.keys.touch(&key);
            if let Some(layer) = &entry.layer {
                let stacked = match self.stacker {
                    Some(stacker) if ctx.cursor.only_hits => {
                        stacker
                            .stack(layer)
                            .map_err(|source| ExecutorError::Stack {
                                layer: layer.digest.clone(),
                                source,
                            })?
                    }
                    _ => false,
                };
                if !stacked {
                    apply_layer_blob(
                        self.store,
                        &layer.digest,
                        Some(&layer.diff_id),
                        &self.rootfs,
                        &self.options.apply,
                    )?;
                }
                ctx.cursor.baseline = None;
                ctx.record.new_layers.push(layer.clone());
            }
            ctx.record.history.push(entry.history.clone());
            ctx.progress.on_event(&ProgressEvent::CacheHit {
                step: ctx.step.number,
            });
            return Ok(FileOutcome {
                layer: entry.layer,
                cached: true,
            });
        }
        // Asked before the step writes anything: afterwards what it wrote cannot be told from
        // what was there.
        let promoter = match self.stacker {
            Some(stacker) if ctx.cursor.only_hits && stacker.exact() => Some(stacker),
            _ => None,
        };
        ctx.cursor.only_hits = false;
        let mut options = SnapshotOptions::for_root(&self.rootfs, &self.options.own_dirs)?;
        for e in excluded {
            options.exclude(e);
        }
        let before = match ctx.cursor.baseline.take() {
            Some(s) if excluded.is_empty() => s,
            Some(s) => without(s, &options),
            None => Snapshot::take(&self.rootfs, &options)?,
        };
        execute(self, &mut *ctx.progress)?;
        let after = Snapshot::take(&self.rootfs, &options)?;
        let changes = snapshot::diff(&before, &after);
        // A walk with extra exclusions is no baseline for the next step, which sees them.
        ctx.cursor.baseline = excluded.is_empty().then_some(after);
        let layer = if changes.is_empty() {
            history.empty_layer = true;
            None
        } else {
            history.empty_layer = false;
            let info = write_layer(
                self.store,
                &self.rootfs,
                LayerSource::Changes(&changes),
                &LayerOptions {
                    compression: self.options.compression,
                    source_date_epoch: Some(self.options.source_date_epoch),
                },
            )?;
            Some(LayerRecord {
                media_type: info.media_type().to_string(),
                digest: info.digest.clone(),
                diff_id: info.diff_id.clone(),
                size: info.size,
            })
        };
        let entry = CacheEntry {
            layer: layer.clone(),
            empty_layer: layer.is_none(),
            history: history.clone(),
        };
        self.keys.put(&key, &entry)?;
        if let (Some(stacker), Some(l)) = (promoter, &layer) {
            let step = MissedStep {
                layer: l,
                changes: &changes,
                snapshot: &options,
                source_date_epoch: self.options.source_date_epoch,
            };
            let promoted = stacker
                .promote(&step)
                .map_err(|source| ExecutorError::Stack {
                    layer: l.digest.clone(),
                    source,
                })?;
            if promoted {
                // The root is a chain again; it was remounted, so the walk is stale.
                ctx.cursor.only_hits = true;
                ctx.cursor.baseline = None;
            }
        }
        if let Some(l) = &layer {
            ctx.record.new_layers.push(l.clone());
        }
        ctx.record.history.push(history);
        Ok(FileOutcome {
            layer,
            cached: false,
        })
    }

    /// Writes a COPY-style plan into `dest` (the root, or a scratch copy).
    fn apply_plan(
        &self,
        plan: &copy::CopyPlan,
        dest: &Path,
        line: usize,
    ) -> Result<(), ExecutorError> {
        let options = copy::ApplyOptions {
            set_owner: self.options.set_owner,
        };
        copy::apply(plan, dest, options).map_err(|source| ExecutorError::Copy { line, source })
    }

    fn entry_usable(&self, entry: &CacheEntry) -> Result<bool, ExecutorError> {
        match &entry.layer {
            None => Ok(entry.empty_layer),
            Some(l) => Ok(self.store.exists(&l.digest)?),
        }
    }
}

/// Drops entries at or below excluded paths from a snapshot.
fn without(mut s: Snapshot, options: &SnapshotOptions) -> Snapshot {
    s.entries
        .retain(|e| !options.exclude.iter().any(|x| e.path.starts_with(x)));
    s
}

/// The values of the build ARGs an instruction read, for its key.
fn arg_values<'s>(
    state: &'s ImageState,
    used: &'s BTreeSet<String>,
) -> impl Iterator<Item = (&'s str, &'s str)> + 's {
    used.iter().map(move |name| {
        let value = state
            .build_env
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str());
        (name.as_str(), value)
    })
}
