//! The `stagecoach` binary: one static executable that serves as controller, stage executor
//! and command-line tool. This file only parses the command line and hands each subcommand to
//! its module; the work lives in the library crates.

mod build;
mod crd;
mod plan;

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
    /// Print the CustomResourceDefinition YAML for ImageBuild.
    Crd(crd::CrdArgs),
    /// Build a Dockerfile's targets on this machine (RUN steps under runc; needs root).
    Build(build::BuildArgs),
    /// Parse a Dockerfile and print its stage graph, the stages the targets need and the waves.
    Plan(plan::PlanArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Each subcommand has its own error enum; here they only become a message and a code.
    let result = match cli.command {
        Command::Build(args) => build::run(&args).map_err(|e| (e.to_string(), e.exit_code())),
        Command::Crd(args) => crd::run(&args).map_err(|e| (e.to_string(), e.exit_code())),
        Command::Plan(args) => plan::run(&args).map_err(|e| (e.to_string(), e.exit_code())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((message, code)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}
