//! The `ImageBuild` custom resource (group `stagecoach.dev`, version `v1alpha1`): the spec a
//! user writes and the status the controller reports. Types only: no client code, so every
//! crate that needs the shape of an ImageBuild can depend on this one cheaply.
//!
//! The schema the API server enforces is generated from these types (`crd::crd_yaml`), and
//! its bounds are the constants in [`bounds`]; `docs/api.md` is the user-facing reference.

pub mod bounds;
pub mod crd;
pub mod reason;
mod schema;
pub mod spec;
pub mod status;
pub mod timeout;

pub use crd::{CRD_PATH, RenderError, crd, crd_yaml};
pub use reason::{ConditionStatus, READY, RECONCILING, Reason, STALLED, SUCCEEDED};
pub use spec::{
    BuildSecret, CacheSpec, ConfigMapSource, DEFAULT_DOCKERFILE, DEFAULT_TIMEOUT, GitSource,
    ImageBuild, ImageBuildSpec, InlineSource, SecretKeyReference, SecretReference, Source,
    SourceError, SourceKind, Target,
};
pub use status::{ImageBuildStatus, ImageStatus, SourceStatus, StageState, StageStatus};
pub use timeout::{InvalidTimeout, parse_timeout};
