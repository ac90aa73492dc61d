//! The context step for a git source: one pod per generation in the operator image
//! (`stagecoach fetch`) checks the revision out into `builds/<uid>/context` on the cache
//! volume and reports the commit as its termination message. The Dockerfile is in the
//! repository, so the controller learns it only then: the pod prints it to its log in
//! pieces and the controller reads them back, checked against the digest and size in the
//! result (the log is untrusted input like every result). Only this pod reaches the git
//! server, and only it mounts the git credentials.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt as _;
use kube::api::{Api, LogParams, PostParams};
use stagecoach_api::{GitSource, ImageBuild, Reason};
use stagecoach_protocol::job::{FetchFailure, FetchJob, FetchResult, JOB_VERSION};

use crate::pods::{self, CACHE_DIR, GIT_CREDENTIALS_DIR, Owner};
use crate::{Context, Error};

/// Where a generation's git source is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FetchState {
    /// The fetch pod has not finished.
    Running,
    /// It failed: the verdict.
    Failed(Reason, String),
    /// The revision is checked out on the cache volume.
    Fetched {
        /// The commit.
        commit: String,
        /// The Dockerfile's text.
        dockerfile: String,
    },
}

/// Starts, watches and reads the generation's fetch pod.
pub(crate) async fn drive(
    ctx: &Context,
    build: &ImageBuild,
    namespace: &str,
    git: &GitSource,
    current: &BTreeMap<String, Pod>,
) -> Result<FetchState, Error> {
    let owner = Owner::of(build);
    let key = (owner.uid.clone(), owner.generation);
    if let Some((commit, dockerfile)) = ctx.sources.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(FetchState::Fetched { commit, dockerfile });
    }
    let name = owner.fetch_object();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(pod) = current.get(&name) else {
        start(ctx, build, namespace, git, &owner).await?;
        return Ok(FetchState::Running);
    };
    let status = pod.status.clone().unwrap_or_default();
    let terminated = status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref().and_then(|s| s.terminated.clone()));
    let revision = git.revision.as_deref().unwrap_or("the default branch");
    let Some(t) = terminated else {
        if status.phase.as_deref() == Some("Failed") {
            return Ok(FetchState::Failed(
                Reason::PodFailed,
                format!(
                    "the pod fetching {} at {revision} failed: {} {}",
                    git.url,
                    status.reason.unwrap_or_default(),
                    status.message.unwrap_or_default()
                ),
            ));
        }
        return Ok(FetchState::Running);
    };
    let message = t.message.unwrap_or_default();
    if t.exit_code != 0 {
        return Ok(match serde_json::from_str::<FetchFailure>(&message) {
            Ok(f) => {
                let reason = match f.reason.parse::<Reason>() {
                    Ok(r @ (Reason::InvalidDockerfile | Reason::SourceFetchFailed)) => r,
                    _ => Reason::SourceFetchFailed,
                };
                FetchState::Failed(reason, f.message)
            }
            Err(_) => FetchState::Failed(
                Reason::SourceFetchFailed,
                format!(
                    "fetching {} at {revision} failed (exit code {}): {}",
                    git.url,
                    t.exit_code,
                    message.trim()
                ),
            ),
        });
    }
    let forged = |what: &str| {
        FetchState::Failed(
            Reason::SourceFetchFailed,
            format!("the fetch pod {name} reported {what}"),
        )
    };
    let Ok(result) = serde_json::from_str::<FetchResult>(&message) else {
        return Ok(forged("no readable result"));
    };
    if result.commit.len() < 40 || !result.commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(forged("a commit that is not a commit id"));
    }
    let log = pods_api
        .logs(
            &name,
            &LogParams {
                container: Some("fetch".into()),
                ..LogParams::default()
            },
        )
        .await
        .map_err(|source| Error::Fetch {
            what: format!("the log of pod {name}"),
            source,
        })?;
    let Some(dockerfile) = stagecoach_protocol::job::dockerfile_from_log(&log, &result) else {
        return Ok(forged(
            "a Dockerfile in its log that does not match its digest",
        ));
    };
    if let Ok(mut m) = ctx.sources.lock() {
        m.insert(key, (result.commit.clone(), dockerfile.clone()));
    }
    Ok(FetchState::Fetched {
        commit: result.commit,
        dockerfile,
    })
}

async fn start(
    ctx: &Context,
    build: &ImageBuild,
    namespace: &str,
    git: &GitSource,
    owner: &Owner,
) -> Result<(), Error> {
    let job = FetchJob {
        version: JOB_VERSION,
        url: git.url.clone(),
        revision: git.revision.clone(),
        sub_path: git
            .sub_path
            .as_deref()
            .unwrap_or_default()
            .trim_matches('/')
            .to_string(),
        dockerfile: build.spec.dockerfile.clone(),
        dest: std::path::Path::new(CACHE_DIR).join(crate::run::context_sub_path(owner)),
        credentials: git.secret_ref.as_ref().map(|_| GIT_CREDENTIALS_DIR.into()),
        max_bytes: ctx.settings.max_context_bytes,
    };
    let (map, pod) = pods::fetch_pod(
        owner,
        &ctx.settings.operator_image,
        crate::run::cache_claim(ctx, build),
        &job,
        git.secret_ref.as_ref().map(|s| s.name.as_str()),
    );
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    crate::run::create_or_keep(&maps, &map).await?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    match pods_api.create(&PostParams::default(), &pod).await {
        Ok(_) => {
            tracing::info!(pod = pod.name_any().as_str(), "fetch pod created");
            crate::publish(
                ctx,
                build,
                kube::runtime::events::EventType::Normal,
                "Fetching",
                &format!(
                    "{} at {}: pod {}",
                    git.url,
                    git.revision.as_deref().unwrap_or("the default branch"),
                    pod.name_any()
                ),
            )
            .await;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(source) => Err(Error::Apply {
            what: "create the fetch pod".into(),
            source,
        }),
    }
}
