//! The contract between the stage executor and whatever runs a `RUN` step's process. In a
//! builder pod the process runs in place (the pod's root filesystem is the stage's root); on
//! one machine (`stagecoach build`) it runs under runc over an unpacked root. The executor
//! prepares everything (argv, environment, user, working directory, mounts already resolved
//! to host paths) and the runner only starts the process, streams its output and reports how
//! it ended; it never decides what a step means.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use crate::users::ProcessUser;

/// How a RUN step's mount appears inside the container. The executor resolves cache ids,
/// stage roots and secrets to host paths before the runner sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMount {
    /// A host directory or file bound at `target`.
    Bind {
        /// Host path.
        source: PathBuf,
        /// Path inside the container.
        target: PathBuf,
        /// Whether writes are refused.
        readonly: bool,
    },
    /// An empty in-memory directory at `target`.
    Tmpfs {
        /// Path inside the container.
        target: PathBuf,
        /// Size limit in bytes, when given.
        size_bytes: Option<u64>,
    },
}

/// Network access for one RUN step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunNetwork {
    /// The host's (or pod's) network: the default for builds.
    Host,
    /// No network at all (`RUN --network=none`).
    None,
}

/// Everything a runner needs to start one RUN step's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    /// The root filesystem the process sees as `/`.
    pub rootfs: PathBuf,
    /// The program and its arguments (already through the stage's SHELL for shell form).
    pub argv: Vec<String>,
    /// The environment, in order (later entries win for duplicates).
    pub env: Vec<(String, String)>,
    /// The working directory inside the root (exists before the run).
    pub cwd: PathBuf,
    /// Who the process runs as.
    pub user: ProcessUser,
    /// Extra mounts, applied in order.
    pub mounts: Vec<RunMount>,
    /// Network access.
    pub network: RunNetwork,
    /// Hostname inside the container.
    pub hostname: String,
    /// Give up after this long.
    pub timeout: Option<Duration>,
    /// How many trailing output lines to keep for failure reports.
    pub tail_lines: usize,
}

/// How a RUN step's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// Exit code (128 + signal number when killed by a signal).
    pub exit_code: i32,
    /// The last `tail_lines` lines of combined stdout and stderr.
    pub tail: Vec<String>,
    /// Wall-clock time the process took.
    pub duration: Duration,
}

/// Why a runner could not run the process at all (a non-zero exit is not an error here).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The runtime (runc) is missing or failed before the process started.
    #[error("cannot start the RUN process: {0}")]
    Start(String),
    /// The process exceeded its timeout and was killed.
    #[error("the RUN process did not finish within {0:?} and was killed")]
    Timeout(Duration),
    /// Preparing or cleaning up the container failed.
    #[error("container setup failed: {0}")]
    Setup(String),
}

/// Runs RUN steps. Implementations stream each output line to `on_line` as it arrives (for
/// progress and logs) and leave nothing mounted or running when they return, also on error.
pub trait Runner: Send + Sync {
    /// Whether the runner makes the request's mounts itself (runc does). A runner that
    /// cannot (the in-place runner of a builder pod) gets steps whose every mount target is
    /// already mounted: the executor checks that before the step runs.
    fn can_mount(&self) -> bool {
        true
    }

    /// Runs one process to completion.
    fn run(
        &self,
        request: &RunRequest,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<RunOutcome, RunnerError>;
}

/// The last lines of a RUN's output, for failure reports; shared by the runners.
#[derive(Debug)]
pub(crate) struct OutputTail {
    keep: usize,
    lines: VecDeque<String>,
}

impl OutputTail {
    /// Keeps the last `keep` lines.
    pub(crate) fn new(keep: usize) -> Self {
        OutputTail {
            keep,
            lines: VecDeque::with_capacity(keep.min(1024)),
        }
    }

    /// Adds a line, dropping the oldest when full.
    pub(crate) fn push(&mut self, line: &str) {
        if self.keep == 0 {
            return;
        }
        if self.lines.len() == self.keep {
            self.lines.pop_front();
        }
        self.lines.push_back(line.to_string());
    }

    /// The kept lines, oldest first.
    pub(crate) fn into_lines(self) -> Vec<String> {
        self.lines.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        let mut tail = OutputTail::new(2);
        for l in ["a", "b", "c"] {
            tail.push(l);
        }
        assert_eq!(tail.into_lines(), vec!["b", "c"]);
        let mut none = OutputTail::new(0);
        none.push("x");
        assert!(none.into_lines().is_empty());
    }
}
