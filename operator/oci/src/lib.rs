//! OCI images on disk: deterministic layer tarballs with whiteouts, image configs and
//! manifests, and the content-addressed store that builder pods share on the cache volume.
//!
//! Everything here is synchronous and streams: a layer is never held in memory, and every
//! digest (compressed, uncompressed) is computed while the bytes pass by. Nothing here knows
//! about Kubernetes or registries; the registry client builds on these types.
//!
//! Choices worth knowing:
//! - Image types are our own serde types rather than `oci-spec`'s: its runtime config has
//!   no Healthcheck, OnBuild or Shell (Docker extensions every Dockerfile build needs), its
//!   maps are `HashMap`s, and unknown fields of a base image's config would be dropped.
//!   Ours keep unknown fields, and all hashing goes through [`json::to_canonical_vec`].
//! - The layer writer emits USTAR headers with PAX records only when needed (long names,
//!   large ids or sizes, xattrs), so the bytes depend on file content and metadata alone.
//! - The applier resolves parent paths inside the root the way the container sees them
//!   (absolute symlinks restart at the root, `..` stops there) instead of refusing every
//!   symlinked parent: Debian's merged `/usr` (`/bin -> usr/bin`) must keep working, and
//!   nothing can land outside the root either way. `..` in entry names is refused.
//! - Reproducibility across versions: the gzip and zstd bytes depend on the compressor
//!   version (zlib-rs, libzstd); the diffIDs do not. Upgrading either may change layer
//!   digests, never diffIDs.

pub mod atomic;
pub mod compression;
pub mod config;
pub mod digest;
pub mod json;
pub mod layer;
pub mod layout;
pub mod manifest;
pub mod media_type;
#[cfg(feature = "registry")]
pub mod registry;
pub mod rootpath;
pub mod store;

pub use compression::Compression;
pub use config::{ContainerConfig, HealthConfig, History, ImageConfig, RootFs, chain_ids};
pub use digest::Digest;
pub use layer::{ApplyOptions, ApplyStats, Change, LayerInfo, LayerOptions, LayerSource};
pub use manifest::{
    Descriptor, ImageIndex, ImageManifest, Manifest, Platform, layer_records, parse_manifest,
};
pub use store::{BlobInfo, ContentStore};
