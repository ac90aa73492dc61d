//! The validate step: everything about a spec that can be decided without a pod, pure. A
//! spec that passed the API server's schema can still be unusable (a Dockerfile that does not
//! parse, a target the Dockerfile lacks, an image reference that does not parse, a
//! `RUN --mount` a builder pod cannot provide, a missing Secret or ConfigMap key); each such
//! [`SpecError`] is final for its generation: the build fails at once with its reason, no pod
//! is created, and nothing is retried until the spec changes.

use std::collections::BTreeMap;

use stagecoach_api::{ImageBuildSpec, Reason, SourceKind};
use stagecoach_builder::image_state::ArgSource;
use stagecoach_builder::run_mounts::{self, MountNeed, MountPlanError};
use stagecoach_dockerfile::planner::{self, Plan, PlanOptions};
use stagecoach_dockerfile::{Dockerfile, PlanError};
use stagecoach_oci::registry::ImageRef;

/// What the fetch step read for validation: the referenced objects' relevant parts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    /// The ConfigMap source's data, when the source is a ConfigMap that exists.
    pub config_map: Option<BTreeMap<String, String>>,
    /// For each Secret the spec names, the keys it has (absent: the Secret does not exist).
    pub secret_keys: BTreeMap<String, Vec<String>>,
    /// Whether `spec.cache.claimName` exists (true when no claim is named).
    pub claim_exists: bool,
    /// Why the push secret's `.dockerconfigjson` does not read as registry logins.
    pub push_secret_error: Option<String>,
    /// The digest of the ConfigMap source's files (`data` and `binaryData`).
    pub config_map_digest: Option<String>,
    /// The ConfigMap source's files by path, with their digests.
    pub config_map_files: Option<BTreeMap<String, String>>,
}

/// A spec that cannot be built as it is; final until the spec changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The source or a referenced object is unusable.
    #[error("{0}")]
    Invalid(String),
    /// The Dockerfile cannot be read, parsed or planned.
    #[error("{0}")]
    Dockerfile(String),
    /// A target names no stage.
    #[error("{0}")]
    UnknownTarget(String),
}

impl SpecError {
    /// The condition reason.
    pub fn reason(&self) -> Reason {
        match self {
            SpecError::Invalid(_) => Reason::InvalidSpec,
            SpecError::Dockerfile(_) => Reason::InvalidDockerfile,
            SpecError::UnknownTarget(_) => Reason::UnknownTarget,
        }
    }
}

/// A spec that can be built.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// The Dockerfile's text, when it is known before the context is fetched (inline and
    /// ConfigMap sources; a git source's is read from the fetched context).
    pub dockerfile: Option<String>,
    /// Its plan, with it.
    pub plan: Option<Plan>,
}

/// Validates `spec` against what the fetch step read.
pub fn validate(spec: &ImageBuildSpec, fetched: &Fetched) -> Result<Validated, SpecError> {
    let invalid = |m: String| SpecError::Invalid(m);
    for image in spec
        .image
        .iter()
        .chain(spec.targets.iter().filter_map(|t| t.image.as_ref()))
    {
        ImageRef::parse(image).map_err(|e| invalid(format!("image {image:?}: {e}")))?;
    }
    if let Some(push) = &spec.push_secret {
        match fetched.secret_keys.get(&push.name) {
            None => {
                return Err(invalid(format!(
                    "spec.pushSecret: Secret {:?} does not exist in this namespace",
                    push.name
                )));
            }
            Some(keys) if !keys.iter().any(|k| k == ".dockerconfigjson") => {
                return Err(invalid(format!(
                    "spec.pushSecret: Secret {:?} has no key \".dockerconfigjson\" (it must be of type kubernetes.io/dockerconfigjson, e.g. from kubectl create secret docker-registry)",
                    push.name
                )));
            }
            Some(_) => {}
        }
        if let Some(error) = &fetched.push_secret_error {
            return Err(invalid(format!(
                "spec.pushSecret: Secret {:?}: {error}",
                push.name
            )));
        }
    }
    for secret in &spec.secrets {
        let reference = &secret.secret_key_ref;
        match fetched.secret_keys.get(&reference.name) {
            None => {
                return Err(invalid(format!(
                    "spec.secrets[{}]: Secret {:?} does not exist in this namespace",
                    secret.id, reference.name
                )));
            }
            Some(keys) if !keys.contains(&reference.key) => {
                return Err(invalid(format!(
                    "spec.secrets[{}]: Secret {:?} has no key {:?}",
                    secret.id, reference.name, reference.key
                )));
            }
            Some(_) => {}
        }
    }
    if let Some(cache) = &spec.cache
        && !fetched.claim_exists
    {
        return Err(invalid(format!(
            "spec.cache.claimName: PersistentVolumeClaim {:?} does not exist in this namespace",
            cache.claim_name
        )));
    }
    let text = match spec.source.kind().map_err(|e| invalid(e.to_string()))? {
        SourceKind::Git(git) => {
            validate_git(git, fetched)?;
            None
        }
        SourceKind::Inline(inline) => Some({
            for path in inline.files.keys() {
                check_inline_path(path)?;
            }
            inline
                .dockerfile
                .clone()
                .or_else(|| inline.files.get(&spec.dockerfile).cloned())
                .ok_or_else(|| {
                    SpecError::Dockerfile(format!(
                        "source.inline has no Dockerfile: neither source.inline.dockerfile nor source.inline.files[{:?}]",
                        spec.dockerfile
                    ))
                })?
        }),
        SourceKind::ConfigMap(source) => {
            let data = fetched.config_map.as_ref().ok_or_else(|| {
                invalid(format!(
                    "source.configMap: ConfigMap {:?} does not exist in this namespace",
                    source.name
                ))
            })?;
            Some(data.get(&spec.dockerfile).cloned().ok_or_else(|| {
                SpecError::Dockerfile(format!(
                    "ConfigMap {:?} has no key {:?} (spec.dockerfile)",
                    source.name, spec.dockerfile
                ))
            })?)
        }
    };
    let plan = match &text {
        Some(text) => Some(plan_dockerfile(spec, text)?),
        None => None,
    };
    Ok(Validated {
        dockerfile: text,
        plan,
    })
}

/// An inline file's path becomes a path in the build context: relative, with no `..` part
/// (the schema cannot bound map keys, and the API server would refuse the pod instead).
fn check_inline_path(path: &str) -> Result<(), SpecError> {
    let problem = if path.is_empty() {
        Some("is empty")
    } else if path.starts_with('/') {
        Some("is absolute")
    } else if path.split('/').any(|part| part == "..") {
        Some("contains a \"..\" part")
    } else if path.split('/').any(str::is_empty) {
        Some("has an empty part")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(SpecError::Invalid(format!(
            "spec.source.inline.files[{path:?}]: the path {problem}; give a relative path inside the build context, like \"src/main.go\""
        ))),
        None => Ok(()),
    }
}

/// The transports a fetch pod speaks.
const GIT_SCHEMES: [&str; 3] = ["https://", "http://", "git://"];

fn validate_git(git: &stagecoach_api::GitSource, fetched: &Fetched) -> Result<(), SpecError> {
    if !GIT_SCHEMES.iter().any(|s| git.url.starts_with(s)) {
        return Err(SpecError::Invalid(format!(
            "source.git.url {:?}: only https://, http:// and git:// repositories can be fetched (ssh is not supported yet)",
            git.url
        )));
    }
    if let Some(secret) = &git.secret_ref {
        match fetched.secret_keys.get(&secret.name) {
            None => {
                return Err(SpecError::Invalid(format!(
                    "source.git.secretRef: Secret {:?} does not exist in this namespace",
                    secret.name
                )));
            }
            Some(keys) => {
                for key in ["username", "password"] {
                    if !keys.iter().any(|k| k == key) {
                        return Err(SpecError::Invalid(format!(
                            "source.git.secretRef: Secret {:?} has no key {key:?} (a kubernetes.io/basic-auth Secret has username and password)",
                            secret.name
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Parses and plans the Dockerfile for the spec's targets, and checks that every needed
/// stage's RUN mounts are ones a builder pod can provide.
pub fn plan_dockerfile(spec: &ImageBuildSpec, text: &str) -> Result<Plan, SpecError> {
    let dockerfile =
        Dockerfile::parse(text).map_err(|e| SpecError::Dockerfile(format!("Dockerfile: {e}")))?;
    let options = PlanOptions {
        targets: spec.targets.iter().map(|t| t.stage.clone()).collect(),
        build_args: spec.build_args.clone(),
        ..PlanOptions::default()
    };
    let plan = planner::plan(&dockerfile, &options).map_err(|e| match e {
        PlanError::UnknownTarget { .. } => SpecError::UnknownTarget(e.to_string()),
        other => SpecError::Dockerfile(format!("Dockerfile: {other}")),
    })?;
    let needed = plan.waves.iter().flatten().count();
    if needed > stagecoach_api::bounds::MAX_STAGES as usize {
        return Err(SpecError::Dockerfile(format!(
            "Dockerfile: the targets need {needed} stages; the status reports at most {}",
            stagecoach_api::bounds::MAX_STAGES
        )));
    }
    let global = planner::global_env(&dockerfile, &options)
        .map_err(|e| SpecError::Dockerfile(format!("Dockerfile: {e}")))?;
    let args = ArgSource {
        build_args: spec.build_args.clone(),
        global,
    };
    for &index in plan.waves.iter().flatten() {
        let stage = &dockerfile.stages[index];
        // Without the base image's config here a relative target may still move (its
        // WORKDIR); what a pod cannot provide at all does not depend on that.
        let steps = run_mounts::stage_mounts(&stage.instructions, dockerfile.escape, None, &args)
            .map_err(|e| match e {
            MountPlanError::Unsupported { .. } => {
                SpecError::Dockerfile(format!("Dockerfile: {e} in a builder pod"))
            }
            MountPlanError::State { .. } => SpecError::Dockerfile(format!("Dockerfile: {e}")),
        })?;
        let is_stage = |from: &str| {
            from.parse::<usize>().is_ok()
                || plan
                    .stages
                    .iter()
                    .any(|s| s.name.as_deref() == Some(from.to_ascii_lowercase().as_str()))
        };
        for step in steps {
            for need in &step.mounts {
                // Without the secret the step would fail after its stage's pod started;
                // the spec says so already.
                if let MountNeed::Secret {
                    id, required: true, ..
                } = need
                    && !spec.secrets.iter().any(|s| &s.id == id)
                {
                    return Err(SpecError::Invalid(format!(
                        "Dockerfile: line {}: RUN --mount=type=secret,id={id},required=true needs a build secret, but spec.secrets has no id {id:?}; add one (id and secretKeyRef)",
                        step.line
                    )));
                }
                if let MountNeed::Bind {
                    from: Some(from), ..
                } = need
                    && !is_stage(from)
                {
                    return Err(SpecError::Dockerfile(format!(
                        "Dockerfile: line {}: RUN --mount=from={from} (an image) is not supported in a builder pod yet; name it as a stage instead (FROM {from} AS files) and mount from that stage",
                        step.line
                    )));
                }
                if let MountNeed::Bind {
                    readonly: false,
                    target,
                    ..
                } = need
                {
                    return Err(SpecError::Dockerfile(format!(
                        "Dockerfile: line {}: RUN --mount=type=bind,rw (at {target}) is not supported in a builder pod: its writes would reach the shared source",
                        step.line
                    )));
                }
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagecoach_api::{
        BuildSecret, ConfigMapSource, InlineSource, SecretKeyReference, SecretReference, Source,
        Target,
    };

    fn inline(dockerfile: &str) -> ImageBuildSpec {
        ImageBuildSpec {
            source: Source {
                inline: Some(InlineSource {
                    dockerfile: Some(dockerfile.to_string()),
                    files: BTreeMap::new(),
                }),
                ..Source::default()
            },
            dockerfile: "Dockerfile".into(),
            ..ImageBuildSpec::default()
        }
    }

    fn ok() -> Fetched {
        Fetched {
            claim_exists: true,
            ..Fetched::default()
        }
    }

    #[test]
    fn mounting_from_an_image_is_refused_with_the_way_around_it_and_copying_is_not() {
        let err = validate(
            &inline("FROM busybox AS app\nRUN --mount=from=golang:1.22,target=/go true\n"),
            &ok(),
        )
        .unwrap_err();
        assert_eq!(err.reason(), Reason::InvalidDockerfile);
        let message = err.to_string();
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("FROM golang:1.22 AS files"), "{message}");
        validate(
            &inline("FROM busybox AS deps\nFROM busybox\nRUN --mount=from=deps,target=/d --mount=from=0,target=/e true\nCOPY --from=golang:1.22 /usr/local/go /go\n"),
            &ok(),
        )
        .unwrap();
    }

    #[test]
    fn git_sources_need_a_fetchable_url_and_a_complete_secret() {
        let git = |url: &str, secret: Option<&str>| ImageBuildSpec {
            source: Source {
                git: Some(stagecoach_api::GitSource {
                    url: url.into(),
                    secret_ref: secret.map(|name| SecretReference { name: name.into() }),
                    ..Default::default()
                }),
                ..Source::default()
            },
            dockerfile: "Dockerfile".into(),
            ..ImageBuildSpec::default()
        };
        // The Dockerfile is in the repository: nothing to plan yet.
        let v = validate(&git("https://git.example/app.git", None), &ok()).unwrap();
        assert!(v.plan.is_none() && v.dockerfile.is_none());
        let err = validate(&git("git@git.example:app.git", None), &ok()).unwrap_err();
        assert_eq!(err.reason(), Reason::InvalidSpec);
        assert!(err.to_string().contains("ssh is not supported"), "{err}");
        let err = validate(&git("https://git.example/app.git", Some("creds")), &ok()).unwrap_err();
        assert!(
            err.to_string().contains(r#"Secret "creds" does not exist"#),
            "{err}"
        );
        let mut fetched = ok();
        fetched
            .secret_keys
            .insert("creds".into(), vec!["username".into()]);
        let err =
            validate(&git("https://git.example/app.git", Some("creds")), &fetched).unwrap_err();
        assert!(
            err.to_string().contains(r#"has no key "password""#),
            "{err}"
        );
        fetched
            .secret_keys
            .insert("creds".into(), vec!["username".into(), "password".into()]);
        validate(&git("https://git.example/app.git", Some("creds")), &fetched).unwrap();
    }

    #[test]
    fn inline_file_paths_must_stay_inside_the_context() {
        for (path, problem) in [
            ("/etc/passwd", "is absolute"),
            ("../up", "contains a \"..\" part"),
            ("a/../../b", "contains a \"..\" part"),
            ("a//b", "has an empty part"),
            ("", "is empty"),
        ] {
            let mut spec = inline("FROM scratch\n");
            if let Some(inline) = spec.source.inline.as_mut() {
                inline.files.insert(path.into(), "x".into());
            }
            let err = validate(&spec, &ok()).unwrap_err();
            assert_eq!(err.reason(), Reason::InvalidSpec, "{path}");
            let message = err.to_string();
            assert!(
                message.contains(&format!("spec.source.inline.files[{path:?}]"))
                    && message.contains(problem),
                "{path}: {message}"
            );
        }
        let mut spec = inline("FROM scratch\nCOPY src/main.go ./.. /\n");
        if let Some(inline) = spec.source.inline.as_mut() {
            inline.files.insert("src/main.go".into(), "x".into());
            inline.files.insert("./a..b".into(), "x".into());
        }
        validate(&spec, &ok()).unwrap();
    }

    #[test]
    fn a_required_secret_must_be_in_spec_secrets() {
        let dockerfile = "FROM busybox\nRUN true\nRUN --mount=type=secret,id=token,required=true cat /run/secrets/token\n";
        let err = validate(&inline(dockerfile), &ok()).unwrap_err();
        assert_eq!(err.reason(), Reason::InvalidSpec);
        let message = err.to_string();
        assert!(
            message.contains("line 3") && message.contains(r#"spec.secrets has no id "token""#),
            "{message}"
        );
        // Not required: the step runs without the file, as in BuildKit.
        validate(
            &inline("FROM busybox\nRUN --mount=type=secret,id=token true\n"),
            &ok(),
        )
        .unwrap();
    }

    #[test]
    fn a_good_inline_build_is_planned() {
        let v = validate(
            &inline("FROM busybox AS a\nRUN true\nFROM scratch\nCOPY --from=a /x /x\n"),
            &ok(),
        )
        .unwrap();
        let plan = v.plan.unwrap();
        assert_eq!(plan.targets, [1]);
        assert_eq!(plan.waves, [vec![0], vec![1]]);
    }

    #[test]
    fn each_spec_error_has_its_reason() {
        let cases: Vec<(ImageBuildSpec, Fetched, Reason, &str)> = vec![
            (inline("FROM\n"), ok(), Reason::InvalidDockerfile, "line 1"),
            (
                ImageBuildSpec {
                    targets: vec![Target {
                        stage: "prod".into(),
                        image: None,
                    }],
                    ..inline("FROM scratch AS test\n")
                },
                ok(),
                Reason::UnknownTarget,
                "prod",
            ),
            (
                ImageBuildSpec {
                    image: Some("Bad Image".into()),
                    ..inline("FROM scratch\n")
                },
                ok(),
                Reason::InvalidSpec,
                "Bad Image",
            ),
            (
                ImageBuildSpec {
                    push_secret: Some(SecretReference {
                        name: "regcred".into(),
                    }),
                    ..inline("FROM scratch\n")
                },
                ok(),
                Reason::InvalidSpec,
                "\"regcred\" does not exist",
            ),
            (
                ImageBuildSpec {
                    push_secret: Some(SecretReference {
                        name: "regcred".into(),
                    }),
                    ..inline("FROM scratch\n")
                },
                Fetched {
                    secret_keys: [("regcred".to_string(), vec!["token".to_string()])].into(),
                    ..ok()
                },
                Reason::InvalidSpec,
                "kubernetes.io/dockerconfigjson",
            ),
            (
                ImageBuildSpec {
                    push_secret: Some(SecretReference {
                        name: "regcred".into(),
                    }),
                    ..inline("FROM scratch\n")
                },
                Fetched {
                    secret_keys: [("regcred".to_string(), vec![".dockerconfigjson".to_string()])]
                        .into(),
                    push_secret_error: Some("not a docker config.json document".into()),
                    ..ok()
                },
                Reason::InvalidSpec,
                "not a docker config.json document",
            ),
            (
                ImageBuildSpec {
                    secrets: vec![BuildSecret {
                        id: "npm".into(),
                        secret_key_ref: SecretKeyReference {
                            name: "npm".into(),
                            key: ".npmrc".into(),
                        },
                    }],
                    ..inline("FROM scratch\n")
                },
                Fetched {
                    secret_keys: [("npm".to_string(), vec!["token".to_string()])].into(),
                    ..ok()
                },
                Reason::InvalidSpec,
                "has no key \".npmrc\"",
            ),
            (
                ImageBuildSpec {
                    source: Source {
                        config_map: Some(ConfigMapSource { name: "ctx".into() }),
                        ..Source::default()
                    },
                    ..inline("")
                },
                ok(),
                Reason::InvalidSpec,
                "ConfigMap \"ctx\" does not exist",
            ),
            (
                inline("FROM busybox\nRUN --mount=type=bind,source=.,target=/src,rw true\n"),
                ok(),
                Reason::InvalidDockerfile,
                "line 2: RUN --mount=type=bind,rw",
            ),
            (
                inline("FROM busybox\nRUN --mount=type=ssh true\n"),
                ok(),
                Reason::InvalidDockerfile,
                "type=ssh",
            ),
        ];
        for (spec, fetched, reason, needle) in cases {
            let err = validate(&spec, &fetched).unwrap_err();
            assert_eq!(err.reason(), reason, "{err}");
            assert!(err.to_string().contains(needle), "{needle:?} not in {err}");
        }
    }

    #[test]
    fn a_config_map_source_reads_the_dockerfile_key() {
        let spec = ImageBuildSpec {
            source: Source {
                config_map: Some(ConfigMapSource { name: "ctx".into() }),
                ..Source::default()
            },
            dockerfile: "build/Dockerfile".into(),
            ..ImageBuildSpec::default()
        };
        let mut fetched = ok();
        fetched.config_map =
            Some([("Dockerfile".to_string(), "FROM scratch\n".to_string())].into());
        let err = validate(&spec, &fetched).unwrap_err();
        assert_eq!(err.reason(), Reason::InvalidDockerfile);
        assert!(
            err.to_string().contains("no key \"build/Dockerfile\""),
            "{err}"
        );
        fetched.config_map =
            Some([("build/Dockerfile".to_string(), "FROM scratch\n".to_string())].into());
        assert!(validate(&spec, &fetched).unwrap().plan.is_some());
    }
}
