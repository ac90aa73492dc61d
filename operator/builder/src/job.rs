//! Running one [`StageJob`]: the single wiring between the stage protocol and the
//! [`StageExecutor`], shared by `stagecoach stage` (a builder pod: the root is `/`, RUN in
//! place) and `stagecoach build` (one machine: an overlay root, RUN under runc). Whatever
//! differs between the two is in the job (its root, its layers to apply) or in the runner,
//! never in this code, so a difference in their results is a bug a test can find.
//!
//! Order: read the Dockerfile and the stage the job names, open the context and the store,
//! resolve the base (an image's config from the job, a parent stage's from the store), apply
//! the job's layers onto the root, then run the executor. Applying in place over a
//! container's own root never touches its mount points, `/proc`, `/sys` or `/dev`.

use std::path::{Path, PathBuf};

use stagecoach_dockerfile::planner::{self, PlanOptions};
use stagecoach_dockerfile::{Dockerfile, InstructionError, PlanError};
use stagecoach_oci::layer::{ApplyError, apply_layer_blob};
use stagecoach_oci::store::StoreError;
use stagecoach_oci::{ApplyOptions, ContentStore, ImageConfig};
use stagecoach_protocol::job::{JobBase, StageJob};
use stagecoach_protocol::{Digest, ExitCode, LayerRecord, StageReason, StageResult};

use crate::context::{BuildContext, ContextError};
use crate::executor::{
    BaseImage, ExecutorError, ExecutorOptions, HitStacker, Progress, StageExecutor, StageOutcome,
    StageSource, StageSpec,
};
use crate::image_state::ArgSource;
use crate::runner::Runner;

/// Why a job could not get as far as its first instruction.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The job's Dockerfile does not parse (the controller parsed it before, so the job is
    /// not the one it made).
    #[error("the job's Dockerfile does not parse: {0}")]
    Dockerfile(#[source] InstructionError),
    /// The job names a stage the Dockerfile does not have.
    #[error("the job names stage {stage}, but the Dockerfile has {count} stages")]
    NoSuchStage {
        /// The index in the job.
        stage: usize,
        /// How many there are.
        count: usize,
    },
    /// The global ARGs cannot be evaluated with the job's build args.
    #[error("the job's build arguments do not fit its Dockerfile: {0}")]
    Args(#[source] PlanError),
    /// The base image's config in the job is not an image config.
    #[error("the job's base image config is not valid: {0}")]
    BaseConfig(#[source] serde_json::Error),
    /// The parent stage's config is not in the store or does not parse.
    #[error("cannot read the config {digest} of parent stage {stage}: {message}")]
    StageConfig {
        /// The parent stage.
        stage: usize,
        /// Its config's digest.
        digest: Digest,
        /// What went wrong.
        message: String,
    },
    /// The build context cannot be opened.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// The cache's content store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// One of the job's layers could not be applied onto the root.
    #[error("applying layer {layer} onto {}: {source}", root.display())]
    Apply {
        /// The layer.
        layer: Digest,
        /// The root.
        root: PathBuf,
        /// The cause.
        #[source]
        source: ApplyError,
    },
    /// The executor could not be set up.
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    /// An input stage's files, which an earlier build exported and this build reads in
    /// place of running that stage, are no longer on the cache volume.
    #[error(
        "stage {label}'s files, left by an earlier build with the same stage inputs, are gone from the cache volume ({}); that stage must run",
        path.display()
    )]
    InputGone {
        /// The input stage's name or index.
        label: String,
        /// The file that says they are complete.
        path: PathBuf,
    },
    /// The stage ran, but its root could not be exported for later stages.
    #[error("exporting the stage's root to {}: {message}", path.display())]
    Export {
        /// The export directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl JobError {
    /// The stable reason.
    pub fn reason(&self) -> StageReason {
        if let JobError::Executor(e) = self {
            return e.reason();
        }
        if crate::executor::no_space(self) {
            // The store and the export are on the cache volume; the rest is the root's.
            return match self {
                JobError::StageConfig { .. } | JobError::Store(_) | JobError::Export { .. } => {
                    StageReason::CacheFull
                }
                _ => StageReason::NoSpace,
            };
        }
        match self {
            JobError::Dockerfile(_)
            | JobError::NoSuchStage { .. }
            | JobError::Args(_)
            | JobError::BaseConfig(_) => StageReason::InvalidJob,
            JobError::StageConfig { .. } | JobError::Store(_) => StageReason::StoreFailed,
            JobError::Context(_) => StageReason::SourceReadFailed,
            JobError::Apply { .. } => StageReason::LayerApplyFailed,
            JobError::Export { .. } => StageReason::IoFailed,
            JobError::InputGone { .. } => StageReason::InputGone,
            JobError::Executor(e) => e.reason(),
        }
    }

    /// The exit code.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            JobError::Executor(e) => e.exit_code(),
            other => other
                .reason()
                .exit_code()
                .unwrap_or(ExitCode::Infrastructure),
        }
    }

    /// The result a stage run reports for this failure.
    pub fn to_result(&self) -> StageResult {
        StageResult::failed_early(self.reason(), self.exit_code().code(), self.to_string())
    }
}

/// What a runner adds to a job on this machine.
#[derive(Clone, Copy)]
pub struct JobEnv<'a> {
    /// Runs RUN steps.
    pub runner: &'a dyn Runner,
    /// Takes cache hits as overlay layers (local builds only).
    pub stacker: Option<&'a dyn HitStacker>,
}

impl std::fmt::Debug for JobEnv<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobEnv")
            .field("can_mount", &self.runner.can_mount())
            .field("stacker", &self.stacker.is_some())
            .finish()
    }
}

/// Runs the job's stage. `Err` only when the job could not reach its first instruction;
/// a failing instruction is an `Ok` outcome with its error inside, as the executor reports.
pub fn run_job(
    job: &StageJob,
    env: JobEnv<'_>,
    progress: &mut dyn Progress,
) -> Result<StageOutcome, JobError> {
    let dockerfile = Dockerfile::parse(&job.dockerfile).map_err(JobError::Dockerfile)?;
    let stage = dockerfile
        .stages
        .get(job.stage)
        .ok_or(JobError::NoSuchStage {
            stage: job.stage,
            count: dockerfile.stages.len(),
        })?;
    let plan_options = PlanOptions {
        build_args: job.build_args.clone(),
        ..PlanOptions::default()
    };
    let global = planner::global_env(&dockerfile, &plan_options).map_err(JobError::Args)?;
    let context = match &job.dockerfile_path {
        Some(path) => BuildContext::open_for(&job.context, &job.context.join(path))?,
        None => BuildContext::open(&job.context)?,
    };
    // Before anything is applied: an input another build left may be gone.
    for input in &job.stages {
        if let Some(ready) = &input.ready {
            if !ready.exists() {
                return Err(JobError::InputGone {
                    label: input
                        .name
                        .clone()
                        .unwrap_or_else(|| input.index.to_string()),
                    path: ready.clone(),
                });
            }
            // Its last use, for garbage collection.
            crate::gc::touch(ready);
        }
    }
    let store = ContentStore::open(&job.cache)?;
    let base = base_image(&store, &job.base)?;

    let mut apply = ApplyOptions {
        protected: protected_paths(&job.root),
        ..ApplyOptions::default()
    };
    apply.protected.extend(job.options.own_dirs.iter().cloned());
    apply_layers(&store, &job.root, &job.apply, &apply)?;

    let options = ExecutorOptions {
        no_cache: job.options.no_cache,
        source_date_epoch: job.options.source_date_epoch,
        architecture: job.options.architecture.clone(),
        run_timeout: job
            .options
            .run_timeout_seconds
            .map(std::time::Duration::from_secs),
        tail_lines: job.options.tail_lines,
        own_dirs: job.options.own_dirs.clone(),
        apply,
        ..ExecutorOptions::default()
    };
    let mut executor = StageExecutor::new(&store, &job.root, &context, env.runner, options)?;
    if let Some(stacker) = env.stacker {
        executor = executor.with_stacker(stacker);
    }
    for input in &job.stages {
        executor = executor.with_stage(
            input.index,
            StageSource {
                name: input.name.clone(),
                root: input.root.clone(),
            },
        );
    }
    // External images get indices past the stages so they never shadow one.
    for (n, image) in job.images.iter().enumerate() {
        executor = executor.with_stage(
            dockerfile.stages.len() + n,
            StageSource {
                name: Some(image.name.to_ascii_lowercase()),
                root: image.root.clone(),
            },
        );
    }
    for secret in &job.secrets {
        executor = executor.with_secret(&secret.id, &secret.path);
    }
    let spec = StageSpec {
        label: job.label.clone(),
        instructions: &stage.instructions,
        escape: dockerfile.escape,
        args: ArgSource {
            build_args: job.build_args.clone(),
            global,
        },
        base,
    };
    let outcome = executor.run(&spec, progress);
    if outcome.error.is_none()
        && let Some(dest) = &job.export
    {
        let paths = job.export_paths.as_deref();
        if job.export_shared {
            export_shared(&job.root, dest, &job.options.own_dirs, &job.cache, paths)?;
        } else {
            export_root(&job.root, dest, &job.options.own_dirs, &job.cache, paths)?;
        }
    }
    Ok(outcome)
}

/// The file beside a shared export that says it is complete.
pub fn export_done(dest: &Path) -> PathBuf {
    dest.with_file_name("done")
}

/// Exports the root to a directory shared by every build whose stage has the same inputs
/// (and so the same files): one that is complete is kept and marked used; else the root is
/// written beside it and renamed into place, which fails harmlessly when another pod's
/// complete copy got there first (a directory is only renamed in once whole). `done` is
/// created after, so a reader that sees it sees every file.
pub fn export_shared(
    root: &Path,
    dest: &Path,
    own_dirs: &[PathBuf],
    cache: &Path,
    paths: Option<&[String]>,
) -> Result<(), JobError> {
    let done = export_done(dest);
    if done.exists() {
        crate::gc::touch(&done);
        return Ok(());
    }
    write_export(root, dest, own_dirs, cache, paths, false)?;
    std::fs::File::create(&done).map_err(|e| JobError::Export {
        path: dest.to_owned(),
        message: format!("create {}: {e}", done.display()),
    })?;
    Ok(())
}

/// Copies every file of `root` into `dest` (replaced as a whole, through a temporary sibling
/// renamed into place), as a tar stream from one thread into the layer applier on this one:
/// owners, modes, links, hard links and xattrs come along, and mount points, the contents of
/// `/proc`, `/sys`, `/dev` and `own_dirs` stay behind (the snapshot's own exclusions). The
/// cache volume is a mount point, so `dest` itself is never walked. With `paths`, only those
/// (relative to the root, each a file or a directory) and the directories above them.
pub fn export_root(
    root: &Path,
    dest: &Path,
    own_dirs: &[PathBuf],
    cache: &Path,
    paths: Option<&[String]>,
) -> Result<(), JobError> {
    write_export(root, dest, own_dirs, cache, paths, true)
}

/// `paths`, unless one of them goes through a symbolic link in the root: a reader resolves
/// the link inside the export, where its target may not be, so then the whole root goes.
fn plain_paths<'p>(root: &Path, paths: Option<&'p [String]>) -> Option<&'p [String]> {
    let paths = paths?;
    let through_link = paths.iter().any(|path| {
        let mut at = root.to_path_buf();
        Path::new(path).components().any(|c| {
            at.push(c);
            std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink())
        })
    });
    (!through_link).then_some(paths)
}

/// Writes the export beside `dest` and renames it into place: over an older one when
/// `replace`, else only where there is none or an empty directory.
fn write_export(
    root: &Path,
    dest: &Path,
    own_dirs: &[PathBuf],
    cache: &Path,
    paths: Option<&[String]>,
    replace: bool,
) -> Result<(), JobError> {
    let err = |message: String| JobError::Export {
        path: dest.to_owned(),
        message,
    };
    let mut exclude = own_dirs.to_vec();
    exclude.push(cache.to_owned());
    let options = crate::snapshot::SnapshotOptions::for_root(root, &exclude)
        .map_err(|e| err(e.to_string()))?;
    let walk = crate::snapshot::Snapshot::take(root, &options).map_err(|e| err(e.to_string()))?;
    let paths = plain_paths(root, paths);
    let wanted = |entry: &Path| {
        paths.is_none_or(|paths| {
            paths.iter().map(Path::new).any(|want| {
                // Under a wanted path, or a directory above one.
                entry.starts_with(want) || want.starts_with(entry)
            })
        })
    };
    let changes: Vec<stagecoach_oci::layer::Change> = walk
        .entries
        .iter()
        .filter(|e| wanted(&e.path))
        .map(|e| stagecoach_oci::layer::Change::Write(e.path.clone()))
        .collect();
    let parent = dest
        .parent()
        .ok_or_else(|| err("the export path has no parent".into()))?;
    std::fs::create_dir_all(parent)
        .map_err(|e| err(format!("create {}: {e}", parent.display())))?;
    let staging = tempfile::Builder::new()
        .prefix(".export-")
        .tempdir_in(parent)
        .map_err(|e| err(format!("create a directory in {}: {e}", parent.display())))?;
    let (reader, writer) = std::io::pipe().map_err(|e| err(format!("make a pipe: {e}")))?;
    let layer_options = stagecoach_oci::LayerOptions {
        compression: stagecoach_oci::Compression::None,
        source_date_epoch: None,
    };
    let (written, applied) = std::thread::scope(|scope| {
        let writer_thread = scope.spawn(|| {
            stagecoach_oci::layer::write_layer_to(
                writer,
                root,
                stagecoach_oci::LayerSource::Changes(&changes),
                &layer_options,
            )
            .map(|_| ())
        });
        let applied =
            stagecoach_oci::layer::apply_layer(staging.path(), reader, &ApplyOptions::default());
        let written = writer_thread.join().unwrap_or_else(|_| {
            Err(stagecoach_oci::layer::LayerWriteError::Io {
                action: "write",
                path: root.to_owned(),
                source: std::io::Error::other("the export writer panicked"),
            })
        });
        (written, applied)
    });
    written.map_err(|e| err(e.to_string()))?;
    applied.map_err(|e| err(e.to_string()))?;
    if replace && dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|e| err(format!("remove the old export: {e}")))?;
    }
    let staged = staging.keep();
    match std::fs::rename(&staged, dest) {
        Ok(()) => Ok(()),
        // Another pod's whole copy is there.
        Err(e)
            if !replace
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::AlreadyExists
                ) =>
        {
            let _ = std::fs::remove_dir_all(&staged);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staged);
            Err(err(format!("rename into place: {e}")))
        }
    }
}

fn base_image(store: &ContentStore, base: &JobBase) -> Result<BaseImage, JobError> {
    match base {
        JobBase::Scratch => Ok(BaseImage::default()),
        JobBase::Image { config, layers, .. } => Ok(BaseImage {
            config: Some(
                serde_json::from_value::<ImageConfig>(config.clone())
                    .map_err(JobError::BaseConfig)?,
            ),
            layers: layers.clone(),
        }),
        JobBase::Stage {
            index,
            config,
            layers,
        } => {
            let err = |message: String| JobError::StageConfig {
                stage: *index,
                digest: config.clone(),
                message,
            };
            let bytes = store
                .read_to_vec(config, 16 << 20)
                .map_err(|e| err(e.to_string()))?;
            // The digest came from another pod's result, which a RUN there could have
            // forged: the bytes must be what it names (layers are checked by diffID as
            // they are applied).
            let actual = Digest::of_bytes(&bytes);
            if actual != *config {
                return Err(err(format!(
                    "the cache holds bytes of digest {actual} under that name"
                )));
            }
            let parsed = ImageConfig::from_json(&bytes).map_err(|e| err(e.to_string()))?;
            Ok(BaseImage {
                config: Some(parsed),
                layers: layers.clone(),
            })
        }
    }
}

/// Applies `layers` onto `root` in order, checking each diffID.
pub fn apply_layers(
    store: &ContentStore,
    root: &Path,
    layers: &[LayerRecord],
    options: &ApplyOptions,
) -> Result<(), JobError> {
    for layer in layers {
        apply_layer_blob(store, &layer.digest, Some(&layer.diff_id), root, options).map_err(
            |source| JobError::Apply {
                layer: layer.digest.clone(),
                root: root.to_owned(),
                source,
            },
        )?;
    }
    Ok(())
}

/// What applying in place must never touch: every mount point strictly below `root` (in a
/// pod: kubelet's `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`, `/dev/termination-log`,
/// the cache volume, secret and cache mounts, the binary's directory), and, when the root is
/// the container's own `/`, `/proc`, `/sys` and `/dev`.
pub fn protected_paths(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read("/proc/self/mountinfo")
        .map(|info| crate::snapshot::mount_points(&info))
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p != root && p.starts_with(root))
        .collect();
    if root == Path::new("/") {
        out.extend(["/proc", "/sys", "/dev"].map(PathBuf::from));
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_parent_config_whose_bytes_differ_from_its_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#;
        let info = store.put_bytes(config).unwrap();
        let base = JobBase::Stage {
            index: 0,
            config: info.digest.clone(),
            layers: vec![],
        };
        assert!(base_image(&store, &base).is_ok());
        // What a RUN with the cache volume in reach could do: rewrite a blob in place.
        let path = dir.path().join("blobs/sha256").join(info.digest.hex());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&path, br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"User":"0"}}"#).unwrap();
        let err = base_image(&store, &base).err().unwrap();
        assert_eq!(err.reason(), StageReason::StoreFailed);
        assert!(err.to_string().contains("bytes of digest"), "{err}");
    }

    #[test]
    fn a_shared_export_is_written_once_and_kept_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/first"), b"1").unwrap();
        let dest = cache.join("exports/abc/rootfs");
        // The kubelet makes a missing sub-path as an empty directory: it is no export.
        std::fs::create_dir_all(&dest).unwrap();
        export_shared(&root, &dest, &[], &cache, None).unwrap();
        assert_eq!(std::fs::read(dest.join("etc/first")).unwrap(), b"1");
        assert!(export_done(&dest).exists());
        // A second pod with the same stage inputs keeps the complete one.
        std::fs::write(root.join("etc/second"), b"2").unwrap();
        export_shared(&root, &dest, &[], &cache, None).unwrap();
        assert!(!dest.join("etc/second").exists());
        // One that lost the race to rename (a whole copy got there, no done file yet) keeps
        // that copy and leaves no staging directory behind.
        std::fs::remove_file(export_done(&dest)).unwrap();
        export_shared(&root, &dest, &[], &cache, None).unwrap();
        assert!(!dest.join("etc/second").exists() && export_done(&dest).exists());
        let left: Vec<_> = std::fs::read_dir(cache.join("exports/abc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        // A per-build export is replaced as a whole.
        let own = cache.join("builds/u/stages/0/rootfs");
        export_root(&root, &own, &[], &cache, None).unwrap();
        std::fs::remove_file(root.join("etc/first")).unwrap();
        export_root(&root, &own, &[], &cache, None).unwrap();
        assert!(!own.join("etc/first").exists() && own.join("etc/second").exists());
    }

    #[test]
    fn an_export_holds_only_the_paths_its_readers_take_unless_one_goes_through_a_link() {
        use std::os::unix::fs::{PermissionsExt as _, symlink};
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let root = dir.path().join("root");
        for d in ["out/sub", "output", "usr/lib", "data"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::set_permissions(root.join("out"), std::fs::Permissions::from_mode(0o750)).unwrap();
        for f in [
            "out/server",
            "out/sub/x",
            "output/not",
            "usr/lib/big",
            "data/real",
        ] {
            std::fs::write(root.join(f), f).unwrap();
        }
        symlink("data", root.join("link")).unwrap();
        let files = |dest: &Path| {
            let mut found: Vec<String> = walkdir(dest);
            found.sort();
            found
        };

        let dest = cache.join("exports/a/rootfs");
        let paths = ["out".to_string(), "usr/lib/big".to_string()];
        export_shared(&root, &dest, &[], &cache, Some(&paths)).unwrap();
        assert_eq!(
            files(&dest),
            [
                "out",
                "out/server",
                "out/sub",
                "out/sub/x",
                "usr",
                "usr/lib",
                "usr/lib/big"
            ]
        );
        // The directories come with their own metadata.
        let mode = std::fs::metadata(dest.join("out"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o750);

        // A path through a link: the whole root.
        let dest = cache.join("exports/b/rootfs");
        let through = ["link/real".to_string()];
        export_root(&root, &dest, &[], &cache, Some(&through)).unwrap();
        assert!(dest.join("output/not").exists() && dest.join("data/real").exists());
    }

    fn walkdir(base: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![base.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                out.push(
                    path.strip_prefix(base)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
                if path.is_dir() && !path.is_symlink() {
                    stack.push(path);
                }
            }
        }
        out
    }
}
