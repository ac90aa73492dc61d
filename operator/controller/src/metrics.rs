//! The controller's operations endpoints: `/metrics` (Prometheus text format), `/healthz`
//! (the process answers) and `/readyz` (the ImageBuild API was listed and the watch runs).
//! Metric labels are the stable condition reasons, so a dashboard and an alert can use the
//! same words as `kubectl get ib`. Counts are observed where the controller writes a status
//! that says something new (a verdict, a stage that finished), so a reconcile that changes
//! nothing counts nothing; counters start at zero with each controller process, as
//! Prometheus expects.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use stagecoach_api::{ImageBuildStatus, StageState};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A build's verdict.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// `True` or `False`: the Succeeded condition's status.
    pub succeeded: String,
    /// The condition's reason.
    pub reason: String,
}

/// A reconcile error's stable reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`crate::Error::reason`].
    pub reason: String,
}

/// A finished stage's state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `Succeeded` or `Failed`.
    pub state: String,
}

/// Everything the controller counts.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    builds: Family<VerdictLabels, Counter>,
    build_seconds: Family<VerdictLabels, Histogram>,
    stage_seconds: Family<StageLabels, Histogram>,
    cache_hits: Counter,
    cache_misses: Counter,
    pushed_bytes: Counter,
    reconcile_errors: Family<ErrorLabels, Counter>,
    ready: AtomicBool,
}

fn duration_histogram() -> Histogram {
    // 0.5 s to about 4.5 hours.
    Histogram::new(exponential_buckets(0.5, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("stagecoach");
        let builds = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "builds",
            "Builds that got their verdict, by the Succeeded condition's status and reason",
            builds.clone(),
        );
        let build_seconds =
            Family::<VerdictLabels, Histogram>::new_with_constructor(duration_histogram);
        registry.register(
            "build_duration_seconds",
            "From a generation's start to its verdict",
            build_seconds.clone(),
        );
        let stage_seconds =
            Family::<StageLabels, Histogram>::new_with_constructor(duration_histogram);
        registry.register(
            "stage_duration_seconds",
            "From a stage container's start to its end",
            stage_seconds.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "cache_hits",
            "Instructions of finished stages taken from the layer cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "cache_misses",
            "Instructions of finished stages that ran",
            cache_misses.clone(),
        );
        let pushed_bytes = Counter::default();
        registry.register(
            "pushed_bytes",
            "Bytes of the images pushed (manifest, config and layers)",
            pushed_bytes.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and were retried, by reason",
            reconcile_errors.clone(),
        );
        Metrics {
            registry,
            builds,
            build_seconds,
            stage_seconds,
            cache_hits,
            cache_misses,
            pushed_bytes,
            reconcile_errors,
            ready: AtomicBool::new(false),
        }
    }
}

/// What one status write says that the previous status did not, for counting.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Change {
    /// A new verdict: the Succeeded status and reason, and the build's seconds.
    pub verdict: Option<(String, String, Option<f64>)>,
    /// Stages that finished: their state and seconds.
    pub stages: Vec<(StageState, Option<f64>)>,
    /// Cache hits and misses of stages that succeeded.
    pub hits: u64,
    /// Instructions that ran in stages that succeeded.
    pub misses: u64,
    /// Bytes pushed, with a successful verdict.
    pub pushed_bytes: u64,
}

fn seconds(
    start: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    end: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) -> Option<f64> {
    let (start, end) = (start?, end?);
    let span = end.0.duration_since(start.0);
    Some(span.as_secs_f64()).filter(|s| *s >= 0.0)
}

/// What `status` adds to `previous`: pure, so it is tested without a server. `steps` gives,
/// per stage name, the instructions of a stage that succeeded (from its result).
pub fn change(
    previous: Option<&ImageBuildStatus>,
    status: &ImageBuildStatus,
    steps: &std::collections::BTreeMap<String, u64>,
) -> Change {
    let mut change = Change::default();
    let same_generation =
        previous.and_then(|p| p.observed_generation) == status.observed_generation;
    let old = previous.filter(|_| same_generation);
    let had_verdict = old
        .and_then(ImageBuildStatus::succeeded)
        .is_some_and(|c| c.status != "Unknown");
    if let Some(c) = status.succeeded()
        && c.status != "Unknown"
        && !had_verdict
    {
        change.verdict = Some((
            c.status.clone(),
            c.reason.clone(),
            seconds(status.start_time.as_ref(), status.completion_time.as_ref()),
        ));
        if c.status == "True" {
            change.pushed_bytes = status
                .images
                .iter()
                .filter_map(|i| u64::try_from(i.size.unwrap_or(0)).ok())
                .sum();
        }
    }
    for stage in &status.stages {
        if !matches!(stage.state, StageState::Succeeded | StageState::Failed) {
            continue;
        }
        let was = old
            .and_then(|p| p.stages.iter().find(|s| s.name == stage.name))
            .map(|s| s.state);
        if was == Some(stage.state) {
            continue;
        }
        change.stages.push((
            stage.state,
            seconds(stage.start_time.as_ref(), stage.finish_time.as_ref()),
        ));
        if stage.state == StageState::Succeeded {
            let hits = u64::try_from(stage.cache_hits.unwrap_or(0)).unwrap_or(0);
            change.hits += hits;
            change.misses += steps.get(&stage.name).map_or(0, |n| n.saturating_sub(hits));
        }
    }
    change
}

impl Metrics {
    /// Counts what a status write says that is new.
    pub fn observe(&self, change: &Change) {
        if let Some((succeeded, reason, seconds)) = &change.verdict {
            let labels = VerdictLabels {
                succeeded: succeeded.clone(),
                reason: reason.clone(),
            };
            self.builds.get_or_create(&labels).inc();
            if let Some(s) = seconds {
                self.build_seconds.get_or_create(&labels).observe(*s);
            }
        }
        for (state, seconds) in &change.stages {
            let labels = StageLabels {
                state: state.as_str().to_string(),
            };
            if let Some(s) = seconds {
                self.stage_seconds.get_or_create(&labels).observe(*s);
            }
        }
        self.cache_hits.inc_by(change.hits);
        self.cache_misses.inc_by(change.misses);
        self.pushed_bytes.inc_by(change.pushed_bytes);
    }

    /// Counts a failed reconcile.
    pub fn reconcile_error(&self, reason: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The controller watches: `/readyz` answers 200 from now on.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `address` until the process ends. A small
/// HTTP/1.1 responder: each connection gets one answer and is closed, which is all a probe
/// or a scrape needs.
pub async fn serve(address: std::net::SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!(%address, "serving /metrics, /healthz and /readyz");
    loop {
        let (mut socket, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection");
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                socket.read(&mut buf),
            )
            .await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let (status, content_type, body) = respond(&buf[..n], &metrics);
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(body.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

/// The answer to a request's first line.
fn respond(request: &[u8], metrics: &Metrics) -> (&'static str, &'static str, String) {
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    const TEXT: &str = "text/plain; charset=utf-8";
    match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET", "/healthz") => ("200 OK", TEXT, "ok\n".into()),
        ("GET", "/readyz") if metrics.ready.load(Ordering::Relaxed) => {
            ("200 OK", TEXT, "ok\n".into())
        }
        ("GET", "/readyz") => ("503 Service Unavailable", TEXT, "not watching yet\n".into()),
        _ => ("404 Not Found", TEXT, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use stagecoach_api::{ImageStatus, Reason, StageStatus};

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn stage(name: &str, state: StageState, hits: i32) -> StageStatus {
        StageStatus {
            name: name.into(),
            state,
            start_time: Some(at(100)),
            finish_time: Some(at(104)),
            cache_hits: Some(hits),
            ..StageStatus::default()
        }
    }

    #[test]
    fn only_what_is_new_is_counted_and_it_is_rendered() {
        let building = crate::status::with_reason(
            None,
            1,
            Reason::Building,
            "",
            vec![stage("a", StageState::Succeeded, 1)],
            at(100),
        );
        let steps = [("a".to_string(), 3), ("b".to_string(), 2)].into();
        let first = change(None, &building, &steps);
        assert_eq!(first.verdict, None);
        assert_eq!(first.stages, vec![(StageState::Succeeded, Some(4.0))]);
        assert_eq!((first.hits, first.misses), (1, 2));
        // The same status again counts nothing.
        assert_eq!(
            change(Some(&building), &building, &steps),
            Change::default()
        );
        let mut done = crate::status::with_reason(
            Some(&building),
            1,
            Reason::Succeeded,
            "",
            vec![
                stage("a", StageState::Succeeded, 1),
                stage("b", StageState::Succeeded, 2),
            ],
            at(110),
        );
        done.images = vec![ImageStatus {
            size: Some(1000),
            ..ImageStatus::default()
        }];
        let last = change(Some(&building), &done, &steps);
        assert_eq!(
            last.verdict,
            Some(("True".into(), "Succeeded".into(), Some(10.0)))
        );
        assert_eq!(last.stages.len(), 1, "only b finished now");
        assert_eq!((last.hits, last.misses, last.pushed_bytes), (2, 0, 1000));
        assert_eq!(change(Some(&done), &done, &steps), Change::default());

        let metrics = Metrics::default();
        metrics.observe(&first);
        metrics.observe(&last);
        metrics.reconcile_error("ApplyFailed");
        let text = metrics.render();
        for want in [
            r#"stagecoach_builds_total{succeeded="True",reason="Succeeded"} 1"#,
            "stagecoach_cache_hits_total 3",
            "stagecoach_cache_misses_total 2",
            "stagecoach_pushed_bytes_total 1000",
            r#"stagecoach_reconcile_errors_total{reason="ApplyFailed"} 1"#,
            r#"stagecoach_stage_duration_seconds_count{state="Succeeded"} 2"#,
            r#"stagecoach_build_duration_seconds_sum{succeeded="True",reason="Succeeded"} 10.0"#,
        ] {
            assert!(text.contains(want), "{want} not in:\n{text}");
        }
    }

    #[test]
    fn probes_answer_by_path_and_readiness() {
        let metrics = Metrics::default();
        assert_eq!(respond(b"GET /healthz HTTP/1.1\r\n", &metrics).0, "200 OK");
        assert_eq!(
            respond(b"GET /readyz HTTP/1.1\r\n", &metrics).0,
            "503 Service Unavailable"
        );
        metrics.set_ready();
        assert_eq!(respond(b"GET /readyz HTTP/1.1\r\n", &metrics).0, "200 OK");
        let (status, kind, body) = respond(b"GET /metrics HTTP/1.1\r\n", &metrics);
        assert_eq!((status, kind.starts_with("text/plain")), ("200 OK", true));
        assert!(
            body.contains("# TYPE stagecoach_cache_hits counter"),
            "{body}"
        );
        assert_eq!(
            respond(b"POST /metrics HTTP/1.1\r\n", &metrics).0,
            "404 Not Found"
        );
    }
}
