//! The binary's one log sink: every progress line and diagnostic goes through `tracing` to
//! standard error. By default a line is exactly its message, so `stagecoach build`'s output
//! is what docs/cli.md shows; `STAGECOACH_LOG_FORMAT=json` gives one JSON object a line
//! (level, message, fields), for builder pods whose logs a collector parses.

use tracing_subscriber::fmt;

/// Installs the subscriber; later calls do nothing.
pub fn init() {
    let json = std::env::var("STAGECOACH_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_target(false);
    // A second subscriber is an error only tests could cause; the first one stays.
    let _ = if json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder
            .without_time()
            .with_level(false)
            .with_ansi(false)
            .try_init()
    };
}

/// One progress line (also what the local builder's `Log` hook calls).
pub fn line(text: &str) {
    tracing::info!("{text}");
}
