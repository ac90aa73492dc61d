//! Real git for the fetch tests: repositories made with the `git` CLI in temporary
//! directories, and a `git daemon` on a free loopback port serving them over git://. No
//! mocks: what the tests see is what a git server sends.

// Test helpers outside #[test] functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `git` in `dir` with no user or system configuration and fixed identities and
/// dates, and returns its trimmed standard output.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// The commits of [`make_repo`]'s history.
#[derive(Debug, Clone)]
pub struct History {
    /// The first commit on `main`.
    pub first: String,
    /// The second commit on `main`: neither a branch tip nor tagged, and it has a parent.
    pub second: String,
    /// The third commit on `main`; the annotated tag `v1.0` and the light tag `light`
    /// point at it.
    pub tagged: String,
    /// The tip of `main` (the default branch).
    pub main: String,
    /// The tip of `feature` (branched from `tagged`).
    pub feature: String,
}

/// Makes a repository at `dir`:
///
/// ```text
/// first ── second ── tagged (v1.0, light) ── main
///                       └── feature
/// ```
///
/// Each commit writes `VERSION` with its name and keeps the files of the ones before, so a
/// checkout shows which commit it is; `sub/Dockerfile` exists from `tagged` on.
pub fn make_repo(dir: &Path) -> History {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    let commit = |name: &str, files: &[(&str, &str)]| {
        for (path, text) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "-m", name]);
        git(dir, &["rev-parse", "HEAD"])
    };
    let first = commit("first", &[("VERSION", "first\n"), ("first.txt", "1\n")]);
    let second = commit("second", &[("VERSION", "second\n"), ("second.txt", "2\n")]);
    let tagged = commit(
        "tagged",
        &[
            ("VERSION", "tagged\n"),
            ("sub/Dockerfile", "FROM scratch\nCOPY . /\n"),
            ("sub/data/file.txt", "in sub\n"),
        ],
    );
    git(dir, &["tag", "-a", "v1.0", "-m", "release 1.0"]);
    git(dir, &["tag", "light"]);
    git(dir, &["checkout", "-q", "-b", "feature"]);
    let feature = commit(
        "feature",
        &[("VERSION", "feature\n"), ("feature.txt", "f\n")],
    );
    git(dir, &["checkout", "-q", "main"]);
    let main = commit("main", &[("VERSION", "main\n"), ("main.txt", "m\n")]);
    History {
        first,
        second,
        tagged,
        main,
        feature,
    }
}

/// A `git daemon` serving every repository under a base directory on a free loopback
/// port; killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    pub port: u16,
}

impl Daemon {
    pub fn start(base: &Path) -> Daemon {
        // The port is free when we ask; another process could take it before the daemon
        // binds, in which case the daemon exits and we try another one.
        // git-daemon itself, not `git daemon`: the `git` wrapper runs it as a child, and
        // killing the wrapper would leave the daemon running.
        let exec_path = Command::new("git")
            .arg("--exec-path")
            .output()
            .expect("git --exec-path");
        let daemon =
            Path::new(String::from_utf8_lossy(&exec_path.stdout).trim()).join("git-daemon");
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&daemon)
                .args([
                    "--export-all",
                    &format!("--base-path={}", base.display()),
                    "--reuseaddr",
                    "--listen=127.0.0.1",
                    &format!("--port={port}"),
                ])
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("git daemon starts");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Daemon { child, port };
                }
                if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                // Polling for readiness, not waiting a fixed time: a few ms between tries.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("git daemon did not start");
    }

    /// The git:// URL of the repository `name` under the base directory.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on (right now).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The file:// URL of a directory.
pub fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// Every path under `dir`, relative, sorted (directories with a trailing `/`).
pub fn listing(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if entry.file_type().unwrap().is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &path, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Reads a file under `dir` as text.
pub fn read(dir: &Path, path: &str) -> String {
    std::fs::read_to_string(dir.join(path)).unwrap()
}

/// A scratch directory with the repository `repo` in it and room for destinations.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub history: History,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let history = make_repo(&dir.path().join("repos/repo"));
        Scratch { dir, history }
    }

    /// The directory served by the daemon.
    pub fn repos(&self) -> PathBuf {
        self.dir.path().join("repos")
    }

    /// The repository's working directory.
    pub fn repo(&self) -> PathBuf {
        self.repos().join("repo")
    }

    /// A destination path under the scratch directory (not created).
    pub fn dest(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
    }
}
