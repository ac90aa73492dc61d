//! OCI image layout output (`--output oci:DIR`): a directory with `oci-layout`,
//! `index.json` and `blobs/sha256/…`, readable by skopeo, podman, crane and containerd's
//! import. The blob directory has the content store's shape, so the layout is written
//! through a [`ContentStore`] and blobs are hard-linked from the cache when possible.

use std::io;
use std::path::{Path, PathBuf};

use crate::config::ImageConfig;
use crate::digest::Digest;
use crate::manifest::{Descriptor, ImageIndex, Manifest, ManifestError, parse_manifest};
use crate::media_type;
use crate::store::{ContentStore, StoreError};

/// Annotation naming an image inside a layout (`stagecoach:latest` → `latest` by convention,
/// though any string is valid).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
const LAYOUT_FILE: &str = "oci-layout";
const LAYOUT_VERSION_JSON: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Manifests and configs are small; anything bigger is not one.
const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// Why a layout could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Writing a file of the layout failed.
    #[error("OCI layout: cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Reading or writing a blob failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manifest being exported could not be read.
    #[error("OCI layout: manifest {digest}: {source}")]
    Manifest {
        /// The manifest.
        digest: Digest,
        /// Why.
        source: ManifestError,
    },
    /// `index.json` could not be encoded.
    #[error("OCI layout: cannot encode index.json: {0}")]
    Index(#[source] ManifestError),
    /// An exported manifest refers to a config that is not an image config.
    #[error("OCI layout: config {digest} is not an image config: {source}")]
    Config {
        /// The config blob.
        digest: Digest,
        /// Why.
        source: crate::config::ConfigError,
    },
}

/// Writes an OCI image layout.
#[derive(Debug)]
pub struct OciLayoutWriter {
    dir: PathBuf,
    store: ContentStore,
    index: ImageIndex,
}

impl OciLayoutWriter {
    /// Creates (or reuses) the layout directory. An existing `index.json` is replaced on
    /// [`finish`](Self::finish); existing blobs stay.
    pub fn create(dir: impl Into<PathBuf>) -> Result<Self, LayoutError> {
        let dir = dir.into();
        let store = ContentStore::open(&dir)?;
        write_atomic(&dir.join(LAYOUT_FILE), LAYOUT_VERSION_JSON)?;
        Ok(OciLayoutWriter {
            dir,
            store,
            index: ImageIndex::new(),
        })
    }

    /// The layout's blob store, for writing blobs straight into it.
    pub fn store(&self) -> &ContentStore {
        &self.store
    }

    /// Copies an image (its manifest or index, configs and layers, recursively) from `src`
    /// and lists it in `index.json`, named `ref_name` when given.
    pub fn add_image(
        &mut self,
        src: &ContentStore,
        manifest: &Descriptor,
        ref_name: Option<&str>,
    ) -> Result<(), LayoutError> {
        self.copy_tree(src, manifest)?;
        self.add_manifest(manifest.clone(), ref_name);
        Ok(())
    }

    /// Lists a manifest already in the layout's store in `index.json`.
    pub fn add_manifest(&mut self, mut manifest: Descriptor, ref_name: Option<&str>) {
        if let Some(name) = ref_name {
            manifest
                .annotations
                .insert(REF_NAME_ANNOTATION.to_owned(), name.to_owned());
        }
        self.index.manifests.push(manifest);
    }

    fn copy_tree(&self, src: &ContentStore, desc: &Descriptor) -> Result<(), LayoutError> {
        let bytes = src.read_to_vec(&desc.digest, MAX_MANIFEST_BYTES)?;
        let parsed = parse_manifest(&bytes, Some(&desc.media_type)).map_err(|source| {
            LayoutError::Manifest {
                digest: desc.digest.clone(),
                source,
            }
        })?;
        match parsed {
            Manifest::Image(m) => {
                // Parse the config to be sure the layout holds an image, not a stray blob.
                let config = src.read_to_vec(&m.config.digest, MAX_MANIFEST_BYTES)?;
                if media_type::to_oci(&m.config.media_type) == media_type::OCI_CONFIG {
                    ImageConfig::from_json(&config).map_err(|source| LayoutError::Config {
                        digest: m.config.digest.clone(),
                        source,
                    })?;
                }
                src.copy_blob_to(&m.config.digest, &self.store)?;
                for layer in &m.layers {
                    src.copy_blob_to(&layer.digest, &self.store)?;
                }
            }
            Manifest::Index(index) => {
                for child in &index.manifests {
                    self.copy_tree(src, child)?;
                }
            }
        }
        // The manifest last: whoever reads the layout finds no dangling reference.
        src.copy_blob_to(&desc.digest, &self.store)?;
        Ok(())
    }

    /// Writes `index.json` and returns the layout directory.
    pub fn finish(self) -> Result<PathBuf, LayoutError> {
        let bytes = self.index.to_canonical_json().map_err(LayoutError::Index)?;
        write_atomic(&self.dir.join("index.json"), &bytes)?;
        Ok(self.dir)
    }
}

/// Replaces a small file atomically and durably.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    crate::atomic::write_file(path, bytes, 0o644).map_err(|source| LayoutError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    })
}
