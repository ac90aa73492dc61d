//! Descriptors, image manifests and indexes, read from OCI or Docker v2 schema 2 JSON and
//! written as canonical OCI JSON. Unknown fields are kept on read so that re-encoding a
//! parsed object loses nothing; a pulled manifest is still stored and pushed as its original
//! bytes, because re-encoding changes the digest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::digest::Digest;
use crate::json::{self, JsonError};
use crate::media_type;

/// Why a manifest or index could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The bytes are not the JSON of a manifest or index.
    #[error("invalid {what}: {source}")]
    Json {
        /// What was being read.
        what: &'static str,
        /// The decoder's error.
        source: serde_json::Error,
    },
    /// Canonical encoding failed.
    #[error(transparent)]
    Encode(#[from] JsonError),
    /// Docker schema 1 or another `schemaVersion` than 2.
    #[error("unsupported manifest: {0}")]
    Unsupported(String),
    /// The document is neither an image manifest nor an index.
    #[error("document with media type {0:?} is neither an image manifest nor an index")]
    UnknownKind(String),
}

/// The platform an image runs on, as found in index entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Platform {
    /// CPU architecture in Go's GOARCH spelling (`amd64`, `arm64`).
    pub architecture: String,
    /// Operating system in Go's GOOS spelling (`linux`).
    pub os: String,
    /// OS version (Windows only in practice).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Required OS features.
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    /// CPU variant (`v7`, `v8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/<arch>`.
    pub fn linux(architecture: &str) -> Self {
        Platform {
            architecture: architecture.to_owned(),
            os: "linux".to_owned(),
            ..Platform::default()
        }
    }

    /// Whether an index entry's platform satisfies this wanted platform. A wanted platform
    /// without a variant accepts any variant; `arm64` entries without a variant count as `v8`
    /// as registries commonly omit it.
    pub fn satisfied_by(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        match (&self.variant, &candidate.variant) {
            (None, _) => true,
            (Some(want), Some(have)) => want == have,
            (Some(want), None) => self.architecture == "arm64" && want == "v8",
        }
    }
}

/// A reference to a blob: what it is, its digest and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Where to fetch foreign layers from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Annotations (`org.opencontainers.image.ref.name` in a layout's index, for example).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Platform of a manifest listed in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Artifact type of a manifest listed in an index.
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The layer records of an image: its manifest's layers paired with its config's diffIDs,
/// media types made OCI's (the blobs are the same bytes), so a manifest assembled from them
/// is uniformly OCI. `None` when the two lists differ in length.
pub fn layer_records(
    manifest: &ImageManifest,
    config: &crate::ImageConfig,
) -> Option<Vec<stagecoach_protocol::LayerRecord>> {
    if manifest.layers.len() != config.rootfs.diff_ids.len() {
        return None;
    }
    Some(
        manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(layer, diff_id)| stagecoach_protocol::LayerRecord {
                media_type: crate::media_type::to_oci(&layer.media_type).to_string(),
                digest: layer.digest.clone(),
                diff_id: diff_id.clone(),
                size: layer.size,
            })
            .collect(),
    )
}

impl From<&stagecoach_protocol::LayerRecord> for Descriptor {
    fn from(layer: &stagecoach_protocol::LayerRecord) -> Self {
        Descriptor::new(&layer.media_type, layer.digest.clone(), layer.size)
    }
}

impl Descriptor {
    /// A descriptor with only the three required fields.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
            extra: BTreeMap::new(),
        }
    }
}

/// An image manifest (OCI, or Docker v2 schema 2 which has the same shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// The manifest's own media type; OCI makes it optional, Docker requires it.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Artifact type for non-image artifacts.
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// Layers, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// The manifest this one refers to (signatures, SBOMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl ImageManifest {
    /// An OCI manifest for a config and its layers.
    pub fn new(config: Descriptor, layers: Vec<Descriptor>) -> Self {
        ImageManifest {
            schema_version: 2,
            media_type: Some(media_type::OCI_MANIFEST.to_owned()),
            artifact_type: None,
            config,
            layers,
            subject: None,
            annotations: BTreeMap::new(),
            extra: BTreeMap::new(),
        }
    }

    /// Whether this is a Docker v2 schema 2 manifest.
    pub fn is_docker(&self) -> bool {
        self.media_type.as_deref() == Some(media_type::DOCKER_MANIFEST)
    }

    /// The same manifest with every Docker media type replaced by its OCI counterpart. Blob
    /// digests are unchanged, so a Docker base image's layers can be reused as they are.
    pub fn to_oci(&self) -> ImageManifest {
        let mut m = self.clone();
        m.media_type = Some(media_type::OCI_MANIFEST.to_owned());
        m.config.media_type = media_type::to_oci(&m.config.media_type).to_owned();
        for layer in &mut m.layers {
            layer.media_type = media_type::to_oci(&layer.media_type).to_owned();
        }
        m
    }

    /// Canonical JSON bytes.
    pub fn to_canonical_json(&self) -> Result<Vec<u8>, ManifestError> {
        Ok(json::to_canonical_vec(self, "image manifest")?)
    }

    /// Canonical bytes and the descriptor that names them.
    pub fn to_blob(&self) -> Result<(Vec<u8>, Descriptor), ManifestError> {
        let bytes = self.to_canonical_json()?;
        let media = self
            .media_type
            .clone()
            .unwrap_or_else(|| media_type::OCI_MANIFEST.to_owned());
        let desc = Descriptor::new(&media, Digest::of_bytes(&bytes), bytes.len() as u64);
        Ok((bytes, desc))
    }
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageIndex {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// The index's own media type.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Artifact type.
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    /// The manifests, usually one per platform.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl ImageIndex {
    /// An empty OCI index.
    pub fn new() -> Self {
        ImageIndex {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.to_owned()),
            artifact_type: None,
            manifests: Vec::new(),
            subject: None,
            annotations: BTreeMap::new(),
            extra: BTreeMap::new(),
        }
    }

    /// The first image manifest whose platform satisfies `wanted`. Entries without a
    /// platform, and attestation manifests (which BuildKit marks with `unknown/unknown`), never
    /// match.
    pub fn find_platform(&self, wanted: &Platform) -> Option<&Descriptor> {
        self.manifests.iter().find(|d| {
            media_type::is_image_manifest(&d.media_type)
                && d.platform.as_ref().is_some_and(|p| wanted.satisfied_by(p))
        })
    }

    /// Canonical JSON bytes.
    pub fn to_canonical_json(&self) -> Result<Vec<u8>, ManifestError> {
        Ok(json::to_canonical_vec(self, "image index")?)
    }

    /// Canonical bytes and the descriptor that names them.
    pub fn to_blob(&self) -> Result<(Vec<u8>, Descriptor), ManifestError> {
        let bytes = self.to_canonical_json()?;
        let media = self
            .media_type
            .clone()
            .unwrap_or_else(|| media_type::OCI_INDEX.to_owned());
        let desc = Descriptor::new(&media, Digest::of_bytes(&bytes), bytes.len() as u64);
        Ok((bytes, desc))
    }
}

impl Default for ImageIndex {
    fn default() -> Self {
        Self::new()
    }
}

/// A parsed manifest document: an image manifest or an index.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "both variants are large and a parsed manifest is moved a handful of times"
)]
pub enum Manifest {
    /// A single image.
    Image(ImageManifest),
    /// A list of images, usually one per platform.
    Index(ImageIndex),
}

/// Parses a manifest document. `content_type` is the registry's `Content-Type` header, used
/// only when the document does not carry its own `mediaType`; without either, the shape
/// decides (`manifests` makes an index, `config` an image manifest).
pub fn parse_manifest(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
        what: "manifest",
        source,
    })?;
    let declared = value
        .get("mediaType")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_owned()));
    let schema = value.get("schemaVersion").and_then(Value::as_u64);
    if matches!(
        declared.as_deref(),
        Some(media_type::DOCKER_MANIFEST_V1 | media_type::DOCKER_MANIFEST_V1_SIGNED)
    ) || schema == Some(1)
    {
        return Err(ManifestError::Unsupported(
            "Docker v2 schema 1 manifests are not supported; push the image again with a current client"
                .to_owned(),
        ));
    }
    if schema != Some(2) {
        return Err(ManifestError::Unsupported(format!(
            "schemaVersion {} (expected 2)",
            schema.map_or_else(|| "missing".to_owned(), |s| s.to_string())
        )));
    }
    let is_index = match declared.as_deref() {
        Some(m) if media_type::is_index(m) => true,
        Some(m) if media_type::is_image_manifest(m) => false,
        // Artifact manifests and unknown types: decide by shape.
        _ if value.get("manifests").is_some() => true,
        _ if value.get("config").is_some() => false,
        _ => {
            return Err(ManifestError::UnknownKind(
                declared.unwrap_or_else(|| "<none>".to_owned()),
            ));
        }
    };
    if is_index {
        let index = serde_json::from_value(value).map_err(|source| ManifestError::Json {
            what: "image index",
            source,
        })?;
        Ok(Manifest::Index(index))
    } else {
        let manifest = serde_json::from_value(value).map_err(|source| ManifestError::Json {
            what: "image manifest",
            source,
        })?;
        Ok(Manifest::Image(manifest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn docker_manifest_parses_and_converts() {
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","size":7,"digest":"{D1}"}},
            "layers":[{{"mediaType":"{}","size":9,"digest":"{D2}"}}]}}"#,
            media_type::DOCKER_MANIFEST,
            media_type::DOCKER_CONFIG,
            media_type::DOCKER_LAYER_TAR_GZIP
        );
        let Manifest::Image(m) = parse_manifest(doc.as_bytes(), None).unwrap() else {
            panic!("expected an image manifest");
        };
        assert!(m.is_docker());
        let oci = m.to_oci();
        assert_eq!(oci.media_type.as_deref(), Some(media_type::OCI_MANIFEST));
        assert_eq!(oci.config.media_type, media_type::OCI_CONFIG);
        assert_eq!(oci.layers[0].media_type, media_type::OCI_LAYER_TAR_GZIP);
        assert_eq!(oci.layers[0].digest.as_str(), D2);
    }

    #[test]
    fn schema1_is_refused() {
        let doc = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        assert!(matches!(
            parse_manifest(doc, None),
            Err(ManifestError::Unsupported(_))
        ));
    }

    #[test]
    fn index_by_content_type_and_platform_lookup() {
        let doc = format!(
            r#"{{"schemaVersion":2,"manifests":[
              {{"mediaType":"{m}","size":1,"digest":"{D1}","platform":{{"architecture":"arm64","os":"linux"}}}},
              {{"mediaType":"{m}","size":2,"digest":"{D2}","platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            m = media_type::DOCKER_MANIFEST
        );
        let parsed = parse_manifest(
            doc.as_bytes(),
            Some("application/vnd.docker.distribution.manifest.list.v2+json; charset=utf-8"),
        )
        .unwrap();
        let Manifest::Index(index) = parsed else {
            panic!("expected an index");
        };
        let amd = index.find_platform(&Platform::linux("amd64")).unwrap();
        assert_eq!(amd.digest.as_str(), D2);
        let mut arm = Platform::linux("arm64");
        arm.variant = Some("v8".to_owned());
        assert_eq!(index.find_platform(&arm).unwrap().digest.as_str(), D1);
        assert!(index.find_platform(&Platform::linux("s390x")).is_none());
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","size":7,"digest":"{D1}","x-extra":true}},"layers":[],"x-top":{{"b":1}}}}"#,
            media_type::OCI_MANIFEST,
            media_type::OCI_CONFIG
        );
        let Manifest::Image(m) = parse_manifest(doc.as_bytes(), None).unwrap() else {
            panic!("expected an image manifest");
        };
        let out = String::from_utf8(m.to_canonical_json().unwrap()).unwrap();
        assert!(out.contains(r#""x-top":{"b":1}"#), "{out}");
        assert!(out.contains(r#""x-extra":true"#), "{out}");
    }
}
