#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `stagecoach stage --spec` inside a container set up the way a baseline builder pod is:
//! the runtime's default capabilities only (no `CAP_SYS_ADMIN`), a seccomp filter that
//! refuses `mount` and `unshare`, the binary bound read-only, a cache directory bound as the
//! cache volume, a cache mount's directory bound at its `RUN --mount` target, generated
//! files bound over `/etc/hosts` and `/etc/resolv.conf`, and a termination-message file. The
//! same stage also runs through the local path (the same `run_job`, RUN under runc, as
//! `stagecoach build` runs every stage); both must give the same layers.
//!
//! Needs root, runc and busybox (Debian's `runc` and `busybox-static`); without them the
//! test says why and passes.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use stagecoach_builder::executor::ProgressEvent;
use stagecoach_builder::job::{JobEnv, run_job};
use stagecoach_builder::runc::RuncRunner;
use stagecoach_builder::runner::{RunMount, RunNetwork, RunRequest, Runner};
use stagecoach_builder::users::ProcessUser;
use stagecoach_protocol::job::{JOB_VERSION, JobBase, JobOptions, StageJob};
use stagecoach_protocol::result::Outcome;
use stagecoach_protocol::{CacheLayout, StageReason, StageResult};

const DOCKERFILE: &str = r#"FROM scratch AS good
RUN echo hello > /hello && id -u > /uid-root
RUN mkdir -p /tmp/m && ! mount -t tmpfs none /tmp/m 2>/dev/null && ! unshare -U true 2>/dev/null && echo refused > /refused
USER app
RUN id -u > /tmp/uid-app && id -G > /tmp/groups-app
USER root
RUN --mount=type=cache,id=thing,target=/var/cache/thing echo cached > /var/cache/thing/x && echo after > /after-cache
RUN (sleep 300 &) ; echo started
RUN <<EOF
#!/bin/sh
echo from-script > /script-ran
EOF

FROM scratch AS missing
RUN --mount=type=cache,target=/not/mounted touch /not/mounted/x
"#;

/// What a baseline pod's runtime profile refuses without `CAP_SYS_ADMIN`.
const DENIED: [&str; 5] = ["mount", "umount2", "unshare", "setns", "pivot_root"];

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn available() -> bool {
    if !is_root() {
        println!("SKIP stage_in_container: needs root (runc containers)");
        return false;
    }
    if let Err(e) = RuncRunner::new().version() {
        println!("SKIP stage_in_container: runc unavailable ({e}); apt-get install -y runc");
        return false;
    }
    if busybox().is_none() {
        println!("SKIP stage_in_container: busybox missing; apt-get install -y busybox-static");
        return false;
    }
    true
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stagecoach"))
}

/// A busybox root with a user `app` (1000:1000, also in group `wheel`, 10) and the shared
/// libraries the (dynamically linked) test binary needs, so it can run inside.
fn make_root(root: &Path) {
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

fn job(stage: usize, label: &str, root: &Path, cache: &Path) -> StageJob {
    StageJob {
        version: JOB_VERSION,
        build: "b".into(),
        dockerfile: DOCKERFILE.into(),
        dockerfile_path: None,
        stage,
        label: label.into(),
        build_args: Default::default(),
        base: JobBase::Scratch,
        root: root.to_owned(),
        apply: vec![],
        context: CacheLayout::new(cache).build_context("b"),
        cache: cache.to_owned(),
        stages: vec![],
        images: vec![],
        secrets: vec![],
        options: JobOptions {
            no_cache: true,
            ..JobOptions::default()
        },
        result: None,
    }
}

/// The files of a layer blob, by `tar -t`.
fn layer_files(cache: &Path, digest: &stagecoach_protocol::Digest) -> Vec<String> {
    let blob = cache.join("blobs/sha256").join(digest.hex());
    let out = Command::new("tar").arg("-tzf").arg(&blob).output().unwrap();
    assert!(out.status.success(), "tar -t {}", blob.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

struct Pod {
    dir: PathBuf,
    runner: RuncRunner,
}

impl Pod {
    fn new(dir: &Path) -> Pod {
        for d in ["state", "bundles", "cache", "spec"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        fs::create_dir_all(CacheLayout::new(dir.join("cache")).build_context("b")).unwrap();
        fs::create_dir_all(CacheLayout::new(dir.join("cache")).mount("thing")).unwrap();
        make_root(&dir.join("rootfs"));
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

    fn root(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    fn cache(&self) -> PathBuf {
        self.dir.join("cache")
    }

    /// Runs `stagecoach stage` for `job` as the container's first process; returns its exit
    /// code, its output and the termination message it left.
    fn run(&self, job: &StageJob) -> (i32, Vec<String>, StageResult) {
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
            mounts: vec![
                bind(binary(), "/.stagecoach/bin/stagecoach", true),
                bind(self.dir.join("spec"), "/.stagecoach/spec", true),
                bind(self.cache(), "/cache", false),
                bind(
                    CacheLayout::new(self.cache()).mount("thing"),
                    "/var/cache/thing",
                    false,
                ),
                bind(termination.clone(), "/dev/termination-log", false),
            ],
            network: RunNetwork::Host,
            hostname: "builder-pod".into(),
            timeout: Some(Duration::from_secs(120)),
            tail_lines: 200,
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

#[test]
fn a_stage_runs_in_place_in_a_baseline_container_and_matches_the_local_path() {
    if !available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pod = Pod::new(&tmp.path().join("pod"));

    // The local path: the same job over a copy of the same root, RUN under runc.
    let local = tmp.path().join("local");
    make_root(&local.join("rootfs"));
    fs::create_dir_all(CacheLayout::new(local.join("cache")).build_context("b")).unwrap();
    for d in ["state", "bundles"] {
        fs::create_dir_all(local.join(d)).unwrap();
    }
    let runc = RuncRunner::new()
        .with_state_root(local.join("state"))
        .with_bundle_parent(local.join("bundles"))
        .with_denied_syscalls(&DENIED)
        .with_no_new_privileges(false);
    let local_job = job(0, "good", &local.join("rootfs"), &local.join("cache"));
    let env = JobEnv {
        runner: &runc,
        stacker: None,
    };
    let reference = run_job(&local_job, env, &mut |_: &ProgressEvent<'_>| {}).unwrap();
    assert!(
        reference.error.is_none(),
        "local path: {:?}",
        reference.result
    );

    let (code, lines, result) = pod.run(&job(0, "good", Path::new("/"), Path::new("/cache")));
    let output = lines.join("\n");
    assert_eq!(code, 0, "stage failed:\n{output}");
    assert_eq!(result.outcome, Outcome::Succeeded, "{output}");
    assert!(
        !output.contains("still holds its output"),
        "the step's daemon outlived it:\n{output}"
    );

    // Same layers as the local path, step by step.
    let diff_ids = |r: &StageResult| {
        r.layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(diff_ids(&result).len(), 5, "{output}");
    assert_eq!(diff_ids(&result), diff_ids(&reference.result), "{output}");

    // What the steps did, as root and as `app`, with the container refusing mounts.
    let root = pod.root();
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("hello"), "hello\n");
    assert_eq!(read("uid-root"), "0\n");
    assert_eq!(read("refused"), "refused\n");
    assert_eq!(read("tmp/uid-app"), "1000\n");
    assert_eq!(read("tmp/groups-app"), "1000 10\n");
    assert_eq!(read("after-cache"), "after\n");
    assert_eq!(read("script-ran"), "from-script\n");
    // The cache mount's writes went to the cache volume and into no layer.
    assert_eq!(
        fs::read_to_string(CacheLayout::new(pod.cache()).mount("thing").join("x")).unwrap(),
        "cached\n"
    );
    let mut all = Vec::new();
    for layer in &result.layers {
        all.extend(layer_files(&pod.cache(), &layer.digest));
    }
    assert!(all.iter().any(|f| f == "after-cache"), "{all:?}");
    for f in &all {
        assert!(
            !f.starts_with("var/cache/thing")
                && !f.starts_with(".stagecoach")
                && !f.starts_with("cache")
                && !f.starts_with("etc/hosts")
                && !f.starts_with("etc/resolv.conf")
                && !f.starts_with("dev/"),
            "{f} reached a layer"
        );
    }

    // A step whose mount the pod does not provide fails with its reason and writes nothing.
    let (code, lines, result) = pod.run(&job(1, "missing", Path::new("/"), Path::new("/cache")));
    let output = lines.join("\n");
    assert_eq!(code, 2, "{output}");
    assert_eq!(result.reason, Some(StageReason::MountMissing), "{output}");
    let message = result.message.unwrap_or_default();
    assert!(
        message.contains("/not/mounted") && message.contains("line 15"),
        "{message}"
    );
    assert!(
        !root.join("not").exists(),
        "the missing mount's target was written"
    );

    // A job that is not one fails with a result too.
    fs::write(pod.dir.join("spec/job.json"), b"{\"version\": 1}").unwrap();
    let out = Command::new(binary())
        .args(["stage", "--spec"])
        .arg(pod.dir.join("spec/job.json"))
        .arg("--termination-log")
        .arg(pod.dir.join("termination-log"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let result: StageResult =
        serde_json::from_slice(&fs::read(pod.dir.join("termination-log")).unwrap()).unwrap();
    assert_eq!(result.reason, Some(StageReason::InvalidJob));
}
