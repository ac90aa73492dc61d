//! Condition types and reasons of an ImageBuild. The reason strings are API: users match on
//! them (`kubectl get ib` shows them, scripts wait on them), and the controller uses the same
//! string for the condition, the event and the metric label. So each one is spelled once
//! here, and a test pins the spellings; add reasons, never rename them. They live in the
//! stage protocol because a stage's failure maps onto them ([`crate::reason`]).

use std::fmt;
use std::str::FromStr;

/// The condition type that says whether the build succeeded (`kubectl wait
/// --for=condition=Succeeded`).
pub const SUCCEEDED: &str = "Succeeded";

/// The condition GitOps tools and `kstatus` read: True once the image is pushed, False when
/// the build failed, Unknown while it runs. It mirrors `Succeeded`.
pub const READY: &str = "Ready";

/// `kstatus`'s "abnormal-true" condition for work in progress: True while the build is
/// pending or running.
pub const RECONCILING: &str = "Reconciling";

/// `kstatus`'s "abnormal-true" condition for a failure that needs a change to the spec (or a
/// new try): True when the build failed.
pub const STALLED: &str = "Stalled";

/// A condition's status, as Kubernetes spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet (the build is still running).
    Unknown,
}

impl ConditionStatus {
    /// The status as it appears in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason of the `Succeeded` condition. Each reason belongs to exactly one status
/// ([`Reason::status`]), so a reason alone tells whether the build is running, done or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Accepted, not started yet: an image the build starts from could not be resolved yet
    /// (its registry did not answer; retried with backoff).
    Pending,
    /// The context is being fetched or stage pods are running.
    Building,
    /// Every target was built and every image pushed.
    Succeeded,
    /// The spec passed the schema but cannot be used: an inline file path escapes the
    /// context, an image reference does not parse, a referenced Secret, ConfigMap or claim is
    /// missing or of the wrong kind.
    InvalidSpec,
    /// The git repository could not be fetched.
    SourceFetchFailed,
    /// The Dockerfile could not be read, parsed or planned (syntax error, a stage that refers
    /// to a later one, more stages than the status can report).
    InvalidDockerfile,
    /// A target names a stage the Dockerfile does not define.
    UnknownTarget,
    /// An image the build starts from (`FROM`, `COPY --from=<image>`) could not be
    /// resolved: it does not exist, its registry refused the credentials, or the registry
    /// stayed unreachable.
    ResolveFailed,
    /// An instruction of a stage failed; the stage's entry in status.stages has the log tail.
    StageFailed,
    /// A builder pod failed for reasons outside the Dockerfile (eviction, node loss, base
    /// image pull) more often than retries allow.
    PodFailed,
    /// Pushing an image to the registry failed.
    PushFailed,
    /// The build ran longer than spec.timeout.
    Timeout,
}

impl Reason {
    /// Every reason, in the order a build meets them.
    pub const ALL: [Reason; 12] = [
        Reason::Pending,
        Reason::Building,
        Reason::Succeeded,
        Reason::InvalidSpec,
        Reason::SourceFetchFailed,
        Reason::InvalidDockerfile,
        Reason::UnknownTarget,
        Reason::ResolveFailed,
        Reason::StageFailed,
        Reason::PodFailed,
        Reason::PushFailed,
        Reason::Timeout,
    ];

    /// The reason as it appears in the API, in events and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Pending => "Pending",
            Reason::Building => "Building",
            Reason::Succeeded => "Succeeded",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::SourceFetchFailed => "SourceFetchFailed",
            Reason::InvalidDockerfile => "InvalidDockerfile",
            Reason::UnknownTarget => "UnknownTarget",
            Reason::ResolveFailed => "ResolveFailed",
            Reason::StageFailed => "StageFailed",
            Reason::PodFailed => "PodFailed",
            Reason::PushFailed => "PushFailed",
            Reason::Timeout => "Timeout",
        }
    }

    /// The status of the `Succeeded` condition that goes with this reason.
    pub fn status(self) -> ConditionStatus {
        match self {
            Reason::Pending | Reason::Building => ConditionStatus::Unknown,
            Reason::Succeeded => ConditionStatus::True,
            Reason::InvalidSpec
            | Reason::SourceFetchFailed
            | Reason::InvalidDockerfile
            | Reason::UnknownTarget
            | Reason::ResolveFailed
            | Reason::StageFailed
            | Reason::PodFailed
            | Reason::PushFailed
            | Reason::Timeout => ConditionStatus::False,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the [`Reason`]s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown ImageBuild condition reason {0:?}")]
pub struct UnknownReason(pub String);

impl FromStr for Reason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}
