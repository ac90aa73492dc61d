//! [`RegistryClient`]: the operations a build needs against OCI distribution registries, with
//! credentials chosen per registry, plain HTTP only where it is safe or asked for, digest
//! checks on everything received, and bounded retries.
//!
//! One oci-client `Client` is kept per registry host. That is what lets the scheme differ by
//! host (oci-client decides it per client), and it keeps each host's credentials and bearer
//! tokens apart. Blob bodies stream between the network and the content store; only
//! manifests and configs, which are small and bounded here, are held in memory.
//!
//! The store is synchronous: its buffered file writes and reads run on the async task. They
//! are local-disk operations on at most a chunk at a time, short next to the network
//! round trip they alternate with, so they are not worth a hop to a blocking thread each.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};

use super::RegistryError;
use super::auth::Credentials;
use super::reference::{ImageRef, normalize_registry, registry_host};
use crate::config::ImageConfig;
use crate::digest::Digest;
use crate::manifest::{Descriptor, ImageManifest, Manifest, Platform, parse_manifest};
use crate::media_type;
use crate::store::{BlobInfo, BlobWriter, ContentStore, StoreError};

/// The distribution spec lets registries refuse manifests over 4 MiB; nothing larger is
/// worth reading into memory.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Image configs are a few KiB; a long history makes them tens. 16 MiB is generous.
const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;
/// Upload chunk read from the store.
const UPLOAD_CHUNK: usize = 1024 * 1024;
/// What pulls ask for: both dialects, images and indexes.
const ACCEPTED_MANIFESTS: &[&str] = &[
    media_type::OCI_MANIFEST,
    media_type::OCI_INDEX,
    media_type::DOCKER_MANIFEST,
    media_type::DOCKER_MANIFEST_LIST,
];

/// How often, and how patiently, to retry transient failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (at least 1).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each further one.
    pub initial_backoff: Duration,
    /// Upper bound for one wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 for the first retry).
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Registries (`host` or `host:port`) to reach over plain HTTP although they are not on a
    /// loopback address (`--insecure-registry`). An entry without a port covers every port.
    pub insecure_registries: Vec<String>,
    /// The platform picked from image indexes.
    pub platform: Platform,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// Longest wait for any read on a connection.
    pub read_timeout: Duration,
    /// Blobs transferred at once by [`RegistryClient::pull_image`] and
    /// [`RegistryClient::push_image`].
    pub parallel_blobs: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure_registries: Vec::new(),
            platform: Platform::linux("amd64"),
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(300),
            parallel_blobs: 3,
        }
    }
}

/// Whether `registry` (`host`, `host:port`, `[v6]:port`) is spoken to over plain HTTP:
/// loopback addresses and `localhost` always (a registry there is on this machine, and that
/// is how local test registries run), others only when listed in `insecure`.
pub fn uses_plain_http(registry: &str, insecure: &[String]) -> bool {
    let registry = normalize_registry(registry);
    let host = host_part(&registry);
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback
        || insecure.iter().any(|entry| {
            let entry = registry_host(entry);
            entry == registry || (!has_port(&entry) && entry == host)
        })
}

/// The host without its port.
fn host_part(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry.split_once(']').map_or(registry, |(h, _)| h);
    }
    registry.split_once(':').map_or(registry, |(h, _)| h)
}

fn has_port(registry: &str) -> bool {
    if registry.starts_with('[') {
        registry.contains("]:")
    } else {
        registry.contains(':')
    }
}

/// What [`RegistryClient::push_blob`] had to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobPush {
    /// The repository already had the blob.
    AlreadyPresent,
    /// The registry linked it from another repository it holds it in.
    Mounted {
        /// The source repository.
        from: String,
    },
    /// The blob was uploaded.
    Uploaded,
}

/// An image manifest fetched from a registry, exactly as served.
#[derive(Debug, Clone)]
pub struct PulledManifest {
    /// The reference pinned to the image manifest's digest.
    pub reference: ImageRef,
    /// The image manifest's digest (of `bytes`).
    pub digest: Digest,
    /// Its media type (OCI or Docker).
    pub media_type: String,
    /// The exact bytes, to store or push unchanged.
    pub bytes: Vec<u8>,
    /// The parsed manifest.
    pub manifest: ImageManifest,
    /// When the reference named an index: the index's digest.
    pub index_digest: Option<Digest>,
}

impl PulledManifest {
    /// The descriptor naming this manifest.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            &self.media_type,
            self.digest.clone(),
            self.bytes.len() as u64,
        )
    }
}

/// An image config fetched from a registry.
#[derive(Debug, Clone)]
pub struct PulledConfig {
    /// The exact bytes (their digest is the manifest's config digest).
    pub bytes: Vec<u8>,
    /// The parsed config.
    pub config: ImageConfig,
}

/// An image pulled into a store by [`RegistryClient::pull_image`].
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The image manifest (pinned reference, digest, exact bytes).
    pub manifest: PulledManifest,
    /// Its config.
    pub config: PulledConfig,
}

/// An image pushed by [`RegistryClient::push_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    /// The manifest digest the registry confirmed.
    pub digest: Digest,
    /// The manifest's size.
    pub size: u64,
    /// What happened to each blob: layers in manifest order, then the config.
    pub blobs: Vec<BlobPush>,
}

/// Counts of what the client did, for progress lines, metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Manifests fetched (an index and the image it points to count as two).
    pub manifests_pulled: u64,
    /// Manifests pushed.
    pub manifests_pushed: u64,
    /// Blobs downloaded (layers into a store, configs into memory too).
    pub blobs_downloaded: u64,
    /// Blob downloads skipped because the store had them.
    pub blobs_already_local: u64,
    /// Blobs uploaded.
    pub blobs_uploaded: u64,
    /// Blob uploads skipped because the repository had them.
    pub blobs_already_remote: u64,
    /// Blobs mounted from another repository.
    pub blobs_mounted: u64,
    /// Retries made after transient failures.
    pub retries: u64,
    /// Interrupted downloads continued with a range request.
    pub resumed_downloads: u64,
}

#[derive(Debug, Default)]
struct Counters {
    manifests_pulled: AtomicU64,
    manifests_pushed: AtomicU64,
    blobs_downloaded: AtomicU64,
    blobs_already_local: AtomicU64,
    blobs_uploaded: AtomicU64,
    blobs_already_remote: AtomicU64,
    blobs_mounted: AtomicU64,
    retries: AtomicU64,
    resumed_downloads: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A client for any number of registries.
pub struct RegistryClient {
    options: ClientOptions,
    credentials: Credentials,
    /// One oci-client per registry host.
    clients: Mutex<HashMap<String, Arc<oci_client::Client>>>,
    /// Repositories (per registry) known to hold a blob, learned from pulls and pushes:
    /// candidates for a cross-repository mount.
    seen: Mutex<HashMap<Digest, BTreeSet<(String, String)>>>,
    counters: Counters,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("options", &self.options)
            .field("credentials", &self.credentials)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Which request failed, in words for messages.
mod op {
    pub const RESOLVE: &str = "resolve";
    pub const PULL_MANIFEST: &str = "pull manifest";
    pub const PULL_CONFIG: &str = "pull config";
    pub const PULL_BLOB: &str = "pull blob";
    pub const PUSH_BLOB: &str = "push blob";
    pub const PUSH_MANIFEST: &str = "push manifest";
}

impl RegistryClient {
    /// A client with the given credentials and options.
    pub fn new(credentials: Credentials, options: ClientOptions) -> Self {
        RegistryClient {
            options,
            credentials,
            clients: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }
    }

    /// An anonymous client with default options.
    pub fn anonymous() -> Self {
        Self::new(Credentials::anonymous(), ClientOptions::default())
    }

    /// The options in force.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// What the client has done so far.
    pub fn stats(&self) -> ClientStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            manifests_pulled: get(&c.manifests_pulled),
            manifests_pushed: get(&c.manifests_pushed),
            blobs_downloaded: get(&c.blobs_downloaded),
            blobs_already_local: get(&c.blobs_already_local),
            blobs_uploaded: get(&c.blobs_uploaded),
            blobs_already_remote: get(&c.blobs_already_remote),
            blobs_mounted: get(&c.blobs_mounted),
            retries: get(&c.retries),
            resumed_downloads: get(&c.resumed_downloads),
        }
    }

    /// The digest a reference currently names (for a tag of an index, the index's digest),
    /// from a HEAD of the manifest, or a GET when the registry sends no digest header.
    pub async fn resolve(&self, reference: &ImageRef) -> Result<Digest, RegistryError> {
        let (client, oref, auth) = self.prepare(reference).await?;
        let (client, oref, auth) = (&client, &oref, &auth);
        let text = self
            .retry(op::RESOLVE, reference, || async move {
                client
                    .fetch_manifest_digest(oref, auth)
                    .await
                    .map_err(|e| classify(op::RESOLVE, reference, e))
            })
            .await?;
        let digest = Digest::parse(&text).map_err(|e| RegistryError::Protocol {
            op: op::RESOLVE,
            reference: reference.to_string(),
            detail: format!("the registry reported digest {text:?}: {e}"),
        })?;
        if let Some(want) = reference.digest()
            && want != &digest
        {
            return Err(RegistryError::DigestMismatch {
                op: op::RESOLVE,
                reference: reference.to_string(),
                detail: format!("the registry reports {digest}"),
            });
        }
        Ok(digest)
    }

    /// The image manifest a reference names. For an index (or Docker manifest list) the
    /// manifest for the client's platform is picked and fetched by digest; its index's
    /// digest is kept in [`PulledManifest::index_digest`].
    pub async fn pull_manifest(
        &self,
        reference: &ImageRef,
    ) -> Result<PulledManifest, RegistryError> {
        let (bytes, digest) = self.fetch_manifest(reference).await?;
        let parsed = parse(reference, &bytes)?;
        let (bytes, digest, manifest, index_digest, pinned) = match parsed {
            Manifest::Image(m) => {
                let pinned = reference.with_digest(digest.clone());
                (bytes, digest, m, None, pinned)
            }
            Manifest::Index(index) => {
                let Some(entry) = index.find_platform(&self.options.platform) else {
                    return Err(RegistryError::PlatformNotFound {
                        reference: reference.to_string(),
                        platform: platform_text(&self.options.platform),
                    });
                };
                let pinned = reference.with_digest(entry.digest.clone());
                let (inner_bytes, inner_digest) = self.fetch_manifest(&pinned).await?;
                match parse(&pinned, &inner_bytes)? {
                    Manifest::Image(m) => (inner_bytes, inner_digest, m, Some(digest), pinned),
                    Manifest::Index(_) => {
                        return Err(RegistryError::Protocol {
                            op: op::PULL_MANIFEST,
                            reference: pinned.to_string(),
                            detail: "an index entry for an image manifest is itself an index"
                                .to_owned(),
                        });
                    }
                }
            }
        };
        let media_type = manifest
            .media_type
            .clone()
            .unwrap_or_else(|| media_type::OCI_MANIFEST.to_owned());
        Ok(PulledManifest {
            reference: pinned,
            digest,
            media_type,
            bytes,
            manifest,
            index_digest,
        })
    }

    /// The image config a manifest names, verified against its digest.
    pub async fn pull_config(
        &self,
        reference: &ImageRef,
        manifest: &ImageManifest,
    ) -> Result<PulledConfig, RegistryError> {
        let desc = &manifest.config;
        if desc.size > MAX_CONFIG_BYTES {
            return Err(RegistryError::Protocol {
                op: op::PULL_CONFIG,
                reference: reference.to_string(),
                detail: format!(
                    "config {} claims {} bytes, more than the {MAX_CONFIG_BYTES} accepted",
                    desc.digest, desc.size
                ),
            });
        }
        let (client, oref, _auth) = self.prepare(reference).await?;
        let (client, oref) = (&client, &oref);
        let bytes = self
            .retry(op::PULL_CONFIG, reference, || async move {
                let mut stream = client
                    .pull_blob_stream(oref, desc.digest.as_str())
                    .await
                    .map_err(|e| classify(op::PULL_CONFIG, reference, e))?;
                let mut buf = Vec::new();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| classify_io(op::PULL_CONFIG, reference, e))?;
                    if buf.len() as u64 + chunk.len() as u64 > desc.size {
                        return Err(too_long(op::PULL_CONFIG, reference, desc));
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(buf)
            })
            .await?;
        let actual = Digest::of_bytes(&bytes);
        if actual != desc.digest || bytes.len() as u64 != desc.size {
            return Err(RegistryError::DigestMismatch {
                op: op::PULL_CONFIG,
                reference: reference.to_string(),
                detail: format!(
                    "expected {} ({} bytes), got {actual} ({} bytes)",
                    desc.digest,
                    desc.size,
                    bytes.len()
                ),
            });
        }
        let config = ImageConfig::from_json(&bytes).map_err(|e| RegistryError::Protocol {
            op: op::PULL_CONFIG,
            reference: reference.to_string(),
            detail: e.to_string(),
        })?;
        bump(&self.counters.blobs_downloaded);
        self.remember(reference, &desc.digest);
        Ok(PulledConfig { bytes, config })
    }

    /// Streams a blob of `reference`'s repository into `store`, verifying its digest and
    /// size; nothing is fetched when the store already has it. A transfer cut short is
    /// resumed from where it stopped (an HTTP range request) on the next attempt; a registry
    /// that ignores the range sends the whole blob again, which is fine too.
    pub async fn pull_blob_into(
        &self,
        store: &ContentStore,
        reference: &ImageRef,
        desc: &Descriptor,
    ) -> Result<BlobInfo, RegistryError> {
        let store_err = |source| RegistryError::Store {
            op: op::PULL_BLOB,
            reference: reference.to_string(),
            source,
        };
        if store.exists(&desc.digest).map_err(store_err)? {
            // Asked for again: used now, for a shared cache's collection.
            store.touch(&desc.digest);
            bump(&self.counters.blobs_already_local);
            let size = store.size(&desc.digest).map_err(store_err)?;
            return Ok(BlobInfo {
                digest: desc.digest.clone(),
                size,
            });
        }
        let (client, oref, _auth) = self.prepare(reference).await?;
        let (client, oref) = (&client, &oref);
        // What an interrupted attempt already wrote, handed to the next one.
        let partial: Mutex<Option<BlobWriter>> = Mutex::new(None);
        let partial = &partial;
        let info = self
            .retry(op::PULL_BLOB, reference, || async move {
                let kept = partial
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                let mut writer = match kept {
                    Some(w) => w,
                    None => store.writer().map_err(store_err)?,
                };
                match self
                    .download(client, oref, reference, desc, store, &mut writer)
                    .await
                {
                    Ok(()) => {}
                    Err(e) => {
                        if e.is_transient() && writer.size() > 0 {
                            *partial.lock().unwrap_or_else(PoisonError::into_inner) = Some(writer);
                        }
                        // Otherwise the writer is dropped here, deleting its temporary file.
                        return Err(e);
                    }
                }
                writer
                    .commit_expected(&desc.digest, Some(desc.size))
                    .map_err(|e| match e {
                        // Short bodies are cut connections: worth another attempt.
                        StoreError::SizeMismatch { .. } => RegistryError::Transient {
                            op: op::PULL_BLOB,
                            reference: reference.to_string(),
                            attempts: 1,
                            detail: e.to_string(),
                        },
                        StoreError::DigestMismatch { .. } => RegistryError::DigestMismatch {
                            op: op::PULL_BLOB,
                            reference: reference.to_string(),
                            detail: e.to_string(),
                        },
                        other => store_err(other),
                    })
            })
            .await?;
        bump(&self.counters.blobs_downloaded);
        self.remember(reference, &desc.digest);
        Ok(info)
    }

    /// One download attempt into `writer`, continuing after what it already holds.
    async fn download(
        &self,
        client: &oci_client::Client,
        oref: &oci_client::Reference,
        reference: &ImageRef,
        desc: &Descriptor,
        store: &ContentStore,
        writer: &mut BlobWriter,
    ) -> Result<(), RegistryError> {
        let digest = desc.digest.as_str();
        let offset = writer.size();
        if offset >= desc.size {
            // All bytes arrived before the failure: nothing to ask for, the commit checks them.
            return Ok(());
        }
        let mut stream = if offset == 0 {
            client
                .pull_blob_stream(oref, digest)
                .await
                .map_err(|e| classify(op::PULL_BLOB, reference, e))?
        } else {
            let response = client
                .pull_blob_stream_partial(oref, digest, offset, None)
                .await
                .map_err(|e| classify(op::PULL_BLOB, reference, e))?;
            match response {
                BlobResponse::Partial(s) => {
                    bump(&self.counters.resumed_downloads);
                    s
                }
                // The registry ignored the range: start the blob over.
                BlobResponse::Full(s) => {
                    *writer = store.writer().map_err(|source| RegistryError::Store {
                        op: op::PULL_BLOB,
                        reference: reference.to_string(),
                        source,
                    })?;
                    s
                }
            }
        };
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| classify_io(op::PULL_BLOB, reference, e))?;
            // A registry sending more than the descriptor says is cut off here rather than
            // filling the disk.
            if writer.size() + chunk.len() as u64 > desc.size {
                return Err(too_long(op::PULL_BLOB, reference, desc));
            }
            writer.write_all(&chunk).map_err(|e| RegistryError::Store {
                op: op::PULL_BLOB,
                reference: reference.to_string(),
                source: StoreError::Io {
                    action: "write blob from registry",
                    path: store.blobs_dir().to_owned(),
                    source: e,
                },
            })?;
        }
        Ok(())
    }

    /// Makes the blob `desc` (which must be in `store`) present in `target`'s repository:
    /// nothing when the repository has it (HEAD), a cross-repository mount when a repository
    /// of the same registry holds it (those in `mount_from`, then any this client has seen it
    /// in), an upload streamed from the store otherwise.
    pub async fn push_blob(
        &self,
        store: &ContentStore,
        target: &ImageRef,
        desc: &Descriptor,
        mount_from: &[ImageRef],
    ) -> Result<BlobPush, RegistryError> {
        if let Some(done) = self.present_or_mounted(target, desc, mount_from).await? {
            return Ok(done);
        }
        let (client, oref, _auth) = self.prepare(target).await?;
        let (client, oref) = (&client, &oref);
        let digest = desc.digest.as_str();
        let store_err = |source| RegistryError::Store {
            op: op::PUSH_BLOB,
            reference: target.to_string(),
            source,
        };
        let size = store.size(&desc.digest).map_err(store_err)?;
        if size != desc.size {
            return Err(RegistryError::DigestMismatch {
                op: op::PUSH_BLOB,
                reference: target.to_string(),
                detail: format!(
                    "the store's {} is {size} bytes, the descriptor says {}",
                    desc.digest, desc.size
                ),
            });
        }
        self.retry(op::PUSH_BLOB, target, || async move {
            // Reopened for each attempt: a failed upload consumed the previous stream.
            let file = store.open_blob(&desc.digest).map_err(store_err)?;
            client
                .push_blob_stream(oref, file_stream(file), digest, Some(size))
                .await
                .map_err(|e| classify(op::PUSH_BLOB, target, e))
        })
        .await?;
        bump(&self.counters.blobs_uploaded);
        self.remember(target, &desc.digest);
        Ok(BlobPush::Uploaded)
    }

    /// Puts the image `source` (pinned by digest) under `target` on the same registry without
    /// a byte of it passing through here: every blob is already in the target repository or
    /// mounted from the source's, then the manifest's exact bytes are pushed under the
    /// target's tag. Returns the digest the registry confirms (the source's). Another
    /// registry, or a blob the registry will not mount, is an error: the caller builds
    /// instead.
    pub async fn copy_within_registry(
        &self,
        source: &ImageRef,
        target: &ImageRef,
    ) -> Result<Digest, RegistryError> {
        if source.registry() != target.registry() {
            return Err(RegistryError::Protocol {
                op: op::PUSH_MANIFEST,
                reference: target.to_string(),
                detail: format!("{source} is on another registry"),
            });
        }
        let pulled = self.pull_manifest(source).await?;
        let blobs = std::iter::once(pulled.manifest.config.clone())
            .chain(pulled.manifest.layers.iter().cloned());
        for desc in blobs {
            if self
                .present_or_mounted(target, &desc, std::slice::from_ref(source))
                .await?
                .is_none()
            {
                return Err(RegistryError::Protocol {
                    op: op::PUSH_BLOB,
                    reference: target.to_string(),
                    detail: format!("the registry did not mount {} from {source}", desc.digest),
                });
            }
        }
        self.push_manifest(target, &pulled.bytes, &pulled.media_type)
            .await
    }

    /// The blob is in `target`'s repository already, or mounted into it from another
    /// repository of the same registry; `None` when neither.
    async fn present_or_mounted(
        &self,
        target: &ImageRef,
        desc: &Descriptor,
        mount_from: &[ImageRef],
    ) -> Result<Option<BlobPush>, RegistryError> {
        let (client, oref, _auth) = self.prepare(target).await?;
        let (client, oref) = (&client, &oref);
        let digest = desc.digest.as_str();
        let present = self
            .retry(op::PUSH_BLOB, target, || async move {
                client
                    .blob_exists(oref, digest)
                    .await
                    .map_err(|e| classify(op::PUSH_BLOB, target, e))
            })
            .await?;
        if present {
            bump(&self.counters.blobs_already_remote);
            self.remember(target, &desc.digest);
            return Ok(Some(BlobPush::AlreadyPresent));
        }

        for source in self.mount_candidates(target, &desc.digest, mount_from) {
            let source_ref = oci_client::Reference::with_digest(
                target.registry().to_owned(),
                source.clone(),
                digest.to_owned(),
            );
            // A refused mount (the source lacks the blob, the token has no pull scope on it,
            // the registry does not mount) costs one request; an upload still works.
            if client.mount_blob(oref, &source_ref, digest).await.is_ok() {
                bump(&self.counters.blobs_mounted);
                self.remember(target, &desc.digest);
                return Ok(Some(BlobPush::Mounted { from: source }));
            }
        }
        Ok(None)
    }

    /// Pushes a manifest's exact bytes under `target`'s tag (or its digest when it has no
    /// tag) and returns the digest the registry confirms, which is checked against the
    /// bytes' own digest.
    pub async fn push_manifest(
        &self,
        target: &ImageRef,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::of_bytes(bytes);
        let protocol = |detail: String| RegistryError::Protocol {
            op: op::PUSH_MANIFEST,
            reference: target.to_string(),
            detail,
        };
        if let Some(pinned) = target.digest()
            && pinned != &digest
        {
            return Err(RegistryError::DigestMismatch {
                op: op::PUSH_MANIFEST,
                reference: target.to_string(),
                detail: format!("the manifest bytes have digest {digest}"),
            });
        }
        if media_type.is_empty()
            || !media_type
                .bytes()
                .all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(protocol(format!(
                "media type {media_type:?} is not a valid header"
            )));
        }
        // With a tag, push to the tag (oci-client would use the digest when both are set).
        let put_ref = match target.tag() {
            Some(tag) => oci_client::Reference::with_tag(
                target.registry().to_owned(),
                target.repository().to_owned(),
                tag.to_owned(),
            ),
            None => target.with_digest(digest.clone()).to_oci(),
        };
        let (client, _oref, _auth) = self.prepare(target).await?;
        let (client, put_ref, protocol) = (&client, &put_ref, &protocol);
        let body = bytes::Bytes::copy_from_slice(bytes);
        let body = &body;
        let location = self
            .retry(op::PUSH_MANIFEST, target, || async move {
                // Parsed per attempt: it was checked above, and oci-client wants its own type.
                let content_type = media_type.parse().map_err(|_| {
                    protocol(format!("media type {media_type:?} is not a valid header"))
                })?;
                client
                    .push_manifest_raw(put_ref, body.clone(), content_type)
                    .await
                    .map_err(|e| classify(op::PUSH_MANIFEST, target, e))
            })
            .await?;
        bump(&self.counters.manifests_pushed);
        // Registries answer with the manifest's location by digest; when that is missing or
        // not a digest, ask for the manifest by digest instead.
        let from_location = location
            .rsplit('/')
            .next()
            .and_then(|last| Digest::parse(last.split('?').next().unwrap_or(last)).ok());
        let confirmed = match from_location {
            Some(d) => d,
            None => self.resolve(&target.with_digest(digest.clone())).await?,
        };
        if confirmed != digest {
            return Err(RegistryError::DigestMismatch {
                op: op::PUSH_MANIFEST,
                reference: target.to_string(),
                detail: format!("pushed {digest}, the registry stored {confirmed}"),
            });
        }
        Ok(confirmed)
    }

    /// Pulls a whole image into `store`: the image manifest's exact bytes, its config and
    /// its layers (up to [`ClientOptions::parallel_blobs`] at a time; those already in the
    /// store are not fetched). The manifest's digest is what a build pins the base image to.
    pub async fn pull_image(
        &self,
        store: &ContentStore,
        reference: &ImageRef,
    ) -> Result<PulledImage, RegistryError> {
        let manifest = self.pull_manifest(reference).await?;
        let pinned = &manifest.reference;
        let store_err = |source| RegistryError::Store {
            op: op::PULL_MANIFEST,
            reference: pinned.to_string(),
            source,
        };
        let config_desc = &manifest.manifest.config;
        let config = if store.exists(&config_desc.digest).map_err(store_err)? {
            // Stored blobs were verified on the way in; no need to fetch it again.
            store.touch(&config_desc.digest);
            bump(&self.counters.blobs_already_local);
            let bytes = store
                .read_to_vec(&config_desc.digest, MAX_CONFIG_BYTES)
                .map_err(store_err)?;
            let config = ImageConfig::from_json(&bytes).map_err(|e| RegistryError::Protocol {
                op: op::PULL_CONFIG,
                reference: pinned.to_string(),
                detail: e.to_string(),
            })?;
            PulledConfig { bytes, config }
        } else {
            let config = self.pull_config(pinned, &manifest.manifest).await?;
            store.put_bytes(&config.bytes).map_err(store_err)?;
            config
        };
        let layers = &manifest.manifest.layers;
        futures_util::stream::iter(layers.iter().filter(|l| !is_foreign(l)))
            .map(|layer| self.pull_blob_into(store, pinned, layer))
            .buffer_unordered(self.options.parallel_blobs.max(1))
            .try_for_each(|_| std::future::ready(Ok(())))
            .await?;
        // The manifest goes in last, so a manifest in the store means its blobs are there.
        store.put_bytes(&manifest.bytes).map_err(store_err)?;
        Ok(PulledImage { manifest, config })
    }

    /// Pushes an image whose manifest, config and layers are in `store`: blobs first (up
    /// to [`ClientOptions::parallel_blobs`] at a time, skipped or mounted where possible, see
    /// [`RegistryClient::push_blob`]), then the manifest's exact bytes under `target`.
    /// Returns the digest the registry confirms and what happened to each blob (layers in
    /// order, then the config).
    pub async fn push_image(
        &self,
        store: &ContentStore,
        target: &ImageRef,
        manifest: &Descriptor,
        mount_from: &[ImageRef],
    ) -> Result<PushedImage, RegistryError> {
        let store_err = |source| RegistryError::Store {
            op: op::PUSH_MANIFEST,
            reference: target.to_string(),
            source,
        };
        let bytes = store
            .read_to_vec(&manifest.digest, MAX_MANIFEST_BYTES as u64)
            .map_err(store_err)?;
        let parsed = match parse_manifest(&bytes, Some(&manifest.media_type)) {
            Ok(Manifest::Image(m)) => m,
            Ok(Manifest::Index(_)) => {
                return Err(RegistryError::Protocol {
                    op: op::PUSH_MANIFEST,
                    reference: target.to_string(),
                    detail: "push_image takes an image manifest, not an index".to_owned(),
                });
            }
            Err(e) => {
                return Err(RegistryError::Protocol {
                    op: op::PUSH_MANIFEST,
                    reference: target.to_string(),
                    detail: e.to_string(),
                });
            }
        };
        let blobs: Vec<&Descriptor> = parsed
            .layers
            .iter()
            .filter(|l| !is_foreign(l))
            .chain(std::iter::once(&parsed.config))
            .collect();
        // `buffered` (not `buffer_unordered`) keeps the outcomes in manifest order.
        let outcomes: Vec<BlobPush> = futures_util::stream::iter(blobs)
            .map(|desc| self.push_blob(store, target, desc, mount_from))
            .buffered(self.options.parallel_blobs.max(1))
            .try_collect()
            .await?;
        let digest = self
            .push_manifest(target, &bytes, &manifest.media_type)
            .await?;
        Ok(PushedImage {
            digest,
            size: bytes.len() as u64,
            blobs: outcomes,
        })
    }

    /// Fetches a manifest document (image or index) and checks it against the reference's
    /// digest when there is one.
    async fn fetch_manifest(
        &self,
        reference: &ImageRef,
    ) -> Result<(Vec<u8>, Digest), RegistryError> {
        let (client, oref, auth) = self.prepare(reference).await?;
        let (client, oref, auth) = (&client, &oref, &auth);
        let body = self
            .retry(op::PULL_MANIFEST, reference, || async move {
                client
                    .pull_manifest_raw(oref, auth, ACCEPTED_MANIFESTS)
                    .await
                    .map_err(|e| classify(op::PULL_MANIFEST, reference, e))
            })
            .await?
            .0;
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(RegistryError::Protocol {
                op: op::PULL_MANIFEST,
                reference: reference.to_string(),
                detail: format!(
                    "the manifest is {} bytes, more than the {MAX_MANIFEST_BYTES} accepted",
                    body.len()
                ),
            });
        }
        let digest = Digest::of_bytes(&body);
        if let Some(want) = reference.digest()
            && want != &digest
        {
            return Err(RegistryError::DigestMismatch {
                op: op::PULL_MANIFEST,
                reference: reference.to_string(),
                detail: format!("the registry served a manifest with digest {digest}"),
            });
        }
        bump(&self.counters.manifests_pulled);
        Ok((body.to_vec(), digest))
    }

    /// The oci-client for the reference's registry (made on first use), the reference in
    /// its form, and the credential for that registry, already registered with the client.
    async fn prepare(
        &self,
        reference: &ImageRef,
    ) -> Result<
        (
            Arc<oci_client::Client>,
            oci_client::Reference,
            oci_client::secrets::RegistryAuth,
        ),
        RegistryError,
    > {
        let registry = reference.registry();
        let client = {
            let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
            match clients.get(registry) {
                Some(c) => Arc::clone(c),
                None => {
                    let c = Arc::new(self.build_client(registry)?);
                    clients.insert(registry.to_owned(), Arc::clone(&c));
                    c
                }
            }
        };
        let oref = reference.to_oci();
        let auth = self.credentials.lookup(registry).to_registry_auth();
        // The operations without an auth argument (blobs, mounts) use what is stored here.
        client
            .store_auth_if_needed(oref.resolve_registry(), &auth)
            .await;
        Ok((client, oref, auth))
    }

    fn build_client(&self, registry: &str) -> Result<oci_client::Client, RegistryError> {
        let protocol = if uses_plain_http(registry, &self.options.insecure_registries) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            // One PUT with a streamed body per blob: one round trip instead of a PATCH per
            // 4 MiB chunk, and every registry we target supports it.
            use_monolithic_push: true,
            // Indexes are resolved here with our own platform matching.
            platform_resolver: None,
            connect_timeout: Some(self.options.connect_timeout),
            read_timeout: Some(self.options.read_timeout),
            ..ClientConfig::default()
        };
        oci_client::Client::try_from(config).map_err(|e| RegistryError::Setup {
            registry: registry.to_owned(),
            detail: e.to_string(),
        })
    }

    /// Runs `attempt` until it succeeds, fails for good, or runs out of attempts.
    async fn retry<T, F, Fut>(
        &self,
        op: &'static str,
        reference: &ImageRef,
        mut attempt: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let policy = self.options.retry;
        let max = policy.max_attempts.max(1);
        let mut n = 1;
        loop {
            match attempt().await {
                Err(e) if e.is_transient() && n < max => {
                    bump(&self.counters.retries);
                    tokio::time::sleep(policy.backoff(n - 1)).await;
                    n += 1;
                }
                Err(RegistryError::Transient { detail, .. }) => {
                    return Err(RegistryError::Transient {
                        op,
                        reference: reference.to_string(),
                        attempts: n,
                        detail,
                    });
                }
                other => return other,
            }
        }
    }

    /// Other repositories of `target`'s registry that may hold `digest`.
    fn mount_candidates(
        &self,
        target: &ImageRef,
        digest: &Digest,
        hints: &[ImageRef],
    ) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |repo: &str| {
            if repo != target.repository() && !out.iter().any(|r| r == repo) {
                out.push(repo.to_owned());
            }
        };
        for hint in hints.iter().filter(|h| h.registry() == target.registry()) {
            add(hint.repository());
        }
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(places) = seen.get(digest) {
            for (registry, repo) in places {
                if registry == target.registry() {
                    add(repo);
                }
            }
        }
        out
    }

    fn remember(&self, reference: &ImageRef, digest: &Digest) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.entry(digest.clone()).or_default().insert((
            reference.registry().to_owned(),
            reference.repository().to_owned(),
        ));
    }
}

fn parse(reference: &ImageRef, bytes: &[u8]) -> Result<Manifest, RegistryError> {
    parse_manifest(bytes, None).map_err(|e| RegistryError::Protocol {
        op: op::PULL_MANIFEST,
        reference: reference.to_string(),
        detail: e.to_string(),
    })
}

/// Foreign (non-distributable) layers live at their `urls`, not in the registry: they are
/// neither fetched nor pushed, as other clients do.
fn is_foreign(desc: &Descriptor) -> bool {
    matches!(
        desc.media_type.as_str(),
        media_type::DOCKER_LAYER_FOREIGN_TAR_GZIP | media_type::OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP
    )
}

fn platform_text(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

fn too_long(op: &'static str, reference: &ImageRef, desc: &Descriptor) -> RegistryError {
    RegistryError::DigestMismatch {
        op,
        reference: reference.to_string(),
        detail: format!(
            "the registry sent more than the {} bytes of {}",
            desc.size, desc.digest
        ),
    }
}

/// A store blob as the byte stream oci-client uploads; ends after the first read error.
fn file_stream(
    file: std::fs::File,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, OciDistributionError>> + Send + 'static {
    futures_util::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        match file.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(OciDistributionError::IoError(e)), None)),
        }
    })
}

/// What kind of failure an oci-client error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unauthorized,
    NotFound,
    Transient,
    Protocol,
}

fn status_kind(code: u16) -> Kind {
    match code {
        401 | 403 => Kind::Unauthorized,
        404 => Kind::NotFound,
        408 | 429 => Kind::Transient,
        // 501 and 505 say the server will never do it; other 5xx are worth another try.
        501 | 505 => Kind::Protocol,
        500..=599 => Kind::Transient,
        _ => Kind::Protocol,
    }
}

fn envelope_kind(envelope: &OciEnvelope) -> Kind {
    let codes = || envelope.errors.iter().map(|e| &e.code);
    if codes().any(|c| *c == OciErrorCode::Toomanyrequests) {
        Kind::Transient
    } else if codes().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
        Kind::Unauthorized
    } else if codes().any(|c| {
        matches!(
            c,
            OciErrorCode::ManifestUnknown
                | OciErrorCode::BlobUnknown
                | OciErrorCode::NameUnknown
                | OciErrorCode::NotFound
        )
    }) {
        Kind::NotFound
    } else {
        Kind::Protocol
    }
}

fn error_kind(e: &OciDistributionError) -> Kind {
    use OciDistributionError as E;
    match e {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => Kind::Unauthorized,
        E::ImageManifestNotFoundError(_) => Kind::NotFound,
        E::ServerError { code, .. } => status_kind(*code),
        E::RegistryError { envelope, .. } => envelope_kind(envelope),
        E::RequestError(r) => match r.status() {
            Some(s) => status_kind(s.as_u16()),
            // reqwest reports a body cut short while reading it as a decode error.
            None if r.is_connect()
                || r.is_timeout()
                || r.is_request()
                || r.is_body()
                || r.is_decode() =>
            {
                Kind::Transient
            }
            None => Kind::Protocol,
        },
        // Read errors of a streamed body: a cut connection.
        E::IoError(_) => Kind::Transient,
        _ => Kind::Protocol,
    }
}

fn classify(op: &'static str, reference: &ImageRef, e: OciDistributionError) -> RegistryError {
    let reference = reference.to_string();
    let detail = error_text(&e);
    match error_kind(&e) {
        Kind::Unauthorized => RegistryError::Unauthorized {
            op,
            reference,
            detail,
        },
        Kind::NotFound => RegistryError::NotFound {
            op,
            reference,
            detail,
        },
        Kind::Transient => RegistryError::Transient {
            op,
            reference,
            attempts: 1,
            detail,
        },
        Kind::Protocol => RegistryError::Protocol {
            op,
            reference,
            detail,
        },
    }
}

/// A stream read error: oci-client reports digest failures of a blob it verifies as I/O
/// errors wrapping its digest error; those are not worth a retry.
fn classify_io(op: &'static str, reference: &ImageRef, e: std::io::Error) -> RegistryError {
    let is_digest = e
        .get_ref()
        .is_some_and(|inner| inner.is::<oci_client::errors::DigestError>());
    if is_digest {
        RegistryError::DigestMismatch {
            op,
            reference: reference.to_string(),
            detail: e.to_string(),
        }
    } else {
        RegistryError::Transient {
            op,
            reference: reference.to_string(),
            attempts: 1,
            detail: e.to_string(),
        }
    }
}

/// The error with its sources, which reqwest keeps the useful part in ("connection refused").
fn error_text(e: &OciDistributionError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn plain_http_for_loopback_and_listed_hosts_only() {
        let none: Vec<String> = Vec::new();
        for local in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(uses_plain_http(local, &none), "{local}");
        }
        for remote in [
            "docker.io",
            "10.0.0.1:5000",
            "registry.example.com",
            "localhost.example.com",
        ] {
            assert!(!uses_plain_http(remote, &none), "{remote}");
        }
        let insecure = vec!["10.0.0.1:5000".to_owned(), "http://reg.lan/".to_owned()];
        assert!(uses_plain_http("10.0.0.1:5000", &insecure));
        assert!(!uses_plain_http("10.0.0.1:5001", &insecure));
        assert!(uses_plain_http("reg.lan", &insecure));
        assert!(uses_plain_http("reg.lan:8080", &insecure));
        assert!(!uses_plain_http("other.lan", &insecure));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        assert_eq!(p.backoff(0), Duration::from_millis(100));
        assert_eq!(p.backoff(1), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(800));
        assert_eq!(p.backoff(4), Duration::from_secs(1));
        assert_eq!(p.backoff(40), Duration::from_secs(1));
    }

    #[test]
    fn status_codes_map_to_kinds() {
        assert_eq!(status_kind(401), Kind::Unauthorized);
        assert_eq!(status_kind(403), Kind::Unauthorized);
        assert_eq!(status_kind(404), Kind::NotFound);
        assert_eq!(status_kind(429), Kind::Transient);
        assert_eq!(status_kind(503), Kind::Transient);
        assert_eq!(status_kind(501), Kind::Protocol);
        assert_eq!(status_kind(400), Kind::Protocol);
        let env: OciEnvelope =
            serde_json::from_str(r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"x"}]}"#)
                .unwrap();
        assert_eq!(envelope_kind(&env), Kind::NotFound);
        let env: OciEnvelope =
            serde_json::from_str(r#"{"errors":[{"code":"DENIED","message":"x"}]}"#).unwrap();
        assert_eq!(envelope_kind(&env), Kind::Unauthorized);
        let env: OciEnvelope =
            serde_json::from_str(r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"x"}]}"#)
                .unwrap();
        assert_eq!(envelope_kind(&env), Kind::Transient);
    }
}
