//! The plan and apply steps for a validated generation: read what its pods did, start the
//! stages whose inputs are ready, and decide the build's state. A stage's pod starts when
//! every stage it needs has succeeded, so the stages of a wave run at the same time; a
//! stage's result is its pod's termination message (`StageResult`), whose config digest and
//! layers feed the `FROM <stage>` children's jobs. The first failure stops the generation's
//! other pods and fails the build with the reason the stage's exit code and result give.
//! Pods of older generations are deleted when a newer one is seen.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use stagecoach_api::{ImageBuild, ImageStatus, Reason, SourceKind, StageState, StageStatus};
use stagecoach_builder::image_state::ArgSource;
use stagecoach_builder::run_mounts;
use stagecoach_dockerfile::Dockerfile;
use stagecoach_dockerfile::planner::{self, Base, Plan, PlanOptions};
use stagecoach_oci::registry::ImageRef;
use stagecoach_protocol::job::{
    ImageInput, ImagePull, JOB_VERSION, JobBase, JobOptions, PushJob, PushResult, SecretInput,
    StageInput, StageJob, WaitFor,
};
use stagecoach_protocol::reason::condition_for_exit;
use stagecoach_protocol::{CacheLayout, LayerRecord, StageResult};

use crate::pods::{
    self, CACHE_DIR, CONTEXT_DIR, ContextSource, LABEL_BUILD, LABEL_GENERATION, Owner, StagePod,
};
use crate::{Context, Error};

/// A resolved base image.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pinned: String,
    pub manifest: stagecoach_oci::Digest,
    pub config: serde_json::Value,
    working_config: stagecoach_oci::ImageConfig,
    layers: Vec<LayerRecord>,
}

/// How far one stage got.
#[derive(Debug, Clone)]
enum Progress {
    NotStarted,
    Running,
    Succeeded(Box<StageResult>),
    /// No pod: an earlier build with the same stage inputs exported its files.
    Cached,
    Failed {
        code: i32,
        result: Option<Box<StageResult>>,
        message: String,
        kind: FailKind,
    },
}

/// Why a stage's pod failed, which decides what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailKind {
    /// The Dockerfile's own failure (a RUN that exited non-zero, a missing COPY source):
    /// final, never retried.
    Build,
    /// Outside the Dockerfile (eviction, OOM kill, a prepare step or pod that failed, an I/O
    /// error): a new pod, up to [`MAX_ATTEMPTS`] tries in all.
    Infrastructure,
    /// The pod ran out of the build's time (`activeDeadlineSeconds`).
    Deadline,
}

/// Tries a stage gets when its pods fail for infrastructure reasons.
pub(crate) const MAX_ATTEMPTS: u32 = 3;

/// The build's state after this reconcile.
#[derive(Debug, Clone)]
pub(crate) struct Verdict {
    pub reason: Reason,
    pub message: String,
    pub stages: Vec<StageStatus>,
    pub images: Vec<ImageStatus>,
    /// Look again after this long even if nothing changes (the build's deadline).
    pub requeue: Option<std::time::Duration>,
    /// Instructions of each succeeded stage, by status name (for the metrics).
    pub steps: BTreeMap<String, u64>,
}

impl Verdict {
    fn new(reason: Reason, message: String, stages: Vec<StageStatus>) -> Self {
        Verdict {
            reason,
            message,
            stages,
            images: Vec::new(),
            requeue: None,
            steps: BTreeMap::new(),
        }
    }
}

/// The build's pods of the current generation by name, after deleting those of older
/// generations (a newer spec replaces the old build: its pods stop).
pub(crate) async fn current_pods(
    ctx: &Context,
    namespace: &str,
    owner: &Owner,
) -> Result<BTreeMap<String, Pod>, Error> {
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let mut current = BTreeMap::new();
    for pod in list_pods(&pods_api, &format!("{LABEL_BUILD}={}", owner.name)).await? {
        match pod.labels().get(LABEL_GENERATION) {
            Some(g) if *g == owner.generation.to_string() => {
                current.insert(pod.name_any(), pod);
            }
            Some(_) => delete_pod(&pods_api, &pod.name_any()).await?,
            // Not a generation's pod (the cleanup pod).
            None => {}
        }
    }
    Ok(current)
}

/// The pods a label selector picks.
pub(crate) async fn list_pods(pods: &Api<Pod>, selector: &str) -> Result<Vec<Pod>, Error> {
    pods.list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .map_err(|source| Error::Apply {
            what: format!("list the pods labelled {selector}"),
            source,
        })
}

/// What is left of the build's timeout, counted from the generation's start.
pub(crate) fn time_left(build: &ImageBuild) -> Option<std::time::Duration> {
    let timeout = build.spec.timeout_duration().ok()?;
    let generation = build.metadata.generation.unwrap_or(0);
    let started = build
        .status
        .as_ref()
        .filter(|s| s.observed_generation == Some(generation))
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0);
    let elapsed = started.map_or(std::time::Duration::ZERO, |t| {
        let now = k8s_openapi::jiff::Timestamp::now();
        now.duration_since(t).try_into().unwrap_or_default()
    });
    Some(timeout.saturating_sub(elapsed))
}

/// How long a finished build's pods have left: `retention` after `completed`, never less
/// than nothing.
pub(crate) fn retention_left(
    completed: k8s_openapi::jiff::Timestamp,
    now: k8s_openapi::jiff::Timestamp,
    retention: std::time::Duration,
) -> std::time::Duration {
    let elapsed: std::time::Duration = now.duration_since(completed).try_into().unwrap_or_default();
    retention.saturating_sub(elapsed)
}

/// A finished build keeps its pods (their logs are the build's logs, and they hold no
/// resources once their containers are done) for `--pod-retention`, then they go; the
/// ImageBuild and its status stay.
pub(crate) async fn expire_pods(
    ctx: &Context,
    build: &ImageBuild,
    namespace: &str,
) -> Result<kube::runtime::controller::Action, Error> {
    use kube::runtime::controller::Action;
    let (Some(retention), Some(completed)) = (
        ctx.settings.pod_retention,
        build
            .status
            .as_ref()
            .and_then(|s| s.completion_time.as_ref()),
    ) else {
        return Ok(Action::await_change());
    };
    let left = retention_left(completed.0, k8s_openapi::jiff::Timestamp::now(), retention);
    if !left.is_zero() {
        return Ok(Action::requeue(left));
    }
    let owner = Owner::of(build);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let listed = pods_api
        .list(
            &ListParams::default()
                .labels(&format!("{LABEL_BUILD}={},{LABEL_GENERATION}", owner.name)),
        )
        .await
        .map_err(|source| Error::Apply {
            what: "list the build's pods".into(),
            source,
        })?;
    for pod in listed.items {
        if pod.metadata.deletion_timestamp.is_none() {
            delete_pod(&pods_api, &pod.name_any()).await?;
        }
    }
    Ok(Action::await_change())
}

/// Whether any stage of the plan has a pod in `current`.
pub(crate) fn has_stage_pods(current: &BTreeMap<String, Pod>, owner: &Owner, plan: &Plan) -> bool {
    (0..plan.stages.len()).any(|i| latest_attempt(current, owner, i).is_some())
}

/// Stage `i`'s latest pod and its try number.
fn latest_attempt<'p>(
    current: &'p BTreeMap<String, Pod>,
    owner: &Owner,
    i: usize,
) -> Option<(u32, &'p Pod)> {
    (0..MAX_ATTEMPTS)
        .rev()
        .find_map(|n| current.get(&owner.stage_attempt(i, n)).map(|p| (n, p)))
}

/// Whether a stage pod shows that its claim holds the binary at `bin/<key>`: its init
/// container (operator code only) installed it and said so in its termination message.
fn installed_binary(pod: &Pod, key: &str) -> bool {
    pod.annotations()
        .get(pods::ANNOTATION_INSTALLS)
        .map(String::as_str)
        == Some(key)
        && pod
            .status
            .as_ref()
            .and_then(|s| s.init_container_statuses.as_ref())
            .is_some_and(|statuses| {
                !statuses.is_empty()
                    && statuses.iter().all(|c| {
                        c.state
                            .as_ref()
                            .and_then(|s| s.terminated.as_ref())
                            .is_some_and(|t| {
                                t.exit_code == 0 && t.message.as_deref() == Some(pods::INSTALLED)
                            })
                    })
            })
}

/// Whether a stage pod without an init container could not start its container: what the
/// binary on the cache volume being gone looks like (a new volume under the claim's old
/// name, or someone removed `bin/`).
fn binary_missing(pod: &Pod) -> bool {
    let no_init = pod
        .spec
        .as_ref()
        .is_none_or(|s| s.init_containers.as_ref().is_none_or(Vec::is_empty));
    let not_started = |reason: Option<&str>| reason.is_some_and(|r| NOT_STARTED.contains(&r));
    no_init
        && pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| c.state.as_ref())
            .any(|state| {
                not_started(state.terminated.as_ref().and_then(|t| t.reason.as_deref()))
                    || not_started(state.waiting.as_ref().and_then(|w| w.reason.as_deref()))
            })
}

/// Keeps the controller's knowledge of which claims hold the binary up to date with what a
/// build's pods show.
fn note_binary(ctx: &Context, claim_key: &str, current: &BTreeMap<String, Pod>) {
    let (Some(key), Ok(mut known)) = (ctx.settings.binary_key.as_deref(), ctx.binaries.lock())
    else {
        return;
    };
    if current.values().any(|p| installed_binary(p, key)) {
        known.insert(claim_key.to_string());
    }
    // After the installs: a pod that could not start says more than one that installed
    // before it.
    if current.values().any(binary_missing) {
        known.remove(claim_key);
    }
}

/// Where the next stage pods on a claim get the binary from.
fn binary_for<'k>(ctx: &'k Context, claim_key: &str) -> pods::Binary<'k> {
    match ctx.settings.binary_key.as_deref() {
        None => pods::Binary::Copied,
        Some(key) if ctx.binaries.lock().is_ok_and(|k| k.contains(claim_key)) => {
            pods::Binary::Installed(key)
        }
        Some(key) => pods::Binary::Install(key),
    }
}

/// Drives the generation's stage pods; returns its state.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn drive(
    ctx: &Context,
    registry: &stagecoach_oci::registry::RegistryClient,
    build: &ImageBuild,
    namespace: &str,
    dockerfile_text: &str,
    plan: &Plan,
    current: &BTreeMap<String, Pod>,
    shared: &Shared<'_>,
) -> Result<Verdict, Error> {
    let owner = Owner::of(build);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let api_err = |what: &str| {
        let what = what.to_string();
        move |source| Error::Apply { what, source }
    };

    let claim_key = format!("{namespace}/{}", cache_claim(ctx, build));
    note_binary(ctx, &claim_key, current);
    let mut needed: Vec<usize> = plan.waves.iter().flatten().copied().collect();
    needed.sort_unstable();
    let mut progress: BTreeMap<usize, Progress> = BTreeMap::new();
    // The try each stage's next pod would be.
    let mut next_attempt: BTreeMap<usize, u32> = BTreeMap::new();
    let now = k8s_openapi::jiff::Timestamp::now();
    // Whether a pod waits for an image its node cannot pull (see PULL_GIVE_UP).
    let mut pulling = false;
    let mut retry_notes = Vec::new();
    for &i in &needed {
        let latest = latest_attempt(current, &owner, i);
        pulling |= latest.is_some_and(|(_, pod)| pull_failure(pod).is_some());
        let p = match latest {
            None => Progress::NotStarted,
            Some((n, pod)) => match pod_progress(pod, now) {
                // An infrastructure failure gets a new pod, a bounded number of times; a RUN
                // that failed on its own is never retried.
                Progress::Failed {
                    kind: FailKind::Infrastructure,
                    message,
                    ..
                } if n + 1 < MAX_ATTEMPTS => {
                    next_attempt.insert(i, n + 1);
                    retry_notes.push(format!(
                        "stage {}: try {} of {MAX_ATTEMPTS} after: {}",
                        stage_label(plan, i),
                        n + 2,
                        first_line(&message)
                    ));
                    Progress::NotStarted
                }
                Progress::Failed {
                    code,
                    result,
                    message,
                    kind,
                } if n > 0 => Progress::Failed {
                    code,
                    result,
                    message: format!("{message} (after {} tries)", n + 1),
                    kind,
                },
                other => other,
            },
        };
        progress.insert(i, p);
    }

    // A pod of this generation found the files of an input another build exported gone
    // (garbage collection removed them): from then on no stage is read from another build's
    // files, so the stages taken that way run, and the reader's next try waits for them.
    // Judged from the pods, not from status, which a reconcile may see late.
    // A reader's later try never reads them either, whatever ended its first: its first
    // pod's status may not say InputGone to every reconcile that sees the retry.
    let input_gone = |i: usize| {
        (0..MAX_ATTEMPTS).any(|n| {
            current.get(&owner.stage_attempt(i, n)).is_some_and(|pod| {
                match pod_progress(pod, now) {
                    Progress::Failed {
                        result: Some(r), ..
                    } => r.reason == Some(stagecoach_protocol::StageReason::InputGone),
                    _ => false,
                }
            })
        })
    };
    let later_try = |i: usize| {
        plan.stages[i]
            .depends_on
            .iter()
            .any(|j| shared.cached.contains(j))
            && (next_attempt.get(&i).is_some_and(|&n| n > 0)
                || latest_attempt(current, &owner, i).is_some_and(|(n, _)| n > 0))
    };
    // The stage, and whether its pod said the files were gone (else it is on a later try).
    let gone = needed.iter().copied().find_map(|i| {
        if input_gone(i) {
            Some((i, true))
        } else {
            later_try(i).then_some((i, false))
        }
    });
    let shared = &Shared {
        inputs: shared.inputs,
        export_paths: shared.export_paths,
        cached: if gone.is_some() {
            BTreeSet::new()
        } else {
            shared.cached.clone()
        },
    };
    match gone {
        Some((i, true)) => retry_notes.push(format!(
            "stage {}: files an earlier build left for it are gone from the cache, so the stages it reads run",
            stage_label(plan, i)
        )),
        Some((i, false)) => retry_notes.push(format!(
            "stage {}: a later try reads no earlier build's files, so the stages it reads run",
            stage_label(plan, i)
        )),
        None => {}
    }
    for &i in &shared.cached {
        progress.insert(i, Progress::Cached);
    }
    let mut stages = stage_entries(plan, &needed, &progress, current, &owner);
    // Instructions per finished stage, for the cache-miss count.
    let steps: BTreeMap<String, u64> = progress
        .iter()
        .filter_map(|(&i, p)| match p {
            Progress::Succeeded(r) => Some((stage_label(plan, i), r.steps.len() as u64)),
            _ => None,
        })
        .collect();
    let left = time_left(build);

    // The first failure ends the generation, and so does the timeout.
    let failed = progress.iter().find_map(|(&i, p)| match p {
        Progress::Failed {
            code,
            result,
            message,
            kind,
        } => Some((i, *code, result.clone(), message.clone(), *kind)),
        _ => None,
    });
    let timed_out = left.is_some_and(|l| l.is_zero());
    if failed.is_some() || timed_out {
        for (&j, p) in &progress {
            if matches!(p, Progress::Running)
                && let Some((n, _)) = latest_attempt(current, &owner, j)
            {
                delete_pod(&pods_api, &owner.stage_attempt(j, n)).await?;
            }
        }
        for s in &mut stages {
            if s.state == StageState::Pending || s.state == StageState::Running {
                s.state = StageState::Skipped;
            }
        }
        let (reason, message) = match failed {
            Some((i, _, _, message, FailKind::Deadline)) => (
                Reason::Timeout,
                format!(
                    "stage {}: {message}; the build may take {} (spec.timeout)",
                    stage_label(plan, i),
                    build.spec.timeout
                ),
            ),
            // What happened to the pod (an OOM kill, an eviction) is the pod's failure,
            // whatever exit code the stage container was left with.
            Some((i, _, _, message, FailKind::Infrastructure)) => (
                Reason::PodFailed,
                format!("stage {}: {message}", stage_label(plan, i)),
            ),
            Some((i, code, result, message, FailKind::Build)) => (
                condition_for_exit(code, result.as_ref().and_then(|r| r.reason)),
                format!("stage {}: {message}", stage_label(plan, i)),
            ),
            None => (
                Reason::Timeout,
                format!(
                    "the build ran longer than spec.timeout ({}); its pods were stopped",
                    build.spec.timeout
                ),
            ),
        };
        let mut verdict = Verdict::new(reason, message, stages);
        verdict.steps = steps;
        return Ok(verdict);
    }

    // Every needed stage, not only the targets: a stage started early reads its inputs'
    // result files on the cache volume, which a RUN could forge, and nothing is pushed
    // before the controller has seen every stage end well by its own pod's status.
    if needed.iter().all(|t| {
        matches!(
            progress.get(t),
            Some(Progress::Succeeded(_) | Progress::Cached)
        )
    }) {
        let mut verdict = push_targets(
            ctx, build, namespace, &owner, plan, &progress, current, stages,
        )
        .await?;
        verdict.requeue = left;
        verdict.steps = steps;
        return Ok(verdict);
    }

    // Start every stage whose inputs are ready, up to the cap on a build's running pods.
    let running = progress
        .values()
        .filter(|p| matches!(p, Progress::Running))
        .count();
    let room = ctx.settings.max_parallel_pods.saturating_sub(running);
    let ready: Vec<usize> = needed
        .iter()
        .copied()
        .filter(|i| matches!(progress.get(i), Some(Progress::NotStarted)))
        .filter(|&i| {
            plan.stages[i].depends_on.iter().all(|j| {
                matches!(
                    progress.get(j),
                    Some(Progress::Succeeded(_) | Progress::Cached)
                )
            })
        })
        .collect();
    let waiting = ready.len().saturating_sub(room);
    // Then, with room left, the next wave: stages whose inputs still run get their pods now,
    // and wait in them for the inputs' results (see `early_start`).
    let early: Vec<usize> = needed
        .iter()
        .copied()
        .filter(|i| matches!(progress.get(i), Some(Progress::NotStarted)))
        .filter(|&i| early_start(plan, i, &progress))
        .collect();
    let ready_count = ready.len();
    let ready: Vec<usize> = ready.into_iter().chain(early).collect();
    // Decided per reconcile: a node that gains or loses support changes the next pods.
    let host_users = ctx.host_users();
    let userns_wait = host_users.is_err() && !ready.is_empty();
    if let (Err(why), true) = (&host_users, userns_wait) {
        retry_notes.push(why.clone());
    }
    if let (Ok(host_users), false, true) = (host_users, ready.is_empty(), room > 0) {
        let dockerfile =
            Dockerfile::parse(dockerfile_text).map_err(|e| Error::Plan(e.to_string()))?;
        let context = ensure_context(&maps, build, &owner).await?;
        let binary = binary_for(ctx, &claim_key);
        let mut resolved: BTreeMap<String, Resolved> = BTreeMap::new();
        for (n, i) in ready.into_iter().take(room).enumerate() {
            let (job, image, mounts) = stage_job(
                ctx,
                registry,
                build,
                &owner,
                &dockerfile,
                dockerfile_text,
                plan,
                i,
                &progress,
                &mut resolved,
                shared,
            )
            .await?;
            // A bind of another stage's files is a volume sub-path mounted at the pod's
            // start, and the export it names is replaced as a whole when that stage ends:
            // such a stage starts only once its inputs are done.
            if n >= ready_count && mounts.iter().flat_map(|s| &s.mounts).any(binds_a_stage) {
                continue;
            }
            let exports: BTreeMap<String, String> = plan.stages[i]
                .depends_on
                .iter()
                .flat_map(|&j| {
                    let export = export_sub_path(&owner, j, shared).0;
                    let mut keys = vec![(j.to_string(), export.clone())];
                    if let Some(name) = &plan.stages[j].name {
                        keys.push((name.clone(), export));
                    }
                    keys
                })
                .collect();
            let label = stage_label(plan, i);
            let attempt = next_attempt.get(&i).copied().unwrap_or(0);
            let made = pods::stage_pod(&StagePod {
                owner: &owner,
                spec: &build.spec,
                index: i,
                label: &label,
                image: &image,
                operator_image: &ctx.settings.operator_image,
                cache_claim: cache_claim(ctx, build),
                job: &job,
                mounts: &mounts,
                context: context.as_ref(),
                stage_exports: &exports,
                attempt,
                deadline_seconds: left.map(|l| i64::try_from(l.as_secs()).unwrap_or(i64::MAX)),
                defaults: &ctx.settings.builder,
                host_users,
                spread: build.spec.cache.is_none()
                    && ctx.settings.cache_access_mode == "ReadWriteMany",
                binary,
            });
            let (map, pod) = match made {
                Ok(made) => made,
                // Mounts one pod cannot give the stage are the Dockerfile's to change: a
                // verdict, not a reconcile error retried with backoff forever.
                Err(e) => {
                    for s in &mut stages {
                        if s.state == StageState::Pending {
                            s.state = StageState::Skipped;
                        }
                    }
                    let mut verdict = Verdict::new(
                        Reason::InvalidDockerfile,
                        format!("Dockerfile: stage {label}: {e}"),
                        stages,
                    );
                    verdict.steps = steps;
                    return Ok(verdict);
                }
            };
            create_or_keep(&maps, &map).await?;
            match pods_api.create(&PostParams::default(), &pod).await {
                Ok(_) => {
                    tracing::info!(
                        stage = label.as_str(),
                        pod = pod.name_any().as_str(),
                        attempt,
                        "stage pod created"
                    );
                    crate::publish(
                        ctx,
                        build,
                        kube::runtime::events::EventType::Normal,
                        if attempt == 0 {
                            "StageStarted"
                        } else {
                            "StageRetried"
                        },
                        &format!("stage {label}: pod {}", pod.name_any()),
                    )
                    .await;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(api_err("create a stage pod")(e)),
            }
            if let Some(entry) = stages
                .iter_mut()
                .find(|s| s.index == i32::try_from(i).unwrap_or(-1))
            {
                entry.pod = pod.metadata.name.clone();
            }
        }
    }
    let done = progress
        .values()
        .filter(|p| matches!(p, Progress::Succeeded(_)))
        .count();
    let mut message = format!(
        "{done} of {} stages built",
        needed.len() - shared.cached.len()
    );
    if !shared.cached.is_empty() {
        message.push_str(&format!(
            "; {} read from an earlier build's files",
            shared.cached.len()
        ));
    }
    if waiting > 0 {
        message.push_str(&format!(
            "; {waiting} ready stages wait for room (at most {} pods at once)",
            ctx.settings.max_parallel_pods
        ));
    }
    for note in retry_notes {
        message.push_str("; ");
        message.push_str(&note);
    }
    let mut verdict = Verdict::new(Reason::Building, message, stages);
    verdict.requeue = left;
    // A pod whose image the node cannot pull changes little while it backs off: look again
    // in time to end it at PULL_GIVE_UP.
    if pulling || userns_wait {
        let soon = PULL_GIVE_UP / 4;
        verdict.requeue = Some(left.map_or(soon, |l| l.min(soon)));
    }
    verdict.steps = steps;
    Ok(verdict)
}

/// Whether stage `i` may get its pod before its inputs are done: each input is done, or its
/// pod runs with every input of its own done (one wave ahead, no more: a pod that waits holds
/// a place under the cap), and the stage does not start `FROM` an unfinished stage, whose
/// layers and config its job must name.
fn early_start(plan: &Plan, i: usize, progress: &BTreeMap<usize, Progress>) -> bool {
    let done = |j: &usize| {
        matches!(
            progress.get(j),
            Some(Progress::Succeeded(_) | Progress::Cached)
        )
    };
    let deps = &plan.stages[i].depends_on;
    if deps.iter().all(done) {
        // Ready, not early: started with the ready ones.
        return false;
    }
    if let Base::Stage(j) = plan.stages[i].base
        && !done(&j)
    {
        return false;
    }
    deps.iter().all(|j| {
        done(j)
            || (matches!(progress.get(j), Some(Progress::Running))
                && plan.stages[*j].depends_on.iter().all(done))
    })
}

/// A `RUN --mount=type=bind,from=…` (of a stage or an image; the mount alone does not say).
fn binds_a_stage(need: &run_mounts::MountNeed) -> bool {
    matches!(need, run_mounts::MountNeed::Bind { from: Some(_), .. })
}

/// A stage's full result on the cache volume, by generation: a stage started early waits for
/// its inputs' files, and must not take an older generation's for them.
fn result_path(owner: &Owner, i: usize) -> std::path::PathBuf {
    CacheLayout::new(CACHE_DIR)
        .build_stage(&owner.uid, i)
        .join(format!("result-g{}.json", owner.generation))
}

/// How long the node may fail to pull a stage pod's image before the stage fails: an image
/// the controller could resolve but the node cannot pull (a node without the route or the
/// logins, an image deleted meanwhile) would otherwise wait for spec.timeout.
const PULL_GIVE_UP: std::time::Duration = std::time::Duration::from_secs(120);

/// The image a pod's container cannot be started from, and the kubelet's words, while the
/// kubelet fails to pull it.
/// How long a stage pod's container may wait in an error the kubelet retries on its own
/// (it could not be created or started) before the pod is given up for a new one.
const CREATE_GIVE_UP: std::time::Duration = std::time::Duration::from_secs(60);

/// What the kubelet reports for a container it could not create or start.
const NOT_STARTED: &[&str] = &[
    "StartError",
    "ContainerCannotRun",
    "RunContainerError",
    "CreateContainerError",
];

/// The first of a pod's containers (init containers first) waiting for one of `reasons`,
/// with the reason and the kubelet's message.
fn waiting_for<'p>(
    pod: &'p Pod,
    reasons: &[&str],
) -> Option<(
    &'p k8s_openapi::api::core::v1::ContainerStatus,
    String,
    String,
)> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find_map(|c| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            reasons.contains(&reason).then(|| {
                (
                    c,
                    reason.to_string(),
                    waiting.message.clone().unwrap_or_default(),
                )
            })
        })
}

/// The container of a pod that the kubelet could not create or start, and why.
fn create_failure(pod: &Pod) -> Option<(String, String)> {
    let reasons: Vec<&str> = NOT_STARTED
        .iter()
        .copied()
        .chain(["CreateContainerConfigError"])
        .collect();
    waiting_for(pod, &reasons)
        .map(|(c, reason, message)| (c.name.clone(), format!("{reason}: {message}")))
}

fn pull_failure(pod: &Pod) -> Option<(String, String)> {
    waiting_for(
        pod,
        &["ErrImagePull", "ImagePullBackOff", "InvalidImageName"],
    )
    .map(|(c, _, message)| (c.image.clone(), message))
}

/// A stage's name as status and images give it: its name, or its index.
pub(crate) fn stage_label(plan: &Plan, i: usize) -> String {
    plan.stages[i].name.clone().unwrap_or_else(|| i.to_string())
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// The targets to push: `(stage, image)` in spec order (`spec.image` for the default target).
pub(crate) fn targets_to_push(build: &ImageBuild, plan: &Plan) -> Vec<(usize, String)> {
    let spec = &build.spec;
    if spec.targets.is_empty() {
        return match (&spec.image, plan.targets.first()) {
            (Some(image), Some(&t)) => vec![(t, image.clone())],
            _ => vec![],
        };
    }
    spec.targets
        .iter()
        .filter_map(|t| {
            let image = t.image.clone()?;
            let index = plan
                .stages
                .iter()
                .position(|s| s.name.as_deref() == Some(t.stage.as_str()))?;
            Some((index, image))
        })
        .collect()
}

/// Every target has been built: push those with an image, one pod each (the credentials are
/// mounted there and nowhere else), and succeed when every push is confirmed.
#[allow(clippy::too_many_arguments)]
async fn push_targets(
    ctx: &Context,
    build: &ImageBuild,
    namespace: &str,
    owner: &Owner,
    plan: &Plan,
    progress: &BTreeMap<usize, Progress>,
    current: &BTreeMap<String, Pod>,
    stages: Vec<StageStatus>,
) -> Result<Verdict, Error> {
    let pushes = targets_to_push(build, plan);
    if pushes.is_empty() {
        return Ok(Verdict::new(
            Reason::Succeeded,
            format!(
                "built {} stages; no target has an image to push",
                stages.len()
            ),
            stages,
        ));
    }
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let mut images = Vec::new();
    let mut pending = 0;
    for (n, (stage, image)) in pushes.iter().enumerate() {
        let name = owner.push_object(n);
        let target_label = plan.stages[*stage]
            .name
            .clone()
            .unwrap_or_else(|| stage.to_string());
        match current.get(&name).map(push_progress) {
            Some(PushProgress::Pushed(result)) => images.push(ImageStatus {
                target: target_label,
                image: image.clone(),
                digest: result.digest.to_string(),
                size: i64::try_from(result.size).ok(),
            }),
            Some(PushProgress::Failed(message)) => {
                return Ok(Verdict::new(
                    Reason::PushFailed,
                    format!("push of {target_label} to {image}: {message}"),
                    stages,
                ));
            }
            Some(PushProgress::Running) => pending += 1,
            None => {
                pending += 1;
                let Some(Progress::Succeeded(result)) = progress.get(stage) else {
                    return Err(Error::Plan(format!("target stage {stage} has no result")));
                };
                let (config, config_size) = match (&result.config_digest, result.config_size) {
                    (Some(d), Some(s)) => (d.clone(), s),
                    _ => {
                        return Err(Error::Plan(format!(
                            "stage {stage}'s result names no config"
                        )));
                    }
                };
                // The layers the cache lacks are the base image's, which the stage pod ran.
                let sources = latest_attempt(current, owner, root_of(plan, *stage))
                    .and_then(|(_, p)| p.spec.as_ref())
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.image.clone())
                    .filter(|i| *i != ctx.settings.operator_image)
                    .into_iter()
                    .collect();
                let job = PushJob {
                    version: JOB_VERSION,
                    target: image.clone(),
                    config,
                    config_size,
                    layers: result.layers.clone(),
                    sources,
                    cache: CACHE_DIR.into(),
                    credentials: build
                        .spec
                        .push_secret
                        .as_ref()
                        .map(|_| std::path::Path::new(pods::REGISTRY_DIR).join("config.json")),
                    insecure_registries: ctx.settings.insecure_registries.clone(),
                };
                let (map, pod) = pods::push_pod(
                    owner,
                    n,
                    &ctx.settings.operator_image,
                    cache_claim(ctx, build),
                    &job,
                    build.spec.push_secret.as_ref().map(|s| s.name.as_str()),
                );
                create_or_keep(&maps, &map).await?;
                match pods_api.create(&PostParams::default(), &pod).await {
                    Ok(_) => {
                        tracing::info!(image = image.as_str(), "push pod created");
                        crate::publish(
                            ctx,
                            build,
                            kube::runtime::events::EventType::Normal,
                            "Pushing",
                            &format!("{target_label} to {image}: pod {}", pod.name_any()),
                        )
                        .await;
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(source) => {
                        return Err(Error::Apply {
                            what: "create a push pod".into(),
                            source,
                        });
                    }
                }
            }
        }
    }
    if pending > 0 {
        return Ok(Verdict::new(
            Reason::Building,
            format!(
                "every stage was built; pushing {pending} of {} images",
                pushes.len()
            ),
            stages,
        ));
    }
    let mut verdict = Verdict::new(
        Reason::Succeeded,
        format!(
            "built {} stages and pushed {} images",
            stages.len(),
            images.len()
        ),
        stages,
    );
    verdict.images = images;
    Ok(verdict)
}

/// The root ancestor of a `FROM <stage>` chain.
fn root_of(plan: &Plan, mut i: usize) -> usize {
    while let Base::Stage(j) = plan.stages[i].base {
        i = j;
    }
    i
}

/// How far a push got.
enum PushProgress {
    Running,
    Pushed(PushResult),
    Failed(String),
}

/// How a one-container pod's container ended, once it has.
pub(crate) fn first_terminated(
    pod: &Pod,
) -> Option<&k8s_openapi::api::core::v1::ContainerStateTerminated> {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
}

fn push_progress(pod: &Pod) -> PushProgress {
    match first_terminated(pod).cloned() {
        Some(t) if t.exit_code == 0 => match t
            .message
            .as_deref()
            .and_then(|m| serde_json::from_str::<PushResult>(m).ok())
        {
            Some(r) => PushProgress::Pushed(r),
            None => PushProgress::Failed("the push exited 0 without a readable result".into()),
        },
        // The message is the log's tail (FallbackToLogsOnError): the push's own error.
        Some(t) => PushProgress::Failed(
            t.message
                .unwrap_or_else(|| format!("exit code {}", t.exit_code)),
        ),
        None if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed") => {
            PushProgress::Failed("the push pod failed".into())
        }
        None => PushProgress::Running,
    }
}

pub(crate) fn cache_claim<'c>(ctx: &'c Context, build: &'c ImageBuild) -> &'c str {
    build
        .spec
        .cache
        .as_ref()
        .map_or(ctx.settings.cache_claim.as_str(), |c| c.claim_name.as_str())
}

/// Where a fetched source is, relative to the cache volume.
pub(crate) fn context_sub_path(owner: &Owner) -> String {
    format!(
        "builds/{}/context",
        stagecoach_protocol::layout::escape_id(&owner.uid)
    )
}

/// What a generation's stages share with other builds': each stage's inputs (by index) and
/// the stages that get no pod because an earlier build with the same inputs exported their
/// files (or only such stages and taken targets read them).
#[derive(Debug, Default)]
pub(crate) struct Shared<'a> {
    pub inputs: &'a [Option<String>],
    /// What each stage's export holds (`None`: the whole root), by stage index: the paths
    /// its readers in the whole plan take, which `inputs` fold in.
    pub export_paths: &'a [Option<Vec<String>>],
    pub cached: BTreeSet<usize>,
}

/// Where stage `i`'s export is, relative to the cache volume, and whether it is shared:
/// by its inputs when they are known (every build with them writes or reads the same
/// files), else in the build's own directory.
fn export_sub_path(owner: &Owner, i: usize, shared: &Shared<'_>) -> (String, bool) {
    if let Some(Some(inputs)) = shared.inputs.get(i) {
        let dir = CacheLayout::new("").export(inputs).join("rootfs");
        return (dir.to_string_lossy().into_owned(), true);
    }
    (export_sub_path_own(owner, i), false)
}

/// Where stage `i`'s export is in the build's own directory, relative to the cache volume.
fn export_sub_path_own(owner: &Owner, i: usize) -> String {
    format!(
        "builds/{}/stages/{i}/rootfs",
        stagecoach_protocol::layout::escape_id(&owner.uid)
    )
}

pub(crate) async fn delete_pod(pods: &Api<Pod>, name: &str) -> Result<(), Error> {
    match pods.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Apply {
            what: format!("delete pod {name}"),
            source,
        }),
    }
}

pub(crate) async fn create_or_keep(maps: &Api<ConfigMap>, map: &ConfigMap) -> Result<(), Error> {
    match maps.create(&PostParams::default(), map).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(source) => Err(Error::Apply {
            what: format!("create ConfigMap {}", map.name_any()),
            source,
        }),
    }
}

/// The generation's context source: the inline files' ConfigMap (made once), or the user's.
async fn ensure_context(
    maps: &Api<ConfigMap>,
    build: &ImageBuild,
    owner: &Owner,
) -> Result<Option<ContextSource>, Error> {
    match build.spec.source.kind() {
        Ok(SourceKind::Inline(inline)) if !inline.files.is_empty() => {
            let (map, source) = pods::context_config_map(owner, &inline.files);
            create_or_keep(maps, &map).await?;
            Ok(Some(source))
        }
        Ok(SourceKind::ConfigMap(source)) => {
            Ok(Some(ContextSource::ConfigMap(source.name.clone())))
        }
        // The fetch pod checked it out on the cache volume.
        Ok(SourceKind::Git(_)) => Ok(Some(ContextSource::Cache(context_sub_path(owner)))),
        _ => Ok(None),
    }
}

/// The claim mounted as a stage pod's cache volume.
fn cache_claim_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .and_then(|v| v.iter().find_map(|v| v.persistent_volume_claim.as_ref()))
        .map_or_else(|| "unknown".to_string(), |c| c.claim_name.clone())
}

/// What a pod says about its stage at `now`.
fn pod_progress(pod: &Pod, now: k8s_openapi::jiff::Timestamp) -> Progress {
    // A pod on its way out (deleted by someone, or evicted) says nothing about its stage:
    // wait until it is gone, then the stage gets a new pod.
    if pod.metadata.deletion_timestamp.is_some() {
        return Progress::Running;
    }
    let status = pod.status.clone().unwrap_or_default();
    if status.reason.as_deref() == Some("DeadlineExceeded") {
        return Progress::Failed {
            code: 255,
            result: None,
            message: "the pod was stopped at the build's deadline".into(),
            kind: FailKind::Deadline,
        };
    }
    let terminated = |statuses: &Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>| {
        statuses
            .iter()
            .flatten()
            .find_map(|c| c.state.as_ref().and_then(|s| s.terminated.clone()))
    };
    let memory_limit = || {
        pod.spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.resources.as_ref())
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .map_or_else(|| "none set".to_string(), |q| q.0.clone())
    };
    if let Some(t) = terminated(&status.init_container_statuses)
        && t.exit_code != 0
    {
        return Progress::Failed {
            code: 255,
            result: None,
            message: format!(
                "the pod's prepare step failed ({}): {}",
                t.reason.unwrap_or_default(),
                t.message.unwrap_or_default()
            ),
            kind: FailKind::Infrastructure,
        };
    }
    // Counted from when the pod reached a node (pulls start there), not from its creation: a
    // pod may wait long for a volume or room before its first pull.
    let on_node = || {
        let since = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "True")
            .and_then(|c| c.last_transition_time.as_ref())
            .or(pod.metadata.creation_timestamp.as_ref());
        since.map_or(std::time::Duration::ZERO, |t| {
            now.duration_since(t.0).unsigned_abs()
        })
    };
    if let Some((container, why)) = create_failure(pod) {
        // The kubelet keeps trying a container it could not create, and with restartPolicy
        // Never the pod would wait there until the build's deadline: past a limit, a new pod.
        let waited = on_node();
        if waited > CREATE_GIVE_UP {
            return Progress::Failed {
                code: 255,
                result: None,
                message: format!(
                    "the {container} container could not be started for {} s: {why}",
                    waited.as_secs()
                ),
                kind: FailKind::Infrastructure,
            };
        }
        return Progress::Running;
    }
    if let Some((image, why)) = pull_failure(pod) {
        let waited = on_node();
        if waited > PULL_GIVE_UP {
            // Final: another pod on the same node would fail the same way.
            return Progress::Failed {
                code: 255,
                result: None,
                message: format!(
                    "the node cannot pull {image} ({} s): {why}",
                    waited.as_secs()
                ),
                kind: FailKind::Build,
            };
        }
        return Progress::Running;
    }
    match terminated(&status.container_statuses) {
        Some(t) => {
            // Untrusted input: a result that does not parse is no result.
            let result = t
                .message
                .as_deref()
                .and_then(|m| serde_json::from_str::<StageResult>(m).ok())
                .map(Box::new);
            if t.reason.as_deref() == Some("OOMKilled") {
                return Progress::Failed {
                    code: t.exit_code,
                    result: None,
                    message: format!(
                        "OOM-killed: the stage container used more memory than its limit ({}; spec.resources.limits.memory)",
                        memory_limit()
                    ),
                    kind: FailKind::Infrastructure,
                };
            }
            // The executor writes its result last, after killing every other process of
            // the container, so a RUN cannot leave a forged one behind; a result that does
            // not fit how the container ended is taken for one anyway, and never retried
            // (the same RUN would forge it again).
            if let Some(why) = result.as_deref().and_then(|r| implausible(r, t.exit_code)) {
                return Progress::Failed {
                    // StageFailed: what the stage ran did this, whatever the code was.
                    code: stagecoach_protocol::ExitCode::InstructionFailed.code(),
                    result: None,
                    message: format!(
                        "the stage's result was rejected: {why} (the termination message is not the executor's; did a RUN write /dev/termination-log?)"
                    ),
                    kind: FailKind::Build,
                };
            }
            if t.exit_code == 0 {
                return match result {
                    Some(r) => Progress::Succeeded(r),
                    None => Progress::Failed {
                        code: 255,
                        result: None,
                        message: "the stage exited 0 without a readable result".into(),
                        kind: FailKind::Infrastructure,
                    },
                };
            }
            let message = match &result {
                Some(r) => failure_text(r),
                None => format!(
                    "the stage container exited with {} ({})",
                    t.exit_code,
                    t.reason.clone().unwrap_or_default()
                ),
            };
            let kind = match condition_for_exit(t.exit_code, result.as_ref().and_then(|r| r.reason))
            {
                Reason::PodFailed => FailKind::Infrastructure,
                _ => FailKind::Build,
            };
            // A full cache volume fails every try the same way: say so, and do not retry. (A
            // full root file system is the node's: another try may land elsewhere.)
            if result
                .as_ref()
                .is_some_and(|r| r.reason == Some(stagecoach_protocol::StageReason::CacheFull))
            {
                return Progress::Failed {
                    code: t.exit_code,
                    result,
                    message: format!(
                        "the cache volume is full (claim {}; make it bigger, or use spec.cache.claimName): {message}",
                        cache_claim_of(pod)
                    ),
                    kind: FailKind::Build,
                };
            }
            Progress::Failed {
                code: t.exit_code,
                result,
                message,
                kind,
            }
        }
        None if status.phase.as_deref() == Some("Failed") => Progress::Failed {
            code: 255,
            result: None,
            message: format!(
                "the pod failed: {} {}",
                status.reason.unwrap_or_default(),
                status.message.unwrap_or_default()
            ),
            kind: FailKind::Infrastructure,
        },
        None => Progress::Running,
    }
}

/// Why a stage result cannot be the executor's, given the exit code its container ended
/// with: the executor puts that code in its result, and a success names its config.
fn implausible(result: &StageResult, exit_code: i32) -> Option<String> {
    use stagecoach_protocol::result::Outcome;
    if result.exit_code != exit_code {
        return Some(format!(
            "it says exit code {}, the container ended with {exit_code}",
            result.exit_code
        ));
    }
    match (exit_code, result.outcome, &result.config_digest) {
        (0, Outcome::Succeeded, Some(_)) => None,
        (0, Outcome::Succeeded, None) => Some("a success without an image config".into()),
        (0, Outcome::Failed, _) => Some("a failure, but the container exited 0".into()),
        (_, Outcome::Succeeded, _) => {
            Some(format!("a success, but the container exited {exit_code}"))
        }
        (_, Outcome::Failed, _) => None,
    }
}

/// A failed stage's message: the executor's, then the output's last lines.
fn failure_text(result: &StageResult) -> String {
    let mut text = result
        .message
        .clone()
        .unwrap_or_else(|| "the stage failed".into());
    if let Some(step) = &result.failed_step
        && !step.tail.is_empty()
    {
        text.push_str("\nlast output:");
        for line in &step.tail {
            text.push_str("\n| ");
            text.push_str(line);
        }
    }
    text
}

fn stage_entries(
    plan: &Plan,
    needed: &[usize],
    progress: &BTreeMap<usize, Progress>,
    pods: &BTreeMap<String, Pod>,
    owner: &Owner,
) -> Vec<StageStatus> {
    needed
        .iter()
        .map(|&i| {
            let pod = latest_attempt(pods, owner, i).map(|(_, p)| p);
            let container = pod
                .and_then(|p| p.status.as_ref())
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.state.clone());
            let started: Option<Time> = container.as_ref().and_then(|s| {
                s.running
                    .as_ref()
                    .and_then(|r| r.started_at.clone())
                    .or_else(|| s.terminated.as_ref().and_then(|t| t.started_at.clone()))
            });
            let finished = container
                .as_ref()
                .and_then(|s| s.terminated.as_ref().and_then(|t| t.finished_at.clone()));
            let (state, hits, message) = match progress.get(&i) {
                Some(Progress::Succeeded(r)) => (
                    StageState::Succeeded,
                    i32::try_from(r.cache_hits).ok(),
                    None,
                ),
                Some(Progress::Failed { message, .. }) => (
                    StageState::Failed,
                    None,
                    Some(crate::status::truncate(
                        message,
                        stagecoach_api::bounds::MAX_STAGE_MESSAGE as usize,
                    )),
                ),
                Some(Progress::Running) => (StageState::Running, None, None),
                Some(Progress::Cached) => (StageState::Cached, None, None),
                _ => (StageState::Pending, None, None),
            };
            StageStatus {
                name: stage_label(plan, i),
                index: i32::try_from(i).unwrap_or(i32::MAX),
                state,
                pod: pod.map(|p| p.name_any()),
                node: pod
                    .and_then(|p| p.spec.as_ref())
                    .and_then(|s| s.node_name.clone()),
                start_time: started,
                finish_time: finished,
                cache_hits: hits,
                message,
                // The reconcile sets what the generation's first one decided.
                inputs: None,
            }
        })
        .collect()
}

/// Resolves an image reference to its manifest, config and layers (anonymous pulls; the
/// registries in `--insecure-registry` over plain HTTP).
pub(crate) async fn resolve(
    client: &stagecoach_oci::registry::RegistryClient,
    reference: &str,
) -> Result<Resolved, Error> {
    let err = |message: String, permanent: bool| Error::Resolve {
        image: reference.to_string(),
        message,
        permanent,
    };
    let registry_err = |e: stagecoach_oci::registry::RegistryError| {
        use stagecoach_oci::registry::RegistryError as R;
        let permanent = matches!(
            e,
            R::InvalidReference(_)
                | R::Credentials(_)
                | R::Unauthorized { .. }
                | R::NotFound { .. }
                | R::PlatformNotFound { .. }
        );
        err(e.to_string(), permanent)
    };
    let parsed = ImageRef::parse(reference).map_err(|e| err(e.to_string(), true))?;
    let manifest = client.pull_manifest(&parsed).await.map_err(registry_err)?;
    let config = client
        .pull_config(&manifest.reference, &manifest.manifest)
        .await
        .map_err(registry_err)?;
    let layers =
        stagecoach_oci::layer_records(&manifest.manifest, &config.config).ok_or_else(|| {
            err(
                "the manifest's layers and the config's diffIDs differ in number".into(),
                true,
            )
        })?;
    Ok(Resolved {
        pinned: manifest.reference.to_string(),
        manifest: manifest.digest.clone(),
        config: serde_json::from_slice(&config.bytes).map_err(|e| err(e.to_string(), true))?,
        working_config: config.config,
        layers,
    })
}

/// [`resolve`], once per image for all the stages a reconcile starts.
async fn resolve_once(
    registry: &stagecoach_oci::registry::RegistryClient,
    resolved: &mut BTreeMap<String, Resolved>,
    reference: &str,
) -> Result<Resolved, Error> {
    if let Some(r) = resolved.get(reference) {
        return Ok(r.clone());
    }
    let r = resolve(registry, reference).await?;
    resolved.insert(reference.to_string(), r.clone());
    Ok(r)
}

/// Stage `i`'s job, its pod image and its RUN mounts.
#[allow(clippy::too_many_arguments)]
async fn stage_job(
    ctx: &Context,
    registry: &stagecoach_oci::registry::RegistryClient,
    build: &ImageBuild,
    owner: &Owner,
    dockerfile: &Dockerfile,
    dockerfile_text: &str,
    plan: &Plan,
    i: usize,
    progress: &BTreeMap<usize, Progress>,
    resolved: &mut BTreeMap<String, Resolved>,
    shared: &Shared<'_>,
) -> Result<(StageJob, String, Vec<run_mounts::StepMounts>), Error> {
    let spec = &build.spec;
    // The chain of FROM stages down to the root ancestor, child first.
    let mut chain = vec![i];
    while let Base::Stage(j) = plan.stages[*chain.last().unwrap_or(&i)].base {
        chain.push(j);
    }
    let root = *chain.last().unwrap_or(&i);
    let root_image = match &plan.stages[root].base {
        Base::Image(image) => Some(resolve_once(registry, resolved, image).await?),
        _ => None,
    };
    let pod_image = root_image
        .as_ref()
        .map_or_else(|| ctx.settings.operator_image.clone(), |r| r.pinned.clone());
    let root_layers = root_image.as_ref().map_or(0, |r| r.layers.len());
    let (base, apply) = match &plan.stages[i].base {
        Base::Scratch => (JobBase::Scratch, vec![]),
        Base::Image(_) => {
            let r = root_image
                .clone()
                .ok_or_else(|| Error::Plan("an image base was not resolved".into()))?;
            (
                JobBase::Image {
                    reference: r.pinned,
                    manifest: r.manifest,
                    config: r.config,
                    layers: r.layers,
                },
                vec![],
            )
        }
        Base::Stage(j) => {
            let Some(Progress::Succeeded(parent)) = progress.get(j) else {
                return Err(Error::Plan(format!("stage {j} has no result")));
            };
            let config = parent
                .config_digest
                .clone()
                .ok_or_else(|| Error::Plan(format!("stage {j}'s result names no config")))?;
            (
                JobBase::Stage {
                    index: *j,
                    config,
                    layers: parent.layers.clone(),
                },
                parent
                    .layers
                    .get(root_layers..)
                    .unwrap_or_default()
                    .to_vec(),
            )
        }
    };
    // RUN mount targets are relative to the WORKDIR in force, which the FROM chain sets:
    // replay the chain's instructions and keep this stage's mounts.
    let options = PlanOptions {
        build_args: spec.build_args.clone(),
        ..PlanOptions::default()
    };
    let global =
        planner::global_env(dockerfile, &options).map_err(|e| Error::Plan(e.to_string()))?;
    let args = ArgSource {
        build_args: spec.build_args.clone(),
        global,
    };
    let mut instructions = Vec::new();
    for &k in chain.iter().rev() {
        instructions.extend(dockerfile.stages[k].instructions.iter().cloned());
    }
    let first_line = dockerfile.stages[i]
        .instructions
        .first()
        .map_or(usize::MAX, |l| l.line);
    let mounts: Vec<_> = run_mounts::stage_mounts(
        &instructions,
        dockerfile.escape,
        root_image.as_ref().map(|r| &r.working_config),
        &args,
    )
    .map_err(|e| Error::Plan(e.to_string()))?
    .into_iter()
    .filter(|s| s.line >= first_line)
    .collect();
    // What COPY --from=<image> reads: pulled and unpacked by the stage pod itself, into one of
    // the executor's own directories.
    let mut images = Vec::new();
    for (n, name) in plan.stages[i].images.iter().enumerate() {
        let r = resolve_once(registry, resolved, name).await?;
        images.push(ImageInput {
            name: name.clone(),
            root: std::path::Path::new(pods::IMAGES_DIR).join(n.to_string()),
            pull: Some(ImagePull {
                reference: r.pinned.clone(),
                layers: r.layers.clone(),
                insecure_registries: ctx.settings.insecure_registries.clone(),
            }),
        });
    }
    let (_, secret_paths) = pods::declared_secrets(spec, &mounts);
    let exported = plan
        .waves
        .iter()
        .flatten()
        .any(|&k| k != i && plan.stages[k].depends_on.contains(&i));
    let dockerfile_path = match spec.source.kind() {
        Ok(SourceKind::Inline(inline)) if inline.dockerfile.is_some() => None,
        _ => Some(std::path::PathBuf::from(&spec.dockerfile)),
    };
    let job = StageJob {
        version: JOB_VERSION,
        build: owner.uid.clone(),
        dockerfile: dockerfile_text.to_string(),
        dockerfile_path,
        stage: i,
        label: plan.stages[i].label(),
        build_args: spec.build_args.clone(),
        base,
        root: "/".into(),
        apply,
        context: CONTEXT_DIR.into(),
        cache: CACHE_DIR.into(),
        stages: plan.stages[i]
            .depends_on
            .iter()
            .map(|&j| {
                let (sub_path, is_shared) = export_sub_path(owner, j, shared);
                let root = std::path::Path::new(CACHE_DIR).join(sub_path);
                StageInput {
                    index: j,
                    name: plan.stages[j].name.clone(),
                    // Files another build left: they must still be there.
                    ready: (shared.cached.contains(&j) && is_shared)
                        .then(|| stagecoach_builder::job::export_done(&root)),
                    root,
                }
            })
            .collect(),
        images,
        secrets: secret_paths
            .into_iter()
            .map(|(id, path)| SecretInput {
                id,
                path: path.into(),
            })
            .collect(),
        options: JobOptions {
            own_dirs: vec!["/.stagecoach".into()],
            ..JobOptions::default()
        },
        export: exported
            .then(|| std::path::Path::new(CACHE_DIR).join(export_sub_path(owner, i, shared).0)),
        export_shared: exported && export_sub_path(owner, i, shared).1,
        // The same paths its inputs fold in (`reuse::with_export_paths`): the export's name
        // says what it holds.
        export_paths: exported
            .then(|| shared.export_paths.get(i).cloned().flatten())
            .flatten(),
        result: Some(result_path(owner, i)),
        cache_mounts: mounts
            .iter()
            .flat_map(|step| &step.mounts)
            .filter_map(|m| match m {
                stagecoach_builder::run_mounts::MountNeed::Cache { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect(),
        wait_for: plan.stages[i]
            .depends_on
            .iter()
            .filter(|j| {
                !matches!(
                    progress.get(j),
                    Some(Progress::Succeeded(_) | Progress::Cached)
                )
            })
            .map(|&j| WaitFor {
                label: stage_label(plan, j),
                result: result_path(owner, j),
            })
            .collect(),
    };
    Ok((job, pod_image, mounts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use std::time::Duration;

    fn pulling(reason: &str, created: Timestamp) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b-g1-s0", "creationTimestamp": created.to_string()},
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": "stage", "image": "registry.example/team/base@sha256:abc",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": "401 Unauthorized"}}
            }]}
        }))
        .unwrap()
    }

    #[test]
    fn a_node_that_cannot_pull_fails_the_stage_after_the_limit_not_before() {
        let created = Timestamp::from_second(1_800_000_000).unwrap();
        let at = |s: i64| created.checked_add(SignedDuration::from_secs(s)).unwrap();
        let pod = pulling("ImagePullBackOff", created);
        assert!(matches!(pod_progress(&pod, at(60)), Progress::Running));
        let (message, kind, reason, _) = failure(pod_progress(&pod, at(121)));
        assert_eq!(kind, FailKind::Build, "not retried");
        assert_eq!(reason, Reason::PodFailed);
        assert!(
            message.contains("registry.example/team/base@sha256:abc")
                && message.contains("401 Unauthorized"),
            "{message}"
        );
        // A pod that waited 10 minutes for a node counts from when it got one.
        let mut late: serde_json::Value = serde_json::to_value(&pod).unwrap();
        late["status"]["conditions"] = serde_json::json!([{
            "type": "PodScheduled", "status": "True", "lastTransitionTime": at(600).to_string()
        }]);
        let late: Pod = serde_json::from_value(late).unwrap();
        assert!(matches!(pod_progress(&late, at(660)), Progress::Running));
        assert!(matches!(
            pod_progress(&late, at(721)),
            Progress::Failed { .. }
        ));
        // Waiting for another reason (the container is being created) is not a pull failure.
        let creating = pulling("ContainerCreating", created);
        assert!(matches!(
            pod_progress(&creating, at(600)),
            Progress::Running
        ));
        assert!(pull_failure(&creating).is_none());
    }

    #[test]
    fn a_claim_holds_the_binary_once_an_install_got_past_its_init_container_and_not_after_a_start_error()
     {
        let pod = |annotations: serde_json::Value,
                   init: serde_json::Value,
                   state: serde_json::Value|
         -> Pod {
            let init_specs: Vec<serde_json::Value> = init
                .as_array()
                .unwrap()
                .iter()
                .map(|_| serde_json::json!({"name": "prepare"}))
                .collect();
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "b-g1-s0", "annotations": annotations},
                "spec": {"containers": [{"name": "stage"}], "initContainers": init_specs},
                "status": {"initContainerStatuses": init, "containerStatuses": [{
                    "name": "stage", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0, "state": state}]}
            }))
            .unwrap()
        };
        let init_status = |state: serde_json::Value| {
            serde_json::json!([{"name": "prepare", "image": "o", "imageID": "", "ready": false,
                "restartCount": 0, "state": state}])
        };
        let installs = serde_json::json!({pods::ANNOTATION_INSTALLS: "k1"});
        let done = serde_json::json!({"terminated": {"exitCode": 0, "message": pods::INSTALLED}});
        let running = serde_json::json!({"running": {}});
        let waiting = serde_json::json!({"waiting": {"reason": "PodInitializing"}});

        let installed = pod(installs.clone(), init_status(done.clone()), running.clone());
        assert!(installed_binary(&installed, "k1"));
        assert!(!installed_binary(&installed, "k2"), "another key");
        let mid_install = pod(
            installs.clone(),
            init_status(running.clone()),
            waiting.clone(),
        );
        assert!(!installed_binary(&mid_install, "k1"));
        let failed = pod(
            installs.clone(),
            init_status(serde_json::json!({"terminated": {"exitCode": 1}})),
            waiting,
        );
        assert!(!installed_binary(&failed, "k1"));
        // A full cache volume: the install failed, the pod ran its own copy.
        let not = serde_json::json!({"terminated": {"exitCode": 0,
            "message": "not installed: No space left on device (os error 28)"}});
        let full = pod(installs.clone(), init_status(not), running.clone());
        assert!(!installed_binary(&full, "k1"));
        let copied = pod(serde_json::json!({}), init_status(done), running);
        assert!(
            !installed_binary(&copied, "k1"),
            "an emptyDir copy installs nothing"
        );

        let start_error = serde_json::json!({"terminated": {"exitCode": 128, "reason": "StartError",
            "message": "exec: \"/.stagecoach/bin/stagecoach\": no such file or directory"}});
        let gone = pod(
            serde_json::json!({}),
            serde_json::json!([]),
            start_error.clone(),
        );
        assert!(binary_missing(&gone));
        // With an init container, the binary came from it, not from the claim.
        let with_init = pod(
            serde_json::json!({}),
            init_status(serde_json::json!({"terminated": {"exitCode": 0}})),
            start_error,
        );
        assert!(!binary_missing(&with_init));
        let ran = pod(
            serde_json::json!({}),
            serde_json::json!([]),
            serde_json::json!({"terminated": {"exitCode": 1, "reason": "Error"}}),
        );
        assert!(
            !binary_missing(&ran),
            "a stage that ran and failed says nothing of the binary"
        );
    }

    #[test]
    fn a_container_the_kubelet_cannot_create_gets_a_new_pod_after_the_limit() {
        let created = Timestamp::from_second(1_800_000_000).unwrap();
        let at = |s: i64| created.checked_add(SignedDuration::from_secs(s)).unwrap();
        for reason in [
            "CreateContainerError",
            "CreateContainerConfigError",
            "RunContainerError",
        ] {
            let pod = pulling(reason, created);
            assert!(
                matches!(pod_progress(&pod, at(30)), Progress::Running),
                "{reason}"
            );
            let (message, kind, _, _) = failure(pod_progress(&pod, at(61)));
            assert_eq!(kind, FailKind::Infrastructure, "retried: {reason}");
            assert!(
                message.contains(reason) && message.contains("61 s"),
                "{message}"
            );
        }
    }

    #[test]
    fn a_full_cache_volume_is_said_and_not_retried() {
        let result = StageResult::failed_early(
            stagecoach_protocol::StageReason::CacheFull,
            3,
            "layer writer: writing the layer stream failed: No space left on device (os error 28)"
                .into(),
        );
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b-g1-s0"},
            "spec": {"containers": [{"name": "stage"}],
                     "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "small-cache"}}]},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "stage", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 3, "reason": "Error",
                                         "message": serde_json::to_string(&result).unwrap()}}
            }]}
        }))
        .unwrap();
        let (message, kind, reason, _) = failure(pod_progress(&pod, Timestamp::now()));
        assert_eq!(kind, FailKind::Build, "not retried");
        assert_eq!(reason, Reason::PodFailed);
        assert!(
            message.starts_with("the cache volume is full (claim small-cache;"),
            "{message}"
        );
    }

    /// A failure's message, kind, condition reason and result; anything else fails the test.
    fn failure(progress: Progress) -> (String, FailKind, Reason, Option<Box<StageResult>>) {
        match progress {
            Progress::Failed {
                message,
                kind,
                code,
                result,
            } => {
                let reason = condition_for_exit(code, result.as_ref().and_then(|r| r.reason));
                (message, kind, reason, result)
            }
            other => panic!("{other:?}"),
        }
    }

    fn ended(exit_code: i32, message: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b-g1-s0"},
            "status": {"phase": if exit_code == 0 { "Succeeded" } else { "Failed" },
                "containerStatuses": [{
                "name": "stage", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code, "reason": "Completed", "message": message}}
            }]}
        }))
        .unwrap()
    }

    #[test]
    fn a_result_that_does_not_fit_the_exit_code_is_rejected_and_not_retried() {
        let digest: stagecoach_protocol::Digest =
            format!("sha256:{}", "0".repeat(64)).parse().unwrap();
        let mut success = StageResult::failed_early(
            stagecoach_protocol::StageReason::RunFailed,
            0,
            String::new(),
        );
        success.outcome = stagecoach_protocol::result::Outcome::Succeeded;
        success.message = None;
        success.reason = None;
        success.config_digest = Some(digest);
        let json = |r: &StageResult| serde_json::to_string(r).unwrap();
        // The executor's own success is taken.
        assert!(matches!(
            pod_progress(&ended(0, &json(&success)), Timestamp::now()),
            Progress::Succeeded(_)
        ));
        let run_failed = StageResult::failed_early(
            stagecoach_protocol::StageReason::RunFailed,
            1,
            "RUN failed".into(),
        );
        let no_config = StageResult {
            config_digest: None,
            ..success.clone()
        };
        let forged = [
            // A forged success left behind by a RUN whose stage then failed.
            (
                1,
                json(&success),
                "it says exit code 0, the container ended with 1",
            ),
            (
                0,
                json(&run_failed),
                "it says exit code 1, the container ended with 0",
            ),
            (0, json(&no_config), "a success without an image config"),
            (
                0,
                json(&StageResult {
                    outcome: stagecoach_protocol::result::Outcome::Failed,
                    ..success.clone()
                }),
                "a failure, but the container exited 0",
            ),
            (
                3,
                json(&StageResult {
                    exit_code: 3,
                    ..success.clone()
                }),
                "a success, but the container exited 3",
            ),
        ];
        for (code, message, why) in forged {
            let (message, kind, reason, result) =
                failure(pod_progress(&ended(code, &message), Timestamp::now()));
            assert_eq!(kind, FailKind::Build, "not retried");
            assert!(result.is_none());
            assert_eq!(reason, Reason::StageFailed);
            assert!(
                message.contains(why) && message.contains("/dev/termination-log"),
                "{why}: {message}"
            );
        }
        // A genuine failure still reads as one, with its reason.
        let (_, _, _, result) = failure(pod_progress(
            &ended(1, &json(&run_failed)),
            Timestamp::now(),
        ));
        assert!(result.is_some());
    }

    #[test]
    fn finished_pods_stay_for_the_retention_and_not_a_moment_less() {
        let done = Timestamp::from_second(1_800_000_000).unwrap();
        let day = Duration::from_secs(86_400);
        let later = |s: i64| done.checked_add(SignedDuration::from_secs(s)).unwrap();
        assert_eq!(retention_left(done, later(0), day), day);
        assert_eq!(
            retention_left(done, later(3600), day),
            Duration::from_secs(82_800)
        );
        assert!(retention_left(done, later(86_400), day).is_zero());
        assert!(retention_left(done, later(100_000), day).is_zero());
        // A clock behind the completion time does not stretch the retention.
        assert_eq!(retention_left(done, later(-60), day), day);
    }
}

#[cfg(test)]
mod early_tests {
    use super::*;

    fn plan_of(text: &str) -> Plan {
        let dockerfile = Dockerfile::parse(text).unwrap();
        planner::plan(&dockerfile, &PlanOptions::default()).unwrap()
    }

    fn succeeded() -> Progress {
        Progress::Succeeded(Box::new(StageResult::failed_early(
            stagecoach_protocol::StageReason::RunFailed,
            0,
            String::new(),
        )))
    }

    const FANOUT: &str = "FROM busybox AS a\nRUN true\nFROM busybox AS b\nRUN true\n\
        FROM busybox AS c\nCOPY --from=b /x /x\n\
        FROM scratch\nCOPY --from=a /a /a\nCOPY --from=c /c /c\n";

    #[test]
    fn a_stage_starts_one_wave_early_and_never_from_an_unfinished_parent() {
        let plan = plan_of(FANOUT);
        let progress = |states: [Progress; 4]| -> BTreeMap<usize, Progress> {
            states.into_iter().enumerate().collect()
        };
        use Progress::{NotStarted, Running};
        // a and b run: c (reads b) may start; the last stage reads c, which has not started.
        let p = progress([Running, Running, NotStarted, NotStarted]);
        assert!(early_start(&plan, 2, &p));
        assert!(!early_start(&plan, 3, &p));
        // c runs while its own input b still runs: the last stage waits for a wave.
        let p = progress([succeeded(), Running, Running, NotStarted]);
        assert!(!early_start(&plan, 3, &p), "two waves ahead");
        // b done, c runs: the last stage starts early.
        let p = progress([Running, succeeded(), Running, NotStarted]);
        assert!(early_start(&plan, 3, &p));
        // Everything it needs is done: ready, not early.
        let p = progress([succeeded(), succeeded(), succeeded(), NotStarted]);
        assert!(!early_start(&plan, 3, &p));
        // A stage whose input has no pod yet waits.
        let p = progress([NotStarted, succeeded(), succeeded(), NotStarted]);
        assert!(!early_start(&plan, 3, &p));

        // FROM an unfinished stage: its job must name the parent's layers, so never early.
        let plan = plan_of("FROM busybox AS a\nRUN true\nFROM a\nRUN true\n");
        let p: BTreeMap<usize, Progress> = [(0, Running), (1, NotStarted)].into();
        assert!(!early_start(&plan, 1, &p));
    }
}
