//! `stagecoach plan`: parses a Dockerfile, plans the stages the targets need and prints the
//! plan as text for people or as JSON (a documented contract, see docs/cli.md).

/// Arguments of `stagecoach plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {}

/// Why `stagecoach plan` failed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Placeholder.
    #[error("not implemented yet")]
    NotImplemented,
}

impl PlanError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        1
    }
}

/// Runs `stagecoach plan`.
pub fn run(_args: &PlanArgs) -> Result<(), PlanError> {
    Err(PlanError::NotImplemented)
}
