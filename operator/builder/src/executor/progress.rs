//! Progress events of a stage run, printed by the CLI and written to a builder pod's log.
use super::*;

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
