//! [`RuncRunner`]: runs a RUN step's process under runc (Debian's `/usr/sbin/runc`) over an
//! unpacked root filesystem, for `stagecoach build` on one machine.
//!
//! # Flow
//! 1. Check the request (absolute cwd and mount targets, a root directory, a program).
//! 2. Create a private bundle directory (mode 0700) under the system temp dir, never inside
//!    the root: `config.json`, the generated `hosts` and `resolv.conf` (a copy of the host's),
//!    and runc's JSON log.
//! 3. Create the mount points runc needs inside the root that do not exist yet, recording
//!    what was created (runc would create them itself and leave them behind).
//! 4. `runc run --bundle DIR ID` with stdin from /dev/null and runc's stdout+stderr on one
//!    pipe; each line goes to `on_line` on the caller's thread as it arrives; the last
//!    `tail_lines` are kept. runc itself relays the process's stdout and stderr through two
//!    pipes of its own, so lines keep their order within a stream but not necessarily across
//!    the two (BuildKit's logs behave the same).
//! 5. On timeout: `runc kill ID KILL`, then, if runc does not finish within a grace period,
//!    SIGKILL runc itself and `runc delete --force ID`.
//! 6. Always, also on errors and on a panic in `on_line` (a drop guard): `runc delete --force
//!    ID`, remove the placeholders, remove the bundle.
//!
//! # Guarantees
//! - Nothing stays running or mounted: every mount lives in the container's own mount
//!   namespace (gone with its last process), and the bundle holds only plain files.
//! - The root filesystem after the run holds exactly what the process changed: `/etc/hosts`
//!   and `/etc/resolv.conf` are bound from the bundle, so the process's edits to them vanish;
//!   every mount point (file or directory) created for the run is removed afterwards, but only
//!   if this run created it, and a created directory only while it is empty (the process may
//!   have written next to a placeholder, e.g. `/etc/passwd` in a `FROM scratch` root). The
//!   parent directories' atime/mtime are restored when the process did not change them; their
//!   ctime cannot be, so a snapshot must compare content and mtime, not ctime.
//! - Exit code: the process's own, or 128 + signal number when a signal killed it (what runc
//!   reports). A failure of runc itself before the process ran (bad config, missing program)
//!   is [`RunnerError::Start`], read from runc's log; a timeout is [`RunnerError::Timeout`].
//!
//! # Assumptions
//! - Root (runc needs it) and a runc that logs JSON (`--log-format json`), as Debian's 1.1.
//! - One run at a time per root filesystem (the executor runs a stage's steps in order);
//!   parallel stages have their own roots.
//! - The bundle parent is not inside the root (checked).
//!
//! # The container
//! What a Docker `RUN` gets by default, within this machine's limits: its default
//! capabilities, `noNewPrivileges` (configurable), pid/ipc/uts/mount namespaces, a network
//! namespace only for [`RunNetwork::None`](crate::runner::RunNetwork::None) (the host's network
//! otherwise), `/proc`, a tmpfs `/dev` with the standard device nodes, `/dev/pts`,
//! `/dev/shm`, `/dev/mqueue`, a read-only `/sys`, Docker's masked and read-only paths, and
//! `RLIMIT_NOFILE` at the host's hard limit (capped at 1048576: without CAP_SYS_RESOURCE it
//! cannot be raised). No seccomp profile and no cgroup limits; the cgroup path is unique per
//! run (cgroupfs driver, as there is no systemd).

mod spec;

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::placeholders::{self, Destination, PlaceholderError, Placeholders};
use crate::runner::{OutputTail, RunOutcome, RunRequest, Runner, RunnerError};

/// Where Debian installs runc.
pub const DEFAULT_RUNC: &str = "/usr/sbin/runc";

/// The largest `RLIMIT_NOFILE` given to a process (Docker's default); the host's hard limit
/// lowers it.
const MAX_NOFILE: u64 = 1_048_576;

/// How often `runc kill` is repeated after a timeout until runc finishes.
const KILL_RETRY: Duration = Duration::from_millis(100);

/// Lines longer than this are split, so a process printing without newlines cannot make us
/// buffer without bound.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Output lines buffered between the reader thread and the caller; when the caller is slow
/// the process blocks on its writes instead of us buffering without bound.
const LINE_QUEUE: usize = 1024;

/// Why a runc run failed, before being reported as a [`RunnerError`].
#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    /// The request cannot be run as given.
    #[error("invalid RUN request: {0}")]
    Invalid(String),
    /// Mount points could not be made or removed in the root.
    #[error(transparent)]
    Placeholder(#[from] PlaceholderError),
    /// A file operation on the bundle or the root filesystem failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// runc could not be executed at all.
    #[error("executing {runc}: {source}")]
    Exec {
        /// The runc binary.
        runc: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// runc failed before (or instead of) running the process.
    #[error("runc: {0}")]
    Runtime(String),
    /// The process ran too long and was killed.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Cleaning up after the run failed.
    #[error("cleaning up container {id}: {message}")]
    Cleanup {
        /// The container id.
        id: String,
        /// What failed.
        message: String,
    },
}

impl From<RuncError> for RunnerError {
    fn from(e: RuncError) -> Self {
        match e {
            RuncError::Timeout(d) => RunnerError::Timeout(d),
            RuncError::Exec { .. } | RuncError::Runtime(_) => RunnerError::Start(e.to_string()),
            RuncError::Invalid(_)
            | RuncError::Placeholder(_)
            | RuncError::Io { .. }
            | RuncError::Cleanup { .. } => RunnerError::Setup(e.to_string()),
        }
    }
}

/// Runs RUN steps under runc. Cheap to clone; holds only settings, so one runner may serve
/// parallel stages (each run has its own container id, bundle and cgroup).
#[derive(Debug, Clone)]
pub struct RuncRunner {
    runc: PathBuf,
    state_root: Option<PathBuf>,
    bundle_parent: PathBuf,
    resolv_conf: PathBuf,
    no_new_privileges: bool,
    kill_grace: Duration,
    denied_syscalls: Vec<String>,
}

impl Default for RuncRunner {
    fn default() -> Self {
        Self::new()
    }
}

impl RuncRunner {
    /// `/usr/sbin/runc` with its default state root, bundles under the system temp dir, the
    /// host's `/etc/resolv.conf`, `noNewPrivileges` on.
    pub fn new() -> Self {
        Self {
            runc: PathBuf::from(DEFAULT_RUNC),
            state_root: None,
            bundle_parent: std::env::temp_dir(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            no_new_privileges: true,
            kill_grace: Duration::from_secs(5),
            denied_syscalls: Vec::new(),
        }
    }

    /// Uses another runc binary.
    #[must_use]
    pub fn with_runc(mut self, runc: impl Into<PathBuf>) -> Self {
        self.runc = runc.into();
        self
    }

    /// Keeps runc's container state under `root` (`runc --root`) instead of `/run/runc`.
    #[must_use]
    pub fn with_state_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.state_root = Some(root.into());
        self
    }

    /// Creates bundle directories under `dir` (must not be inside any root filesystem).
    #[must_use]
    pub fn with_bundle_parent(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bundle_parent = dir.into();
        self
    }

    /// Copies this file into the container's `/etc/resolv.conf` (a missing file gives an
    /// empty one).
    #[must_use]
    pub fn with_resolv_conf(mut self, path: impl Into<PathBuf>) -> Self {
        self.resolv_conf = path.into();
        self
    }

    /// Whether processes run with `noNewPrivileges` (setuid programs such as `su` then do not
    /// gain privileges).
    #[must_use]
    pub fn with_no_new_privileges(mut self, on: bool) -> Self {
        self.no_new_privileges = on;
        self
    }

    /// Refuses these system calls (by name) with `EPERM` through a seccomp filter, as a
    /// baseline pod's runtime profile refuses `mount` and `unshare`.
    #[must_use]
    pub fn with_denied_syscalls(mut self, names: &[&str]) -> Self {
        self.denied_syscalls = names.iter().map(|n| n.to_string()).collect();
        self
    }

    /// How long runc gets to finish after the process was killed on timeout before runc
    /// itself is killed.
    #[must_use]
    pub fn with_kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// The runc binary in use.
    pub fn runc_path(&self) -> &Path {
        &self.runc
    }

    /// `runc --version`'s first line, or why runc cannot be run.
    pub fn version(&self) -> Result<String, RunnerError> {
        let out = Command::new(&self.runc)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| RuncError::Exec {
                runc: self.runc.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(RuncError::Runtime(format!(
                "{} --version failed: {}",
                self.runc.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string())
    }

    /// A runc command with the global flags.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.runc);
        if let Some(root) = &self.state_root {
            cmd.arg("--root").arg(root);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// `runc delete --force ID`; a container that no longer exists is fine (runc 1.1 says so
    /// with status 0 under `--force`).
    fn delete(&self, id: &str) -> Result<(), RuncError> {
        let out = self
            .command()
            .args(["delete", "--force", id])
            .output()
            .map_err(|source| RuncError::Exec {
                runc: self.runc.clone(),
                source,
            })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || stderr.contains("does not exist") {
            Ok(())
        } else {
            Err(RuncError::Cleanup {
                id: id.to_string(),
                message: format!("runc delete --force: {}", stderr.trim()),
            })
        }
    }

    /// `runc kill ID KILL`, best effort: the container may not exist yet or any more.
    fn kill(&self, id: &str) {
        let _ = self
            .command()
            .args(["kill", id, "KILL"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn run_inner(
        &self,
        request: &RunRequest,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<RunOutcome, RuncError> {
        let checked = check(request)?;
        // The bundle holds generated files the snapshot must never see.
        if let Ok(parent) = fs::canonicalize(&self.bundle_parent)
            && parent.starts_with(&checked.rootfs)
        {
            return Err(RuncError::Invalid(format!(
                "bundle directory {} is inside the root filesystem {}",
                parent.display(),
                checked.rootfs.display()
            )));
        }
        let id = unique_id();
        let mut run = Cleanup {
            runner: self,
            id: id.clone(),
            bundle: None,
            placeholders: None,
            container: false,
            runc_process: None,
            done: false,
        };
        let result = self.run_prepared(request, &checked, &mut run, on_line);
        let cleaned = run.finish();
        match (result, cleaned) {
            (Ok(outcome), Ok(())) => Ok(outcome),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
        }
    }

    fn run_prepared(
        &self,
        request: &RunRequest,
        checked: &Checked,
        run: &mut Cleanup<'_>,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<RunOutcome, RuncError> {
        let bundle = create_bundle_dir(&self.bundle_parent, &run.id)?;
        run.bundle = Some(bundle.clone());

        let hosts_file = bundle.join("hosts");
        let resolv_file = bundle.join("resolv.conf");
        write_file(&hosts_file, hosts_content(&request.hostname).as_bytes())?;
        let resolv = match fs::read(&self.resolv_conf) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_error("reading", &self.resolv_conf, e)),
        };
        write_file(&resolv_file, &resolv)?;

        let cgroups_path = format!("/stagecoach/{}", run.id);
        let host = spec::Host {
            hosts_file: &hosts_file,
            resolv_file: &resolv_file,
            cgroups_path: &cgroups_path,
            nofile: host_nofile_limit(),
            no_new_privileges: self.no_new_privileges,
            denied_syscalls: &self.denied_syscalls,
        };
        let mounts = spec::plan_mounts(request, &host)?;
        let config = spec::config(
            request,
            &checked.rootfs,
            &checked.cwd,
            &checked.env,
            &mounts,
            &host,
        )?;
        let json = serde_json::to_vec_pretty(&config)
            .map_err(|e| RuncError::Invalid(format!("encoding config.json: {e}")))?;
        write_file(&bundle.join("config.json"), &json)?;

        let destinations: Vec<Destination> = mounts
            .iter()
            .filter_map(|m| match m.mountpoint {
                spec::Mountpoint::InsideEarlierMount => None,
                spec::Mountpoint::File | spec::Mountpoint::Dir => Some(Destination {
                    path: m.destination.clone(),
                    file: m.mountpoint == spec::Mountpoint::File,
                }),
            })
            .collect();
        run.placeholders = Some(placeholders::prepare(&checked.rootfs, &destinations)?);

        let log_file = bundle.join("runc-log.json");
        let (reader, writer) = std::io::pipe().map_err(|e| RuncError::Io {
            what: "creating the output pipe".to_string(),
            source: e,
        })?;
        let writer_err = writer.try_clone().map_err(|e| RuncError::Io {
            what: "creating the output pipe".to_string(),
            source: e,
        })?;
        let mut cmd = self.command();
        cmd.arg("--log")
            .arg(&log_file)
            .arg("--log-format")
            .arg("json")
            .arg("run")
            .arg("--bundle")
            .arg(&bundle)
            .arg(&run.id)
            .stdout(writer)
            .stderr(writer_err);
        let started = Instant::now();
        run.container = true;
        let spawned = cmd.spawn();
        // The command still holds our copies of the pipe's write end; without dropping them
        // the reader would never see end-of-file.
        drop(cmd);
        // Held by the cleanup until waited for, so an early return or a panic in `on_line`
        // still kills and reaps runc.
        let child = run
            .runc_process
            .insert(spawned.map_err(|source| RuncError::Exec {
                runc: self.runc.clone(),
                source,
            })?);

        let (sender, receiver) = sync_channel::<Event>(LINE_QUEUE);
        let reader_thread = std::thread::Builder::new()
            .name(format!("runc-output-{}", run.id))
            .spawn(move || read_lines(reader, &sender));
        if let Err(e) = reader_thread {
            return Err(RuncError::Io {
                what: "starting the output reader thread".to_string(),
                source: e,
            });
        }

        let mut tail = OutputTail::new(request.tail_lines);
        let deadline = request.timeout.map(|t| started + t);
        let timed_out = self.pump(&receiver, child, &run.id, deadline, &mut |line| {
            tail.push(line);
            on_line(line);
        });
        let status = child.wait().map_err(|e| RuncError::Io {
            what: "waiting for runc".to_string(),
            source: e,
        })?;
        run.runc_process = None;
        let duration = started.elapsed();
        if timed_out {
            return Err(RuncError::Timeout(request.timeout.unwrap_or(duration)));
        }
        let exit_code = exit_code(status);
        if exit_code != 0
            && let Some(message) = runc_failure(&log_file)
        {
            return Err(RuncError::Runtime(message));
        }
        Ok(RunOutcome {
            exit_code,
            tail: tail.into_lines(),
            duration,
        })
    }

    /// Delivers output lines until end of output; on `deadline` kills the container and
    /// returns true.
    fn pump(
        &self,
        receiver: &Receiver<Event>,
        child: &mut Child,
        id: &str,
        deadline: Option<Instant>,
        deliver: &mut dyn FnMut(&str),
    ) -> bool {
        loop {
            let event = match deadline {
                None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(deadline) => {
                    receiver.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                }
            };
            match event {
                Ok(Event::Line(line)) => deliver(&line),
                Ok(Event::End) | Err(RecvTimeoutError::Disconnected) => return false,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        // Killing the container's init ends its whole pid namespace; runc run then reaps it,
        // removes the container and exits, which closes the pipe. The kill is repeated
        // because a timeout can strike while runc is still creating the container, when
        // `runc kill` finds nothing to kill yet.
        let grace_end = Instant::now() + self.kill_grace;
        loop {
            self.kill(id);
            let next = (Instant::now() + KILL_RETRY).min(grace_end);
            if self.drain_until(receiver, next, deliver) {
                return true;
            }
            if Instant::now() >= grace_end {
                break;
            }
        }
        // runc did not finish (e.g. stuck before the container existed): kill runc itself and
        // let `delete --force` kill whatever is left in the container's cgroup.
        let _ = child.kill();
        let _ = self.delete(id);
        self.drain_until(receiver, Instant::now() + self.kill_grace, deliver);
        true
    }

    /// Delivers lines until end of output (true) or `until` passes (false).
    fn drain_until(
        &self,
        receiver: &Receiver<Event>,
        until: Instant,
        deliver: &mut dyn FnMut(&str),
    ) -> bool {
        loop {
            match receiver.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(Event::Line(line)) => deliver(&line),
                Ok(Event::End) | Err(RecvTimeoutError::Disconnected) => return true,
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
    }
}

impl Runner for RuncRunner {
    fn run(
        &self,
        request: &RunRequest,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<RunOutcome, RunnerError> {
        self.run_inner(request, on_line).map_err(RunnerError::from)
    }
}

/// The request's parts in the form runc wants.
#[derive(Debug)]
struct Checked {
    rootfs: PathBuf,
    cwd: String,
    env: Vec<String>,
}

fn check(request: &RunRequest) -> Result<Checked, RuncError> {
    if request.argv.is_empty() {
        return Err(RuncError::Invalid("no program to run".to_string()));
    }
    if request.argv.iter().any(|a| a.contains('\0')) {
        return Err(RuncError::Invalid(
            "an argument contains a NUL byte".to_string(),
        ));
    }
    // Absolute and free of symlinks, since runc resolves mounts relative to it.
    let rootfs = fs::canonicalize(&request.rootfs)
        .map_err(|e| io_error("resolving the root filesystem", &request.rootfs, e))?;
    if !rootfs.is_dir() {
        return Err(RuncError::Invalid(format!(
            "root filesystem {} is not a directory",
            rootfs.display()
        )));
    }
    if !request.cwd.is_absolute() {
        return Err(RuncError::Invalid(format!(
            "working directory {} is not absolute",
            request.cwd.display()
        )));
    }
    let cwd = request
        .cwd
        .to_str()
        .ok_or_else(|| RuncError::Invalid("working directory is not UTF-8".to_string()))?
        .to_string();
    // Later entries win, as the contract says; the first occurrence keeps its place.
    let mut env: Vec<(String, String)> = Vec::with_capacity(request.env.len());
    for (key, value) in &request.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(RuncError::Invalid(format!(
                "invalid environment variable {key:?}"
            )));
        }
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(existing) => existing.1 = value.clone(),
            None => env.push((key.clone(), value.clone())),
        }
    }
    Ok(Checked {
        rootfs,
        cwd,
        env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
    })
}

/// Undoes a run's side effects once, from [`Cleanup::finish`] or, if the caller's `on_line`
/// panicked, from `Drop`.
#[derive(Debug)]
struct Cleanup<'a> {
    runner: &'a RuncRunner,
    id: String,
    bundle: Option<PathBuf>,
    placeholders: Option<Placeholders>,
    /// Whether runc may have created the container.
    container: bool,
    /// `runc run`, until it has been waited for.
    runc_process: Option<Child>,
    done: bool,
}

impl Cleanup<'_> {
    fn finish(&mut self) -> Result<(), RuncError> {
        self.done = true;
        let mut first: Option<RuncError> = None;
        // Only on an early exit is runc still unwaited: stop it from starting anything more.
        let mut runc_process = self.runc_process.take();
        if let Some(child) = runc_process.as_mut() {
            let _ = child.kill();
        }
        // The container next: its processes must be gone before its mount points are.
        if self.container
            && let Err(e) = self.runner.delete(&self.id)
        {
            first.get_or_insert(e);
        }
        if let Some(mut child) = runc_process {
            // Reaped so no zombie is left; it was killed above, so this returns promptly.
            let _ = child.wait();
        }
        if let Some(mut placeholders) = self.placeholders.take()
            && !placeholders.is_empty()
            && let Err(e) = placeholders.remove()
        {
            first.get_or_insert(e.into());
        }
        if let Some(bundle) = self.bundle.take()
            && let Err(e) = fs::remove_dir_all(&bundle)
            && e.kind() != ErrorKind::NotFound
        {
            first.get_or_insert(io_error("removing bundle", &bundle, e));
        }
        match first {
            None => Ok(()),
            Some(e) => Err(RuncError::Cleanup {
                id: self.id.clone(),
                message: e.to_string(),
            }),
        }
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.finish();
        }
    }
}

/// What the reader thread sends.
#[derive(Debug)]
enum Event {
    Line(String),
    End,
}

/// Splits the pipe into lines (a final line without newline included, `\r\n` as `\n`) and
/// sends them; stops early when the receiver is gone.
fn read_lines(mut reader: impl Read, sender: &SyncSender<Event>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    let send = |bytes: &[u8]| {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        sender
            .send(Event::Line(String::from_utf8_lossy(bytes).into_owned()))
            .is_ok()
    };
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut rest = &chunk[..n];
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            pending.extend_from_slice(&rest[..pos]);
            if !send(&pending) {
                return;
            }
            pending.clear();
            rest = &rest[pos + 1..];
        }
        pending.extend_from_slice(rest);
        while pending.len() >= MAX_LINE_BYTES {
            let line: Vec<u8> = pending.drain(..MAX_LINE_BYTES).collect();
            if !send(&line) {
                return;
            }
        }
    }
    if !pending.is_empty() && !send(&pending) {
        return;
    }
    let _ = sender.send(Event::End);
}

/// runc exits with the process's status, or 128 + signal when a signal killed it; if runc
/// itself died of a signal, report that the same way.
fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 128,
    }
}

/// runc's own error, if its log has one: runc writes errors there only when it failed, not
/// when the process exited non-zero.
fn runc_failure(log_file: &Path) -> Option<String> {
    let text = fs::read_to_string(log_file).ok()?;
    let messages: Vec<String> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| {
            matches!(
                entry.get("level").and_then(|l| l.as_str()),
                Some("error" | "fatal" | "panic")
            )
        })
        .filter_map(|entry| {
            entry
                .get("msg")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .collect();
    if messages.is_empty() {
        None
    } else {
        Some(messages.join("; "))
    }
}

/// The container's `/etc/hosts`: loopback names and the container's hostname.
fn hosts_content(hostname: &str) -> String {
    let mut text = String::from("127.0.0.1\tlocalhost");
    if !hostname.is_empty() && hostname != "localhost" {
        text.push('\t');
        text.push_str(hostname);
    }
    text.push_str("\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    text
}

/// The host's hard `RLIMIT_NOFILE` (what runc may set without CAP_SYS_RESOURCE), capped at
/// Docker's default; read from `/proc/self/limits` because this crate has no unsafe code.
fn host_nofile_limit() -> u64 {
    let parsed = fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| {
                    let hard = l.split_whitespace().nth(4)?;
                    if hard == "unlimited" {
                        Some(MAX_NOFILE)
                    } else {
                        hard.parse::<u64>().ok()
                    }
                })
        });
    parsed.unwrap_or(1024).min(MAX_NOFILE)
}

/// A container id unique on this machine: process id, a per-process counter and the time.
fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("stagecoach-{}-{n}-{nanos:08x}", std::process::id())
}

/// A fresh bundle directory readable only by us (it holds the process's configuration).
fn create_bundle_dir(parent: &Path, id: &str) -> Result<PathBuf, RuncError> {
    let dir = parent.join(format!("{id}.bundle"));
    DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| io_error("creating bundle directory", &dir, e))?;
    Ok(dir)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), RuncError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| io_error("creating", path, e))?;
    file.write_all(bytes)
        .map_err(|e| io_error("writing", path, e))
}

fn io_error(what: &str, path: &Path, source: std::io::Error) -> RuncError {
    RuncError::Io {
        what: format!("{what} {}", path.display()),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_the_last_partial_line_kept() {
        let (sender, receiver) = sync_channel(16);
        read_lines(&b"one\r\ntwo\n\nthree"[..], &sender);
        let got: Vec<String> = receiver
            .try_iter()
            .filter_map(|e| match e {
                Event::Line(l) => Some(l),
                Event::End => None,
            })
            .collect();
        assert_eq!(got, vec!["one", "two", "", "three"]);
    }

    #[test]
    fn later_environment_entries_win() {
        let request = RunRequest {
            rootfs: PathBuf::from("/"),
            argv: vec!["true".into()],
            env: vec![
                ("A".into(), "1".into()),
                ("B".into(), "2".into()),
                ("A".into(), "3".into()),
            ],
            cwd: PathBuf::from("/"),
            user: Default::default(),
            mounts: vec![],
            network: crate::runner::RunNetwork::Host,
            hostname: String::new(),
            timeout: None,
            tail_lines: 0,
        };
        let checked = check(&request).map(|c| c.env).unwrap_or_default();
        assert_eq!(checked, vec!["A=3", "B=2"]);
    }

    #[test]
    fn hosts_name_the_hostname() {
        assert!(hosts_content("box").starts_with("127.0.0.1\tlocalhost\tbox\n"));
    }
}
