//! `stagecoach crd`: prints the ImageBuild CustomResourceDefinition as YAML, the same text
//! that is committed under `crds/` (both come from `stagecoach_api::crd_yaml`, and a test in
//! that crate fails when they differ). Typical use: `stagecoach crd | kubectl apply -f -`.

use std::io::Write;

/// Arguments of `stagecoach crd`.
#[derive(Debug, clap::Args)]
pub struct CrdArgs {}

/// Why `stagecoach crd` failed.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// The CRD could not be rendered as YAML.
    #[error("cannot render the CRD as YAML: {0}")]
    Render(String),
    /// Standard output could not be written.
    #[error("cannot write the CRD to standard output: {0}")]
    Write(std::io::Error),
}

impl CrdError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        1
    }
}

/// Runs `stagecoach crd`.
pub fn run(_args: &CrdArgs) -> Result<(), CrdError> {
    let yaml = stagecoach_api::crd_yaml().map_err(|e| CrdError::Render(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    // write_all instead of print!: a closed pipe (`stagecoach crd | head`) is an error to
    // report, not a panic.
    match out.write_all(yaml.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // The reader has what it wanted; stopping early is not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CrdError::Write(e)),
    }
}
