//! The stage planner: resolves each stage's base (an image after ARG expansion, an earlier
//! stage, or `scratch`), finds the edges between stages (`FROM <stage>`, `COPY --from`,
//! `RUN --mount=…,from=`), keeps only the stages the requested targets need and orders them in
//! waves, where every stage of a wave depends only on stages of earlier waves and so the
//! stages of one wave can run at the same time. The JSON form of [`Plan`] is a documented
//! contract (docs/cli.md).

use std::collections::BTreeMap;
use std::fmt;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::instructions::{Dockerfile, Instruction, InstructionError, MountType, Stage};
use crate::shell::{Env, ShellLex};

/// Build arguments that BuildKit accepts without an `ARG` declaration (usable in RUN and left
/// out of history).
pub const PREDEFINED_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// A target platform such as `linux/amd64` or `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// CPU architecture (`amd64`, `arm64`, …).
    pub arch: String,
    /// Variant (`v8`), may be empty.
    pub variant: String,
}

impl Default for Platform {
    fn default() -> Self {
        Self {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: String::new(),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

impl Platform {
    /// The automatic platform ARGs (`TARGETPLATFORM`, `BUILDARCH`, …) for building on and
    /// for this platform.
    pub fn automatic_args(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for prefix in ["TARGET", "BUILD"] {
            out.push((format!("{prefix}PLATFORM"), self.to_string()));
            out.push((format!("{prefix}OS"), self.os.clone()));
            out.push((format!("{prefix}ARCH"), self.arch.clone()));
            out.push((format!("{prefix}VARIANT"), self.variant.clone()));
        }
        out
    }
}

/// What the caller asks of the planner.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Stage names to build; empty means the last stage.
    pub targets: Vec<String>,
    /// `--build-arg` values, overriding ARG defaults.
    pub build_args: BTreeMap<String, String>,
    /// The platform built on and for.
    pub platform: Platform,
}

/// Where a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// An image reference, after ARG expansion, as written (not normalised).
    Image(String),
    /// An earlier stage, by index.
    Stage(usize),
    /// The empty image.
    Scratch,
}

impl Serialize for Base {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            Base::Image(image) => map.serialize_entry("image", image)?,
            Base::Stage(index) => map.serialize_entry("stage", index)?,
            Base::Scratch => map.serialize_entry("scratch", &true)?,
        }
        map.end()
    }
}

/// One stage in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedStage {
    /// Position in the Dockerfile, from 0.
    pub index: usize,
    /// Lower-cased `AS` name, or null.
    pub name: Option<String>,
    /// Where the stage starts from.
    pub base: Base,
    /// Indices of the stages this stage needs, ascending.
    pub depends_on: Vec<usize>,
    /// External images read by `COPY --from` or `RUN --mount from`, in order of appearance.
    pub images: Vec<String>,
    /// Whether the targets need this stage.
    pub needed: bool,
    /// `FROM --platform` after expansion, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

impl PlannedStage {
    /// The name to show people: the stage name, or its index.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("stage-{}", self.index))
    }
}

/// The result of planning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Every stage of the Dockerfile, needed or not.
    pub stages: Vec<PlannedStage>,
    /// The target stages, by index.
    pub targets: Vec<usize>,
    /// Needed stages grouped in waves, each ascending.
    pub waves: Vec<Vec<usize>>,
    /// Warnings (unused build args, parser warnings).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// Why a plan could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The Dockerfile itself is invalid.
    #[error(transparent)]
    Dockerfile(#[from] InstructionError),
    /// A requested target is not a stage.
    #[error("unknown target {target:?}: the Dockerfile's stages are {available}")]
    UnknownTarget {
        /// The target as asked.
        target: String,
        /// The stage names, for the message.
        available: String,
    },
    /// ARG expansion failed.
    #[error("line {line}: cannot expand {text:?}: {message}")]
    Expansion {
        /// The line.
        line: usize,
        /// The text being expanded.
        text: String,
        /// What went wrong.
        message: String,
    },
    /// The base of a stage is empty after expansion.
    #[error("line {line}: the base image of stage {stage} is empty after expanding {written:?}")]
    EmptyBase {
        /// The stage.
        stage: String,
        /// Its FROM line.
        line: usize,
        /// The base as written.
        written: String,
    },
    /// A stage refers to itself or to a stage defined after it.
    #[error(
        "line {line}: stage {stage} refers to stage {reference}, which is {relation}; a stage \
         may only use stages defined before it"
    )]
    ForwardReference {
        /// The stage that refers.
        stage: String,
        /// The line of the reference.
        line: usize,
        /// The stage referred to.
        reference: String,
        /// "itself" or "defined later".
        relation: &'static str,
    },
    /// A `--from` index past the stages defined before.
    #[error("line {line}: stage {stage}: --from={index} is not the index of an earlier stage")]
    BadIndex {
        /// The stage that refers.
        stage: String,
        /// The line.
        line: usize,
        /// The index as written.
        index: String,
    },
}

impl PlanError {
    /// A stable, machine-readable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            PlanError::Dockerfile(e) => e.reason(),
            PlanError::UnknownTarget { .. } => "UnknownTarget",
            PlanError::Expansion { .. } => "ExpansionFailed",
            PlanError::EmptyBase { .. } => "EmptyBase",
            PlanError::ForwardReference { .. } => "ForwardReference",
            PlanError::BadIndex { .. } => "BadStageIndex",
        }
    }

    /// The line the error concerns, when it concerns one.
    pub fn line(&self) -> Option<usize> {
        match self {
            PlanError::Dockerfile(e) => Some(e.line),
            PlanError::UnknownTarget { .. } => None,
            PlanError::Expansion { line, .. }
            | PlanError::EmptyBase { line, .. }
            | PlanError::ForwardReference { line, .. }
            | PlanError::BadIndex { line, .. } => Some(*line),
        }
    }
}

/// What a `--from` value names.
enum Reference {
    Stage(usize),
    Image(String),
}

/// Parses and plans in one step.
pub fn plan_text(text: &str, options: &PlanOptions) -> Result<Plan, PlanError> {
    let dockerfile = Dockerfile::parse(text)?;
    plan(&dockerfile, options)
}

/// The global ARG environment `FROM` lines expand in: automatic platform ARGs, then each
/// global ARG (its `--build-arg` value, else its default expanded so far).
pub fn global_env(
    dockerfile: &Dockerfile,
    options: &PlanOptions,
) -> Result<Vec<(String, String)>, PlanError> {
    let lex = ShellLex::new(dockerfile.escape);
    let mut env: Vec<(String, String)> = options.platform.automatic_args();
    for arg in &dockerfile.global_args {
        let value = match (options.build_args.get(&arg.name), &arg.default) {
            (Some(v), _) => Some(v.clone()),
            (None, Some(default)) => Some(
                lex.process_word(default, &Pairs(&env))
                    .map_err(|e| PlanError::Expansion {
                        line: arg.line,
                        text: default.clone(),
                        message: e.to_string(),
                    })?
                    .value,
            ),
            (None, None) => None,
        };
        if let Some(value) = value {
            env.push((arg.name.clone(), value));
        }
    }
    Ok(env)
}

/// Plans the stages `options.targets` need.
pub fn plan(dockerfile: &Dockerfile, options: &PlanOptions) -> Result<Plan, PlanError> {
    let lex = ShellLex::new(dockerfile.escape);
    let env = global_env(dockerfile, options)?;
    let mut stages: Vec<PlannedStage> = Vec::with_capacity(dockerfile.stages.len());
    for stage in &dockerfile.stages {
        let planned = plan_stage(dockerfile, stage, &lex, &env)?;
        stages.push(planned);
    }

    let targets = resolve_targets(dockerfile, &options.targets)?;
    let mut needed = vec![false; stages.len()];
    let mut stack: Vec<usize> = targets.clone();
    while let Some(i) = stack.pop() {
        if let Some(flag) = needed.get_mut(i)
            && !*flag
        {
            *flag = true;
            if let Some(s) = stages.get(i) {
                stack.extend(s.depends_on.iter().copied());
            }
        }
    }
    // Every dependency points to an earlier stage, so one pass in index order sees each
    // stage's dependencies before the stage itself.
    let mut wave_of = vec![0usize; stages.len()];
    let mut waves: Vec<Vec<usize>> = Vec::new();
    for stage in stages.iter_mut() {
        stage.needed = needed.get(stage.index).copied().unwrap_or(false);
        if !stage.needed {
            continue;
        }
        let wave = stage
            .depends_on
            .iter()
            .filter_map(|d| wave_of.get(*d))
            .map(|w| w + 1)
            .max()
            .unwrap_or(0);
        if let Some(slot) = wave_of.get_mut(stage.index) {
            *slot = wave;
        }
        if waves.len() <= wave {
            waves.resize(wave + 1, Vec::new());
        }
        if let Some(w) = waves.get_mut(wave) {
            w.push(stage.index);
        }
    }

    let mut warnings = dockerfile.warnings.clone();
    for name in options.build_args.keys() {
        let declared = dockerfile.global_args.iter().any(|a| &a.name == name)
            || dockerfile.stages.iter().any(|s| {
                s.instructions.iter().any(|i| {
                    matches!(&i.instruction, Instruction::Arg(decls) if decls.iter().any(|d| &d.name == name))
                })
            });
        if !declared && !PREDEFINED_ARGS.contains(&name.as_str()) {
            warnings.push(format!(
                "build argument {name} is not declared by any ARG and was not used"
            ));
        }
    }
    Ok(Plan {
        stages,
        targets,
        waves,
        warnings,
    })
}

fn stage_label(stage: &Stage) -> String {
    stage
        .name
        .clone()
        .unwrap_or_else(|| format!("{}", stage.index))
}

fn plan_stage(
    dockerfile: &Dockerfile,
    stage: &Stage,
    lex: &ShellLex,
    env: &[(String, String)],
) -> Result<PlannedStage, PlanError> {
    let expand = |text: &str| {
        lex.process_word(text, &Pairs(env))
            .map(|e| e.value)
            .map_err(|e| PlanError::Expansion {
                line: stage.line,
                text: text.to_string(),
                message: e.to_string(),
            })
    };
    let written = expand(&stage.base)?;
    let base_name = written.trim().to_string();
    if base_name.is_empty() {
        return Err(PlanError::EmptyBase {
            stage: stage_label(stage),
            line: stage.line,
            written: stage.base.clone(),
        });
    }
    let lower = base_name.to_ascii_lowercase();
    let base = if let Some(earlier) = dockerfile.stages[..stage.index]
        .iter()
        .find(|s| s.name.as_deref() == Some(lower.as_str()))
    {
        Base::Stage(earlier.index)
    } else if lower == "scratch" {
        Base::Scratch
    } else if let Some(later) = dockerfile.stages[stage.index + 1..]
        .iter()
        .find(|s| s.name.as_deref() == Some(lower.as_str()))
    {
        return Err(PlanError::ForwardReference {
            stage: stage_label(stage),
            line: stage.line,
            reference: stage_label(later),
            relation: "defined later",
        });
    } else {
        // `FROM nginx AS nginx` names an image: a stage cannot start from itself.
        Base::Image(base_name)
    };
    let platform = stage.platform.as_deref().map(expand).transpose()?;

    let mut depends_on: Vec<usize> = Vec::new();
    let mut images: Vec<String> = Vec::new();
    if let Base::Stage(i) = base {
        depends_on.push(i);
    }
    for located in &stage.instructions {
        let froms: Vec<&str> = match &located.instruction {
            Instruction::Copy(copy) => copy.from.as_deref().into_iter().collect(),
            Instruction::Run(run) => run
                .mounts
                .iter()
                .filter(|m| matches!(m.kind, MountType::Bind | MountType::Cache))
                .filter_map(|m| m.from.as_deref())
                .collect(),
            _ => Vec::new(),
        };
        for from in froms {
            match reference(dockerfile, stage, from, located.line)? {
                Reference::Stage(i) => depends_on.push(i),
                Reference::Image(image) => {
                    if !images.contains(&image) {
                        images.push(image);
                    }
                }
            }
        }
    }
    depends_on.sort_unstable();
    depends_on.dedup();
    Ok(PlannedStage {
        index: stage.index,
        name: stage.name.clone(),
        base,
        depends_on,
        images,
        needed: false,
        platform,
    })
}

/// Resolves a `--from` value: a stage name, a stage index, or else an image reference.
/// The stage a `--from` of stage `stage` names, if it names an earlier stage (not an
/// image), as the plan resolves it.
pub fn stage_named(dockerfile: &Dockerfile, stage: usize, from: &str) -> Option<usize> {
    let stage = dockerfile.stages.get(stage)?;
    match reference(dockerfile, stage, from, 0) {
        Ok(Reference::Stage(i)) => Some(i),
        _ => None,
    }
}

fn reference(
    dockerfile: &Dockerfile,
    stage: &Stage,
    from: &str,
    line: usize,
) -> Result<Reference, PlanError> {
    let lower = from.to_ascii_lowercase();
    if let Some(found) = dockerfile
        .stages
        .iter()
        .find(|s| s.name.as_deref() == Some(lower.as_str()))
    {
        if found.index < stage.index {
            return Ok(Reference::Stage(found.index));
        }
        return Err(PlanError::ForwardReference {
            stage: stage_label(stage),
            line,
            reference: stage_label(found),
            relation: if found.index == stage.index {
                "itself"
            } else {
                "defined later"
            },
        });
    }
    if !from.is_empty() && from.chars().all(|c| c.is_ascii_digit()) {
        return match from.parse::<usize>() {
            Ok(i) if i < stage.index => Ok(Reference::Stage(i)),
            Ok(i) if i == stage.index => Err(PlanError::ForwardReference {
                stage: stage_label(stage),
                line,
                reference: from.to_string(),
                relation: "itself",
            }),
            _ => Err(PlanError::BadIndex {
                stage: stage_label(stage),
                line,
                index: from.to_string(),
            }),
        };
    }
    Ok(Reference::Image(from.to_string()))
}

fn resolve_targets(dockerfile: &Dockerfile, asked: &[String]) -> Result<Vec<usize>, PlanError> {
    if asked.is_empty() {
        return Ok(vec![dockerfile.stages.len().saturating_sub(1)]);
    }
    let mut out = Vec::new();
    for target in asked {
        let lower = target.to_ascii_lowercase();
        let Some(stage) = dockerfile
            .stages
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
        else {
            let names: Vec<String> = dockerfile
                .stages
                .iter()
                .filter_map(|s| s.name.clone())
                .collect();
            let available = if names.is_empty() {
                "all unnamed (name a stage with FROM … AS <name>)".to_string()
            } else {
                names.join(", ")
            };
            return Err(PlanError::UnknownTarget {
                target: target.clone(),
                available,
            });
        };
        if !out.contains(&stage.index) {
            out.push(stage.index);
        }
    }
    Ok(out)
}

impl Plan {
    /// A short tree of the waves for people.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let needed = self.stages.iter().filter(|s| s.needed).count();
        let targets: Vec<String> = self
            .targets
            .iter()
            .filter_map(|t| self.stages.get(*t))
            .map(PlannedStage::label)
            .collect();
        out.push_str(&format!(
            "{} stage(s), {} needed for target(s) {}, in {} wave(s)\n",
            self.stages.len(),
            needed,
            targets.join(", "),
            self.waves.len()
        ));
        for (w, wave) in self.waves.iter().enumerate() {
            out.push_str(&format!("wave {w}\n"));
            for (k, index) in wave.iter().enumerate() {
                let Some(stage) = self.stages.get(*index) else {
                    continue;
                };
                let branch = if k + 1 == wave.len() {
                    "└─"
                } else {
                    "├─"
                };
                let base = match &stage.base {
                    Base::Image(i) => format!("from image {i}"),
                    Base::Stage(s) => format!(
                        "from stage {}",
                        self.stages
                            .get(*s)
                            .map_or_else(|| s.to_string(), PlannedStage::label)
                    ),
                    Base::Scratch => "from scratch".to_string(),
                };
                out.push_str(&format!(
                    "{branch} [{}] {} ({base})",
                    stage.index,
                    stage.label()
                ));
                let deps: Vec<String> = stage
                    .depends_on
                    .iter()
                    .filter(|d| !matches!(stage.base, Base::Stage(s) if s == **d))
                    .filter_map(|d| self.stages.get(*d))
                    .map(PlannedStage::label)
                    .collect();
                if !deps.is_empty() {
                    out.push_str(&format!(", copies from {}", deps.join(", ")));
                }
                if !stage.images.is_empty() {
                    out.push_str(&format!(", reads images {}", stage.images.join(", ")));
                }
                if self.targets.contains(index) {
                    out.push_str("  ← target");
                }
                out.push('\n');
            }
        }
        let skipped: Vec<String> = self
            .stages
            .iter()
            .filter(|s| !s.needed)
            .map(PlannedStage::label)
            .collect();
        if !skipped.is_empty() {
            out.push_str(&format!("not needed: {}\n", skipped.join(", ")));
        }
        out
    }
}

/// An ordered list of `NAME=value` pairs as an expansion environment; later entries win.
struct Pairs<'a>(&'a [(String, String)]);

impl Env for Pairs<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(text: &str, targets: &[&str]) -> Result<Plan, PlanError> {
        let options = PlanOptions {
            targets: targets.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        plan_text(text, &options)
    }

    #[test]
    fn builder_to_scratch() {
        let p = plan_of("FROM golang:1.23 AS builder\nRUN go build\nFROM scratch\nCOPY --from=builder /app /app\n", &[]).unwrap();
        assert_eq!(p.stages[0].base, Base::Image("golang:1.23".into()));
        assert_eq!(p.stages[1].base, Base::Scratch);
        assert_eq!(p.stages[1].depends_on, vec![0]);
        assert_eq!(p.targets, vec![1]);
        assert_eq!(p.waves, vec![vec![0], vec![1]]);
    }

    #[test]
    fn shared_base_with_test_and_prod() {
        let text = "FROM alpine AS base\nRUN apk add x\nFROM base AS test\nRUN make test\nFROM base AS prod\nCMD run\n";
        let p = plan_of(text, &["prod"]).unwrap();
        assert_eq!(
            p.stages.iter().map(|s| s.needed).collect::<Vec<_>>(),
            vec![true, false, true]
        );
        assert_eq!(p.waves, vec![vec![0], vec![2]]);
        let both = plan_of(text, &["TEST", "prod"]).unwrap();
        assert_eq!(both.targets, vec![1, 2]);
        assert_eq!(both.waves, vec![vec![0], vec![1, 2]]);
    }

    #[test]
    fn fan_out_and_fan_in() {
        let text = "FROM a AS one\nFROM b AS two\nFROM c AS three\nFROM scratch\nCOPY --from=one / /1\nCOPY --from=1 / /2\nRUN --mount=type=bind,from=three,target=/t true\n";
        let p = plan_of(text, &[]).unwrap();
        assert_eq!(p.waves, vec![vec![0, 1, 2], vec![3]]);
        assert_eq!(p.stages[3].depends_on, vec![0, 1, 2]);
    }

    #[test]
    fn external_images_in_copy_from() {
        let p = plan_of(
            "FROM scratch\nCOPY --from=nginx:1.27 /etc/nginx /etc/nginx\n",
            &[],
        )
        .unwrap();
        assert_eq!(p.stages[0].images, vec!["nginx:1.27"]);
        assert!(p.stages[0].depends_on.is_empty());
    }

    #[test]
    fn unknown_target_lists_stages() {
        let e = plan_of("FROM a AS x\nFROM b AS y\n", &["z"]).unwrap_err();
        assert_eq!(e.reason(), "UnknownTarget");
        assert!(
            e.to_string().contains("\"z\"") && e.to_string().contains("x, y"),
            "{e}"
        );
    }

    #[test]
    fn references_to_self_and_later_stages_fail() {
        let e = plan_of("FROM a AS x\nCOPY --from=x / /\n", &[]).unwrap_err();
        assert_eq!(e.reason(), "ForwardReference");
        assert!(e.to_string().contains("itself"));
        let e = plan_of("FROM a AS x\nCOPY --from=y / /\nFROM b AS y\n", &[]).unwrap_err();
        assert!(
            e.to_string().contains("defined later") && e.to_string().contains("line 2"),
            "{e}"
        );
        let e = plan_of("FROM later AS x\nFROM b AS later\n", &[]).unwrap_err();
        assert_eq!(e.reason(), "ForwardReference");
        let e = plan_of("FROM a\nCOPY --from=5 / /\n", &[]).unwrap_err();
        assert_eq!(e.reason(), "BadStageIndex");
        let e = plan_of("FROM a\nCOPY --from=0 / /\n", &[]).unwrap_err();
        assert_eq!(e.reason(), "ForwardReference");
    }

    #[test]
    fn from_named_like_itself_is_an_image() {
        let p = plan_of("FROM nginx AS nginx\n", &[]).unwrap();
        assert_eq!(p.stages[0].base, Base::Image("nginx".into()));
    }

    #[test]
    fn json_contract_shape() {
        let p = plan_of("FROM golang:1.23 AS builder\nFROM scratch\nCOPY --from=builder /a /a\nCOPY --from=nginx:1.27 /b /b\n", &[]).unwrap();
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "stages": [
                    {"index": 0, "name": "builder", "base": {"image": "golang:1.23"}, "dependsOn": [], "images": [], "needed": true},
                    {"index": 1, "name": null, "base": {"scratch": true}, "dependsOn": [0], "images": ["nginx:1.27"], "needed": true}
                ],
                "targets": [1],
                "waves": [[0], [1]]
            })
        );
    }
}
