//! The plan step's pure half: the objects a stage needs in the cluster. Each needed stage is
//! one pod: an init container in the operator image copies the static `stagecoach` binary
//! and the build context into emptyDirs, then the stage container, whose image is the stage's
//! base image pinned by digest, runs `stagecoach stage` as PID 1 over its own root. The
//! stage's job is a ConfigMap; the cache volume is mounted at `/cache`; every `RUN --mount`
//! target is a volume derived from the mount plan (cache: a subPath of the cache volume,
//! secret: a Secret volume with only the declared ids, bind: a read-only subPath of the
//! context or of the producing stage's export, tmpfs: an in-memory emptyDir). The pod is
//! Pod Security Standard baseline: not privileged, no added capabilities, seccomp
//! RuntimeDefault, no service-account token.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{Value, json};
use stagecoach_api::{BuildSecret, ImageBuildSpec};
use stagecoach_builder::run_mounts::{MountNeed, StepMounts};
use stagecoach_protocol::job::StageJob;
use stagecoach_protocol::layout::escape_id;

/// Where the stage container finds the binary, its job and the context.
pub const BIN_DIR: &str = "/.stagecoach/bin";
/// The job's directory (a ConfigMap volume).
pub const SPEC_DIR: &str = "/.stagecoach/spec";
/// The build context's plain copy (an emptyDir the init container fills).
pub const CONTEXT_DIR: &str = "/.stagecoach/context";
/// Where the init container sees the context's projected volume.
pub const SOURCE_DIR: &str = "/.stagecoach/source";
/// Where the stage's declared secrets are, for `env=` secrets.
pub const SECRETS_DIR: &str = "/.stagecoach/secrets";
/// The cache volume.
pub const CACHE_DIR: &str = "/cache";
/// Where a push pod sees the registry credentials (`config.json`).
pub const REGISTRY_DIR: &str = "/.stagecoach/registry";

/// Labels every object of a build carries.
pub const LABEL_BUILD: &str = "stagecoach.dev/build";
/// The generation label.
pub const LABEL_GENERATION: &str = "stagecoach.dev/generation";
/// The stage-index label.
pub const LABEL_STAGE: &str = "stagecoach.dev/stage";

/// The build an object belongs to.
#[derive(Debug, Clone)]
pub struct Owner {
    /// The ImageBuild's name.
    pub name: String,
    /// Its uid.
    pub uid: String,
    /// The generation being built.
    pub generation: i64,
}

impl Owner {
    fn reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: "stagecoach.dev/v1alpha1".into(),
            kind: "ImageBuild".into(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn labels(&self) -> BTreeMap<String, String> {
        [
            (LABEL_BUILD.to_string(), self.name.clone()),
            (LABEL_GENERATION.to_string(), self.generation.to_string()),
            (
                "app.kubernetes.io/managed-by".to_string(),
                "stagecoach".to_string(),
            ),
        ]
        .into()
    }

    /// The pod (and job ConfigMap) of stage `index`: short, deterministic and always a valid
    /// name, whatever the stage is called.
    pub fn stage_object(&self, index: usize) -> String {
        format!("{}-g{}-s{index}", self.name, self.generation)
    }

    /// The pod (and job ConfigMap) of push `n`.
    pub fn push_object(&self, n: usize) -> String {
        format!("{}-g{}-push{n}", self.name, self.generation)
    }

    /// The ConfigMap holding an inline source's files for this generation.
    pub fn context_object(&self) -> String {
        format!("{}-g{}-context", self.name, self.generation)
    }
}

/// Where a build's context files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextSource {
    /// The controller's ConfigMap of an inline source: `(key, path)` items.
    Inline {
        /// The ConfigMap.
        name: String,
        /// Its keys and the paths they become.
        items: Vec<(String, String)>,
    },
    /// The user's ConfigMap: every key is a file at the context root.
    ConfigMap(String),
}

/// Why a stage's pod cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodPlanError {
    /// Two RUN mounts of the stage want different things at one target.
    #[error(
        "line {line}: two RUN mounts of the stage use {target} differently; a builder pod mounts each target once for the whole stage"
    )]
    ConflictingTarget {
        /// The later RUN's line.
        line: usize,
        /// The target.
        target: String,
    },
    /// A mount names what a pod cannot provide yet.
    #[error("line {line}: {what} is not supported in a builder pod yet")]
    Unsupported {
        /// The line.
        line: usize,
        /// What.
        what: String,
    },
}

/// The inline source's files as a ConfigMap (keys must be plain names, so each file gets
/// `f<n>` and a volume item maps it back to its path).
pub fn context_config_map(
    owner: &Owner,
    files: &BTreeMap<String, String>,
) -> (ConfigMap, ContextSource) {
    let mut data = BTreeMap::new();
    let mut items = Vec::new();
    for (n, (path, content)) in files.iter().enumerate() {
        let key = format!("f{n}");
        data.insert(key.clone(), content.clone());
        items.push((key, path.trim_start_matches("./").to_string()));
    }
    let name = owner.context_object();
    let map = ConfigMap {
        metadata: meta(owner, &name, None),
        data: Some(data),
        ..ConfigMap::default()
    };
    (map, ContextSource::Inline { name, items })
}

fn meta(
    owner: &Owner,
    name: &str,
    stage: Option<usize>,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    let mut labels = owner.labels();
    if let Some(stage) = stage {
        labels.insert(LABEL_STAGE.to_string(), stage.to_string());
    }
    k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: Some(name.to_string()),
        labels: Some(labels),
        owner_references: Some(vec![owner.reference()]),
        ..Default::default()
    }
}

/// Everything one stage pod is made from.
#[derive(Debug, Clone)]
pub struct StagePod<'a> {
    /// The build.
    pub owner: &'a Owner,
    /// Its spec (resources, scheduling, secrets).
    pub spec: &'a ImageBuildSpec,
    /// The stage's index and label.
    pub index: usize,
    /// Its status name.
    pub label: &'a str,
    /// The stage container's image (the base, pinned by digest).
    pub image: &'a str,
    /// The operator image (the init container).
    pub operator_image: &'a str,
    /// The cache claim.
    pub cache_claim: &'a str,
    /// The job.
    pub job: &'a StageJob,
    /// The stage's RUN mounts.
    pub mounts: &'a [StepMounts],
    /// Where the context comes from (`None`: an empty context).
    pub context: Option<&'a ContextSource>,
    /// For `RUN --mount=from=<stage>` binds: the producing stage's export directory,
    /// relative to the cache volume, by stage name or index as written.
    pub stage_exports: &'a BTreeMap<String, String>,
}

/// Declared build secrets by the Secret that holds them.
pub type SecretsBySecret<'s> = BTreeMap<&'s str, Vec<&'s BuildSecret>>;

/// The spec's secrets this stage's RUN steps ask for, grouped by Secret (one volume each,
/// numbered in this order), and the file each id is at in the stage container.
pub fn declared_secrets<'s>(
    spec: &'s ImageBuildSpec,
    mounts: &[StepMounts],
) -> (SecretsBySecret<'s>, Vec<(String, String)>) {
    let used: Vec<&str> = mounts
        .iter()
        .flat_map(|s| s.mounts.iter())
        .filter_map(|m| match m {
            MountNeed::Secret { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let mut by_secret: BTreeMap<&str, Vec<&BuildSecret>> = BTreeMap::new();
    for s in spec
        .secrets
        .iter()
        .filter(|s| used.contains(&s.id.as_str()))
    {
        by_secret
            .entry(s.secret_key_ref.name.as_str())
            .or_default()
            .push(s);
    }
    let paths = by_secret
        .values()
        .enumerate()
        .flat_map(|(n, ids)| {
            ids.iter()
                .map(move |s| (s.id.clone(), format!("{SECRETS_DIR}/{n}/{}", s.id)))
        })
        .collect();
    (by_secret, paths)
}

/// The job ConfigMap and the pod of a stage.
pub fn stage_pod(input: &StagePod<'_>) -> Result<(ConfigMap, Pod), PodPlanError> {
    let owner = input.owner;
    let name = owner.stage_object(input.index);
    let job_json = serde_json::to_string(input.job).unwrap_or_default();
    let job_map = ConfigMap {
        metadata: meta(owner, &name, Some(input.index)),
        data: Some([("job.json".to_string(), job_json)].into()),
        ..ConfigMap::default()
    };

    let mut volumes = vec![
        json!({"name": "cache", "persistentVolumeClaim": {"claimName": input.cache_claim}}),
        json!({"name": "bin", "emptyDir": {}}),
        json!({"name": "context", "emptyDir": {}}),
        json!({"name": "spec", "configMap": {"name": name}}),
    ];
    let mut init_mounts = vec![
        json!({"name": "bin", "mountPath": BIN_DIR}),
        json!({"name": "context", "mountPath": CONTEXT_DIR}),
    ];
    let mut prepare = vec![
        "/stagecoach".to_string(),
        "prepare".into(),
        "--binary-to".into(),
        BIN_DIR.into(),
        "--context-to".into(),
        CONTEXT_DIR.into(),
    ];
    if let Some(source) = input.context {
        let volume = match source {
            ContextSource::Inline { name, items } => json!({"name": "source", "configMap": {
                "name": name,
                "items": items.iter().map(|(k, p)| json!({"key": k, "path": p})).collect::<Vec<_>>(),
            }}),
            ContextSource::ConfigMap(name) => {
                json!({"name": "source", "configMap": {"name": name}})
            }
        };
        volumes.push(volume);
        init_mounts.push(json!({"name": "source", "mountPath": SOURCE_DIR, "readOnly": true}));
        prepare.extend(["--context-from".to_string(), SOURCE_DIR.to_string()]);
    }
    let mut mounts = vec![
        json!({"name": "cache", "mountPath": CACHE_DIR}),
        json!({"name": "bin", "mountPath": BIN_DIR, "readOnly": true}),
        json!({"name": "context", "mountPath": CONTEXT_DIR, "readOnly": true}),
        json!({"name": "spec", "mountPath": SPEC_DIR, "readOnly": true}),
    ];

    // The declared secrets this stage's RUN steps ask for, one Secret volume per Secret.
    let (by_secret, _) = declared_secrets(input.spec, input.mounts);
    for (n, (secret, ids)) in by_secret.iter().enumerate() {
        let volume = format!("secret-{n}");
        volumes.push(json!({"name": volume, "secret": {
            "secretName": secret,
            "items": ids.iter().map(|s| json!({"key": s.secret_key_ref.key, "path": s.id})).collect::<Vec<_>>(),
        }}));
        mounts.push(
            json!({"name": volume, "mountPath": format!("{SECRETS_DIR}/{n}"), "readOnly": true}),
        );
    }
    let secret_volume = |id: &str| -> Option<(String, usize)> {
        by_secret
            .iter()
            .position(|(_, ids)| ids.iter().any(|s| s.id == id))
            .map(|n| (format!("secret-{n}"), n))
    };

    // Each RUN mount target once; the same mount twice is fine, two different ones are not.
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    let mut tmpfs = 0;
    for step in input.mounts {
        for need in &step.mounts {
            let (target, mount) = match need {
                MountNeed::Cache {
                    id,
                    target,
                    readonly,
                    ..
                } => (
                    target.clone(),
                    json!({"name": "cache", "mountPath": target, "subPath": format!("mounts/{}", escape_id(id)), "readOnly": readonly}),
                ),
                MountNeed::Tmpfs { target, size_bytes } => {
                    let volume = format!("tmpfs-{tmpfs}");
                    tmpfs += 1;
                    let mut empty = json!({"medium": "Memory"});
                    if let Some(size) = size_bytes {
                        empty["sizeLimit"] = json!(size.to_string());
                    }
                    volumes.push(json!({"name": volume, "emptyDir": empty}));
                    (target.clone(), json!({"name": volume, "mountPath": target}))
                }
                MountNeed::Secret { id, target, .. } => {
                    // An undeclared id is not provided (the step fails if it is required).
                    let (Some(target), Some((volume, _))) = (target, secret_volume(id)) else {
                        continue;
                    };
                    (
                        target.clone(),
                        json!({"name": volume, "mountPath": target, "subPath": id, "readOnly": true}),
                    )
                }
                MountNeed::Bind {
                    from: None,
                    source,
                    target,
                    ..
                } => {
                    let sub = clean_sub_path(source);
                    let mut m = json!({"name": "context", "mountPath": target, "readOnly": true});
                    if !sub.is_empty() {
                        m["subPath"] = json!(sub);
                    }
                    (target.clone(), m)
                }
                MountNeed::Bind {
                    from: Some(from),
                    source,
                    target,
                    ..
                } => {
                    let export = input
                        .stage_exports
                        .get(&from.to_ascii_lowercase())
                        .ok_or_else(|| PodPlanError::Unsupported {
                            line: step.line,
                            what: format!("RUN --mount=from={from} (an image, not a stage)"),
                        })?;
                    let sub = clean_sub_path(source);
                    let path = if sub.is_empty() {
                        export.clone()
                    } else {
                        format!("{export}/{sub}")
                    };
                    (
                        target.clone(),
                        json!({"name": "cache", "mountPath": target, "subPath": path, "readOnly": true}),
                    )
                }
            };
            match seen.get(&target) {
                Some(previous) if *previous == mount => {}
                Some(_) => {
                    return Err(PodPlanError::ConflictingTarget {
                        line: step.line,
                        target,
                    });
                }
                None => {
                    seen.insert(target, mount.clone());
                    mounts.push(mount);
                }
            }
        }
    }

    let restricted = json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "readOnlyRootFilesystem": true});
    let mut stage = json!({
        "name": "stage",
        "image": input.image,
        "command": [format!("{BIN_DIR}/stagecoach"), "stage", "--spec", format!("{SPEC_DIR}/job.json")],
        // The executor is root in its container; the base image's USER applies to RUN steps.
        "securityContext": {"runAsUser": 0, "runAsGroup": 0, "privileged": false},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    });
    if let Some(resources) = &input.spec.resources {
        stage["resources"] = serde_json::to_value(resources).unwrap_or(Value::Null);
    }
    let mut pod_spec = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [{
            "name": "prepare",
            "image": input.operator_image,
            "command": prepare,
            "securityContext": restricted,
            "volumeMounts": init_mounts,
        }],
        "containers": [stage],
        "volumes": volumes,
    });
    if !input.spec.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(input.spec.node_selector);
    }
    if !input.spec.tolerations.is_empty() {
        pod_spec["tolerations"] =
            serde_json::to_value(&input.spec.tolerations).unwrap_or(Value::Null);
    }
    if let Some(account) = &input.spec.service_account_name {
        pod_spec["serviceAccountName"] = json!(account);
    }
    let mut metadata = meta(owner, &name, Some(input.index));
    // An annotation, not a label: a Dockerfile's stage name need not be a valid label value.
    metadata.annotations = Some(
        [(
            "stagecoach.dev/stage-name".to_string(),
            input.label.to_string(),
        )]
        .into(),
    );
    let pod = Pod {
        metadata,
        spec: serde_json::from_value(pod_spec).ok(),
        ..Pod::default()
    };
    Ok((job_map, pod))
}

/// A bind mount's source as a subPath: relative, cleaned, `""` for the root.
fn clean_sub_path(source: &str) -> String {
    stagecoach_builder::pattern::clean(&format!("/{source}"))
        .trim_start_matches('/')
        .to_string()
}

/// The job ConfigMap and the pod of push `n`: the operator image, the cache volume, and the
/// push secret (mounted here and nowhere else), running `stagecoach push`.
pub fn push_pod(
    owner: &Owner,
    n: usize,
    operator_image: &str,
    cache_claim: &str,
    job: &stagecoach_protocol::job::PushJob,
    push_secret: Option<&str>,
) -> (ConfigMap, Pod) {
    let name = owner.push_object(n);
    let job_map = ConfigMap {
        metadata: meta(owner, &name, None),
        data: Some(
            [(
                "job.json".to_string(),
                serde_json::to_string(job).unwrap_or_default(),
            )]
            .into(),
        ),
        ..ConfigMap::default()
    };
    let mut volumes = vec![
        json!({"name": "cache", "persistentVolumeClaim": {"claimName": cache_claim}}),
        json!({"name": "spec", "configMap": {"name": name}}),
    ];
    let mut mounts = vec![
        json!({"name": "cache", "mountPath": CACHE_DIR}),
        json!({"name": "spec", "mountPath": SPEC_DIR, "readOnly": true}),
    ];
    if let Some(secret) = push_secret {
        volumes.push(json!({"name": "registry", "secret": {"secretName": secret,
            "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}}));
        mounts.push(json!({"name": "registry", "mountPath": REGISTRY_DIR, "readOnly": true}));
    }
    let pod_spec = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "push",
            "image": operator_image,
            "command": ["/stagecoach", "push", "--spec", format!("{SPEC_DIR}/job.json")],
            // uid 0 owns the cache's files (the stage pods wrote them), but holds no
            // capability: it can write there and nowhere else.
            "securityContext": {"runAsUser": 0, "runAsGroup": 0, "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    });
    let mut metadata = meta(owner, &name, None);
    if let Some(labels) = metadata.labels.as_mut() {
        labels.insert("stagecoach.dev/push".into(), n.to_string());
    }
    let pod = Pod {
        metadata,
        spec: serde_json::from_value(pod_spec).ok(),
        ..Pod::default()
    };
    (job_map, pod)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagecoach_api::{InlineSource, SecretKeyReference, Source};
    use stagecoach_builder::run_mounts::stage_mounts;
    use stagecoach_protocol::job::{JOB_VERSION, JobBase, JobOptions};

    fn job() -> StageJob {
        StageJob {
            version: JOB_VERSION,
            build: "uid".into(),
            dockerfile: String::new(),
            dockerfile_path: None,
            stage: 1,
            label: "app".into(),
            build_args: BTreeMap::new(),
            base: JobBase::Scratch,
            root: "/".into(),
            apply: vec![],
            context: CONTEXT_DIR.into(),
            cache: CACHE_DIR.into(),
            stages: vec![],
            images: vec![],
            secrets: vec![],
            options: JobOptions::default(),
            export: None,
            result: None,
        }
    }

    fn plan(dockerfile: &str) -> Vec<StepMounts> {
        let df = stagecoach_dockerfile::Dockerfile::parse(dockerfile).unwrap();
        stage_mounts(
            &df.stages[0].instructions,
            df.escape,
            None,
            &Default::default(),
        )
        .unwrap()
    }

    fn owner() -> Owner {
        Owner {
            name: "web".into(),
            uid: "u-1".into(),
            generation: 3,
        }
    }

    fn spec() -> ImageBuildSpec {
        ImageBuildSpec {
            source: Source {
                inline: Some(InlineSource::default()),
                ..Source::default()
            },
            secrets: vec![BuildSecret {
                id: "npm".into(),
                secret_key_ref: SecretKeyReference {
                    name: "creds".into(),
                    key: ".npmrc".into(),
                },
            }],
            ..ImageBuildSpec::default()
        }
    }

    #[test]
    fn a_stage_pod_is_baseline_and_mounts_what_its_runs_declare() {
        let mounts = plan(
            "FROM busybox\nWORKDIR /src\n\
             RUN --mount=type=cache,target=.cache --mount=type=secret,id=npm,target=/root/.npmrc \
                 --mount=type=secret,id=other --mount=type=bind,source=./pkg,target=/pkg \
                 --mount=type=bind,from=deps,source=/out,target=/deps --mount=type=tmpfs,target=/t,size=1m true\n\
             RUN --mount=type=cache,target=.cache true\n",
        );
        let exports = [("deps".to_string(), "builds/uid/stages/0/rootfs".to_string())].into();
        let owner = owner();
        let spec = spec();
        let job = job();
        let input = StagePod {
            owner: &owner,
            spec: &spec,
            index: 1,
            label: "app",
            image: "registry/busybox@sha256:abc",
            operator_image: "registry/stagecoach@sha256:def",
            cache_claim: "stagecoach-cache",
            job: &job,
            mounts: &mounts,
            context: None,
            stage_exports: &exports,
        };
        let (map, pod) = stage_pod(&input).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("web-g3-s1"));
        assert_eq!(map.metadata.name, pod.metadata.name);
        let owners = pod.metadata.owner_references.unwrap();
        assert_eq!(
            (owners[0].uid.as_str(), owners[0].controller),
            ("u-1", Some(true))
        );
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels[LABEL_BUILD], "web");
        assert_eq!(labels[LABEL_GENERATION], "3");
        assert_eq!(labels[LABEL_STAGE], "1");
        let job_back: StageJob = serde_json::from_str(&map.data.unwrap()["job.json"]).unwrap();
        assert_eq!(job_back, job);

        let spec = serde_json::to_value(pod.spec.unwrap()).unwrap();
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let stage = &spec["containers"][0];
        assert_eq!(stage["image"], "registry/busybox@sha256:abc");
        assert_eq!(stage["securityContext"]["privileged"], false);
        assert!(
            stage["securityContext"].get("capabilities").is_none(),
            "no added capabilities"
        );
        assert_eq!(
            spec["initContainers"][0]["image"],
            "registry/stagecoach@sha256:def"
        );
        let mounts: BTreeMap<String, Value> = stage["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["mountPath"].as_str().unwrap().to_string(), m.clone()))
            .collect();
        assert_eq!(mounts["/src/.cache"]["subPath"], "mounts/%2Fsrc%2F.cache");
        assert_eq!(mounts["/root/.npmrc"]["subPath"], "npm");
        assert_eq!(mounts["/pkg"]["subPath"], "pkg");
        assert_eq!(mounts["/pkg"]["name"], "context");
        assert_eq!(mounts["/deps"]["subPath"], "builds/uid/stages/0/rootfs/out");
        assert_eq!(mounts["/deps"]["readOnly"], true);
        assert!(mounts.contains_key("/t"));
        assert!(
            !mounts.contains_key("/run/secrets/other"),
            "an undeclared secret is not mounted"
        );
        let volumes = spec["volumes"].as_array().unwrap();
        let secret = volumes.iter().find(|v| v["secret"].is_object()).unwrap();
        assert_eq!(secret["secret"]["secretName"], "creds");
        assert_eq!(
            secret["secret"]["items"],
            json!([{"key": ".npmrc", "path": "npm"}])
        );
        let tmpfs = volumes.iter().find(|v| v["name"] == "tmpfs-0").unwrap();
        assert_eq!(tmpfs["emptyDir"]["medium"], "Memory");
    }

    #[test]
    fn one_target_two_ways_is_refused() {
        let mounts = plan(
            "FROM busybox\nRUN --mount=type=cache,target=/x true\nRUN --mount=type=tmpfs,target=/x true\n",
        );
        let owner = owner();
        let spec = spec();
        let job = job();
        let err = stage_pod(&StagePod {
            owner: &owner,
            spec: &spec,
            index: 0,
            label: "0",
            image: "i",
            operator_image: "o",
            cache_claim: "c",
            job: &job,
            mounts: &mounts,
            context: None,
            stage_exports: &BTreeMap::new(),
        })
        .unwrap_err();
        assert_eq!(
            err,
            PodPlanError::ConflictingTarget {
                line: 3,
                target: "/x".into()
            }
        );
    }

    #[test]
    fn inline_files_become_items() {
        let files = [
            ("./a.txt".to_string(), "a".to_string()),
            ("dir/b.txt".to_string(), "b".to_string()),
        ]
        .into();
        let (map, source) = context_config_map(&owner(), &files);
        assert_eq!(map.metadata.name.as_deref(), Some("web-g3-context"));
        assert_eq!(
            source,
            ContextSource::Inline {
                name: "web-g3-context".into(),
                items: vec![
                    ("f0".into(), "a.txt".into()),
                    ("f1".into(), "dir/b.txt".into())
                ],
            }
        );
    }
}
