//! `ImageBuildStatus`: what the controller reports — the `Succeeded` condition, per-stage
//! progress, and the pushed images. Only the controller writes it (server-side apply, one field
//! manager); every list is a list-map so that apply merges entries by key instead of replacing
//! the list. Doc comments are the `kubectl explain` text.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::bounds;
use crate::reason::SUCCEEDED;
use crate::schema::condition_items;

/// The observed state of an ImageBuild, written by the controller.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImageBuildStatus {
    /// Conditions in Kubernetes' convention, one per type. Succeeded is Unknown while the build
    /// runs, then True or False with a reason: Pending, Building, Succeeded, InvalidSpec,
    /// SourceFetchFailed, InvalidDockerfile, UnknownTarget, ResolveFailed, StageFailed, PodFailed,
    /// PushFailed, Timeout. At most 16 conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = bounds::MAX_CONDITIONS), transform = condition_items)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The metadata.generation of the spec this status describes. A newer generation means a
    /// new build has been asked for and this status is about to be replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,

    /// When the build of the observed generation started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the build of the observed generation finished, successfully or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// Progress as "done/total": stages that succeeded or came from the cache, over the stages
    /// the targets need. Shown in the STAGES column of kubectl get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = bounds::MAX_STAGES_SUMMARY), pattern(bounds::STAGES_SUMMARY))]
    pub stages_summary: Option<String>,

    /// One entry per stage the targets need, keyed by name, in Dockerfile order. At most 128
    /// stages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = bounds::MAX_STAGES))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub stages: Vec<StageStatus>,

    /// One entry per pushed target, keyed by target stage, in the order of spec.targets. At
    /// most 32 images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = bounds::MAX_TARGETS))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["target".into()]))]
    pub images: Vec<ImageStatus>,

    /// What the source resolved to for the observed generation: for a git source, the commit
    /// that was built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceStatus>,
}

/// The source of a build as it was fetched.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// The git commit that was checked out and built (40 hex digits), resolved from
    /// spec.source.git.revision when the build started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 40, max = 64), pattern(r"^[0-9a-f]+$"))]
    pub commit: Option<String>,

    /// The sha256 of everything this generation's images are made from: the Dockerfile, the
    /// inline or ConfigMap context, build args, targets, secret ids and the digests of the
    /// images it starts from. A later build in the namespace with the same inputs whose
    /// images are still in the registry succeeds without running a pod. Absent for git
    /// sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(equal = 71), pattern(r"^sha256:[0-9a-f]{64}$"))]
    pub inputs: Option<String>,
}

impl ImageBuildStatus {
    /// The `Succeeded` condition, if the controller has written one.
    pub fn succeeded(&self) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == SUCCEEDED)
    }

    /// The `stagesSummary` for these stages: finished (succeeded or cached) over all.
    pub fn summarize_stages(stages: &[StageStatus]) -> String {
        let done = stages.iter().filter(|s| s.state.is_done()).count();
        format!("{done}/{}", stages.len())
    }
}

/// The progress of one stage.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// The stage's name in lower case, or its index as a decimal number when the Dockerfile
    /// does not name it (stage names start with a letter, so the two never clash). At most 63
    /// characters.
    #[schemars(length(min = 1, max = bounds::MAX_STAGE_NAME))]
    pub name: String,

    /// The stage's position in the Dockerfile, from 0.
    #[schemars(range(min = 0))]
    pub index: i32,

    /// Pending (waiting for the stages it needs), Running, Succeeded, Failed, Skipped (not run
    /// because a stage it needs failed or the build stopped) or Cached (no pod: an earlier
    /// build with the same stage inputs made its image or exported its files, or only such
    /// stages need it; it runs after all when those files turn out to be gone).
    pub state: StageState,

    /// The builder pod of the stage's latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = bounds::MAX_DNS1123_SUBDOMAIN))]
    pub pod: Option<String>,

    /// The node the builder pod ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = bounds::MAX_DNS1123_SUBDOMAIN))]
    pub node: Option<String>,

    /// When the stage's pod started running its instructions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the stage succeeded, failed or was found in the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<Time>,

    /// How many of the stage's instructions were taken from the cache instead of run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub cache_hits: Option<i32>,

    /// On failure, what failed (the instruction and its line) and the tail of the stage's log.
    /// At most 4096 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::MAX_STAGE_MESSAGE))]
    pub message: Option<String>,

    /// The sha256 of what the stage is made from, as the controller sees it without running
    /// anything: its Dockerfile lines, the build args it declares, the digest of its base
    /// image, the context files it may read (for git, the commit), the images it copies from
    /// and the inputs of the stages it reads. A later build in the namespace whose target
    /// stage has the same inputs takes that stage's image from the registry; one whose other
    /// stage has them reads the files this build exported for it; either gets no pod (state
    /// Cached). Absent when they are not all known (an `ADD` of a URL without `--checksum`,
    /// an image that did not resolve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(equal = 71), pattern(r"^sha256:[0-9a-f]{64}$"))]
    pub inputs: Option<String>,
}

/// Where a stage is in its life.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default,
)]
pub enum StageState {
    /// Waiting for the stages it needs.
    #[default]
    Pending,
    /// Its pod is running.
    Running,
    /// Its instructions ran and it produced its result.
    Succeeded,
    /// An instruction failed, or its pod failed more often than retries allow.
    Failed,
    /// Not run: a stage it needs failed, or the build stopped.
    Skipped,
    /// Its result came entirely from the cache; no pod ran.
    Cached,
}

impl StageState {
    /// Every state, in life order.
    pub const ALL: [StageState; 6] = [
        StageState::Pending,
        StageState::Running,
        StageState::Succeeded,
        StageState::Failed,
        StageState::Skipped,
        StageState::Cached,
    ];

    /// The state as it appears in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            StageState::Pending => "Pending",
            StageState::Running => "Running",
            StageState::Succeeded => "Succeeded",
            StageState::Failed => "Failed",
            StageState::Skipped => "Skipped",
            StageState::Cached => "Cached",
        }
    }

    /// Whether the stage has its result (and counts as done in `stagesSummary`).
    pub fn is_done(self) -> bool {
        matches!(self, StageState::Succeeded | StageState::Cached)
    }

    /// Whether the stage will not change state again in this build.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            StageState::Succeeded | StageState::Failed | StageState::Skipped | StageState::Cached
        )
    }
}

impl std::fmt::Display for StageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An image pushed for a target.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// The target's stage name, or its index as a decimal number when the Dockerfile does not
    /// name it (spec.image pushes the last stage, named or not). At most 63 characters.
    #[schemars(length(min = 1, max = bounds::MAX_STAGE_NAME), pattern(bounds::STATUS_STAGE))]
    pub target: String,

    /// The reference the image was pushed to, as given in the spec.
    #[schemars(length(min = 1, max = bounds::MAX_IMAGE_REFERENCE), pattern(bounds::IMAGE_REFERENCE))]
    pub image: String,

    /// The digest of the pushed manifest, as the registry confirmed it; pull by
    /// image@digest to get exactly this build.
    #[schemars(length(min = 1, max = bounds::MAX_DIGEST), pattern(bounds::DIGEST))]
    pub digest: String,

    /// Total size in bytes of the manifest, the config and the compressed layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub size: Option<i64>,
}
