//! `stagecoach controller`: the operator. Wiring only; the controller is
//! `stagecoach_controller` (kubeconfig or in-cluster configuration, all namespaces unless
//! `--namespace` names one).

/// Arguments of `stagecoach controller`.
#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// Watch only this namespace (default: every namespace).
    #[arg(long, value_name = "NAMESPACE")]
    namespace: Option<String>,
}

/// Runs the controller until SIGTERM or SIGINT.
pub fn run(args: &ControllerArgs) -> Result<(), stagecoach_controller::RunError> {
    stagecoach_controller::main(args.namespace.as_deref())
}
