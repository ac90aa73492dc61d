//! `stagecoach stage --spec FILE`: one stage job, the command a builder pod runs. The pod's
//! root filesystem is the stage's root, so RUN steps run in place
//! ([`stagecoach_builder::inplace`]); the job goes through the same
//! [`stagecoach_builder::job::run_job`] as every stage of `stagecoach build`.
//!
//! Contract: progress goes to standard error (the pod's log); the result goes, within 4 KiB,
//! to the termination-message file and, in full, to the job's `result` path on the cache
//! volume; the process exits with the typed exit code (`ExitCode`), which the controller reads
//! from the container status. An unreadable job is a result too (`InvalidJob`, exit code 2),
//! never a crash without one.
//!
//! `stagecoach exec-step` is the in-place runner's helper (it drops to the step's user and
//! groups, then executes the step); `main` dispatches it before anything else starts.

use std::path::{Path, PathBuf};

use stagecoach_builder::executor::ProgressEvent;
use stagecoach_builder::inplace::InPlaceRunner;
use stagecoach_builder::job::{JobEnv, run_job};
use stagecoach_protocol::job::StageJob;
use stagecoach_protocol::result::TERMINATION_MESSAGE_LIMIT;
use stagecoach_protocol::{StageReason, StageResult};

/// Arguments of `stagecoach stage`.
#[derive(Debug, clap::Args)]
pub struct StageArgs {
    /// The stage job, as JSON.
    #[arg(long, value_name = "FILE")]
    spec: PathBuf,
    /// Where the result goes, within 4 KiB: the container's termination message.
    #[arg(long, value_name = "FILE", default_value = "/dev/termination-log")]
    termination_log: PathBuf,
    /// A projected volume (ConfigMap) holding the build context's files, copied into
    /// `--context-to` before the job starts: what the init container does in a pod that has
    /// one.
    #[arg(long, value_name = "DIR", requires = "context_to")]
    context_from: Option<PathBuf>,
    /// Where the context's plain copy goes.
    #[arg(long, value_name = "DIR", requires = "context_from")]
    context_to: Option<PathBuf>,
}

/// Runs `stagecoach stage`; returns the process exit code.
pub fn run(args: &StageArgs) -> u8 {
    let (mut result, full_path) = match read_job(&args.spec) {
        Err(message) => {
            let reason = StageReason::InvalidJob;
            let code = reason.exit_code().map_or(2, |c| c.code());
            (StageResult::failed_early(reason, code, message), None)
        }
        Ok(job) => match copy_context(args) {
            Ok(()) => (run_one(&job), job.result.clone()),
            Err(message) => {
                let reason = StageReason::IoFailed;
                let code = reason.exit_code().map_or(3, |c| c.code());
                (
                    StageResult::failed_early(reason, code, message),
                    job.result.clone(),
                )
            }
        },
    };
    let full = serde_json::to_vec(&result).unwrap_or_default();
    if let Some(path) = &full_path
        && let Err(e) = write_atomic(path, &full)
    {
        if result.outcome == stagecoach_protocol::result::Outcome::Succeeded {
            // A stage started early waits for this file: a success without it would leave
            // that pod waiting until the build's deadline.
            let reason = if e.kind() == std::io::ErrorKind::StorageFull {
                StageReason::CacheFull
            } else {
                StageReason::IoFailed
            };
            let code = reason.exit_code().map_or(3, |c| c.code());
            let message = format!("cannot write the stage's result to {}: {e}", path.display());
            result = StageResult::failed_early(reason, code, message);
        } else {
            eprintln!(
                "warning: cannot write the full result to {}: {e}",
                path.display()
            );
        }
    }
    let small = result.to_json_within(TERMINATION_MESSAGE_LIMIT);
    if let Err(e) = std::fs::write(&args.termination_log, &small) {
        tracing::warn!(
            "warning: cannot write the termination message {}: {e}",
            args.termination_log.display()
        );
    }
    match &result.message {
        Some(message) => tracing::error!("[stage] failed ({}): {message}", reason_text(&result)),
        None => tracing::info!(
            "[stage] done in {:.1}s, {} of {} steps cached",
            result.duration_ms as f64 / 1000.0,
            result.cache_hits,
            result.steps.len()
        ),
    }
    u8::try_from(result.exit_code).unwrap_or(3)
}

/// The context's plain copy, when the pod has no init container to make it.
fn copy_context(args: &StageArgs) -> Result<(), String> {
    let (Some(from), Some(to)) = (&args.context_from, &args.context_to) else {
        return Ok(());
    };
    let n = stagecoach_builder::context::copy_projected(from, to).map_err(|e| {
        format!(
            "cannot copy the build context from {} to {}: {e}",
            from.display(),
            to.display()
        )
    })?;
    tracing::info!("[stage] {n} context files in {}", to.display());
    Ok(())
}

fn reason_text(result: &StageResult) -> &'static str {
    result.reason.map_or("unknown", StageReason::as_str)
}

/// The job, or why it cannot be used.
fn read_job(path: &Path) -> Result<StageJob, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read the stage job {}: {e}", path.display()))?;
    StageJob::from_json(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// How often a stage started ahead of its inputs looks for their results: a tenth of a
/// second is nothing next to a pod start, and a stat costs nothing next to it.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Blocks until every result in `job.wait_for` holds a success. There is no timeout and no
/// failure here: the controller, which sees every pod, ends the build (and deletes this pod)
/// when an input fails for good, and the pod's deadline bounds the wait.
fn wait_for_inputs(job: &StageJob) {
    for input in &job.wait_for {
        let mut said = false;
        loop {
            let done = std::fs::read(&input.result)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<StageResult>(&bytes).ok())
                .is_some_and(|r| r.outcome == stagecoach_protocol::result::Outcome::Succeeded);
            if done {
                break;
            }
            if !said {
                tracing::info!("[{}] waiting for stage {}", job.label, input.label);
                said = true;
            }
            std::thread::sleep(WAIT_POLL);
        }
        if said {
            tracing::info!("[{}] stage {} is done", job.label, input.label);
        }
    }
}

fn run_one(job: &StageJob) -> StageResult {
    // Used from now on, for garbage collection, whether or not a RUN reaches them.
    let layout = stagecoach_protocol::CacheLayout::new(&job.cache);
    for id in &job.cache_mounts {
        stagecoach_builder::gc::touch(&layout.mount(id));
    }
    if let Err(message) = pull_images(job) {
        let reason = StageReason::PullFailed;
        let code = reason.exit_code().map_or(3, |c| c.code());
        return StageResult::failed_early(reason, code, message);
    }
    wait_for_inputs(job);
    let runner = match InPlaceRunner::with_current_exe() {
        Ok(r) => r,
        Err(e) => {
            let reason = StageReason::RunnerFailed;
            let code = reason.exit_code().map_or(3, |c| c.code());
            return StageResult::failed_early(reason, code, e.to_string());
        }
    };
    let label = job.label.clone();
    let mut progress = |event: &ProgressEvent<'_>| match event {
        ProgressEvent::StepStarted { .. } => tracing::info!("{event}"),
        _ => tracing::info!("[{label}] {event}"),
    };
    let env = JobEnv {
        runner: &runner,
        stacker: None,
    };
    match run_job(job, env, &mut progress) {
        Ok(outcome) => {
            if let Some(failed) = &outcome.result.failed_step {
                for line in &failed.tail {
                    tracing::info!("[{label}] | {line}");
                }
            }
            outcome.result
        }
        Err(e) => e.to_result(),
    }
}

/// Pulls and unpacks the images `COPY --from` reads that the pod does not have yet: into the
/// cache's content store (shared, so a later stage or build fetches nothing twice), then
/// into the image's directory, which is one of the executor's own (never in a layer). This
/// container runs user code later, so the pull is anonymous: no credentials are here.
fn pull_images(job: &StageJob) -> Result<(), String> {
    let pulls: Vec<_> = job
        .images
        .iter()
        .filter_map(|i| i.pull.as_ref().map(|p| (i, p)))
        .filter(|(i, _)| !i.root.exists())
        .collect();
    if pulls.is_empty() {
        return Ok(());
    }
    let store = stagecoach_oci::ContentStore::open(&job.cache).map_err(|e| e.to_string())?;
    let runtime = crate::build::pull::runtime().map_err(|e| e.to_string())?;
    for (image, pull) in pulls {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            format!("COPY --from={}: {what} {}: {e}", image.name, pull.reference)
        };
        let reference = stagecoach_oci::registry::ImageRef::parse(&pull.reference)
            .map_err(|e| failed("cannot parse", &e))?;
        let client = crate::build::pull::client_anonymous(&pull.insecure_registries);
        let started = std::time::Instant::now();
        runtime
            .block_on(client.pull_image(&store, &reference))
            .map_err(|e| failed("cannot pull", &e))?;
        // Unpacked beside the final name, then renamed: a retried pod never sees half a root.
        let staging = image.root.with_extension("partial");
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| failed("cannot clear", &e))?;
        }
        std::fs::create_dir_all(&staging).map_err(|e| failed("cannot unpack", &e))?;
        stagecoach_builder::job::apply_layers(
            &store,
            &staging,
            &pull.layers,
            &stagecoach_oci::ApplyOptions::default(),
        )
        .map_err(|e| failed("cannot unpack", &e))?;
        std::fs::rename(&staging, &image.root).map_err(|e| failed("cannot unpack", &e))?;
        tracing::info!(
            "[{}] pulled {} for COPY --from ({:.1}s)",
            job.label,
            pull.reference,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Writes the result atomically (the directory is made first: the stage's own directory on
/// the cache volume may not exist yet).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    stagecoach_oci::atomic::write_file(path, bytes, 0o644)
}

/// `stagecoach exec-step ARGS…`: never returns when the step starts.
pub fn exec_step(args: &[std::ffi::OsString]) -> u8 {
    let error = stagecoach_builder::inplace::exec_step(args);
    // Part of the RUN step's own output (the helper is the step's process), not a log line.
    eprintln!("{error}");
    error.exit_code()
}

/// The operator image's CA certificates.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Arguments of `stagecoach prepare`, a builder pod's init container (in the operator image):
/// it copies this static binary to where the stage container runs it from (an emptyDir, or
/// `bin/<key>` on the cache volume, where later pods run it without an init container), and
/// the build context from its projected volume into a plain directory.
#[derive(Debug, clap::Args)]
pub struct PrepareArgs {
    /// Copy this executable into DIR (as DIR/stagecoach).
    #[arg(long, value_name = "DIR")]
    binary_to: Option<PathBuf>,
    /// Also install this executable into DIR on the cache volume, for later pods; a failure
    /// (a full volume) is said in the termination message, not fatal: the pod runs its own
    /// copy from `--binary-to`.
    #[arg(long, value_name = "DIR")]
    install_to: Option<PathBuf>,
    /// Where the outcome of `--install-to` goes: `installed`, or why not.
    #[arg(long, value_name = "FILE", default_value = "/dev/termination-log")]
    termination_log: PathBuf,
    /// A projected volume (ConfigMap) holding the build context's files.
    #[arg(long, value_name = "DIR", requires = "context_to")]
    context_from: Option<PathBuf>,
    /// Where the context's plain copy goes.
    #[arg(long, value_name = "DIR")]
    context_to: Option<PathBuf>,
}

/// Runs `stagecoach prepare`.
pub fn prepare(args: &PrepareArgs) -> Result<(), std::io::Error> {
    if let Some(dir) = &args.binary_to {
        install_binary(dir)?;
    }
    if let Some(dir) = &args.install_to {
        let said = match install_binary(dir) {
            Ok(()) => "installed".to_string(),
            Err(e) => {
                tracing::warn!(
                    "[prepare] cannot install the binary in {}: {e}",
                    dir.display()
                );
                format!("not installed: {e}")
            }
        };
        if let Err(e) = std::fs::write(&args.termination_log, said) {
            tracing::warn!(
                "[prepare] cannot write {}: {e}",
                args.termination_log.display()
            );
        }
    }
    if let (Some(from), Some(to)) = (&args.context_from, &args.context_to) {
        let n = stagecoach_builder::context::copy_projected(from, to)?;
        tracing::info!("[prepare] {n} context files in {}", to.display());
    } else if let Some(to) = &args.context_to {
        std::fs::create_dir_all(to)?;
    }
    Ok(())
}

/// Puts this executable and the CA certificates into `dir`. Each file is written beside its
/// name and renamed over it: on the cache volume, a pod may start running the binary while
/// another installs the same one again.
fn install_binary(dir: &Path) -> Result<(), std::io::Error> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    let put = |from: &Path, name: &str, mode: u32| -> Result<(), std::io::Error> {
        // Each init container is PID 1 of its own: the pod's name (its hostname) and the
        // time tell two installing pods' files apart.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let host = std::env::var("HOSTNAME").unwrap_or_default();
        let staging = dir.join(format!(".{name}.{host}.{}.{nanos}", std::process::id()));
        std::fs::copy(from, &staging)?;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))?;
        std::fs::File::open(&staging)?.sync_all()?;
        std::fs::rename(&staging, dir.join(name))
    };
    // The stage pulls COPY --from images over TLS, and a base image need not carry CA
    // certificates: the operator image's go along (the pod points SSL_CERT_FILE at them).
    let bundle = Path::new(CA_BUNDLE);
    if bundle.exists() {
        put(bundle, "ca-certificates.crt", 0o644)?;
    }
    put(&std::env::current_exe()?, "stagecoach", 0o755)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use stagecoach_protocol::job::WaitFor;
    use std::sync::mpsc;
    use std::time::Duration;

    fn job(results: &[PathBuf]) -> StageJob {
        use stagecoach_protocol::job::{JOB_VERSION, JobBase, JobOptions};
        StageJob {
            version: JOB_VERSION,
            build: "b".into(),
            dockerfile: "FROM scratch\n".into(),
            dockerfile_path: None,
            stage: 1,
            label: "last".into(),
            build_args: Default::default(),
            base: JobBase::Scratch,
            root: "/".into(),
            apply: vec![],
            context: "/c".into(),
            cache: "/cache".into(),
            stages: vec![],
            images: vec![],
            secrets: vec![],
            options: JobOptions::default(),
            export: None,
            export_shared: false,
            export_paths: None,
            result: None,
            cache_mounts: vec![],
            wait_for: results
                .iter()
                .enumerate()
                .map(|(i, r)| WaitFor {
                    label: i.to_string(),
                    result: r.clone(),
                })
                .collect(),
        }
    }

    fn result(outcome: &str) -> Vec<u8> {
        let mut r = StageResult::failed_early(StageReason::RunFailed, 1, "RUN failed".into());
        if outcome == "Succeeded" {
            r.outcome = stagecoach_protocol::result::Outcome::Succeeded;
            (r.exit_code, r.reason, r.message) = (0, None, None);
        }
        serde_json::to_vec(&r).unwrap()
    }

    #[test]
    fn a_stage_waits_until_every_input_result_is_a_success() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
        std::fs::write(&a, result("Succeeded")).unwrap();
        // b: a failure first (the stage may be tried again), then nothing yet.
        std::fs::write(&b, result("Failed")).unwrap();
        let (tx, rx) = mpsc::channel();
        let waiting = job(&[a, b.clone()]);
        std::thread::spawn(move || {
            wait_for_inputs(&waiting);
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(500)).is_err(),
            "went on while an input had failed"
        );
        std::fs::remove_file(&b).unwrap();
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "went on while an input had no result"
        );
        write_atomic(&b, &result("Succeeded")).unwrap();
        rx.recv_timeout(Duration::from_secs(30))
            .expect("went on once both inputs succeeded");
    }
}
