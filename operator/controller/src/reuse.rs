//! A build whose inputs are those of an earlier successful build needs no pod. The inputs
//! are everything the images are made from that the controller can see without running
//! anything: the Dockerfile, the inline or ConfigMap context, build args, the target stages,
//! secret ids, and the digests the images it starts from resolve to now. Where the images go
//! is not an input: builds are reproducible, so the same inputs make the same image whatever
//! its tag. The sha256 goes into `status.source.inputs` at a generation's first reconcile.
//! When another build of the namespace (or this one's previous generation) succeeded with
//! the same inputs, and each of its images is still in its repository by digest, the build
//! succeeds at once, each needed stage `Cached`: an image already under this build's tag is
//! confirmed, any other is put there by the registry itself (every blob mounted from the
//! earlier repository, then the same manifest bytes pushed under the tag), so the digest is
//! the earlier one. An image on another registry, or a registry that will not mount, means
//! the build runs.
//!
//! Not covered (the build runs as usual): git sources (the Dockerfile is only known after a
//! fetch pod), and `ADD` of a URL without `--checksum` (what it downloads may change).
//! Secret values and cache-mount contents are not inputs, as in the instruction cache.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt as _;
use kube::api::{Api, ListParams};
use serde::Serialize;
use stagecoach_api::{ConditionStatus, ImageBuild, ImageBuildSpec, ImageStatus, SourceKind};
use stagecoach_dockerfile::instructions::{Dockerfile, Instruction};
use stagecoach_dockerfile::planner::{Base, Plan};

/// Bumped when what the executor makes of the same inputs changes, or what the inputs cover
/// (2: where the images go is no longer one).
const INPUTS_VERSION: u32 = 2;

/// What the inputs digest is taken over.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Inputs<'a> {
    version: u32,
    stagecoach: &'a str,
    source: &'a stagecoach_api::Source,
    config_map: Option<&'a str>,
    dockerfile_path: &'a str,
    dockerfile: &'a str,
    build_args: &'a BTreeMap<String, String>,
    /// The target stages, without where they go.
    targets: Vec<&'a str>,
    secrets: Vec<(&'a str, &'a str, &'a str)>,
    images: &'a BTreeMap<String, String>,
}

/// The external images the needed stages read (`FROM`, `COPY --from`, `RUN --mount=from`).
pub fn external_images(plan: &Plan) -> Vec<String> {
    let mut out: Vec<String> = plan
        .stages
        .iter()
        .filter(|s| s.needed)
        .flat_map(|s| {
            let base = match &s.base {
                Base::Image(image) => Some(image.clone()),
                _ => None,
            };
            base.into_iter().chain(s.images.iter().cloned())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether every input is known without running anything: no `ADD` of a URL (or of a
/// source a variable could make one) without `--checksum`.
pub fn static_inputs(dockerfile: &Dockerfile) -> bool {
    dockerfile
        .stages
        .iter()
        .flat_map(|s| &s.instructions)
        .all(|i| match &i.instruction {
            Instruction::Add(add) => {
                add.checksum.is_some()
                    || add
                        .transfer
                        .sources
                        .iter()
                        .all(|s| !(s.contains("://") || s.starts_with("git@") || s.contains('$')))
            }
            _ => true,
        })
}

/// The digest of a ConfigMap's files, `data` and `binaryData` alike.
pub fn config_map_digest(map: &ConfigMap) -> String {
    let mut files: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for (k, v) in map.data.iter().flatten() {
        files.insert(k, v.as_bytes());
    }
    for (k, v) in map.binary_data.iter().flatten() {
        files.insert(k, &v.0);
    }
    let mut bytes = Vec::new();
    for (k, v) in files {
        // Length-prefixed, so that no two maps give the same bytes.
        bytes.extend((k.len() as u64).to_le_bytes());
        bytes.extend(k.as_bytes());
        bytes.extend((v.len() as u64).to_le_bytes());
        bytes.extend(v);
    }
    stagecoach_protocol::Digest::of_bytes(&bytes).to_string()
}

/// The inputs digest of a build, or `None` when its inputs are not all known (a git source).
/// `images` maps each external image to what it resolves to now.
pub fn inputs_digest(
    spec: &ImageBuildSpec,
    dockerfile: &str,
    config_map: Option<&str>,
    images: &BTreeMap<String, String>,
) -> Option<String> {
    if matches!(spec.source.kind(), Ok(SourceKind::Git(_)) | Err(_)) {
        return None;
    }
    let inputs = Inputs {
        version: INPUTS_VERSION,
        stagecoach: env!("CARGO_PKG_VERSION"),
        source: &spec.source,
        config_map,
        dockerfile_path: &spec.dockerfile,
        dockerfile,
        build_args: &spec.build_args,
        targets: spec.targets.iter().map(|t| t.stage.as_str()).collect(),
        secrets: spec
            .secrets
            .iter()
            .map(|s| {
                (
                    s.id.as_str(),
                    s.secret_key_ref.name.as_str(),
                    s.secret_key_ref.key.as_str(),
                )
            })
            .collect(),
        images,
    };
    let bytes = serde_json::to_vec(&inputs).ok()?;
    Some(stagecoach_protocol::Digest::of_bytes(&bytes).to_string())
}

/// An earlier success with these inputs: its name, generation and images (in a decision:
/// this build's images, where they now are).
#[derive(Debug, Clone, PartialEq)]
pub struct Earlier {
    /// `namespace/name` of the build.
    pub build: String,
    /// The generation that succeeded.
    pub generation: i64,
    /// Its pushed images.
    pub images: Vec<ImageStatus>,
}

/// The newest successful build among `builds` whose inputs are `inputs`.
pub fn earlier_success(builds: &[ImageBuild], inputs: &str) -> Option<Earlier> {
    builds
        .iter()
        .filter_map(|b| {
            let status = b.status.as_ref()?;
            let succeeded = status.succeeded()?;
            (succeeded.status == ConditionStatus::True.as_str()
                && status.source.as_ref()?.inputs.as_deref() == Some(inputs)
                && !status.images.is_empty())
            .then(|| {
                (
                    status.completion_time.clone(),
                    Earlier {
                        build: format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any()),
                        generation: status.observed_generation.unwrap_or(0),
                        images: status.images.clone(),
                    },
                )
            })
        })
        .max_by(|a, b| a.0.as_ref().map(|t| t.0).cmp(&b.0.as_ref().map(|t| t.0)))
        .map(|(_, e)| e)
}

/// What a generation's first reconcile learns: its inputs, and an earlier success it can
/// take the images of.
#[derive(Debug, Default)]
pub(crate) struct Decision {
    pub inputs: Option<String>,
    pub reuse: Option<Earlier>,
}

/// The inputs of this generation (kept from its status once known) and, when no pod of it
/// exists yet, an earlier success with the same inputs whose images are all still in the
/// registry. Whatever cannot be found out (a registry that does not answer) only means no
/// reuse: the build then runs, and its own errors say what is wrong.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn decide(
    client: &kube::Client,
    registry: &stagecoach_oci::registry::RegistryClient,
    build: &ImageBuild,
    namespace: &str,
    config_map: Option<&str>,
    plan: &Plan,
    dockerfile: &str,
    no_pods_yet: bool,
) -> Decision {
    let generation = build.metadata.generation.unwrap_or(0);
    if let Some(status) = build.status.as_ref()
        && status.observed_generation == Some(generation)
        && let Some(inputs) = status.source.as_ref().and_then(|s| s.inputs.clone())
    {
        return Decision {
            inputs: Some(inputs),
            reuse: None,
        };
    }
    if matches!(build.spec.source.kind(), Ok(SourceKind::Git(_)) | Err(_))
        || !Dockerfile::parse(dockerfile).is_ok_and(|d| static_inputs(&d))
    {
        return Decision::default();
    }
    let mut images = BTreeMap::new();
    for image in external_images(plan) {
        let Ok(reference) = stagecoach_oci::registry::ImageRef::parse(&image) else {
            return Decision::default();
        };
        match registry.pull_manifest(&reference).await {
            Ok(pulled) => {
                images.insert(image, pulled.digest.to_string());
            }
            Err(e) => {
                tracing::debug!(image = image.as_str(), error = %e, "inputs not known: no reuse");
                return Decision::default();
            }
        }
    }
    let Some(inputs) = inputs_digest(&build.spec, dockerfile, config_map, &images) else {
        return Decision::default();
    };
    let mut decision = Decision {
        inputs: Some(inputs.clone()),
        reuse: None,
    };
    if !no_pods_yet {
        return decision;
    }
    let builds = match Api::<ImageBuild>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            tracing::debug!(error = %e, "cannot list the namespace's builds: no reuse");
            return decision;
        }
    };
    let Some(earlier) = earlier_success(&builds, &inputs) else {
        return decision;
    };
    // Each of this build's images where it goes, with the earlier digest: else the build runs.
    let mut placed = Vec::new();
    for (stage, destination) in crate::run::targets_to_push(build, plan) {
        let label = plan.stages[stage]
            .name
            .clone()
            .unwrap_or_else(|| stage.to_string());
        let Some(from) = earlier.images.iter().find(|i| i.target == label) else {
            tracing::info!(
                target = label.as_str(),
                earlier = earlier.build.as_str(),
                "same inputs as an earlier build, which did not push this target: building"
            );
            return decision;
        };
        if let Err(why) = place(registry, from, &destination).await {
            tracing::info!(
                image = destination.as_str(),
                earlier = earlier.build.as_str(),
                why = why.as_str(),
                "same inputs as an earlier build, but its image cannot be put here: building"
            );
            return decision;
        }
        placed.push(ImageStatus {
            target: label,
            image: destination,
            ..from.clone()
        });
    }
    if placed.is_empty() {
        return decision;
    }
    decision.reuse = Some(Earlier {
        images: placed,
        ..earlier
    });
    decision
}

/// Makes `destination` name the image `from` names: nothing when its tag already does,
/// else a copy inside the registry. Why not, when it cannot.
async fn place(
    registry: &stagecoach_oci::registry::RegistryClient,
    from: &ImageStatus,
    destination: &str,
) -> Result<(), String> {
    use stagecoach_oci::registry::ImageRef;
    let target = ImageRef::parse(destination).map_err(|e| e.to_string())?;
    let current = registry.pull_manifest(&target).await.ok();
    if current.is_some_and(|m| m.digest.to_string() == from.digest) {
        return Ok(());
    }
    let digest = stagecoach_protocol::Digest::parse(&from.digest).map_err(|e| e.to_string())?;
    let source = ImageRef::parse(&from.image)
        .map_err(|e| e.to_string())?
        .with_digest(digest);
    let pushed = registry
        .copy_within_registry(&source, &target)
        .await
        .map_err(|e| e.to_string())?;
    if pushed.to_string() != from.digest {
        return Err(format!(
            "the registry confirmed {pushed}, not {}",
            from.digest
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> ImageBuildSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_digest_changes_with_every_input_and_not_with_anything_else() {
        let base = r#"{"source":{"inline":{"dockerfile":"FROM busybox\n","files":{"a":"1"}}},"buildArgs":{"X":"1"},"image":"r/x:1","timeout":"1h"}"#;
        let images: BTreeMap<String, String> =
            [("busybox".to_string(), "busybox@sha256:aa".to_string())].into();
        let d = |s: &str, images: &BTreeMap<String, String>| {
            inputs_digest(&spec(s), "FROM busybox\n", None, images).unwrap()
        };
        let first = d(base, &images);
        assert!(first.starts_with("sha256:") && first.len() == 71);
        assert_eq!(first, d(base, &images), "stable");
        // Not inputs: the timeout, resources, where the image goes.
        assert_eq!(first, d(&base.replace("\"1h\"", "\"2h\""), &images));
        assert_eq!(first, d(&base.replace("r/x:1", "r/x:2"), &images));
        let targets = |image: &str| {
            base.replace(
                "\"image\":\"r/x:1\"",
                &format!("\"targets\":[{{\"stage\":\"app\",\"image\":\"{image}\"}}]"),
            )
        };
        assert_eq!(d(&targets("r/x:1"), &images), d(&targets("r/y:7"), &images));
        for changed in [
            base.replace("\"1\"}}", "\"2\"}}"),
            base.replace("\"X\":\"1\"", "\"X\":\"2\""),
            targets("r/x:1"),
        ] {
            assert_ne!(first, d(&changed, &images), "{changed}");
        }
        let moved: BTreeMap<String, String> =
            [("busybox".to_string(), "busybox@sha256:bb".to_string())].into();
        assert_ne!(first, d(base, &moved), "a base image that moved");
        let git = r#"{"source":{"git":{"url":"https://example.com/a.git"}}}"#;
        assert_eq!(
            inputs_digest(&spec(git), "FROM busybox\n", None, &images),
            None
        );
    }

    #[test]
    fn add_of_a_url_without_a_checksum_is_not_static() {
        let parse = |t: &str| Dockerfile::parse(t).unwrap();
        assert!(static_inputs(&parse(
            "FROM busybox\nADD a.tar /x/\nCOPY b /b\n"
        )));
        assert!(!static_inputs(&parse(
            "FROM busybox\nADD https://example.com/a /a\n"
        )));
        assert!(!static_inputs(&parse("FROM busybox\nARG U\nADD $U /a\n")));
        assert!(static_inputs(&parse(
            "FROM busybox\nADD --checksum=sha256:0000000000000000000000000000000000000000000000000000000000000000 https://example.com/a /a\n"
        )));
    }

    #[test]
    fn config_maps_with_the_same_files_have_the_same_digest() {
        let map = |data: serde_json::Value| -> ConfigMap {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "m"}, "data": data}))
                .unwrap()
        };
        let a = map(serde_json::json!({"Dockerfile": "FROM x\n", "a": "1"}));
        let b = map(serde_json::json!({"a": "1", "Dockerfile": "FROM x\n"}));
        let c = map(serde_json::json!({"Dockerfile": "FROM x\n", "a": "2"}));
        assert_eq!(config_map_digest(&a), config_map_digest(&b));
        assert_ne!(config_map_digest(&a), config_map_digest(&c));
        // Moving bytes between a key and its value is another map.
        let d = map(serde_json::json!({"ab": "", "Dockerfile": "FROM x\n"}));
        let e = map(serde_json::json!({"a": "b", "Dockerfile": "FROM x\n"}));
        assert_ne!(config_map_digest(&d), config_map_digest(&e));
    }

    #[test]
    fn the_newest_success_with_the_inputs_is_found() {
        let build = |name: &str, inputs: &str, status: &str, done: &str| -> ImageBuild {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "stagecoach.dev/v1alpha1", "kind": "ImageBuild",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"source": {"inline": {"dockerfile": "FROM x\n"}}},
                "status": {"observedGeneration": 2, "completionTime": done,
                    "source": {"inputs": inputs},
                    "images": [{"target": "default", "image": format!("r/{name}:1"), "digest": format!("sha256:{}", "a".repeat(64))}],
                    "conditions": [{"type": "Succeeded", "status": status, "reason": "X", "message": "",
                        "lastTransitionTime": done, "observedGeneration": 2}]},
            }))
            .unwrap()
        };
        let want = format!("sha256:{}", "1".repeat(64));
        let other = format!("sha256:{}", "2".repeat(64));
        let builds = [
            build("old", &want, "True", "2026-01-01T00:00:00Z"),
            build("new", &want, "True", "2026-02-01T00:00:00Z"),
            build("failed", &want, "False", "2026-03-01T00:00:00Z"),
            build("different", &other, "True", "2026-03-01T00:00:00Z"),
        ];
        let found = earlier_success(&builds, &want).unwrap();
        assert_eq!(found.build, "ns/new");
        assert_eq!(found.generation, 2);
        assert_eq!(found.images[0].image, "r/new:1");
        assert!(earlier_success(&builds, &format!("sha256:{}", "3".repeat(64))).is_none());
    }
}
