//! `stagecoach push --spec FILE`: a push pod's command (in the operator image). It assembles
//! a built target's OCI manifest from its stage's result, makes sure every layer is either in
//! the cache or mountable from its base image on the same registry (copying it into the cache
//! otherwise), pushes, and writes the confirmed digest as its termination message. Only this
//! container sees the registry credentials; no user code runs in it.

use std::path::{Path, PathBuf};

use stagecoach_oci::registry::{ClientOptions, Credentials, ImageRef, RegistryClient, RetryPolicy};
use stagecoach_oci::{ContentStore, Descriptor, ImageManifest, media_type};
use stagecoach_protocol::job::{JOB_VERSION, PushJob, PushResult};

/// Arguments of `stagecoach push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The push job, as JSON.
    #[arg(long, value_name = "FILE")]
    spec: PathBuf,
    /// Where the result goes: the container's termination message.
    #[arg(long, value_name = "FILE", default_value = "/dev/termination-log")]
    termination_log: PathBuf,
}

/// Runs `stagecoach push`.
pub fn run(args: &PushArgs) -> Result<(), String> {
    let bytes = std::fs::read(&args.spec).map_err(|e| format!("{}: {e}", args.spec.display()))?;
    let job: PushJob =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", args.spec.display()))?;
    if job.version != JOB_VERSION {
        return Err(format!(
            "push job version {}; this stagecoach reads {JOB_VERSION}",
            job.version
        ));
    }
    let result = push(&job)?;
    let message = serde_json::to_vec(&result).map_err(|e| e.to_string())?;
    if let Err(e) = std::fs::write(&args.termination_log, &message) {
        tracing::warn!(
            "warning: cannot write {}: {e}",
            args.termination_log.display()
        );
    }
    tracing::info!("[push] {} → {}", job.target, result.digest);
    Ok(())
}

/// A push pod outlasts a registry that restarts: each request is retried for about a
/// minute (0.5 s doubling to 16 s, 9 attempts: 63.5 s of waits) before the build fails
/// with `PushFailed`. The build's work is done by then, so patience is cheap.
const PUSH_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 9,
    initial_backoff: std::time::Duration::from_millis(500),
    max_backoff: std::time::Duration::from_secs(16),
};

fn push(job: &PushJob) -> Result<PushResult, String> {
    let target = ImageRef::parse(&job.target).map_err(|e| format!("{}: {e}", job.target))?;
    let credentials = match &job.credentials {
        Some(path) => {
            Credentials::from_file_if_exists(Path::new(path)).map_err(|e| e.to_string())?
        }
        None => Credentials::anonymous(),
    };
    let client = RegistryClient::new(
        credentials,
        ClientOptions {
            insecure_registries: job.insecure_registries.clone(),
            retry: PUSH_RETRY,
            ..ClientOptions::default()
        },
    );
    let sources = job
        .sources
        .iter()
        .map(|s| ImageRef::parse(s).map_err(|e| format!("{s}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let store = ContentStore::open(&job.cache).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let layers: Vec<Descriptor> = job.layers.iter().map(Descriptor::from).collect();
    runtime.block_on(async {
        // Layers the cache lacks come from the base images: a mount on the same registry
        // needs nothing here; from another registry they are copied in first.
        for layer in &layers {
            if store.exists(&layer.digest).map_err(|e| e.to_string())? {
                continue;
            }
            let same_registry = sources.iter().find(|s| s.registry() == target.registry());
            if same_registry.is_some() {
                continue;
            }
            let source = sources.first().ok_or_else(|| {
                format!(
                    "layer {} is neither in the cache nor in a base image",
                    layer.digest
                )
            })?;
            client
                .pull_blob_into(&store, source, layer)
                .await
                .map_err(|e| e.to_string())?;
        }
        let config = Descriptor::new(media_type::OCI_CONFIG, job.config.clone(), job.config_size);
        let manifest = ImageManifest::new(config, layers.clone());
        let (bytes, desc) = manifest.to_blob().map_err(|e| e.to_string())?;
        store.put_bytes(&bytes).map_err(|e| e.to_string())?;
        let pushed = client
            .push_image(&store, &target, &desc, &sources)
            .await
            .map_err(|e| e.to_string())?;
        let size = desc.size + job.config_size + job.layers.iter().map(|l| l.size).sum::<u64>();
        Ok(PushResult {
            digest: pushed.digest,
            size,
        })
    })
}
