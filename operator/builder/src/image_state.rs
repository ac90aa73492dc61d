//! The image-config state a stage carries while its instructions run, and the metadata
//! instructions that change it (ENV, ARG, LABEL, MAINTAINER, EXPOSE, CMD, ENTRYPOINT, VOLUME,
//! USER, WORKDIR, STOPSIGNAL, HEALTHCHECK, ONBUILD, SHELL), with variable expansion exactly
//! where BuildKit expands (ENV/ARG/LABEL keys and values, EXPOSE, USER, WORKDIR, VOLUME,
//! STOPSIGNAL, COPY/ADD sources, destination and flags — never CMD, ENTRYPOINT, RUN, SHELL or
//! HEALTHCHECK) and the history text BuildKit records for each. Build-time ARG values live
//! here too: like BuildKit, an ARG with a value enters the stage's *build* environment (what
//! expansion and RUN see, where ARG and ENV overwrite each other, last one wins) but never the
//! image config's Env. The state is a plain serde struct; mapping it into an OCI image config
//! is the OCI crate's business.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use stagecoach_dockerfile::instructions::{
    CommandLine, Healthcheck, Instruction, KeyValue, Run, Transfer,
};
use stagecoach_dockerfile::parser::go_quote;
use stagecoach_dockerfile::shell::{Expanded, ShellLex};

/// The PATH every Linux stage gets when its base image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The history comment BuildKit puts on every entry it writes.
pub const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

pub use stagecoach_dockerfile::planner::PREDEFINED_ARGS;

/// Errors applying an instruction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Variable expansion failed.
    #[error("{instruction}: {message}")]
    Expansion {
        /// The instruction keyword.
        instruction: &'static str,
        /// The expansion error (names the word).
        message: String,
    },
    /// An EXPOSE port that does not parse.
    #[error("EXPOSE: invalid port {port:?}: {reason}")]
    BadPort {
        /// The port after expansion.
        port: String,
        /// What is wrong.
        reason: String,
    },
    /// A STOPSIGNAL that names no signal.
    #[error("STOPSIGNAL: invalid signal: {0}")]
    BadSignal(String),
    /// An empty VOLUME entry.
    #[error("VOLUME specified can not be an empty string")]
    EmptyVolume,
    /// An empty key in ENV, LABEL or ARG after expansion.
    #[error("{instruction}: empty name after expansion of {word:?}")]
    EmptyName {
        /// The instruction keyword.
        instruction: &'static str,
        /// The key as written.
        word: String,
    },
    /// An ONBUILD trigger from a base image that does not read as an instruction.
    #[error("ONBUILD trigger {expression:?}: {message}")]
    Trigger {
        /// The trigger as stored in the base image.
        expression: String,
        /// What is wrong.
        message: String,
    },
    /// RUN, COPY or ADD given to [`ImageState::apply`].
    #[error("{0} changes files: the executor runs it, not the image-state update")]
    NotMetadata(&'static str),
}

/// A HEALTHCHECK as the image config stores it (durations in nanoseconds, 0 = default).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthState {
    /// `["NONE"]`, `["CMD", …]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    /// Time between checks.
    pub interval_ns: u64,
    /// Time one check may take.
    pub timeout_ns: u64,
    /// Grace period after start.
    pub start_period_ns: u64,
    /// Interval during the start period.
    pub start_interval_ns: u64,
    /// Failures before unhealthy.
    pub retries: u32,
}

/// One ARG in scope in a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgValue {
    /// The name.
    pub name: String,
    /// Its value, `None` when declared without default nor `--build-arg`.
    pub value: Option<String>,
}

/// The config state of a stage.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageState {
    /// ENV, in order of first definition; redefinition replaces in place.
    pub env: Vec<(String, String)>,
    /// WORKDIR (absolute), empty when unset.
    pub working_dir: String,
    /// USER, empty when unset.
    pub user: String,
    /// SHELL, `None` for the default `/bin/sh -c`.
    pub shell: Option<Vec<String>>,
    /// ENTRYPOINT; `Some(vec![])` differs from unset.
    pub entrypoint: Option<Vec<String>>,
    /// CMD.
    pub cmd: Option<Vec<String>>,
    /// EXPOSE, as `port/proto`.
    pub exposed_ports: BTreeSet<String>,
    /// VOLUME.
    pub volumes: BTreeSet<String>,
    /// LABEL.
    pub labels: BTreeMap<String, String>,
    /// MAINTAINER (BuildKit records it as the image author).
    pub author: Option<String>,
    /// STOPSIGNAL.
    pub stop_signal: Option<String>,
    /// HEALTHCHECK.
    pub healthcheck: Option<HealthState>,
    /// ONBUILD triggers recorded by this stage (or inherited and not yet run).
    pub on_build: Vec<String>,
    /// Build-time ARGs in scope, in declaration order; never part of the image config.
    pub args: Vec<ArgValue>,
    /// The build environment: ENV and valued ARGs in order of first definition, a later
    /// ENV or ARG of the same name replacing the value in place (BuildKit's LLB state env).
    pub build_env: Vec<(String, String)>,
    /// Whether this stage set CMD itself (ENTRYPOINT then keeps it).
    pub cmd_set: bool,
}

/// Where ARG values come from.
#[derive(Debug, Clone, Default)]
pub struct ArgSource {
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// The global scope: automatic platform ARGs and ARGs declared before the first FROM, with
    /// their values (as `stagecoach_dockerfile::planner::global_env` computes them).
    pub global: Vec<(String, String)>,
}

/// A history entry as BuildKit writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// `created_by`.
    pub created_by: String,
    /// Whether the instruction makes no layer. WORKDIR other than `/` says false because it
    /// may create the directory; the executor marks it empty when the snapshot is.
    pub empty_layer: bool,
    /// Always [`HISTORY_COMMENT`].
    pub comment: String,
}

impl HistoryEntry {
    fn metadata(created_by: String) -> Self {
        Self {
            created_by,
            empty_layer: true,
            comment: HISTORY_COMMENT.to_string(),
        }
    }

    fn layer(created_by: String) -> Self {
        Self {
            created_by: format!("{created_by} # buildkit"),
            empty_layer: false,
            comment: HISTORY_COMMENT.to_string(),
        }
    }
}

/// What applying one instruction produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The history entry (`None` for ONBUILD, which BuildKit records in the config only).
    pub history: Option<HistoryEntry>,
    /// Build ARGs whose values the instruction read (for its cache key).
    pub used_args: BTreeSet<String>,
}

/// A COPY/ADD with its words expanded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExpandedTransfer {
    /// Sources (heredoc names unexpanded).
    pub sources: Vec<String>,
    /// Destination.
    pub dest: String,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<String>,
    /// `--exclude` patterns.
    pub excludes: Vec<String>,
    /// Build ARGs read.
    pub used_args: BTreeSet<String>,
}

impl ImageState {
    /// The state of `FROM scratch`.
    pub fn scratch() -> Self {
        Self::default().start_stage()
    }

    /// Prepares a state filled from a base image's config (or a parent stage) for a new
    /// stage: PATH set if the base has none (as BuildKit does for every Linux stage), the
    /// build environment reset to the config's Env, and what is per stage (ARGs, "CMD set
    /// here") dropped.
    pub fn start_stage(mut self) -> Self {
        if !self.env.iter().any(|(k, _)| k == "PATH") {
            self.env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        self.build_env = self.env.clone();
        self.args.clear();
        self.cmd_set = false;
        self
    }

    /// A new stage starting from this one (`FROM <stage>`).
    pub fn child(&self) -> Self {
        self.clone().start_stage()
    }

    /// Takes the ONBUILD triggers inherited from a base image, to run them first; the new
    /// image does not keep them (BuildKit clears them once run).
    pub fn take_onbuild_triggers(&mut self) -> Vec<String> {
        std::mem::take(&mut self.on_build)
    }

    /// The shell for shell-form commands.
    pub fn effective_shell(&self) -> Vec<String> {
        self.shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    /// ENV as `KEY=value` strings, as the image config stores them.
    pub fn env_strings(&self) -> Vec<String> {
        self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// What `$NAME` expands to: the build environment.
    pub fn expansion_env(&self) -> Vec<(String, String)> {
        self.build_env.clone()
    }

    /// The environment of a RUN: the build environment, then predefined proxy build args
    /// even if undeclared.
    pub fn run_env(&self, args: &ArgSource) -> Vec<(String, String)> {
        let mut out = self.build_env.clone();
        for name in PREDEFINED_ARGS {
            if let Some(v) = args.build_args.get(*name)
                && !out.iter().any(|(k, _)| k == name)
            {
                out.push(((*name).to_string(), v.clone()));
            }
        }
        out
    }

    /// The argv of a RUN (shell form goes through the stage's SHELL).
    pub fn run_argv(&self, run: &Run) -> Vec<String> {
        match &run.command {
            CommandLine::Exec(argv) => argv.clone(),
            CommandLine::Shell(cmd) => {
                let mut argv = self.effective_shell();
                argv.push(cmd.clone());
                argv
            }
        }
    }

    /// BuildKit's history text for a RUN: `RUN [|n K=V…] argv… # buildkit`, listing every ARG
    /// in scope with the value RUN sees.
    pub fn run_history(&self, run: &Run, args: &ArgSource) -> HistoryEntry {
        let env = self.run_env(args);
        let mut seen: Vec<(String, String)> = Vec::new();
        for a in &self.args {
            let v = lookup(&env, &a.name)
                .or_else(|| a.value.clone())
                .unwrap_or_default();
            match seen.iter_mut().find(|(k, _)| k == &a.name) {
                Some(slot) => slot.1 = v,
                None => seen.push((a.name.clone(), v)),
            }
        }
        let mut words = Vec::new();
        if !seen.is_empty() {
            words.push(format!("|{}", seen.len()));
            words.extend(seen.into_iter().map(|(k, v)| format!("{k}={v}")));
        }
        words.extend(self.run_argv(run));
        HistoryEntry::layer(format!("RUN {}", words.join(" ")))
    }

    /// Names of the ARGs with values in scope (what a RUN's cache key depends on).
    pub fn args_in_scope(&self) -> BTreeSet<String> {
        self.args.iter().map(|a| a.name.clone()).collect()
    }

    fn expand(
        &self,
        lex: &ShellLex,
        instruction: &'static str,
        word: &str,
    ) -> Result<Expanded, StateError> {
        lex.process_word(word, &self.build_env)
            .map_err(|e| StateError::Expansion {
                instruction,
                message: e.to_string(),
            })
    }

    /// Which of `matched` are declared ARGs. One shadowed by a later ENV is still listed: a
    /// needless cache miss is harmless, a missed dependency is not.
    fn args_among(&self, matched: &BTreeSet<String>) -> BTreeSet<String> {
        matched
            .iter()
            .filter(|n| self.args.iter().any(|a| &a.name == *n))
            .cloned()
            .collect()
    }

    fn set_build_env(&mut self, name: &str, value: &str) {
        match self.build_env.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.build_env.push((name.to_string(), value.to_string())),
        }
    }

    /// Expands a COPY/ADD's sources, destination, `--chown`, `--chmod` and `--exclude`.
    /// Heredoc source names are left alone.
    pub fn expand_transfer(
        &self,
        lex: &ShellLex,
        keyword: &'static str,
        transfer: &Transfer,
    ) -> Result<ExpandedTransfer, StateError> {
        let mut used = BTreeSet::new();
        let mut one = |word: &str| -> Result<String, StateError> {
            let e = self.expand(lex, keyword, word)?;
            used.extend(self.args_among(&e.matched));
            Ok(e.value)
        };
        let mut sources = Vec::new();
        for s in &transfer.sources {
            if transfer.heredocs.iter().any(|h| &h.name == s) {
                sources.push(s.clone());
            } else {
                sources.push(one(s)?);
            }
        }
        let dest = one(&transfer.dest)?;
        let chown = transfer.chown.as_deref().map(&mut one).transpose()?;
        let chmod = transfer.chmod.as_deref().map(&mut one).transpose()?;
        let excludes = transfer
            .exclude
            .iter()
            .map(|e| one(e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ExpandedTransfer {
            sources,
            dest,
            chown,
            chmod,
            excludes,
            used_args: used,
        })
    }

    /// BuildKit's history text for a COPY/ADD, from the expanded words: keyword,
    /// `--parents`, `--chown=`, `--chmod=` (never `--from`), the path sources, then the heredoc
    /// sources as `<<NAME`, then the destination.
    pub fn transfer_history(
        keyword: &str,
        transfer: &Transfer,
        expanded: &ExpandedTransfer,
    ) -> HistoryEntry {
        let mut text = keyword.to_string();
        if transfer.parents {
            text.push_str(" --parents");
        }
        if let Some(c) = &expanded.chown {
            text.push_str(&format!(" --chown={c}"));
        }
        if let Some(c) = &expanded.chmod {
            text.push_str(&format!(" --chmod={c}"));
        }
        let is_heredoc = |s: &String| transfer.heredocs.iter().any(|h| &h.name == s);
        for s in expanded.sources.iter().filter(|s| !is_heredoc(s)) {
            text.push(' ');
            text.push_str(s);
        }
        for s in expanded.sources.iter().filter(|s| is_heredoc(s)) {
            text.push_str(&format!(" <<{s}"));
        }
        text.push(' ');
        text.push_str(&expanded.dest);
        HistoryEntry::layer(text)
    }

    /// Applies a metadata instruction.
    pub fn apply(
        &mut self,
        lex: &ShellLex,
        instruction: &Instruction,
        args: &ArgSource,
    ) -> Result<Applied, StateError> {
        let mut used = BTreeSet::new();
        let history = match instruction {
            Instruction::Run(_) => return Err(StateError::NotMetadata("RUN")),
            Instruction::Copy(_) => return Err(StateError::NotMetadata("COPY")),
            Instruction::Add(_) => return Err(StateError::NotMetadata("ADD")),
            Instruction::Env(pairs) => {
                let expanded = self.expand_pairs(lex, "ENV", pairs, &mut used)?;
                for (k, v) in &expanded {
                    match self.env.iter_mut().find(|(key, _)| key == k) {
                        Some(slot) => slot.1 = v.clone(),
                        None => self.env.push((k.clone(), v.clone())),
                    }
                    self.set_build_env(k, v);
                }
                HistoryEntry::metadata(format!("ENV {}", kv_text(&expanded)))
            }
            Instruction::Label(pairs) => {
                let expanded = self.expand_pairs(lex, "LABEL", pairs, &mut used)?;
                for (k, v) in &expanded {
                    self.labels.insert(k.clone(), v.clone());
                }
                HistoryEntry::metadata(format!("LABEL {}", kv_text(&expanded)))
            }
            Instruction::Maintainer(name) => {
                self.author = Some(name.clone());
                HistoryEntry::metadata(format!("MAINTAINER {name}"))
            }
            Instruction::Arg(decls) => {
                // BuildKit expands every name and default of the instruction first, against
                // the environment before it, then dispatches the names one by one and expands
                // each default once more against the environment at that point. So
                // `ARG A=1 B=$A` gives B the A from *before* the line, and a default is
                // expanded twice. The history shows the value in force (a --build-arg wins).
                let mut first_pass = Vec::new();
                for d in decls {
                    let name = self.expand(lex, "ARG", &d.name)?;
                    used.extend(self.args_among(&name.matched));
                    if name.value.is_empty() {
                        return Err(StateError::EmptyName {
                            instruction: "ARG",
                            word: d.name.clone(),
                        });
                    }
                    let default = match &d.default {
                        Some(text) => {
                            let e = self.expand(lex, "ARG", text)?;
                            used.extend(self.args_among(&e.matched));
                            Some(e.value)
                        }
                        None => None,
                    };
                    first_pass.push((name.value, default));
                }
                let mut parts = Vec::new();
                for (name, default) in first_pass {
                    let value = if let Some(v) = args.build_args.get(&name) {
                        Some(v.clone())
                    } else if let Some(text) = default {
                        let e = self.expand(lex, "ARG", &text)?;
                        used.extend(self.args_among(&e.matched));
                        Some(e.value)
                    } else {
                        lookup(&args.global, &name)
                    };
                    parts.push(match &value {
                        Some(v) => format!("{name}={v}"),
                        None => name.clone(),
                    });
                    if let Some(v) = &value {
                        self.set_build_env(&name, v);
                    }
                    self.args.push(ArgValue { name, value });
                }
                HistoryEntry::metadata(format!("ARG {}", parts.join(" ")))
            }
            Instruction::Expose(ports) => {
                // EXPOSE splits words after expansion; the history prints the parsed set the
                // way Go prints a map (`map[80/tcp:{} 53/udp:{}]`, keys sorted).
                let mut these = BTreeSet::new();
                for p in ports {
                    let e = self.expand(lex, "EXPOSE", p)?;
                    used.extend(self.args_among(&e.matched));
                    let words = lex.process_words(p, &self.build_env).map_err(|e| {
                        StateError::Expansion {
                            instruction: "EXPOSE",
                            message: e.to_string(),
                        }
                    })?;
                    for word in words {
                        these.extend(parse_port_spec(&word)?);
                    }
                }
                let shown: Vec<String> = these.iter().map(|p| format!("{p}:{{}}")).collect();
                self.exposed_ports.extend(these);
                HistoryEntry::metadata(format!("EXPOSE map[{}]", shown.join(" ")))
            }
            Instruction::Cmd(cmd) => {
                let argv = self.command_argv(cmd);
                self.cmd = Some(argv.clone());
                self.cmd_set = true;
                HistoryEntry::metadata(format!("CMD {}", go_slice(&argv)))
            }
            Instruction::Entrypoint(cmd) => {
                let argv = self.command_argv(cmd);
                self.entrypoint = Some(argv.clone());
                if !self.cmd_set {
                    self.cmd = None;
                }
                HistoryEntry::metadata(format!("ENTRYPOINT {}", go_slice(&argv)))
            }
            Instruction::Shell(argv) => {
                self.shell = Some(argv.clone());
                HistoryEntry::metadata(format!("SHELL {}", go_print_slice(argv)))
            }
            Instruction::Volume(volumes) => {
                let mut list = Vec::new();
                for v in volumes {
                    let e = self.expand(lex, "VOLUME", v)?;
                    used.extend(self.args_among(&e.matched));
                    if e.value.trim().is_empty() {
                        return Err(StateError::EmptyVolume);
                    }
                    list.push(e.value);
                }
                self.volumes.extend(list.iter().cloned());
                HistoryEntry::metadata(format!("VOLUME {}", go_print_slice(&list)))
            }
            Instruction::User(user) => {
                let e = self.expand(lex, "USER", user)?;
                used.extend(self.args_among(&e.matched));
                self.user = e.value;
                HistoryEntry::metadata(format!("USER {}", self.user))
            }
            Instruction::Workdir(path) => {
                let e = self.expand(lex, "WORKDIR", path)?;
                used.extend(self.args_among(&e.matched));
                let base = if self.working_dir.is_empty() {
                    "/"
                } else {
                    &self.working_dir
                };
                let joined = if e.value.starts_with('/') {
                    e.value.clone()
                } else {
                    format!("{base}/{}", e.value)
                };
                self.working_dir = crate::pattern::clean(&joined);
                let text = format!("WORKDIR {}", self.working_dir);
                if self.working_dir == "/" {
                    HistoryEntry::metadata(text)
                } else {
                    HistoryEntry {
                        created_by: text,
                        empty_layer: false,
                        comment: HISTORY_COMMENT.to_string(),
                    }
                }
            }
            Instruction::StopSignal(signal) => {
                let e = self.expand(lex, "STOPSIGNAL", signal)?;
                used.extend(self.args_among(&e.matched));
                if !valid_signal(&e.value) {
                    return Err(StateError::BadSignal(e.value));
                }
                self.stop_signal = Some(e.value.clone());
                HistoryEntry::metadata(format!("STOPSIGNAL {}", e.value))
            }
            Instruction::Healthcheck(check) => {
                let state = match check {
                    Healthcheck::None => HealthState {
                        test: vec!["NONE".into()],
                        ..HealthState::default()
                    },
                    Healthcheck::Check {
                        command,
                        interval_ns,
                        timeout_ns,
                        start_period_ns,
                        start_interval_ns,
                        retries,
                    } => HealthState {
                        test: match command {
                            CommandLine::Exec(argv) => {
                                let mut t = vec!["CMD".to_string()];
                                t.extend(argv.iter().cloned());
                                t
                            }
                            CommandLine::Shell(cmd) => vec!["CMD-SHELL".into(), cmd.clone()],
                        },
                        interval_ns: interval_ns.unwrap_or(0),
                        timeout_ns: timeout_ns.unwrap_or(0),
                        start_period_ns: start_period_ns.unwrap_or(0),
                        start_interval_ns: start_interval_ns.unwrap_or(0),
                        retries: retries.unwrap_or(0),
                    },
                };
                let text = format!(
                    "HEALTHCHECK &{{{} {} {} {} {} {}}}",
                    go_slice(&state.test),
                    go_quote(&go_duration(state.interval_ns)),
                    go_quote(&go_duration(state.timeout_ns)),
                    go_quote(&go_duration(state.start_period_ns)),
                    go_quote(&go_duration(state.start_interval_ns)),
                    go_quote_rune(state.retries),
                );
                self.healthcheck = Some(state);
                HistoryEntry::metadata(text)
            }
            Instruction::Onbuild { expression, .. } => {
                self.on_build.push(expression.clone());
                return Ok(Applied {
                    history: None,
                    used_args: used,
                });
            }
        };
        Ok(Applied {
            history: Some(history),
            used_args: used,
        })
    }

    /// ENV and LABEL expand every key and value against the state before the instruction, so
    /// `ENV a=1 b=$a` sees the old `a`.
    fn expand_pairs(
        &self,
        lex: &ShellLex,
        instruction: &'static str,
        pairs: &[KeyValue],
        used: &mut BTreeSet<String>,
    ) -> Result<Vec<(String, String)>, StateError> {
        let mut out = Vec::new();
        for kv in pairs {
            let k = self.expand(lex, instruction, &kv.key)?;
            let v = self.expand(lex, instruction, &kv.value)?;
            used.extend(self.args_among(&k.matched));
            used.extend(self.args_among(&v.matched));
            if k.value.is_empty() {
                return Err(StateError::EmptyName {
                    instruction,
                    word: kv.key.clone(),
                });
            }
            out.push((k.value, v.value));
        }
        Ok(out)
    }

    fn command_argv(&self, cmd: &CommandLine) -> Vec<String> {
        match cmd {
            CommandLine::Exec(argv) => argv.clone(),
            CommandLine::Shell(text) => {
                let mut argv = self.effective_shell();
                argv.push(text.clone());
                argv
            }
        }
    }
}

fn lookup(env: &[(String, String)], name: &str) -> Option<String> {
    env.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

fn kv_text(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads an ONBUILD trigger, as a base image's config stores it, back into the instruction
/// the executor runs first in a stage built on that image.
pub fn parse_trigger(expression: &str) -> Result<Instruction, StateError> {
    let err = |message: String| StateError::Trigger {
        expression: expression.to_string(),
        message,
    };
    let d = stagecoach_dockerfile::Dockerfile::parse(&format!("FROM scratch\n{expression}\n"))
        .map_err(|e| err(e.to_string()))?;
    let mut stages = d.stages.into_iter();
    let mut instructions = stages
        .next()
        .map(|s| s.instructions)
        .unwrap_or_default()
        .into_iter();
    match (instructions.next(), instructions.next(), stages.next()) {
        (Some(one), None, None) => match one.instruction {
            Instruction::Onbuild { .. } => Err(err("ONBUILD cannot trigger ONBUILD".into())),
            Instruction::Maintainer(_) => Err(err("MAINTAINER cannot be a trigger".into())),
            other => Ok(other),
        },
        _ => Err(err(
            "a trigger is exactly one instruction other than FROM".into()
        )),
    }
}

/// Go's `%v` of a `[]string`: `[a b]`.
fn go_print_slice(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
fn go_slice(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `%q` of an integer: a quoted character literal (`'\x03'`).
fn go_quote_rune(n: u32) -> String {
    let body = match n {
        7 => "\\a".to_string(),
        8 => "\\b".to_string(),
        9 => "\\t".to_string(),
        10 => "\\n".to_string(),
        11 => "\\v".to_string(),
        12 => "\\f".to_string(),
        13 => "\\r".to_string(),
        39 => "\\'".to_string(),
        92 => "\\\\".to_string(),
        0x20..=0x7e => char::from_u32(n).map(String::from).unwrap_or_default(),
        0..=0x7f => format!("\\x{n:02x}"),
        0xa1..=0xff if n != 0xad => char::from_u32(n).map(String::from).unwrap_or_default(),
        0x80..=0xffff => format!("\\u{n:04x}"),
        _ => format!("\\U{n:08x}"),
    };
    format!("'{body}'")
}

/// Go's `time.Duration.String`.
pub fn go_duration(ns: u64) -> String {
    fn frac(v: u64, digits: u32) -> String {
        let div = 10u64.pow(digits);
        let whole = v / div;
        let rest = v % div;
        if rest == 0 {
            return whole.to_string();
        }
        let mut f = format!("{rest:0width$}", width = digits as usize);
        while f.ends_with('0') {
            f.pop();
        }
        format!("{whole}.{f}")
    }
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", frac(ns, 3));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", frac(ns, 6));
    }
    let secs = ns / 1_000_000_000;
    let sub = ns % 1_000_000_000;
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let s_text = frac(s * 1_000_000_000 + sub, 9);
    match (h, m) {
        (0, 0) => format!("{s_text}s"),
        (0, _) => format!("{m}m{s_text}s"),
        _ => format!("{h}h{m}m{s_text}s"),
    }
}

/// Parses one EXPOSE word the way Docker's `nat.ParsePortSpec` reads it for EXPOSE: optional
/// `ip:hostport:` prefix, a port or `start-end` range, optional `/proto` (tcp, udp, sctp).
pub fn parse_port_spec(word: &str) -> Result<Vec<String>, StateError> {
    let bad = |reason: &str| StateError::BadPort {
        port: word.to_string(),
        reason: reason.to_string(),
    };
    let (spec, proto) = match word.split_once('/') {
        Some((s, p)) => (s, p.to_ascii_lowercase()),
        None => (word, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad(&format!("invalid proto: {proto}")));
    }
    let container = spec.rsplit(':').next().unwrap_or(spec);
    if container.is_empty() {
        return Err(bad("no port specified"));
    }
    let parse = |p: &str| p.parse::<u16>().map_err(|_| bad("invalid containerPort"));
    let (start, end) = match container.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(container)?;
            (p, p)
        }
    };
    if end < start {
        return Err(bad("invalid range: end before start"));
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

const SIGNALS: &[&str] = &[
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
    "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
    "TTIN", "TTOU", "UNUSED", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ", "RTMIN",
    "RTMAX",
];

/// Whether `s` names a signal the way moby's `signal.ParseSignal` accepts it: any non-zero
/// number, or a name (any case, with or without `SIG`, `RTMIN+n` / `RTMAX-n` included).
fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<i64>() {
        return n != 0;
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if SIGNALS.contains(&name) {
        return true;
    }
    for (base, sep) in [("RTMIN", '+'), ("RTMAX", '-')] {
        if let Some(rest) = name.strip_prefix(base).and_then(|r| r.strip_prefix(sep))
            && let Ok(n) = rest.parse::<u32>()
        {
            return (1..=15).contains(&n);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagecoach_dockerfile::Dockerfile;

    /// Applies every instruction of the last stage; returns the history texts (`-` where
    /// there is none).
    fn run(text: &str, args: &ArgSource) -> (ImageState, Vec<String>) {
        let d = Dockerfile::parse(text).unwrap();
        let lex = ShellLex::new(d.escape);
        let mut s = ImageState::scratch();
        let mut history = Vec::new();
        for i in &d.stages.last().unwrap().instructions {
            let h = match &i.instruction {
                Instruction::Run(r) => Some(s.run_history(r, args)),
                Instruction::Copy(c) => {
                    let e = s.expand_transfer(&lex, "COPY", &c.transfer).unwrap();
                    Some(ImageState::transfer_history("COPY", &c.transfer, &e))
                }
                other => s.apply(&lex, other, args).unwrap().history,
            };
            history.push(h.map_or_else(|| "-".to_string(), |h| h.created_by));
        }
        (s, history)
    }

    #[test]
    fn env_and_history() {
        let (s, h) = run(
            "FROM scratch\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\nENV PATH=/x:$PATH\n",
            &ArgSource::default(),
        );
        let get = |k: &str| lookup(&s.env, k).unwrap();
        assert_eq!(get("def"), "hello", "one ENV sees the values before it");
        assert_eq!(get("ghi"), "bye");
        assert_eq!(get("PATH"), format!("/x:{DEFAULT_PATH}"));
        assert_eq!(s.env[0].0, "PATH", "redefinition keeps the position");
        assert_eq!(h[1], "ENV abc=bye def=hello");
    }

    #[test]
    fn args_are_build_time_only() {
        let mut args = ArgSource::default();
        args.build_args.insert("V".into(), "2".into());
        args.build_args
            .insert("http_proxy".into(), "http://p".into());
        args.global = vec![
            ("TARGETARCH".into(), "amd64".into()),
            ("G".into(), "global".into()),
        ];
        let text = "FROM scratch\nARG V=1 W=$V\nARG G\nARG TARGETARCH\nARG NONE\nENV E=$V\nRUN make\nLABEL w=$W\n";
        let (s, h) = run(text, &args);
        assert_eq!(
            h[0], "ARG V=2 W=",
            "defaults are expanded against the environment before the line"
        );
        assert_eq!(lookup(&s.env, "E").unwrap(), "2");
        assert!(
            lookup(&s.env, "V").is_none(),
            "ARGs never reach the config env"
        );
        assert_eq!(s.labels["w"], "");
        let env = s.run_env(&args);
        assert_eq!(lookup(&env, "G").unwrap(), "global");
        assert_eq!(lookup(&env, "TARGETARCH").unwrap(), "amd64");
        assert_eq!(lookup(&env, "http_proxy").unwrap(), "http://p");
        assert_eq!(
            h[5],
            "RUN |5 V=2 W= G=global TARGETARCH=amd64 NONE= /bin/sh -c make # buildkit"
        );
        // ENV after ARG shadows it; an ARG after ENV overrides it in the build environment
        // (BuildKit's state env) while the config keeps the ENV value.
        let (s, _) = run("FROM scratch\nARG X=arg\nENV X=env\nENV Y=$X\n", &args);
        assert_eq!(lookup(&s.env, "Y").unwrap(), "env");
        let (s, h) = run(
            "FROM scratch\nENV X=env\nARG X=arg\nENV Y=$X\nRUN x\n",
            &args,
        );
        assert_eq!(lookup(&s.env, "Y").unwrap(), "arg");
        assert_eq!(lookup(&s.env, "X").unwrap(), "env");
        assert_eq!(h[3], "RUN |1 X=arg /bin/sh -c x # buildkit");
        // Across lines a default sees earlier ARGs; inside quotes it is expanded twice.
        let (s2, h2) = run(
            "FROM scratch\nARG V=1\nARG W=$V Q='$V'\n",
            &ArgSource::default(),
        );
        assert_eq!(h2[1], "ARG W=1 Q=1");
        assert_eq!(lookup(&s2.build_env, "Q").unwrap(), "1");
        // A new stage forgets the ARGs.
        let child = s.child();
        assert!(child.args.is_empty());
        assert_eq!(lookup(&child.build_env, "X").unwrap(), "env");
    }

    #[test]
    fn used_args_are_reported() {
        let d =
            Dockerfile::parse("FROM scratch\nARG A=1\nARG B=2\nENV X=$A\nWORKDIR /w/$B\n").unwrap();
        let lex = ShellLex::new('\\');
        let mut s = ImageState::scratch();
        let args = ArgSource::default();
        let used: Vec<_> = d.stages[0]
            .instructions
            .iter()
            .map(|i| s.apply(&lex, &i.instruction, &args).unwrap().used_args)
            .collect();
        assert!(used[2].contains("A") && !used[2].contains("B"));
        assert!(used[3].contains("B"));
        assert_eq!(s.working_dir, "/w/2");
    }

    #[test]
    fn cmd_entrypoint_shell() {
        let (s, h) = run(
            "FROM scratch\nCMD [\"serve\"]\nENTRYPOINT [\"/app\"]\nSHELL [\"/bin/bash\", \"-c\"]\nCMD echo $HOME\n",
            &ArgSource::default(),
        );
        assert_eq!(s.entrypoint, Some(vec!["/app".to_string()]));
        assert_eq!(
            s.cmd,
            Some(vec!["/bin/bash".into(), "-c".into(), "echo $HOME".into()]),
            "CMD is never expanded and uses the current SHELL"
        );
        assert_eq!(h[0], "CMD [\"serve\"]");
        assert_eq!(h[1], "ENTRYPOINT [\"/app\"]");
        assert_eq!(h[2], "SHELL [/bin/bash -c]");
        assert_eq!(h[3], "CMD [\"/bin/bash\" \"-c\" \"echo $HOME\"]");

        // An inherited CMD is reset by ENTRYPOINT; one set in this stage is kept.
        let mut base = ImageState::scratch();
        base.cmd = Some(vec!["sh".into()]);
        let mut child = base.child();
        let lex = ShellLex::new('\\');
        let d = Dockerfile::parse("FROM x\nENTRYPOINT [\"/e\"]\n").unwrap();
        child
            .apply(
                &lex,
                &d.stages[0].instructions[0].instruction,
                &ArgSource::default(),
            )
            .unwrap();
        assert_eq!(child.cmd, None);
    }

    #[test]
    fn ports_volumes_user_workdir_signal() {
        let (s, h) = run(
            "FROM scratch\nARG P=8080\nEXPOSE 80 $P/udp 8000-8002\nVOLUME /data [\"/a\"]\nUSER app:$P\nWORKDIR /srv\nWORKDIR app/../www\nSTOPSIGNAL SIGQUIT\nMAINTAINER me@x\nWORKDIR /\n",
            &ArgSource::default(),
        );
        let ports: Vec<_> = s.exposed_ports.iter().cloned().collect();
        assert_eq!(
            ports,
            ["80/tcp", "8000/tcp", "8001/tcp", "8002/tcp", "8080/udp"]
        );
        assert_eq!(
            h[1],
            "EXPOSE map[80/tcp:{} 8000/tcp:{} 8001/tcp:{} 8002/tcp:{} 8080/udp:{}]"
        );
        assert!(s.volumes.contains("/data"));
        assert_eq!(s.user, "app:8080");
        assert_eq!(h[3], "USER app:8080");
        assert_eq!(h[4], "WORKDIR /srv");
        assert_eq!(h[5], "WORKDIR /srv/www");
        assert_eq!(s.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(
            s.author.as_deref(),
            Some("me@x"),
            "MAINTAINER sets the author"
        );
        assert!(s.labels.is_empty());
        assert_eq!(h[7], "MAINTAINER me@x");
        assert_eq!(s.working_dir, "/");
        assert!(parse_port_spec("80/xyz").is_err());
        assert!(parse_port_spec("90-80").is_err());
        assert!(parse_port_spec("70000").is_err());
        assert_eq!(parse_port_spec("127.0.0.1:8080:80").unwrap(), ["80/tcp"]);
        assert!(!valid_signal("SIGFOO") && valid_signal("9") && valid_signal("rtmin+3"));
        assert!(!valid_signal("0"));
    }

    #[test]
    fn workdir_history_layers() {
        let d = Dockerfile::parse("FROM scratch\nWORKDIR /app\nWORKDIR /\n").unwrap();
        let lex = ShellLex::new('\\');
        let mut s = ImageState::scratch();
        let hist: Vec<_> = d.stages[0]
            .instructions
            .iter()
            .map(|i| {
                s.apply(&lex, &i.instruction, &ArgSource::default())
                    .unwrap()
                    .history
                    .unwrap()
            })
            .collect();
        assert!(
            !hist[0].empty_layer,
            "WORKDIR /app may create the directory"
        );
        assert!(hist[1].empty_layer);
        assert_eq!(hist[0].comment, HISTORY_COMMENT);
    }

    #[test]
    fn healthcheck_and_onbuild() {
        let (mut s, h) = run(
            "FROM scratch\nHEALTHCHECK --interval=1m30s --timeout=3s --retries=3 CMD curl -f http://localhost/ || exit 1\nONBUILD RUN echo $X\n",
            &ArgSource::default(),
        );
        assert_eq!(
            h[0],
            "HEALTHCHECK &{[\"CMD-SHELL\" \"curl -f http://localhost/ || exit 1\"] \"1m30s\" \"3s\" \"0s\" \"0s\" '\\x03'}"
        );
        assert_eq!(h[1], "-", "ONBUILD adds no history entry");
        let triggers = s.take_onbuild_triggers();
        assert_eq!(triggers, ["RUN echo $X"]);
        assert!(matches!(
            parse_trigger(&triggers[0]),
            Ok(Instruction::Run(_))
        ));
        assert!(parse_trigger("FROM x").is_err());
        assert!(parse_trigger("ONBUILD RUN x").is_err());
        assert!(parse_trigger("NOPE x").is_err());
        assert!(s.on_build.is_empty());
        assert_eq!(go_duration(1_500_000), "1.5ms");
        assert_eq!(go_duration(3_723_000_000_000), "1h2m3s");
        assert_eq!(go_duration(500), "500ns");
        assert_eq!(go_quote_rune(0), "'\\x00'");
        assert_eq!(go_quote_rune(10), "'\\n'");
        assert_eq!(go_quote_rune(65), "'A'");
    }

    #[test]
    fn copy_words_expand() {
        let (_, h) = run(
            "FROM scratch\nARG D=/dst U=1000\nCOPY --chown=$U:$U --from=build src/$U ${D}/\nCOPY --parents --chmod=0644 <<EOF a /f/\n$D\nEOF\n",
            &ArgSource::default(),
        );
        assert_eq!(h[1], "COPY --chown=1000:1000 src/1000 /dst/ # buildkit");
        assert_eq!(h[2], "COPY --parents --chmod=0644 a <<EOF /f/ # buildkit");
    }

    #[test]
    fn expansion_errors_name_the_instruction() {
        let d = Dockerfile::parse("FROM scratch\nUSER ${X:?must be set}\n").unwrap();
        let mut s = ImageState::scratch();
        let e = s
            .apply(
                &ShellLex::new('\\'),
                &d.stages[0].instructions[0].instruction,
                &ArgSource::default(),
            )
            .unwrap_err();
        assert!(e.to_string().starts_with("USER: "), "{e}");
        assert!(e.to_string().contains("must be set"), "{e}");
    }
}
