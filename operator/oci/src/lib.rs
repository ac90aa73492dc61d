//! OCI images on disk: deterministic layer tarballs with whiteouts, image configs and
//! manifests, and the content-addressed store that builder pods share on the cache volume.
//!
//! Everything here is synchronous and streams: a layer is never held in memory, and every
//! digest (compressed, uncompressed) is computed while the bytes pass by. Nothing here knows
//! about Kubernetes or registries; the registry client builds on these types.

pub mod compression;
pub mod config;
pub mod digest;
pub mod json;
pub mod layer;
pub mod layout;
pub mod manifest;
pub mod media_type;
pub mod store;

pub use compression::Compression;
pub use config::{ContainerConfig, HealthConfig, History, ImageConfig, RootFs};
pub use digest::Digest;
pub use layer::{ApplyOptions, ApplyStats, Change, LayerInfo, LayerOptions, LayerSource};
pub use manifest::{Descriptor, ImageIndex, ImageManifest, Manifest, Platform, parse_manifest};
pub use store::{BlobInfo, ContentStore};
