//! The registry client against a real registry: Debian's `docker-registry` (distribution
//! 2.8), started by each test on 127.0.0.1 with a free port and its own storage directory,
//! and killed when the test ends. The tests skip, saying so, when the binary is missing
//! (`apt-get install docker-registry`). Set `STAGECOACH_DOCKER_REGISTRY` to use another
//! binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use stagecoach_oci::layer::write_layer;
use stagecoach_oci::registry::{
    BlobPush, ClientOptions, Credential, Credentials, ImageRef, RegistryClient, RetryPolicy,
};
use stagecoach_oci::{
    ContentStore, Descriptor, Digest, History, ImageConfig, ImageIndex, ImageManifest,
    LayerOptions, LayerSource, Platform, media_type,
};

/// User and bcrypt hash (cost 4, made with `htpasswd -nbB -C 4`) for the authenticated
/// registry. Cost 4 because the registry checks the hash on every request.
const USER: &str = "stagecoach";
const PASSWORD: &str = "s3cret-pw";
const HTPASSWD: &str = "stagecoach:$2y$04$DDNOxdOiW59AJHZDYfGDgu.MGr6rfwmnuqIlshokxELWY6kW6Tp9i\n";
const START_DEADLINE: Duration = Duration::from_secs(20);

fn registry_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STAGECOACH_DOCKER_REGISTRY") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("docker-registry"))
        .find(|p| p.is_file())
}

/// A running registry; killed on drop.
struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    host: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Starts a registry, with htpasswd auth when `auth` is set. `None` (after printing why)
    /// when docker-registry is not installed.
    fn start(test: &str, auth: bool) -> Option<Registry> {
        let Some(bin) = registry_binary() else {
            // Straight to stderr: libtest captures eprintln! of passing tests, and a skip
            // must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "SKIP {test}: docker-registry is not installed (apt-get install docker-registry)"
            );
            return None;
        };
        // The port is free when asked for and could be taken before the registry binds it;
        // a few tries make that race harmless.
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let host = format!("127.0.0.1:{port}");
            let mut config = format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: {host}\n  secret: stagecoach-test-secret\n",
                dir.path().join("data").display()
            );
            if auth {
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, HTPASSWD).unwrap();
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: stagecoach-test\n    path: {}\n",
                    htpasswd.display()
                ));
            }
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).unwrap();
            let log_path = dir.path().join("registry.log");
            let log = std::fs::File::create(&log_path).unwrap();
            let child = Command::new(&bin)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
            let mut registry = Registry {
                child,
                host,
                _dir: dir,
            };
            if registry.wait_ready() {
                return Some(registry);
            }
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        panic!(
            "docker-registry did not answer on /v2/ within {START_DEADLINE:?}; its log:\n{last_log}"
        );
    }

    /// Polls `GET /v2/` until it answers 200 (or 401 with auth), the process exits, or the
    /// deadline passes.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + START_DEADLINE;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if let Some(status) = http_status(&self.host, "/v2/")
                && (status == 200 || status == 401)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn reference(&self, path: &str) -> ImageRef {
        ImageRef::parse(&format!("{}/{path}", self.host)).unwrap()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status code of a plain HTTP/1.0 GET, or `None` when nothing answers.
fn http_status(host: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// A one-layer image built in `store`: its blobs' descriptors (layer, config) and the
/// manifest bytes and digest.
struct TestImage {
    blobs: Vec<Descriptor>,
    config: Vec<u8>,
    manifest: Vec<u8>,
    manifest_digest: Digest,
}

fn build_image(store: &ContentStore, content: &str) -> TestImage {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    std::fs::write(root.path().join("etc/hello.txt"), content).unwrap();
    let layer = write_layer(
        store,
        root.path(),
        LayerSource::Tree,
        &LayerOptions {
            source_date_epoch: Some(0),
            ..LayerOptions::default()
        },
    )
    .unwrap();
    let mut config = ImageConfig::new_linux("amd64");
    config.push_layer(
        layer.diff_id.clone(),
        History {
            created_by: Some(format!("COPY hello {content}")),
            ..History::default()
        },
    );
    let (config_bytes, config_desc) = config.to_blob().unwrap();
    store.put_bytes(&config_bytes).unwrap();
    let manifest = ImageManifest::new(config_desc.clone(), vec![layer.descriptor()]);
    let (manifest_bytes, manifest_desc) = manifest.to_blob().unwrap();
    TestImage {
        blobs: vec![layer.descriptor(), config_desc],
        config: config_bytes,
        manifest: manifest_bytes,
        manifest_digest: manifest_desc.digest,
    }
}

async fn push_image(
    client: &RegistryClient,
    store: &ContentStore,
    target: &ImageRef,
    image: &TestImage,
    mount_from: &[ImageRef],
) -> Vec<BlobPush> {
    let mut outcomes = Vec::new();
    for blob in &image.blobs {
        outcomes.push(
            client
                .push_blob(store, target, blob, mount_from)
                .await
                .unwrap(),
        );
    }
    let digest = client
        .push_manifest(target, &image.manifest, media_type::OCI_MANIFEST)
        .await
        .unwrap();
    assert_eq!(digest, image.manifest_digest);
    outcomes
}

fn fast_retries() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        },
        ..ClientOptions::default()
    }
}

#[tokio::test]
async fn push_resolve_and_pull_round_trip() {
    let Some(reg) = Registry::start("push_resolve_and_pull_round_trip", false) else {
        return;
    };
    let src_dir = tempfile::tempdir().unwrap();
    let src = ContentStore::open(src_dir.path()).unwrap();
    let image = build_image(&src, "round trip");
    let target = reg.reference("stagecoach/app:v1");
    let client = RegistryClient::new(Credentials::anonymous(), fast_retries());

    let pushed = push_image(&client, &src, &target, &image, &[]).await;
    assert_eq!(pushed, vec![BlobPush::Uploaded, BlobPush::Uploaded]);
    assert_eq!(
        client.resolve(&target).await.unwrap(),
        image.manifest_digest
    );

    // Pull with a new client into a fresh store: same digests, verified blobs.
    let puller = RegistryClient::new(Credentials::anonymous(), fast_retries());
    let pulled = puller.pull_manifest(&target).await.unwrap();
    assert_eq!(pulled.digest, image.manifest_digest);
    assert_eq!(pulled.bytes, image.manifest);
    assert_eq!(pulled.media_type, media_type::OCI_MANIFEST);
    assert_eq!(pulled.index_digest, None);
    assert_eq!(pulled.reference.digest(), Some(&image.manifest_digest));
    let config = puller.pull_config(&target, &pulled.manifest).await.unwrap();
    assert_eq!(config.bytes, image.config);
    assert_eq!(config.config.architecture, "amd64");

    let dst_dir = tempfile::tempdir().unwrap();
    let dst = ContentStore::open(dst_dir.path()).unwrap();
    for layer in &pulled.manifest.layers {
        let info = puller.pull_blob_into(&dst, &target, layer).await.unwrap();
        assert_eq!(info.digest, layer.digest);
        assert_eq!(info.size, layer.size);
        dst.verify(&layer.digest).unwrap();
    }
    // Already in the store: nothing is fetched.
    puller
        .pull_blob_into(&dst, &target, &pulled.manifest.layers[0])
        .await
        .unwrap();
    let stats = puller.stats();
    // The config and the layer.
    assert_eq!(stats.blobs_downloaded, 2, "{stats:?}");
    assert_eq!(stats.blobs_already_local, 1, "{stats:?}");
    assert_eq!(stats.retries, 0, "{stats:?}");

    // By digest too.
    let by_digest = target.with_digest(image.manifest_digest.clone());
    assert_eq!(
        puller.resolve(&by_digest).await.unwrap(),
        image.manifest_digest
    );
    assert_eq!(
        puller.pull_manifest(&by_digest).await.unwrap().bytes,
        image.manifest
    );
}

#[tokio::test]
async fn second_push_skips_blobs_the_registry_has() {
    let Some(reg) = Registry::start("second_push_skips_blobs_the_registry_has", false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let image = build_image(&store, "twice");
    let target = reg.reference("stagecoach/twice:latest");
    let first = RegistryClient::new(Credentials::anonymous(), fast_retries());
    push_image(&first, &store, &target, &image, &[]).await;
    assert_eq!(first.stats().blobs_uploaded, 2);

    let second = RegistryClient::new(Credentials::anonymous(), fast_retries());
    let outcomes = push_image(
        &second,
        &store,
        &target.with_tag("again").unwrap(),
        &image,
        &[],
    )
    .await;
    assert_eq!(
        outcomes,
        vec![BlobPush::AlreadyPresent, BlobPush::AlreadyPresent]
    );
    let stats = second.stats();
    assert_eq!(
        (stats.blobs_uploaded, stats.blobs_already_remote),
        (0, 2),
        "{stats:?}"
    );
    assert_eq!(stats.manifests_pushed, 1);
}

#[tokio::test]
async fn blobs_are_mounted_across_repositories() {
    let Some(reg) = Registry::start("blobs_are_mounted_across_repositories", false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let image = build_image(&store, "mounted");
    let a = reg.reference("team/a:v1");
    let b = reg.reference("team/b:v1");
    let c = reg.reference("team/c:v1");
    let pusher = RegistryClient::new(Credentials::anonymous(), fast_retries());
    push_image(&pusher, &store, &a, &image, &[]).await;

    // A fresh client learns the source from the hint.
    let other = RegistryClient::new(Credentials::anonymous(), fast_retries());
    let outcomes = push_image(&other, &store, &b, &image, std::slice::from_ref(&a)).await;
    let from_a = BlobPush::Mounted {
        from: "team/a".to_owned(),
    };
    assert_eq!(outcomes, vec![from_a.clone(), from_a]);
    assert_eq!(other.stats().blobs_mounted, 2);
    assert_eq!(other.stats().blobs_uploaded, 0);

    // The first client remembers where it pushed the blobs and mounts without a hint.
    let outcomes = push_image(&pusher, &store, &c, &image, &[]).await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, BlobPush::Mounted { .. })),
        "{outcomes:?}"
    );

    // The mounted repository serves the image.
    let pulled = other.pull_manifest(&b).await.unwrap();
    assert_eq!(pulled.digest, image.manifest_digest);
    let fresh = tempfile::tempdir().unwrap();
    let fresh = ContentStore::open(fresh.path()).unwrap();
    other
        .pull_blob_into(&fresh, &b, &pulled.manifest.layers[0])
        .await
        .unwrap();

    // A hint for a repository without the blob falls back to an upload.
    let image2 = build_image(&store, "not anywhere yet");
    let d = reg.reference("team/d:v1");
    let outcomes = push_image(&other, &store, &d, &image2, std::slice::from_ref(&a)).await;
    assert_eq!(outcomes, vec![BlobPush::Uploaded, BlobPush::Uploaded]);
}

#[tokio::test]
async fn an_image_is_copied_inside_the_registry_without_its_bytes() {
    let Some(reg) = Registry::start("an_image_is_copied_inside_the_registry", false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let image = build_image(&store, "copied");
    let a = reg.reference("team/a:v1");
    let pusher = RegistryClient::new(Credentials::anonymous(), fast_retries());
    push_image(&pusher, &store, &a, &image, &[]).await;
    let pinned = a.with_digest(image.manifest_digest.clone());

    // A client that never saw the blobs: another repository and tag, by mounts alone.
    let copier = RegistryClient::new(Credentials::anonymous(), fast_retries());
    let b = reg.reference("team/b:other");
    let digest = copier.copy_within_registry(&pinned, &b).await.unwrap();
    assert_eq!(digest, image.manifest_digest);
    assert_eq!(copier.stats().blobs_mounted, 2);
    assert_eq!(copier.stats().blobs_uploaded, 0);
    assert_eq!(copier.resolve(&b).await.unwrap(), image.manifest_digest);

    // The same repository under another tag: the blobs are there already.
    let c = reg.reference("team/a:v2");
    copier.copy_within_registry(&pinned, &c).await.unwrap();
    assert_eq!(copier.resolve(&c).await.unwrap(), image.manifest_digest);

    // A tag that moved is put back.
    let other = build_image(&store, "another image");
    push_image(&pusher, &store, &b, &other, &[]).await;
    assert_eq!(copier.resolve(&b).await.unwrap(), other.manifest_digest);
    copier.copy_within_registry(&pinned, &b).await.unwrap();
    assert_eq!(copier.resolve(&b).await.unwrap(), image.manifest_digest);

    // A manifest the registry does not have is an error, and so is another registry.
    let missing = a.with_digest(stagecoach_oci::Digest::of_bytes(b"no such manifest"));
    assert!(copier.copy_within_registry(&missing, &c).await.is_err());
    let elsewhere = stagecoach_oci::registry::ImageRef::parse("127.0.0.1:1/team/x:1").unwrap();
    assert!(
        copier
            .copy_within_registry(&pinned, &elsewhere)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn unknown_tags_and_repositories_are_not_found() {
    let Some(reg) = Registry::start("unknown_tags_and_repositories_are_not_found", false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let image = build_image(&store, "exists");
    let client = RegistryClient::new(Credentials::anonymous(), fast_retries());
    push_image(
        &client,
        &store,
        &reg.reference("stagecoach/app:v1"),
        &image,
        &[],
    )
    .await;

    for missing in ["stagecoach/app:nope", "stagecoach/nothing-here:v1"] {
        let r = reg.reference(missing);
        let err = client.pull_manifest(&r).await.unwrap_err();
        assert_eq!(err.reason(), "NotFound", "{err}");
        assert!(err.to_string().contains(&r.to_string()), "{err}");
        let err = client.resolve(&r).await.unwrap_err();
        assert_eq!(err.reason(), "NotFound", "{err}");
    }
    let absent = Descriptor::new(
        media_type::OCI_LAYER_TAR_GZIP,
        Digest::of_bytes(b"never pushed"),
        12,
    );
    let err = client
        .pull_blob_into(&store, &reg.reference("stagecoach/app:v1"), &absent)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "NotFound", "{err}");
    assert!(!store.exists(&absent.digest).unwrap());
    assert_eq!(client.stats().retries, 0);
}

#[tokio::test]
async fn indexes_and_docker_manifests_are_followed() {
    let Some(reg) = Registry::start("indexes_and_docker_manifests_are_followed", false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let amd = build_image(&store, "amd64 image");
    let arm = build_image(&store, "arm64 image");
    let client = RegistryClient::new(Credentials::anonymous(), fast_retries());
    let repo = reg.reference("multi/app:amd64");
    push_image(&client, &store, &repo, &amd, &[]).await;
    push_image(&client, &store, &repo.with_tag("arm64").unwrap(), &arm, &[]).await;

    let mut index = ImageIndex::new();
    for (image, arch) in [(&arm, "arm64"), (&amd, "amd64")] {
        let mut d = Descriptor::new(
            media_type::OCI_MANIFEST,
            image.manifest_digest.clone(),
            image.manifest.len() as u64,
        );
        d.platform = Some(Platform::linux(arch));
        index.manifests.push(d);
    }
    let (index_bytes, index_desc) = index.to_blob().unwrap();
    let tag = repo.with_tag("multi").unwrap();
    let pushed = client
        .push_manifest(&tag, &index_bytes, media_type::OCI_INDEX)
        .await
        .unwrap();
    assert_eq!(pushed, index_desc.digest);
    assert_eq!(client.resolve(&tag).await.unwrap(), index_desc.digest);
    let pulled = client.pull_manifest(&tag).await.unwrap();
    assert_eq!(pulled.digest, amd.manifest_digest);
    assert_eq!(pulled.index_digest, Some(index_desc.digest.clone()));

    // Another platform is not guessed.
    let s390 = RegistryClient::new(
        Credentials::anonymous(),
        ClientOptions {
            platform: Platform::linux("s390x"),
            ..fast_retries()
        },
    );
    let err = s390.pull_manifest(&tag).await.unwrap_err();
    assert_eq!(err.reason(), "PlatformNotFound", "{err}");

    // A Docker v2 schema 2 manifest over the same blobs.
    let mut docker: serde_json::Value = serde_json::from_slice(&amd.manifest).unwrap();
    docker["mediaType"] = media_type::DOCKER_MANIFEST.into();
    docker["config"]["mediaType"] = media_type::DOCKER_CONFIG.into();
    docker["layers"][0]["mediaType"] = media_type::DOCKER_LAYER_TAR_GZIP.into();
    let docker_bytes = serde_json::to_vec(&docker).unwrap();
    let docker_tag = repo.with_tag("docker").unwrap();
    client
        .push_manifest(&docker_tag, &docker_bytes, media_type::DOCKER_MANIFEST)
        .await
        .unwrap();
    let pulled = client.pull_manifest(&docker_tag).await.unwrap();
    assert!(pulled.manifest.is_docker());
    assert_eq!(pulled.media_type, media_type::DOCKER_MANIFEST);
    assert_eq!(pulled.digest, Digest::of_bytes(&docker_bytes));
    let config = client
        .pull_config(&docker_tag, &pulled.manifest)
        .await
        .unwrap();
    assert_eq!(config.bytes, amd.config);
}

#[tokio::test]
async fn basic_auth_uses_config_json_credentials() {
    let Some(reg) = Registry::start("basic_auth_uses_config_json_credentials", true) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let image = build_image(&store, "private");
    let target = reg.reference("private/app:v1");

    let anonymous = RegistryClient::new(Credentials::anonymous(), fast_retries());
    let err = anonymous
        .push_blob(&store, &target, &image.blobs[0], &[])
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "Unauthorized", "{err}");
    assert!(err.to_string().contains(&target.to_string()), "{err}");
    let err = anonymous.resolve(&target).await.unwrap_err();
    assert_eq!(err.reason(), "Unauthorized", "{err}");

    let mut wrong = Credentials::anonymous();
    wrong.insert(
        &reg.host,
        Credential::Basic {
            username: USER.to_owned(),
            password: "wrong".to_owned(),
        },
    );
    let err = RegistryClient::new(wrong, fast_retries())
        .resolve(&target)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "Unauthorized", "{err}");

    // A config.json as docker login writes it, and another entry to be ignored.
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let config_path = write_config_json(
        dir.path(),
        &format!(
            r#"{{"auths":{{"http://{host}/v2/":{{"auth":"{auth}"}},"https://index.docker.io/v1/":{{"auth":"eDp5"}}}}}}"#,
            host = reg.host
        ),
    );
    let creds = Credentials::from_file(&config_path).unwrap();
    let client = RegistryClient::new(creds, fast_retries());
    push_image(&client, &store, &target, &image, &[]).await;
    assert_eq!(
        client.resolve(&target).await.unwrap(),
        image.manifest_digest
    );
    let pulled = client.pull_manifest(&target).await.unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let fresh = ContentStore::open(fresh.path()).unwrap();
    client
        .pull_blob_into(&fresh, &target, &pulled.manifest.layers[0])
        .await
        .unwrap();
    // Secrets stay out of Debug output.
    let shown = format!("{client:?}");
    assert!(!shown.contains(PASSWORD), "{shown}");
}

fn write_config_json(dir: &Path, json: &str) -> PathBuf {
    let path = dir.join("config.json");
    std::fs::write(&path, json).unwrap();
    path
}

#[tokio::test]
async fn connection_failures_are_retried_then_transient() {
    // Needs no registry: a port nobody listens on.
    let host = format!("127.0.0.1:{}", free_port());
    let r = ImageRef::parse(&format!("{host}/nothing:v1")).unwrap();
    let client = RegistryClient::new(Credentials::anonymous(), fast_retries());
    let err = client.resolve(&r).await.unwrap_err();
    assert_eq!(err.reason(), "Transient", "{err}");
    assert!(err.to_string().contains("3 attempt"), "{err}");
    assert!(err.to_string().contains(&r.to_string()), "{err}");
    assert_eq!(client.stats().retries, 2);
}

/// Incompressible bytes without a random-number dependency (xorshift64).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test]
async fn whole_images_with_a_multi_megabyte_layer() {
    let Some(reg) = Registry::start("whole_images_with_a_multi_megabyte_layer", false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let root = tempfile::tempdir().unwrap();
    // Larger than oci-client's 4 MiB chunk and our 1 MiB read size, and not a multiple.
    std::fs::write(
        root.path().join("big.bin"),
        noise(6 * 1024 * 1024 + 12345, 7),
    )
    .unwrap();
    let layer = write_layer(
        &store,
        root.path(),
        LayerSource::Tree,
        &LayerOptions {
            source_date_epoch: Some(0),
            ..LayerOptions::default()
        },
    )
    .unwrap();
    assert!(layer.size > 6 * 1024 * 1024, "{}", layer.size);
    let mut config = ImageConfig::new_linux("amd64");
    config.push_layer(layer.diff_id.clone(), History::default());
    let (config_bytes, config_desc) = config.to_blob().unwrap();
    store.put_bytes(&config_bytes).unwrap();
    let (manifest_bytes, manifest_desc) = ImageManifest::new(config_desc, vec![layer.descriptor()])
        .to_blob()
        .unwrap();
    store.put_bytes(&manifest_bytes).unwrap();

    let target = reg.reference("big/app:v1");
    let client = RegistryClient::new(Credentials::anonymous(), fast_retries());
    let pushed = client
        .push_image(&store, &target, &manifest_desc, &[])
        .await
        .unwrap();
    assert_eq!(pushed.digest, manifest_desc.digest);
    assert_eq!(pushed.blobs, vec![BlobPush::Uploaded, BlobPush::Uploaded]);
    let again = client
        .push_image(&store, &target, &manifest_desc, &[])
        .await
        .unwrap();
    assert_eq!(
        again.blobs,
        vec![BlobPush::AlreadyPresent, BlobPush::AlreadyPresent]
    );

    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = ContentStore::open(fresh_dir.path()).unwrap();
    let puller = RegistryClient::new(Credentials::anonymous(), fast_retries());
    let pulled = puller.pull_image(&fresh, &target).await.unwrap();
    assert_eq!(pulled.manifest.digest, manifest_desc.digest);
    for digest in [
        &manifest_desc.digest,
        &layer.digest,
        &pulled.manifest.manifest.config.digest,
    ] {
        fresh.verify(digest).unwrap();
    }
    puller.pull_image(&fresh, &target).await.unwrap();
    let stats = puller.stats();
    // Config and layer fetched once; the second pull only fetches the manifest again.
    assert_eq!(
        (stats.blobs_downloaded, stats.blobs_already_local),
        (2, 2),
        "{stats:?}"
    );
    assert_eq!(stats.manifests_pulled, 2, "{stats:?}");
}

/// A server that answers every request with `status` and counts the requests.
fn failing_server(
    status: &'static str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            seen.fetch_add(1, Ordering::SeqCst);
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while !buf.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                buf.push(byte[0]);
            }
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (host, count)
}

#[tokio::test]
async fn server_errors_and_rate_limits_are_retried() {
    for status in ["503 Service Unavailable", "429 Too Many Requests"] {
        let (host, requests) = failing_server(status);
        let r = ImageRef::parse(&format!("{host}/busy:v1")).unwrap();
        let client = RegistryClient::new(Credentials::anonymous(), fast_retries());
        let err = client.pull_manifest(&r).await.unwrap_err();
        assert_eq!(err.reason(), "Transient", "{status}: {err}");
        assert!(err.to_string().contains("3 attempt"), "{err}");
        assert_eq!(client.stats().retries, 2);
        assert!(requests.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    }
    // A client error is final at once.
    let (host, _) = failing_server("400 Bad Request");
    let client = RegistryClient::new(Credentials::anonymous(), fast_retries());
    let err = client
        .pull_manifest(&ImageRef::parse(&format!("{host}/bad:v1")).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "Protocol", "{err}");
    assert_eq!(client.stats().retries, 0);
}

/// Serves one blob: the first GET gets half of it and a closed connection; a GET with
/// `Range: bytes=K-` gets the rest as a 206. Returns the host and the ranges asked for.
fn flaky_blob_server(blob: Vec<u8>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<u64>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let ranges = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = ranges.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_lowercase();
            if !head.contains("/blobs/") {
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
                );
                continue;
            }
            let range = head
                .lines()
                .find_map(|l| l.strip_prefix("range: bytes="))
                .and_then(|r| r.trim_end_matches('-').trim().parse::<u64>().ok());
            let n = blob.len();
            match range {
                None => {
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
                    );
                    let _ = conn.write_all(&blob[..n / 2]);
                    let _ = conn.flush();
                    // Dropping the connection cuts the body short.
                }
                Some(k) => {
                    seen.lock().unwrap().push(k);
                    let k = usize::try_from(k).unwrap();
                    let _ = write!(
                        conn,
                        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {k}-{}/{n}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        n - 1,
                        n - k
                    );
                    let _ = conn.write_all(&blob[k..]);
                }
            }
        }
    });
    (host, ranges)
}

#[tokio::test]
async fn a_cut_download_resumes_where_it_stopped() {
    let blob = noise(3 * 1024 * 1024 + 17, 11);
    let desc = Descriptor::new(
        media_type::OCI_LAYER_TAR_GZIP,
        Digest::of_bytes(&blob),
        blob.len() as u64,
    );
    let (host, ranges) = flaky_blob_server(blob.clone());
    let r = ImageRef::parse(&format!("{host}/flaky/app:v1")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let client = RegistryClient::new(Credentials::anonymous(), fast_retries());
    let info = client.pull_blob_into(&store, &r, &desc).await.unwrap();
    assert_eq!(info.digest, desc.digest);
    store.verify(&desc.digest).unwrap();
    let stats = client.stats();
    assert_eq!(
        (stats.retries, stats.resumed_downloads),
        (1, 1),
        "{stats:?}"
    );
    let asked = ranges.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0] > 0 && asked[0] <= blob.len() as u64 / 2,
        "{asked:?}"
    );
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(store.blobs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A registry that wants bearer tokens, Docker Hub style: `/v2/` answers 401 with a
/// challenge naming `/token`, which hands out a token only for `user:password` in basic
/// auth; the manifest of any tag is served only with that token. Records the basic
/// credentials the token endpoint saw.
fn bearer_registry(
    user: &'static str,
    password: &'static str,
    manifest: Vec<u8>,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let logins = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = logins.clone();
    let realm = format!("http://{host}/token");
    let digest = Digest::of_bytes(&manifest);
    std::thread::spawn(move || {
        let b64 = base64::engine::general_purpose::STANDARD;
        let good = format!("basic {}", b64.encode(format!("{user}:{password}"))).to_lowercase();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut raw = Vec::new();
            let mut byte = [0u8; 1];
            while !raw.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                raw.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&raw).to_string();
            let request_line = head.lines().next().unwrap_or_default().to_owned();
            let authorization = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("authorization")
                        .then(|| v.trim().to_owned())
                })
                .unwrap_or_default();
            let denied = r#"{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}"#;
            let unauthorized = format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",service=\"fake\"\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{denied}",
                denied.len()
            );
            let reply = if request_line.contains(" /token") {
                if let Some(basic) = authorization.strip_prefix("Basic ") {
                    let decoded = b64.decode(basic).unwrap_or_default();
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&decoded).to_string());
                }
                if authorization.to_lowercase() == good {
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\nConnection: close\r\n\r\n{\"token\":\"t0k3n\"}".to_owned()
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_owned()
                }
            } else if request_line.contains("/manifests/") && authorization == "Bearer t0k3n" {
                let body = if request_line.starts_with("HEAD") {
                    String::new()
                } else {
                    String::from_utf8(manifest.clone()).unwrap()
                };
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nDocker-Content-Digest: {digest}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    media_type::OCI_MANIFEST,
                    manifest.len()
                )
            } else {
                unauthorized
            };
            let _ = conn.write_all(reply.as_bytes());
        }
    });
    (host, logins)
}

#[tokio::test]
async fn bearer_tokens_are_fetched_with_the_configured_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let image = build_image(&store, "behind a token");
    let (host, logins) = bearer_registry("robot", "pa55", image.manifest.clone());
    let r = ImageRef::parse(&format!("{host}/org/app:v1")).unwrap();

    let anonymous = RegistryClient::new(Credentials::anonymous(), fast_retries());
    let err = anonymous.resolve(&r).await.unwrap_err();
    assert_eq!(err.reason(), "Unauthorized", "{err}");

    let auth = base64::engine::general_purpose::STANDARD.encode("robot:pa55");
    let config = format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#);
    let client = RegistryClient::new(
        Credentials::from_json(config.as_bytes()).unwrap(),
        fast_retries(),
    );
    assert_eq!(client.resolve(&r).await.unwrap(), image.manifest_digest);
    let pulled = client.pull_manifest(&r).await.unwrap();
    assert_eq!(pulled.bytes, image.manifest);
    assert!(logins.lock().unwrap().iter().any(|l| l == "robot:pa55"));

    // An identity token goes to the token endpoint as the password of its user.
    let config = format!(
        r#"{{"auths":{{"{host}":{{"username":"tok-user","identitytoken":"refresh-123"}}}}}}"#
    );
    let client = RegistryClient::new(
        Credentials::from_json(config.as_bytes()).unwrap(),
        fast_retries(),
    );
    let err = client.resolve(&r).await.unwrap_err();
    assert_eq!(err.reason(), "Unauthorized", "{err}");
    assert!(
        logins
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "tok-user:refresh-123")
    );
}
