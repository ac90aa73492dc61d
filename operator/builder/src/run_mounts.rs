//! What a stage's RUN steps mount, known before anything runs. A builder pod's runner cannot
//! mount, so the controller derives the pod's volumes from this plan (a cache mount becomes a
//! subPath of the cache volume, a secret a Secret volume, a bind a read-only subPath, a tmpfs
//! an in-memory emptyDir) and refuses, before any pod exists, a stage whose mounts a pod
//! cannot provide. The rules that turn a `--mount` into a target, a cache id or a secret id
//! live here once; the executor applies the same ones when it runs the step.
//!
//! Targets relative to WORKDIR are resolved against the WORKDIR in force at that RUN, so the
//! stage's metadata instructions (and the base image's ONBUILD triggers, which run first) are
//! replayed on an [`ImageState`] exactly as the executor replays them.

use stagecoach_dockerfile::instructions::{Instruction, Located, Mount, MountType, Sharing};
use stagecoach_dockerfile::shell::ShellLex;
use stagecoach_oci::ImageConfig;

use crate::image_state::{ArgSource, ImageState, StateError, parse_trigger};

/// One mount a RUN step needs, with its target made absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountNeed {
    /// `type=cache`: the cache volume's `mounts/<id>` at `target`.
    Cache {
        /// The cache id (default: the target).
        id: String,
        /// Where it appears.
        target: String,
        /// `ro`.
        readonly: bool,
        /// `sharing=`.
        sharing: Sharing,
    },
    /// `type=bind`: a path of the context (`from` absent) or of another stage or image.
    Bind {
        /// `from=`, as written.
        from: Option<String>,
        /// The path inside it.
        source: String,
        /// Where it appears.
        target: String,
        /// Whether writes are refused (the default); a writable bind needs a private copy.
        readonly: bool,
    },
    /// `type=tmpfs`.
    Tmpfs {
        /// Where it appears.
        target: String,
        /// `size=`, in bytes.
        size_bytes: Option<u64>,
    },
    /// `type=secret`: a file at `target` (absent for an `env=`-only secret).
    Secret {
        /// The secret id.
        id: String,
        /// Where the file appears.
        target: Option<String>,
        /// `env=`.
        env: Option<String>,
        /// `required=true`.
        required: bool,
    },
}

impl MountNeed {
    /// The target, when the mount has one in the root.
    pub fn target(&self) -> Option<&str> {
        match self {
            MountNeed::Cache { target, .. }
            | MountNeed::Bind { target, .. }
            | MountNeed::Tmpfs { target, .. } => Some(target),
            MountNeed::Secret { target, .. } => target.as_deref(),
        }
    }
}

/// The mounts of one RUN step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepMounts {
    /// The RUN's line.
    pub line: usize,
    /// Its mounts, in the order written.
    pub mounts: Vec<MountNeed>,
}

/// Why a stage's mounts cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum MountPlanError {
    /// An instruction before the RUN could not be replayed (a bad expansion).
    #[error("line {line}: {source}")]
    State {
        /// The line.
        line: usize,
        /// The cause.
        source: StateError,
    },
    /// A mount this executor cannot give (or not in this form).
    #[error("line {line}: {what} is not supported")]
    Unsupported {
        /// The line.
        line: usize,
        /// What.
        what: String,
    },
}

/// A mount target made absolute against the WORKDIR `cwd` (`/` when empty), and cleaned.
pub fn absolute_target(cwd: &str, target: &str) -> String {
    if target.starts_with('/') {
        crate::pattern::clean(target)
    } else {
        let cwd = if cwd.is_empty() { "/" } else { cwd };
        crate::pattern::clean(&format!("{cwd}/{target}"))
    }
}

/// A secret mount's id: `id=`, else the target's last component.
pub fn secret_id(mount: &Mount, target: Option<&str>) -> Option<String> {
    match (&mount.id, target) {
        (Some(id), _) => Some(id.clone()),
        (None, Some(t)) => t.rsplit('/').next().map(str::to_string),
        (None, None) => None,
    }
}

/// Where a secret's file appears when the mount names no target.
pub fn default_secret_target(id: &str) -> String {
    format!("/run/secrets/{id}")
}

/// `1024`, `64k`, `10m`, `1g` (binary units, as BuildKit's tmpfs size).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s.as_str(), 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// One `--mount` of a RUN whose WORKDIR is `cwd`.
pub fn mount_need(mount: &Mount, cwd: &str, line: usize) -> Result<MountNeed, MountPlanError> {
    let unsupported = |what: &str| MountPlanError::Unsupported {
        line,
        what: what.to_string(),
    };
    let target = mount.target.as_deref().map(|t| absolute_target(cwd, t));
    Ok(match mount.kind {
        MountType::Cache => {
            let target = target.ok_or_else(|| unsupported("a cache mount without target"))?;
            MountNeed::Cache {
                id: mount.id.clone().unwrap_or_else(|| target.clone()),
                readonly: mount.readonly.unwrap_or(false),
                sharing: mount.sharing.unwrap_or(Sharing::Shared),
                target,
            }
        }
        MountType::Bind => MountNeed::Bind {
            target: target.ok_or_else(|| unsupported("a bind mount without target"))?,
            from: mount.from.clone(),
            source: mount.source.clone().unwrap_or_else(|| "/".to_string()),
            readonly: mount.readonly.unwrap_or(true),
        },
        MountType::Tmpfs => MountNeed::Tmpfs {
            target: target.ok_or_else(|| unsupported("a tmpfs mount without target"))?,
            size_bytes: mount.size.as_deref().and_then(parse_size),
        },
        MountType::Secret => {
            let id = secret_id(mount, target.as_deref())
                .ok_or_else(|| unsupported("a secret mount without id or target"))?;
            let target = match (&target, &mount.env) {
                (Some(t), _) => Some(t.clone()),
                (None, Some(_)) => None,
                (None, None) => Some(default_secret_target(&id)),
            };
            MountNeed::Secret {
                id,
                target,
                env: mount.env.clone(),
                required: mount.required.unwrap_or(false),
            }
        }
        MountType::Ssh => return Err(unsupported("RUN --mount=type=ssh")),
    })
}

/// The mounts of every RUN of a stage, in order: the base's ONBUILD triggers first (reported
/// at the stage's first instruction, as the executor reports them), then the stage's
/// instructions, each RUN's targets resolved against the WORKDIR then in force.
pub fn stage_mounts(
    instructions: &[Located],
    escape: char,
    base: Option<&ImageConfig>,
    args: &ArgSource,
) -> Result<Vec<StepMounts>, MountPlanError> {
    let lex = ShellLex::new(escape);
    let mut state = base.map_or_else(ImageState::scratch, ImageState::from_image_config);
    let first_line = instructions.first().map_or(0, |l| l.line);
    let mut steps: Vec<(usize, Instruction)> = Vec::new();
    for trigger in state.take_onbuild_triggers() {
        let instruction = parse_trigger(&trigger).map_err(|source| MountPlanError::State {
            line: first_line,
            source,
        })?;
        steps.push((first_line, instruction));
    }
    steps.extend(instructions.iter().map(|l| (l.line, l.instruction.clone())));
    let mut out = Vec::new();
    for (line, instruction) in &steps {
        match instruction {
            Instruction::Run(run) => {
                let mounts = run
                    .mounts
                    .iter()
                    .map(|m| mount_need(m, &state.working_dir, *line))
                    .collect::<Result<Vec<_>, _>>()?;
                if !mounts.is_empty() {
                    out.push(StepMounts {
                        line: *line,
                        mounts,
                    });
                }
            }
            // These change no part of the state a mount depends on.
            Instruction::Copy(_) | Instruction::Add(_) => {}
            other => {
                state
                    .apply(&lex, other, args)
                    .map_err(|source| MountPlanError::State {
                        line: *line,
                        source,
                    })?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagecoach_dockerfile::Dockerfile;

    fn plan(text: &str, base: Option<&ImageConfig>) -> Result<Vec<StepMounts>, MountPlanError> {
        let df = Dockerfile::parse(text).unwrap();
        let args = ArgSource {
            build_args: [("DIR".to_string(), "/srv".to_string())].into(),
            global: vec![],
        };
        stage_mounts(&df.stages[0].instructions, df.escape, base, &args)
    }

    #[test]
    fn targets_follow_workdir_and_defaults_follow_buildkit() {
        let steps = plan(
            "FROM scratch\n\
             ARG DIR\n\
             WORKDIR $DIR/app\n\
             RUN --mount=type=cache,target=.cache/go --mount=type=secret,id=npm true\n\
             WORKDIR sub\n\
             RUN --mount=type=bind,source=src,target=src,rw --mount=type=tmpfs,target=/t,size=64k \
                 --mount=type=secret,id=tok,env=TOKEN --mount=type=cache,id=x,target=/c,sharing=locked,ro true\n\
             RUN true\n",
            None,
        )
        .unwrap();
        assert_eq!(steps.len(), 2, "a RUN without mounts is not listed");
        assert_eq!(steps[0].line, 4);
        assert_eq!(
            steps[0].mounts,
            [
                MountNeed::Cache {
                    id: "/srv/app/.cache/go".into(),
                    target: "/srv/app/.cache/go".into(),
                    readonly: false,
                    sharing: Sharing::Shared,
                },
                MountNeed::Secret {
                    id: "npm".into(),
                    target: Some("/run/secrets/npm".into()),
                    env: None,
                    required: false,
                },
            ]
        );
        assert_eq!(
            steps[1].mounts,
            [
                MountNeed::Bind {
                    from: None,
                    source: "src".into(),
                    target: "/srv/app/sub/src".into(),
                    readonly: false,
                },
                MountNeed::Tmpfs {
                    target: "/t".into(),
                    size_bytes: Some(65536),
                },
                MountNeed::Secret {
                    id: "tok".into(),
                    target: None,
                    env: Some("TOKEN".into()),
                    required: false,
                },
                MountNeed::Cache {
                    id: "x".into(),
                    target: "/c".into(),
                    readonly: true,
                    sharing: Sharing::Locked,
                },
            ]
        );
    }

    #[test]
    fn the_base_workdir_and_onbuild_triggers_count() {
        let mut config = ImageConfig::new_linux("amd64");
        config.config = Some(stagecoach_oci::ContainerConfig {
            working_dir: Some("/base".into()),
            on_build: vec!["RUN --mount=type=cache,target=c true".into()],
            ..Default::default()
        });
        let steps = plan(
            "FROM b\nRUN --mount=type=tmpfs,target=t true\n",
            Some(&config),
        )
        .unwrap();
        let targets: Vec<_> = steps
            .iter()
            .flat_map(|s| s.mounts.iter().filter_map(MountNeed::target))
            .collect();
        assert_eq!(targets, ["/base/c", "/base/t"]);
        assert_eq!(
            steps[0].line, 2,
            "triggers are reported at the stage's first instruction, as the executor does"
        );
    }

    #[test]
    fn what_cannot_be_planned_names_the_line() {
        let err = plan("FROM scratch\nRUN true\nRUN --mount=type=ssh true\n", None).unwrap_err();
        assert!(
            err.to_string().starts_with("line 3: RUN --mount=type=ssh"),
            "{err}"
        );
        let err = plan("FROM scratch\nWORKDIR ${NOPE:?unset}\nRUN true\n", None).unwrap_err();
        assert!(err.to_string().starts_with("line 2: "), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64k"), Some(65536));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("x"), None);
    }
}
