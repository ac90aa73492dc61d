//! The plan step's pure half: the objects a stage needs in the cluster. Each needed stage is
//! one pod: an init container in the operator image copies the static `stagecoach` binary
//! and the build context into emptyDirs, then the stage container, whose image is the stage's
//! base image pinned by digest, runs `stagecoach stage` as PID 1 over its own root. The
//! stage's job is a ConfigMap; the cache volume is mounted at `/cache`; every `RUN --mount`
//! target is a volume derived from the mount plan (cache: a subPath of the cache volume,
//! secret: a Secret volume with only the declared ids, bind: a read-only subPath of the
//! context or of the producing stage's export, tmpfs: an in-memory emptyDir). The pod is
//! Pod Security Standard baseline: not privileged, no added capabilities, seccomp
//! RuntimeDefault, no service-account token. The operator's own pods (fetch, push, cleanup,
//! cache collection) run no user code; see `tool_pod` for their capabilities.

use std::collections::BTreeMap;

/// For `--builder-resources` in the binary, which does not depend on k8s-openapi itself.
pub use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{Value, json};
use stagecoach_api::{BuildSecret, ImageBuildSpec};
use stagecoach_builder::run_mounts::{MountNeed, StepMounts};
use stagecoach_protocol::job::StageJob;
use stagecoach_protocol::layout::escape_id;

/// Where the stage container finds the binary, its job and the context.
pub const BIN_DIR: &str = "/.stagecoach/bin";
/// Where an installing init container sees `bin/<key>` of the cache volume.
pub const INSTALL_DIR: &str = "/.stagecoach/install";
/// What an init container's termination message says when it installed the binary.
pub const INSTALLED: &str = "installed";
/// The job's directory (a ConfigMap volume).
pub const SPEC_DIR: &str = "/.stagecoach/spec";
/// The build context's plain copy (an emptyDir the init container, or the stage process
/// when the pod has none, fills).
pub const CONTEXT_DIR: &str = "/.stagecoach/context";
/// Where the context's projected volume is mounted (in the init container, or in the stage
/// container when the pod has none).
pub const SOURCE_DIR: &str = "/.stagecoach/source";
/// Where a stage pod unpacks the images `COPY --from` reads (inside the executor's own
/// directory, so never in a layer).
pub const IMAGES_DIR: &str = "/.stagecoach/images";
/// Where the stage's declared secrets are, for `env=` secrets.
pub const SECRETS_DIR: &str = "/.stagecoach/secrets";
/// The cache volume.
pub const CACHE_DIR: &str = "/cache";
/// Where a push pod sees the registry credentials (`config.json`).
pub const REGISTRY_DIR: &str = "/.stagecoach/registry";
/// Where a fetch pod sees the git credentials (`username`, `password`).
pub const GIT_CREDENTIALS_DIR: &str = "/.stagecoach/git";

/// Labels every object of a build carries.
pub const LABEL_BUILD: &str = "stagecoach.dev/build";
/// The generation label.
pub const LABEL_GENERATION: &str = "stagecoach.dev/generation";
/// The stage-index label.
pub const LABEL_STAGE: &str = "stagecoach.dev/stage";
/// Which try of its stage a stage pod is.
pub const LABEL_ATTEMPT: &str = "stagecoach.dev/attempt";
/// What a pod that runs no stage does (`fetch`, `cleanup`).
pub const LABEL_COMPONENT: &str = "stagecoach.dev/component";

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
    /// The build being reconciled, at its current generation.
    pub fn of(build: &stagecoach_api::ImageBuild) -> Self {
        use kube::ResourceExt as _;
        Owner {
            name: build.name_any(),
            uid: build.uid().unwrap_or_default(),
            generation: build.metadata.generation.unwrap_or(0),
        }
    }

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

    /// The pod of stage `index`'s try `attempt`, and its job ConfigMap (the first try is
    /// [`Owner::stage_object`]; each try has its own job, which may differ from the last).
    pub fn stage_attempt(&self, index: usize, attempt: u32) -> String {
        match attempt {
            0 => self.stage_object(index),
            n => format!("{}-r{n}", self.stage_object(index)),
        }
    }

    /// The pod (and job ConfigMap) of push `n`.
    pub fn push_object(&self, n: usize) -> String {
        format!("{}-g{}-push{n}", self.name, self.generation)
    }

    /// The pod (and job ConfigMap) that fetches a git source for this generation.
    pub fn fetch_object(&self) -> String {
        format!("{}-g{}-fetch", self.name, self.generation)
    }

    /// The pod that removes the build's directory from the cache when the build is deleted.
    pub fn cleanup_object(&self) -> String {
        format!("{}-cleanup", self.name)
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
    /// A directory of the cache volume (a fetched git source), relative to its root: the
    /// stage container mounts it read-only, nothing is copied.
    Cache(String),
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

/// What the operator's flags set for every stage pod (the chart's `builds` values).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuilderDefaults {
    /// The stage container's requests and limits when the build's `spec.resources` is unset.
    pub resources: Option<ResourceRequirements>,
    /// Whether stage pods run in a user namespace (`--user-namespaces`).
    pub user_namespaces: UserNamespaces,
}

/// Whether stage pods run with `hostUsers: false`, so that root in a RUN is an unprivileged
/// user on the node. Only stage pods run user code; the operator's own pods (fetch, push,
/// cleanup) keep the node's users.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UserNamespaces {
    /// In a user namespace when every node's runtime reports support for it
    /// (`Node.status.runtimeHandlers[name=""].features.userNamespaces`), else with host users.
    #[default]
    Auto,
    /// Always in a user namespace: while no node supports it, builds wait and say why.
    Required,
    /// Never (the pods share the node's users).
    Off,
}

impl UserNamespaces {
    /// Parses `auto`, `required` or `off`.
    pub fn parse(text: &str) -> Option<UserNamespaces> {
        match text {
            "auto" => Some(UserNamespaces::Auto),
            "required" => Some(UserNamespaces::Required),
            "off" => Some(UserNamespaces::Off),
            _ => None,
        }
    }

    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UserNamespaces::Auto => "auto",
            UserNamespaces::Required => "required",
            UserNamespaces::Off => "off",
        }
    }

    /// The stage pods' `hostUsers` for these nodes (`None`: unset, the node's users), or why
    /// no stage pod may start yet.
    pub fn host_users<'n>(
        self,
        nodes: impl IntoIterator<Item = &'n Node>,
    ) -> Result<Option<bool>, String> {
        let schedulable: Vec<&Node> = nodes
            .into_iter()
            .filter(|n| {
                !n.spec
                    .as_ref()
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false)
            })
            .collect();
        let supporting = schedulable.iter().filter(|n| supports_userns(n)).count();
        match self {
            UserNamespaces::Off => Ok(None),
            UserNamespaces::Auto if supporting > 0 && supporting == schedulable.len() => {
                Ok(Some(false))
            }
            UserNamespaces::Auto => Ok(None),
            UserNamespaces::Required if supporting > 0 => Ok(Some(false)),
            UserNamespaces::Required => Err(format!(
                "waiting for a node whose runtime supports user namespaces (the operator runs \
                 with --user-namespaces=required; none of the {} schedulable nodes reports \
                 status.runtimeHandlers[].features.userNamespaces: it needs containerd 2 or \
                 later with runc 1.2 or later)",
                schedulable.len()
            )),
        }
    }
}

/// Whether the node's default runtime handler (the one pods without a runtimeClassName run
/// on) reports user-namespace support, volumes included.
fn supports_userns(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.runtime_handlers.as_ref())
        .into_iter()
        .flatten()
        .filter(|h| h.name.as_deref().unwrap_or_default().is_empty())
        .any(|h| {
            h.features
                .as_ref()
                .and_then(|f| f.user_namespaces)
                .unwrap_or(false)
        })
}

impl BuilderDefaults {
    /// Parses `--builder-resources`: a core/v1 ResourceRequirements as JSON, e.g.
    /// `{"requests":{"cpu":"500m","memory":"1Gi"},"limits":{"memory":"4Gi"}}`.
    pub fn parse_resources(text: &str) -> Result<ResourceRequirements, serde_json::Error> {
        serde_json::from_str(text)
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
    /// Which try this is (0 first; a retry after an infrastructure failure gets a new pod,
    /// so the failed one's log stays).
    pub attempt: u32,
    /// What is left of the build's timeout, in seconds (`activeDeadlineSeconds`).
    pub deadline_seconds: Option<i64>,
    /// The operator's defaults for stage pods.
    pub defaults: &'a BuilderDefaults,
    /// `hostUsers`, as [`UserNamespaces::host_users`] decided it for the cluster's nodes.
    pub host_users: Option<bool>,
    /// Whether every node can mount the cache claim (ReadWriteMany): then the build's stage
    /// pods prefer different nodes, so that a wave's stages run side by side.
    pub spread: bool,
    /// Where the stage container's copy of the stagecoach binary comes from.
    pub binary: Binary<'a>,
}

/// Where a stage pod's stagecoach binary comes from: the stage container's image is the
/// stage's base, which does not have it. An init container costs a pod start about a
/// second (the kubelet starts the next container only at its next relist of the runtime), so
/// once the cache volume holds the binary, a pod runs it from there and has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary<'a> {
    /// The init container copies it into an emptyDir of the pod.
    Copied,
    /// The init container installs it on the cache volume at `bin/<key>`, for this pod and
    /// the later ones on the claim.
    Install(&'a str),
    /// It is on the cache volume at `bin/<key>`: no init container, unless the context has
    /// to be in place before the stage container starts (a `RUN --mount=type=bind` from it).
    Installed(&'a str),
}

/// Where a binary key's copy is on the cache volume.
pub fn binary_sub_path(key: &str) -> String {
    format!("bin/{key}")
}

/// The annotation on a stage pod whose init container installs the binary: its key.
pub const ANNOTATION_INSTALLS: &str = "stagecoach.dev/installs-binary";

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
    // One per try: a later try's job may differ (it reads no earlier build's files).
    let name = owner.stage_attempt(input.index, input.attempt);
    let job_json = serde_json::to_string(input.job).unwrap_or_default();
    let job_map = ConfigMap {
        metadata: meta(owner, &name, Some(input.index)),
        data: Some([("job.json".to_string(), job_json)].into()),
        ..ConfigMap::default()
    };

    let mut volumes = vec![
        json!({"name": "cache", "persistentVolumeClaim": {"claimName": input.cache_claim}}),
        json!({"name": "spec", "configMap": {"name": name}}),
    ];
    // An installing pod runs its own copy too: the install may fail (a full cache volume),
    // and the stage must still run to say why.
    let bin_mount = |read_only: bool| match input.binary {
        Binary::Copied | Binary::Install(_) => {
            json!({"name": "bin", "mountPath": BIN_DIR, "readOnly": read_only})
        }
        Binary::Installed(key) => json!({"name": "cache",
            "mountPath": BIN_DIR, "subPath": binary_sub_path(key), "readOnly": read_only}),
    };
    // Whether the init container copies the binary into the pod's own emptyDir.
    let copies_binary = !matches!(input.binary, Binary::Installed(_));
    if copies_binary {
        volumes.insert(1, json!({"name": "bin", "emptyDir": {}}));
    }
    // The context: read-only where it already is on the cache volume, else a plain copy the
    // init container (or the stage process) makes (a projected ConfigMap is a tree of
    // symlinks).
    let cache_context = match input.context {
        Some(ContextSource::Cache(dir)) => Some(dir.as_str()),
        _ => None,
    };
    // A bind mount from a copied context is a subPath of the copy, which must exist before
    // the stage container starts: only an init container can make it.
    let binds_context = input
        .mounts
        .iter()
        .flat_map(|s| &s.mounts)
        .any(|m| matches!(m, MountNeed::Bind { from: None, .. }));
    let init = copies_binary || (cache_context.is_none() && binds_context);
    let mut init_mounts = vec![];
    let mut prepare = vec!["/stagecoach".to_string(), "prepare".into()];
    if copies_binary {
        init_mounts.push(bin_mount(false));
        prepare.extend(["--binary-to".to_string(), BIN_DIR.into()]);
    }
    if let Binary::Install(key) = input.binary {
        init_mounts.push(json!({"name": "cache", "mountPath": INSTALL_DIR,
            "subPath": binary_sub_path(key)}));
        prepare.extend(["--install-to".to_string(), INSTALL_DIR.into()]);
    }
    // The stage process's own copy step, when the pod has no init container.
    let mut copy_args: Vec<String> = vec![];
    if cache_context.is_none() {
        volumes.push(json!({"name": "context", "emptyDir": {}}));
        if init {
            init_mounts.push(json!({"name": "context", "mountPath": CONTEXT_DIR}));
            prepare.extend(["--context-to".to_string(), CONTEXT_DIR.to_string()]);
        }
    }
    let source_volume = match input.context {
        Some(ContextSource::Inline { name, items }) => {
            Some(json!({"name": "source", "configMap": {
                "name": name,
                "items": items.iter().map(|(k, p)| json!({"key": k, "path": p})).collect::<Vec<_>>(),
            }}))
        }
        Some(ContextSource::ConfigMap(name)) => {
            Some(json!({"name": "source", "configMap": {"name": name}}))
        }
        Some(ContextSource::Cache(_)) | None => None,
    };
    let source_mount = json!({"name": "source", "mountPath": SOURCE_DIR, "readOnly": true});
    let mut stage_source_mount = None;
    if let Some(volume) = source_volume {
        volumes.push(volume);
        if init {
            init_mounts.push(source_mount);
            prepare.extend(["--context-from".to_string(), SOURCE_DIR.to_string()]);
        } else {
            stage_source_mount = Some(source_mount);
            copy_args.extend([
                "--context-from".to_string(),
                SOURCE_DIR.to_string(),
                "--context-to".to_string(),
                CONTEXT_DIR.to_string(),
            ]);
        }
    }
    // A read-only mount of the context, or of `sub` in it.
    let context_mount = |target: &str, sub: &str| -> Value {
        match cache_context {
            Some(dir) => {
                let path = if sub.is_empty() {
                    dir.to_string()
                } else {
                    format!("{dir}/{sub}")
                };
                json!({"name": "cache", "mountPath": target, "subPath": path, "readOnly": true})
            }
            None => {
                let mut m = json!({"name": "context", "mountPath": target, "readOnly": true});
                if !sub.is_empty() {
                    m["subPath"] = json!(sub);
                }
                m
            }
        }
    };
    let mut mounts = vec![
        json!({"name": "cache", "mountPath": CACHE_DIR}),
        bin_mount(true),
        // Without an init container the stage process fills the copy itself.
        if cache_context.is_none() && !init {
            json!({"name": "context", "mountPath": CONTEXT_DIR})
        } else {
            context_mount(CONTEXT_DIR, "")
        },
        json!({"name": "spec", "mountPath": SPEC_DIR, "readOnly": true}),
    ];
    mounts.extend(stage_source_mount);
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
                } => (
                    target.clone(),
                    context_mount(target, &clean_sub_path(source)),
                ),
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
    let mut command = vec![
        format!("{BIN_DIR}/stagecoach"),
        "stage".into(),
        "--spec".into(),
        format!("{SPEC_DIR}/job.json"),
    ];
    command.extend(copy_args);
    let mut stage = json!({
        "name": "stage",
        "image": input.image,
        "command": command,
        // The executor is root in its container; the base image's USER applies to RUN steps.
        "securityContext": {"runAsUser": 0, "runAsGroup": 0, "privileged": false},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
        // For the executor's own pulls (COPY --from=<image>): the operator image's CA
        // certificates, which go along with the binary; RUN steps get only the image's env.
        "env": [{"name": "SSL_CERT_FILE", "value": format!("{BIN_DIR}/ca-certificates.crt")}],
    });
    if let Some(resources) = input
        .spec
        .resources
        .as_ref()
        .or(input.defaults.resources.as_ref())
    {
        stage["resources"] = serde_json::to_value(resources).unwrap_or(Value::Null);
    }
    let mut pod_spec = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [stage],
        "volumes": volumes,
    });
    if init {
        // Installing writes the cache volume, whose directories are root's: uid 0, still
        // without any capability.
        let security = if matches!(input.binary, Binary::Install(_)) {
            json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                "runAsUser": 0, "runAsGroup": 0, "readOnlyRootFilesystem": true})
        } else {
            restricted
        };
        pod_spec["initContainers"] = json!([{
            "name": "prepare",
            "image": input.operator_image,
            "command": prepare,
            "securityContext": security,
            "volumeMounts": init_mounts,
        }]);
    }
    if !input.spec.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(input.spec.node_selector);
    }
    // A preference, never a requirement: one node (or a busy cluster) still runs the build.
    // Only where every node can mount the cache claim: a ReadWriteOnce volume attached to
    // one node would leave a pod sent elsewhere waiting for it.
    if input.spread {
        pod_spec["topologySpreadConstraints"] = json!([{
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {
                "matchLabels": {LABEL_BUILD: input.owner.name, LABEL_GENERATION: input.owner.generation.to_string()},
                "matchExpressions": [{"key": LABEL_STAGE, "operator": "Exists"}],
            },
        }]);
    }
    if !input.spec.tolerations.is_empty() {
        pod_spec["tolerations"] =
            serde_json::to_value(&input.spec.tolerations).unwrap_or(Value::Null);
    }
    if let Some(account) = &input.spec.service_account_name {
        pod_spec["serviceAccountName"] = json!(account);
    }
    // The kubelet pulls a private base image with the push secret's logins; they never
    // reach a container.
    if let Some(secret) = &input.spec.push_secret {
        pod_spec["imagePullSecrets"] = json!([{"name": secret.name}]);
    }
    if let Some(seconds) = input.deadline_seconds {
        pod_spec["activeDeadlineSeconds"] = json!(seconds.max(1));
    }
    if let Some(host_users) = input.host_users {
        pod_spec["hostUsers"] = json!(host_users);
    }
    let mut metadata = meta(
        owner,
        &input.owner.stage_attempt(input.index, input.attempt),
        Some(input.index),
    );
    if let Some(labels) = metadata.labels.as_mut() {
        labels.insert(LABEL_ATTEMPT.into(), input.attempt.to_string());
    }
    // An annotation, not a label: a Dockerfile's stage name need not be a valid label value.
    let mut annotations: BTreeMap<String, String> = [(
        "stagecoach.dev/stage-name".to_string(),
        input.label.to_string(),
    )]
    .into();
    if let Binary::Install(key) = input.binary {
        annotations.insert(ANNOTATION_INSTALLS.into(), key.to_string());
    }
    metadata.annotations = Some(annotations);
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

/// A pod in the operator image that works on the cache volume and runs no user code: a
/// push, a source fetch, a cleanup. Its one container is uid 0 (the stage pods wrote the
/// cache's files as root) without any capability (but DAC_OVERRIDE and FOWNER for the pods
/// that remove what builds wrote), on a read-only root filesystem.
struct ToolPod<'a> {
    name: &'a str,
    container: &'a str,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    operator_image: &'a str,
    cache_claim: &'a str,
    args: Vec<String>,
    /// Extra `(volume, mount)` pairs: a job ConfigMap, credentials.
    extra: Vec<(Value, Value)>,
    /// Whether it removes what builds left on the cache volume (cleanup, collection): then
    /// it keeps DAC_OVERRIDE and FOWNER, without which uid 0 cannot remove a directory a
    /// build's user owns (a home directory in an export, a cache mount with `uid=`).
    removes: bool,
}

fn tool_pod(input: ToolPod<'_>) -> Pod {
    let mut volumes =
        vec![json!({"name": "cache", "persistentVolumeClaim": {"claimName": input.cache_claim}})];
    let mut mounts = vec![json!({"name": "cache", "mountPath": CACHE_DIR})];
    for (volume, mount) in input.extra {
        volumes.push(volume);
        mounts.push(mount);
    }
    let mut command = vec!["/stagecoach".to_string()];
    command.extend(input.args);
    let capabilities = if input.removes {
        json!({"drop": ["ALL"], "add": ["DAC_OVERRIDE", "FOWNER"]})
    } else {
        json!({"drop": ["ALL"]})
    };
    let pod_spec = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": input.container,
            "image": input.operator_image,
            "command": command,
            "securityContext": {"runAsUser": 0, "runAsGroup": 0, "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true, "capabilities": capabilities},
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    });
    let mut metadata = input.metadata;
    metadata.name = Some(input.name.to_string());
    Pod {
        metadata,
        spec: serde_json::from_value(pod_spec).ok(),
        ..Pod::default()
    }
}

/// A job as a ConfigMap (`job.json`), and the volume and mount that show it to the pod.
fn job_config_map(
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    job: &impl serde::Serialize,
) -> (ConfigMap, (Value, Value)) {
    let name = metadata.name.clone().unwrap_or_default();
    let map = ConfigMap {
        metadata,
        data: Some(
            [(
                "job.json".to_string(),
                serde_json::to_string(job).unwrap_or_default(),
            )]
            .into(),
        ),
        ..ConfigMap::default()
    };
    let volume = json!({"name": "spec", "configMap": {"name": name}});
    let mount = json!({"name": "spec", "mountPath": SPEC_DIR, "readOnly": true});
    (map, (volume, mount))
}

/// The job ConfigMap and the pod of push `n`: `stagecoach push` with the push secret, which
/// is mounted here and in no other pod.
pub fn push_pod(
    owner: &Owner,
    n: usize,
    operator_image: &str,
    cache_claim: &str,
    job: &stagecoach_protocol::job::PushJob,
    push_secret: Option<&str>,
) -> (ConfigMap, Pod) {
    let name = owner.push_object(n);
    let (job_map, spec) = job_config_map(meta(owner, &name, None), job);
    let mut extra = vec![spec];
    if let Some(secret) = push_secret {
        extra.push((
            json!({"name": "registry", "secret": {"secretName": secret,
                "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}}),
            json!({"name": "registry", "mountPath": REGISTRY_DIR, "readOnly": true}),
        ));
    }
    let mut metadata = meta(owner, &name, None);
    if let Some(labels) = metadata.labels.as_mut() {
        labels.insert("stagecoach.dev/push".into(), n.to_string());
    }
    let pod = tool_pod(ToolPod {
        name: &name,
        container: "push",
        metadata,
        operator_image,
        cache_claim,
        args: vec![
            "push".into(),
            "--spec".into(),
            format!("{SPEC_DIR}/job.json"),
        ],
        extra,
        removes: false,
    });
    (job_map, pod)
}

/// The job ConfigMap and the pod that fetches a git source into the cache volume
/// (`stagecoach fetch`), with the git credentials Secret, when there is one, mounted here
/// and in no other pod.
pub fn fetch_pod(
    owner: &Owner,
    operator_image: &str,
    cache_claim: &str,
    job: &stagecoach_protocol::job::FetchJob,
    credentials: Option<&str>,
) -> (ConfigMap, Pod) {
    let name = owner.fetch_object();
    let (job_map, spec) = job_config_map(meta(owner, &name, None), job);
    let mut extra = vec![spec];
    if let Some(secret) = credentials {
        extra.push((
            json!({"name": "git", "secret": {"secretName": secret,
                "items": [{"key": "username", "path": "username"}, {"key": "password", "path": "password"}]}}),
            json!({"name": "git", "mountPath": GIT_CREDENTIALS_DIR, "readOnly": true}),
        ));
    }
    let mut metadata = meta(owner, &name, None);
    if let Some(labels) = metadata.labels.as_mut() {
        labels.insert(LABEL_COMPONENT.into(), "fetch".into());
    }
    let pod = tool_pod(ToolPod {
        name: &name,
        container: "fetch",
        metadata,
        operator_image,
        cache_claim,
        args: vec![
            "fetch".into(),
            "--spec".into(),
            format!("{SPEC_DIR}/job.json"),
        ],
        extra,
        removes: false,
    });
    (job_map, pod)
}

/// The pod that removes a deleted build's directory from the cache volume
/// (`stagecoach clean`). It has no generation: it belongs to the build's end.
pub fn cleanup_pod(owner: &Owner, operator_image: &str, cache_claim: &str) -> Pod {
    let name = owner.cleanup_object();
    let mut metadata = meta(owner, &name, None);
    if let Some(labels) = metadata.labels.as_mut() {
        labels.remove(LABEL_GENERATION);
        labels.insert(LABEL_COMPONENT.into(), "cleanup".into());
    }
    tool_pod(ToolPod {
        name: &name,
        container: "clean",
        metadata,
        operator_image,
        cache_claim,
        args: vec![
            "clean".into(),
            "--cache".into(),
            CACHE_DIR.into(),
            "--build".into(),
            owner.uid.clone(),
        ],
        extra: vec![],
        removes: true,
    })
}

/// The label that names a cache claim's garbage-collection pods (a hash of the claim's name:
/// a claim name need not fit a label value).
pub const LABEL_CACHE_GC: &str = "stagecoach.dev/cache-gc";

/// What one cache collection keeps and removes (`stagecoach gc`'s flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcRun {
    /// Nothing used at or after this (seconds since the epoch) goes.
    pub in_use_since: u64,
    /// The age limit in seconds.
    pub max_age: u64,
    /// The size limit in bytes.
    pub max_bytes: Option<u64>,
    /// Running builds' uids.
    pub keep_builds: Vec<String>,
}

/// The label value and pod-name stem of a claim's collections.
pub fn cache_gc_id(claim: &str) -> String {
    let digest = stagecoach_protocol::Digest::of_bytes(claim.as_bytes());
    digest.hex().chars().take(12).collect()
}

/// A pod that collects garbage on a cache claim (`stagecoach gc`), named after the claim and
/// the time, owned by nothing (a cache belongs to no build).
pub fn cache_gc_pod(claim: &str, operator_image: &str, run: &GcRun, now_seconds: u64) -> Pod {
    let id = cache_gc_id(claim);
    let name = format!("stagecoach-gc-{id}-{now_seconds}");
    let metadata = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: Some(name.clone()),
        labels: Some(
            [
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "stagecoach".to_string(),
                ),
                (LABEL_COMPONENT.to_string(), "cache-gc".to_string()),
                (LABEL_CACHE_GC.to_string(), id),
            ]
            .into(),
        ),
        annotations: Some([("stagecoach.dev/cache-claim".to_string(), claim.to_string())].into()),
        ..Default::default()
    };
    let mut args = vec![
        "gc".to_string(),
        "--cache".into(),
        CACHE_DIR.into(),
        "--in-use-since".into(),
        run.in_use_since.to_string(),
        "--max-age".into(),
        run.max_age.to_string(),
    ];
    if let Some(bytes) = run.max_bytes {
        args.extend(["--max-bytes".to_string(), bytes.to_string()]);
    }
    for uid in &run.keep_builds {
        args.extend(["--keep-build".to_string(), uid.clone()]);
    }
    tool_pod(ToolPod {
        name: &name,
        container: "gc",
        metadata,
        operator_image,
        cache_claim: claim,
        args,
        extra: vec![],
        removes: true,
    })
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
            export_shared: false,
            export_paths: None,
            result: None,
            cache_mounts: Vec::new(),
            wait_for: Vec::new(),
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
            attempt: 0,
            deadline_seconds: Some(600),
            defaults: &BuilderDefaults::default(),
            host_users: None,
            spread: false,
            binary: Binary::Copied,
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
        assert_eq!(spec["activeDeadlineSeconds"], 600);
        assert!(spec.get("imagePullSecrets").is_none());
    }

    #[test]
    fn the_operators_defaults_apply_unless_the_build_sets_its_own() {
        let mounts = plan("FROM busybox\nRUN true\n");
        let (owner, job) = (owner(), job());
        let exports = BTreeMap::new();
        let defaults = BuilderDefaults {
            resources: Some(
                BuilderDefaults::parse_resources(
                    r#"{"requests":{"cpu":"500m"},"limits":{"memory":"1Gi"}}"#,
                )
                .unwrap(),
            ),
            user_namespaces: UserNamespaces::Off,
        };
        let pod_for = |spec: &ImageBuildSpec, defaults: &BuilderDefaults, host_users| {
            let (_, pod) = stage_pod(&StagePod {
                owner: &owner,
                spec,
                index: 0,
                label: "0",
                image: "i",
                operator_image: "o",
                cache_claim: "c",
                job: &job,
                mounts: &mounts,
                context: None,
                stage_exports: &exports,
                attempt: 0,
                deadline_seconds: None,
                defaults,
                host_users,
                spread: false,
                binary: Binary::Copied,
            })
            .unwrap();
            serde_json::to_value(pod.spec.unwrap()).unwrap()
        };
        let pod = pod_for(&spec(), &defaults, Some(false));
        assert_eq!(pod["hostUsers"], false);
        assert_eq!(
            pod["containers"][0]["resources"],
            json!({"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}})
        );
        let own = ImageBuildSpec {
            resources: Some(
                BuilderDefaults::parse_resources(r#"{"limits":{"memory":"8Gi"}}"#).unwrap(),
            ),
            ..spec()
        };
        let pod = pod_for(&own, &defaults, None);
        assert_eq!(
            pod["containers"][0]["resources"],
            json!({"limits": {"memory": "8Gi"}})
        );
        // Without defaults, neither field is set.
        let pod = pod_for(&spec(), &BuilderDefaults::default(), None);
        assert!(pod.get("hostUsers").is_none(), "{pod}");
        assert!(pod["containers"][0].get("resources").is_none(), "{pod}");
        assert!(BuilderDefaults::parse_resources(r#"{"requests": 3}"#).is_err());
    }

    #[test]
    fn a_pod_runs_the_binary_from_the_cache_volume_once_it_is_installed_there() {
        let (owner, job, spec) = (owner(), job(), spec());
        let exports = BTreeMap::new();
        let defaults = BuilderDefaults::default();
        let inline = ContextSource::Inline {
            name: "ctx".into(),
            items: vec![("k0".into(), "a.txt".into())],
        };
        let pod_for = |dockerfile: &str, context: &ContextSource, binary| {
            let mounts = plan(dockerfile);
            let (_, pod) = stage_pod(&StagePod {
                owner: &owner,
                spec: &spec,
                index: 0,
                label: "0",
                image: "i",
                operator_image: "o",
                cache_claim: "c",
                job: &job,
                mounts: &mounts,
                context: Some(context),
                stage_exports: &exports,
                attempt: 0,
                deadline_seconds: None,
                defaults: &defaults,
                host_users: None,
                spread: false,
                binary,
            })
            .unwrap();
            (
                serde_json::to_value(pod.spec.unwrap()).unwrap(),
                pod.metadata.annotations.unwrap_or_default(),
            )
        };
        let mount_at = |container: &Value, path: &str| -> Value {
            container["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["mountPath"] == path)
                .cloned()
                .unwrap_or(Value::Null)
        };
        let plain = "FROM busybox\nCOPY a.txt /\nRUN true\n";

        // Installing: the init container writes bin/<key> on the cache volume as uid 0
        // without capabilities, and the pod says which key it installs; the pod runs its
        // own copy, which does not depend on the install.
        let (pod, annotations) = pod_for(plain, &inline, Binary::Install("k1"));
        let init = &pod["initContainers"][0];
        assert_eq!(
            mount_at(init, INSTALL_DIR),
            json!({"name": "cache", "mountPath": INSTALL_DIR, "subPath": "bin/k1"})
        );
        assert_eq!(mount_at(init, BIN_DIR)["name"], "bin");
        let prepare: Vec<String> = serde_json::from_value(init["command"].clone()).unwrap();
        assert!(
            prepare
                .windows(2)
                .any(|w| w == ["--install-to", INSTALL_DIR]),
            "{prepare:?}"
        );
        assert_eq!(init["securityContext"]["runAsUser"], 0);
        assert_eq!(
            init["securityContext"]["capabilities"]["drop"],
            json!(["ALL"])
        );
        assert_eq!(
            annotations.get(ANNOTATION_INSTALLS).map(String::as_str),
            Some("k1")
        );
        assert_eq!(
            mount_at(&pod["containers"][0], BIN_DIR),
            json!({"name": "bin", "mountPath": BIN_DIR, "readOnly": true})
        );

        // Installed: no init container; the stage process copies the context itself from the
        // projected volume into the (writable) emptyDir.
        let (pod, annotations) = pod_for(plain, &inline, Binary::Installed("k1"));
        assert!(pod.get("initContainers").is_none(), "{pod}");
        assert!(!annotations.contains_key(ANNOTATION_INSTALLS));
        let stage = &pod["containers"][0];
        assert_eq!(
            mount_at(stage, BIN_DIR),
            json!({"name": "cache", "mountPath": BIN_DIR, "subPath": "bin/k1", "readOnly": true})
        );
        assert_eq!(mount_at(stage, SOURCE_DIR)["readOnly"], true);
        assert_eq!(
            mount_at(stage, CONTEXT_DIR),
            json!({"name": "context", "mountPath": CONTEXT_DIR})
        );
        let command: Vec<String> = serde_json::from_value(stage["command"].clone()).unwrap();
        assert_eq!(
            command[4..],
            ["--context-from", SOURCE_DIR, "--context-to", CONTEXT_DIR]
        );
        assert!(
            pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|v| v["name"] != "bin")
        );

        // A bind mount from a copied context needs the copy before the stage container
        // starts: an init container that copies the context only.
        let binds = "FROM busybox\nRUN --mount=type=bind,source=a.txt,target=/a true\n";
        let (pod, _) = pod_for(binds, &inline, Binary::Installed("k1"));
        let init = &pod["initContainers"][0];
        let prepare: Vec<String> = serde_json::from_value(init["command"].clone()).unwrap();
        assert!(!prepare.contains(&"--binary-to".to_string()), "{prepare:?}");
        assert!(
            prepare.contains(&"--context-from".to_string()),
            "{prepare:?}"
        );
        assert_eq!(init["securityContext"]["runAsUser"], 65532);
        assert_eq!(pod["containers"][0]["command"].as_array().unwrap().len(), 4);

        // ... but not when the context is on the cache volume already.
        let fetched = ContextSource::Cache("builds/u-1/context".into());
        let (pod, _) = pod_for(binds, &fetched, Binary::Installed("k1"));
        assert!(pod.get("initContainers").is_none(), "{pod}");
        assert!(mount_at(&pod["containers"][0], SOURCE_DIR).is_null());

        // Copied (no key): the emptyDir, as before.
        let (pod, _) = pod_for(plain, &inline, Binary::Copied);
        assert_eq!(
            mount_at(&pod["initContainers"][0], BIN_DIR),
            json!({"name": "bin", "mountPath": BIN_DIR, "readOnly": false})
        );
    }

    #[test]
    fn stage_pods_prefer_other_nodes_only_where_every_node_can_mount_the_cache() {
        let mounts = plan("FROM busybox\nRUN true\n");
        let (owner, job, spec) = (owner(), job(), spec());
        let exports = BTreeMap::new();
        let defaults = BuilderDefaults::default();
        let pod_for = |spread| {
            let (_, pod) = stage_pod(&StagePod {
                owner: &owner,
                spec: &spec,
                index: 2,
                label: "2",
                image: "i",
                operator_image: "o",
                cache_claim: "c",
                job: &job,
                mounts: &mounts,
                context: None,
                stage_exports: &exports,
                attempt: 0,
                deadline_seconds: None,
                defaults: &defaults,
                host_users: None,
                spread,
                binary: Binary::Copied,
            })
            .unwrap();
            let labels = pod.metadata.labels.clone().unwrap();
            (serde_json::to_value(pod.spec.unwrap()).unwrap(), labels)
        };
        let (spread, labels) = pod_for(true);
        let constraint = &spread["topologySpreadConstraints"][0];
        assert_eq!(
            constraint["whenUnsatisfiable"], "ScheduleAnyway",
            "a preference"
        );
        assert_eq!(constraint["topologyKey"], "kubernetes.io/hostname");
        // It selects this pod's own labels: the build's stage pods of this generation.
        let selector = constraint["labelSelector"]["matchLabels"]
            .as_object()
            .unwrap();
        assert_eq!(selector.len(), 2);
        for (key, value) in selector {
            assert_eq!(
                Some(value.as_str().unwrap()),
                labels.get(key).map(String::as_str),
                "{key}"
            );
        }
        assert_eq!(
            constraint["labelSelector"]["matchExpressions"][0]["key"],
            LABEL_STAGE
        );
        assert!(labels.contains_key(LABEL_STAGE));
        let (single, _) = pod_for(false);
        assert!(single.get("topologySpreadConstraints").is_none());
    }

    fn node(handlers: serde_json::Value, unschedulable: bool) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "spec": {"unschedulable": unschedulable},
            "status": {"runtimeHandlers": handlers},
        }))
        .unwrap()
    }

    #[test]
    fn user_namespaces_follow_what_the_nodes_runtimes_report() {
        let yes = || {
            node(
                json!([{"name": "", "features": {"userNamespaces": true}},
            {"name": "runc", "features": {"userNamespaces": true}}]),
                false,
            )
        };
        // Only the default handler counts: pods here name no runtimeClassName.
        let other_handler_only = || {
            node(
                json!([{"name": "", "features": {"userNamespaces": false}},
            {"name": "kata", "features": {"userNamespaces": true}}]),
                false,
            )
        };
        let old = || node(json!(null), false);
        let cordoned_old = || node(json!(null), true);
        use UserNamespaces::{Auto, Off, Required};
        assert_eq!(Auto.host_users(&[yes(), yes()]), Ok(Some(false)));
        assert_eq!(
            Auto.host_users(&[yes(), old()]),
            Ok(None),
            "one node without it"
        );
        assert_eq!(Auto.host_users(&[yes(), cordoned_old()]), Ok(Some(false)));
        assert_eq!(Auto.host_users(&[other_handler_only()]), Ok(None));
        assert_eq!(Auto.host_users(&[]), Ok(None));
        assert_eq!(Off.host_users(&[yes()]), Ok(None));
        assert_eq!(Required.host_users(&[yes(), old()]), Ok(Some(false)));
        let wait = Required
            .host_users(&[old(), other_handler_only()])
            .unwrap_err();
        assert!(wait.contains("none of the 2 schedulable nodes"), "{wait}");
        assert!(wait.contains("--user-namespaces=required"), "{wait}");
        for mode in [Auto, Required, Off] {
            assert_eq!(UserNamespaces::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(UserNamespaces::parse("yes"), None);
    }

    #[test]
    fn a_retry_is_a_new_pod_with_its_own_job_and_a_fetched_context_is_mounted_in_place() {
        let mounts = plan("FROM busybox\nRUN --mount=type=bind,source=pkg,target=/pkg true\n");
        let owner = owner();
        let spec = spec();
        let job = job();
        let context = ContextSource::Cache("builds/u-1/context".into());
        let spec = ImageBuildSpec {
            push_secret: Some(stagecoach_api::SecretReference {
                name: "regcred".into(),
            }),
            ..spec
        };
        let (map, pod) = stage_pod(&StagePod {
            owner: &owner,
            spec: &spec,
            index: 2,
            label: "2",
            image: "i",
            operator_image: "o",
            cache_claim: "c",
            job: &job,
            mounts: &mounts,
            context: Some(&context),
            stage_exports: &BTreeMap::new(),
            attempt: 2,
            deadline_seconds: None,
            defaults: &BuilderDefaults::default(),
            host_users: None,
            spread: false,
            binary: Binary::Copied,
        })
        .unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("web-g3-s2-r2"));
        // Its own job: a later try may read no earlier build's files.
        assert_eq!(map.metadata.name.as_deref(), Some("web-g3-s2-r2"));
        assert_eq!(pod.metadata.labels.as_ref().unwrap()[LABEL_ATTEMPT], "2");
        let spec = serde_json::to_value(pod.spec.unwrap()).unwrap();
        assert_eq!(spec["volumes"][2]["configMap"]["name"], "web-g3-s2-r2");
        assert!(spec.get("activeDeadlineSeconds").is_none());
        // The kubelet may pull a private base image; no container sees the logins.
        assert_eq!(spec["imagePullSecrets"], json!([{"name": "regcred"}]));
        assert!(!spec.to_string().contains("\"secretName\":\"regcred\""));
        let mounts: BTreeMap<String, Value> = spec["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["mountPath"].as_str().unwrap().to_string(), m.clone()))
            .collect();
        // The fetched context and binds from it are read-only subPaths of the cache volume;
        // the init container copies nothing.
        assert_eq!(
            mounts[CONTEXT_DIR],
            json!({"name": "cache", "mountPath": CONTEXT_DIR, "subPath": "builds/u-1/context", "readOnly": true})
        );
        assert_eq!(mounts["/pkg"]["subPath"], "builds/u-1/context/pkg");
        assert_eq!(mounts["/pkg"]["readOnly"], true);
        let prepare = spec["initContainers"][0]["command"].to_string();
        assert!(!prepare.contains("--context"), "{prepare}");
        assert!(
            spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|v| v["name"] != "context"),
            "no context emptyDir"
        );
    }

    #[test]
    fn credentials_reach_only_the_pods_that_need_them() {
        let owner = owner();
        let push = stagecoach_protocol::job::PushJob {
            version: JOB_VERSION,
            target: "r/x:1".into(),
            config: stagecoach_protocol::Digest::of_bytes(b"{}"),
            config_size: 2,
            layers: vec![],
            sources: vec![],
            cache: CACHE_DIR.into(),
            credentials: None,
            insecure_registries: vec![],
        };
        let (_, pod) = push_pod(&owner, 0, "o", "c", &push, Some("regcred"));
        let spec = serde_json::to_value(pod.spec.unwrap()).unwrap();
        assert_eq!(spec["volumes"][2]["secret"]["secretName"], "regcred");
        assert_eq!(spec["containers"][0]["image"], "o");
        assert_eq!(
            spec["containers"][0]["securityContext"]["capabilities"]["drop"],
            json!(["ALL"])
        );
        let fetch = stagecoach_protocol::job::FetchJob {
            version: JOB_VERSION,
            url: "https://git.example/app.git".into(),
            revision: None,
            sub_path: String::new(),
            dockerfile: "Dockerfile".into(),
            dest: "/cache/builds/u-1/context".into(),
            credentials: Some(GIT_CREDENTIALS_DIR.into()),
            max_bytes: None,
        };
        let (map, pod) = fetch_pod(&owner, "o", "c", &fetch, Some("gitcred"));
        assert_eq!(pod.metadata.name.as_deref(), Some("web-g3-fetch"));
        assert_eq!(map.metadata.name, pod.metadata.name);
        let spec = serde_json::to_value(pod.spec.unwrap()).unwrap();
        assert_eq!(spec["volumes"][2]["secret"]["secretName"], "gitcred");
        assert_eq!(spec["containers"][0]["command"][1], "fetch");
        let cleanup = cleanup_pod(&owner, "o", "c");
        let labels = cleanup.metadata.labels.clone().unwrap();
        assert!(
            !labels.contains_key(LABEL_GENERATION),
            "outlives generations"
        );
        let spec = serde_json::to_value(cleanup.spec.unwrap()).unwrap();
        assert_eq!(
            spec["containers"][0]["command"],
            json!([
                "/stagecoach",
                "clean",
                "--cache",
                CACHE_DIR,
                "--build",
                "u-1"
            ])
        );
        assert_eq!(
            spec["volumes"].as_array().unwrap().len(),
            1,
            "the cache and nothing else"
        );
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
            attempt: 0,
            deadline_seconds: None,
            defaults: &BuilderDefaults::default(),
            host_users: None,
            spread: false,
            binary: Binary::Copied,
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
