//! The ImageBuilds users will actually write — DESIGN.md §1 and `examples/hello` — read into
//! the Rust types without loss, fit the generated schema, and get the documented defaults.

// Helpers outside #[test] functions fail loudly on purpose, like the tests themselves;
// clippy.toml's test exemption only reaches #[test] bodies.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};
use stagecoach_api::{
    ImageBuild, ImageBuildStatus, ImageStatus, SourceError, SourceKind, StageState, StageStatus,
};

fn from_yaml(text: &str) -> ImageBuild {
    serde_saphyr::from_str(text).expect("ImageBuild YAML deserializes")
}

#[test]
fn design_example_deserializes_with_every_field() {
    let ib = from_yaml(common::DESIGN_EXAMPLE);
    assert_eq!(ib.metadata.name.as_deref(), Some("who"));
    assert_eq!(ib.metadata.namespace.as_deref(), Some("apps"));
    let spec = &ib.spec;
    let Ok(SourceKind::Git(git)) = spec.source.kind() else {
        panic!("expected a git source, got {:?}", spec.source);
    };
    assert_eq!(git.url, "https://example.com/team/who.git");
    assert_eq!(git.revision.as_deref(), Some("main"));
    assert_eq!(git.sub_path.as_deref(), Some(""));
    assert_eq!(spec.dockerfile, "Dockerfile");
    assert_eq!(
        spec.build_args,
        BTreeMap::from([("GO_VERSION".to_owned(), "1.23".to_owned())])
    );
    let targets: Vec<(&str, Option<&str>)> = spec
        .targets
        .iter()
        .map(|t| (t.stage.as_str(), t.image.as_deref()))
        .collect();
    assert_eq!(
        targets,
        [
            ("test", None),
            ("prod", Some("registry.example.com/apps/who:2.0"))
        ]
    );
    assert_eq!(spec.image, None);
    assert_eq!(
        spec.push_secret.as_ref().map(|s| s.name.as_str()),
        Some("regcred")
    );
    assert_eq!(
        spec.cache.as_ref().map(|c| c.claim_name.as_str()),
        Some("stagecoach-cache")
    );
    assert_eq!(spec.timeout, "30m");
    assert_eq!(
        spec.timeout_duration(),
        Ok(std::time::Duration::from_secs(1800))
    );
    assert!(ib.status.is_none());
}

/// YAML → types → JSON keeps every field the user wrote, under the same name: nothing is
/// dropped or renamed on the way through the controller.
#[test]
fn design_example_round_trips() {
    let written: Value = serde_saphyr::from_str(common::DESIGN_EXAMPLE).expect("plain YAML");
    let ib = from_yaml(common::DESIGN_EXAMPLE);
    let json = serde_json::to_value(&ib).expect("serializes");
    assert_eq!(json, written);
    let back: ImageBuild = serde_json::from_value(json).expect("deserializes again");
    assert_eq!(back, ib);
    let yaml = serde_saphyr::to_string(&ib).expect("YAML");
    assert_eq!(from_yaml(&yaml), ib);
}

#[test]
fn design_example_fits_the_schema() {
    let value: Value = serde_saphyr::from_str(common::DESIGN_EXAMPLE).expect("plain YAML");
    let errors = common::structural_errors(&common::schema(), &value);
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn hello_example_deserializes_and_fits_the_schema() {
    let text = common::repo_file("examples/hello/imagebuild.yaml");
    let ib = from_yaml(&text);
    let Ok(SourceKind::Inline(inline)) = ib.spec.source.kind() else {
        panic!("expected an inline source");
    };
    let dockerfile = inline.dockerfile.as_deref().unwrap_or_default();
    assert_eq!(
        dockerfile
            .lines()
            .filter(|l| l.starts_with("FROM "))
            .count(),
        2,
        "the example is a two-stage build"
    );
    assert!(dockerfile.contains("COPY --from=page"));
    assert!(inline.files.contains_key("index.html.in"));
    assert!(ib.spec.targets.is_empty());
    assert!(ib.spec.image.is_some());
    assert!(ib.spec.timeout_duration().is_ok());

    let value: Value = serde_saphyr::from_str(&text).expect("plain YAML");
    let errors = common::structural_errors(&common::schema(), &value);
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn defaults_fill_what_the_user_left_out() {
    let ib = from_yaml(
        r#"
apiVersion: stagecoach.dev/v1alpha1
kind: ImageBuild
metadata: {name: tiny}
spec:
  source:
    configMap: {name: ctx}
"#,
    );
    assert_eq!(ib.spec.dockerfile, stagecoach_api::DEFAULT_DOCKERFILE);
    assert_eq!(ib.spec.timeout, stagecoach_api::DEFAULT_TIMEOUT);
    assert_eq!(
        ib.spec.timeout_duration(),
        Ok(std::time::Duration::from_secs(3600))
    );
    assert!(ib.spec.build_args.is_empty());
    assert!(ib.spec.targets.is_empty());
    assert!(ib.spec.tolerations.is_empty());
    assert!(ib.spec.node_selector.is_empty());
    assert_eq!(ib.spec.image, None);
    assert_eq!(ib.spec.push_secret, None);
    assert_eq!(ib.spec.cache, None);
    assert_eq!(ib.spec.resources, None);
    assert_eq!(ib.spec.service_account_name, None);
    // Empty collections are left out when written back, so a server-side apply from this
    // object claims no fields the user did not set.
    let json = serde_json::to_value(&ib.spec).expect("serializes");
    assert_eq!(
        json,
        json!({"source": {"configMap": {"name": "ctx"}}, "dockerfile": "Dockerfile", "timeout": "1h"})
    );
}

#[test]
fn source_kind_needs_exactly_one() {
    let mut ib = from_yaml(common::DESIGN_EXAMPLE);
    ib.spec.source.config_map = Some(stagecoach_api::ConfigMapSource { name: "ctx".into() });
    assert_eq!(ib.spec.source.kind(), Err(SourceError::Ambiguous));
    ib.spec.source = Default::default();
    assert_eq!(ib.spec.source.kind(), Err(SourceError::Missing));
}

#[test]
fn schema_rejects_bad_values() {
    let schema = common::schema();
    let base: Value = serde_saphyr::from_str(common::DESIGN_EXAMPLE).expect("plain YAML");
    let cases: &[(&str, Value, &str)] = &[
        (
            "/spec/targets/0/stage",
            json!("Test"),
            ".spec.targets[0].stage",
        ),
        ("/spec/targets/1/stage", json!("test"), "duplicate entry"),
        (
            "/spec/pushSecret/name",
            json!("RegCred"),
            ".spec.pushSecret.name",
        ),
        (
            "/spec/cache/claimName",
            json!("a_b"),
            ".spec.cache.claimName",
        ),
        (
            "/spec/dockerfile",
            json!("../Dockerfile"),
            ".spec.dockerfile",
        ),
        ("/spec/dockerfile", json!("/Dockerfile"), ".spec.dockerfile"),
        (
            "/spec/source/git/subPath",
            json!("a/../../b"),
            ".spec.source.git.subPath",
        ),
        (
            "/spec/source/git/url",
            json!("-uhttps://x"),
            ".spec.source.git.url",
        ),
        (
            "/spec/source/git/revision",
            json!("--upload-pack=x"),
            ".spec.source.git.revision",
        ),
        ("/spec/timeout", json!("30 minutes"), ".spec.timeout"),
        (
            "/spec/targets/1/image",
            json!("registry example/x"),
            ".spec.targets[1].image",
        ),
        ("/spec/unknownField", json!(1), "unknown field"),
        ("/spec/source/git/url", Value::Null, ".spec.source.git.url"),
    ];
    for (pointer, value, expected) in cases {
        let mut object = base.clone();
        set(&mut object, pointer, value.clone());
        let errors = common::structural_errors(&schema, &object);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{pointer} = {value}: expected an error mentioning {expected:?}, got {errors:?}"
        );
    }

    let mut too_many = base.clone();
    let args: serde_json::Map<String, Value> = (0..=stagecoach_api::bounds::MAX_BUILD_ARGS)
        .map(|i| (format!("A{i}"), json!("x")))
        .collect();
    set(&mut too_many, "/spec/buildArgs", Value::Object(args));
    let errors = common::structural_errors(&schema, &too_many);
    assert!(
        errors.iter().any(|e| e.contains("more than 64 entries")),
        "{errors:?}"
    );
}

fn set(object: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    let parent = object.pointer_mut(parent).expect("parent exists");
    match parent {
        Value::Object(map) => {
            map.insert(key.to_owned(), value);
        }
        Value::Array(items) => {
            let index: usize = key.parse().expect("index");
            items[index] = value;
        }
        _ => panic!("cannot set {pointer}"),
    }
}

fn time(rfc3339: &str) -> Time {
    Time(rfc3339.parse().expect("timestamp"))
}

/// A status as the controller will write it, through JSON and back, and against the schema.
#[test]
fn full_status_round_trips_and_fits_the_schema() {
    let stages = vec![
        StageStatus {
            name: "0".into(),
            index: 0,
            state: StageState::Cached,
            cache_hits: Some(4),
            ..Default::default()
        },
        StageStatus {
            name: "test".into(),
            index: 1,
            state: StageState::Succeeded,
            pod: Some("who-test-7f9c2".into()),
            node: Some("node-1".into()),
            start_time: Some(time("2026-11-22T10:00:00Z")),
            finish_time: Some(time("2026-11-22T10:01:30Z")),
            cache_hits: Some(1),
            message: None,
            inputs: Some(format!("sha256:{}", "cd".repeat(32))),
        },
        StageStatus {
            name: "prod".into(),
            index: 2,
            state: StageState::Running,
            pod: Some("who-prod-1a2b3".into()),
            ..Default::default()
        },
    ];
    let status = ImageBuildStatus {
        conditions: vec![Condition {
            type_: stagecoach_api::SUCCEEDED.into(),
            status: stagecoach_api::Reason::Building.status().to_string(),
            reason: stagecoach_api::Reason::Building.to_string(),
            message: "2 of 3 stages done".into(),
            observed_generation: Some(1),
            last_transition_time: time("2026-11-22T10:00:00Z"),
        }],
        observed_generation: Some(1),
        start_time: Some(time("2026-11-22T09:59:58Z")),
        completion_time: None,
        stages_summary: Some(ImageBuildStatus::summarize_stages(&stages)),
        stages,
        images: vec![ImageStatus {
            target: "prod".into(),
            image: "registry.example.com/apps/who:2.0".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            size: Some(1_234_567),
        }],
        source: Some(stagecoach_api::SourceStatus {
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            inputs: Some(format!("sha256:{}", "cd".repeat(32))),
        }),
    };
    assert_eq!(status.stages_summary.as_deref(), Some("2/3"));
    assert_eq!(
        status.succeeded().map(|c| c.status.as_str()),
        Some("Unknown")
    );

    let mut ib = from_yaml(common::DESIGN_EXAMPLE);
    ib.status = Some(status);
    let json = serde_json::to_value(&ib).expect("serializes");
    assert_eq!(json["status"]["stages"][1]["cacheHits"], 1);
    assert_eq!(
        json["status"]["stages"][1]["finishTime"],
        "2026-11-22T10:01:30Z"
    );
    assert_eq!(
        json["status"]["conditions"][0]["lastTransitionTime"],
        "2026-11-22T10:00:00Z"
    );
    let back: ImageBuild = serde_json::from_value(json.clone()).expect("deserializes");
    assert_eq!(back, ib);

    let errors = common::structural_errors(&common::schema(), &json);
    assert!(errors.is_empty(), "{errors:#?}");
}

/// Every `examples/*/imagebuild.yaml` (a file may hold several documents) reads into the
/// types and fits the schema, and a ConfigMap source is one its `kustomization.yaml` makes
/// from files that exist, the Dockerfile among them.
#[test]
fn every_example_fits_the_schema_and_its_context_is_generated() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&root).expect("examples/") {
        let dir = entry.expect("an entry").path();
        let manifest = dir.join("imagebuild.yaml");
        if !manifest.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest).expect("imagebuild.yaml");
        for doc in text.split("\n---\n") {
            let value: Value = serde_saphyr::from_str(doc).expect("plain YAML");
            let errors = common::structural_errors(&common::schema(), &value);
            assert!(errors.is_empty(), "{}: {errors:#?}", manifest.display());
            let ib = from_yaml(doc);
            seen += 1;
            let Ok(SourceKind::ConfigMap(source)) = ib.spec.source.kind() else {
                continue;
            };
            let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml"))
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: a ConfigMap source needs kustomization.yaml: {e}",
                        dir.display()
                    )
                });
            let kustomization: Value = serde_saphyr::from_str(&kustomization).expect("YAML");
            let generator = kustomization["configMapGenerator"]
                .as_array()
                .and_then(|g| g.iter().find(|g| g["name"] == source.name.as_str()))
                .unwrap_or_else(|| {
                    panic!(
                        "{}: no configMapGenerator named {}",
                        dir.display(),
                        source.name
                    )
                });
            assert_eq!(
                kustomization["generatorOptions"]["disableNameSuffixHash"],
                true,
                "{}",
                dir.display()
            );
            let files: Vec<&str> = generator["files"]
                .as_array()
                .expect("files")
                .iter()
                .map(|f| f.as_str().expect("a file name"))
                .collect();
            assert!(
                files.contains(&ib.spec.dockerfile.as_str()),
                "{}: {files:?}",
                dir.display()
            );
            for file in files {
                // rootfs.tar.xz is made by the example's make-rootfs script.
                if file != "rootfs.tar.xz" {
                    assert!(
                        dir.join(file).is_file(),
                        "{}: {file} is missing",
                        dir.display()
                    );
                }
            }
            let resources = kustomization["resources"].as_array().expect("resources");
            assert!(
                resources.iter().any(|r| r == "imagebuild.yaml"),
                "{}",
                dir.display()
            );
        }
    }
    assert!(seen >= 8, "found {seen} example ImageBuilds");
}
