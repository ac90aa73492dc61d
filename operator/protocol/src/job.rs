//! [`StageJob`]: everything one stage run needs, as the controller writes it for a builder
//! pod and as `stagecoach build` makes it for each stage on one machine. One job runs one
//! Dockerfile stage over one root directory (`/` in a pod, an overlay mount locally); the
//! run reads its inputs from the paths the job names and writes layers and keys into the
//! cache root. Nothing in a job is a secret: secrets are named by id and file path only.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::result::LayerRecord;

/// The job format's version; a runner refuses a job of another version.
pub const JOB_VERSION: u32 = 1;

/// One stage run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StageJob {
    /// [`JOB_VERSION`].
    pub version: u32,
    /// The build this stage belongs to (the ImageBuild's uid; locally a work directory's
    /// name): where its files go under `builds/` of the cache.
    pub build: String,
    /// The Dockerfile's text. The runner parses it again: it is small, and this keeps the
    /// job free of a second representation of instructions.
    pub dockerfile: String,
    /// The Dockerfile's path relative to the context (for `<Dockerfile>.dockerignore`), when
    /// it lives in the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile_path: Option<PathBuf>,
    /// The stage's index in the Dockerfile.
    pub stage: usize,
    /// The label in progress lines and messages (its name, else its index).
    pub label: String,
    /// `--build-arg` values.
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    /// What the stage starts from.
    pub base: JobBase,
    /// The root directory the stage runs over: `/` in a pod.
    pub root: PathBuf,
    /// Layers to apply onto `root` before the first instruction (a `FROM <stage>` parent's
    /// own layers over the root ancestor's image), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apply: Vec<LayerRecord>,
    /// The build context directory.
    pub context: PathBuf,
    /// The cache root (content store, keys, cache mounts).
    pub cache: PathBuf,
    /// Earlier stages this one reads (`COPY --from`, `RUN --mount=from=`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageInput>,
    /// External images this one copies from, unpacked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageInput>,
    /// Secrets for `RUN --mount=type=secret`: id and file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretInput>,
    /// Knobs.
    #[serde(default)]
    pub options: JobOptions,
    /// Where the stage's final root is copied for later stages (`COPY --from`,
    /// `RUN --mount=from=`) when they run in other pods: a directory on the cache volume,
    /// replaced as a whole. Mount points, `/proc`, `/sys`, `/dev` contents and
    /// `options.ownDirs` are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<PathBuf>,
    /// The export is shared by every build whose stage has the same inputs
    /// (`exports/<inputs>/rootfs`): one that is complete (its `done` file beside it) is kept,
    /// not replaced, and is marked used; else it is written and `done` created after it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub export_shared: bool,
    /// Only these paths of the root go into the export (each relative to the root, a file
    /// or a directory, with the directories above it): what the stages that read this one
    /// take. `None`: the whole root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_paths: Option<Vec<String>>,
    /// Where the full result goes (a file on the cache volume); the termination message
    /// gets the 4 KiB version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<PathBuf>,
    /// The ids of every `RUN --mount=type=cache` of the stage: a pod mounts them all from
    /// its start, so each is marked used then, cached steps' included (garbage collection
    /// removes cache mounts unused since the oldest running build started).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_mounts: Vec<String>,
    /// Earlier stages whose results this stage waits for before its first instruction: the
    /// controller starts a stage's pod while the stages it copies from still run, so that the
    /// pod's start is off the critical path. Each result file must hold a success; a failure
    /// there is not final (the stage may be tried again), so the pod waits on until the
    /// controller ends the build.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wait_for: Vec<WaitFor>,
}

/// An earlier stage's result a stage waits for ([`StageJob::wait_for`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaitFor {
    /// Its label, for the progress line.
    pub label: String,
    /// Its result file (the producing job's `result`), on the cache volume.
    pub result: PathBuf,
}

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", deny_unknown_fields)]
pub enum JobBase {
    /// `FROM scratch`.
    Scratch,
    /// An image (directly, or as the root ancestor of a `FROM <stage>` chain).
    #[serde(rename_all = "camelCase")]
    Image {
        /// The reference as resolved (pinned by digest).
        reference: String,
        /// Its manifest's digest.
        manifest: Digest,
        /// Its image config, as the registry served it.
        config: serde_json::Value,
        /// Its layers, in order.
        layers: Vec<LayerRecord>,
    },
    /// An earlier stage's result (`FROM <stage>`).
    #[serde(rename_all = "camelCase")]
    Stage {
        /// The parent stage's index.
        index: usize,
        /// Its image config's digest; the blob is in the cache's content store.
        config: Digest,
        /// All its layers, the root image's first.
        layers: Vec<LayerRecord>,
    },
}

/// An earlier stage's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StageInput {
    /// Its index.
    pub index: usize,
    /// Its `AS` name, lower-cased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The directory holding its root filesystem.
    pub root: PathBuf,
    /// A file that must exist before the stage reads `root`: set when the input needed no pod
    /// in this build and `root` is what an earlier build with the same stage inputs exported
    /// (garbage collection may have removed it since). Without it the stage fails with
    /// `InputGone` before its first instruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<PathBuf>,
}

/// An external image's files, for `COPY --from=<image>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageInput {
    /// The image as the Dockerfile names it.
    pub name: String,
    /// The directory holding its unpacked root filesystem.
    pub root: PathBuf,
    /// In a builder pod: the image to pull and unpack into `root` before the stage runs
    /// (locally the build has unpacked it already).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<ImagePull>,
}

/// An image a builder pod pulls for `COPY --from=<image>`, as the controller resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImagePull {
    /// The image pinned by its manifest digest.
    pub reference: String,
    /// Its layers, in order, with their diffIDs.
    pub layers: Vec<LayerRecord>,
    /// Registries reached over plain HTTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
}

/// A build secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretInput {
    /// The id `RUN --mount=type=secret,id=` names.
    pub id: String,
    /// The file holding its value.
    pub path: PathBuf,
}

/// A stage run's knobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct JobOptions {
    /// Look nothing up in the cache (results are still recorded).
    pub no_cache: bool,
    /// SOURCE_DATE_EPOCH for layer mtimes and `created`.
    pub source_date_epoch: u64,
    /// Architecture of a `FROM scratch` stage's config.
    pub architecture: String,
    /// Give up on one RUN after this many seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_timeout_seconds: Option<u64>,
    /// Output lines kept for a failure's report.
    pub tail_lines: usize,
    /// Directories to leave out of snapshots besides mount points (the binary's directory).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub own_dirs: Vec<PathBuf>,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            no_cache: false,
            source_date_epoch: 0,
            architecture: "amd64".to_string(),
            run_timeout_seconds: None,
            tail_lines: 20,
            own_dirs: Vec::new(),
        }
    }
}

/// Why a job file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Not valid JSON for a job.
    #[error("the stage job is not valid: {0}")]
    Decode(#[from] serde_json::Error),
    /// Another version.
    #[error("the stage job has version {found}; this stagecoach reads version {JOB_VERSION}")]
    Version {
        /// The version in the file.
        found: u32,
    },
}

impl StageJob {
    /// Reads a job from JSON, checking its version.
    pub fn from_json(bytes: &[u8]) -> Result<StageJob, JobError> {
        let job: StageJob = serde_json::from_slice(bytes)?;
        if job.version != JOB_VERSION {
            return Err(JobError::Version { found: job.version });
        }
        Ok(job)
    }
}

/// One push: a built target's image, assembled from its stage's result and pushed by a pod
/// that alone holds the registry credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PushJob {
    /// [`JOB_VERSION`].
    pub version: u32,
    /// Where to push (`registry/repository:tag`).
    pub target: String,
    /// The image config's digest (the blob is in the cache's content store).
    pub config: Digest,
    /// Its size.
    pub config_size: u64,
    /// The layers, base layers first.
    pub layers: Vec<LayerRecord>,
    /// Base images (pinned) the layers that are not in the cache come from: mounted across
    /// repositories on the same registry, else copied into the cache first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// The cache root.
    pub cache: PathBuf,
    /// A Docker `config.json` with the registry credentials, when there are any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
    /// Registries reached over plain HTTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
}

/// What a push reports (its termination message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushResult {
    /// The manifest digest the registry confirmed.
    pub digest: Digest,
    /// Manifest, config and layers together, in bytes.
    pub size: u64,
}

/// One source fetch: a git repository at one revision, checked out into the cache volume
/// by a pod in the operator image (the only pod that reaches the git server, and the only
/// one that holds the git credentials).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FetchJob {
    /// [`JOB_VERSION`].
    pub version: u32,
    /// The repository: `https://`, `http://`, `git://` or `file://`.
    pub url: String,
    /// A branch, a tag or a full commit id; the remote's default branch when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The directory of the repository that is the context root (`""`: the root).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_path: String,
    /// The Dockerfile's path relative to the context root, reported back to the controller.
    pub dockerfile: String,
    /// Where the context goes (replaced as a whole: fetched beside it, then renamed).
    pub dest: PathBuf,
    /// A directory with `username` and `password` files for http(s) basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
    /// The most bytes the checked-out context may hold (the operator's
    /// `--max-context-size`); a larger one is removed and the fetch fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// What a fetch reports when it succeeded (its termination message). The Dockerfile's text
/// itself is too large for a termination message: it follows in the pod's log as
/// [`DOCKERFILE_LOG_PREFIX`] lines, and the controller checks it against `dockerfile_digest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FetchResult {
    /// The commit that was checked out (full hex id).
    pub commit: String,
    /// The sha256 digest of the Dockerfile's bytes.
    pub dockerfile_digest: Digest,
    /// Their length.
    pub dockerfile_size: u64,
}

/// What a fetch reports when it failed (its termination message): a stable reason
/// ([`crate::condition::Reason`]'s spelling: `SourceFetchFailed` or `InvalidDockerfile`) and
/// a message that names the URL, the revision or the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FetchFailure {
    /// The condition reason.
    pub reason: String,
    /// What went wrong.
    pub message: String,
}

/// Each log line of a fetch pod that carries a piece of the Dockerfile starts with this,
/// followed by the piece as a JSON string (pieces of at most [`DOCKERFILE_LOG_CHUNK`] bytes,
/// in order; a container runtime splits longer log lines).
pub const DOCKERFILE_LOG_PREFIX: &str = "stagecoach-dockerfile: ";

/// The largest piece of the Dockerfile on one log line, in bytes.
pub const DOCKERFILE_LOG_CHUNK: usize = 2048;

/// The largest Dockerfile a fetched source may have, in bytes.
pub const MAX_FETCHED_DOCKERFILE: u64 = 256 * 1024;

/// Splits a Dockerfile into the log lines a fetch pod prints (at char boundaries).
pub fn dockerfile_log_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(DOCKERFILE_LOG_CHUNK);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (piece, tail) = rest.split_at(end);
        lines.push(format!(
            "{DOCKERFILE_LOG_PREFIX}{}",
            serde_json::Value::String(piece.to_string())
        ));
        rest = tail;
    }
    lines
}

/// The Dockerfile back from a fetch pod's log: the pieces in order, checked against the
/// result's digest and size; `None` when they do not match.
pub fn dockerfile_from_log(log: &str, result: &FetchResult) -> Option<String> {
    let mut text = String::new();
    for line in log.lines() {
        if let Some(piece) = line.strip_prefix(DOCKERFILE_LOG_PREFIX) {
            text.push_str(&serde_json::from_str::<String>(piece).ok()?);
            if text.len() as u64 > result.dockerfile_size {
                return None;
            }
        }
    }
    (text.len() as u64 == result.dockerfile_size
        && Digest::of_bytes(text.as_bytes()) == result.dockerfile_digest)
        .then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result_for(text: &str) -> FetchResult {
        FetchResult {
            commit: "0".repeat(40),
            dockerfile_digest: Digest::of_bytes(text.as_bytes()),
            dockerfile_size: text.len() as u64,
        }
    }

    #[test]
    fn a_dockerfile_crosses_the_log_in_pieces_and_comes_back_whole() {
        // Multi-byte characters across piece boundaries, and a line longer than a piece.
        let text = format!("FROM busybox\nRUN echo {}\n# é\n", "ü".repeat(3000));
        let lines = dockerfile_log_lines(&text);
        assert!(lines.len() > 2);
        assert!(
            lines
                .iter()
                .all(|l| l.len() <= DOCKERFILE_LOG_PREFIX.len() + 2 * DOCKERFILE_LOG_CHUNK)
        );
        let log = format!("starting\n{}\nfetched\n", lines.join("\nnoise\n"));
        assert_eq!(dockerfile_from_log(&log, &result_for(&text)), Some(text));
    }

    #[test]
    fn a_dockerfile_that_differs_from_its_digest_is_refused() {
        let text = "FROM busybox\n";
        let forged = dockerfile_log_lines("FROM evil\n").join("\n");
        assert_eq!(dockerfile_from_log(&forged, &result_for(text)), None);
        // A missing piece.
        let lines = dockerfile_log_lines(&"x".repeat(5000));
        let partial = lines[..2].join("\n");
        assert_eq!(
            dockerfile_from_log(&partial, &result_for(&"x".repeat(5000))),
            None
        );
    }
}
