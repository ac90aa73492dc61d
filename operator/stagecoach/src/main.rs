//! The `stagecoach` binary: one static executable that serves as controller, stage executor
//! and command-line tool. This file only parses the command line and hands each subcommand to
//! its module; the work lives in the library crates.

mod build;
mod clean;
mod controller;
mod crd;
mod fetch;
mod gc;
mod logging;
mod logs;
mod plan;
mod push;
mod stage;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "stagecoach",
    version,
    about = "Build container images from multi-stage Dockerfiles, one pod per stage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the operator: reconcile ImageBuilds (every namespace, or --namespace).
    Controller(controller::ControllerArgs),
    /// Print the CustomResourceDefinition YAML for ImageBuild.
    Crd(crd::CrdArgs),
    /// Build a Dockerfile's targets on this machine (RUN steps under runc; needs root).
    Build(build::BuildArgs),
    /// Print the logs of a build's pods, each line prefixed by its stage (also works as
    /// `kubectl stagecoach logs` with this binary on PATH as kubectl-stagecoach).
    Logs(logs::LogsArgs),
    /// Parse a Dockerfile and print its stage graph, the stages the targets need and the waves.
    Plan(plan::PlanArgs),
    /// Run one stage job in place (what a builder pod runs; RUN steps run in this container).
    Stage(stage::StageArgs),
    /// Push a built target's image (what a push pod runs; it alone holds the credentials).
    #[command(hide = true)]
    Push(push::PushArgs),
    /// A builder pod's init step: copy this binary and the build context into place.
    #[command(hide = true)]
    Prepare(stage::PrepareArgs),
    /// Check a git source out into the build's context (what a fetch pod runs; it alone holds
    /// the git credentials).
    #[command(hide = true)]
    Fetch(fetch::FetchArgs),
    /// Remove a deleted build's directory from the cache volume (what a cleanup pod runs).
    #[command(hide = true)]
    Clean(clean::CleanArgs),
    /// Remove what a cache volume no longer needs, by age and size (what a cache-GC pod runs).
    #[command(hide = true)]
    Gc(gc::GcArgs),
}

fn main() -> ExitCode {
    // The in-place runner's helper: first, before anything could start a thread, since it
    // drops credentials with per-thread system calls before it executes the step.
    let mut raw = std::env::args_os().skip(1);
    if raw.next().is_some_and(|a| a == "exec-step") {
        let rest: Vec<_> = raw.collect();
        return ExitCode::from(stage::exec_step(&rest));
    }
    let cli = Cli::parse();
    logging::init();
    // Each subcommand has its own error enum; here they only become a message and a code.
    let result = match cli.command {
        Command::Build(args) => build::run(&args).map_err(|e| (e.to_string(), e.exit_code())),
        Command::Crd(args) => crd::run(&args).map_err(|e| (e.to_string(), e.exit_code())),
        Command::Controller(args) => controller::run(&args).map_err(|e| (e.to_string(), 1)),
        Command::Logs(args) => logs::run(&args).map_err(|e| (e.to_string(), 1)),
        Command::Plan(args) => plan::run(&args).map_err(|e| (e.to_string(), e.exit_code())),
        Command::Stage(args) => return ExitCode::from(stage::run(&args)),
        Command::Fetch(args) => return ExitCode::from(fetch::run(&args)),
        Command::Push(args) => push::run(&args).map_err(|e| (format!("push: {e}"), 1)),
        Command::Prepare(args) => stage::prepare(&args).map_err(|e| (format!("prepare: {e}"), 1)),
        Command::Clean(args) => clean::run(&args).map_err(|e| (format!("clean: {e}"), 1)),
        Command::Gc(args) => gc::run(&args).map_err(|e| (format!("gc: {e} ({})", e.reason()), 1)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((message, code)) => {
            tracing::error!("error: {message}");
            ExitCode::from(code)
        }
    }
}
