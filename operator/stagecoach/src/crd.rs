//! `stagecoach crd`: prints the ImageBuild CustomResourceDefinition as YAML, the same text
//! that is committed under `crds/`.

/// Arguments of `stagecoach crd`.
#[derive(Debug, clap::Args)]
pub struct CrdArgs {}

/// Why `stagecoach crd` failed.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// The CRD could not be rendered as YAML.
    #[error("cannot render the CRD as YAML: {0}")]
    Render(String),
}

impl CrdError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        1
    }
}

/// Runs `stagecoach crd`.
pub fn run(_args: &CrdArgs) -> Result<(), CrdError> {
    Err(CrdError::Render("not implemented yet".into()))
}
