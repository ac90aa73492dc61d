//! Media type strings for OCI and Docker v2 schema 2 objects, and the mapping from Docker's
//! names to OCI's. Base images come from registries in either dialect; Stagecoach reads both
//! and always writes OCI.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI layer, uncompressed tar.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI layer, gzip-compressed tar.
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI layer, zstd-compressed tar.
pub const OCI_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI non-distributable layer (deprecated by the spec, still found in Windows images).
pub const OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (the Docker counterpart of an OCI index).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker container image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker layer, gzip-compressed tar.
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker foreign layer (fetched from `urls`, not from the registry).
pub const DOCKER_LAYER_FOREIGN_TAR_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// Docker v2 schema 1 manifests, which we refuse: they carry no config blob and no digests
/// of uncompressed layers.
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Signed Docker v2 schema 1 manifest.
pub const DOCKER_MANIFEST_V1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The OCI media type for a Docker one; OCI names and unknown names come back unchanged.
/// Only the label changes: the blob bytes, and so the digests, stay the same.
pub fn to_oci(media_type: &str) -> &str {
    match media_type {
        DOCKER_MANIFEST => OCI_MANIFEST,
        DOCKER_MANIFEST_LIST => OCI_INDEX,
        DOCKER_CONFIG => OCI_CONFIG,
        DOCKER_LAYER_TAR_GZIP => OCI_LAYER_TAR_GZIP,
        DOCKER_LAYER_FOREIGN_TAR_GZIP => OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP,
        other => other,
    }
}

/// Whether a media type names an image manifest (OCI or Docker v2 schema 2).
pub fn is_image_manifest(media_type: &str) -> bool {
    matches!(media_type, OCI_MANIFEST | DOCKER_MANIFEST)
}

/// Whether a media type names an index (OCI index or Docker manifest list).
pub fn is_index(media_type: &str) -> bool {
    matches!(media_type, OCI_INDEX | DOCKER_MANIFEST_LIST)
}

/// Whether a media type names a layer we can apply (any tar flavour, compressed or not).
pub fn is_layer(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_LAYER_TAR
            | OCI_LAYER_TAR_GZIP
            | OCI_LAYER_TAR_ZSTD
            | OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP
            | DOCKER_LAYER_TAR_GZIP
            | DOCKER_LAYER_FOREIGN_TAR_GZIP
    )
}
