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
    Add, CommandLine, Copy as CopyInstr, Instruction, Located, MountType, NetworkMode, Run,
    Sharing, Transfer,
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

/// Why a stage failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// A RUN exited non-zero.
    #[error("line {line}: `{instruction}` exited with code {exit_code}")]
    RunFailed {
        /// The instruction as written.
        instruction: String,
        /// Its first line in the Dockerfile.
        line: usize,
        /// The process's exit code.
        exit_code: i32,
        /// The last lines of its output.
        tail: Vec<String>,
    },
    /// Expanding or applying an instruction failed.
    #[error("line {line}: {source}")]
    State {
        /// The line.
        line: usize,
        /// The cause.
        source: StateError,
    },
    /// COPY/ADD could not be planned or written.
    #[error("line {line}: {source}")]
    Copy {
        /// The line.
        line: usize,
        /// The cause.
        source: CopyError,
    },
    /// An `ADD <url>` source could not be fetched, or was not what `--checksum` says.
    #[error("line {line}: {source}")]
    Fetch {
        /// The line.
        line: usize,
        /// The cause.
        source: FetchError,
    },
    /// A user or group could not be resolved.
    #[error("line {line}: {source}")]
    User {
        /// The line.
        line: usize,
        /// The cause.
        source: UserError,
    },
    /// A feature this executor does not support yet.
    #[error("line {line}: {what} is not supported yet")]
    Unsupported {
        /// The line.
        line: usize,
        /// What.
        what: String,
    },
    /// An instruction names something the caller did not provide (a stage, a secret).
    #[error("line {line}: {message}")]
    Missing {
        /// The line.
        line: usize,
        /// What is missing.
        message: String,
    },
    /// A `RUN --mount` target is not mounted, and the runner cannot mount it (a builder
    /// pod whose spec does not provide the mount).
    #[error(
        "line {line}: the {kind} mount at {target} is not mounted in this container; a builder pod must provide it as a volume (the executor cannot mount here)"
    )]
    MountMissing {
        /// The line.
        line: usize,
        /// The mount type (`cache`, `secret`, `bind`, `tmpfs`).
        kind: &'static str,
        /// The target inside the root.
        target: String,
    },
    /// The runner could not run the process.
    #[error("line {line}: {source}")]
    Runner {
        /// The line.
        line: usize,
        /// The cause.
        source: RunnerError,
    },
    /// Walking the root failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Writing a layer failed.
    #[error(transparent)]
    Layer(#[from] LayerWriteError),
    /// Applying a cached layer failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Stacking a cached layer onto the root failed.
    #[error("stacking cached layer {layer} onto the root: {source}")]
    Stack {
        /// The layer.
        layer: stagecoach_oci::Digest,
        /// The stacker's error.
        source: StackError,
    },
    /// The content store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hashing an input for a cache key failed.
    #[error(transparent)]
    CacheKey(#[from] CacheKeyError),
    /// A source directory could not be opened.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// A path could not be resolved in a root.
    #[error(transparent)]
    RootPath(#[from] RootPathError),
    /// The image config could not be encoded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Other file-system work failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

impl ExecutorError {
    /// A stable reason for status, events and metrics.
    pub fn reason(&self) -> StageReason {
        match self {
            ExecutorError::RunFailed { .. } => StageReason::RunFailed,
            ExecutorError::State { .. } => StageReason::InvalidInstruction,
            ExecutorError::Copy { .. } => StageReason::CopyFailed,
            ExecutorError::Fetch { source, .. } => source.reason(),
            ExecutorError::User { .. } => StageReason::UnknownUser,
            ExecutorError::Unsupported { .. } => StageReason::Unsupported,
            ExecutorError::Missing { .. } => StageReason::MissingInput,
            ExecutorError::MountMissing { .. } => StageReason::MountMissing,
            ExecutorError::Runner { .. } => StageReason::RunnerFailed,
            ExecutorError::Snapshot(_) => StageReason::SnapshotFailed,
            ExecutorError::Layer(_) => StageReason::LayerWriteFailed,
            ExecutorError::Apply(_) | ExecutorError::Stack { .. } => StageReason::LayerApplyFailed,
            ExecutorError::Store(_) => StageReason::StoreFailed,
            ExecutorError::CacheKey(_) | ExecutorError::Context(_) => StageReason::SourceReadFailed,
            ExecutorError::RootPath(_) => StageReason::PathResolveFailed,
            ExecutorError::Config(_) => StageReason::ConfigFailed,
            ExecutorError::Io { .. } => StageReason::IoFailed,
        }
    }

    /// The exit code this failure maps to: the reason's, except for downloads, where what
    /// the server answered decides whether a retry can help.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            ExecutorError::Fetch { source, .. } if source.is_bad_input() => ExitCode::BadInput,
            ExecutorError::Fetch { source, .. } if source.is_user_error() => {
                ExitCode::InstructionFailed
            }
            other => other
                .reason()
                .exit_code()
                .unwrap_or(ExitCode::Infrastructure),
        }
    }
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ExecutorError + 'a {
    move |source| ExecutorError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// What `keys/<key>` holds: the result of one instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    /// The layer, absent when the step changed no file.
    pub layer: Option<LayerRecord>,
    /// The history entry (its `emptyLayer` agrees with `layer`).
    pub history: HistoryEntry,
    /// True when there is no layer.
    pub empty_layer: bool,
}

/// The key store: `keys/<key>` files under the cache root.
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    /// Opens (creating) `<root>/keys`.
    pub fn open(root: &Path) -> Result<Self, ExecutorError> {
        let dir = CacheLayout::new(root).keys();
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        Ok(Self { dir })
    }

    /// The entry for `key`, if any. An unreadable or malformed entry reads as a miss: it is
    /// a cache, and the step is simply run again (and the entry rewritten).
    pub fn get(&self, key: &str) -> Option<CacheEntry> {
        let bytes = fs::read(self.dir.join(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes the entry for `key` atomically and durably, so readers see the old entry, the
    /// new one, or none, never half of one.
    pub fn put(&self, key: &str, entry: &CacheEntry) -> Result<(), ExecutorError> {
        let bytes = serde_json::to_vec(entry).map_err(|e| ExecutorError::Io {
            action: "encode cache entry",
            path: self.dir.join(key),
            source: io::Error::other(e),
        })?;
        let path = self.dir.join(key);
        stagecoach_oci::atomic::write_file(&path, &bytes, 0o644)
            .map_err(io_err("write cache entry", &path))?;
        Ok(())
    }
}

static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A progress event. The CLI prints them; the pod writes them to its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent<'a> {
    /// A step starts.
    StepStarted {
        /// The stage's label (name or index).
        stage: &'a str,
        /// 1-based step number.
        step: usize,
        /// Number of steps.
        total: usize,
        /// The instruction as written.
        instruction: &'a str,
        /// Its line.
        line: usize,
    },
    /// The step's result came from the cache.
    CacheHit {
        /// The step.
        step: usize,
    },
    /// One line of a RUN's output.
    Output {
        /// The step.
        step: usize,
        /// The line (without newline).
        line: &'a str,
    },
    /// The step finished.
    StepDone {
        /// The step.
        step: usize,
        /// How long it took.
        duration: Duration,
        /// Whether it was a cache hit.
        cached: bool,
    },
}

impl std::fmt::Display for ProgressEvent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProgressEvent::StepStarted {
                stage,
                step,
                total,
                instruction,
                line,
            } => write!(
                f,
                "[{stage} {step}/{total}] {} (line {line})",
                instruction.trim()
            ),
            ProgressEvent::CacheHit { step } => write!(f, "#{step} CACHED"),
            ProgressEvent::Output { step, line } => write!(f, "#{step} {line}"),
            ProgressEvent::StepDone {
                step,
                duration,
                cached,
            } => write!(
                f,
                "#{step} DONE {:.1}s{}",
                duration.as_secs_f64(),
                if *cached { " (cached)" } else { "" }
            ),
        }
    }
}

/// Receives progress events.
pub trait Progress {
    /// Called for each event, in order.
    fn on_event(&mut self, event: &ProgressEvent<'_>);
}

impl<F: FnMut(&ProgressEvent<'_>)> Progress for F {
    fn on_event(&mut self, event: &ProgressEvent<'_>) {
        self(event)
    }
}

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
/// machine). Asked only while every step so far was a hit, so the root is exactly the base
/// plus the hit layers; `Ok(false)` means "extract it as usual".
pub trait HitStacker: Send + Sync {
    /// Makes `layer` the root's top layer.
    fn stack(&self, layer: &LayerRecord) -> Result<bool, StackError>;
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
    /// Every file step so far was a cache hit (the root is the base plus hit layers).
    only_hits: bool,
    /// The walk of the root as it is now; `None` after something changed it without a walk.
    baseline: Option<Snapshot>,
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
            let result = self.step(&lex, stage, &step, &mut cursor, record, progress);
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
        step: &Step<'_>,
        cursor: &mut Cursor,
        record: &mut Record,
        progress: &mut dyn Progress,
    ) -> Result<FileOutcome, ExecutorError> {
        let line = step.line;
        let state_err = |source| ExecutorError::State { line, source };
        match step.instruction {
            Instruction::Run(run) => self.step_run(stage, step, run, cursor, record, progress),
            Instruction::Copy(CopyInstr { transfer, from }) => self.step_copy(
                lex,
                step,
                transfer,
                from.as_deref(),
                None,
                cursor,
                record,
                progress,
            ),
            Instruction::Add(add) => {
                if add.keep_git_dir {
                    return Err(ExecutorError::Unsupported {
                        line,
                        what: "ADD --keep-git-dir (ADD from a git repository)".into(),
                    });
                }
                self.step_copy(
                    lex,
                    step,
                    &add.transfer,
                    None,
                    Some(add),
                    cursor,
                    record,
                    progress,
                )
            }
            Instruction::Workdir(_) => {
                let applied = cursor
                    .state
                    .apply(lex, step.instruction, &stage.args)
                    .map_err(state_err)?;
                let mut history = applied.history.unwrap_or_else(|| HistoryEntry {
                    created_by: step.original.to_string(),
                    empty_layer: true,
                    comment: String::new(),
                });
                let used = arg_values(&cursor.state, &applied.used_args);
                if history.empty_layer {
                    let key = CacheKey::new(&cursor.parent_key, &history.created_by).args(used);
                    cursor.parent_key = key.digest();
                    record.history.push(history);
                    return Ok(FileOutcome {
                        layer: None,
                        cached: false,
                    });
                }
                let owner = if cursor.state.user.is_empty() {
                    Owner::default()
                } else {
                    // BuildKit creates WORKDIR as the current USER.
                    let user = cursor.state.user.clone();
                    users::resolve_chown(&self.rootfs, &user)
                        .map_err(|source| ExecutorError::User { line, source })?
                };
                let key = CacheKey::new(
                    &cursor.parent_key,
                    &format!("{}\nowner={}:{}", history.created_by, owner.uid, owner.gid),
                )
                .args(used)
                .digest();
                let dir = cursor.state.working_dir.clone();
                history.empty_layer = false;
                self.file_step(
                    key,
                    history,
                    cursor,
                    record,
                    progress,
                    step,
                    &[],
                    |ex, _| {
                        let plan = copy::workdir_plan(&dir, owner);
                        copy::apply(
                            &plan,
                            &ex.rootfs,
                            copy::ApplyOptions {
                                set_owner: ex.options.set_owner,
                            },
                        )
                        .map_err(|source| ExecutorError::Copy { line, source })
                    },
                )
            }
            other => {
                let applied = cursor
                    .state
                    .apply(lex, other, &stage.args)
                    .map_err(state_err)?;
                let text = applied
                    .history
                    .as_ref()
                    .map_or(step.original, |h| h.created_by.as_str())
                    .to_string();
                let used = arg_values(&cursor.state, &applied.used_args);
                cursor.parent_key = CacheKey::new(&cursor.parent_key, &text).args(used).digest();
                if let Some(h) = applied.history {
                    record.history.push(h);
                }
                Ok(FileOutcome {
                    layer: None,
                    cached: false,
                })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn step_copy(
        &self,
        lex: &ShellLex,
        step: &Step<'_>,
        transfer: &Transfer,
        from: Option<&str>,
        add: Option<&Add>,
        cursor: &mut Cursor,
        record: &mut Record,
        progress: &mut dyn Progress,
    ) -> Result<FileOutcome, ExecutorError> {
        let line = step.line;
        let keyword = if add.is_some() { "ADD" } else { "COPY" };
        let expanded = cursor
            .state
            .expand_transfer(lex, keyword, transfer)
            .map_err(|source| ExecutorError::State { line, source })?;
        let owner = match &expanded.chown {
            Some(spec) => Some(
                users::resolve_chown(&self.rootfs, spec)
                    .map_err(|source| ExecutorError::User { line, source })?,
            ),
            None => None,
        };
        let chmod = match &expanded.chmod {
            Some(c) => {
                Some(copy::parse_chmod(c).map_err(|source| ExecutorError::Copy { line, source })?)
            }
            None => None,
        };
        let env = cursor.state.expansion_env();
        let heredocs = transfer
            .heredocs
            .iter()
            .map(|h| HeredocSource {
                name: h.name.clone(),
                content: if h.expand {
                    expand_heredoc(&h.body(), &env)
                } else {
                    h.body()
                },
            })
            .collect();
        // URL sources are downloaded now, before the key, which must cover their content.
        // The staging directory lives until the step has run (or failed).
        let (downloads, _staging) = match add {
            Some(add) => self.fetch_sources(lex, add, &expanded.sources, cursor, line)?,
            None => (Vec::new(), None),
        };
        let spec = CopySpec {
            is_add: add.is_some(),
            sources: expanded.sources.clone(),
            heredocs,
            dest: expanded.dest.clone(),
            workdir: cursor.state.working_dir.clone(),
            owner,
            chmod,
            excludes: expanded.excludes.clone(),
            parents: transfer.parents,
            unpack: add.and_then(|a| a.unpack),
            downloads,
        };
        let stage_ctx;
        let context = match from {
            None => self.context,
            Some(name) => {
                let source = self.stage_source(name, line)?;
                stage_ctx = BuildContext::with_patterns(&source.root, &[] as &[&str])?;
                &stage_ctx
            }
        };
        let plan = copy::plan(context, &spec, &self.rootfs)
            .map_err(|source| ExecutorError::Copy { line, source })?;
        let history = ImageState::transfer_history(keyword, transfer, &expanded);
        let key = CacheKey::new(&cursor.parent_key, &history.created_by)
            .input("copy", &cache_key::digest_copy_plan(&plan)?)
            .args(arg_values(&cursor.state, &expanded.used_args))
            .digest();
        self.file_step(
            key,
            history,
            cursor,
            record,
            progress,
            step,
            &[],
            |ex, _| {
                copy::apply(
                    &plan,
                    &ex.rootfs,
                    copy::ApplyOptions {
                        set_owner: ex.options.set_owner,
                    },
                )
                .map_err(|source| ExecutorError::Copy { line, source })
            },
        )
    }

    /// Downloads an ADD's HTTP(S) sources into a fresh staging directory under the cache
    /// root's `tmp/` (removed when the returned guard drops), checking `--checksum`
    /// (expanded like the sources). Git sources are refused here with a clear message.
    fn fetch_sources(
        &self,
        lex: &ShellLex,
        add: &Add,
        sources: &[String],
        cursor: &Cursor,
        line: usize,
    ) -> Result<(Vec<remote::Download>, Option<tempfile::TempDir>), ExecutorError> {
        let fetch_err = |source| ExecutorError::Fetch { line, source };
        let checksum = match &add.checksum {
            Some(c) => {
                let value = lex
                    .process_word(c, &cursor.state.build_env)
                    .map_err(|e| ExecutorError::State {
                        line,
                        source: StateError::Expansion {
                            instruction: "ADD",
                            message: e.to_string(),
                        },
                    })?
                    .value;
                Some(remote::parse_checksum(&value).map_err(fetch_err)?)
            }
            None => None,
        };
        let mut downloads = Vec::new();
        let mut staging: Option<tempfile::TempDir> = None;
        for source in sources {
            if remote::is_git_url(source) {
                return Err(fetch_err(FetchError::Git {
                    url: source.clone(),
                }));
            }
            if !remote::is_http_url(source) {
                if checksum.is_some() && !add.transfer.heredocs.iter().any(|h| &h.name == source) {
                    return Err(fetch_err(FetchError::ChecksumNeedsUrl {
                        source_path: source.clone(),
                    }));
                }
                continue;
            }
            if downloads
                .iter()
                .any(|d: &remote::Download| &d.url == source)
            {
                continue;
            }
            let dir = match &staging {
                Some(d) => d.path().to_owned(),
                None => {
                    let tmp = self.layout.tmp();
                    fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
                    let d = tempfile::Builder::new()
                        .prefix("add-")
                        .tempdir_in(&tmp)
                        .map_err(io_err("create a staging directory in", &tmp))?;
                    let path = d.path().to_owned();
                    staging = Some(d);
                    path
                }
            };
            let path = dir.join(format!("download-{}", downloads.len()));
            downloads.push(remote::fetch(source, &path, checksum.as_deref()).map_err(fetch_err)?);
        }
        Ok((downloads, staging))
    }

    fn stage_source(&self, name: &str, line: usize) -> Result<&StageSource, ExecutorError> {
        let lower = name.to_ascii_lowercase();
        let by_name = self
            .stages
            .values()
            .find(|s| s.name.as_deref() == Some(lower.as_str()));
        let by_index = name.parse::<usize>().ok().and_then(|i| self.stages.get(&i));
        by_name.or(by_index).ok_or_else(|| ExecutorError::Missing {
            line,
            message: format!(
                "`{name}` is neither a stage given to this executor nor supported as an image"
            ),
        })
    }

    fn step_run(
        &self,
        stage: &StageSpec<'_>,
        step: &Step<'_>,
        run: &Run,
        cursor: &mut Cursor,
        record: &mut Record,
        progress: &mut dyn Progress,
    ) -> Result<FileOutcome, ExecutorError> {
        let line = step.line;
        let state = &cursor.state;
        let history = state.run_history(run, &stage.args);
        let mut env = state.run_env(&stage.args);
        let script = shebang_script(run);
        let argv = match &script {
            Some((path, _)) => vec![path.clone()],
            None => run_argv(state, run),
        };
        let cwd = if state.working_dir.is_empty() {
            "/".to_string()
        } else {
            state.working_dir.clone()
        };
        let user_spec = if state.user.is_empty() {
            "0"
        } else {
            state.user.as_str()
        };
        let user = users::resolve_process_user(&self.rootfs, user_spec)
            .map_err(|source| ExecutorError::User { line, source })?;
        let network = match run.network {
            Some(NetworkMode::None) => RunNetwork::None,
            _ => RunNetwork::Host,
        };
        // The key covers the history text (argv and every ARG in scope), the instruction as
        // written (mount flags, network) and the content of bind-mounted sources.
        let mut key = CacheKey::new(
            &cursor.parent_key,
            &format!("{}\n{}", history.created_by, step.original),
        );
        let mut prepared = Vec::new();
        for m in &run.mounts {
            let p = self.prepare_mount(m, &cwd, line, &mut env)?;
            if let Some(input) = &p.key_input {
                key = key.input(&input.0, &input.1);
            }
            prepared.push(p);
        }
        let key = key.digest();
        let excluded: Vec<PathBuf> = prepared
            .iter()
            .filter_map(|p| {
                p.target
                    .as_ref()
                    .map(|t| PathBuf::from(t.trim_start_matches('/')))
            })
            .collect();
        let request_base = RunRequest {
            rootfs: self.rootfs.clone(),
            argv,
            env,
            cwd: PathBuf::from(&cwd),
            user,
            mounts: prepared.iter().filter_map(|p| p.mount.clone()).collect(),
            network,
            hostname: "stagecoach".to_string(),
            timeout: self.options.run_timeout,
            tail_lines: self.options.tail_lines,
        };
        let number = step.number;
        let original = step.original.to_string();
        let mut failed = None;
        let result = self.file_step(
            key,
            history,
            cursor,
            record,
            progress,
            step,
            &excluded,
            |ex, progress| {
                let cwd_path = rootpath::resolve(&ex.rootfs, &cwd, true)?.path;
                fs::create_dir_all(&cwd_path).map_err(io_err("create", &cwd_path))?;
                let mut request = request_base.clone();
                let in_place = !ex.runner.can_mount();
                let mut _placed = None;
                let mut _scratch = if in_place {
                    check_premounted(&ex.rootfs, &prepared, line)?;
                    ScratchDirs(Vec::new())
                } else {
                    ex.materialize_rw_copies(&prepared, &mut request.mounts, line)?
                };
                if let Some((path, body)) = &script {
                    if in_place {
                        _placed = Some(PlacedScript::write(&ex.rootfs, path, body)?);
                    } else {
                        let file = ex.write_script(body, &mut _scratch)?;
                        request.mounts.push(RunMount::Bind {
                            source: file,
                            target: PathBuf::from(path),
                            readonly: true,
                        });
                    }
                }
                let stubs = Stubs::create(&ex.rootfs, &prepared)?;
                let mut _locks = Vec::new();
                for p in &prepared {
                    if let Some(lock) = &p.lock {
                        _locks.push(lock_file(lock)?);
                    }
                }
                let outcome = ex
                    .runner
                    .run(&request, &mut |l: &str| {
                        progress.on_event(&ProgressEvent::Output {
                            step: number,
                            line: l,
                        });
                    })
                    .map_err(|source| ExecutorError::Runner { line, source });
                let cleanup = stubs.remove();
                let outcome = outcome?;
                cleanup?;
                if outcome.exit_code != 0 {
                    failed = Some(FailedStep {
                        instruction: original.clone(),
                        line,
                        exit_code: Some(outcome.exit_code),
                        tail: outcome.tail.clone(),
                    });
                    return Err(ExecutorError::RunFailed {
                        instruction: original.clone(),
                        line,
                        exit_code: outcome.exit_code,
                        tail: outcome.tail,
                    });
                }
                Ok(())
            },
        );
        if let Some(f) = failed {
            record.failed = Some(f);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn file_step(
        &self,
        key: String,
        mut history: HistoryEntry,
        cursor: &mut Cursor,
        record: &mut Record,
        progress: &mut dyn Progress,
        step: &Step<'_>,
        excluded: &[PathBuf],
        execute: impl FnOnce(&Self, &mut dyn Progress) -> Result<(), ExecutorError>,
    ) -> Result<FileOutcome, ExecutorError> {
        cursor.parent_key = key.clone();
        if !self.options.no_cache
            && let Some(entry) = self.keys.get(&key)
            && self.entry_usable(&entry)?
        {
            if let Some(layer) = &entry.layer {
                let stacked = match self.stacker {
                    Some(stacker) if cursor.only_hits => {
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
                cursor.baseline = None;
                record.new_layers.push(layer.clone());
            }
            record.history.push(entry.history.clone());
            progress.on_event(&ProgressEvent::CacheHit { step: step.number });
            return Ok(FileOutcome {
                layer: entry.layer,
                cached: true,
            });
        }
        cursor.only_hits = false;
        let mut options = SnapshotOptions::for_root(&self.rootfs, &self.options.own_dirs)?;
        for e in excluded {
            options.exclude(e);
        }
        let before = match cursor.baseline.take() {
            Some(s) if excluded.is_empty() => s,
            Some(s) => without(s, &options),
            None => Snapshot::take(&self.rootfs, &options)?,
        };
        execute(self, progress)?;
        let after = Snapshot::take(&self.rootfs, &options)?;
        let changes = snapshot::diff(&before, &after);
        // A walk with extra exclusions is no baseline for the next step, which sees them.
        cursor.baseline = excluded.is_empty().then_some(after);
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
        if let Some(l) = &layer {
            record.new_layers.push(l.clone());
        }
        record.history.push(history);
        Ok(FileOutcome {
            layer,
            cached: false,
        })
    }

    fn entry_usable(&self, entry: &CacheEntry) -> Result<bool, ExecutorError> {
        match &entry.layer {
            None => Ok(entry.empty_layer),
            Some(l) => Ok(self.store.exists(&l.digest)?),
        }
    }

    fn prepare_mount(
        &self,
        m: &stagecoach_dockerfile::instructions::Mount,
        cwd: &str,
        line: usize,
        env: &mut Vec<(String, String)>,
    ) -> Result<PreparedMount, ExecutorError> {
        let absolute = |t: &str| -> String {
            if t.starts_with('/') {
                crate::pattern::clean(t)
            } else {
                crate::pattern::clean(&format!("{cwd}/{t}"))
            }
        };
        let target = m.target.as_deref().map(absolute);
        let unsupported = |what: &str| ExecutorError::Unsupported {
            line,
            what: what.to_string(),
        };
        match m.kind {
            MountType::Cache => {
                let target = target.ok_or_else(|| unsupported("a cache mount without target"))?;
                let id = m.id.clone().unwrap_or_else(|| target.clone());
                let mounts = self.layout.mounts();
                let dir = self.layout.mount(&id);
                if fs::symlink_metadata(&dir).is_err() {
                    fs::create_dir_all(&mounts).map_err(io_err("create", &mounts))?;
                    let mut b = fs::DirBuilder::new();
                    b.mode(m.mode.unwrap_or(0o755));
                    match b.create(&dir) {
                        Ok(()) => {
                            if self.options.set_owner {
                                rustix::fs::chown(
                                    &dir,
                                    Some(rustix::fs::Uid::from_raw(m.uid.unwrap_or(0))),
                                    Some(rustix::fs::Gid::from_raw(m.gid.unwrap_or(0))),
                                )
                                .map_err(|e| io_err("chown", &dir)(e.into()))?;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(io_err("create", &dir)(e)),
                    }
                }
                // `locked` and `private` both serialise writers here: private copies are
                // not implemented, and a lock gives the same isolation at the cost of waiting.
                let lock = matches!(m.sharing, Some(Sharing::Locked | Sharing::Private))
                    .then(|| self.layout.mount_lock(&id));
                Ok(PreparedMount {
                    kind: "cache",
                    mount: Some(RunMount::Bind {
                        source: dir,
                        target: PathBuf::from(&target),
                        readonly: m.readonly.unwrap_or(false),
                    }),
                    target: Some(target),
                    stub: StubKind::Dir,
                    key_input: None,
                    lock,
                    rw_copy: None,
                })
            }
            MountType::Bind => {
                let target = target.ok_or_else(|| unsupported("a bind mount without target"))?;
                let readonly = m.readonly.unwrap_or(true);
                let source = m.source.clone().unwrap_or_else(|| "/".to_string());
                let (root, input_name) = match &m.from {
                    None => (self.context.root().to_owned(), format!("mount:{target}")),
                    Some(from) => (
                        self.stage_source(from, line)?.root.clone(),
                        format!("mount:{target}"),
                    ),
                };
                let resolved = rootpath::resolve(&root, &source, true)?;
                let meta =
                    fs::metadata(&resolved.path).map_err(io_err("inspect", &resolved.path))?;
                let ctx = BuildContext::with_patterns(&root, &[] as &[&str])?;
                let digest = cache_key::digest_source(&ctx, &source)?;
                Ok(PreparedMount {
                    kind: "bind",
                    mount: Some(RunMount::Bind {
                        source: resolved.path,
                        target: PathBuf::from(&target),
                        readonly,
                    }),
                    target: Some(target),
                    stub: if meta.is_dir() {
                        StubKind::Dir
                    } else {
                        StubKind::File
                    },
                    key_input: Some((input_name, digest)),
                    lock: None,
                    // Writes to a read-write bind mount are thrown away (BuildKit's rule), so
                    // the process gets a copy, made only when the step really runs.
                    rw_copy: (!readonly).then(|| RwCopy {
                        root,
                        source,
                        is_dir: meta.is_dir(),
                    }),
                })
            }
            MountType::Tmpfs => {
                let target = target.ok_or_else(|| unsupported("a tmpfs mount without target"))?;
                Ok(PreparedMount {
                    kind: "tmpfs",
                    mount: Some(RunMount::Tmpfs {
                        target: PathBuf::from(&target),
                        size_bytes: m.size.as_deref().and_then(parse_size),
                    }),
                    target: Some(target),
                    stub: StubKind::Dir,
                    key_input: None,
                    lock: None,
                    rw_copy: None,
                })
            }
            MountType::Secret => {
                let id = match (&m.id, &target) {
                    (Some(id), _) => id.clone(),
                    (None, Some(t)) => t.rsplit('/').next().unwrap_or_default().to_string(),
                    (None, None) => return Err(unsupported("a secret mount without id or target")),
                };
                let Some(path) = self.secrets.get(&id) else {
                    if m.required.unwrap_or(false) {
                        return Err(ExecutorError::Missing {
                            line,
                            message: format!("secret `{id}` is required but was not provided"),
                        });
                    }
                    return Ok(PreparedMount::none());
                };
                if let Some(var) = &m.env {
                    let value = fs::read_to_string(path).map_err(io_err("read secret", path))?;
                    env.push((var.clone(), value));
                    if m.target.is_none() {
                        return Ok(PreparedMount::none());
                    }
                }
                let target = target.unwrap_or_else(|| format!("/run/secrets/{id}"));
                Ok(PreparedMount {
                    kind: "secret",
                    mount: Some(RunMount::Bind {
                        source: path.clone(),
                        target: PathBuf::from(&target),
                        readonly: true,
                    }),
                    target: Some(target),
                    stub: StubKind::Secret,
                    key_input: None,
                    lock: None,
                    rw_copy: None,
                })
            }
            MountType::Ssh => Err(unsupported("RUN --mount=type=ssh")),
        }
    }
}

/// The mount-point stub a RUN mount needs in the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StubKind {
    Dir,
    File,
    /// A file whose content is never trusted: removed after the run whatever is in it.
    Secret,
}

struct PreparedMount {
    /// The mount type as `--mount=type=` names it, for messages.
    kind: &'static str,
    mount: Option<RunMount>,
    target: Option<String>,
    stub: StubKind,
    key_input: Option<(String, String)>,
    lock: Option<PathBuf>,
    rw_copy: Option<RwCopy>,
}

/// What a read-write bind mount copies before the run.
struct RwCopy {
    root: PathBuf,
    source: String,
    is_dir: bool,
}

/// Throw-away copies for read-write bind mounts, removed when dropped (also on errors).
struct ScratchDirs(Vec<PathBuf>);

impl Drop for ScratchDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            // Best effort: a leftover under `tmp/` of the cache root is garbage, not state.
            let _ = fs::remove_dir_all(d);
        }
    }
}

impl StageExecutor<'_> {
    /// Writes a `#!` heredoc script, executable, into a throw-away directory outside the root
    /// (removed with `scratch`), for binding at `/dev/pipes/<name>`.
    fn write_script(
        &self,
        body: &str,
        scratch: &mut ScratchDirs,
    ) -> Result<PathBuf, ExecutorError> {
        let tmp = self.layout.tmp();
        fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        let dir = tmp.join(format!(
            "script-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        fs::create_dir(&dir).map_err(io_err("create", &dir))?;
        scratch.0.push(dir.clone());
        let file = dir.join("script");
        fs::write(&file, body).map_err(io_err("write", &file))?;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", &file))?;
        Ok(file)
    }

    /// Makes the copies read-write bind mounts need and points their mounts at them.
    fn materialize_rw_copies(
        &self,
        prepared: &[PreparedMount],
        mounts: &mut [RunMount],
        line: usize,
    ) -> Result<ScratchDirs, ExecutorError> {
        let mut scratch = ScratchDirs(Vec::new());
        let mut index = 0;
        for p in prepared {
            if p.mount.is_none() {
                continue;
            }
            let slot = index;
            index += 1;
            let Some(rw) = &p.rw_copy else { continue };
            let tmp = self.layout.tmp();
            fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
            let dir = tmp.join(format!(
                "bind-{}-{}",
                std::process::id(),
                TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            fs::create_dir(&dir).map_err(io_err("create", &dir))?;
            scratch.0.push(dir.clone());
            let ctx = if rw.root == self.context.root() {
                self.context.clone()
            } else {
                BuildContext::with_patterns(&rw.root, &[] as &[&str])?
            };
            let dest = if rw.is_dir { "/" } else { "/file" };
            let spec = CopySpec {
                sources: vec![rw.source.clone()],
                dest: dest.to_string(),
                ..CopySpec::default()
            };
            let plan = copy::plan(&ctx, &spec, &dir)
                .map_err(|source| ExecutorError::Copy { line, source })?;
            copy::apply(
                &plan,
                &dir,
                copy::ApplyOptions {
                    set_owner: self.options.set_owner,
                },
            )
            .map_err(|source| ExecutorError::Copy { line, source })?;
            if let Some(RunMount::Bind { source, .. }) = mounts.get_mut(slot) {
                *source = if rw.is_dir { dir } else { dir.join("file") };
            }
        }
        Ok(scratch)
    }
}

impl PreparedMount {
    fn none() -> Self {
        Self {
            kind: "",
            mount: None,
            target: None,
            stub: StubKind::Dir,
            key_input: None,
            lock: None,
            rw_copy: None,
        }
    }
}

/// Mount stubs the executor created for one RUN, removed afterwards (deepest first) so a
/// mount leaves no trace in the root, as BuildKit removes its mount stubs.
struct Stubs {
    created: Vec<(PathBuf, StubKind)>,
    /// Existing directories stubs were made in: their times before, and their mtime right
    /// after the stubs were made (to tell whether the process changed them itself).
    parents: Vec<(PathBuf, fs::Metadata, std::time::SystemTime)>,
}

impl Stubs {
    fn create(rootfs: &Path, mounts: &[PreparedMount]) -> Result<Stubs, ExecutorError> {
        let mut created = Vec::new();
        let mut parents = Vec::new();
        for p in mounts {
            let Some(target) = &p.target else { continue };
            if p.mount.is_none() {
                continue;
            }
            let resolved = rootpath::resolve(rootfs, target, true)?;
            // Record every missing ancestor so the cleanup removes what the stub added.
            let mut missing = Vec::new();
            let mut cur = resolved.path.clone();
            while cur.starts_with(rootfs) && cur != rootfs && fs::symlink_metadata(&cur).is_err() {
                missing.push(cur.clone());
                if !cur.pop() {
                    break;
                }
            }
            let parent = missing
                .last()
                .and_then(|p| p.parent())
                .map(Path::to_path_buf);
            let parent_meta = match &parent {
                Some(p) => Some(fs::metadata(p).map_err(io_err("inspect", p))?),
                None => None,
            };
            for (i, path) in missing.iter().enumerate().rev() {
                let is_leaf = i == 0;
                if is_leaf && p.stub != StubKind::Dir {
                    fs::File::create(path).map_err(io_err("create mount stub", path))?;
                    created.push((path.clone(), p.stub));
                } else {
                    fs::create_dir(path).map_err(io_err("create mount stub", path))?;
                    created.push((path.clone(), StubKind::Dir));
                }
            }
            if let (Some(p), Some(before)) = (parent, parent_meta) {
                let now = fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .map_err(io_err("inspect", &p))?;
                parents.push((p, before, now));
            }
        }
        Ok(Stubs { created, parents })
    }

    fn remove(self) -> Result<(), ExecutorError> {
        // Parents the process left alone get their times back after the stubs go, so a
        // mount does not make its parent directory look modified to the snapshot.
        let untouched: Vec<_> = self
            .parents
            .iter()
            .filter(|(p, _, after_create)| {
                fs::metadata(p)
                    .and_then(|m| m.modified())
                    .is_ok_and(|m| m == *after_create)
            })
            .collect();
        for (path, kind) in self.created.iter().rev() {
            let (path, kind) = (path.clone(), *kind);
            let result = match kind {
                // A directory the RUN also wrote into is kept: its contents are real output.
                StubKind::Dir => match fs::remove_dir(&path) {
                    Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(()),
                    other => other,
                },
                StubKind::File | StubKind::Secret => fs::remove_file(&path),
            };
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove mount stub", &path)(e)),
            }
        }
        for (p, before, _) in untouched.into_iter().rev() {
            let times = fs::FileTimes::new()
                .set_accessed(before.accessed().map_err(io_err("inspect", p))?)
                .set_modified(before.modified().map_err(io_err("inspect", p))?);
            fs::File::open(p)
                .and_then(|f| f.set_times(times))
                .map_err(io_err("restore times of", p))?;
        }
        Ok(())
    }
}

/// For a runner that cannot mount: every mount the step declares must already be a mount
/// point in this process's view (the pod spec provides it), or the step would write into
/// the image instead. A read-write bind is refused: without a private copy, its writes would
/// reach the shared source.
fn check_premounted(
    rootfs: &Path,
    prepared: &[PreparedMount],
    line: usize,
) -> Result<(), ExecutorError> {
    let mountinfo = fs::read("/proc/self/mountinfo")
        .map_err(io_err("read", Path::new("/proc/self/mountinfo")))?;
    let points: BTreeSet<PathBuf> = snapshot::mount_points(&mountinfo).into_iter().collect();
    for p in prepared {
        let (Some(_), Some(target)) = (&p.mount, &p.target) else {
            continue;
        };
        if p.rw_copy.is_some() {
            return Err(ExecutorError::Unsupported {
                line,
                what: "RUN --mount=type=bind,rw in a builder pod (its writes would reach the shared source)".into(),
            });
        }
        let resolved = rootpath::resolve(rootfs, target, true)?.path;
        if !points.contains(&resolved) {
            return Err(ExecutorError::MountMissing {
                line,
                kind: p.kind,
                target: target.clone(),
            });
        }
    }
    Ok(())
}

/// A `#!` heredoc script written where BuildKit binds it (`/dev/pipes/<name>`), for a runner
/// that cannot bind: `/dev` is the container's own tmpfs and never walked, so the file cannot
/// reach a layer. Removed when dropped, with `/dev/pipes` if this made it.
struct PlacedScript {
    file: PathBuf,
    made_dir: Option<PathBuf>,
}

impl PlacedScript {
    fn write(rootfs: &Path, target: &str, body: &str) -> Result<Self, ExecutorError> {
        let file = rootfs.join(target.trim_start_matches('/'));
        let dir = file
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| io_err("place script", &file)(io::ErrorKind::InvalidInput.into()))?;
        let made_dir = if dir.exists() {
            None
        } else {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
            Some(dir)
        };
        let placed = PlacedScript { file, made_dir };
        fs::write(&placed.file, body).map_err(io_err("write", &placed.file))?;
        fs::set_permissions(&placed.file, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", &placed.file))?;
        Ok(placed)
    }
}

impl Drop for PlacedScript {
    fn drop(&mut self) {
        // Best effort: the file lives on the container's /dev, which goes with the pod.
        let _ = fs::remove_file(&self.file);
        if let Some(d) = &self.made_dir {
            let _ = fs::remove_dir(d);
        }
    }
}

/// Holds an exclusive lock on a file until dropped.
fn lock_file(path: &Path) -> Result<fs::File, ExecutorError> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err("open lock", path))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err("lock", path)(e.into()))?;
    Ok(f)
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

/// The argv of a RUN, with heredocs: `RUN <<EOF` alone runs the body as the shell script;
/// otherwise the heredocs are appended to the shell command with their delimiters, as a shell
/// would read them from a script.
fn run_argv(state: &ImageState, run: &Run) -> Vec<String> {
    let CommandLine::Shell(cmd) = &run.command else {
        return state.run_argv(run);
    };
    if run.heredocs.is_empty() {
        return state.run_argv(run);
    }
    let mut argv = state.effective_shell();
    if let [only] = run.heredocs.as_slice()
        && is_bare_heredoc(cmd, only)
    {
        argv.push(only.body());
        return argv;
    }
    let mut script = cmd.clone();
    for h in &run.heredocs {
        script.push('\n');
        script.push_str(&h.content);
        script.push_str(&h.name);
    }
    argv.push(script);
    argv
}

/// A `RUN <<EOF` whose body starts with `#!`: BuildKit runs such a script as a file, so its
/// interpreter runs it, not the stage's shell. Returns the path it is bound at inside the
/// container (`/dev/pipes/<name>`, as BuildKit) and its body.
fn shebang_script(run: &Run) -> Option<(String, String)> {
    let CommandLine::Shell(cmd) = &run.command else {
        return None;
    };
    let [only] = run.heredocs.as_slice() else {
        return None;
    };
    let body = only.body();
    let safe_name = !only.name.is_empty()
        && only
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    (is_bare_heredoc(cmd, only) && body.starts_with("#!") && safe_name)
        .then(|| (format!("/dev/pipes/{}", only.name), body))
}

fn is_bare_heredoc(cmd: &str, h: &Heredoc) -> bool {
    let word = cmd.trim();
    let Some(rest) = word.strip_prefix("<<") else {
        return false;
    };
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    rest.trim_matches(|c| c == '"' || c == '\'') == h.name
}

/// `$NAME` and `${NAME}` in an unquoted heredoc body, with `\$` kept literal. Quotes are
/// left alone (a shell-word expansion would remove them), which is what a heredoc needs.
fn expand_heredoc(body: &str, env: &[(String, String)]) -> String {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
            .to_string()
    };
    let chars: Vec<char> = body.chars().collect();
    let mut out = String::with_capacity(body.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
        } else if c == '$' && chars.get(i + 1) == Some(&'{') {
            match chars[i + 2..].iter().position(|c| *c == '}') {
                Some(end) => {
                    let name: String = chars[i + 2..i + 2 + end].iter().collect();
                    out.push_str(&lookup(&name));
                    i += end + 3;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else if c == '$'
            && chars
                .get(i + 1)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == '_')
        {
            let mut j = i + 1;
            while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            let name: String = chars[i + 1..j].iter().collect();
            out.push_str(&lookup(&name));
            i = j;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// `1024`, `64k`, `10m`, `1g` (binary units, as BuildKit's tmpfs size).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s.as_str(), 1),
    };
    num.trim_end_matches('b')
        .parse::<u64>()
        .ok()?
        .checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heredoc_expansion_keeps_quotes() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(
            expand_heredoc("echo \"$A\" ${A} \\$A $1", &env),
            "echo \"x\" x $A $1"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64k"), Some(65536));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn exit_codes_are_stable() {
        assert_eq!(ExitCode::Ok.code(), 0);
        assert_eq!(ExitCode::InstructionFailed.code(), 1);
        assert_eq!(ExitCode::BadInput.code(), 2);
        assert_eq!(ExitCode::Infrastructure.code(), 3);
    }
}
