//! `stagecoach logs BUILD [-n NS] [-f]`: wiring only; the work is
//! `stagecoach_controller::logs`, the crate that talks to the Kubernetes API.

/// Arguments of `stagecoach logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The ImageBuild.
    #[arg(value_name = "BUILD")]
    build: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    namespace: Option<String>,
    /// Stream new lines and new pods until the build ends.
    #[arg(short = 'f', long)]
    follow: bool,
}

/// Prints the build's logs to standard output.
pub fn run(args: &LogsArgs) -> Result<(), stagecoach_controller::logs::LogsError> {
    stagecoach_controller::logs::main(&stagecoach_controller::logs::LogsOptions {
        build: args.build.clone(),
        namespace: args.namespace.clone(),
        follow: args.follow,
    })
}
