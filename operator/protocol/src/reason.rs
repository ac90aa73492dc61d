//! Why a stage run ended the way it did, as a closed set: the stable reason a stage reports
//! ([`StageReason`]), the process exit code `stagecoach stage` exits with ([`ExitCode`]), and
//! the one mapping from a stage's failure onto the ImageBuild's `Succeeded` condition reason
//! ([`StageReason::condition`]). Every match here is exhaustive on purpose: a new reason does
//! not compile until it has an exit code and a condition.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::condition::Reason;

/// The process exit code of a stage run, which the controller reads from the pod's
/// container status without parsing logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ExitCode {
    /// The stage succeeded.
    Ok,
    /// An instruction failed (a RUN exited non-zero, a COPY source is missing): the user's
    /// Dockerfile or context must change; retrying does not help.
    InstructionFailed,
    /// The stage's input is invalid (bad expansion, unknown user, unsupported feature, a job
    /// that does not match the pod it runs in).
    BadInput,
    /// Something below the build failed (I/O, store, runtime): a retry may succeed.
    Infrastructure,
}

impl ExitCode {
    /// Every exit code.
    pub const ALL: [ExitCode; 4] = [
        ExitCode::Ok,
        ExitCode::InstructionFailed,
        ExitCode::BadInput,
        ExitCode::Infrastructure,
    ];

    /// The numeric process exit code.
    pub fn code(self) -> i32 {
        match self {
            ExitCode::Ok => 0,
            ExitCode::InstructionFailed => 1,
            ExitCode::BadInput => 2,
            ExitCode::Infrastructure => 3,
        }
    }

    /// The exit code a process exited with; anything else (a signal, an OOM kill's 137) is
    /// not a stage's own verdict and reads as `None`.
    pub fn from_code(code: i32) -> Option<ExitCode> {
        ExitCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Whether running the stage again may give another result.
    pub fn retryable(self) -> bool {
        match self {
            ExitCode::Infrastructure => true,
            ExitCode::Ok | ExitCode::InstructionFailed | ExitCode::BadInput => false,
        }
    }
}

/// The stable reason of a failed stage run, in its result, the stage's status entry and
/// metric labels. Add reasons, never rename them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StageReason {
    /// A RUN exited non-zero.
    RunFailed,
    /// An instruction could not be expanded or applied.
    InvalidInstruction,
    /// COPY/ADD could not be planned or written (a missing source, say).
    CopyFailed,
    /// An `ADD <url>` download did not match its `--checksum`.
    ChecksumMismatch,
    /// An `ADD <url>` download failed (4xx: the instruction; connection or 5xx: a retry may
    /// pass; the exit code tells which).
    DownloadFailed,
    /// A `USER` or `--chown` name is not in the stage's root.
    UnknownUser,
    /// A feature this executor does not support yet.
    Unsupported,
    /// An instruction names a stage, image or secret the job does not provide.
    MissingInput,
    /// A `RUN --mount` target is not mounted where a runner that cannot mount needs it (the
    /// pod spec does not match the plan).
    MountMissing,
    /// The stage job itself cannot be read or does not fit its Dockerfile.
    InvalidJob,
    /// The runner could not run the process.
    RunnerFailed,
    /// Walking the root failed.
    SnapshotFailed,
    /// Writing a layer failed.
    LayerWriteFailed,
    /// Applying a layer (a cache hit, a parent stage's layer) failed.
    LayerApplyFailed,
    /// The content store failed.
    StoreFailed,
    /// Reading a source for a cache key failed.
    SourceReadFailed,
    /// A path could not be resolved inside a root.
    PathResolveFailed,
    /// The image config could not be read or written.
    ConfigFailed,
    /// Other file-system work failed.
    IoFailed,
    /// An image `COPY --from` names could not be pulled into the pod (the registry, a
    /// retry may pass).
    PullFailed,
    /// A disk the executor writes to is full, other than the cache volume: the container's
    /// root file system on the node (another try may land elsewhere).
    NoSpace,
    /// The cache volume is full (writing a layer, a config or an export): every try on it
    /// fails the same way, so the controller does not retry.
    CacheFull,
    /// The files an earlier build exported for a stage that needed no pod in this one
    /// (`exports/<inputs>/` on the cache volume) are gone, garbage collection having removed
    /// them: the controller runs that stage and tries this one again.
    InputGone,
}

impl StageReason {
    /// Every stage reason.
    pub const ALL: [StageReason; 23] = [
        StageReason::RunFailed,
        StageReason::InvalidInstruction,
        StageReason::CopyFailed,
        StageReason::ChecksumMismatch,
        StageReason::DownloadFailed,
        StageReason::UnknownUser,
        StageReason::Unsupported,
        StageReason::MissingInput,
        StageReason::MountMissing,
        StageReason::InvalidJob,
        StageReason::RunnerFailed,
        StageReason::SnapshotFailed,
        StageReason::LayerWriteFailed,
        StageReason::LayerApplyFailed,
        StageReason::StoreFailed,
        StageReason::SourceReadFailed,
        StageReason::PathResolveFailed,
        StageReason::ConfigFailed,
        StageReason::IoFailed,
        StageReason::PullFailed,
        StageReason::NoSpace,
        StageReason::CacheFull,
        StageReason::InputGone,
    ];

    /// The reason as results, status and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            StageReason::RunFailed => "RunFailed",
            StageReason::InvalidInstruction => "InvalidInstruction",
            StageReason::CopyFailed => "CopyFailed",
            StageReason::ChecksumMismatch => "ChecksumMismatch",
            StageReason::DownloadFailed => "DownloadFailed",
            StageReason::UnknownUser => "UnknownUser",
            StageReason::Unsupported => "Unsupported",
            StageReason::MissingInput => "MissingInput",
            StageReason::MountMissing => "MountMissing",
            StageReason::InvalidJob => "InvalidJob",
            StageReason::RunnerFailed => "RunnerFailed",
            StageReason::SnapshotFailed => "SnapshotFailed",
            StageReason::LayerWriteFailed => "LayerWriteFailed",
            StageReason::LayerApplyFailed => "LayerApplyFailed",
            StageReason::StoreFailed => "StoreFailed",
            StageReason::SourceReadFailed => "SourceReadFailed",
            StageReason::PathResolveFailed => "PathResolveFailed",
            StageReason::ConfigFailed => "ConfigFailed",
            StageReason::IoFailed => "IoFailed",
            StageReason::PullFailed => "PullFailed",
            StageReason::NoSpace => "NoSpace",
            StageReason::CacheFull => "CacheFull",
            StageReason::InputGone => "InputGone",
        }
    }

    /// The exit code a failure with this reason gives, where the reason alone decides it.
    /// `DownloadFailed` is the one reason whose code depends on the failure (a 404 against a
    /// refused connection); it answers `None` and the executor decides.
    pub fn exit_code(self) -> Option<ExitCode> {
        match self {
            StageReason::RunFailed | StageReason::CopyFailed | StageReason::ChecksumMismatch => {
                Some(ExitCode::InstructionFailed)
            }
            StageReason::InvalidInstruction
            | StageReason::UnknownUser
            | StageReason::Unsupported
            | StageReason::MissingInput
            | StageReason::MountMissing
            | StageReason::InvalidJob => Some(ExitCode::BadInput),
            StageReason::DownloadFailed => None,
            StageReason::RunnerFailed
            | StageReason::SnapshotFailed
            | StageReason::LayerWriteFailed
            | StageReason::LayerApplyFailed
            | StageReason::StoreFailed
            | StageReason::SourceReadFailed
            | StageReason::PathResolveFailed
            | StageReason::ConfigFailed
            | StageReason::IoFailed
            | StageReason::PullFailed
            | StageReason::NoSpace
            | StageReason::CacheFull
            | StageReason::InputGone => Some(ExitCode::Infrastructure),
        }
    }

    /// The ImageBuild condition reason a build that failed with this stage failure gets
    /// (after the controller's retries for retryable exit codes). What the user's Dockerfile
    /// or context did is `StageFailed`; what the pod, its node or the controller did is
    /// `PodFailed`.
    pub fn condition(self) -> Reason {
        match self {
            StageReason::RunFailed
            | StageReason::InvalidInstruction
            | StageReason::CopyFailed
            | StageReason::ChecksumMismatch
            | StageReason::DownloadFailed
            | StageReason::UnknownUser
            | StageReason::Unsupported
            | StageReason::MissingInput => Reason::StageFailed,
            StageReason::MountMissing
            | StageReason::InvalidJob
            | StageReason::RunnerFailed
            | StageReason::SnapshotFailed
            | StageReason::LayerWriteFailed
            | StageReason::LayerApplyFailed
            | StageReason::StoreFailed
            | StageReason::SourceReadFailed
            | StageReason::PathResolveFailed
            | StageReason::ConfigFailed
            | StageReason::IoFailed
            | StageReason::PullFailed
            | StageReason::NoSpace
            | StageReason::CacheFull
            | StageReason::InputGone => Reason::PodFailed,
        }
    }

    /// The reason a string names, if any.
    pub fn parse(s: &str) -> Option<StageReason> {
        StageReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for StageReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The condition reason for a stage container that ended with `code` and, when it wrote a
/// result, the reason in it: a stage's own verdict maps through [`StageReason::condition`];
/// an exit code that is not one of ours (a signal, an OOM kill, a missing binary) is the
/// pod's failure.
pub fn condition_for_exit(code: i32, reason: Option<StageReason>) -> Reason {
    match (ExitCode::from_code(code), reason) {
        (Some(ExitCode::Ok), _) => Reason::Succeeded,
        (Some(_), Some(reason)) => reason.condition(),
        (Some(ExitCode::InstructionFailed | ExitCode::BadInput), None) => Reason::StageFailed,
        (Some(ExitCode::Infrastructure) | None, None) | (None, Some(_)) => Reason::PodFailed,
    }
}
