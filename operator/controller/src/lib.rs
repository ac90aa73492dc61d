//! The Stagecoach operator: the only crate that talks to the Kubernetes API. A kube-runtime
//! `Controller` watches ImageBuilds; each reconcile is fetch → validate → plan → apply →
//! status, where only the ends do I/O (fetch reads the objects the spec names, status writes
//! by server-side apply under one field manager) and the middle is pure ([`validate`],
//! [`status`]). Each step has its own error, whose stable reason is the condition reason,
//! the event reason and the metric label.
//!
//! What a reconcile does: a spec error (a Dockerfile that does not parse, an unknown target,
//! a missing Secret, ConfigMap, key or claim, an image reference that does not parse, a RUN
//! mount no pod can provide) fails the generation at once with its reason, creates nothing
//! and is not retried until the spec changes. A valid spec gets the cleanup finalizer
//! ([`finalize`]) and the namespace's cache claim, a git source is fetched by a pod
//! ([`source`]), and then the stage pods, retries and pushes run ([`run`]) until the build
//! succeeds, fails or times out (docs/architecture.md, "The operator").

mod finalize;
pub mod gc;
pub mod logs;
pub mod metrics;
pub mod pods;
mod reuse;
mod run;
mod source;
pub mod status;
pub mod validate;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use stagecoach_api::{ImageBuild, Reason, SourceKind, StageState};

use crate::validate::{Fetched, validate};

/// The field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "stagecoach-controller";

/// The longest wait between retries of a transient failure.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The controller's settings (`stagecoach controller` flags).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The per-namespace cache claim builds use when `spec.cache` names none.
    pub cache_claim: String,
    /// Its size, as a Kubernetes quantity.
    pub cache_size: String,
    /// Its storage class; `None` is the cluster's default.
    pub cache_storage_class: Option<String>,
    /// Its access mode (`ReadWriteOnce` works with every class; `ReadWriteMany` lets a
    /// build's pods run on any node).
    pub cache_access_mode: String,
    /// The operator's own image (builder pods' init container, and the image of a stage
    /// whose root is `scratch`), pinned by digest.
    pub operator_image: String,
    /// Registries reached over plain HTTP when resolving base images.
    pub insecure_registries: Vec<String>,
    /// At most this many stage pods of one build run at once.
    pub max_parallel_pods: usize,
    /// How long a finished build's pods stay (`None`: until the next generation or the
    /// build's deletion).
    pub pod_retention: Option<Duration>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`None`: not served).
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Leader election: the namespace of the Lease that elects one active replica (`None`:
    /// this process is the only one and reconciles at once).
    pub leader_election_namespace: Option<String>,
    /// Defaults for stage pods (resources, hostUsers).
    pub builder: pods::BuilderDefaults,
    /// Cache garbage collection.
    pub cache_gc: gc::GcSettings,
    /// The most bytes a fetched git context may hold (`None`: no limit).
    pub max_context_bytes: Option<u64>,
    /// How long the registry of an image the build starts from may stay unreachable before
    /// the build fails with `ResolveFailed`.
    pub unreachable_registry_timeout: Duration,
    /// Names the operator image's binary on a cache volume (`bin/<key>`), so that stage
    /// pods run it from there without an init container (`None`: every stage pod copies it
    /// in an init container).
    pub binary_key: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cache_claim: "stagecoach-cache".into(),
            cache_size: "20Gi".into(),
            cache_storage_class: None,
            cache_access_mode: "ReadWriteOnce".into(),
            operator_image: String::new(),
            insecure_registries: Vec::new(),
            max_parallel_pods: 8,
            pod_retention: Some(Duration::from_secs(24 * 3600)),
            metrics_address: None,
            leader_election_namespace: None,
            builder: pods::BuilderDefaults::default(),
            cache_gc: gc::GcSettings::default(),
            max_context_bytes: Some(4 << 30),
            unreachable_registry_timeout: Duration::from_secs(120),
            binary_key: None,
        }
    }
}

/// What every reconcile shares.
#[derive(Clone)]
pub struct Context {
    client: Client,
    recorder: kube::runtime::events::Recorder,
    /// Resolves base images (anonymous; `--insecure-registry` over plain HTTP). One for the
    /// controller, so its connections and tokens are reused across reconciles.
    registry: Arc<stagecoach_oci::registry::RegistryClient>,
    settings: Settings,
    /// Consecutive transient failures per ImageBuild, for the backoff.
    failures: Arc<Mutex<HashMap<ObjectRef<ImageBuild>, u32>>>,
    /// Fetched git sources by build uid and generation: the commit and the Dockerfile (read
    /// once from the fetch pod's log).
    sources: Arc<Mutex<HashMap<BuildGeneration, FetchedSource>>>,
    /// What the controller counts.
    metrics: Arc<metrics::Metrics>,
    /// The cluster's nodes, for whether stage pods can run in a user namespace (`None` with
    /// `--user-namespaces=off`: not watched).
    nodes: Option<kube::runtime::reflector::Store<Node>>,
    /// The cache claims (`namespace/claim`) known to hold the binary at `bin/<key>`: a stage
    /// pod that installed it got past its init container. Kept in memory only: after a
    /// restart the first pods on a claim install it again.
    binaries: Arc<Mutex<HashSet<String>>>,
}

impl Context {
    /// The stage pods' `hostUsers` now, or why no stage pod may start.
    fn host_users(&self) -> Result<Option<bool>, String> {
        let nodes = self.nodes.as_ref().map(|s| s.state()).unwrap_or_default();
        self.settings
            .builder
            .user_namespaces
            .host_users(nodes.iter().map(|n| n.as_ref()))
    }
}

/// A build's uid and generation.
type BuildGeneration = (String, i64);
/// A fetched git source: the commit and the Dockerfile's text.
type FetchedSource = (String, String);

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// Why a reconcile did not finish; all of these are transient (a spec error is not an
/// error of the reconcile but its verdict) and retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading an object the spec names failed.
    #[error("reading {what}: {source}")]
    Fetch {
        /// What was read.
        what: String,
        /// The API's answer.
        source: kube::Error,
    },
    /// Creating the namespace's cache claim failed.
    #[error("creating the cache claim {claim}: {source}")]
    CacheClaim {
        /// The claim's name.
        claim: String,
        /// The API's answer.
        source: kube::Error,
    },
    /// Creating or deleting a build's pods or ConfigMaps failed.
    #[error("cannot {what}: {source}")]
    Apply {
        /// What was being done.
        what: String,
        /// The API's answer.
        source: kube::Error,
    },
    /// A base image could not be resolved in its registry.
    #[error("resolving {image}: {message}")]
    Resolve {
        /// The image.
        image: String,
        /// What went wrong.
        message: String,
        /// Whether asking again cannot help (not found, credentials refused, a bad
        /// reference), as opposed to a registry that did not answer.
        permanent: bool,
    },
    /// A stage's job or pod could not be planned.
    #[error("planning a stage: {0}")]
    Plan(String),
    /// Writing the status failed.
    #[error("writing the status: {0}")]
    Status(#[source] kube::Error),
    /// The object has no namespace (ImageBuilds are namespaced; the API never sends one).
    #[error("the ImageBuild has no namespace")]
    NoNamespace,
}

impl Error {
    /// The stable reason, for events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Fetch { .. } => "FetchFailed",
            Error::CacheClaim { .. } => "CacheClaimFailed",
            Error::Apply { .. } => "ApplyFailed",
            Error::Resolve { .. } => "ResolveFailed",
            Error::Plan(_) => "PlanFailed",
            Error::Status(_) => "StatusWriteFailed",
            Error::NoNamespace => "NoNamespace",
        }
    }
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// No kubeconfig and no in-cluster configuration, or the API server is unreachable.
    #[error("cannot connect to the Kubernetes API (kubeconfig or in-cluster config): {0}")]
    Connect(#[source] kube::Error),
    /// The ImageBuild API is not served (the CRD is not installed) or not readable.
    #[error("cannot list ImageBuilds (is the CRD from crds/ installed?): {0}")]
    Crd(#[source] kube::Error),
    /// The leader-election Lease could not be used.
    #[error("leader election (Lease {LEASE_NAME}): {0}")]
    Lease(String),
    /// Another replica holds the Lease now: this one stops (and is restarted as a standby)
    /// rather than reconcile next to it.
    #[error("lost the leader-election Lease {LEASE_NAME}; stopping so only one replica reconciles")]
    LostLease,
}

/// The Lease that elects the active replica.
pub const LEASE_NAME: &str = "stagecoach-controller";
/// How long a leader's Lease lasts without renewal: a standby takes over within this (plus
/// its next attempt) when the leader dies.
pub const LEASE_SECONDS: u64 = 15;

/// Connects with the kubeconfig (or, in a pod, the in-cluster configuration) and runs the
/// controller until a termination signal: what `stagecoach controller` calls.
pub fn main(namespace: Option<&str>, settings: Settings) -> Result<(), RunError> {
    let runtime = runtime().map_err(RunError::Runtime)?;
    runtime.block_on(async {
        let client = Client::try_default().await.map_err(RunError::Connect)?;
        run(client, namespace, settings).await
    })
}

/// The async runtime of a command that talks to the API server, with the one process-wide
/// TLS provider every client here is built with.
pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Runs the controller until a termination signal, over one namespace or all of them.
pub async fn run(
    client: Client,
    namespace: Option<&str>,
    settings: Settings,
) -> Result<(), RunError> {
    let builds: Api<ImageBuild> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    builds
        .list(&ListParams::default().limit(1))
        .await
        .map_err(RunError::Crd)?;
    let reporter = kube::runtime::events::Reporter {
        controller: FIELD_MANAGER.to_string(),
        instance: std::env::var("HOSTNAME").ok(),
    };
    let nodes = match settings.builder.user_namespaces {
        pods::UserNamespaces::Off => None,
        _ => Some(watch_nodes(&client)),
    };
    let context = Arc::new(Context {
        recorder: kube::runtime::events::Recorder::new(client.clone(), reporter),
        registry: Arc::new(stagecoach_oci::registry::RegistryClient::new(
            stagecoach_oci::registry::Credentials::anonymous(),
            registry_options(&settings),
        )),
        client,
        settings,
        failures: Arc::new(Mutex::new(HashMap::new())),
        sources: Arc::new(Mutex::new(HashMap::new())),
        binaries: Arc::new(Mutex::new(HashSet::new())),
        metrics: Arc::new(metrics::Metrics::default()),
        nodes,
    });
    if let Some(address) = context.settings.metrics_address {
        let metrics = context.metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(address, metrics).await {
                tracing::error!(%address, error = %e, "cannot serve /metrics, /healthz and /readyz");
            }
        });
    }
    // The ImageBuild API was listed above: the process is ready (a standby too: it serves
    // its metrics and waits for the Lease).
    context.metrics.set_ready();
    let mut lease = match &context.settings.leader_election_namespace {
        None => None,
        Some(lease_namespace) => Some(acquire_lease(&context.client, lease_namespace).await?),
    };
    if let Some(nodes) = &context.nodes {
        wait_for_nodes(nodes).await;
    }
    // The active replica's alone, like reconciling.
    tokio::spawn(gc::run_loop(context.clone(), namespace.map(str::to_string)));
    tracing::info!(
        namespace = namespace.unwrap_or("*"),
        "stagecoach controller watching ImageBuilds"
    );
    let pods: Api<k8s_openapi::api::core::v1::Pod> = match namespace {
        Some(ns) => Api::namespaced(context.client.clone(), ns),
        None => Api::all(context.client.clone()),
    };
    let controller = Controller::new(builds, watcher::Config::default())
        .owns(
            pods,
            watcher::Config::default().labels("app.kubernetes.io/managed-by=stagecoach"),
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            use kube::runtime::controller::Error as Failed;
            let name = |r: &kube::runtime::reflector::ObjectRef<kube::api::DynamicObject>| {
                format!("{}/{}", r.namespace.as_deref().unwrap_or_default(), r.name)
            };
            match result {
                Ok(_) => {}
                // A requeue of a build that was deleted meanwhile: expected, not a failure.
                Err(Failed::ObjectNotFound(r)) => {
                    tracing::debug!(build = %name(&r), "the build is gone; nothing to reconcile");
                }
                Err(Failed::ReconcilerFailed(error, r)) => {
                    tracing::warn!(build = %name(&r), error = %error, "reconcile failed");
                }
                Err(e) => tracing::warn!(error = %e, "reconcile failed"),
            }
        });
    match lease.take() {
        None => {
            controller.await;
            Ok(())
        }
        Some((mut held, task)) => {
            let lost = tokio::select! {
                () = controller => false,
                _ = held.wait_for(|leader| !leader) => true,
            };
            if lost {
                return Err(RunError::LostLease);
            }
            // A clean stop hands the Lease over at once: with the receiver gone, the manager
            // releases it.
            drop(held);
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
            Ok(())
        }
    }
}

/// How long the controller waits for the first list of nodes before it reconciles anyway
/// (with none known, `auto` gives host users and `required` makes builds wait).
const NODES_READY_WAIT: Duration = Duration::from_secs(30);

/// A cache of the cluster's nodes, kept by a watch in the background. Only the runtime
/// handlers matter here, so each node's image list, its largest field, is dropped.
fn watch_nodes(client: &Client) -> kube::runtime::reflector::Store<Node> {
    use kube::runtime::WatchStreamExt as _;
    let (reader, writer) = kube::runtime::reflector::store::<Node>();
    let stream = kube::runtime::reflector(
        writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .modify(|node| {
                if let Some(status) = node.status.as_mut() {
                    status.images = None;
                }
            }),
    );
    tokio::spawn(stream.for_each(|event| async move {
        if let Err(e) = event {
            tracing::warn!(error = %e, "watching nodes (for user namespaces)");
        }
    }));
    reader
}

/// Waits until the first list of nodes is in, at most [`NODES_READY_WAIT`], so that the
/// first pods already know whether they get a user namespace.
async fn wait_for_nodes(reader: &kube::runtime::reflector::Store<Node>) {
    match tokio::time::timeout(NODES_READY_WAIT, reader.wait_until_ready()).await {
        Ok(_) => {
            let nodes = reader.state();
            let supporting = pods::UserNamespaces::Required
                .host_users(nodes.iter().map(|n| n.as_ref()))
                .is_ok();
            tracing::info!(
                nodes = nodes.len(),
                any_supports_user_namespaces = supporting,
                "nodes listed"
            );
        }
        Err(_) => tracing::warn!(
            "no list of nodes after {} s (does the operator's ClusterRole allow listing nodes?)",
            NODES_READY_WAIT.as_secs()
        ),
    }
}

/// Waits until this replica holds the Lease; the manager keeps renewing it in the
/// background and the receiver says when it is lost.
async fn acquire_lease(
    client: &Client,
    namespace: &str,
) -> Result<
    (
        tokio::sync::watch::Receiver<bool>,
        tokio::task::JoinHandle<
            Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>,
        >,
    ),
    RunError,
> {
    let identity =
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("pid-{}", std::process::id()));
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
        .with_namespace(namespace)
        .with_identity(identity.clone())
        .with_duration(LEASE_SECONDS)
        .with_grace(5)
        .with_field_manager(FIELD_MANAGER)
        .build()
        .await
        .map_err(|e| RunError::Lease(e.to_string()))?;
    let (mut held, task) = manager.watch().await;
    tracing::info!(
        identity = identity.as_str(),
        namespace,
        "waiting for the leader-election Lease"
    );
    held.wait_for(|leader| *leader)
        .await
        .map_err(|e| RunError::Lease(e.to_string()))?;
    tracing::info!(
        identity = identity.as_str(),
        "holding the Lease: reconciling"
    );
    Ok((held, task))
}

/// What one reconcile of a generation whose Dockerfile is known comes to.
struct Ran {
    reason: Reason,
    message: String,
    stages: Vec<stagecoach_api::StageStatus>,
    images: Vec<stagecoach_api::ImageStatus>,
    steps: std::collections::BTreeMap<String, u64>,
    retry_after: Option<std::time::Duration>,
    source: Option<stagecoach_api::SourceStatus>,
}

/// Takes what earlier builds made (the whole build, or target stages with the same
/// inputs), and drives the stage pods of the rest.
#[allow(clippy::too_many_arguments)]
async fn run_or_reuse(
    ctx: &Context,
    registry: &stagecoach_oci::registry::RegistryClient,
    build: &ImageBuild,
    namespace: &str,
    fetched: &validate::Fetched,
    owner: &pods::Owner,
    plan: &stagecoach_dockerfile::planner::Plan,
    text: &str,
    current: &std::collections::BTreeMap<String, k8s_openapi::api::core::v1::Pod>,
    commit: Option<String>,
) -> Result<Ran, Error> {
    let generation = build.metadata.generation.unwrap_or(0);
    let previous = build.status.as_ref();
    let context = reuse::context_view(
        &build.spec,
        fetched.config_map_files.as_ref(),
        commit.as_deref(),
    );
    let mut decision = reuse::decide(
        &ctx.client,
        registry,
        build,
        namespace,
        fetched.config_map_digest.as_deref(),
        &context,
        plan,
        text,
        !run::has_stage_pods(current, owner, plan),
    )
    .await;
    let mut ran = Ran {
        reason: Reason::Building,
        message: String::new(),
        stages: Vec::new(),
        images: Vec::new(),
        steps: std::collections::BTreeMap::new(),
        retry_after: None,
        source: decision
            .inputs
            .clone()
            .map(|inputs| stagecoach_api::SourceStatus {
                commit: commit.clone(),
                inputs: Some(inputs),
            }),
    };
    let cached_stages = |stages: Vec<stagecoach_api::StageStatus>| {
        stages
            .into_iter()
            .map(|s| stagecoach_api::StageStatus {
                state: StageState::Cached,
                ..s
            })
            .collect::<Vec<_>>()
    };
    let every_target_cached = !plan.targets.is_empty()
        && plan
            .targets
            .iter()
            .all(|t| decision.cached.iter().any(|c| c.stage == *t));
    if let Some(earlier) = decision.reuse {
        ran.images = earlier.images;
        ran.stages = cached_stages(status::pending_stages(plan));
        ran.reason = Reason::Succeeded;
        ran.message = format!(
            "the inputs are those of {} (generation {}), whose images are in the registry under this build's tags: no pod ran",
            earlier.build, earlier.generation
        );
    } else if every_target_cached {
        ran.images = decision.cached.iter().map(|c| c.image.clone()).collect();
        ran.stages = cached_stages(status::pending_stages(plan));
        ran.reason = Reason::Succeeded;
        let mut from: Vec<&str> = decision.cached.iter().map(|c| c.from.as_str()).collect();
        from.sort_unstable();
        from.dedup();
        ran.message = format!(
            "every target stage has the inputs of one that {} pushed, and its image is in the registry under this build's tag: no pod ran",
            from.join(", ")
        );
    } else {
        // The targets an earlier build made are not built again, nor what only they need.
        let without = |cached: &[reuse::CachedTarget]| -> Result<_, Error> {
            let mut spec = build.spec.clone();
            spec.targets.retain(|t| {
                !cached
                    .iter()
                    .any(|c| plan.stages[c.stage].name.as_deref() == Some(t.stage.as_str()))
            });
            let smaller =
                validate::plan_dockerfile(&spec, text).map_err(|e| Error::Plan(e.to_string()))?;
            let mut copy = build.clone();
            copy.spec = spec;
            Ok((copy, smaller))
        };
        let mut reduced = None;
        if !decision.cached.is_empty() {
            let (copy, smaller) = without(&decision.cached)?;
            // A taken target that another target is built from runs anyway: it stays a
            // target, so that every reconcile of the generation sees the same plan.
            let runs: std::collections::BTreeSet<usize> =
                smaller.waves.iter().flatten().copied().collect();
            let before = decision.cached.len();
            decision.cached.retain(|c| !runs.contains(&c.stage));
            reduced = Some(if decision.cached.len() == before {
                (copy, smaller)
            } else {
                without(&decision.cached)?
            });
        }
        let (run_build, run_plan) = match &reduced {
            Some((copy, smaller)) if !decision.cached.is_empty() => (copy, smaller),
            _ => (build, plan),
        };
        let with_cached = |stages: Vec<stagecoach_api::StageStatus>| {
            status::pending_stages(plan)
                .into_iter()
                .map(|p| {
                    stages
                        .iter()
                        .find(|s| s.index == p.index)
                        .cloned()
                        .unwrap_or(stagecoach_api::StageStatus {
                            state: StageState::Cached,
                            ..p
                        })
                })
                .collect::<Vec<_>>()
        };
        ran.images = decision.cached.iter().map(|c| c.image.clone()).collect();
        // Stages an earlier build exported with the same inputs: their readers read those
        // files, and they get no pod. Decided once, then kept in status.
        let free = if decision.fresh {
            reuse::pod_free(run_plan, |j| {
                decision
                    .stage_inputs
                    .get(j)
                    .cloned()
                    .flatten()
                    .is_some_and(|inputs| decision.known.contains(&inputs))
            })
        } else {
            let needed: std::collections::BTreeSet<usize> =
                run_plan.waves.iter().flatten().copied().collect();
            decision
                .cached_stages
                .intersection(&needed)
                .copied()
                .collect()
        };
        // From the whole plan, as decide() folded them into the inputs: a taken target's
        // paths too, so that an export holds what its name says.
        let parsed = stagecoach_dockerfile::Dockerfile::parse(text).ok();
        let export_paths = (0..plan.stages.len())
            .map(|j| {
                parsed
                    .as_ref()
                    .and_then(|d| reuse::export_paths(d, plan, j))
                    .filter(|paths| !paths.is_empty())
            })
            .collect::<Vec<_>>();
        let shared = run::Shared {
            inputs: &decision.stage_inputs,
            export_paths: &export_paths,
            cached: free,
        };
        match run::drive(
            ctx, registry, run_build, namespace, text, run_plan, current, &shared,
        )
        .await
        {
            Ok(verdict) => {
                ran.images.extend(verdict.images);
                ran.steps = verdict.steps;
                ran.retry_after = verdict.requeue;
                ran.reason = verdict.reason;
                ran.message = verdict.message;
                ran.stages = with_cached(verdict.stages);
            }
            // An image that does not exist or is refused fails the build; a registry that
            // does not answer may come back, so the build waits (with backoff) for
            // `--unreachable-registry-timeout` before it fails.
            Err(e @ Error::Resolve { permanent, .. }) => {
                let now = k8s_openapi::jiff::Timestamp::now();
                if permanent
                    || status::pending_longer_than(
                        previous,
                        generation,
                        now,
                        ctx.settings.unreachable_registry_timeout,
                    )
                {
                    let gave_up = if permanent {
                        String::new()
                    } else {
                        format!(
                            " (the registry did not answer for {} s)",
                            ctx.settings.unreachable_registry_timeout.as_secs()
                        )
                    };
                    ran.reason = Reason::ResolveFailed;
                    ran.message = format!("{e}{gave_up}");
                } else {
                    ran.retry_after = Some(backoff(ctx, build));
                    ran.reason = Reason::Pending;
                    ran.message = format!("{e}; retrying");
                }
                let rest = if ran.reason == Reason::Pending {
                    StageState::Pending
                } else {
                    StageState::Skipped
                };
                ran.stages = with_cached(status::stages_kept(run_plan, previous, generation, rest));
            }
            Err(e) => return Err(e),
        }
    }
    for s in &mut ran.stages {
        s.inputs = usize::try_from(s.index)
            .ok()
            .and_then(|i| decision.stage_inputs.get(i).cloned())
            .flatten();
    }
    Ok(ran)
}

/// One reconcile of one ImageBuild.
#[tracing::instrument(skip_all, fields(build = %format!("{}/{}", build.namespace().unwrap_or_default(), build.name_any())))]
async fn reconcile(build: Arc<ImageBuild>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = build.namespace().ok_or(Error::NoNamespace)?;
    if build.metadata.deletion_timestamp.is_some() {
        return finalize::cleanup(&ctx, &build, &namespace).await;
    }
    let generation = build.metadata.generation.unwrap_or(0);
    let previous = build.status.as_ref();
    if status::has_final_verdict(previous, generation) {
        return run::expire_pods(&ctx, &build, &namespace).await;
    }
    let (fetched, credentials) = fetch(&ctx.client, &build, &namespace).await?;
    // Base images resolve with the push secret's logins when there are some.
    let registry = match credentials {
        Some(c) => Arc::new(stagecoach_oci::registry::RegistryClient::new(
            c,
            registry_options(&ctx.settings),
        )),
        None => ctx.registry.clone(),
    };
    let mut retry_after = None;
    let mut images = Vec::new();
    let mut steps = std::collections::BTreeMap::new();
    let mut source = None;
    let (reason, message, stages) = match validate(&build.spec, &fetched) {
        Err(e) => (e.reason(), e.to_string(), Vec::new()),
        Ok(v) => {
            // Before the first pod: every build that may write to the cache has it.
            finalize::ensure(&ctx, &build, &namespace).await?;
            if build.spec.cache.is_none() {
                ensure_cache_claim(&ctx, &namespace).await?;
            }
            let owner = pods::Owner::of(&build);
            let current = run::current_pods(&ctx, &namespace, &owner).await?;
            // The Dockerfile: known now, or once the git source is fetched.
            let known = match (v.plan, v.dockerfile, build.spec.source.kind()) {
                (Some(plan), Some(text), _) => Ok((plan, text)),
                (_, _, Ok(SourceKind::Git(git))) => {
                    match source::drive(&ctx, &build, &namespace, git, &current).await? {
                        source::FetchState::Running => Err((
                            Reason::Building,
                            format!(
                                "fetching {} at {}",
                                git.url,
                                git.revision.as_deref().unwrap_or("the default branch")
                            ),
                        )),
                        source::FetchState::Failed(reason, message) => Err((reason, message)),
                        source::FetchState::Fetched { commit, dockerfile } => {
                            source = Some(stagecoach_api::SourceStatus {
                                commit: Some(commit.clone()),
                                inputs: None,
                            });
                            validate::plan_dockerfile(&build.spec, &dockerfile)
                                .map(|plan| (plan, dockerfile))
                                .map_err(|e| (e.reason(), format!("{e} (at commit {commit})")))
                        }
                    }
                }
                _ => Err((
                    Reason::InvalidSpec,
                    "the source names no Dockerfile".to_string(),
                )),
            };
            match known {
                Err((reason, message)) => (reason, message, Vec::new()),
                Ok((plan, text)) => {
                    let ran = run_or_reuse(
                        &ctx,
                        &registry,
                        &build,
                        &namespace,
                        &fetched,
                        &owner,
                        &plan,
                        &text,
                        &current,
                        source.as_ref().and_then(|s| s.commit.clone()),
                    )
                    .await?;
                    images = ran.images;
                    steps = ran.steps;
                    retry_after = ran.retry_after;
                    if ran.source.is_some() {
                        source = ran.source;
                    }
                    (ran.reason, ran.message, ran.stages)
                }
            }
        }
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut status = status::with_reason(previous, generation, reason, &message, stages, now);
    status.images = images;
    status.source = source;
    if status::differs(previous, &status) {
        let patch = serde_json::json!({
            "apiVersion": "stagecoach.dev/v1alpha1",
            "kind": "ImageBuild",
            "status": status,
        });
        Api::<ImageBuild>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(
                &build.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(Error::Status)?;
        tracing::info!(reason = reason.as_str(), generation, "status written");
        ctx.metrics
            .observe(&metrics::change(previous, &status, &steps));
        let changed = previous.and_then(|p| {
            p.succeeded()
                .map(|c| (c.reason.clone(), c.observed_generation))
        }) != Some((reason.as_str().to_string(), Some(generation)));
        if changed {
            let kind = if reason.status() == stagecoach_api::ConditionStatus::False {
                kube::runtime::events::EventType::Warning
            } else {
                kube::runtime::events::EventType::Normal
            };
            publish(&ctx, &build, kind, reason.as_str(), &message).await;
        }
    }
    if reason.status() != stagecoach_api::ConditionStatus::Unknown {
        retry_after = None;
    }
    if let Some(wait) = retry_after {
        return Ok(Action::requeue(wait));
    }
    if let Ok(mut failures) = ctx.failures.lock() {
        failures.remove(&ObjectRef::from(build.as_ref()));
    }
    Ok(Action::await_change())
}

fn registry_options(settings: &Settings) -> stagecoach_oci::registry::ClientOptions {
    stagecoach_oci::registry::ClientOptions {
        insecure_registries: settings.insecure_registries.clone(),
        ..stagecoach_oci::registry::ClientOptions::default()
    }
}

/// The next wait of an object's backoff (2 s doubling to five minutes), counting this failure.
fn backoff(ctx: &Context, build: &ImageBuild) -> Duration {
    let attempts = match ctx.failures.lock() {
        Ok(mut failures) => {
            let n = failures.entry(ObjectRef::from(build)).or_insert(0);
            *n = n.saturating_add(1);
            *n
        }
        Err(_) => 1,
    };
    Duration::from_secs(1u64 << attempts.min(9)).min(MAX_BACKOFF)
}

/// Publishes an event about `build`; a failure to publish is logged, never fatal.
pub(crate) async fn publish(
    ctx: &Context,
    build: &ImageBuild,
    type_: kube::runtime::events::EventType,
    reason: &str,
    note: &str,
) {
    // The API's bound on an event's note.
    let note = status::truncate(note, 1000);
    let event = kube::runtime::events::Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Build".into(),
        secondary: None,
    };
    let reference = kube::Resource::object_ref(build, &());
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        tracing::warn!(error = %e, reason, "cannot publish an event");
    }
}

/// Transient failures back off per object: 2 s, 4 s, 8 s … up to five minutes.
fn error_policy(build: Arc<ImageBuild>, error: &Error, ctx: Arc<Context>) -> Action {
    let wait = backoff(&ctx, &build);
    ctx.metrics.reconcile_error(error.reason());
    tracing::warn!(reason = error.reason(), error = %error, ?wait, "retrying");
    Action::requeue(wait)
}

/// Creates the namespace's cache claim unless it exists. It belongs to no build (so deleting
/// a build keeps the cache); a namespace is the cache's trust boundary, so each namespace
/// gets its own.
async fn ensure_cache_claim(ctx: &Context, namespace: &str) -> Result<(), Error> {
    let settings = &ctx.settings;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let err = |source| Error::CacheClaim {
        claim: settings.cache_claim.clone(),
        source,
    };
    if claims
        .get_opt(&settings.cache_claim)
        .await
        .map_err(err)?
        .is_some()
    {
        return Ok(());
    }
    let mut spec = serde_json::json!({
        "accessModes": [settings.cache_access_mode],
        "resources": {"requests": {"storage": settings.cache_size}},
    });
    if let (Some(class), Some(map)) = (&settings.cache_storage_class, spec.as_object_mut()) {
        map.insert("storageClassName".into(), serde_json::json!(class));
    }
    let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": settings.cache_claim,
            "labels": {"app.kubernetes.io/managed-by": "stagecoach", "app.kubernetes.io/component": "cache"},
        },
        "spec": spec,
    }))
    .map_err(|e| err(kube::Error::SerdeError(e)))?;
    match claims
        .create(&kube::api::PostParams::default(), &claim)
        .await
    {
        Ok(_) => {
            tracing::info!(
                claim = settings.cache_claim.as_str(),
                namespace,
                "cache claim created"
            );
            Ok(())
        }
        // Another reconcile in this namespace made it first.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// The key of a `kubernetes.io/dockerconfigjson` Secret.
const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";

/// The fetch step: the objects the spec names, as far as validation needs them, and the
/// push secret's registry logins.
async fn fetch(
    client: &Client,
    build: &ImageBuild,
    namespace: &str,
) -> Result<(Fetched, Option<stagecoach_oci::registry::Credentials>), Error> {
    let mut credentials = None;
    let spec = &build.spec;
    let fetch_err = |what: String| move |source| Error::Fetch { what, source };
    let mut fetched = Fetched {
        claim_exists: true,
        ..Fetched::default()
    };
    if let Ok(SourceKind::ConfigMap(source)) = spec.source.kind() {
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let map = maps
            .get_opt(&source.name)
            .await
            .map_err(fetch_err(format!("ConfigMap {}", source.name)))?;
        fetched.config_map_digest = map.as_ref().map(reuse::config_map_digest);
        fetched.config_map_files = map.as_ref().map(reuse::config_map_files);
        fetched.config_map = map.map(|cm| cm.data.unwrap_or_default());
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let git_secret = match spec.source.kind() {
        Ok(SourceKind::Git(git)) => git.secret_ref.clone(),
        _ => None,
    };
    let names = spec
        .push_secret
        .iter()
        .chain(git_secret.iter())
        .map(|s| s.name.clone())
        .chain(spec.secrets.iter().map(|s| s.secret_key_ref.name.clone()));
    for name in names {
        if fetched.secret_keys.contains_key(&name) {
            continue;
        }
        // Only the key names are kept, but for the push secret's registry logins, which
        // resolve private base images in this reconcile and are never written anywhere.
        if let Some(secret) = secrets
            .get_opt(&name)
            .await
            .map_err(fetch_err(format!("Secret {name}")))?
        {
            let data = secret.data.unwrap_or_default();
            if spec.push_secret.as_ref().is_some_and(|p| p.name == name)
                && let Some(config) = data.get(DOCKER_CONFIG_KEY)
            {
                match stagecoach_oci::registry::Credentials::from_json(&config.0) {
                    Ok(c) => credentials = Some(c),
                    Err(e) => fetched.push_secret_error = Some(e.to_string()),
                }
            }
            fetched.secret_keys.insert(name, data.into_keys().collect());
        }
    }
    if let Some(cache) = &spec.cache {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
        fetched.claim_exists = claims
            .get_opt(&cache.claim_name)
            .await
            .map_err(fetch_err(format!(
                "PersistentVolumeClaim {}",
                cache.claim_name
            )))?
            .is_some();
    }
    Ok((fetched, credentials))
}
