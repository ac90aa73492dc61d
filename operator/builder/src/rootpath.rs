//! Path resolution inside a root as a chrooted process sees it. The rule has one home, in
//! `stagecoach-oci` (the layer applier needs it too); re-exported here for the executor's
//! modules.

pub use stagecoach_oci::rootpath::{Resolved, RootPathError, resolve};
