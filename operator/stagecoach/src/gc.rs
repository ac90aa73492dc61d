//! `stagecoach gc`: garbage collection of one cache volume, what the controller's cache-GC
//! pod runs ([`stagecoach_builder::gc`] does the work). The report goes to standard error and,
//! as JSON, to the termination message, where the controller reads it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Arguments of `stagecoach gc`.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// The cache root.
    #[arg(long, value_name = "DIR")]
    cache: PathBuf,
    /// Nothing used at or after this time (seconds since the epoch: the start of the oldest
    /// running build) is removed.
    #[arg(long, value_name = "SECONDS")]
    in_use_since: u64,
    /// Keys, mounts and unreferenced blobs unused for longer go.
    #[arg(long, value_name = "SECONDS")]
    max_age: u64,
    /// Then the least recently used go until the cache holds at most this many bytes.
    #[arg(long, value_name = "BYTES")]
    max_bytes: Option<u64>,
    /// A running build's uid: its directory and the blobs its results name stay.
    #[arg(long = "keep-build", value_name = "UID")]
    keep_builds: Vec<String>,
    /// Where the report goes, as JSON.
    #[arg(long, value_name = "FILE", default_value = "/dev/termination-log")]
    termination_log: PathBuf,
}

/// Runs `stagecoach gc`.
pub fn run(args: &GcArgs) -> Result<(), stagecoach_builder::gc::GcError> {
    let policy = stagecoach_builder::gc::Policy {
        now: SystemTime::now(),
        in_use_since: SystemTime::UNIX_EPOCH + Duration::from_secs(args.in_use_since),
        max_age: Duration::from_secs(args.max_age),
        max_bytes: args.max_bytes,
        keep_builds: args.keep_builds.iter().cloned().collect::<BTreeSet<_>>(),
    };
    let started = std::time::Instant::now();
    let report = stagecoach_builder::gc::collect(&args.cache, &policy)?;
    tracing::info!(
        "[gc] removed {} builds, {} keys, {} blobs, {} mounts, {} exports ({} bytes) in {:.1}s; {} bytes left{}{}",
        report.builds,
        report.keys,
        report.blobs,
        report.mounts,
        report.exports,
        report.freed_bytes,
        started.elapsed().as_secs_f64(),
        report.bytes,
        if report.over_limit_bytes > 0 {
            format!(
                ", {} over the limit but in use by running builds",
                report.over_limit_bytes
            )
        } else {
            String::new()
        },
        if report.failed > 0 {
            format!(
                "; {} could not be removed: {}",
                report.failed,
                report.errors.join("; ")
            )
        } else {
            String::new()
        }
    );
    let json = serde_json::to_vec(&report).unwrap_or_default();
    if let Err(e) = std::fs::write(&args.termination_log, json) {
        tracing::warn!(
            "cannot write the report to {}: {e}",
            args.termination_log.display()
        );
    }
    Ok(())
}
