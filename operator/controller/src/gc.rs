//! Cache garbage collection, driven by the active replica: every `--cache-gc-interval`, for
//! each cache claim that ImageBuilds use (their `spec.cache.claimName`, or the namespace's
//! claim), one `stagecoach gc` pod ([`stagecoach_builder::gc`]) removes what the cache no
//! longer needs.
//!
//! Contract with running builds: the pod is told every build of the claim that has no final
//! verdict (their `builds/<uid>/` and result blobs stay) and the start of the oldest of them
//! (nothing used since goes). Builds that start while it runs are newer than that. At most
//! one collection runs per claim; a finished one's report is logged, and its pod deleted
//! when the next one starts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt as _;
use kube::api::{Api, ListParams, PostParams};
use stagecoach_api::ImageBuild;

use crate::pods::{self, GcRun};
use crate::{Context, run};

/// The chart's `builds.cache.gc` values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcSettings {
    /// How often each claim is collected (`None`: never).
    pub interval: Option<Duration>,
    /// Keys, mounts and unreferenced blobs unused for longer go.
    pub max_age: Duration,
    /// Then the least recently used go until the cache holds at most this share of the
    /// claim's capacity, in percent (`None`: no size limit).
    pub max_used_percent: Option<u8>,
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings {
            interval: Some(Duration::from_secs(3600)),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_used_percent: Some(80),
        }
    }
}

/// The longest wait for the first collection after the controller starts.
const FIRST_DELAY: Duration = Duration::from_secs(60);

/// Collects every claim once per interval until the process ends.
pub(crate) async fn run_loop(ctx: Arc<Context>, namespace: Option<String>) {
    let Some(interval) = ctx.settings.cache_gc.interval else {
        return;
    };
    // Not at once: a controller that restarts often would otherwise collect at each start.
    let first = tokio::time::Instant::now() + interval.min(FIRST_DELAY);
    let mut tick = tokio::time::interval_at(first, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = collect_all(&ctx, namespace.as_deref()).await {
            tracing::warn!(error = %e, "cache collection: cannot list ImageBuilds");
        }
    }
}

async fn collect_all(ctx: &Context, namespace: Option<&str>) -> Result<(), kube::Error> {
    let builds: Api<ImageBuild> = match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let list = builds.list(&ListParams::default()).await?;
    let mut claims: BTreeMap<(String, String), Vec<&ImageBuild>> = BTreeMap::new();
    for build in &list.items {
        let Some(ns) = build.namespace() else {
            continue;
        };
        let claim = run::cache_claim(ctx, build).to_string();
        claims.entry((ns, claim)).or_default().push(build);
    }
    for ((ns, claim), builds) in claims {
        if let Err(e) = collect_claim(ctx, &ns, &claim, &builds).await {
            tracing::warn!(namespace = ns.as_str(), claim = claim.as_str(), error = %e, "cache collection");
        }
    }
    Ok(())
}

/// Whether a build has its final verdict for its current spec.
fn finished(build: &ImageBuild) -> bool {
    build.metadata.deletion_timestamp.is_none()
        && crate::status::has_final_verdict(
            build.status.as_ref(),
            build.metadata.generation.unwrap_or(0),
        )
}

/// What one collection of a claim keeps, from its builds at `now`.
pub fn plan(
    builds: &[&ImageBuild],
    settings: &GcSettings,
    capacity: Option<u64>,
    now: u64,
) -> GcRun {
    let running: Vec<&&ImageBuild> = builds.iter().filter(|b| !finished(b)).collect();
    let started = |b: &ImageBuild| {
        b.status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .or(b.metadata.creation_timestamp.as_ref())
            .map(|t| u64::try_from(t.0.as_second()).unwrap_or(0))
            .unwrap_or(0)
    };
    GcRun {
        in_use_since: running
            .iter()
            .map(|b| started(b))
            .min()
            .unwrap_or(now)
            .min(now),
        max_age: settings.max_age.as_secs(),
        max_bytes: capacity
            .zip(settings.max_used_percent)
            .map(|(c, p)| c / 100 * u64::from(p)),
        keep_builds: running
            .iter()
            .filter_map(|b| b.metadata.uid.clone())
            .collect(),
    }
}

async fn collect_claim(
    ctx: &Context,
    namespace: &str,
    claim: &str,
    builds: &[&ImageBuild],
) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let id = pods::cache_gc_id(claim);
    let previous = pods
        .list(&ListParams::default().labels(&format!("{}={id}", pods::LABEL_CACHE_GC)))
        .await?;
    for pod in &previous.items {
        match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Succeeded" | "Failed") => {
                log_report(namespace, claim, pod);
                let _ = run::delete_pod(&pods, &pod.name_any()).await;
            }
            // One at a time: this one is still going.
            _ if pod.metadata.deletion_timestamp.is_none() => return Ok(()),
            _ => {}
        }
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(pvc) = claims.get_opt(claim).await? else {
        return Ok(());
    };
    let now = u64::try_from(k8s_openapi::jiff::Timestamp::now().as_second()).unwrap_or(0);
    let gc = plan(builds, &ctx.settings.cache_gc, capacity(&pvc), now);
    let pod = pods::cache_gc_pod(claim, &ctx.settings.operator_image, &gc, now);
    match pods.create(&PostParams::default(), &pod).await {
        Ok(_) => {
            tracing::info!(
                namespace,
                claim,
                pod = pod.name_any().as_str(),
                running_builds = gc.keep_builds.len(),
                "cache collection started"
            );
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The claim's size in bytes: what it got, else what it asked for.
fn capacity(pvc: &PersistentVolumeClaim) -> Option<u64> {
    let quantity = pvc
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .or_else(|| {
            pvc.spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
        })?;
    parse_bytes(&quantity.0)
}

/// A Kubernetes quantity of bytes (`20Gi`, `500M`, `1073741824`).
pub fn parse_bytes(text: &str) -> Option<u64> {
    let units: [(&str, u64); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let (number, factor) = units
        .iter()
        .find_map(|(suffix, f)| text.strip_suffix(suffix).map(|n| (n, *f)))
        .unwrap_or((text, 1));
    number.parse::<u64>().ok()?.checked_mul(factor)
}

fn log_report(namespace: &str, claim: &str, pod: &Pod) {
    let Some(t) = run::first_terminated(pod) else {
        return;
    };
    let report = t
        .message
        .as_deref()
        .and_then(|m| serde_json::from_str::<stagecoach_builder::gc::Report>(m).ok());
    match (t.exit_code, report) {
        (0, Some(r)) if r.failed > 0 => tracing::warn!(
            namespace,
            claim,
            failed = r.failed,
            errors = r.errors.join("; ").as_str(),
            freed_bytes = r.freed_bytes,
            "cache collection done, but some of it could not be removed"
        ),
        (0, Some(r)) => tracing::info!(
            namespace,
            claim,
            builds = r.builds,
            keys = r.keys,
            blobs = r.blobs,
            mounts = r.mounts,
            exports = r.exports,
            freed_bytes = r.freed_bytes,
            bytes = r.bytes,
            over_limit_bytes = r.over_limit_bytes,
            "cache collection done"
        ),
        (code, _) => tracing::warn!(
            namespace,
            claim,
            code,
            message = t.message.as_deref().unwrap_or_default(),
            "cache collection failed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(uid: &str, start: Option<i64>, verdict: Option<&str>, generation: i64) -> ImageBuild {
        let mut status = serde_json::json!({"observedGeneration": 1});
        if let Some(s) = start {
            status["startTime"] = serde_json::json!(
                k8s_openapi::jiff::Timestamp::from_second(s)
                    .unwrap()
                    .to_string()
            );
        }
        if let Some(v) = verdict {
            status["conditions"] = serde_json::json!([{"type": "Succeeded", "status": v, "reason": "X",
                "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]);
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "stagecoach.dev/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": uid, "namespace": "ns", "uid": uid, "generation": generation,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"source": {"inline": {"dockerfile": "FROM scratch\n"}}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn running_builds_are_kept_and_the_oldest_start_bounds_what_may_go() {
        let done = build("done", Some(1_000), Some("True"), 1);
        let failed = build("failed", Some(1_500), Some("False"), 1);
        let running = build("running", Some(2_000), Some("Unknown"), 1);
        let later = build("later", Some(3_000), None, 1);
        // A finished verdict of an older generation: the new spec is running.
        let respec = build("respec", Some(2_500), Some("True"), 2);
        let settings = GcSettings::default();
        let run = plan(
            &[&done, &failed, &running, &later, &respec],
            &settings,
            Some(20 << 30),
            9_000,
        );
        assert_eq!(run.keep_builds, vec!["running", "later", "respec"]);
        assert_eq!(run.in_use_since, 2_000);
        assert_eq!(run.max_age, 7 * 24 * 3600);
        assert_eq!(run.max_bytes, Some((20u64 << 30) / 100 * 80));
        let idle = plan(&[&done], &settings, None, 9_000);
        assert_eq!(
            (idle.in_use_since, idle.keep_builds.len(), idle.max_bytes),
            (9_000, 0, None)
        );
    }

    #[test]
    fn quantities_of_bytes() {
        assert_eq!(parse_bytes("20Gi"), Some(20 << 30));
        assert_eq!(parse_bytes("500M"), Some(500_000_000));
        assert_eq!(parse_bytes("1073741824"), Some(1 << 30));
        assert_eq!(parse_bytes("1.5Gi"), None);
        assert_eq!(parse_bytes("Gi"), None);
    }

    #[test]
    fn a_claims_pod_names_it_by_hash_and_passes_the_plan() {
        let run = GcRun {
            in_use_since: 5,
            max_age: 60,
            max_bytes: Some(100),
            keep_builds: vec!["u1".into()],
        };
        let pod = pods::cache_gc_pod("a-very-long-claim-name.with.dots", "op@sha256:x", &run, 77);
        let name = pod.name_any();
        assert!(
            name.starts_with("stagecoach-gc-") && name.ends_with("-77") && name.len() < 63,
            "{name}"
        );
        let spec = serde_json::to_value(pod.spec.unwrap()).unwrap();
        let command: Vec<String> =
            serde_json::from_value(spec["containers"][0]["command"].clone()).unwrap();
        assert_eq!(
            command[1..],
            [
                "gc",
                "--cache",
                "/cache",
                "--in-use-since",
                "5",
                "--max-age",
                "60",
                "--max-bytes",
                "100",
                "--keep-build",
                "u1"
            ]
        );
        assert_eq!(
            spec["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "a-very-long-claim-name.with.dots"
        );
        assert_eq!(
            pod.metadata.labels.unwrap()[pods::LABEL_CACHE_GC],
            pods::cache_gc_id("a-very-long-claim-name.with.dots")
        );
    }
}
