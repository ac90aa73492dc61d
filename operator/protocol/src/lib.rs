//! The stage protocol: the wire contract between the controller and a stage run, shared by
//! `stagecoach stage` in a builder pod and by `stagecoach build` on one machine, so the two
//! paths cannot drift apart. A [`job::StageJob`] goes in; a [`result::StageResult`] and a
//! typed [`reason::ExitCode`] come out; [`reason::StageReason::condition`] maps a failure onto
//! the ImageBuild's condition reasons ([`condition`]). Also here, as the lowest crate that
//! every user of them links: typed digests ([`digest`]) and the cache volume's layout
//! ([`layout`]).
//!
//! Dependencies stay minimal (serde, sha2, thiserror): no tar, no HTTP, no Kubernetes, no
//! async runtime.

pub mod condition;
pub mod digest;
pub mod job;
pub mod layout;
pub mod reason;
pub mod result;

pub use digest::{Digest, DigestError};
pub use job::StageJob;
pub use layout::CacheLayout;
pub use reason::{ExitCode, StageReason};
pub use result::{LayerRecord, StageResult};
