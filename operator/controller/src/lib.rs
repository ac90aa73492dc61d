//! The Stagecoach operator: the only crate that talks to the Kubernetes API. A kube-runtime
//! `Controller` watches ImageBuilds; each reconcile is fetch → validate → plan → apply →
//! status, where only the ends do I/O (fetch reads the objects the spec names, status writes
//! by server-side apply under one field manager) and the middle is pure ([`validate`],
//! [`status`]). Each step has its own error, whose stable reason is the condition reason,
//! the event reason and the metric label.
//!
//! What this version does: it validates every generation of every ImageBuild and reports
//! the verdict in the `Succeeded` condition. A spec error (a Dockerfile that does not parse,
//! an unknown target, a missing Secret, ConfigMap, key or claim, an image reference that does
//! not parse, a RUN mount no pod can provide) fails the generation at once with its reason,
//! creates nothing and is not retried until the spec changes. A valid spec stays `Pending`:
//! builder pods (the plan and apply steps) come next (docs/architecture.md, "The operator").

pub mod status;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use stagecoach_api::{ImageBuild, Reason, SourceKind};

use crate::validate::{Fetched, validate};

/// The field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "stagecoach-controller";

/// The longest wait between retries of a transient failure.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What every reconcile shares.
#[derive(Clone)]
pub struct Context {
    client: Client,
    /// Consecutive transient failures per ImageBuild, for the backoff.
    failures: Arc<Mutex<HashMap<ObjectRef<ImageBuild>, u32>>>,
}

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
}

/// Connects with the kubeconfig (or, in a pod, the in-cluster configuration) and runs the
/// controller until a termination signal: what `stagecoach controller` calls.
pub fn main(namespace: Option<&str>) -> Result<(), RunError> {
    // One process-wide TLS provider, the one every client here is built with.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    runtime.block_on(async {
        let client = Client::try_default().await.map_err(RunError::Connect)?;
        run(client, namespace).await
    })
}

/// Runs the controller until a termination signal, over one namespace or all of them.
pub async fn run(client: Client, namespace: Option<&str>) -> Result<(), RunError> {
    let builds: Api<ImageBuild> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    builds
        .list(&ListParams::default().limit(1))
        .await
        .map_err(RunError::Crd)?;
    let context = Arc::new(Context {
        client,
        failures: Arc::new(Mutex::new(HashMap::new())),
    });
    tracing::info!(
        namespace = namespace.unwrap_or("*"),
        "stagecoach controller watching ImageBuilds"
    );
    Controller::new(builds, watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::warn!(error = %e, "reconcile failed");
            }
        })
        .await;
    Ok(())
}

/// One reconcile of one ImageBuild.
#[tracing::instrument(skip_all, fields(build = %format!("{}/{}", build.namespace().unwrap_or_default(), build.name_any())))]
async fn reconcile(build: Arc<ImageBuild>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = build.namespace().ok_or(Error::NoNamespace)?;
    let generation = build.metadata.generation.unwrap_or(0);
    let previous = build.status.as_ref();
    // A verdict for this generation is final: nothing changes until the spec does.
    if let Some(status) = previous
        && status.observed_generation == Some(generation)
        && status
            .succeeded()
            .is_some_and(|c| c.status != stagecoach_api::ConditionStatus::Unknown.as_str())
    {
        return Ok(Action::await_change());
    }
    let fetched = fetch(&ctx.client, &build, &namespace).await?;
    let (reason, message) = match validate(&build.spec, &fetched) {
        Err(e) => (e.reason(), e.to_string()),
        Ok(v) => (
            Reason::Pending,
            match &v.plan {
                Some(plan) => format!(
                    "the spec is valid: {} stages to build in {} waves; this operator version does not start builder pods yet",
                    plan.waves.iter().flatten().count(),
                    plan.waves.len()
                ),
                None => "the spec is valid; this operator version does not fetch git sources or start builder pods yet".to_string(),
            },
        ),
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = status::with_reason(previous, generation, reason, &message, now);
    let unchanged = previous.is_some_and(|p| {
        p.observed_generation == status.observed_generation
            && p.succeeded().map(|c| (&c.status, &c.reason, &c.message))
                == status
                    .succeeded()
                    .map(|c| (&c.status, &c.reason, &c.message))
    });
    if !unchanged {
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
    }
    if let Ok(mut failures) = ctx.failures.lock() {
        failures.remove(&ObjectRef::from(build.as_ref()));
    }
    Ok(Action::await_change())
}

/// Transient failures back off per object: 2 s, 4 s, 8 s … up to five minutes.
fn error_policy(build: Arc<ImageBuild>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempts = match ctx.failures.lock() {
        Ok(mut failures) => {
            let n = failures.entry(ObjectRef::from(build.as_ref())).or_insert(0);
            *n = n.saturating_add(1);
            *n
        }
        Err(_) => 1,
    };
    let wait = Duration::from_secs(1u64 << attempts.min(9)).min(MAX_BACKOFF);
    tracing::warn!(reason = error.reason(), error = %error, attempts, ?wait, "retrying");
    Action::requeue(wait)
}

/// The fetch step: the objects the spec names, as far as validation needs them.
async fn fetch(client: &Client, build: &ImageBuild, namespace: &str) -> Result<Fetched, Error> {
    let spec = &build.spec;
    let fetch_err = |what: String| move |source| Error::Fetch { what, source };
    let mut fetched = Fetched {
        claim_exists: true,
        ..Fetched::default()
    };
    if let Ok(SourceKind::ConfigMap(source)) = spec.source.kind() {
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        fetched.config_map = maps
            .get_opt(&source.name)
            .await
            .map_err(fetch_err(format!("ConfigMap {}", source.name)))?
            .map(|cm| cm.data.unwrap_or_default());
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let names = spec
        .push_secret
        .iter()
        .map(|s| s.name.clone())
        .chain(spec.secrets.iter().map(|s| s.secret_key_ref.name.clone()));
    for name in names {
        if fetched.secret_keys.contains_key(&name) {
            continue;
        }
        // Only the key names are kept: values are never read into the controller's state.
        if let Some(secret) = secrets
            .get_opt(&name)
            .await
            .map_err(fetch_err(format!("Secret {name}")))?
        {
            let keys = secret.data.unwrap_or_default().into_keys().collect();
            fetched.secret_keys.insert(name, keys);
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
    Ok(fetched)
}
