//! Stagecoach's Dockerfile front end: it turns Dockerfile text into a syntax tree
//! ([`parser`]), expands ARG and ENV references the way BuildKit does ([`shell`]), reads the
//! tree into typed instructions grouped by stage ([`instructions`]) and plans which stages a
//! build needs and in which order ([`planner`]), and holds the glob engine ([`pattern`]) and
//! the `.dockerignore` rules ([`dockerignore`]). Everything here is pure: no I/O, no clock, no
//! Kubernetes, so the controller, the stage executor and the CLI share one behaviour.

pub mod dockerignore;
pub mod instructions;
pub mod parser;
pub mod pattern;
pub mod planner;
pub mod shell;

pub use instructions::{Dockerfile, InstructionError};
pub use planner::{Plan, PlanError, PlanOptions};
