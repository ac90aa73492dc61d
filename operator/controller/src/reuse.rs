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

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt as _;
use kube::api::{Api, ListParams};
use serde::Serialize;
use stagecoach_api::{ConditionStatus, ImageBuild, ImageBuildSpec, ImageStatus, SourceKind};
use stagecoach_dockerfile::instructions::{Dockerfile, Instruction};
use stagecoach_dockerfile::planner::{Base, Plan};

/// Bumped when what the executor makes of the same inputs changes, or what the inputs cover
/// (2: where the images go is no longer one; 3: stage inputs cover only the context files a
/// stage reads).
const INPUTS_VERSION: u32 = 4;

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
    dockerfile.stages.iter().all(static_stage)
}

/// [`static_inputs`] for one stage.
fn static_stage(stage: &stagecoach_dockerfile::instructions::Stage) -> bool {
    stage.instructions.iter().all(|i| match &i.instruction {
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

/// Each build secret's id and the name and key of its Secret (never its value).
fn secret_refs(spec: &ImageBuildSpec) -> Vec<(&str, &str, &str)> {
    spec.secrets
        .iter()
        .map(|s| {
            (
                s.id.as_str(),
                s.secret_key_ref.name.as_str(),
                s.secret_key_ref.key.as_str(),
            )
        })
        .collect()
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
        secrets: secret_refs(spec),
        images,
    };
    let bytes = serde_json::to_vec(&inputs).ok()?;
    Some(stagecoach_protocol::Digest::of_bytes(&bytes).to_string())
}

/// What a stage's inputs digest is taken over: what its pod would make its result from.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StageInputs<'a> {
    version: u32,
    stagecoach: &'a str,
    /// The base as written, and what it is now: an image digest, a stage's inputs, scratch.
    from: &'a str,
    base: String,
    platform: Option<&'a str>,
    escape: char,
    /// Each instruction as written and as parsed (a heredoc's body is only in the latter).
    lines: Vec<(&'a str, String)>,
    /// Each declared ARG: its `--build-arg` value and its global value.
    args: Vec<(&'a str, Option<&'a str>, Option<&'a str>)>,
    /// The proxy args RUN sees without a declaration.
    predefined: Vec<(&'a str, &'a str)>,
    /// What the stage reads of the context, when it reads any.
    context: Option<String>,
    stages: Vec<&'a str>,
    images: Vec<(&'a str, &'a str)>,
    secrets: Vec<(&'a str, &'a str, &'a str)>,
}

/// What the controller sees of a build's context.
#[derive(Debug, Clone, PartialEq)]
pub enum ContextView {
    /// Every file, by its path from the context root, with its content's digest (inline and
    /// ConfigMap sources): a stage's inputs cover only the files it may read.
    Files(BTreeMap<String, String>),
    /// An identity for the whole context (a git source: the commit it was fetched at).
    Whole(String),
    /// Nothing yet (a git source before its fetch).
    Unknown,
}

/// The files of a ConfigMap (`data` and `binaryData`), by path, with their digests.
pub fn config_map_files(map: &ConfigMap) -> BTreeMap<String, String> {
    context_files(
        map.data
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .chain(
                map.binary_data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str(), v.0.as_slice())),
            ),
    )
}

/// Files by path, with their digests.
fn context_files<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> BTreeMap<String, String> {
    files
        .into_iter()
        .map(|(path, bytes)| {
            (
                normal_path(path),
                stagecoach_protocol::Digest::of_bytes(bytes).to_string(),
            )
        })
        .collect()
}

/// The view of a build's context: its files when the spec or ConfigMap holds them, the
/// commit for git.
pub fn context_view(
    spec: &ImageBuildSpec,
    config_map_files: Option<&BTreeMap<String, String>>,
    commit: Option<&str>,
) -> ContextView {
    match spec.source.kind() {
        Ok(SourceKind::Inline(inline)) => ContextView::Files(context_files(
            inline.files.iter().map(|(k, v)| (k.as_str(), v.as_bytes())),
        )),
        Ok(SourceKind::ConfigMap(_)) => match config_map_files {
            Some(files) => ContextView::Files(files.clone()),
            None => ContextView::Unknown,
        },
        Ok(SourceKind::Git(git)) => match commit {
            Some(commit) => ContextView::Whole(format!(
                "{}@{commit}:{}",
                git.url,
                git.sub_path.as_deref().unwrap_or("")
            )),
            None => ContextView::Unknown,
        },
        Err(_) => ContextView::Unknown,
    }
}

/// A context path as a relative path without `./`, leading or trailing `/` (empty for the
/// root).
fn normal_path(path: &str) -> String {
    let mut p = path.trim_start_matches('/');
    while let Some(rest) = p.strip_prefix("./") {
        p = rest.trim_start_matches('/');
    }
    let p = p.trim_end_matches('/');
    if p == "." {
        String::new()
    } else {
        p.to_string()
    }
}

/// A source as a plain relative path (`/a/b/` and `./a/b` are `a/b`), or `None` when it may
/// name more than one path: a wildcard, a variable, an escape, the root, an empty, `.` or
/// `..` part.
fn plain_path(source: &str) -> Option<String> {
    if source.contains(['*', '?', '[', '$', '\\']) {
        return None;
    }
    let path = normal_path(source);
    let plain = !path.is_empty()
        && path
            .split('/')
            .all(|c| !(c.is_empty() || c == "." || c == ".."));
    plain.then_some(path)
}

/// The context paths a stage may read (each a file or a directory), or `None` when it may
/// read anything (`.`, a wildcard, a variable) or `Some(empty)` when it reads nothing: every
/// `COPY` without `--from`, `ADD` of a local source, and `RUN --mount=type=bind` without
/// `from`.
fn context_reads(stage: &stagecoach_dockerfile::instructions::Stage) -> Option<Vec<String>> {
    use stagecoach_dockerfile::instructions::MountType;
    let mut sources: Vec<&str> = Vec::new();
    for located in &stage.instructions {
        match &located.instruction {
            Instruction::Copy(c) if c.from.is_none() => {
                sources.extend(c.transfer.sources.iter().map(String::as_str));
            }
            Instruction::Add(a) => sources.extend(
                a.transfer
                    .sources
                    .iter()
                    .map(String::as_str)
                    .filter(|s| !(s.contains("://") || s.starts_with("git@"))),
            ),
            Instruction::Run(r) => {
                for m in &r.mounts {
                    if m.kind == MountType::Bind && m.from.is_none() {
                        sources.push(m.source.as_deref().unwrap_or("."));
                    }
                }
            }
            _ => {}
        }
    }
    let mut reads = Vec::new();
    for source in sources {
        // A heredoc is the Dockerfile's own text.
        if source.starts_with("<<") {
            continue;
        }
        // Only plain paths are matched against the files; anything else reads everything.
        reads.push(plain_path(source)?);
    }
    Some(reads)
}

/// The paths of stage `j`'s root that the plan's needed stages read through `COPY --from`
/// or a `RUN --mount` with `from`, each a file or a directory relative to the root, sorted;
/// `None` when one of them may read anything (the whole root, a wildcard, a variable, a
/// path that is not plain) or runs `ONBUILD` triggers of a parent stage. The stage exports
/// only these paths: a `FROM` child stacks the stage's layers instead, and the rest of a
/// root is often the larger part (a compiler image whose one binary the next stage copies).
/// A base image's `ONBUILD` triggers that copy from a stage of this Dockerfile are not seen.
pub fn export_paths(dockerfile: &Dockerfile, plan: &Plan, j: usize) -> Option<Vec<String>> {
    use stagecoach_dockerfile::planner::stage_named;
    let mut sources: Vec<&str> = Vec::new();
    for &k in plan.waves.iter().flatten() {
        if !plan.stages[k].depends_on.contains(&j) {
            continue;
        }
        let stage = dockerfile.stages.get(k)?;
        if let Base::Stage(p) = plan.stages[k].base
            && dockerfile.stages.get(p).is_none_or(|parent| {
                parent
                    .instructions
                    .iter()
                    .any(|l| matches!(l.instruction, Instruction::Onbuild { .. }))
            })
        {
            return None;
        }
        let names_j = |from: &Option<String>| {
            from.as_deref()
                .is_some_and(|f| stage_named(dockerfile, k, f) == Some(j))
        };
        for located in &stage.instructions {
            match &located.instruction {
                Instruction::Copy(c) if names_j(&c.from) => {
                    sources.extend(c.transfer.sources.iter().map(String::as_str));
                }
                Instruction::Run(r) => {
                    for m in r.mounts.iter().filter(|m| names_j(&m.from)) {
                        sources.push(m.source.as_deref().unwrap_or("."));
                    }
                }
                _ => {}
            }
        }
    }
    let mut paths = sources
        .into_iter()
        .map(plain_path)
        .collect::<Option<Vec<String>>>()?;
    paths.sort();
    paths.dedup();
    Some(paths)
}

/// A stage's inputs with the paths its readers take folded in, when they take only some:
/// its export then holds only those paths, so another build's export of the same stage is
/// the same files only if its readers took the same paths.
pub fn with_export_paths(inputs: &str, paths: Option<&[String]>) -> String {
    match paths {
        Some(paths) if !paths.is_empty() => {
            let text = format!("{inputs}\nexports {}", paths.join("\n"));
            stagecoach_protocol::Digest::of_bytes(text.as_bytes()).to_string()
        }
        _ => inputs.to_string(),
    }
}

/// The identity of what a stage reads of the context: `Some(None)` when it reads nothing,
/// `None` when that is not known.
fn stage_context(
    view: &ContextView,
    stage: &stagecoach_dockerfile::instructions::Stage,
    dockerfile_path: &str,
    triggers: bool,
) -> Option<Option<String>> {
    // ONBUILD triggers run in this stage may read any of the context.
    let reads = if triggers { None } else { context_reads(stage) };
    if reads.as_ref().is_some_and(Vec::is_empty) {
        return Some(None);
    }
    match view {
        ContextView::Unknown => None,
        ContextView::Whole(id) => Some(Some(id.clone())),
        ContextView::Files(files) => {
            // Which files the context has at all: `.dockerignore` files decide that.
            let ignore = format!("{}.dockerignore", normal_path(dockerfile_path));
            let read: Vec<(&String, &String)> = files
                .iter()
                .filter(|(path, _)| {
                    *path == ".dockerignore"
                        || **path == ignore
                        || reads.as_ref().is_none_or(|reads| {
                            reads.iter().any(|r| {
                                *path == r
                                    || path
                                        .strip_prefix(r.as_str())
                                        .is_some_and(|rest| rest.starts_with('/'))
                            })
                        })
                })
                .collect();
            let bytes = serde_json::to_vec(&(dockerfile_path, &read)).ok()?;
            Some(Some(
                stagecoach_protocol::Digest::of_bytes(&bytes).to_string(),
            ))
        }
    }
}

/// Each stage's inputs digest (by index), `None` where an input is not known: an image that
/// did not resolve, an `ADD` of a URL without `--checksum`, the context of a git source not
/// yet fetched, or a stage it reads whose inputs are not known. `images` maps each external
/// image to what it resolves to now.
pub fn stage_inputs(
    spec: &ImageBuildSpec,
    dockerfile: &Dockerfile,
    plan: &Plan,
    context: &ContextView,
    images: &BTreeMap<String, String>,
    onbuild: &BTreeSet<String>,
) -> Vec<Option<String>> {
    use stagecoach_dockerfile::planner::{PREDEFINED_ARGS, PlanOptions, global_env};
    let global: BTreeMap<String, String> = global_env(
        dockerfile,
        &PlanOptions {
            build_args: spec.build_args.clone(),
            ..PlanOptions::default()
        },
    )
    .map(|env| env.into_iter().collect())
    .unwrap_or_default();
    let secrets = secret_refs(spec);
    let mut out: Vec<Option<String>> = Vec::with_capacity(plan.stages.len());
    for (i, planned) in plan.stages.iter().enumerate() {
        let key = (|| {
            let stage = dockerfile.stages.get(i)?;
            if !static_stage(stage) {
                return None;
            }
            // Stages only read earlier stages, whose inputs are known by now.
            let earlier = |j: usize| out.get(j).and_then(|k| k.as_deref());
            let base = match &planned.base {
                Base::Image(image) => images.get(image)?.clone(),
                Base::Stage(j) => earlier(*j)?.to_string(),
                Base::Scratch => "scratch".to_string(),
            };
            let stages = planned
                .depends_on
                .iter()
                .map(|&j| earlier(j))
                .collect::<Option<Vec<_>>>()?;
            let stage_images = planned
                .images
                .iter()
                .map(|name| Some((name.as_str(), images.get(name)?.as_str())))
                .collect::<Option<Vec<_>>>()?;
            // The triggers this stage runs: its base image's, or its parent stage's ONBUILD.
            let triggers = match &planned.base {
                Base::Image(image) => onbuild.contains(image),
                Base::Stage(j) => dockerfile.stages.get(*j).is_none_or(|parent| {
                    parent
                        .instructions
                        .iter()
                        .any(|l| matches!(l.instruction, Instruction::Onbuild { .. }))
                }),
                Base::Scratch => false,
            };
            let context = stage_context(context, stage, &spec.dockerfile, triggers)?;
            let args = stage
                .instructions
                .iter()
                .filter_map(|l| match &l.instruction {
                    Instruction::Arg(decls) => Some(decls),
                    _ => None,
                })
                .flatten()
                .map(|d| {
                    (
                        d.name.as_str(),
                        spec.build_args.get(&d.name).map(String::as_str),
                        global.get(&d.name).map(String::as_str),
                    )
                })
                .collect();
            let inputs = StageInputs {
                version: INPUTS_VERSION,
                stagecoach: env!("CARGO_PKG_VERSION"),
                from: &stage.base,
                base,
                platform: stage.platform.as_deref(),
                escape: dockerfile.escape,
                lines: stage
                    .instructions
                    .iter()
                    .map(|l| (l.original.as_str(), format!("{:?}", l.instruction)))
                    .collect(),
                args,
                predefined: spec
                    .build_args
                    .iter()
                    .filter(|(k, _)| PREDEFINED_ARGS.contains(&k.as_str()))
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
                context,
                stages,
                images: stage_images,
                secrets: secrets.clone(),
            };
            let bytes = serde_json::to_vec(&inputs).ok()?;
            Some(stagecoach_protocol::Digest::of_bytes(&bytes).to_string())
        })();
        out.push(key);
    }
    out
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

/// The image an earlier success pushed for a target stage whose inputs are `inputs`: the
/// newest such build's name and image. A stage taken that way is one too (state `Cached`),
/// since the image it names was confirmed under the tag it was put at.
pub fn earlier_stage_image(builds: &[ImageBuild], inputs: &str) -> Option<(String, ImageStatus)> {
    builds
        .iter()
        .filter_map(|b| {
            let status = b.status.as_ref()?;
            let succeeded = status.succeeded()?;
            if succeeded.status != ConditionStatus::True.as_str() {
                return None;
            }
            let image = status
                .stages
                .iter()
                .filter(|s| s.inputs.as_deref() == Some(inputs) && s.state.is_done())
                .find_map(|s| status.images.iter().find(|i| i.target == s.name))?;
            Some((
                status.completion_time.clone(),
                (
                    format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any()),
                    image.clone(),
                ),
            ))
        })
        .max_by(|a, b| a.0.as_ref().map(|t| t.0).cmp(&b.0.as_ref().map(|t| t.0)))
        .map(|(_, found)| found)
}

/// A target stage whose image an earlier build made: it is already where this build's
/// target goes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CachedTarget {
    /// The stage's index.
    pub stage: usize,
    /// This build's image, with the earlier digest.
    pub image: ImageStatus,
    /// `namespace/name` of the build that made it.
    pub from: String,
}

/// What a generation's first reconcile learns: its inputs, each stage's inputs, and what
/// earlier successes it can take the images of.
#[derive(Debug, Default)]
pub(crate) struct Decision {
    pub inputs: Option<String>,
    pub reuse: Option<Earlier>,
    /// Each stage's inputs, by index.
    pub stage_inputs: Vec<Option<String>>,
    /// Targets whose image an earlier build made, in spec order.
    pub cached: Vec<CachedTarget>,
    /// Decided now (no stage pod yet), not kept from status.
    pub fresh: bool,
    /// Inputs of stages that succeeded in the namespace's builds (when `fresh`).
    pub known: BTreeSet<String>,
    /// Stages status says need no pod (when kept).
    pub cached_stages: BTreeSet<usize>,
}

/// The inputs of this generation and of each of its stages and, when no stage pod of it
/// exists yet, an earlier success with the same inputs whose images are all still in the
/// registry, or else, per target stage, an earlier build that pushed an image of a stage
/// with the same inputs. Once this generation's status holds what its first reconcile
/// decided, that is kept, so a build does not change its mind while it runs. Whatever
/// cannot be found out (a registry that does not answer) only means no reuse: the build
/// then runs, and its own errors say what is wrong.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn decide(
    client: &kube::Client,
    registry: &stagecoach_oci::registry::RegistryClient,
    build: &ImageBuild,
    namespace: &str,
    config_map: Option<&str>,
    context: &ContextView,
    plan: &Plan,
    dockerfile: &str,
    no_stage_pods_yet: bool,
) -> Decision {
    let generation = build.metadata.generation.unwrap_or(0);
    if let Some(status) = build
        .status
        .as_ref()
        .filter(|s| s.observed_generation == Some(generation))
        && (status.source.as_ref().is_some_and(|s| s.inputs.is_some())
            || status.stages.iter().any(|s| s.inputs.is_some()))
    {
        return kept(status, plan);
    }
    // Decided afresh also when stage pods exist but the status this reconcile sees does not
    // hold the decision yet (it may be a moment behind): the same inputs give the same
    // answer, and a decision no status recorded (a controller stopped in between) is not
    // lost. Only the whole build is never taken once its pods run.
    let Ok(parsed) = Dockerfile::parse(dockerfile) else {
        return Decision::default();
    };
    let mut images = BTreeMap::new();
    let mut onbuild = BTreeSet::new();
    let external = external_images(plan);
    for image in external.iter().cloned() {
        match crate::run::resolve(registry, &image).await {
            Ok(resolved) => {
                if resolved
                    .config
                    .pointer("/config/OnBuild")
                    .and_then(|t| t.as_array())
                    .is_some_and(|t| !t.is_empty())
                {
                    onbuild.insert(image.clone());
                }
                images.insert(image, resolved.manifest.to_string());
            }
            // Only the stages that read it have no inputs.
            Err(e) => {
                tracing::debug!(image = image.as_str(), error = %e, "image not resolved: stages reading it have no inputs");
            }
        }
    }
    let mut stage_keys = stage_inputs(&build.spec, &parsed, plan, context, &images, &onbuild);
    for (j, key) in stage_keys.iter_mut().enumerate() {
        if let Some(k) = key {
            *k = with_export_paths(k, export_paths(&parsed, plan, j).as_deref());
        }
    }
    let mut decision = Decision {
        stage_inputs: stage_keys,
        fresh: true,
        ..Decision::default()
    };
    let whole = (static_inputs(&parsed) && images.len() == external.len())
        .then(|| inputs_digest(&build.spec, dockerfile, config_map, &images))
        .flatten();
    decision.inputs = whole.clone();
    let builds = match Api::<ImageBuild>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
    {
        // Not this generation itself: the list can be newer than the object this reconcile
        // has (a verdict written a moment ago), and a build is no earlier build of itself.
        Ok(list) => list
            .items
            .into_iter()
            .filter(|b| {
                b.metadata.uid != build.metadata.uid
                    || b.status
                        .as_ref()
                        .is_none_or(|s| s.observed_generation != Some(generation))
            })
            .collect::<Vec<_>>(),
        Err(e) => {
            tracing::debug!(error = %e, "cannot list the namespace's builds: no reuse");
            return decision;
        }
    };
    // Stages whose pods ran, on this build's cache volume: only those may have exported
    // files (a stage that got no pod wrote none).
    decision.known = builds
        .iter()
        .filter(|b| claim_of(b) == claim_of(build))
        .filter_map(|b| b.status.as_ref())
        .flat_map(|s| &s.stages)
        .filter(|s| s.state == stagecoach_api::StageState::Succeeded)
        .filter_map(|s| s.inputs.clone())
        .collect();
    if let Some(inputs) = &whole
        && no_stage_pods_yet
        && let Some(earlier) = earlier_success(&builds, inputs)
        && let Some(placed) = place_all(registry, build, plan, &earlier).await
    {
        decision.reuse = Some(Earlier {
            images: placed,
            ..earlier
        });
        return decision;
    }
    for (stage, destination) in crate::run::targets_to_push(build, plan) {
        let Some(Some(inputs)) = decision.stage_inputs.get(stage) else {
            continue;
        };
        let Some((from, earlier)) = earlier_stage_image(&builds, inputs) else {
            continue;
        };
        let label = crate::run::stage_label(plan, stage);
        if let Err(why) = place(registry, &earlier, &destination).await {
            tracing::info!(
                image = destination.as_str(),
                earlier = from.as_str(),
                why = why.as_str(),
                "a target stage has the inputs of an earlier build's, but its image cannot be put here: building it"
            );
            continue;
        }
        decision.cached.push(CachedTarget {
            stage,
            image: ImageStatus {
                target: label,
                image: destination,
                ..earlier
            },
            from,
        });
    }
    decision
}

/// The needed stages of `plan` that get no pod: a stage that is not a target, and either
/// only such stages read, or `earlier(stage)` says a build with its inputs exported its files
/// and no running stage starts `FROM` it (a child's pod needs its parent's layers, which only
/// the parent's own result names). Readers come after what they read, so one pass from the
/// last stage decides.
pub fn pod_free(plan: &Plan, earlier: impl Fn(usize) -> bool) -> BTreeSet<usize> {
    let needed: BTreeSet<usize> = plan.waves.iter().flatten().copied().collect();
    let mut runs: BTreeSet<usize> = BTreeSet::new();
    let mut free = BTreeSet::new();
    for &j in needed.iter().rev() {
        if plan.targets.contains(&j) {
            runs.insert(j);
            continue;
        }
        let readers: Vec<usize> = runs
            .iter()
            .copied()
            .filter(|&k| plan.stages[k].depends_on.contains(&j))
            .collect();
        let from_child = readers
            .iter()
            .any(|&k| plan.stages[k].base == Base::Stage(j));
        if readers.is_empty() || (earlier(j) && !from_child) {
            free.insert(j);
        } else {
            runs.insert(j);
        }
    }
    free
}

/// The cache claim a build names, `None` for the namespace's default one.
fn claim_of(build: &ImageBuild) -> Option<&str> {
    build.spec.cache.as_ref().map(|c| c.claim_name.as_str())
}

/// What this generation's first reconcile decided, as its status holds it.
fn kept(status: &stagecoach_api::ImageBuildStatus, plan: &Plan) -> Decision {
    let mut stage_inputs = vec![None; plan.stages.len()];
    for s in &status.stages {
        if let Some(slot) = usize::try_from(s.index)
            .ok()
            .and_then(|i| stage_inputs.get_mut(i))
        {
            slot.clone_from(&s.inputs);
        }
    }
    let cached = status
        .stages
        .iter()
        .filter(|s| s.state == stagecoach_api::StageState::Cached)
        .filter_map(|s| {
            let image = status.images.iter().find(|i| i.target == s.name)?;
            Some(CachedTarget {
                stage: usize::try_from(s.index).ok()?,
                image: image.clone(),
                from: String::new(),
            })
        })
        .collect();
    Decision {
        inputs: status.source.as_ref().and_then(|s| s.inputs.clone()),
        stage_inputs,
        cached,
        cached_stages: status
            .stages
            .iter()
            .filter(|s| s.state == stagecoach_api::StageState::Cached)
            .filter_map(|s| usize::try_from(s.index).ok())
            .collect(),
        ..Decision::default()
    }
}

/// Each of this build's images where it goes, with the earlier digest; `None` when one of
/// them cannot be (the build then runs).
async fn place_all(
    registry: &stagecoach_oci::registry::RegistryClient,
    build: &ImageBuild,
    plan: &Plan,
    earlier: &Earlier,
) -> Option<Vec<ImageStatus>> {
    let mut placed = Vec::new();
    for (stage, destination) in crate::run::targets_to_push(build, plan) {
        let label = crate::run::stage_label(plan, stage);
        let Some(from) = earlier.images.iter().find(|i| i.target == label) else {
            tracing::info!(
                target = label.as_str(),
                earlier = earlier.build.as_str(),
                "same inputs as an earlier build, which did not push this target: building"
            );
            return None;
        };
        if let Err(why) = place(registry, from, &destination).await {
            tracing::info!(
                image = destination.as_str(),
                earlier = earlier.build.as_str(),
                why = why.as_str(),
                "same inputs as an earlier build, but its image cannot be put here: building"
            );
            return None;
        }
        placed.push(ImageStatus {
            target: label,
            image: destination,
            ..from.clone()
        });
    }
    (!placed.is_empty()).then_some(placed)
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

    /// The inputs of each stage of `text` with `spec`'s build args.
    fn keys(
        spec_json: &str,
        text: &str,
        context: &ContextView,
        busybox: &str,
    ) -> Vec<Option<String>> {
        let spec = spec(spec_json);
        let plan = crate::validate::plan_dockerfile(&spec, text).unwrap();
        let images: BTreeMap<String, String> = [
            ("busybox".to_string(), format!("busybox@sha256:{busybox}")),
            ("alpine".to_string(), "alpine@sha256:cc".to_string()),
        ]
        .into();
        stage_inputs(
            &spec,
            &Dockerfile::parse(text).unwrap(),
            &plan,
            context,
            &images,
            &BTreeSet::new(),
        )
    }

    #[test]
    fn a_stage_s_inputs_change_with_what_it_reads_and_only_with_that() {
        let text = "FROM busybox AS a\nARG A\nRUN echo $A > /a\n\
                    FROM busybox AS b\nCOPY f /f\n\
                    FROM alpine AS c\nRUN <<EOF\necho c\nEOF\n\
                    FROM busybox AS d\nCOPY --from=a /a /a\nCOPY --from=c /etc /c\n";
        let with = |args: &str| {
            format!(
                r#"{{"source":{{"inline":{{"files":{{"f":"1"}}}}}},"buildArgs":{args},"targets":[{{"stage":"d","image":"r/d:1"}},{{"stage":"b","image":"r/b:1"}}]}}"#
            )
        };
        let files = |pairs: &[(&str, &str)]| {
            ContextView::Files(context_files(pairs.iter().map(|(k, v)| (*k, v.as_bytes()))))
        };
        let ctx1 = files(&[("f", "1"), ("./g", "unread")]);
        let first = keys(&with("{}"), text, &ctx1, "aa");
        assert!(first.iter().all(Option::is_some), "{first:?}");
        assert_eq!(first, keys(&with("{}"), text, &ctx1, "aa"), "stable");
        let distinct: std::collections::BTreeSet<_> = first.iter().collect();
        assert_eq!(distinct.len(), 4, "every stage has its own");
        // An argument no stage declares changes nothing.
        assert_eq!(first, keys(&with(r#"{"UNUSED":"1"}"#), text, &ctx1, "aa"));
        let changed = |other: &[Option<String>]| -> Vec<usize> {
            (0..4).filter(|&i| other[i] != first[i]).collect()
        };
        // A declared one: its stage and the stage that reads it.
        assert_eq!(
            changed(&keys(&with(r#"{"A":"1"}"#), text, &ctx1, "aa")),
            [0, 3]
        );
        // The context: the file a stage copies changes that stage, and no other; a file no
        // stage reads changes nothing.
        let ctx2 = files(&[("f", "2"), ("g", "unread")]);
        assert_eq!(changed(&keys(&with("{}"), text, &ctx2, "aa")), [1]);
        let ctx3 = files(&[("f", "1"), ("g", "changed"), ("h", "new")]);
        assert_eq!(
            changed(&keys(&with("{}"), text, &ctx3, "aa")),
            Vec::<usize>::new()
        );
        // A .dockerignore decides what the context holds: every stage that reads it.
        let ignore = files(&[("f", "1"), ("g", "unread"), (".dockerignore", "h")]);
        assert_eq!(changed(&keys(&with("{}"), text, &ignore, "aa")), [1]);
        // A directory, `.` and a wildcard read what is under them.
        for (copy, reads_g) in [
            ("COPY . /x", true),
            ("COPY ./ /x", true),
            ("COPY g* /x", true),
            ("COPY d/ /x", false),
        ] {
            let t = text.replace("COPY f /f", copy);
            let a = keys(&with("{}"), &t, &ctx1, "aa");
            let b = keys(&with("{}"), &t, &ctx3, "aa");
            assert_eq!(a[1] != b[1], reads_g, "{copy}");
        }
        // Paths that are not plain read everything.
        for copy in ["COPY d/../g /x", "COPY d//x /x", "COPY d/. /x"] {
            let t = text.replace("COPY f /f", copy);
            let a = keys(&with("{}"), &t, &ctx1, "aa");
            assert_ne!(a[1], keys(&with("{}"), &t, &ctx3, "aa")[1], "{copy}");
        }
        // ONBUILD triggers run by a stage may read anything: a parent stage's, and a base
        // image's.
        let parent = "FROM busybox AS p\nONBUILD COPY . /x\nFROM p AS q\nRUN true\n";
        let one = r#"{"source":{"inline":{}},"targets":[{"stage":"q","image":"r/q:1"}]}"#;
        assert_ne!(
            keys(one, parent, &ctx1, "aa")[1],
            keys(one, parent, &ctx3, "aa")[1]
        );
        let spec_b = spec(&with("{}"));
        let plan_b = crate::validate::plan_dockerfile(&spec_b, text).unwrap();
        let images: BTreeMap<String, String> = [
            ("busybox".to_string(), "busybox@sha256:aa".to_string()),
            ("alpine".to_string(), "alpine@sha256:cc".to_string()),
        ]
        .into();
        let with_triggers = |view: &ContextView| {
            stage_inputs(
                &spec_b,
                &Dockerfile::parse(text).unwrap(),
                &plan_b,
                view,
                &images,
                &["busybox".to_string()].into(),
            )
        };
        assert_ne!(
            with_triggers(&ctx1)[0],
            with_triggers(&ctx3)[0],
            "a reads nothing itself"
        );
        assert_eq!(
            with_triggers(&ctx1)[2],
            with_triggers(&ctx3)[2],
            "c is on alpine"
        );
        let dir = text.replace("COPY f /f", "COPY d /d");
        let in_d = |v: &str| files(&[("d/x", v), ("dx", "other")]);
        assert_ne!(
            keys(&with("{}"), &dir, &in_d("1"), "aa")[1],
            keys(&with("{}"), &dir, &in_d("2"), "aa")[1]
        );
        assert_eq!(
            keys(&with("{}"), &dir, &in_d("1"), "aa")[1],
            keys(
                &with("{}"),
                &dir,
                &files(&[("d/x", "1"), ("dx", "changed")]),
                "aa"
            )[1],
            "d is not dx"
        );
        // The base image: the stages on it, and what reads them.
        assert_eq!(changed(&keys(&with("{}"), text, &ctx1, "bb")), [0, 1, 3]);
        // A heredoc's body, which only the parsed instruction holds.
        let body = text.replace("echo c", "echo C");
        assert_eq!(changed(&keys(&with("{}"), &body, &ctx1, "aa")), [2, 3]);
        // A proxy argument RUN sees without a declaration.
        assert_eq!(
            changed(&keys(
                &with(r#"{"HTTP_PROXY":"http://p"}"#),
                text,
                &ctx1,
                "aa"
            )),
            [0, 1, 2, 3]
        );
        // A context not known (git before its fetch): only the stages that read it.
        let unknown = keys(&with("{}"), text, &ContextView::Unknown, "aa");
        assert_eq!(unknown[1], None);
        assert_eq!(unknown[0], first[0]);
        assert_eq!(unknown[3], first[3]);
        // A download that may change: that stage and what reads it.
        let url = text.replace("RUN echo $A > /a", "ADD https://example.com/x /a");
        let url = keys(&with("{}"), &url, &ctx1, "aa");
        assert_eq!((url[0].is_none(), url[3].is_none()), (true, true));
        assert_eq!(url[2], first[2]);
    }

    #[test]
    fn a_stage_exports_only_what_its_readers_take_and_its_key_says_which() {
        let spec = spec(r#"{"source":{"inline":{}},"image":"r/app:1"}"#);
        let paths = |text: &str, j: usize| {
            let plan = crate::validate::plan_dockerfile(&spec, text).unwrap();
            let parsed = Dockerfile::parse(text).unwrap();
            export_paths(&parsed, &plan, j)
        };
        let head = "FROM golang AS build\nRUN go build -o /out/server .\nFROM busybox AS tools\nRUN true\n";
        // Two readers, by name and by index, and a bind mount: their paths, sorted, once.
        let text = format!(
            "{head}FROM scratch AS app\nCOPY --from=build /out/server /server\nCOPY --from=0 ./etc/ssl/ /ssl\n\
             FROM busybox AS test\nRUN --mount=type=bind,from=BUILD,source=/out/server,target=/s /s -test\n\
             FROM scratch\nCOPY --from=app /server /\nCOPY --from=test /etc/hostname /h\n"
        );
        assert_eq!(
            paths(&text, 0),
            Some(vec!["etc/ssl".to_string(), "out/server".to_string()])
        );
        // Nothing reads `tools` here (not needed), and the last stage is read by no one.
        assert_eq!(paths(&text, 1), Some(vec![]));
        assert_eq!(paths(&text, 4), Some(vec![]));
        // Anything that may read more: the whole root.
        for reader in [
            "COPY --from=build /out/*.so /lib/",
            "COPY --from=build /out/$NAME /x",
            "COPY --from=build / /all",
            "COPY --from=build . /all",
            "COPY --from=build /out/../etc /x",
            "RUN --mount=type=bind,from=build,target=/b true",
        ] {
            let text = format!("{head}FROM busybox\nCOPY --from=build /out/server /s\n{reader}\n");
            assert_eq!(paths(&text, 0), None, "{reader}");
        }
        // A child that starts FROM the stage stacks its layers: it takes no path.
        let text = format!("{head}FROM build\nRUN true\n");
        assert_eq!(paths(&text, 0), Some(vec![]));
        // A reader whose parent has ONBUILD triggers: the whole root.
        let text = "FROM golang AS build\nRUN true\nFROM busybox AS base\nONBUILD COPY --from=build / /\n\
                    FROM base\nCOPY --from=build /out /out\n";
        assert_eq!(paths(text, 0), None);

        // The key: the inputs alone for the whole root or no reader; else a digest that
        // changes with the paths.
        let some = ["out/server".to_string()];
        let other = ["out".to_string()];
        assert_eq!(with_export_paths("sha256:1", None), "sha256:1");
        assert_eq!(with_export_paths("sha256:1", Some(&[])), "sha256:1");
        let a = with_export_paths("sha256:1", Some(&some));
        assert!(a.starts_with("sha256:") && a != "sha256:1");
        assert_ne!(a, with_export_paths("sha256:1", Some(&other)));
        assert_ne!(a, with_export_paths("sha256:2", Some(&some)));
    }

    #[test]
    fn a_stage_gets_no_pod_when_its_readers_can_read_an_earlier_export_or_need_none() {
        let text = "FROM busybox AS a\nRUN echo a > /a\n\
                    FROM busybox AS b\nRUN echo b > /b\n\
                    FROM b AS c\nRUN echo c > /c\n\
                    FROM busybox AS app\nCOPY --from=a /a /a\nCOPY --from=c /c /c\n";
        let spec = spec(r#"{"source":{"inline":{}},"image":"r/app:1"}"#);
        let plan = crate::validate::plan_dockerfile(&spec, text).unwrap();
        let free = |earlier: &[usize]| -> Vec<usize> {
            pod_free(&plan, |j| earlier.contains(&j))
                .into_iter()
                .collect()
        };
        // c's files are there: b is read only through c, so it needs nothing either.
        assert_eq!(free(&[0, 1, 2]), [0, 1, 2]);
        // c must run, and its pod starts FROM b: b's layers come from b's own pod.
        assert_eq!(free(&[0, 1]), [0]);
        assert_eq!(free(&[]), Vec::<usize>::new());
        // The target always runs (an earlier image of it is the other path).
        assert_eq!(free(&[0, 1, 2, 3]), [0, 1, 2]);
    }

    #[test]
    fn an_earlier_target_image_is_found_by_its_stage_s_inputs() {
        let inputs = format!("sha256:{}", "1".repeat(64));
        let build = |name: &str,
                     stage_inputs: &str,
                     state: &str,
                     status: &str,
                     done: &str|
         -> ImageBuild {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "stagecoach.dev/v1alpha1", "kind": "ImageBuild",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"source": {"inline": {"dockerfile": "FROM x\n"}}},
                "status": {"observedGeneration": 1, "completionTime": done,
                    "stages": [
                        {"name": "base", "index": 0, "state": "Succeeded", "inputs": stage_inputs},
                        {"name": "app", "index": 1, "state": state, "inputs": stage_inputs}],
                    "images": [{"target": "app", "image": format!("r/{name}:1"), "digest": format!("sha256:{}", "a".repeat(64))}],
                    "conditions": [{"type": "Succeeded", "status": status, "reason": "X", "message": "",
                        "lastTransitionTime": done, "observedGeneration": 1}]},
            }))
            .unwrap()
        };
        let other = format!("sha256:{}", "2".repeat(64));
        let builds = [
            build("old", &inputs, "Succeeded", "True", "2026-01-01T00:00:00Z"),
            build("cached", &inputs, "Cached", "True", "2026-02-01T00:00:00Z"),
            build(
                "failed",
                &inputs,
                "Succeeded",
                "False",
                "2026-03-01T00:00:00Z",
            ),
            build(
                "different",
                &other,
                "Succeeded",
                "True",
                "2026-03-01T00:00:00Z",
            ),
        ];
        let (from, image) = earlier_stage_image(&builds, &inputs).unwrap();
        assert_eq!(
            from, "ns/cached",
            "the newest success, a cached stage included"
        );
        assert_eq!(image.image, "r/cached:1");
        // A stage that was no target pushed nothing to take.
        let only_base = [build(
            "old",
            &inputs,
            "Succeeded",
            "True",
            "2026-01-01T00:00:00Z",
        )];
        let mut only_base = only_base;
        if let Some(s) = only_base[0].status.as_mut() {
            s.stages[1].inputs = Some(other.clone());
        }
        assert!(earlier_stage_image(&only_base, &inputs).is_none());
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
