//! The in-place runner: RUN steps of a builder pod, where the pod's own root filesystem is
//! the stage's root. A baseline pod can neither mount nor make namespaces, so the process is
//! simply a child of the stage process, in its own process group, with the step's argv,
//! environment, working directory and user. Mounts are the pod's business: this runner makes
//! none ([`Runner::can_mount`] is false) and the executor checks that every `RUN --mount`
//! target is already mounted before a step runs.
//!
//! Dropping to the step's user and groups happens in a small helper, the `stagecoach` binary
//! itself re-executed (`stagecoach exec-step`, [`exec_step`]): setting supplementary groups
//! between fork and exec needs `unsafe` code in Rust, while a freshly started single-threaded
//! helper can set them with plain system calls and then `exec` the step.
//!
//! As PID 1 of its container (a pod's first process), the stage process is also the reaper of
//! every orphan, and after each step it kills whatever the step left running, so a daemon
//! started by one RUN cannot write into the next step's snapshot. Elsewhere (tests on a
//! host), it kills the step's process group only, and never touches other processes.

use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};

use crate::runner::{OutputTail, RunNetwork, RunOutcome, RunRequest, Runner, RunnerError};

/// How long output may stay open after the step's processes are gone (a process outside the
/// step's process group still holding it, on a host that is not a container).
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// How often the runner looks for the step's end while no output arrives.
const POLL: Duration = Duration::from_millis(10);

/// Runs RUN steps as children of the current process, over `/`.
#[derive(Debug, Clone)]
pub struct InPlaceRunner {
    helper: Vec<OsString>,
}

impl InPlaceRunner {
    /// A runner that starts each step through `helper` (a program and its leading arguments,
    /// e.g. `["/stagecoach/bin/stagecoach", "exec-step"]`), which must end up calling
    /// [`exec_step`] with the arguments that follow.
    pub fn new(helper: Vec<OsString>) -> Self {
        InPlaceRunner { helper }
    }

    /// A runner whose helper is the running executable's `exec-step` subcommand.
    pub fn with_current_exe() -> Result<Self, RunnerError> {
        let exe = std::env::current_exe()
            .map_err(|e| RunnerError::Setup(format!("cannot find the running executable: {e}")))?;
        Ok(Self::new(vec![exe.into_os_string(), "exec-step".into()]))
    }

    fn command(&self, request: &RunRequest) -> Result<Command, RunnerError> {
        let (program, lead) = self
            .helper
            .split_first()
            .ok_or_else(|| RunnerError::Setup("the in-place runner has no helper".into()))?;
        let groups: Vec<String> = request
            .user
            .additional_gids
            .iter()
            .map(u32::to_string)
            .collect();
        let mut cmd = Command::new(program);
        cmd.args(lead)
            .arg("--uid")
            .arg(request.user.uid.to_string())
            .arg("--gid")
            .arg(request.user.gid.to_string())
            .arg("--groups")
            .arg(groups.join(","))
            .arg("--")
            .args(&request.argv)
            .env_clear()
            .envs(request.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&request.cwd)
            .stdin(Stdio::null())
            .process_group(0);
        Ok(cmd)
    }
}

impl Runner for InPlaceRunner {
    fn can_mount(&self) -> bool {
        false
    }

    fn run(
        &self,
        request: &RunRequest,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<RunOutcome, RunnerError> {
        if request.rootfs != Path::new("/") {
            return Err(RunnerError::Setup(format!(
                "the in-place runner runs over the container's own root, not {}",
                request.rootfs.display()
            )));
        }
        let started = Instant::now();
        let mut tail = OutputTail::new(request.tail_lines);
        if request.network == RunNetwork::None {
            emit(
                &mut tail,
                "warning: RUN --network=none: a builder pod cannot leave its network namespace; the step runs with the pod's network",
                on_line,
            );
        }
        let (reader, writer) =
            io::pipe().map_err(|e| RunnerError::Setup(format!("cannot make a pipe: {e}")))?;
        let writer2 = writer
            .try_clone()
            .map_err(|e| RunnerError::Setup(format!("cannot duplicate a pipe: {e}")))?;
        let mut cmd = self.command(request)?;
        cmd.stdout(writer).stderr(writer2);
        let child = cmd
            .spawn()
            .map_err(|e| RunnerError::Start(format!("{}: {e}", request.argv.join(" "))))?;
        // Our copies of the write end must close, or the output never ends.
        drop(cmd);
        let pid = i32::try_from(child.id())
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| RunnerError::Start("the child has no valid pid".into()))?;
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buf);
                        let line = text.trim_end_matches(['\n', '\r']).to_string();
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });

        let reaper = Reaper::for_current_process();
        let deadline = request.timeout.map(|t| started + t);
        let status = loop {
            match rx.recv_timeout(POLL) {
                Ok(line) => emit(&mut tail, &line, on_line),
                Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Some(status) = reaper.try_wait(pid)? {
                break status;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                reaper.kill_leftovers(pid);
                reaper.wait(pid);
                return Err(RunnerError::Timeout(request.timeout.unwrap_or_default()));
            }
        };
        reaper.kill_leftovers(pid);
        let drain_until = Instant::now() + DRAIN_LIMIT;
        loop {
            let left = drain_until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => emit(&mut tail, &line, on_line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    emit(
                        &mut tail,
                        "warning: a process outside the step's process group still holds its output; not waiting for it",
                        on_line,
                    );
                    break;
                }
            }
        }
        let exit_code = match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 255,
        };
        Ok(RunOutcome {
            exit_code,
            tail: tail.into_lines(),
            duration: started.elapsed(),
        })
    }
}

/// Passes a line on and keeps it for the tail.
fn emit(tail: &mut OutputTail, line: &str, on_line: &mut dyn FnMut(&str)) {
    on_line(line);
    tail.push(line);
}

/// Waiting for and killing a step's processes, as PID 1 of a container or as a plain
/// process on a host.
struct Reaper {
    init: bool,
}

impl Reaper {
    fn for_current_process() -> Self {
        Reaper {
            init: rustix::process::getpid().as_raw_nonzero().get() == 1,
        }
    }

    /// The step's status once it has ended. As init this also reaps every orphan that has
    /// ended meanwhile: they are all ours, since the container holds nothing else.
    fn try_wait(&self, pid: Pid) -> Result<Option<WaitStatus>, RunnerError> {
        let wait_err = |e: rustix::io::Errno| RunnerError::Setup(format!("waitpid: {e}"));
        if !self.init {
            return rustix::process::waitpid(Some(pid), WaitOptions::NOHANG)
                .map(|r| r.map(|(_, s)| s))
                .map_err(wait_err);
        }
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((p, status))) if p == pid => return Ok(Some(status)),
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(None),
                Err(rustix::io::Errno::CHILD) => {
                    return Err(RunnerError::Setup(
                        "the step's process vanished without a status".into(),
                    ));
                }
                Err(e) => return Err(wait_err(e)),
            }
        }
    }

    /// Waits for the step itself after it was killed.
    fn wait(&self, pid: Pid) {
        let until = Instant::now() + DRAIN_LIMIT;
        while Instant::now() < until {
            match self.try_wait(pid) {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(POLL),
            }
        }
    }

    /// Kills what the step left running: its process group, and as init every other
    /// process of the container (daemons that left the group with `setsid` included),
    /// reaping them.
    fn kill_leftovers(&self, pid: Pid) {
        // ESRCH (the group is empty) is the usual answer and not an error.
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        if !self.init {
            return;
        }
        let until = Instant::now() + DRAIN_LIMIT;
        loop {
            while let Ok(Some(_)) = rustix::process::wait(WaitOptions::NOHANG) {}
            let others = other_processes();
            if others.is_empty() || Instant::now() >= until {
                return;
            }
            for p in others {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Every process in this pid namespace but this one, from `/proc` (zombies included until
/// they are reaped).
fn other_processes() -> Vec<Pid> {
    let me = rustix::process::getpid();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Pid::from_raw)
        .filter(|p| *p != me)
        .collect()
}

/// Why `exec-step` could not start the step.
#[derive(Debug, thiserror::Error)]
pub enum ExecStepError {
    /// The arguments are not `--uid U --gid G --groups A,B -- ARGV…`.
    #[error("exec-step: {0}")]
    Usage(String),
    /// Dropping to the step's user failed.
    #[error("exec-step: cannot {action}: {source}")]
    Credentials {
        /// What was being set.
        action: &'static str,
        /// The system's answer.
        source: io::Error,
    },
    /// The program could not be executed.
    #[error("exec-step: cannot run {program}: {source}")]
    Exec {
        /// The program.
        program: String,
        /// The system's answer.
        source: io::Error,
    },
}

impl ExecStepError {
    /// The exit code a shell would give: 127 for a program that is not there, else 126.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExecStepError::Exec { source, .. } if source.kind() == io::ErrorKind::NotFound => 127,
            _ => 126,
        }
    }
}

/// The helper's body: `--uid U --gid G --groups A,B -- ARGV…`. Sets the supplementary
/// groups, the group and the user (in that order: each later one needs the privilege the
/// earlier ones use) and replaces the process with the step. Returns only on failure.
///
/// Call it first thing in a fresh process: the credential calls act on the calling thread,
/// which is the whole process only while no other thread has been started.
pub fn exec_step(args: &[OsString]) -> ExecStepError {
    match parse_exec_args(args) {
        Ok((uid, gid, groups, argv)) => drop_and_exec(uid, gid, &groups, argv),
        Err(e) => e,
    }
}

type ExecArgs<'a> = (u32, u32, Vec<u32>, &'a [OsString]);

fn parse_exec_args(args: &[OsString]) -> Result<ExecArgs<'_>, ExecStepError> {
    let usage = |m: &str| ExecStepError::Usage(m.to_string());
    let (mut uid, mut gid, mut groups) = (None, None, Vec::new());
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].to_str().unwrap_or_default();
        if flag == "--" {
            let argv = &args[i + 1..];
            if argv.is_empty() {
                return Err(usage("no program after --"));
            }
            let uid = uid.ok_or_else(|| usage("--uid is required"))?;
            let gid = gid.ok_or_else(|| usage("--gid is required"))?;
            return Ok((uid, gid, groups, argv));
        }
        let value = args
            .get(i + 1)
            .and_then(|v| v.to_str())
            .ok_or_else(|| usage(&format!("{flag} needs a value")))?;
        let number = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| usage(&format!("{flag} {v:?}: expected a number")))
        };
        match flag {
            "--uid" => uid = Some(number(value)?),
            "--gid" => gid = Some(number(value)?),
            "--groups" => {
                groups = value
                    .split(',')
                    .filter(|g| !g.is_empty())
                    .map(number)
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(usage(&format!("unknown argument {other:?}"))),
        }
        i += 2;
    }
    Err(usage("expected -- and the program to run"))
}

fn drop_and_exec(uid: u32, gid: u32, groups: &[u32], argv: &[OsString]) -> ExecStepError {
    let cred = |action| {
        move |e: rustix::io::Errno| ExecStepError::Credentials {
            action,
            source: e.into(),
        }
    };
    let gids: Vec<rustix::fs::Gid> = groups
        .iter()
        .map(|g| rustix::fs::Gid::from_raw(*g))
        .collect();
    let result = rustix::thread::set_thread_groups(&gids)
        .map_err(cred("set the supplementary groups"))
        .and_then(|()| {
            rustix::thread::set_thread_gid(rustix::fs::Gid::from_raw(gid))
                .map_err(cred("set the group id"))
        })
        .and_then(|()| {
            rustix::thread::set_thread_uid(rustix::fs::Uid::from_raw(uid))
                .map_err(cred("set the user id"))
        });
    if let Err(e) = result {
        return e;
    }
    let program: &OsStr = &argv[0];
    let source = Command::new(program).args(&argv[1..]).exec();
    ExecStepError::Exec {
        program: PathBuf::from(program).display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn exec_arguments_are_strict() {
        let a = args(&[
            "--uid", "1000", "--gid", "100", "--groups", "10,11", "--", "id", "-u",
        ]);
        let (uid, gid, groups, argv) = parse_exec_args(&a).unwrap();
        assert_eq!((uid, gid, groups), (1000, 100, vec![10, 11]));
        assert_eq!(argv, &args(&["id", "-u"])[..]);
        let empty_groups = args(&["--uid", "0", "--gid", "0", "--groups", "", "--", "true"]);
        assert_eq!(parse_exec_args(&empty_groups).unwrap().2, Vec::<u32>::new());
        for bad in [
            &["--uid", "0", "--gid", "0", "--"][..],
            &["--gid", "0", "--", "true"],
            &["--uid", "x", "--gid", "0", "--", "true"],
            &["--uid", "0", "--gid", "0", "--shell", "sh", "--", "true"],
            &["--uid", "0", "--gid", "0", "true"],
        ] {
            assert!(
                matches!(parse_exec_args(&args(bad)), Err(ExecStepError::Usage(_))),
                "{bad:?}"
            );
        }
    }
}
