//! RUN steps: the process's argv (shell form, exec form, heredocs, `#!` scripts), its
//! environment and user, its mounts, and running it through the [`Runner`] between two
//! snapshots. With a runner that cannot mount (a builder pod), mounts must already be in
//! place and a `#!` script is written where it would have been bound.

use super::mounts::{ScratchDirs, check_premounted, lock_file, stubs};
use super::*;

impl StageExecutor<'_> {
    pub(super) fn step_run(
        &self,
        stage: &StageSpec<'_>,
        ctx: &mut StepCtx<'_, '_>,
        run: &Run,
    ) -> Result<FileOutcome, ExecutorError> {
        let step = ctx.step;
        let line = step.line;
        let state = &ctx.cursor.state;
        let history = state.run_history(run, &stage.args);
        let mut env = state.run_env(&stage.args);
        let script = shebang_script(run);
        let argv = match &script {
            Some((path, _)) => vec![path.clone()],
            None => run_argv(state, run),
        };
        let cwd = if state.working_dir.is_empty() {
            "/".to_string()
        } else {
            state.working_dir.clone()
        };
        let user_spec = if state.user.is_empty() {
            "0"
        } else {
            state.user.as_str()
        };
        let user = users::resolve_process_user(&self.rootfs, user_spec)
            .map_err(|source| ExecutorError::User { line, source })?;
        if !env.iter().any(|(k, _)| k == "HOME") {
            let home = users::home_dir(&self.rootfs, user.uid)
                .map_err(|source| ExecutorError::User { line, source })?;
            env.push(("HOME".to_string(), home));
        }
        let network = match run.network {
            Some(NetworkMode::None) => RunNetwork::None,
            _ => RunNetwork::Host,
        };
        // The key covers the history text (argv and every ARG in scope), the instruction as
        // written (mount flags, network) and the content of bind-mounted sources.
        let mut key = CacheKey::new(
            &ctx.cursor.parent_key,
            &format!("{}\n{}", history.created_by, step.original),
        );
        let mut prepared = Vec::new();
        for m in &run.mounts {
            let p = self.prepare_mount(m, &cwd, line, &mut env)?;
            if let Some(input) = &p.key_input {
                key = key.input(&input.0, &input.1);
            }
            prepared.push(p);
        }
        let key = key.digest();
        let excluded: Vec<PathBuf> = prepared
            .iter()
            .filter_map(|p| {
                p.target
                    .as_ref()
                    .map(|t| PathBuf::from(t.trim_start_matches('/')))
            })
            .collect();
        let request_base = RunRequest {
            rootfs: self.rootfs.clone(),
            argv,
            env,
            cwd: PathBuf::from(&cwd),
            user,
            mounts: prepared.iter().filter_map(|p| p.mount.clone()).collect(),
            network,
            hostname: "stagecoach".to_string(),
            timeout: self.options.run_timeout,
            tail_lines: self.options.tail_lines,
        };
        let number = step.number;
        let original = step.original.to_string();
        let mut failed = None;
        let result = self.file_step(ctx, key, history, &excluded, |ex, progress| {
            let cwd_path = rootpath::resolve(&ex.rootfs, &cwd, true)?.path;
            fs::create_dir_all(&cwd_path).map_err(io_err("create", &cwd_path))?;
            let mut request = request_base.clone();
            let in_place = !ex.runner.can_mount();
            let mut _placed = None;
            let mut _scratch = if in_place {
                check_premounted(&ex.rootfs, &prepared, line)?;
                ScratchDirs(Vec::new())
            } else {
                ex.materialize_rw_copies(&prepared, &mut request.mounts, line)?
            };
            if let Some((path, body)) = &script {
                if in_place {
                    _placed = Some(PlacedScript::write(&ex.rootfs, path, body)?);
                } else {
                    let file = ex.write_script(body, &mut _scratch)?;
                    request.mounts.push(RunMount::Bind {
                        source: file,
                        target: PathBuf::from(path),
                        readonly: true,
                    });
                }
            }
            let mut stubs = stubs(&ex.rootfs, &prepared)?;
            let mut _locks = Vec::new();
            for p in &prepared {
                if let Some(lock) = &p.lock {
                    _locks.push(lock_file(lock)?);
                }
            }
            let outcome = ex
                .runner
                .run(&request, &mut |l: &str| {
                    progress.on_event(&ProgressEvent::Output {
                        step: number,
                        line: l,
                    });
                })
                .map_err(|source| ExecutorError::Runner { line, source });
            let cleanup = stubs.remove().map_err(ExecutorError::from);
            let outcome = outcome?;
            cleanup?;
            if outcome.exit_code != 0 {
                failed = Some(FailedStep {
                    instruction: original.clone(),
                    line,
                    exit_code: Some(outcome.exit_code),
                    tail: outcome.tail.clone(),
                });
                return Err(ExecutorError::RunFailed {
                    instruction: original.clone(),
                    line,
                    exit_code: outcome.exit_code,
                    tail: outcome.tail,
                });
            }
            Ok(())
        });
        if let Some(f) = failed {
            ctx.record.failed = Some(f);
        }
        result
    }
}

/// A `#!` heredoc script written where BuildKit binds it (`/dev/pipes/<name>`), for a runner
/// that cannot bind: `/dev` is the container's own tmpfs and never walked, so the file cannot
/// reach a layer. Removed when dropped, with `/dev/pipes` if this made it.
pub(super) struct PlacedScript {
    pub(super) file: PathBuf,
    pub(super) made_dir: Option<PathBuf>,
}

impl PlacedScript {
    fn write(rootfs: &Path, target: &str, body: &str) -> Result<Self, ExecutorError> {
        let file = rootfs.join(target.trim_start_matches('/'));
        let dir = file
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| io_err("place script", &file)(io::ErrorKind::InvalidInput.into()))?;
        let made_dir = if dir.exists() {
            None
        } else {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
            Some(dir)
        };
        let placed = PlacedScript { file, made_dir };
        fs::write(&placed.file, body).map_err(io_err("write", &placed.file))?;
        fs::set_permissions(&placed.file, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", &placed.file))?;
        Ok(placed)
    }
}

impl Drop for PlacedScript {
    fn drop(&mut self) {
        // Best effort: the file lives on the container's /dev, which goes with the pod.
        let _ = fs::remove_file(&self.file);
        if let Some(d) = &self.made_dir {
            let _ = fs::remove_dir(d);
        }
    }
}

/// The argv of a RUN, with heredocs: `RUN <<EOF` alone runs the body as the shell script;
/// otherwise the heredocs are appended to the shell command with their delimiters, as a shell
/// would read them from a script.
pub(super) fn run_argv(state: &ImageState, run: &Run) -> Vec<String> {
    let CommandLine::Shell(cmd) = &run.command else {
        return state.run_argv(run);
    };
    if run.heredocs.is_empty() {
        return state.run_argv(run);
    }
    let mut argv = state.effective_shell();
    if let [only] = run.heredocs.as_slice()
        && is_bare_heredoc(cmd, only)
    {
        argv.push(only.body());
        return argv;
    }
    let mut script = cmd.clone();
    for h in &run.heredocs {
        script.push('\n');
        script.push_str(&h.content);
        script.push_str(&h.name);
    }
    argv.push(script);
    argv
}

/// A `RUN <<EOF` whose body starts with `#!`: BuildKit runs such a script as a file, so its
/// interpreter runs it, not the stage's shell. Returns the path it is bound at inside the
/// container (`/dev/pipes/<name>`, as BuildKit) and its body.
pub(super) fn shebang_script(run: &Run) -> Option<(String, String)> {
    let CommandLine::Shell(cmd) = &run.command else {
        return None;
    };
    let [only] = run.heredocs.as_slice() else {
        return None;
    };
    let body = only.body();
    let safe_name = !only.name.is_empty()
        && only
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    (is_bare_heredoc(cmd, only) && body.starts_with("#!") && safe_name)
        .then(|| (format!("/dev/pipes/{}", only.name), body))
}

pub(super) fn is_bare_heredoc(cmd: &str, h: &Heredoc) -> bool {
    let word = cmd.trim();
    let Some(rest) = word.strip_prefix("<<") else {
        return false;
    };
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    rest.trim_matches(|c| c == '"' || c == '\'') == h.name
}
