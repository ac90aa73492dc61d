//! Typed Dockerfile instructions: reads the parser's [`Node`]s into instructions with
//! validated flags and argument counts, and groups them into stages (each `FROM` starts one;
//! ARGs before the first `FROM` are global). Values stay as written — variable expansion
//! happens later with the environment of the stage, because its result depends on ENV and ARG
//! values only known while a stage runs. Every error names the line of the instruction.

use std::fmt;

use serde::Serialize;

use crate::parser::{self, Heredoc, Node, ParseError};

/// A Dockerfile read into stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The escape character in force.
    pub escape: char,
    /// The `# syntax=` directive, if any (recorded; Stagecoach has one frontend).
    pub syntax: Option<String>,
    /// `ARG`s declared before the first `FROM`: usable in `FROM` lines.
    pub global_args: Vec<ArgDecl>,
    /// The stages in file order.
    pub stages: Vec<Stage>,
    /// Warnings that do not stop a build.
    pub warnings: Vec<String>,
}

/// One build stage: a `FROM` and the instructions up to the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Position of the stage in the file, from 0.
    pub index: usize,
    /// The `AS` name, lower-cased (stage names are case-insensitive).
    pub name: Option<String>,
    /// The base as written, before ARG expansion.
    pub base: String,
    /// The `--platform` flag as written.
    pub platform: Option<String>,
    /// The line of the `FROM`.
    pub line: usize,
    /// The stage's instructions after its `FROM`.
    pub instructions: Vec<Located>,
}

/// An instruction with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// First line of the instruction.
    pub line: usize,
    /// Last line (including heredoc bodies).
    pub end_line: usize,
    /// The instruction's text with continuations joined.
    pub original: String,
    /// The instruction itself.
    pub instruction: Instruction,
}

/// A command in exec form (JSON array) or shell form (one string run through the shell).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CommandLine {
    /// `["executable", "arg"]`.
    Exec(Vec<String>),
    /// `executable arg`, run with the stage's SHELL.
    Shell(String),
}

/// One `key=value` of ENV or LABEL (value still quoted as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value as written.
    pub value: String,
}

/// One ARG declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    /// The argument's name.
    pub name: String,
    /// The default value as written, if any.
    pub default: Option<String>,
    /// The line of the declaration.
    pub line: usize,
}

/// The instructions Stagecoach understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// `RUN`.
    Run(Run),
    /// `CMD`.
    Cmd(CommandLine),
    /// `ENTRYPOINT`.
    Entrypoint(CommandLine),
    /// `SHELL` (exec form only).
    Shell(Vec<String>),
    /// `ENV`.
    Env(Vec<KeyValue>),
    /// `LABEL`.
    Label(Vec<KeyValue>),
    /// `MAINTAINER` (deprecated; becomes a label).
    Maintainer(String),
    /// `ARG` inside a stage.
    Arg(Vec<ArgDecl>),
    /// `EXPOSE`.
    Expose(Vec<String>),
    /// `COPY`.
    Copy(Copy),
    /// `ADD`.
    Add(Add),
    /// `VOLUME`.
    Volume(Vec<String>),
    /// `USER`.
    User(String),
    /// `WORKDIR`.
    Workdir(String),
    /// `STOPSIGNAL`.
    StopSignal(String),
    /// `HEALTHCHECK`.
    Healthcheck(Healthcheck),
    /// `ONBUILD`: the trigger's text, and the trigger read as an instruction.
    Onbuild {
        /// The trigger as written (what the image config records).
        expression: String,
        /// The trigger, validated.
        trigger: Box<Instruction>,
    },
}

impl Instruction {
    /// The keyword, upper case, for messages.
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::Run(_) => "RUN",
            Instruction::Cmd(_) => "CMD",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Shell(_) => "SHELL",
            Instruction::Env(_) => "ENV",
            Instruction::Label(_) => "LABEL",
            Instruction::Maintainer(_) => "MAINTAINER",
            Instruction::Arg(_) => "ARG",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Copy(_) => "COPY",
            Instruction::Add(_) => "ADD",
            Instruction::Volume(_) => "VOLUME",
            Instruction::User(_) => "USER",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::StopSignal(_) => "STOPSIGNAL",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Onbuild { .. } => "ONBUILD",
        }
    }
}

/// `RUN` with its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The command.
    pub command: CommandLine,
    /// Heredoc bodies (`RUN <<EOF`), in order.
    pub heredocs: Vec<Heredoc>,
    /// `--mount` options.
    pub mounts: Vec<Mount>,
    /// `--network`.
    pub network: Option<NetworkMode>,
    /// `--security`.
    pub security: Option<SecurityMode>,
}

/// `RUN --network=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The builder's default network.
    Default,
    /// No network.
    None,
    /// The host's network.
    Host,
}

/// `RUN --security=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityMode {
    /// The normal sandbox.
    Sandbox,
    /// Extra privileges (Stagecoach refuses this at build time: builder pods are never
    /// privileged).
    Insecure,
}

/// Sources and destination shared by COPY and ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Sources as written (heredoc names for `<<EOF` sources).
    pub sources: Vec<String>,
    /// Destination as written.
    pub dest: String,
    /// Heredoc bodies used as sources.
    pub heredocs: Vec<Heredoc>,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--exclude` patterns.
    pub exclude: Vec<String>,
    /// `--parents`.
    pub parents: bool,
}

/// `COPY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// What to copy, where.
    pub transfer: Transfer,
    /// `--from`: a stage name, a stage index or an image, never expanded.
    pub from: Option<String>,
}

/// `ADD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Add {
    /// What to add, where.
    pub transfer: Transfer,
    /// `--keep-git-dir`.
    pub keep_git_dir: bool,
    /// `--checksum` for URL sources.
    pub checksum: Option<String>,
    /// `--unpack`: whether archives are extracted (default: local archives only).
    pub unpack: Option<bool>,
}

/// `RUN --mount=type=…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// Files from the context, a stage or an image.
    Bind,
    /// A persistent cache directory.
    Cache,
    /// An empty in-memory directory.
    Tmpfs,
    /// A secret file or environment variable.
    Secret,
    /// An SSH agent socket.
    Ssh,
}

/// `--mount=type=cache,sharing=…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    /// Several builds use the directory at once.
    Shared,
    /// Each concurrent writer gets its own directory.
    Private,
    /// Writers wait for each other.
    Locked,
}

/// One `RUN --mount`, values as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The mount type (default bind).
    pub kind: MountType,
    /// Where it appears in the container.
    pub target: Option<String>,
    /// Path inside `from` (or the context).
    pub source: Option<String>,
    /// Stage name, stage index or image to mount from.
    pub from: Option<String>,
    /// Cache or secret id.
    pub id: Option<String>,
    /// Cache sharing mode.
    pub sharing: Option<Sharing>,
    /// Read-only (bind mounts default to read-only).
    pub readonly: Option<bool>,
    /// Whether a missing secret or ssh socket fails the step.
    pub required: Option<bool>,
    /// File mode (octal) for cache, secret and ssh mounts.
    pub mode: Option<u32>,
    /// Owner uid.
    pub uid: Option<u32>,
    /// Owner gid.
    pub gid: Option<u32>,
    /// Environment variable a secret is exposed as.
    pub env: Option<String>,
    /// tmpfs size as written.
    pub size: Option<String>,
}

/// `HEALTHCHECK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable the base image's check.
    None,
    /// `HEALTHCHECK [options] CMD …`.
    Check {
        /// The test command.
        command: CommandLine,
        /// `--interval` in nanoseconds.
        interval_ns: Option<u64>,
        /// `--timeout` in nanoseconds.
        timeout_ns: Option<u64>,
        /// `--start-period` in nanoseconds.
        start_period_ns: Option<u64>,
        /// `--start-interval` in nanoseconds.
        start_interval_ns: Option<u64>,
        /// `--retries`.
        retries: Option<u32>,
    },
}

/// What is wrong with an instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstructionErrorKind {
    /// The text could not be parsed at all.
    Syntax(ParseError),
    /// The keyword is not a Dockerfile instruction.
    UnknownInstruction(String),
    /// An instruction other than ARG before the first FROM.
    NoStage(String),
    /// A flag the instruction does not have.
    UnknownFlag {
        /// The instruction.
        instruction: String,
        /// The flag as written.
        flag: String,
    },
    /// A flag given twice where once is allowed.
    DuplicateFlag(String),
    /// A flag's value is missing or malformed.
    BadFlagValue {
        /// The flag.
        flag: String,
        /// What is wrong.
        message: String,
    },
    /// Wrong number or shape of arguments.
    Arguments {
        /// The instruction.
        instruction: String,
        /// What was expected.
        message: String,
    },
    /// An invalid `AS` name.
    InvalidStageName(String),
    /// Two stages with the same name.
    DuplicateStageName(String),
    /// A malformed `--mount`.
    BadMount {
        /// The mount text.
        mount: String,
        /// What is wrong.
        message: String,
    },
}

/// An instruction error with the lines it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InstructionError {
    /// What went wrong.
    pub kind: InstructionErrorKind,
    /// First line concerned.
    pub line: usize,
    /// Last line concerned.
    pub end_line: usize,
}

impl InstructionError {
    fn at(node: &Node, kind: InstructionErrorKind) -> Self {
        Self {
            kind,
            line: node.start_line,
            end_line: node.end_line,
        }
    }

    /// A stable, machine-readable reason.
    pub fn reason(&self) -> &'static str {
        match &self.kind {
            InstructionErrorKind::Syntax(e) => e.reason(),
            InstructionErrorKind::UnknownInstruction(_) => "UnknownInstruction",
            InstructionErrorKind::NoStage(_) => "NoStage",
            InstructionErrorKind::UnknownFlag { .. } => "UnknownFlag",
            InstructionErrorKind::DuplicateFlag(_) => "DuplicateFlag",
            InstructionErrorKind::BadFlagValue { .. } => "BadFlagValue",
            InstructionErrorKind::Arguments { .. } => "BadArguments",
            InstructionErrorKind::InvalidStageName(_) => "InvalidStageName",
            InstructionErrorKind::DuplicateStageName(_) => "DuplicateStageName",
            InstructionErrorKind::BadMount { .. } => "BadMount",
        }
    }
}

impl From<ParseError> for InstructionError {
    fn from(e: ParseError) -> Self {
        Self {
            line: e.line,
            end_line: e.end_line,
            kind: InstructionErrorKind::Syntax(e),
        }
    }
}

impl fmt::Display for InstructionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use InstructionErrorKind as K;
        if let K::Syntax(e) = &self.kind {
            return e.fmt(f);
        }
        write!(f, "line {}: ", self.line)?;
        match &self.kind {
            K::Syntax(_) => Ok(()),
            K::UnknownInstruction(i) => write!(f, "unknown instruction: {i}"),
            K::NoStage(i) => write!(
                f,
                "{i} before the first FROM: only ARG may come before FROM (no build stage yet)"
            ),
            K::UnknownFlag { instruction, flag } => {
                write!(f, "unknown flag {flag} for {instruction}")
            }
            K::DuplicateFlag(flag) => write!(f, "duplicate flag specified: --{flag}"),
            K::BadFlagValue { flag, message } => write!(f, "flag --{flag}: {message}"),
            K::Arguments {
                instruction,
                message,
            } => write!(f, "{instruction} {message}"),
            K::InvalidStageName(n) => write!(
                f,
                "invalid stage name {n:?}: it must start with a letter and contain only \
                 letters, digits, '-', '_' and '.'"
            ),
            K::DuplicateStageName(n) => write!(f, "duplicate stage name {n:?}"),
            K::BadMount { mount, message } => write!(f, "invalid --mount={mount}: {message}"),
        }
    }
}

type Result<T> = std::result::Result<T, InstructionError>;

impl Dockerfile {
    /// Parses Dockerfile text and reads it into stages.
    pub fn parse(text: &str) -> Result<Self> {
        let parsed = parser::parse(text)?;
        let mut global_args = Vec::new();
        let mut stages: Vec<Stage> = Vec::new();
        for node in &parsed.nodes {
            let keyword = node.keyword();
            if keyword == "from" {
                let stage = read_from(node, stages.len())?;
                if let Some(name) = &stage.name
                    && stages.iter().any(|s| s.name.as_deref() == Some(name))
                {
                    return Err(InstructionError::at(
                        node,
                        InstructionErrorKind::DuplicateStageName(name.clone()),
                    ));
                }
                stages.push(stage);
                continue;
            }
            let instruction = read_instruction(node)?;
            match stages.last_mut() {
                Some(stage) => stage.instructions.push(Located {
                    line: node.start_line,
                    end_line: node.end_line,
                    original: node.original.clone(),
                    instruction,
                }),
                None => match instruction {
                    Instruction::Arg(args) => global_args.extend(args),
                    other => {
                        return Err(InstructionError::at(
                            node,
                            InstructionErrorKind::NoStage(other.keyword().to_string()),
                        ));
                    }
                },
            }
        }
        if stages.is_empty() {
            let line = parsed.nodes.last().map_or(0, |n| n.end_line);
            return Err(InstructionError {
                kind: InstructionErrorKind::Arguments {
                    instruction: "Dockerfile".into(),
                    message: "has no FROM instruction: there is no stage to build".into(),
                },
                line,
                end_line: line,
            });
        }
        Ok(Self {
            escape: parsed.escape,
            syntax: parsed.syntax,
            global_args,
            stages,
            warnings: parsed.warnings,
        })
    }
}

fn args_error(node: &Node, message: impl Into<String>) -> InstructionError {
    InstructionError::at(
        node,
        InstructionErrorKind::Arguments {
            instruction: node.value.to_ascii_uppercase(),
            message: message.into(),
        },
    )
}

/// Stage names as BuildKit accepts them: a letter, then letters, digits, `-`, `_`, `.`.
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn read_from(node: &Node, index: usize) -> Result<Stage> {
    let mut flags = Flags::read(node, &[("platform", FlagKind::Value)])?;
    let platform = flags.value("platform");
    let (base, name) = match node.args.as_slice() {
        [base] => (base.clone(), None),
        [base, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
            let lower = name.to_ascii_lowercase();
            if !valid_stage_name(&lower) {
                return Err(InstructionError::at(
                    node,
                    InstructionErrorKind::InvalidStageName(name.clone()),
                ));
            }
            (base.clone(), Some(lower))
        }
        _ => {
            return Err(args_error(
                node,
                "requires either one or three arguments: FROM <image> [AS <name>]",
            ));
        }
    };
    Ok(Stage {
        index,
        name,
        base,
        platform,
        line: node.start_line,
        instructions: Vec::new(),
    })
}

fn command_line(node: &Node) -> CommandLine {
    if node.json {
        CommandLine::Exec(node.args.clone())
    } else {
        CommandLine::Shell(node.args.first().cloned().unwrap_or_default())
    }
}

fn key_values(node: &Node) -> Result<Vec<KeyValue>> {
    if node.args.is_empty() {
        return Err(args_error(node, "requires at least one argument"));
    }
    let pairs = node
        .args
        .chunks(3)
        .map(|c| KeyValue {
            key: c.first().cloned().unwrap_or_default(),
            value: c.get(1).cloned().unwrap_or_default(),
        })
        .collect::<Vec<_>>();
    if let Some(empty) = pairs.iter().find(|p| p.key.is_empty()) {
        return Err(args_error(
            node,
            format!("has an empty name in {:?}", empty.value),
        ));
    }
    Ok(pairs)
}

fn exactly_one(node: &Node) -> Result<String> {
    match node.args.as_slice() {
        [one] if !one.is_empty() => Ok(one.clone()),
        _ => Err(args_error(node, "requires exactly one argument")),
    }
}

fn read_instruction(node: &Node) -> Result<Instruction> {
    let keyword = node.keyword();
    let no_flags = |node: &Node| Flags::read(node, &[]).map(|_| ());
    Ok(match keyword.as_str() {
        "run" => Instruction::Run(read_run(node)?),
        "cmd" => {
            no_flags(node)?;
            Instruction::Cmd(command_line(node))
        }
        "entrypoint" => {
            no_flags(node)?;
            Instruction::Entrypoint(command_line(node))
        }
        "shell" => {
            no_flags(node)?;
            if !node.json || node.args.is_empty() {
                return Err(args_error(
                    node,
                    "requires the arguments in JSON form, e.g. SHELL [\"/bin/sh\", \"-c\"]",
                ));
            }
            Instruction::Shell(node.args.clone())
        }
        "env" => {
            no_flags(node)?;
            Instruction::Env(key_values(node)?)
        }
        "label" => {
            no_flags(node)?;
            Instruction::Label(key_values(node)?)
        }
        "maintainer" => {
            no_flags(node)?;
            Instruction::Maintainer(exactly_one(node)?)
        }
        "arg" => {
            no_flags(node)?;
            if node.args.is_empty() {
                return Err(args_error(node, "requires at least one argument"));
            }
            let decls = node
                .args
                .iter()
                .map(|word| {
                    let (name, default) = match word.split_once('=') {
                        Some((n, v)) => (n.to_string(), Some(v.to_string())),
                        None => (word.clone(), None),
                    };
                    if name.is_empty() {
                        return Err(args_error(node, format!("has an empty name in {word:?}")));
                    }
                    Ok(ArgDecl {
                        name,
                        default,
                        line: node.start_line,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Instruction::Arg(decls)
        }
        "expose" => {
            no_flags(node)?;
            if node.args.is_empty() {
                return Err(args_error(node, "requires at least one argument"));
            }
            Instruction::Expose(node.args.clone())
        }
        "copy" => Instruction::Copy(read_copy(node)?),
        "add" => Instruction::Add(read_add(node)?),
        "volume" => {
            no_flags(node)?;
            if node.args.is_empty() || node.args.iter().any(|a| a.trim().is_empty()) {
                return Err(args_error(node, "requires at least one non-empty argument"));
            }
            Instruction::Volume(node.args.clone())
        }
        "user" => {
            no_flags(node)?;
            Instruction::User(exactly_one(node)?)
        }
        "workdir" => {
            no_flags(node)?;
            Instruction::Workdir(exactly_one(node)?)
        }
        "stopsignal" => {
            no_flags(node)?;
            Instruction::StopSignal(exactly_one(node)?)
        }
        "healthcheck" => Instruction::Healthcheck(read_healthcheck(node)?),
        "onbuild" => {
            no_flags(node)?;
            let Some(child) = &node.child else {
                return Err(args_error(node, "requires an instruction to run later"));
            };
            let child_kw = child.keyword();
            if matches!(child_kw.as_str(), "onbuild" | "from" | "maintainer") {
                return Err(args_error(
                    node,
                    format!("cannot trigger {}", child_kw.to_ascii_uppercase()),
                ));
            }
            let mut child = child.as_ref().clone();
            child.start_line = node.start_line;
            child.end_line = node.end_line;
            child.heredocs = node.heredocs.clone();
            let trigger = read_instruction(&child)?;
            let expression = node
                .original
                .trim_start()
                .get(node.value.len()..)
                .unwrap_or_default()
                .trim()
                .to_string();
            Instruction::Onbuild {
                expression,
                trigger: Box::new(trigger),
            }
        }
        "from" => return Err(args_error(node, "cannot be used here")),
        _ => {
            return Err(InstructionError::at(
                node,
                InstructionErrorKind::UnknownInstruction(node.value.to_ascii_uppercase()),
            ));
        }
    })
}

fn read_run(node: &Node) -> Result<Run> {
    let mut flags = Flags::read(
        node,
        &[
            ("mount", FlagKind::Many),
            ("network", FlagKind::Value),
            ("security", FlagKind::Value),
        ],
    )?;
    let command = command_line(node);
    if matches!(&command, CommandLine::Shell(s) if s.trim().is_empty())
        || matches!(&command, CommandLine::Exec(v) if v.is_empty())
    {
        return Err(args_error(node, "requires a command"));
    }
    let mounts = flags
        .values("mount")
        .iter()
        .map(|m| parse_mount(m).map_err(|message| bad_mount(node, m, message)))
        .collect::<Result<Vec<_>>>()?;
    let network = match flags.value("network").as_deref() {
        None => None,
        Some("default") => Some(NetworkMode::Default),
        Some("none") => Some(NetworkMode::None),
        Some("host") => Some(NetworkMode::Host),
        Some(other) => {
            return Err(bad_flag(
                node,
                "network",
                format!("unknown mode {other:?} (default, none or host)"),
            ));
        }
    };
    let security = match flags.value("security").as_deref() {
        None => None,
        Some("sandbox") => Some(SecurityMode::Sandbox),
        Some("insecure") => Some(SecurityMode::Insecure),
        Some(other) => {
            return Err(bad_flag(
                node,
                "security",
                format!("unknown mode {other:?} (sandbox or insecure)"),
            ));
        }
    };
    Ok(Run {
        command,
        heredocs: node.heredocs.clone(),
        mounts,
        network,
        security,
    })
}

fn bad_flag(node: &Node, flag: &str, message: String) -> InstructionError {
    InstructionError::at(
        node,
        InstructionErrorKind::BadFlagValue {
            flag: flag.to_string(),
            message,
        },
    )
}

fn bad_mount(node: &Node, mount: &str, message: String) -> InstructionError {
    InstructionError::at(
        node,
        InstructionErrorKind::BadMount {
            mount: mount.to_string(),
            message,
        },
    )
}

fn read_transfer(node: &Node, flags: &mut Flags) -> Result<Transfer> {
    let (dest, sources) = match node.args.split_last() {
        Some((dest, sources)) if !sources.is_empty() => (dest.clone(), sources.to_vec()),
        _ => {
            return Err(args_error(
                node,
                "requires at least two arguments: <source>... <dest>",
            ));
        }
    };
    let heredoc_names: Vec<&str> = node.heredocs.iter().map(|h| h.name.as_str()).collect();
    let sources = sources
        .into_iter()
        .map(|s| match parser_heredoc_name(&s) {
            Some(name) if heredoc_names.contains(&name.as_str()) => name,
            _ => s,
        })
        .collect();
    Ok(Transfer {
        sources,
        dest,
        heredocs: node.heredocs.clone(),
        chown: flags.value("chown"),
        chmod: flags.value("chmod"),
        link: flags.boolean(node, "link")?,
        exclude: flags.values("exclude"),
        parents: flags.boolean(node, "parents")?,
    })
}

/// The delimiter named by a `<<EOF` source word, if it is one.
fn parser_heredoc_name(word: &str) -> Option<String> {
    let rest = word
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .strip_prefix("<<")?;
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let name: String = rest
        .chars()
        .filter(|c| !matches!(c, '\'' | '"' | '\\'))
        .collect();
    (!name.is_empty()).then_some(name)
}

fn read_copy(node: &Node) -> Result<Copy> {
    let mut flags = Flags::read(
        node,
        &[
            ("from", FlagKind::Value),
            ("chown", FlagKind::Value),
            ("chmod", FlagKind::Value),
            ("link", FlagKind::Bool),
            ("parents", FlagKind::Bool),
            ("exclude", FlagKind::Many),
        ],
    )?;
    let transfer = read_transfer(node, &mut flags)?;
    let from = flags.value("from");
    if let Some(from) = &from {
        if from.is_empty() {
            return Err(bad_flag(
                node,
                "from",
                "needs a stage name, a stage index or an image".into(),
            ));
        }
        if from.contains('$') {
            return Err(bad_flag(
                node,
                "from",
                format!("{from:?}: variables are not expanded in --from; name a stage or an image"),
            ));
        }
    }
    Ok(Copy { transfer, from })
}

fn read_add(node: &Node) -> Result<Add> {
    let mut flags = Flags::read(
        node,
        &[
            ("chown", FlagKind::Value),
            ("chmod", FlagKind::Value),
            ("link", FlagKind::Bool),
            ("parents", FlagKind::Bool),
            ("exclude", FlagKind::Many),
            ("keep-git-dir", FlagKind::Bool),
            ("checksum", FlagKind::Value),
            ("unpack", FlagKind::Bool),
        ],
    )?;
    let transfer = read_transfer(node, &mut flags)?;
    let unpack = if flags.present("unpack") {
        Some(flags.boolean(node, "unpack")?)
    } else {
        None
    };
    Ok(Add {
        transfer,
        keep_git_dir: flags.boolean(node, "keep-git-dir")?,
        checksum: flags.value("checksum"),
        unpack,
    })
}

fn read_healthcheck(node: &Node) -> Result<Healthcheck> {
    let mut flags = Flags::read(
        node,
        &[
            ("interval", FlagKind::Value),
            ("timeout", FlagKind::Value),
            ("start-period", FlagKind::Value),
            ("start-interval", FlagKind::Value),
            ("retries", FlagKind::Value),
        ],
    )?;
    let Some(kind) = node.args.first() else {
        return Err(args_error(node, "requires NONE or CMD <command>"));
    };
    if kind.eq_ignore_ascii_case("none") {
        if node.args.len() > 1 || !node.flags.is_empty() {
            return Err(args_error(node, "NONE takes no other arguments or flags"));
        }
        return Ok(Healthcheck::None);
    }
    if !kind.eq_ignore_ascii_case("cmd") {
        return Err(args_error(
            node,
            format!("has unknown type {kind:?} (use CMD or NONE)"),
        ));
    }
    let command = if node.json {
        CommandLine::Exec(node.args[1..].to_vec())
    } else {
        CommandLine::Shell(node.args.get(1).cloned().unwrap_or_default())
    };
    if matches!(&command, CommandLine::Shell(s) if s.is_empty())
        || matches!(&command, CommandLine::Exec(v) if v.is_empty())
    {
        return Err(args_error(node, "CMD requires a command"));
    }
    let mut duration = |name: &str| -> Result<Option<u64>> {
        flags
            .value(name)
            .map(|v| parse_duration(&v).map_err(|m| bad_flag(node, name, m)))
            .transpose()
    };
    let interval_ns = duration("interval")?;
    let timeout_ns = duration("timeout")?;
    let start_period_ns = duration("start-period")?;
    let start_interval_ns = duration("start-interval")?;
    let retries = flags
        .value("retries")
        .map(|v| {
            v.parse::<u32>().map_err(|_| {
                bad_flag(
                    node,
                    "retries",
                    format!("{v:?} is not a non-negative whole number"),
                )
            })
        })
        .transpose()?;
    Ok(Healthcheck::Check {
        command,
        interval_ns,
        timeout_ns,
        start_period_ns,
        start_interval_ns,
        retries,
    })
}

/// Parses a Go duration (`1m30s`, `500ms`, `0`) into nanoseconds.
pub fn parse_duration(text: &str) -> std::result::Result<u64, String> {
    let bad = || format!("{text:?} is not a duration like 30s, 1m30s or 500ms");
    if text == "0" {
        return Ok(0);
    }
    let mut rest = text;
    let mut total: f64 = 0.0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    if total > u64::MAX as f64 {
        return Err(bad());
    }
    let ns = total as u64;
    if ns != 0 && ns < 1_000_000 {
        return Err(format!("{text:?} is less than 1ms"));
    }
    Ok(ns)
}

/// Parses one `--mount` value (comma-separated `key=value` fields).
fn parse_mount(text: &str) -> std::result::Result<Mount, String> {
    let mut mount = Mount {
        kind: MountType::Bind,
        target: None,
        source: None,
        from: None,
        id: None,
        sharing: None,
        readonly: None,
        required: None,
        mode: None,
        uid: None,
        gid: None,
        env: None,
        size: None,
    };
    let fields = csv_fields(text)?;
    // The type decides which keys are valid, so read it first wherever it appears.
    for field in &fields {
        if let Some(("type", value)) = field.split_once('=') {
            mount.kind = match value.to_ascii_lowercase().as_str() {
                "bind" => MountType::Bind,
                "cache" => MountType::Cache,
                "tmpfs" => MountType::Tmpfs,
                "secret" => MountType::Secret,
                "ssh" => MountType::Ssh,
                other => {
                    return Err(format!(
                        "unknown mount type {other:?} (bind, cache, tmpfs, secret or ssh)"
                    ));
                }
            };
        }
    }
    let parse_bool = |key: &str, v: &str| match v.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("{key} expects true or false, not {v:?}")),
    };
    let parse_u32 = |key: &str, v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("{key} expects a number, not {v:?}"))
    };
    for field in &fields {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v)),
            None => (field.to_ascii_lowercase(), None),
        };
        let need = |v: Option<&str>| {
            v.map(str::to_string)
                .ok_or_else(|| format!("{key} needs a value"))
        };
        match key.as_str() {
            "type" => {}
            "target" | "dst" | "destination" => mount.target = Some(need(value)?),
            "source" | "src" => mount.source = Some(need(value)?),
            "from" => mount.from = Some(need(value)?),
            "id" => mount.id = Some(need(value)?),
            "readonly" | "ro" => {
                mount.readonly = Some(value.map_or(Ok(true), |v| parse_bool(&key, v))?)
            }
            "readwrite" | "rw" => {
                mount.readonly = Some(!value.map_or(Ok(true), |v| parse_bool(&key, v))?)
            }
            "required" => mount.required = Some(value.map_or(Ok(true), |v| parse_bool(&key, v))?),
            "sharing" => {
                mount.sharing = Some(match need(value)?.as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    other => {
                        return Err(format!(
                            "unknown sharing mode {other:?} (shared, private or locked)"
                        ));
                    }
                })
            }
            "mode" => {
                let v = need(value)?;
                mount.mode = Some(
                    u32::from_str_radix(&v, 8)
                        .map_err(|_| format!("mode expects an octal number, not {v:?}"))?,
                );
            }
            "uid" => mount.uid = Some(parse_u32("uid", &need(value)?)?),
            "gid" => mount.gid = Some(parse_u32("gid", &need(value)?)?),
            "env" => mount.env = Some(need(value)?),
            "size" => mount.size = Some(need(value)?),
            other => return Err(format!("unknown key {other:?}")),
        }
    }
    let allowed: &[&str] = match mount.kind {
        MountType::Bind => &["target", "source", "from", "readonly"],
        MountType::Cache => &[
            "target", "source", "from", "id", "sharing", "readonly", "mode", "uid", "gid",
        ],
        MountType::Tmpfs => &["target", "size"],
        MountType::Secret => &["target", "id", "required", "mode", "uid", "gid", "env"],
        MountType::Ssh => &["target", "id", "required", "mode", "uid", "gid"],
    };
    let present = [
        ("source", mount.source.is_some()),
        ("from", mount.from.is_some()),
        ("id", mount.id.is_some()),
        ("sharing", mount.sharing.is_some()),
        ("readonly", mount.readonly.is_some()),
        ("required", mount.required.is_some()),
        ("mode", mount.mode.is_some()),
        ("uid", mount.uid.is_some()),
        ("gid", mount.gid.is_some()),
        ("env", mount.env.is_some()),
        ("size", mount.size.is_some()),
    ];
    if let Some((key, _)) = present.iter().find(|(k, set)| *set && !allowed.contains(k)) {
        return Err(format!("{key} is not valid for a {:?} mount", mount.kind).to_lowercase());
    }
    let needs_target = matches!(
        mount.kind,
        MountType::Bind | MountType::Cache | MountType::Tmpfs
    );
    if needs_target && mount.target.is_none() {
        return Err("target is required (e.g. target=/root/.cache)".into());
    }
    if mount.kind == MountType::Secret
        && mount.id.is_none()
        && mount.target.is_none()
        && mount.env.is_none()
    {
        return Err("a secret mount needs id, target or env".into());
    }
    Ok(mount)
}

/// Splits comma-separated fields; a field may be double-quoted to hold commas.
fn csv_fields(text: &str) -> std::result::Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    if in_quotes {
        return Err("unterminated quote".into());
    }
    fields.push(field);
    Ok(fields
        .into_iter()
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    /// `--name` or `--name=true|false`.
    Bool,
    /// `--name=value`, at most once.
    Value,
    /// `--name=value`, repeatable.
    Many,
}

/// The flags given to one instruction, checked against the ones it accepts.
#[derive(Debug)]
struct Flags {
    given: Vec<(String, Option<String>)>,
}

impl Flags {
    fn read(node: &Node, accepted: &[(&str, FlagKind)]) -> Result<Self> {
        let mut given: Vec<(String, Option<String>)> = Vec::new();
        for raw in &node.flags {
            let body = raw.strip_prefix("--").unwrap_or(raw);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            let Some((_, kind)) = accepted.iter().find(|(n, _)| *n == name) else {
                return Err(InstructionError::at(
                    node,
                    InstructionErrorKind::UnknownFlag {
                        instruction: node.value.to_ascii_uppercase(),
                        flag: format!("--{name}"),
                    },
                ));
            };
            if *kind != FlagKind::Many && given.iter().any(|(n, _)| *n == name) {
                return Err(InstructionError::at(
                    node,
                    InstructionErrorKind::DuplicateFlag(name),
                ));
            }
            if *kind != FlagKind::Bool && value.is_none() {
                return Err(bad_flag(node, &name, "needs a value (--name=value)".into()));
            }
            given.push((name, value));
        }
        Ok(Self { given })
    }

    fn present(&self, name: &str) -> bool {
        self.given.iter().any(|(n, _)| n == name)
    }

    fn value(&mut self, name: &str) -> Option<String> {
        self.given
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
    }

    fn values(&mut self, name: &str) -> Vec<String> {
        self.given
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, v)| v.clone())
            .collect()
    }

    fn boolean(&mut self, node: &Node, name: &str) -> Result<bool> {
        match self.given.iter().find(|(n, _)| n == name) {
            None => Ok(false),
            Some((_, None)) => Ok(true),
            Some((_, Some(v))) => match v.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(bad_flag(
                    node,
                    name,
                    format!("expects true or false, not {v:?}"),
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> InstructionError {
        Dockerfile::parse(text).unwrap_err()
    }

    #[test]
    fn stages_and_global_args() {
        let d = Dockerfile::parse(
            "ARG V=1\nFROM alpine:$V AS Build\nRUN make\nFROM scratch\nCOPY --from=build /a /a\n",
        )
        .unwrap();
        assert_eq!(d.global_args.len(), 1);
        assert_eq!(d.global_args[0].default.as_deref(), Some("1"));
        assert_eq!(d.stages.len(), 2);
        assert_eq!(d.stages[0].name.as_deref(), Some("build"));
        assert_eq!(d.stages[0].base, "alpine:$V");
        let Instruction::Copy(copy) = &d.stages[1].instructions[0].instruction else {
            panic!()
        };
        assert_eq!(copy.from.as_deref(), Some("build"));
        assert_eq!(d.stages[1].instructions[0].line, 5);
    }

    #[test]
    fn unknown_instruction_names_line() {
        let e = err("FROM x\nRUN a\nFOO bar\n");
        assert_eq!(e.line, 3);
        assert_eq!(e.to_string(), "line 3: unknown instruction: FOO");
    }

    #[test]
    fn unknown_flag() {
        let e = err("FROM x\nCOPY --user=me a b\n");
        assert_eq!(e.reason(), "UnknownFlag");
        assert!(e.to_string().contains("--user"), "{e}");
    }

    #[test]
    fn instruction_before_from() {
        let e = err("RUN x\nFROM y\n");
        assert_eq!(e.reason(), "NoStage");
        assert_eq!(e.line, 1);
    }

    #[test]
    fn from_argument_count_and_names() {
        assert_eq!(err("FROM a b\n").reason(), "BadArguments");
        assert_eq!(err("FROM a AS 1x\n").reason(), "InvalidStageName");
        assert_eq!(
            err("FROM a AS x\nFROM b AS X\n").reason(),
            "DuplicateStageName"
        );
    }

    #[test]
    fn copy_from_variable_is_rejected() {
        let e = err("FROM a\nCOPY --from=$X /a /b\n");
        assert_eq!(e.reason(), "BadFlagValue");
        assert!(e.to_string().contains("not expanded"));
    }

    #[test]
    fn copy_needs_two_arguments_and_heredoc_sources() {
        assert_eq!(err("FROM a\nCOPY onlyone\n").reason(), "BadArguments");
        let d = Dockerfile::parse("FROM a\nCOPY <<EOF /etc/x\nhello\nEOF\n").unwrap();
        let Instruction::Copy(c) = &d.stages[0].instructions[0].instruction else {
            panic!()
        };
        assert_eq!(c.transfer.sources, vec!["EOF"]);
        assert_eq!(c.transfer.heredocs[0].content, "hello\n");
    }

    #[test]
    fn mounts_of_every_type() {
        let d = Dockerfile::parse(
            "FROM a\nRUN --mount=type=cache,target=/root/.cache,id=go,sharing=locked,mode=0755 \
             --mount=type=secret,id=tok,env=TOKEN --mount=type=bind,from=build,source=/out,target=/in \
             --mount=type=tmpfs,target=/tmp,size=64m --mount=type=ssh --network=none --security=sandbox make\n",
        )
        .unwrap();
        let Instruction::Run(run) = &d.stages[0].instructions[0].instruction else {
            panic!()
        };
        assert_eq!(run.mounts.len(), 5);
        assert_eq!(run.mounts[0].kind, MountType::Cache);
        assert_eq!(run.mounts[0].sharing, Some(Sharing::Locked));
        assert_eq!(run.mounts[0].mode, Some(0o755));
        assert_eq!(run.mounts[1].env.as_deref(), Some("TOKEN"));
        assert_eq!(run.mounts[2].from.as_deref(), Some("build"));
        assert_eq!(run.network, Some(NetworkMode::None));
    }

    #[test]
    fn bad_mounts() {
        assert_eq!(
            err("FROM a\nRUN --mount=type=cache x\n").reason(),
            "BadMount"
        );
        assert_eq!(
            err("FROM a\nRUN --mount=type=nope,target=/x x\n").reason(),
            "BadMount"
        );
        assert_eq!(
            err("FROM a\nRUN --mount=type=tmpfs,target=/x,from=y x\n").reason(),
            "BadMount"
        );
        assert!(
            err("FROM a\nRUN --mount=target=/x,bogus=1 x\n")
                .to_string()
                .contains("bogus")
        );
    }

    #[test]
    fn healthcheck_forms() {
        let d = Dockerfile::parse(
            "FROM a\nHEALTHCHECK --interval=1m30s --retries=3 CMD curl -f x\nHEALTHCHECK NONE\n",
        )
        .unwrap();
        let Instruction::Healthcheck(Healthcheck::Check {
            interval_ns,
            retries,
            command,
            ..
        }) = &d.stages[0].instructions[0].instruction
        else {
            panic!()
        };
        assert_eq!(*interval_ns, Some(90_000_000_000));
        assert_eq!(*retries, Some(3));
        assert_eq!(command, &CommandLine::Shell("curl -f x".into()));
        assert_eq!(
            err("FROM a\nHEALTHCHECK --interval=1x CMD x\n").reason(),
            "BadFlagValue"
        );
        assert_eq!(err("FROM a\nHEALTHCHECK PING x\n").reason(), "BadArguments");
    }

    #[test]
    fn shell_needs_json() {
        assert_eq!(err("FROM a\nSHELL /bin/bash -c\n").reason(), "BadArguments");
    }

    #[test]
    fn onbuild_rejects_from() {
        assert_eq!(err("FROM a\nONBUILD FROM b\n").reason(), "BadArguments");
        let d = Dockerfile::parse("FROM a\nONBUILD RUN echo hi\n").unwrap();
        let Instruction::Onbuild { expression, .. } = &d.stages[0].instructions[0].instruction
        else {
            panic!()
        };
        assert_eq!(expression, "RUN echo hi");
    }

    #[test]
    fn env_without_value_fails() {
        assert_eq!(err("FROM a\nENV PATH\n").reason(), "MissingValue");
    }

    #[test]
    fn bool_flags() {
        let d = Dockerfile::parse("FROM a\nCOPY --link=false --parents a b\nADD --keep-git-dir --checksum=sha256:ab https://x/y /z\n").unwrap();
        let Instruction::Copy(c) = &d.stages[0].instructions[0].instruction else {
            panic!()
        };
        assert!(!c.transfer.link && c.transfer.parents);
        assert_eq!(
            err("FROM a\nCOPY --link=maybe a b\n").reason(),
            "BadFlagValue"
        );
    }
}
