//! Builds on one machine (`stagecoach build`): the plan's waves run as [`StageJob`]s, each
//! over its own root (an overlay mount over an unpacked image kept in the cache, or a plain
//! directory), stages of one wave on their own threads, RUN under runc. Each stage goes
//! through [`crate::job::run_job`], the same wiring a builder pod's `stagecoach stage` uses;
//! what is local is only how roots are made ([`roots`]) and scheduled ([`waves`]).
//!
//! The binary pulls images (it owns the async registry client) and hands them in as
//! [`PulledImage`]s; progress lines go to the [`Log`] it gives.
//!
//! [`StageJob`]: stagecoach_protocol::StageJob

pub mod promote;
pub mod roots;
pub mod waves;

use std::collections::BTreeMap;
use std::path::PathBuf;

use stagecoach_oci::layer::ApplyError;
use stagecoach_oci::{Digest, ImageConfig};
use stagecoach_protocol::LayerRecord;

use crate::executor::ExecutorError;
use crate::job::JobError;

pub use roots::{ChainStack, RootCache, unmount_all_under};
pub use waves::{Done, LocalBuild, WorkDir};

/// Where progress lines go (standard error for the CLI).
pub type Log = fn(&str);

/// An image pulled into the content store.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The reference pinned to its manifest digest.
    pub reference: String,
    /// Its manifest's digest (names its unpacked root in the cache).
    pub manifest: Digest,
    /// Its config.
    pub config: ImageConfig,
    /// Its layers, in order.
    pub layers: Vec<LayerRecord>,
}

/// The images a build uses, by the reference text the Dockerfile wrote (after expansion).
pub type Pulled = BTreeMap<String, PulledImage>;

/// Why a local build failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A stage's instruction failed; the message names its line, and the output's last
    /// lines follow for a failing RUN.
    #[error("stage {stage}: {source}{}", tail_text(tail))]
    Stage {
        /// The stage's label.
        stage: String,
        /// The executor's error.
        source: Box<ExecutorError>,
        /// The failing RUN's last output lines.
        tail: Vec<String>,
    },
    /// A stage's job could not start.
    #[error("stage {stage}: {source}")]
    Job {
        /// The stage's label.
        stage: String,
        /// Why.
        source: Box<JobError>,
    },
    /// A stage ran but left no image config.
    #[error("stage {stage}: the stage produced no config")]
    NoConfig {
        /// The stage's label.
        stage: String,
    },
    /// A stage's thread panicked.
    #[error("stage {stage}: the stage's thread panicked")]
    Panicked {
        /// The stage's label.
        stage: String,
    },
    /// An image the plan needs was not handed in.
    #[error("image {image} was not pulled")]
    NotPulled {
        /// The image as the Dockerfile names it.
        image: String,
    },
    /// A stage the plan runs first did not finish.
    #[error("stage {stage}: stage {needed} has not run")]
    NotRun {
        /// The stage's label.
        stage: String,
        /// The stage it needs.
        needed: usize,
    },
    /// A cache-hit layer could not be unpacked into the chain cache.
    #[error("unpacking layer {layer} into the chain cache: {source}")]
    Chain {
        /// The layer.
        layer: Digest,
        /// The cause.
        source: ApplyError,
    },
    /// An image config could not be encoded for a job.
    #[error("stage {stage}: cannot encode its base image config: {source}")]
    Encode {
        /// The stage's label.
        stage: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// A file or mount operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n  last output:");
    for line in tail {
        out.push_str("\n  | ");
        out.push_str(line);
    }
    out
}
