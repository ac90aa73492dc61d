//! What a stage run reports: [`StageResult`], written by `stagecoach stage` as its container's
//! termination message (at most 4 KiB, [`StageResult::to_json_within`]) and in full to the
//! cache volume, and printed as a summary by `stagecoach build`.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::reason::StageReason;

/// A layer as results, jobs and cache records name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerRecord {
    /// Media type of the blob.
    pub media_type: String,
    /// Digest of the blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the blob.
    pub size: u64,
}

/// Whether a stage succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Every instruction ran.
    Succeeded,
    /// One failed.
    Failed,
}

/// The failing step of a failed stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedStep {
    /// The instruction as written.
    pub instruction: String,
    /// Its line.
    pub line: usize,
    /// A RUN's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// A RUN's last output lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tail: Vec<String>,
}

/// Timing of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    /// 1-based step number.
    pub step: usize,
    /// The line.
    pub line: usize,
    /// The keyword (`RUN`, `COPY`, …).
    pub keyword: String,
    /// Whether it was a cache hit.
    pub cached: bool,
    /// Milliseconds it took.
    pub duration_ms: u64,
    /// The layer it produced, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<Digest>,
}

/// The stage's structured result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageResult {
    /// Succeeded or failed.
    pub outcome: Outcome,
    /// Stable reason on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<StageReason>,
    /// Human message on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The failing step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<FailedStep>,
    /// The process exit code.
    pub exit_code: i32,
    /// All layers of the image, base layers first.
    pub layers: Vec<LayerRecord>,
    /// Digest of the image config blob in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<Digest>,
    /// Size of that blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_size: Option<u64>,
    /// Steps served from the cache.
    pub cache_hits: usize,
    /// Per-step timings.
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    /// Total milliseconds.
    pub duration_ms: u64,
}

/// The size of a pod's termination message.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;

impl StageResult {
    /// A failure before any step ran (an unreadable job, say).
    pub fn failed_early(reason: StageReason, exit_code: i32, message: String) -> Self {
        StageResult {
            outcome: Outcome::Failed,
            reason: Some(reason),
            message: Some(message),
            failed_step: None,
            exit_code,
            layers: Vec::new(),
            config_digest: None,
            config_size: None,
            cache_hits: 0,
            steps: Vec::new(),
            duration_ms: 0,
        }
    }

    /// JSON of at most `limit` bytes (a pod's termination message holds
    /// [`TERMINATION_MESSAGE_LIMIT`]): step timings are dropped first, then output tail
    /// lines, then the message and the instruction are cut. Layers are never dropped, so a
    /// result too big even then (thousands of layers) comes out over the limit, and the
    /// caller reads the full result from the cache volume instead.
    pub fn to_json_within(&self, limit: usize) -> Vec<u8> {
        let mut r = self.clone();
        loop {
            let bytes = serde_json::to_vec(&r).unwrap_or_default();
            if bytes.len() <= limit {
                return bytes;
            }
            if !r.steps.is_empty() {
                r.steps.clear();
            } else if let Some(f) = r.failed_step.as_mut().filter(|f| !f.tail.is_empty()) {
                f.tail.remove(0);
            } else if let Some(m) = r.message.as_mut().filter(|m| m.len() > 16) {
                halve(m);
            } else if let Some(f) = r.failed_step.as_mut().filter(|f| f.instruction.len() > 16) {
                halve(&mut f.instruction);
            } else {
                return bytes;
            }
        }
    }
}

/// Cuts a string to about half, on a character boundary.
fn halve(s: &mut String) {
    let mut cut = s.len() / 2;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
}
