//! Image configs and manifests: digests that do not move between runs or builds, and an
//! OCI layout that a real tool (skopeo) accepts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;

use common::*;
use stagecoach_oci::config::rfc3339_utc;
use stagecoach_oci::layer::{LayerOptions, LayerSource, write_layer};
use stagecoach_oci::layout::OciLayoutWriter;
use stagecoach_oci::{
    Compression, ContentStore, Digest, HealthConfig, History, ImageConfig, ImageManifest, Manifest,
    media_type, parse_manifest,
};

fn diff_id(n: u8) -> Digest {
    Digest::of_bytes(&[n])
}

/// A config using every field the builder sets, filled in an order unlike the output's.
fn full_config() -> ImageConfig {
    let mut cfg = ImageConfig::new_linux("amd64");
    cfg.created = Some(rfc3339_utc(1_700_000_000));
    cfg.author = Some("Stagecoach tests".into());
    let c = cfg.container_config_mut();
    c.stop_signal = Some("SIGTERM".into());
    c.labels.insert("z.last".into(), "1".into());
    c.labels.insert("a.first".into(), "2".into());
    c.volumes.insert("/var/lib/data".into());
    c.volumes.insert("/cache".into());
    c.exposed_ports.insert("8080/tcp".into());
    c.exposed_ports.insert("53/udp".into());
    c.env = vec![
        "PATH=/usr/local/bin:/usr/bin:/bin".into(),
        "LANG=C.UTF-8".into(),
    ];
    c.entrypoint = Some(vec!["/app".into()]);
    c.cmd = Some(vec!["--serve".into(), "--port=8080".into()]);
    c.working_dir = Some("/srv".into());
    c.user = Some("1000:1000".into());
    c.healthcheck = Some(HealthConfig {
        test: vec![
            "CMD-SHELL".into(),
            "wget -q -O- localhost:8080/health".into(),
        ],
        interval_ns: Some(30_000_000_000),
        timeout_ns: Some(3_000_000_000),
        start_period_ns: Some(5_000_000_000),
        start_interval_ns: None,
        retries: Some(3),
    });
    c.on_build = vec!["RUN echo child".into()];
    c.shell = Some(vec![
        "/bin/bash".into(),
        "-euo".into(),
        "pipefail".into(),
        "-c".into(),
    ]);
    cfg.push_layer(
        diff_id(1),
        History {
            created: Some(rfc3339_utc(0)),
            created_by: Some("COPY app /app # buildkit".into()),
            ..History::default()
        },
    );
    cfg.push_empty(History {
        created: Some(rfc3339_utc(0)),
        created_by: Some("CMD [\"--serve\"]".into()),
        comment: Some("buildkit.dockerfile.v0".into()),
        ..History::default()
    });
    cfg.push_layer(diff_id(2), History::default());
    cfg
}

/// Golden values: if these change, every image Stagecoach builds changes digest. Update
/// them only for a deliberate format change, and say so in the commit.
const CONFIG_DIGEST: &str =
    "sha256:b2af2803df6ffd8998109978965209b206bdc6fda081101503b03be41fc5f489";
const MANIFEST_DIGEST: &str =
    "sha256:5102e410497b3fcd2f9868f4e45b46b8b6f206feab9fdaa39a54585a31fabaa8";

#[test]
fn config_and_manifest_digests_are_stable() {
    let cfg = full_config();
    let (bytes, desc) = cfg.to_blob().unwrap();
    // Same value built again, and parsed back from its own bytes: same digest.
    assert_eq!(full_config().to_blob().unwrap().1, desc);
    let reparsed = ImageConfig::from_json(&bytes).unwrap();
    assert_eq!(reparsed, cfg);
    assert_eq!(reparsed.to_canonical_json().unwrap(), bytes);
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(text.starts_with(r#"{"architecture":"amd64","author":"Stagecoach tests","config":{"Cmd":["--serve","--port=8080"],"Entrypoint":["/app"],"Env":["PATH="#), "{text}");
    assert!(
        text.contains(r#""ExposedPorts":{"53/udp":{},"8080/tcp":{}}"#),
        "{text}"
    );
    assert!(
        text.contains(r#""Labels":{"a.first":"2","z.last":"1"}"#),
        "{text}"
    );
    assert!(text.contains(r#""rootfs":{"diff_ids":["#), "{text}");
    assert!(text.contains(r#""empty_layer":true"#), "{text}");
    assert_eq!(desc.media_type, media_type::OCI_CONFIG);

    let layers = vec![
        stagecoach_oci::Descriptor::new(media_type::OCI_LAYER_TAR_GZIP, diff_id(3), 1234),
        stagecoach_oci::Descriptor::new(media_type::OCI_LAYER_TAR_ZSTD, diff_id(4), 99),
    ];
    let mut manifest = ImageManifest::new(desc.clone(), layers);
    manifest.annotations = BTreeMap::from([(
        "org.opencontainers.image.created".to_owned(),
        rfc3339_utc(0),
    )]);
    let (mbytes, mdesc) = manifest.to_blob().unwrap();
    let Manifest::Image(back) = parse_manifest(&mbytes, None).unwrap() else {
        panic!("not an image manifest");
    };
    assert_eq!(back, manifest);
    assert_eq!(mdesc.media_type, media_type::OCI_MANIFEST);

    println!(
        "config digest {} manifest digest {}",
        desc.digest, mdesc.digest
    );
    assert_eq!(desc.digest.as_str(), CONFIG_DIGEST, "config bytes: {text}");
    assert_eq!(
        mdesc.digest.as_str(),
        MANIFEST_DIGEST,
        "manifest bytes: {}",
        String::from_utf8_lossy(&mbytes)
    );
}

#[test]
fn oci_layout_output_is_accepted_by_skopeo() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    write_file(&root.join("app"), b"#!/bin/sh\necho hi\n", 0o755);
    mkdir(&root.join("etc"), 0o755);
    write_file(&root.join("etc/motd"), b"hello\n", 0o644);
    let cache = ContentStore::open(tmp.path().join("cache")).unwrap();
    let layer = write_layer(
        &cache,
        &root,
        LayerSource::Tree,
        &LayerOptions {
            compression: Compression::Gzip,
            source_date_epoch: Some(0),
        },
    )
    .unwrap();
    let mut cfg = ImageConfig::new_linux("amd64");
    cfg.created = Some(rfc3339_utc(0));
    cfg.container_config_mut().cmd = Some(vec!["/app".into()]);
    cfg.push_layer(layer.diff_id.clone(), History::default());
    let (cbytes, cdesc) = cfg.to_blob().unwrap();
    cache.put_bytes(&cbytes).unwrap();
    let (mbytes, mdesc) = ImageManifest::new(cdesc, vec![layer.descriptor()])
        .to_blob()
        .unwrap();
    cache.put_bytes(&mbytes).unwrap();

    let out = tmp.path().join("out");
    let mut writer = OciLayoutWriter::create(&out).unwrap();
    writer.add_image(&cache, &mdesc, Some("latest")).unwrap();
    writer.finish().unwrap();

    assert_eq!(
        fs::read_to_string(out.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index = fs::read(out.join("index.json")).unwrap();
    let Manifest::Index(index) = parse_manifest(&index, None).unwrap() else {
        panic!("index.json is not an index");
    };
    assert_eq!(index.manifests.len(), 1);
    assert_eq!(index.manifests[0].digest, mdesc.digest);
    assert_eq!(
        index.manifests[0].annotations["org.opencontainers.image.ref.name"],
        "latest"
    );
    let layout_store = ContentStore::open(&out).unwrap();
    for d in [
        &mdesc.digest,
        &layer.digest,
        &cfg.to_blob().unwrap().1.digest,
    ] {
        layout_store.verify(d).unwrap();
    }

    let skopeo = Command::new("skopeo").arg("--version").output();
    if !skopeo.map(|o| o.status.success()).unwrap_or(false) {
        eprintln!("skopeo check skipped: skopeo not installed");
        return;
    }
    let reference = format!("oci:{}:latest", out.display());
    let inspect = Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(&reference)
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "skopeo inspect failed: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    assert_eq!(inspect.stdout, mbytes);
    // A full copy makes skopeo read and verify every blob against its digest.
    let copied = tmp.path().join("copied");
    let copy = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(&reference)
        .arg(format!("dir:{}", copied.display()))
        .output()
        .unwrap();
    assert!(
        copy.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&copy.stderr)
    );
    assert_eq!(
        fs::read(copied.join(layer.digest.hex())).unwrap(),
        fs::read(layout_store.blob_path(&layer.digest)).unwrap()
    );
}
