//! `ImageBuildSpec`: what the user asks for — where the build context comes from, which
//! Dockerfile and stages to build, where to push, and how the builder pods are scheduled. The
//! derive here also defines the `ImageBuild` kind itself (names, printer columns, status
//! subresource). Doc comments on fields are the API reference that `kubectl explain` shows, so
//! they speak to users; notes for Rust readers are plain comments.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::bounds;
use crate::schema::string_map;
use crate::status::ImageBuildStatus;

/// The Dockerfile path used when `spec.dockerfile` is not given.
pub const DEFAULT_DOCKERFILE: &str = "Dockerfile";

/// The timeout used when `spec.timeout` is not given.
pub const DEFAULT_TIMEOUT: &str = "1h";

/// The desired state of an ImageBuild.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "stagecoach.dev",
    version = "v1alpha1",
    kind = "ImageBuild",
    plural = "imagebuilds",
    namespaced,
    shortname = "ib",
    category = "stagecoach",
    status = "ImageBuildStatus",
    derive = "PartialEq",
    doc = "An ImageBuild builds a container image from a multi-stage Dockerfile inside the cluster, one builder pod per stage, and pushes the targets' images to a registry. Editing the spec starts a new build; deleting the ImageBuild removes its pods.",
    validation = Rule::new("self.metadata.name.size() <= 63").message("ImageBuild names are at most 63 characters: they become label values on the builder pods"),
    printcolumn(
        name = "Succeeded",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Succeeded\")].status",
        description = "True when every target was built and pushed, False when the build failed, Unknown while it runs"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Succeeded\")].reason",
        description = "Why the build is in its current state"
    ),
    printcolumn(
        name = "Stages",
        type_ = "string",
        json_path = ".status.stagesSummary",
        description = "Stages finished (succeeded or cached) / stages the targets need"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".status.images[0].image",
        description = "The first pushed image"
    ),
    printcolumn(
        name = "Digest",
        type_ = "string",
        json_path = ".status.images[0].digest",
        description = "The manifest digest of the first pushed image",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("!has(self.image) || !has(self.targets) || size(self.targets) == 0")
        .message("spec.image names the push target of the default (last) stage; when targets are listed, give each target its own image"),
    validation = Rule::new("!has(self.source.inline) || has(self.source.inline.dockerfile) || (has(self.source.inline.files) && self.dockerfile in self.source.inline.files)")
        .message("an inline source needs source.inline.dockerfile, or a file in source.inline.files at the path spec.dockerfile names")
)]
#[serde(rename_all = "camelCase")]
pub struct ImageBuildSpec {
    /// Where the build context comes from: exactly one of git, inline or configMap.
    pub source: Source,

    /// Path of the Dockerfile inside the build context, relative to its root (after
    /// source.git.subPath). Ignored when source.inline.dockerfile is set. At most 1024
    /// characters; no absolute paths and no ".." parts.
    #[serde(default = "default_dockerfile")]
    #[schemars(length(min = 1, max = bounds::MAX_CONTEXT_PATH), pattern(bounds::CONTEXT_PATH))]
    pub dockerfile: String,

    /// Values for the Dockerfile's ARG instructions, like `docker build --build-arg`. At most
    /// 64 entries; values at most 4096 characters. Values are visible to anyone who can read
    /// the ImageBuild: use RUN --mount=type=secret for secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = string_map::<{ bounds::MAX_BUILD_ARGS }, { bounds::MAX_BUILD_ARG_VALUE }>)]
    pub build_args: BTreeMap<String, String>,

    /// The stages to build, each pushed to its own image when one is given. Every stage a
    /// target needs is built; a target without an image is built and must succeed but is not
    /// pushed (for test stages). When empty, the last stage of the Dockerfile is the only
    /// target and is pushed to spec.image. At most 32 entries, one per stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = bounds::MAX_TARGETS))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["stage".into()]))]
    pub targets: Vec<Target>,

    /// Image reference to push the last stage to when targets is empty, e.g.
    /// registry.example.com/team/app:1.0. Not allowed together with targets. Without it (and
    /// without targets) the last stage is built but not pushed. At most 512 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = bounds::MAX_IMAGE_REFERENCE), pattern(bounds::IMAGE_REFERENCE))]
    pub image: Option<String>,

    /// Registry credentials for pushing, and for pulling private base images: a Secret of type
    /// kubernetes.io/dockerconfigjson in the ImageBuild's namespace. Without it, pushes and
    /// pulls are anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_secret: Option<SecretReference>,

    /// Build secrets for RUN --mount=type=secret,id=…: each id names a key of a Secret in
    /// the ImageBuild's namespace, like `docker build --secret id=…`. Only the builder pods of
    /// stages whose RUN steps ask for an id get that value, as a file at the mount's target
    /// (default /run/secrets/<id>); it never reaches a layer, a log line or the status. A
    /// RUN step that asks for an id not listed here builds without it, unless the mount says
    /// required=true. At most 32 entries, one per id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = bounds::MAX_BUILD_SECRETS))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["id".into()]))]
    pub secrets: Vec<BuildSecret>,

    /// The shared cache volume that holds the build context, the layers and the results of
    /// every stage. Without it, the operator's default cache claim is used (set when the
    /// operator is installed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,

    /// How long the whole build may take before it fails with reason Timeout and its pods are
    /// stopped: hours, minutes and seconds in that order, e.g. 30m, 1h30m, 90s. Greater than
    /// zero. Defaults to 1h.
    #[serde(default = "default_timeout")]
    #[schemars(length(min = 2, max = bounds::MAX_TIMEOUT), pattern(bounds::TIMEOUT))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("timeout must be greater than zero"))]
    pub timeout: String,

    /// Compute resources of the container that runs each stage's instructions (every builder
    /// pod gets the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels the builder pods must match, as in a pod's nodeSelector. At most 32
    /// entries; values at most 63 characters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = string_map::<{ bounds::MAX_NODE_SELECTOR }, { bounds::MAX_LABEL_VALUE }>)]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the builder pods, as in a pod's tolerations. At most 32 entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = bounds::MAX_TOLERATIONS))]
    pub tolerations: Vec<Toleration>,

    /// ServiceAccount the builder pods run as, in the ImageBuild's namespace; its
    /// imagePullSecrets apply to base images. Builder pods never mount its API token. Defaults
    /// to the namespace's default ServiceAccount. A DNS-1123 subdomain of at most 253
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = bounds::MAX_DNS1123_SUBDOMAIN), pattern(bounds::DNS1123_SUBDOMAIN))]
    pub service_account_name: Option<String>,
}

fn default_dockerfile() -> String {
    DEFAULT_DOCKERFILE.to_owned()
}

fn default_timeout() -> String {
    DEFAULT_TIMEOUT.to_owned()
}

// A struct of three options rather than a Rust enum: every stored object then deserializes,
// whatever an older schema let through, and the controller reports a bad one in a condition
// instead of a watcher error. `Source::kind` gives the enum view.
/// Where the build context comes from. Exactly one of git, inline or configMap is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    validation = Rule::new("(has(self.git) ? 1 : 0) + (has(self.inline) ? 1 : 0) + (has(self.configMap) ? 1 : 0) == 1")
        .message("source must set exactly one of git, inline or configMap")
)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// A git repository, fetched shallowly at one commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSource>,

    /// The Dockerfile and context files written in the ImageBuild itself, for small builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<InlineSource>,

    /// A ConfigMap in the ImageBuild's namespace whose keys become files at the context root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapSource>,
}

/// The one source an ImageBuild names, borrowed from [`Source`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SourceKind<'a> {
    /// `source.git`.
    Git(&'a GitSource),
    /// `source.inline`.
    Inline(&'a InlineSource),
    /// `source.configMap`.
    ConfigMap(&'a ConfigMapSource),
}

/// Why a [`Source`] names no single source. The schema's CEL rule prevents both on the API
/// server; this covers objects built in code or stored before the rule existed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// None of git, inline and configMap is set.
    #[error("source sets none of git, inline or configMap")]
    Missing,
    /// More than one of git, inline and configMap is set.
    #[error("source sets more than one of git, inline or configMap")]
    Ambiguous,
}

impl Source {
    /// The source this ImageBuild uses, or why there is not exactly one.
    pub fn kind(&self) -> Result<SourceKind<'_>, SourceError> {
        match (&self.git, &self.inline, &self.config_map) {
            (Some(git), None, None) => Ok(SourceKind::Git(git)),
            (None, Some(inline), None) => Ok(SourceKind::Inline(inline)),
            (None, None, Some(config_map)) => Ok(SourceKind::ConfigMap(config_map)),
            (None, None, None) => Err(SourceError::Missing),
            _ => Err(SourceError::Ambiguous),
        }
    }
}

/// A git repository as the build context.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GitSource {
    /// Repository URL: https://, http://, ssh://, git:// or user@host:path. At most 2048
    /// characters.
    #[schemars(length(min = 1, max = bounds::MAX_GIT_URL), pattern(bounds::GIT_URL))]
    pub url: String,

    /// Branch, tag or commit to build. The controller resolves it to a commit when the build
    /// starts and builds that commit. Defaults to the remote's default branch. At most 255
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = bounds::MAX_GIT_REVISION), pattern(bounds::GIT_REVISION))]
    pub revision: Option<String>,

    /// Directory inside the repository to use as the context root. Empty or absent means the
    /// repository root. At most 1024 characters; no absolute paths and no ".." parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = bounds::MAX_CONTEXT_PATH), pattern(bounds::SUB_PATH))]
    pub sub_path: Option<String>,

    /// Credentials for an http(s) repository: a Secret in the ImageBuild's namespace with the
    /// keys username and password (type kubernetes.io/basic-auth). Only the pod that fetches
    /// the source mounts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
}

/// A build context written in the ImageBuild itself.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InlineSource {
    /// The Dockerfile's text. When set, spec.dockerfile is ignored; when absent, the Dockerfile
    /// is the file at spec.dockerfile in files. At most 65536 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = bounds::MAX_INLINE_DOCKERFILE))]
    pub dockerfile: Option<String>,

    /// Context files: relative path (may contain "/") to text content. Files are written with
    /// mode 0644. At most 128 files of at most 262144 characters each, and the whole
    /// ImageBuild must stay under the API server's 1.5 MiB object limit; use git or a
    /// ConfigMap for larger or binary contexts. A path that is absolute or contains ".." fails
    /// the build with reason InvalidSpec.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = string_map::<{ bounds::MAX_INLINE_FILES }, { bounds::MAX_INLINE_FILE }>)]
    pub files: BTreeMap<String, String>,
}

/// A ConfigMap as the build context.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapSource {
    /// Name of the ConfigMap, in the ImageBuild's namespace. Each key of data and binaryData
    /// becomes a file of that name at the context root. A DNS-1123 subdomain of at most 253
    /// characters.
    #[schemars(length(min = 1, max = bounds::MAX_DNS1123_SUBDOMAIN), pattern(bounds::DNS1123_SUBDOMAIN))]
    pub name: String,
}

/// One stage to build, and where to push it.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Name of a stage in the Dockerfile (FROM … AS name), in lower case. Stage names are
    /// case-insensitive in a Dockerfile. Unnamed stages cannot be targets. At most 63
    /// characters. A name the Dockerfile does not define fails the build with reason
    /// UnknownTarget.
    #[schemars(length(min = 1, max = bounds::MAX_STAGE_NAME), pattern(bounds::STAGE_NAME))]
    pub stage: String,

    /// Image reference to push this stage's image to, e.g. registry.example.com/team/app:1.0.
    /// Without it the stage is built (and must succeed) but not pushed. At most 512
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = bounds::MAX_IMAGE_REFERENCE), pattern(bounds::IMAGE_REFERENCE))]
    pub image: Option<String>,
}

/// A build secret: the id RUN steps name, and the Secret key that holds its value.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BuildSecret {
    /// The id in RUN --mount=type=secret,id=<id>. Letters, digits, ".", "_" and "-", not
    /// starting with "."; at most 63 characters.
    #[schemars(length(min = 1, max = bounds::MAX_SECRET_ID), pattern(bounds::SECRET_ID))]
    pub id: String,

    /// The key of a Secret in the ImageBuild's namespace whose value is the secret.
    pub secret_key_ref: SecretKeyReference,
}

/// One key of a Secret in the ImageBuild's namespace.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyReference {
    /// Name of the Secret. A DNS-1123 subdomain of at most 253 characters.
    #[schemars(length(min = 1, max = bounds::MAX_DNS1123_SUBDOMAIN), pattern(bounds::DNS1123_SUBDOMAIN))]
    pub name: String,

    /// The key in the Secret's data: letters, digits, "-", "_" and "."; at most 253
    /// characters.
    #[schemars(length(min = 1, max = bounds::MAX_SECRET_KEY), pattern(bounds::SECRET_KEY))]
    pub key: String,
}

/// A Secret in the ImageBuild's namespace.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret. A DNS-1123 subdomain of at most 253 characters.
    #[schemars(length(min = 1, max = bounds::MAX_DNS1123_SUBDOMAIN), pattern(bounds::DNS1123_SUBDOMAIN))]
    pub name: String,
}

/// The cache volume of a build.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Name of a PersistentVolumeClaim in the ImageBuild's namespace. ReadWriteMany lets stage
    /// pods run on any node; with ReadWriteOnce all pods of a build run on the volume's node.
    /// A DNS-1123 subdomain of at most 253 characters.
    #[schemars(length(min = 1, max = bounds::MAX_DNS1123_SUBDOMAIN), pattern(bounds::DNS1123_SUBDOMAIN))]
    pub claim_name: String,
}
