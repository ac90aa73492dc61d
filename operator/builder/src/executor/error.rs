//! Why a stage failed: [`ExecutorError`], one variant per step that can fail, each keeping
//! its source, with the stable [`StageReason`] and typed [`ExitCode`] it reports.
use super::*;

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
    /// Mount points for a RUN's mounts could not be made or removed.
    #[error(transparent)]
    Placeholder(#[from] crate::placeholders::PlaceholderError),
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

/// Whether an error is, or was caused by, ENOSPC: through the `source` chain, or in the
/// text where a layer below kept only the message (std prints it as "(os error 28)").
pub fn no_space(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(28))
        {
            return true;
        }
        next = e.source();
    }
    error.to_string().contains("(os error 28)")
}

impl ExecutorError {
    /// Whether the failed write was into the content store, which is on the cache volume.
    fn writes_the_cache(&self) -> bool {
        matches!(
            self,
            ExecutorError::Store(_)
                | ExecutorError::Layer(LayerWriteError::Output(_) | LayerWriteError::Store(_))
        )
    }

    /// A stable reason for status, events and metrics.
    pub fn reason(&self) -> StageReason {
        // A RUN that fills a disk fails on its own (RunFailed); the executor's own writes
        // that do are NoSpace, whatever step they were in.
        if !matches!(self, ExecutorError::RunFailed { .. }) && no_space(self) {
            return if self.writes_the_cache() {
                StageReason::CacheFull
            } else {
                StageReason::NoSpace
            };
        }
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
            ExecutorError::Io { .. } | ExecutorError::Placeholder(_) => StageReason::IoFailed,
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

pub(super) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ExecutorError + 'a {
    move |source| ExecutorError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executors_own_enospc_is_no_space_and_a_runs_is_not() {
        let full = ExecutorError::Io {
            action: "write",
            path: "/cache/blobs/sha256/x".into(),
            source: io::Error::from_raw_os_error(28),
        };
        assert_eq!(full.reason(), StageReason::NoSpace);
        let store = ExecutorError::Layer(LayerWriteError::Output(io::Error::from_raw_os_error(28)));
        assert_eq!(store.reason(), StageReason::CacheFull);
        let other = ExecutorError::Io {
            action: "write",
            path: "/cache/blobs/sha256/x".into(),
            source: io::Error::from_raw_os_error(5),
        };
        assert_eq!(other.reason(), StageReason::IoFailed);
        // The instruction's text is the user's: it never makes a RUN's failure NoSpace.
        let run = ExecutorError::RunFailed {
            line: 2,
            instruction: "RUN echo '(os error 28)'; exit 1".into(),
            exit_code: 1,
            tail: Vec::new(),
        };
        assert_eq!(run.reason(), StageReason::RunFailed);
    }
}
