//! The bounds and formats the ImageBuild schema enforces, in one place. The API server checks
//! them before the controller ever sees an object, so the controller, the planner and the
//! status writer can rely on them (and must stay inside the status bounds themselves). Each
//! value is documented in `docs/api.md`; change both together.
//!
//! Patterns are anchored and use only the regular-expression syntax that Go's RE2 (the API
//! server) and Rust's regex crates read the same way, so this crate's tests can check them.

/// Longest Kubernetes object name that is a DNS-1123 subdomain (Secrets, ConfigMaps,
/// PersistentVolumeClaims, ServiceAccounts, Pods, Nodes).
pub const MAX_DNS1123_SUBDOMAIN: u32 = 253;

/// A DNS-1123 subdomain: lower-case alphanumerics, `-` and `.`, starting and ending with an
/// alphanumeric in each dot-separated part.
pub const DNS1123_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Longest ImageBuild name. Shorter than the 253 the API server allows because the name is
/// used as a label value on the builder pods, and label values stop at 63.
pub const MAX_BUILD_NAME: u32 = 63;

/// Longest stage name the API accepts in `targets[].stage` and reports in `status.stages`.
pub const MAX_STAGE_NAME: u32 = 63;

/// A stage name as BuildKit accepts it in `FROM … AS name`, written in lower case. Stage
/// names are case-insensitive in a Dockerfile; requiring lower case here keeps one spelling
/// per stage, so the `targets` list-map cannot hold the same stage twice.
pub const STAGE_NAME: &str = r"^[a-z][a-z0-9._-]*$";

/// A stage as the status names it: its lower-case name, or its index in decimal when the
/// Dockerfile does not name it (`spec.image` pushes the last stage, named or not). Names
/// start with a letter, so the two never clash.
pub const STATUS_STAGE: &str = r"^([a-z][a-z0-9._-]*|[0-9]+)$";

/// Longest path inside the build context (`spec.dockerfile`, `source.git.subPath`).
pub const MAX_CONTEXT_PATH: u32 = 1024;

/// A relative path inside the build context: `/`-separated parts, none empty and none `..`,
/// not starting with `/`. `.` parts are allowed (`./Dockerfile`). The controller still joins
/// paths safely; the pattern makes the mistake visible at `kubectl apply` time.
pub const CONTEXT_PATH: &str =
    r"^(\.|\.\.[^/]+|\.[^./][^/]*|[^./][^/]*)(/(\.|\.\.[^/]+|\.[^./][^/]*|[^./][^/]*))*$";

/// Like [`CONTEXT_PATH`], but empty (the repository root) and a trailing `/` are allowed.
pub const SUB_PATH: &str =
    r"^((\.|\.\.[^/]+|\.[^./][^/]*|[^./][^/]*)(/(\.|\.\.[^/]+|\.[^./][^/]*|[^./][^/]*))*/?)?$";

/// Longest git URL.
pub const MAX_GIT_URL: u32 = 2048;

/// A git URL: `https://`, `http://`, `ssh://` or `git://` with no whitespace, or the scp-like
/// `user@host:path` form.
pub const GIT_URL: &str = r"^((https?|ssh|git)://\S+|[A-Za-z0-9._~-]+@[A-Za-z0-9.-]+:\S+)$";

/// Longest git revision (branch, tag or commit).
pub const MAX_GIT_REVISION: u32 = 255;

/// A git revision: no whitespace, and no leading `-` so it can never read as an option.
pub const GIT_REVISION: &str = r"^[^\s-]\S*$";

/// Longest image reference (`registry/repository:tag@digest`). Registries cap repository
/// names near 255 characters; tag (128) and digest (71) come on top.
pub const MAX_IMAGE_REFERENCE: u32 = 512;

/// An image reference as far as a pattern can tell cheaply: starts with an alphanumeric and has
/// no whitespace. The controller parses it fully and reports `InvalidSpec` otherwise.
pub const IMAGE_REFERENCE: &str = r"^[A-Za-z0-9]\S*$";

/// Most `targets` entries, and so most `status.images` entries.
pub const MAX_TARGETS: u32 = 32;

/// Most stages the controller reports in `status.stages`. A Dockerfile whose targets need
/// more stages fails with `InvalidDockerfile`, so the status always fits.
pub const MAX_STAGES: u32 = 128;

/// Most `buildArgs` entries.
pub const MAX_BUILD_ARGS: u32 = 64;

/// Longest `buildArgs` value.
pub const MAX_BUILD_ARG_VALUE: u32 = 4096;

/// Most `secrets` entries.
pub const MAX_BUILD_SECRETS: u32 = 32;

/// Longest build secret id (`RUN --mount=type=secret,id=…`).
pub const MAX_SECRET_ID: u32 = 63;

/// A build secret id: letters, digits, `.`, `_` and `-`, not starting with `.` (so it is
/// also a file name under `/run/secrets` and a Secret volume item path).
pub const SECRET_ID: &str = r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$";

/// Longest key of a Secret's data (what the API server allows).
pub const MAX_SECRET_KEY: u32 = 253;

/// A key of a Secret's data, as the API server accepts it.
pub const SECRET_KEY: &str = r"^[-._a-zA-Z0-9]+$";

/// Longest inline Dockerfile (64 KiB).
pub const MAX_INLINE_DOCKERFILE: u32 = 65_536;

/// Most files in an inline source.
pub const MAX_INLINE_FILES: u32 = 128;

/// Longest content of one inline file (256 KiB). The whole object must still fit in the
/// 1.5 MiB etcd allows; larger contexts belong in git or a ConfigMap.
pub const MAX_INLINE_FILE: u32 = 262_144;

/// Most `nodeSelector` entries.
pub const MAX_NODE_SELECTOR: u32 = 32;

/// Longest label value, and so the longest `nodeSelector` value.
pub const MAX_LABEL_VALUE: u32 = 63;

/// Most `tolerations` entries.
pub const MAX_TOLERATIONS: u32 = 32;

/// Longest `timeout` string; the pattern below already keeps it shorter.
pub const MAX_TIMEOUT: u32 = 32;

/// A timeout: hours, minutes and seconds in that order, each optional, integers of at most
/// five digits, e.g. `30m`, `1h30m`, `90s`. A subset of Go's duration syntax, so the API
/// server's CEL `duration()` reads it too.
pub const TIMEOUT: &str = r"^([0-9]{1,5}h)?([0-9]{1,5}m)?([0-9]{1,5}s)?$";

/// Most conditions in `status.conditions`.
pub const MAX_CONDITIONS: u32 = 16;

/// Longest condition type (as in Kubernetes' `metav1.Condition`).
pub const MAX_CONDITION_TYPE: u32 = 316;

/// Longest condition reason (as in Kubernetes' `metav1.Condition`).
pub const MAX_CONDITION_REASON: u32 = 1024;

/// A condition reason: CamelCase, as in Kubernetes' `metav1.Condition`.
pub const CONDITION_REASON: &str = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$";

/// Longest condition message (as in Kubernetes' `metav1.Condition`).
pub const MAX_CONDITION_MESSAGE: u32 = 32_768;

/// Longest per-stage message: the failure and the tail of the stage's log. With
/// [`MAX_STAGES`] stages the status stays well under the object size limit.
pub const MAX_STAGE_MESSAGE: u32 = 4096;

/// Longest `stagesSummary` (`done/total`).
pub const MAX_STAGES_SUMMARY: u32 = 16;

/// The `stagesSummary` format.
pub const STAGES_SUMMARY: &str = r"^[0-9]+/[0-9]+$";

/// Longest image digest (`sha512:` and 128 hex digits).
pub const MAX_DIGEST: u32 = 135;

/// An OCI content digest of a registered algorithm.
pub const DIGEST: &str = r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$";
