//! `stagecoach logs`: the logs of every pod of a build's current generation (the fetch pod,
//! each stage's pods, retries included, and the push pods) in the order they were made, each
//! line prefixed by what the pod did (`[fetch]`, `[<stage>]`, `[push <image>]`). With
//! `--follow` it streams the running pods, picks up pods as the controller makes them, and
//! returns when the build has its verdict and every stream has ended. It talks to the API
//! server only; the builder pods' logs are the build's logs, so nothing else keeps them.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::{AsyncBufReadExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};
use kube::{Client, ResourceExt as _};
use stagecoach_api::{ConditionStatus, ImageBuild};

use crate::pods::{LABEL_ATTEMPT, LABEL_BUILD, LABEL_COMPONENT, LABEL_GENERATION};

/// What to show.
#[derive(Debug, Clone)]
pub struct LogsOptions {
    /// The ImageBuild's name.
    pub build: String,
    /// Its namespace; the kubeconfig context's when absent.
    pub namespace: Option<String>,
    /// Stream until the build ends.
    pub follow: bool,
}

/// Why the logs could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// No kubeconfig and no in-cluster configuration, or the API server is unreachable.
    #[error("cannot connect to the Kubernetes API (kubeconfig or in-cluster config): {0}")]
    Connect(#[source] kube::Error),
    /// The ImageBuild does not exist.
    #[error("imagebuild {namespace}/{build} not found")]
    NotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        build: String,
    },
    /// The build's pods are gone.
    #[error(
        "the pods of imagebuild {namespace}/{build} (generation {generation}) are gone: the controller deletes them --pod-retention after the build ends and when the spec changes; status.stages[].message keeps each failed stage's log tail (kubectl describe imagebuild {build})"
    )]
    PodsGone {
        /// Its namespace.
        namespace: String,
        /// Its name.
        build: String,
        /// The generation asked about.
        generation: i64,
    },
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was asked.
        what: String,
        /// The API's answer.
        source: kube::Error,
    },
}

/// Connects with the kubeconfig and prints the build's logs to standard output.
pub fn main(options: &LogsOptions) -> Result<(), LogsError> {
    let runtime = crate::runtime().map_err(LogsError::Runtime)?;
    runtime.block_on(async {
        let client = Client::try_default().await.map_err(LogsError::Connect)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let printer = tokio::spawn(async move {
            use std::io::Write as _;
            let mut out = std::io::stdout();
            while let Some(line) = rx.recv().await {
                // A closed pipe (`| head`) ends the printing, not the program with a panic.
                if writeln!(out, "{line}").is_err() {
                    break;
                }
            }
        });
        let result = run(client, options, tx).await;
        let _ = printer.await;
        result
    })
}

/// Sends the build's log lines, prefixed, to `out`.
pub async fn run(
    client: Client,
    options: &LogsOptions,
    out: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<(), LogsError> {
    let namespace = options
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let builds: Api<ImageBuild> = Api::namespaced(client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let api = |what: String| move |source| LogsError::Api { what, source };
    let build = builds
        .get_opt(&options.build)
        .await
        .map_err(api(format!("reading imagebuild {}", options.build)))?
        .ok_or_else(|| LogsError::NotFound {
            namespace: namespace.clone(),
            build: options.build.clone(),
        })?;
    let generation = build.metadata.generation.unwrap_or(0);
    let selector = format!(
        "{LABEL_BUILD}={},{LABEL_GENERATION}={generation}",
        options.build
    );
    let mut seen = BTreeSet::new();
    let mut streams = tokio::task::JoinSet::new();
    loop {
        // The verdict before the listing: once it is there no pod is made, so this listing
        // holds every pod the build will have.
        let finished = finished(&builds, &options.build, generation).await?;
        let mut listed = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(api(format!("listing the pods of {}", options.build)))?
            .items;
        listed.sort_by(|a, b| {
            (a.creation_timestamp(), a.name_any()).cmp(&(b.creation_timestamp(), b.name_any()))
        });
        if seen.is_empty() && listed.is_empty() && (finished || !options.follow) {
            if finished {
                return Err(LogsError::PodsGone {
                    namespace,
                    build: options.build.clone(),
                    generation,
                });
            }
            let _ = out.send(format!(
                "imagebuild {namespace}/{} has no pods yet (generation {generation})",
                options.build
            ));
            return Ok(());
        }
        for pod in listed {
            if !seen.insert(pod.name_any()) {
                continue;
            }
            let prefix = prefix(&pod);
            if options.follow {
                let (pods, out) = (pods.clone(), out.clone());
                streams.spawn(async move { follow(&pods, &pod, &prefix, &out).await });
            } else {
                for container in containers(&pod) {
                    let text = pods
                        .logs(
                            &pod.name_any(),
                            &LogParams {
                                container: Some(container.clone()),
                                ..LogParams::default()
                            },
                        )
                        .await
                        .unwrap_or_default();
                    for line in text.lines() {
                        let _ = out.send(format!("[{prefix}] {line}"));
                    }
                }
            }
        }
        if !options.follow {
            return Ok(());
        }
        // Done when the build has its verdict and every pod's stream has ended.
        while streams.try_join_next().is_some() {}
        if finished && streams.is_empty() {
            return Ok(());
        }
        // New pods and the verdict are looked for once a second.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether the generation has its verdict.
async fn finished(
    builds: &Api<ImageBuild>,
    name: &str,
    generation: i64,
) -> Result<bool, LogsError> {
    let build = builds
        .get_opt(name)
        .await
        .map_err(|source| LogsError::Api {
            what: format!("reading imagebuild {name}"),
            source,
        })?;
    // A deleted build has no more pods to come.
    let Some(build) = build else {
        return Ok(true);
    };
    Ok(build.status.as_ref().is_some_and(|s| {
        s.observed_generation == Some(generation)
            && s.succeeded()
                .is_some_and(|c| c.status != ConditionStatus::Unknown.as_str())
    }))
}

/// What a line of this pod is prefixed with.
fn prefix(pod: &Pod) -> String {
    let labels = pod.labels();
    let annotations = pod.annotations();
    if let Some(stage) = annotations.get("stagecoach.dev/stage-name") {
        return match labels.get(LABEL_ATTEMPT).map(String::as_str) {
            None | Some("0") => stage.clone(),
            Some(n) => {
                let attempt: u32 = n.parse().unwrap_or(0);
                format!("{stage} (try {})", attempt.saturating_add(1))
            }
        };
    }
    if let Some(n) = labels.get("stagecoach.dev/push") {
        return format!("push {n}");
    }
    labels
        .get(LABEL_COMPONENT)
        .cloned()
        .unwrap_or_else(|| pod.name_any())
}

/// The pod's containers in the order they run: init containers first.
fn containers(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .chain(spec.map(|s| s.containers.iter()).into_iter().flatten())
        .map(|c| c.name.clone())
        .collect()
}

/// Whether the pod's container `name` runs or has run (its log exists).
fn started(pod: &Pod, name: &str) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .filter(|c| c.name == name)
        .filter_map(|c| c.state.as_ref())
        .any(|s| s.running.is_some() || s.terminated.is_some())
}

/// Streams one pod's containers in order, waiting for each to start.
async fn follow(
    pods: &Api<Pod>,
    pod: &Pod,
    prefix: &str,
    out: &tokio::sync::mpsc::UnboundedSender<String>,
) {
    let name = pod.name_any();
    for container in containers(pod) {
        // A container that has not started has no log yet: ask again until it has one, or
        // until the pod is gone or done without it. Not by trying the stream: for a pod not
        // yet on a node the API server answers with an empty stream, not an error, and the
        // container's lines would be missed.
        let stream = loop {
            let Ok(Some(now)) = pods.get_opt(&name).await else {
                break None;
            };
            let ended = now.metadata.deletion_timestamp.is_some()
                || matches!(
                    now.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                );
            if !started(&now, &container) {
                if ended {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            let params = LogParams {
                container: Some(container.clone()),
                follow: true,
                ..LogParams::default()
            };
            match pods.log_stream(&name, &params).await {
                Ok(stream) => break Some(stream),
                Err(_) if !ended => tokio::time::sleep(Duration::from_millis(500)).await,
                Err(_) => break None,
            }
        };
        let Some(stream) = stream else {
            // The pod ended while its stream could not be opened: what it logged is still
            // there to read in one piece.
            let params = LogParams {
                container: Some(container.clone()),
                ..LogParams::default()
            };
            if let Ok(text) = pods.logs(&name, &params).await {
                for line in text.lines() {
                    if out.send(format!("[{prefix}] {line}")).is_err() {
                        return;
                    }
                }
            }
            continue;
        };
        let mut lines = stream.lines();
        while let Some(Ok(line)) = lines.next().await {
            if out.send(format!("[{prefix}] {line}")).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "status": status}))
            .unwrap()
    }

    #[test]
    fn a_container_has_a_log_once_it_runs_or_ran() {
        let state = |s: serde_json::Value| {
            serde_json::json!([{"name": "stage", "image": "i",
            "imageID": "", "ready": false, "restartCount": 0, "state": s}])
        };
        // Not on a node yet: no statuses (the API server would stream nothing, no error).
        assert!(!started(
            &pod(serde_json::json!({"phase": "Pending"})),
            "stage"
        ));
        let waiting = pod(serde_json::json!({"phase": "Pending",
            "containerStatuses": state(serde_json::json!({"waiting": {"reason": "PodInitializing"}}))}));
        assert!(!started(&waiting, "stage"));
        let running = pod(serde_json::json!({"phase": "Running",
            "containerStatuses": state(serde_json::json!({"running": {}}))}));
        assert!(started(&running, "stage"));
        assert!(!started(&running, "prepare"), "another container");
        let done = pod(serde_json::json!({"phase": "Succeeded",
            "initContainerStatuses": state(serde_json::json!({"terminated": {"exitCode": 0}}))}));
        assert!(started(&done, "stage"));
    }
}
