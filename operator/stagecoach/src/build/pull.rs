//! Base images for a local build: every image a needed stage starts from or copies from is
//! resolved to a digest and pulled into the content store before any stage runs, so a
//! failing pull stops the build before work is done and stages never wait on a network.
//! The registry client is async; this module owns the one small runtime the CLI needs, so
//! the stage executor stays free of it.

use std::collections::BTreeMap;

use stagecoach_builder::local::{Pulled, PulledImage};
use stagecoach_oci::ContentStore;
use stagecoach_oci::registry::{ClientOptions, Credentials, ImageRef, RegistryClient};

use super::BuildError;

/// Builds the registry client from the CLI's options.
pub fn client(insecure: &[String]) -> Result<RegistryClient, BuildError> {
    let credentials = match Credentials::default_path() {
        Some(path) => Credentials::from_file_if_exists(&path).map_err(|e| BuildError::Pull {
            image: path.display().to_string(),
            message: e.to_string(),
        })?,
        None => Credentials::anonymous(),
    };
    let options = ClientOptions {
        insecure_registries: insecure.to_vec(),
        ..ClientOptions::default()
    };
    Ok(RegistryClient::new(credentials, options))
}

/// A client without credentials, for pulls in a container where user code runs.
pub fn client_anonymous(insecure: &[String]) -> RegistryClient {
    RegistryClient::new(
        Credentials::anonymous(),
        ClientOptions {
            insecure_registries: insecure.to_vec(),
            ..ClientOptions::default()
        },
    )
}

/// A current-thread runtime: pulls run concurrently as futures, no worker threads needed.
pub fn runtime() -> Result<tokio::runtime::Runtime, BuildError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BuildError::Io {
            action: "start the async runtime",
            path: String::new(),
            source: e,
        })
}

/// Pulls each image (manifest, config, layers) into `store`, all at once.
/// Pulls each image (manifest, config, layers) into `store`, all at once; returns them with
/// their pinned references (for cross-repository mounts when pushing).
pub fn pull_all(
    rt: &tokio::runtime::Runtime,
    client: &RegistryClient,
    store: &ContentStore,
    images: &[String],
    log: &dyn Fn(String),
) -> Result<(Pulled, Vec<ImageRef>), BuildError> {
    let mut refs = Vec::new();
    for text in images {
        let reference = ImageRef::parse(text).map_err(|e| BuildError::Pull {
            image: text.clone(),
            message: e.to_string(),
        })?;
        refs.push((text.clone(), reference));
    }
    let results = rt.block_on(async {
        let pulls = refs.iter().map(|(text, reference)| async move {
            let started = std::time::Instant::now();
            let pulled = client.pull_image(store, reference).await;
            (text, started.elapsed(), pulled)
        });
        futures_util::future::join_all(pulls).await
    });
    let mut out = BTreeMap::new();
    let mut pinned = Vec::new();
    for (text, elapsed, pulled) in results {
        let pulled = pulled.map_err(|e| BuildError::Pull {
            image: text.clone(),
            message: e.to_string(),
        })?;
        log(format!(
            "[pull] {text} → {} ({:.1}s)",
            pulled.manifest.digest,
            elapsed.as_secs_f64()
        ));
        let (manifest, config) = (&pulled.manifest.manifest, &pulled.config.config);
        let layers =
            stagecoach_oci::layer_records(manifest, config).ok_or_else(|| BuildError::Pull {
                image: text.clone(),
                message: format!(
                    "the manifest lists {} layers but the config {} diffIDs",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            })?;
        pinned.push(pulled.manifest.reference.clone());
        out.insert(
            text.clone(),
            PulledImage {
                reference: pulled.manifest.reference.to_string(),
                manifest: pulled.manifest.digest.clone(),
                config: pulled.config.config.clone(),
                layers,
            },
        );
    }
    Ok((out, pinned))
}
