//! The build's end: a finalizer (`stagecoach.dev/cleanup`) keeps a deleted ImageBuild until
//! its directory on the cache volume (`builds/<uid>/`: the fetched context, stage results
//! and exports) is gone. The controller cannot reach the volume, so a cleanup pod in the
//! operator image removes it.
//!
//! The contract: the finalizer is added before the build's first pod exists, so every build
//! that could have written to the cache has it. On deletion the build's pods are stopped
//! first (a stage still writing would leave files behind), then the cleanup pod runs, then
//! the finalizer goes and the API server removes the ImageBuild, whose owned pods (the
//! cleanup pod included) the garbage collector removes. A cleanup that fails, or a cache
//! claim that is gone, does not keep the ImageBuild forever: the finalizer goes anyway and a
//! Warning event says what was left behind. Layers and cache keys stay: other builds of the
//! namespace share them.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use stagecoach_api::ImageBuild;

use crate::pods::{self, LABEL_BUILD, Owner};
use crate::{Context, Error};

/// The finalizer's name.
pub const FINALIZER: &str = "stagecoach.dev/cleanup";

/// Whether the build carries the finalizer.
pub(crate) fn has_finalizer(build: &ImageBuild) -> bool {
    build.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds the finalizer (before the build's first pod).
pub(crate) async fn ensure(
    ctx: &Context,
    build: &ImageBuild,
    namespace: &str,
) -> Result<(), Error> {
    if has_finalizer(build) {
        return Ok(());
    }
    let api: Api<ImageBuild> = Api::namespaced(ctx.client.clone(), namespace);
    // A JSON patch appends without replacing other controllers' finalizers; the test makes
    // it fail rather than write over a list that changed meanwhile.
    let patch = if build.metadata.finalizers.is_none() {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    } else {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": build.finalizers()},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ])
    };
    patch_finalizers(&api, &build.name_any(), patch).await
}

async fn patch_finalizers(
    api: &Api<ImageBuild>,
    name: &str,
    patch: serde_json::Value,
) -> Result<(), Error> {
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|e| Error::Apply {
        what: "build a finalizer patch".into(),
        source: kube::Error::SerdeError(e),
    })?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map(|_| ())
        .map_err(|source| Error::Apply {
            what: format!("update the finalizers of {name}"),
            source,
        })
}

/// Cleans up after a deleted build; the finalizer goes when the cleanup pod is done.
pub(crate) async fn cleanup(
    ctx: &Context,
    build: &ImageBuild,
    namespace: &str,
) -> Result<Action, Error> {
    if !has_finalizer(build) {
        return Ok(Action::await_change());
    }
    let owner = Owner::of(build);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let listed = crate::run::list_pods(&pods_api, &format!("{LABEL_BUILD}={}", owner.name)).await?;
    let cleanup_name = owner.cleanup_object();
    let mut cleanup_pod = None;
    let mut others = 0;
    for pod in listed {
        if pod.name_any() == cleanup_name {
            cleanup_pod = Some(pod);
        } else {
            others += 1;
            if pod.metadata.deletion_timestamp.is_none() {
                crate::run::delete_pod(&pods_api, &pod.name_any()).await?;
            }
        }
    }
    // Pod deletions wake the controller (it owns them); the requeue is a safety net.
    if others > 0 {
        return Ok(Action::requeue(std::time::Duration::from_secs(5)));
    }
    let claim = crate::run::cache_claim(ctx, build);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    // A claim on its way out (its namespace is being deleted, say) takes the directory with
    // it.
    let claim_exists = claims
        .get_opt(claim)
        .await
        .map_err(|source| Error::Fetch {
            what: format!("PersistentVolumeClaim {claim}"),
            source,
        })?
        .is_some_and(|c| c.metadata.deletion_timestamp.is_none());
    let done = match &cleanup_pod {
        _ if !claim_exists => true,
        None => {
            let pod = pods::cleanup_pod(&owner, &ctx.settings.operator_image, claim);
            match pods_api.create(&PostParams::default(), &pod).await {
                Ok(_) => false,
                Err(kube::Error::Api(s)) if s.code == 409 => false,
                // A namespace being deleted refuses new pods; its claim goes with it.
                Err(kube::Error::Api(s)) if s.code == 403 => {
                    tracing::info!(refusal = s.message.as_str(), "no cleanup pod allowed");
                    true
                }
                Err(source) => {
                    return Err(Error::Apply {
                        what: "create the cleanup pod".into(),
                        source,
                    });
                }
            }
        }
        Some(pod) => match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Succeeded") => true,
            Some("Failed") => {
                crate::publish(
                    ctx,
                    build,
                    kube::runtime::events::EventType::Warning,
                    "CleanupFailed",
                    &format!(
                        "the cleanup pod {cleanup_name} failed; builds/{}/ may remain on the cache volume {claim}",
                        owner.uid
                    ),
                )
                .await;
                true
            }
            _ => false,
        },
    };
    if !done {
        return Ok(Action::await_change());
    }
    let api: Api<ImageBuild> = Api::namespaced(ctx.client.clone(), namespace);
    let keep: Vec<String> = build
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    patch_finalizers(
        &api,
        &owner.name,
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": build.finalizers()},
            {"op": "replace", "path": "/metadata/finalizers", "value": keep},
        ]),
    )
    .await?;
    if let Ok(mut sources) = ctx.sources.lock() {
        sources.retain(|(uid, _), _| *uid != owner.uid);
    }
    tracing::info!(
        cleaned = cleanup_pod.is_some(),
        "finalizer released; the build is gone"
    );
    Ok(Action::await_change())
}
