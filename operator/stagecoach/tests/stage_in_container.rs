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

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{DENIED, POD_CACHE, Pod, available, binary, busybox_root};
use stagecoach_builder::executor::ProgressEvent;
use stagecoach_builder::job::{JobEnv, run_job};
use stagecoach_builder::runc::RuncRunner;
use stagecoach_protocol::job::{JOB_VERSION, JobBase, JobOptions, StageJob};
use stagecoach_protocol::result::Outcome;
use stagecoach_protocol::{CacheLayout, StageReason, StageResult};

const DOCKERFILE: &str = r#"FROM scratch AS good
RUN echo hello > /hello && id -u > /uid-root && echo "$HOME" > /home-root
RUN mkdir -p /tmp/m && ! mount -t tmpfs none /tmp/m 2>/dev/null && ! unshare -U true 2>/dev/null && echo refused > /refused
USER app
RUN id -u > /tmp/uid-app && id -G > /tmp/groups-app && echo "$HOME" > /tmp/home-app
USER root
RUN --mount=type=cache,id=thing,target=/var/cache/thing echo cached > /var/cache/thing/x && echo after > /after-cache
RUN (sleep 300 &) ; echo started
RUN <<EOF
#!/bin/sh
echo from-script > /script-ran
EOF

FROM scratch AS missing
RUN --mount=type=cache,target=/not/mounted touch /not/mounted/x

FROM scratch AS copier
COPY --from=good /hello /tmp/groups-app /copied/
COPY --from=good --chown=app /uid-root /owned
"#;

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
        export: None,
        export_shared: false,
        export_paths: None,
        result: None,
        cache_mounts: Vec::new(),
        wait_for: Vec::new(),
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

#[test]
fn a_stage_runs_in_place_in_a_baseline_container_and_matches_the_local_path() {
    if !available("stage_in_container") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pod = Pod::new(&tmp.path().join("pod"));
    busybox_root(&pod.root());
    fs::create_dir_all(CacheLayout::new(pod.cache()).build_context("b")).unwrap();

    // The local path: the same job over a copy of the same root, RUN under runc.
    let local = tmp.path().join("local");
    busybox_root(&local.join("rootfs"));
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

    let pod_job = |stage, label| job(stage, label, Path::new("/"), Path::new(POD_CACHE));
    let exported = CacheLayout::new(POD_CACHE)
        .build_stage("b", 0)
        .join("rootfs");
    let mut good = pod_job(0, "good");
    good.export = Some(exported.clone());
    let (code, lines, result) = pod.run(&good, &[("thing", "/var/cache/thing")]);
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
    // HOME from passwd when the image sets none, as runc gives it.
    assert_eq!(read("home-root"), "/root\n");
    assert_eq!(read("tmp/home-app"), "/home/app\n");
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
    let (code, lines, result) = pod.run(&pod_job(1, "missing"), &[]);
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

    // The exported root serves a later stage in another pod (COPY --from), as the local
    // path's stage root does: same layers. Mount points and the cache volume stay behind.
    let export = CacheLayout::new(pod.cache())
        .build_stage("b", 0)
        .join("rootfs");
    assert_eq!(fs::read_to_string(export.join("hello")).unwrap(), "hello\n");
    for absent in [
        "cache/blobs",
        "var/cache/thing/x",
        ".stagecoach/bin/stagecoach",
    ] {
        assert!(!export.join(absent).exists(), "{absent} was exported");
    }
    let from_good = |root: &Path| {
        vec![stagecoach_protocol::job::StageInput {
            index: 0,
            name: Some("good".into()),
            root: root.to_owned(),
            ready: None,
        }]
    };
    let mut copier = pod_job(2, "copier");
    copier.stages = from_good(&exported);
    let (code, lines, copied) = pod.run(&copier, &[]);
    assert_eq!(code, 0, "{}", lines.join("\n"));
    let mut local_copier = job(2, "copier", &local.join("rootfs"), &local.join("cache"));
    local_copier.stages = from_good(&local.join("rootfs"));
    let reference = run_job(&local_copier, env, &mut |_: &ProgressEvent<'_>| {}).unwrap();
    assert!(reference.error.is_none(), "{:?}", reference.result);
    assert_eq!(diff_ids(&copied).len(), 2);
    assert_eq!(diff_ids(&copied), diff_ids(&reference.result));

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
