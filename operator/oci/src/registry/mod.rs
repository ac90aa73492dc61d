//! The registry client (cargo feature `registry`): resolve references to digests, pull
//! manifests, configs and blobs into the [`ContentStore`](crate::ContentStore), push blobs
//! and manifests, on top of `oci-client`.
//!
//! What this layer adds to oci-client: our own reference normalisation ([`ImageRef`]),
//! credentials from docker `config.json` files ([`Credentials`]), the plain-HTTP rule
//! (loopback registries and an explicit insecure list, HTTPS for everything else), index
//! handling through [`ImageIndex::find_platform`](crate::ImageIndex::find_platform), digest
//! verification of everything that lands in the store, blob skipping and cross-repository
//! mounts, bounded retries with exponential backoff on transient failures, and one error type
//! whose [`RegistryError::reason`] is stable enough to become a condition reason.
//!
//! TLS goes through rustls with the aws-lc-rs provider only (the one kube uses as well), so
//! rustls can pick its process-wide provider by itself.

mod auth;
mod client;
mod reference;

pub use auth::{Credential, Credentials, CredentialsError};
pub use client::{
    BlobPush, ClientOptions, ClientStats, PulledConfig, PulledImage, PulledManifest, PushedImage,
    RegistryClient, RetryPolicy, uses_plain_http,
};
pub use reference::{DOCKER_HUB, ImageRef, ReferenceError, normalize_registry, registry_host};

use crate::store::StoreError;

/// Why a registry operation failed. Every variant that concerns an image names the
/// operation and the reference, so the message alone tells what was being done to what.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference could not be parsed.
    #[error(transparent)]
    InvalidReference(#[from] ReferenceError),
    /// The credentials file could not be used.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The registry refused the credentials presented (or their absence).
    #[error("{op} {reference}: not authorized: {detail}")]
    Unauthorized {
        /// The operation.
        op: &'static str,
        /// The reference.
        reference: String,
        /// What the registry said.
        detail: String,
    },
    /// The repository, tag, manifest or blob does not exist.
    #[error("{op} {reference}: not found: {detail}")]
    NotFound {
        /// The operation.
        op: &'static str,
        /// The reference.
        reference: String,
        /// What the registry said.
        detail: String,
    },
    /// A failure worth retrying (connection, timeout, 429, 5xx) that outlasted the retries.
    #[error("{op} {reference}: failed after {attempts} attempt(s): {detail}")]
    Transient {
        /// The operation.
        op: &'static str,
        /// The reference.
        reference: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        detail: String,
    },
    /// The registry answered something this client cannot use.
    #[error("{op} {reference}: unexpected registry response: {detail}")]
    Protocol {
        /// The operation.
        op: &'static str,
        /// The reference.
        reference: String,
        /// What was wrong.
        detail: String,
    },
    /// Content did not have the digest (or size) it was asked for by.
    #[error("{op} {reference}: content does not match its digest: {detail}")]
    DigestMismatch {
        /// The operation.
        op: &'static str,
        /// The reference.
        reference: String,
        /// Expected and actual values.
        detail: String,
    },
    /// An index has no image for the wanted platform.
    #[error("pull manifest {reference}: the image index has no manifest for {platform}")]
    PlatformNotFound {
        /// The reference.
        reference: String,
        /// The wanted platform, `os/arch[/variant]`.
        platform: String,
    },
    /// The local content store failed.
    #[error("{op} {reference}: {source}")]
    Store {
        /// The operation.
        op: &'static str,
        /// The reference.
        reference: String,
        /// The store's error.
        source: StoreError,
    },
    /// The HTTP client for a registry could not be built (TLS roots, for instance).
    #[error("registry client for {registry}: {detail}")]
    Setup {
        /// The registry host.
        registry: String,
        /// What failed.
        detail: String,
    },
}

impl RegistryError {
    /// A stable, CamelCase reason for conditions, events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            RegistryError::InvalidReference(_) => "InvalidReference",
            RegistryError::Credentials(_) => "InvalidCredentials",
            RegistryError::Unauthorized { .. } => "Unauthorized",
            RegistryError::NotFound { .. } => "NotFound",
            RegistryError::Transient { .. } => "Transient",
            RegistryError::Protocol { .. } => "Protocol",
            RegistryError::DigestMismatch { .. } => "DigestMismatch",
            RegistryError::PlatformNotFound { .. } => "PlatformNotFound",
            RegistryError::Store { .. } => "Store",
            RegistryError::Setup { .. } => "ClientSetup",
        }
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Transient { .. })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn reasons_are_stable() {
        let e = RegistryError::NotFound {
            op: "pull manifest",
            reference: "localhost:5000/app:v1".to_owned(),
            detail: "MANIFEST_UNKNOWN".to_owned(),
        };
        assert_eq!(e.reason(), "NotFound");
        assert!(e.to_string().contains("localhost:5000/app:v1"), "{e}");
        let e: RegistryError = ImageRef::parse("Bad").unwrap_err().into();
        assert_eq!(e.reason(), "InvalidReference");
        assert!(e.to_string().contains("\"Bad\""), "{e}");
    }
}
