#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A builder pod without Kubernetes, for tests: `stagecoach stage` as PID 1 of a runc
//! container set up the way a baseline pod is. The runtime's default capabilities only (no
//! `CAP_SYS_ADMIN`), a seccomp filter refusing `mount`, `unshare` and friends, the binary
//! bound read-only, a directory bound as the cache volume, cache mounts bound at their
//! `RUN --mount` targets, generated `/etc/hosts` and `/etc/resolv.conf` bound over the root's,
//! and a file bound as `/dev/termination-log`.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use stagecoach_builder::runc::RuncRunner;
use stagecoach_builder::runner::{RunMount, RunNetwork, RunRequest, Runner};
use stagecoach_builder::users::ProcessUser;
use stagecoach_protocol::job::StageJob;
use stagecoach_protocol::{CacheLayout, StageResult};

/// What a baseline pod's runtime profile refuses without `CAP_SYS_ADMIN`.
pub const DENIED: [&str; 5] = ["mount", "umount2", "unshare", "setns", "pivot_root"];

/// Where the cache volume is in the container.
pub const POD_CACHE: &str = "/cache";

pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

pub fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Whether root, runc and busybox are here; says why not.
pub fn available(test: &str) -> bool {
    if !is_root() {
        println!("SKIP {test}: needs root (runc containers)");
        return false;
    }
    if let Err(e) = RuncRunner::new().version() {
        println!("SKIP {test}: runc unavailable ({e}); apt-get install -y runc");
        return false;
    }
    if busybox().is_none() {
        println!("SKIP {test}: busybox missing; apt-get install -y busybox-static");
        return false;
    }
    true
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stagecoach"))
}

/// Copies the shared libraries the (dynamically linked) test binary needs into `root`, so it
/// runs there; a builder pod gets the static binary instead.
pub fn add_binary_libs(root: &Path) {
    let ldd = Command::new("ldd").arg(binary()).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let dest = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(path, &dest).unwrap();
    }
}

/// A busybox root with a user `app` (1000:1000, also in group `wheel`, 10) and the test
/// binary's libraries.
pub fn busybox_root(root: &Path) {
    let busybox = busybox().unwrap();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(&busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !applet.is_empty() && applet != "busybox" {
            symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        "root:x:0:\nwheel:x:10:app\napp:x:1000:\n",
    )
    .unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    add_binary_libs(root);
}

/// A pod's directories: `rootfs` (made by the caller), `cache` (the volume), runc's state
/// and bundles, and the job file's directory.
pub struct Pod {
    pub dir: PathBuf,
    runner: RuncRunner,
}

impl Pod {
    pub fn new(dir: &Path) -> Pod {
        for d in ["state", "bundles", "cache", "spec", "rootfs"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        let runner = RuncRunner::new()
            .with_state_root(dir.join("state"))
            .with_bundle_parent(dir.join("bundles"))
            .with_denied_syscalls(&DENIED)
            // Pods allow privilege escalation unless told otherwise.
            .with_no_new_privileges(false);
        Pod {
            dir: dir.to_owned(),
            runner,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The cache volume as the host sees it.
    pub fn cache(&self) -> PathBuf {
        self.dir.join("cache")
    }

    /// Runs `stagecoach stage` for `job` as the container's first process, with each
    /// `(cache id, target)` bound as the pod would mount a subPath of the cache volume;
    /// returns its exit code, its output and the termination message it left.
    pub fn run(
        &self,
        job: &StageJob,
        cache_mounts: &[(&str, &str)],
    ) -> (i32, Vec<String>, StageResult) {
        fs::write(
            self.dir.join("spec/job.json"),
            serde_json::to_vec(job).unwrap(),
        )
        .unwrap();
        let termination = self.dir.join("termination-log");
        fs::write(&termination, b"").unwrap();
        let bind = |source: PathBuf, target: &str, readonly: bool| RunMount::Bind {
            source,
            target: target.into(),
            readonly,
        };
        let mut mounts = vec![
            bind(binary(), "/.stagecoach/bin/stagecoach", true),
            bind(self.dir.join("spec"), "/.stagecoach/spec", true),
            bind(self.cache(), POD_CACHE, false),
        ];
        for (id, target) in cache_mounts {
            let dir = CacheLayout::new(self.cache()).mount(id);
            fs::create_dir_all(&dir).unwrap();
            mounts.push(bind(dir, target, false));
        }
        mounts.push(bind(termination.clone(), "/dev/termination-log", false));
        let request = RunRequest {
            rootfs: self.root(),
            argv: vec![
                "/.stagecoach/bin/stagecoach".into(),
                "stage".into(),
                "--spec".into(),
                "/.stagecoach/spec/job.json".into(),
            ],
            env: vec![("PATH".into(), "/bin".into())],
            cwd: "/".into(),
            user: ProcessUser::default(),
            mounts,
            network: RunNetwork::Host,
            hostname: "builder-pod".into(),
            timeout: Some(Duration::from_secs(300)),
            tail_lines: 500,
        };
        let mut lines = Vec::new();
        let outcome = self
            .runner
            .run(&request, &mut |l: &str| lines.push(l.to_string()))
            .unwrap();
        let message = fs::read(&termination).unwrap();
        assert!(
            message.len() <= 4096,
            "termination message of {} bytes",
            message.len()
        );
        let result: StageResult = serde_json::from_slice(&message)
            .unwrap_or_else(|e| panic!("termination message: {e}\noutput:\n{}", lines.join("\n")));
        (outcome.exit_code, lines, result)
    }
}
