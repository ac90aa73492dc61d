//! `stagecoach plan`: parses a Dockerfile, plans the stages the targets need and prints the
//! plan as text for people or as JSON (a documented contract, see docs/cli.md).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use stagecoach_dockerfile::planner::{self, PlanOptions};

/// What names a Dockerfile and its targets, for `plan` and `build` alike.
#[derive(Debug, clap::Args)]
pub struct DockerfileArgs {
    /// The Dockerfile (default: CONTEXT/Dockerfile; `-` reads standard input).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// A stage to build (repeatable; default: the last stage).
    #[arg(long = "target", value_name = "T")]
    pub targets: Vec<String>,
    /// A build argument KEY=VALUE (repeatable); KEY alone takes the value from the environment.
    #[arg(long = "build-arg", value_name = "K=V")]
    pub build_args: Vec<String>,
}

impl DockerfileArgs {
    /// The Dockerfile's path: `-f`, else `CONTEXT/Dockerfile`.
    pub fn path(&self, context: &Path) -> PathBuf {
        self.file
            .clone()
            .unwrap_or_else(|| context.join("Dockerfile"))
    }

    /// Reads the Dockerfile (`-` is standard input); returns its text and the name messages
    /// use for it.
    pub fn read(&self, context: &Path) -> Result<(String, String), PlanError> {
        let path = self.path(context);
        if path.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|source| PlanError::Read {
                    path: "standard input".into(),
                    source,
                })?;
            return Ok((s, "standard input".into()));
        }
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| PlanError::Read {
            path: shown.clone(),
            source,
        })?;
        Ok((text, shown))
    }
}

/// Arguments of `stagecoach plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    dockerfile: DockerfileArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// The build context directory.
    #[arg(value_name = "CONTEXT", default_value = ".")]
    context: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

/// Why `stagecoach plan` failed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The Dockerfile could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A `--build-arg` is malformed.
    #[error("--build-arg {0:?}: expected KEY=VALUE, or KEY set in the environment")]
    BuildArg(String),
    /// The Dockerfile is invalid or the targets cannot be planned.
    #[error("{path}: {source}")]
    Plan {
        /// The Dockerfile path.
        path: String,
        /// The cause.
        source: planner::PlanError,
    },
    /// The plan could not be printed as JSON.
    #[error("cannot render the plan as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl PlanError {
    /// The process exit code: 2 for bad usage, 1 for a Dockerfile that cannot be planned.
    pub fn exit_code(&self) -> u8 {
        match self {
            PlanError::BuildArg(_) | PlanError::Read { .. } => 2,
            PlanError::Plan { .. } | PlanError::Json(_) => 1,
        }
    }
}

/// Parses `--build-arg` values; `KEY` alone reads the value from the environment as
/// `docker build` does, and is skipped when unset.
pub fn parse_build_args(raw: &[String]) -> Result<BTreeMap<String, String>, PlanError> {
    let mut out = BTreeMap::new();
    for item in raw {
        match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            Some(_) => return Err(PlanError::BuildArg(item.clone())),
            None if item.is_empty() => return Err(PlanError::BuildArg(item.clone())),
            None => {
                if let Ok(v) = std::env::var(item) {
                    out.insert(item.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

/// Runs `stagecoach plan`.
pub fn run(args: &PlanArgs) -> Result<(), PlanError> {
    let (text, shown) = args.dockerfile.read(&args.context)?;
    let options = PlanOptions {
        targets: args.dockerfile.targets.clone(),
        build_args: parse_build_args(&args.dockerfile.build_args)?,
        ..PlanOptions::default()
    };
    let plan = planner::plan_text(&text, &options).map_err(|source| PlanError::Plan {
        path: shown,
        source,
    })?;
    for warning in &plan.warnings {
        tracing::warn!("warning: {warning}");
    }
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
        Format::Text => print!("{}", plan.render_text()),
    }
    Ok(())
}
