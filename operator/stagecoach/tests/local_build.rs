#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `stagecoach build` end to end, against real parts: Debian's docker-registry (started by
//! `e2e/lib/registry.sh`), base images made from busybox-static and from debootstrap plus a Go
//! toolchain (`e2e/images`), RUN steps under Debian's runc. Each image that is built is
//! unpacked and run under runc, and must do what it should.
//!
//! Needs root, runc, docker-registry, skopeo and the e2e scripts; `e2e/test-all` provides them
//! and runs this file with `cargo test -p stagecoach --features e2e --test local_build`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use stagecoach_builder::runc::RuncRunner;
use stagecoach_builder::runner::{RunNetwork, RunRequest, Runner};
use stagecoach_builder::users::ProcessUser;
use stagecoach_oci::layer::{ApplyOptions, apply_layer_blob};
use stagecoach_oci::{ContentStore, Digest, ImageConfig, ImageManifest};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The throwaway registry with the base images, shared by the tests of this file: started
/// once, pushed to once. Statics are never dropped, so a watcher stops the registry and
/// removes its directory when this test process ends (`tail --pid` waits for the exit).
fn registry() -> &'static str {
    static REGISTRY: OnceLock<String> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        assert!(
            rustix::process::geteuid().is_root(),
            "the local build tests need root (runc, overlay mounts)"
        );
        let dir = tempfile::tempdir().unwrap().keep();
        let script = repo_root().join("e2e/lib/registry.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "registry.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // `setsid -f` forks the watcher off and returns at once.
        let watcher = Command::new("setsid")
            .arg("-f")
            .arg("bash")
            .arg("-c")
            .arg(r#"tail --pid="$1" -f /dev/null; bash "$2" stop "$3"; rm -rf "$3""#)
            .arg("watcher")
            .arg(std::process::id().to_string())
            .arg(&script)
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(watcher.success(), "could not start the registry's watcher");
        let addr = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let images = Command::new(repo_root().join("e2e/images"))
            .args(["--registry", &addr, "--only", "busybox,golang"])
            .output()
            .unwrap();
        assert!(
            images.status.success(),
            "e2e/images failed: {}",
            String::from_utf8_lossy(&images.stderr)
        );
        addr
    })
}

/// A build context in a temporary directory.
struct Context {
    dir: tempfile::TempDir,
}

impl Context {
    fn new(files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Context { dir };
        for (path, content) in files {
            ctx.write(path, content);
        }
        ctx
    }

    fn write(&self, path: &str, content: &str) {
        let p = self.dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content.replace("$REGISTRY", registry())).unwrap();
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

struct Build {
    out: Output,
}

impl Build {
    fn ok(&self) -> bool {
        self.out.status.success()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    /// The `<label> <digest> <size>` line of a target.
    fn result(&self, label: &str) -> (String, u64) {
        let stdout = String::from_utf8_lossy(&self.out.stdout).into_owned();
        let line = stdout
            .lines()
            .find(|l| l.split(' ').next() == Some(label))
            .unwrap_or_else(|| {
                panic!(
                    "no line for {label} in {stdout:?}; stderr:\n{}",
                    self.stderr()
                )
            });
        let parts: Vec<&str> = line.split(' ').collect();
        (parts[1].to_string(), parts[2].parse().unwrap())
    }

    fn assert_ok(&self) -> &Self {
        assert!(self.ok(), "build failed:\n{}", self.stderr());
        self
    }

    /// Progress lines of steps that were (not) cache hits, as `(stage, step)`.
    fn steps(&self, cached: bool) -> Vec<String> {
        self.stderr()
            .lines()
            .filter(|l| l.contains(" DONE ") && l.ends_with("(cached)") == cached)
            .map(|l| l.split(" DONE").next().unwrap_or("").to_string())
            .collect()
    }
}

fn build(ctx: &Context, cache: &Path, args: &[&str]) -> Build {
    let out = Command::new(env!("CARGO_BIN_EXE_stagecoach"))
        .arg("build")
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .arg(ctx.path())
        .output()
        .unwrap();
    Build { out }
}

/// The image named `label` in an OCI layout: its config and a directory with its layers
/// applied.
fn unpack(layout: &Path, label: &str) -> (ImageConfig, tempfile::TempDir) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == label)
        .unwrap_or_else(|| panic!("{label} not in {index}"));
    let store = ContentStore::open(layout).unwrap();
    let digest = Digest::parse(entry["digest"].as_str().unwrap()).unwrap();
    let manifest: ImageManifest =
        serde_json::from_slice(&store.read_to_vec(&digest, 1 << 20).unwrap()).unwrap();
    let config =
        ImageConfig::from_json(&store.read_to_vec(&manifest.config.digest, 1 << 20).unwrap())
            .unwrap();
    let root = tempfile::tempdir().unwrap();
    for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        apply_layer_blob(
            &store,
            &layer.digest,
            Some(diff_id),
            root.path(),
            &ApplyOptions::default(),
        )
        .unwrap();
    }
    (config, root)
}

/// Runs `argv` in `root` under runc with host networking; returns the exit code and output.
fn run_in(root: &Path, argv: &[&str], timeout: Duration) -> (i32, Vec<String>) {
    let bundles = tempfile::tempdir().unwrap();
    let runner = RuncRunner::new().with_bundle_parent(bundles.path());
    let request = RunRequest {
        rootfs: root.to_owned(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![("PATH".into(), "/bin:/usr/bin".into())],
        cwd: PathBuf::from("/"),
        user: ProcessUser {
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
        },
        mounts: Vec::new(),
        network: RunNetwork::Host,
        hostname: "e2e".into(),
        timeout: Some(timeout),
        tail_lines: 50,
    };
    let outcome = runner.run(&request, &mut |_| {}).unwrap();
    (outcome.exit_code, outcome.tail)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: e2e\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

const GO_MAIN: &str = r#"package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from scratch")
	})
	http.HandleFunc("/quit", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "bye")
		go os.Exit(0)
	})
	if err := http.ListenAndServe(os.Args[1], nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
"#;

#[test]
fn a_go_server_built_in_golang_runs_alone_on_scratch() {
    let ctx = Context::new(&[
        (
            "Dockerfile",
            "FROM $REGISTRY/library/golang:latest AS build\n\
             WORKDIR /src\n\
             COPY go.mod main.go ./\n\
             RUN --mount=type=cache,target=/root/.cache/go-build GOTELEMETRY=off go build -trimpath -o /out/server .\n\
             FROM scratch\n\
             COPY --from=build /out/server /server\n\
             ENTRYPOINT [\"/server\"]\n",
        ),
        ("go.mod", "module example.invalid/server\n\ngo 1.22\n"),
        ("main.go", GO_MAIN),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let layout = tempfile::tempdir().unwrap();
    let out = format!("oci:{}", layout.path().display());
    let b = build(&ctx, cache.path(), &["--output", &out]);
    b.assert_ok();
    let (_, size) = b.result("stage-1");
    assert!(size < 20 << 20, "the image is {size} bytes, not a few MB");
    let (config, root) = unpack(layout.path(), "stage-1");
    let entries: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["server"], "scratch holds the binary alone");
    assert_eq!(
        config.config.as_ref().unwrap().entrypoint.as_deref(),
        Some(&["/server".to_string()][..])
    );

    let port = free_port();
    let root_path = root.path().to_owned();
    let server = std::thread::spawn(move || {
        run_in(
            &root_path,
            &["/server", &format!("127.0.0.1:{port}")],
            Duration::from_secs(120),
        )
    });
    // Poll until the server answers (or exits, or the deadline passes), backing off a
    // little each time so the wait does not keep a core busy.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pause = Duration::from_millis(5);
    let body = loop {
        match http_get(port, "/") {
            Ok(body) => break body,
            Err(_) if Instant::now() < deadline && !server.is_finished() => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(e) => panic!("the server never answered: {e}"),
        }
    };
    assert!(body.starts_with("HTTP/1.0 200"), "{body}");
    assert!(body.contains("hello from scratch"), "{body}");
    let _ = http_get(port, "/quit");
    let (code, _) = server.join().unwrap();
    assert_eq!(code, 0, "the server should exit cleanly on /quit");
}

#[test]
fn a_rootfs_tarball_added_to_scratch_is_a_working_shell_image() {
    let ctx = Context::new(&[(
        "Dockerfile",
        "FROM scratch\nADD rootfs.tar.gz /\nCMD [\"/bin/sh\"]\n",
    )]);
    // The tarball: busybox-static and the applets the test uses.
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tree.path().join("bin")).unwrap();
    std::fs::copy("/bin/busybox", tree.path().join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", tree.path().join("bin").join(applet)).unwrap();
    }
    let status = Command::new("tar")
        .arg("-czf")
        .arg(ctx.path().join("rootfs.tar.gz"))
        .arg("-C")
        .arg(tree.path())
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let cache = tempfile::tempdir().unwrap();
    let layout = tempfile::tempdir().unwrap();
    let out = format!("oci:{}", layout.path().display());
    build(&ctx, cache.path(), &["--output", &out]).assert_ok();
    let (config, root) = unpack(layout.path(), "stage-0");
    assert_eq!(
        config.config.as_ref().unwrap().cmd.as_deref(),
        Some(&["/bin/sh".to_string()][..])
    );
    assert!(
        root.path().join("bin/busybox").is_file(),
        "the archive was extracted, not copied"
    );
    assert!(!root.path().join("rootfs.tar.gz").exists());
    let (code, output) = run_in(
        root.path(),
        &["/bin/sh", "-c", "echo shell works"],
        Duration::from_secs(30),
    );
    assert_eq!((code, output), (0, vec!["shell works".to_string()]));
}

const SHARED_BASE: &str = "FROM $REGISTRY/library/busybox AS base\n\
RUN echo base > /base.txt\n\
FROM base AS test\n\
RUN echo running tests; echo 'FAIL: 1 of 3 tests' >&2; exit 3\n\
FROM base AS prod\n\
RUN echo prod > /prod.txt\n";

#[test]
fn targets_build_what_they_need_and_a_failing_test_fails_the_build() {
    let ctx = Context::new(&[("Dockerfile", SHARED_BASE)]);
    let cache = tempfile::tempdir().unwrap();
    let prod = build(&ctx, cache.path(), &["--target", "prod"]);
    prod.assert_ok();
    prod.result("prod");
    assert!(
        !prod.stderr().contains("[test"),
        "--target prod ran the test stage:\n{}",
        prod.stderr()
    );
    let test = build(&ctx, cache.path(), &["--target", "test"]);
    assert_eq!(test.out.status.code(), Some(1), "{}", test.stderr());
    let err = test.stderr();
    assert!(err.contains("error: stage test: line 4"), "{err}");
    assert!(err.contains("exited with code 3"), "{err}");
    assert!(err.contains("| FAIL: 1 of 3 tests"), "{err}");
    assert!(test.out.stdout.is_empty(), "a failed build names no image");
}

#[test]
fn heredocs_args_in_from_and_build_arg_overrides() {
    let ctx = Context::new(&[(
        "Dockerfile",
        "ARG BASE=busybox\n\
         FROM $REGISTRY/library/${BASE}\n\
         ARG GREETING=hello\n\
         COPY <<EOF /etc/greeting\n\
         ${GREETING}, world\n\
         EOF\n\
         RUN <<EOF\n\
         set -e\n\
         mkdir -p /out\n\
         echo \"script saw $GREETING\" > /out/script.txt\n\
         EOF\n\
         RUN <<AWK\n\
         #!/bin/awk -f\n\
         BEGIN { print \"awk ran the script\" > \"/out/awk.txt\" }\n\
         AWK\n",
    )]);
    let cache = tempfile::tempdir().unwrap();
    let layout = tempfile::tempdir().unwrap();
    let out = format!("oci:{}", layout.path().display());
    build(
        &ctx,
        cache.path(),
        &["--build-arg", "GREETING=bonjour", "--output", &out],
    )
    .assert_ok();
    let (_, root) = unpack(layout.path(), "stage-0");
    let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
    assert_eq!(read("etc/greeting"), "bonjour, world\n");
    assert_eq!(read("out/script.txt"), "script saw bonjour\n");
    // A `#!` script runs under its interpreter (the shell would fail on `BEGIN {`), and the
    // file it ran from is not left in the image.
    assert_eq!(read("out/awk.txt"), "awk ran the script\n");
    assert!(!root.path().join("dev/pipes").exists());
    // An ARG in FROM that names no image fails before anything runs, naming the image.
    let bad = build(&ctx, cache.path(), &["--build-arg", "BASE=no-such-image"]);
    assert_eq!(bad.out.status.code(), Some(1));
    assert!(
        bad.stderr().contains("library/no-such-image"),
        "{}",
        bad.stderr()
    );
}

#[test]
fn layers_carry_whiteouts_links_owners_and_modes() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let ctx = Context::new(&[(
        "Dockerfile",
        "FROM $REGISTRY/library/busybox AS base\n\
         RUN mkdir -p /data/dir && echo a > /data/dir/a && echo keep > /data/keep && echo f > /data/file\n\
         FROM base\n\
         RUN rm /data/file && rm -r /data/dir && rm /etc/group \
          && ln -s keep /data/link && ln /data/keep /data/hard \
          && echo s > /data/suid && chmod 4755 /data/suid \
          && echo p > /data/private && chmod 0600 /data/private && chown 1000:1000 /data/private\n",
    )]);
    let cache = tempfile::tempdir().unwrap();
    let layout = tempfile::tempdir().unwrap();
    let out = format!("oci:{}", layout.path().display());
    build(&ctx, cache.path(), &["--output", &out]).assert_ok();
    let (_, root) = unpack(layout.path(), "stage-1");
    let p = |rel: &str| root.path().join(rel);
    for gone in ["data/file", "data/dir", "etc/group"] {
        assert!(
            std::fs::symlink_metadata(p(gone)).is_err(),
            "{gone} was removed in a later layer but is in the image"
        );
    }
    assert_eq!(
        std::fs::read_link(p("data/link")).unwrap(),
        Path::new("keep")
    );
    let keep = std::fs::metadata(p("data/keep")).unwrap();
    let hard = std::fs::metadata(p("data/hard")).unwrap();
    assert_eq!(keep.ino(), hard.ino(), "the hard link is one inode");
    let suid = std::fs::metadata(p("data/suid")).unwrap();
    assert_eq!(suid.permissions().mode() & 0o7777, 0o4755);
    let private = std::fs::metadata(p("data/private")).unwrap();
    assert_eq!(private.permissions().mode() & 0o7777, 0o600);
    assert_eq!((private.uid(), private.gid()), (1000, 1000));
}

const CACHED: &str = "FROM $REGISTRY/library/busybox\n\
RUN echo one > /one\n\
COPY a.txt /a.txt\n\
RUN cat /a.txt > /copy-of-a\n\
COPY b.txt /b.txt\n\
RUN cat /b.txt > /copy-of-b\n";

#[test]
fn an_unchanged_build_hits_the_cache_and_a_changed_file_reruns_only_later_steps() {
    let ctx = Context::new(&[("Dockerfile", CACHED), ("a.txt", "A"), ("b.txt", "B")]);
    let cache = tempfile::tempdir().unwrap();
    let first = build(&ctx, cache.path(), &[]);
    first.assert_ok();
    assert_eq!(
        first.steps(true),
        Vec::<String>::new(),
        "a fresh cache has no hits"
    );
    let second = build(&ctx, cache.path(), &[]);
    second.assert_ok();
    assert_eq!(
        second.steps(false),
        Vec::<String>::new(),
        "{}",
        second.stderr()
    );
    assert_eq!(second.steps(true).len(), 5);
    assert_eq!(first.result("stage-0"), second.result("stage-0"));

    ctx.write("b.txt", "B changed");
    let third = build(&ctx, cache.path(), &[]);
    third.assert_ok();
    assert_eq!(
        third.steps(true),
        ["[stage-0] #1", "[stage-0] #2", "[stage-0] #3"],
        "{}",
        third.stderr()
    );
    assert_eq!(third.steps(false), ["[stage-0] #4", "[stage-0] #5"]);
    assert_ne!(third.result("stage-0"), second.result("stage-0"));
    // Hits taken as overlay layers, then misses on top, give the image a fresh build gives.
    let fourth = build(&ctx, cache.path(), &[]);
    fourth.assert_ok();
    let fresh = tempfile::tempdir().unwrap();
    let scratch_build = build(&ctx, fresh.path(), &[]);
    scratch_build.assert_ok();
    assert_eq!(fourth.result("stage-0"), third.result("stage-0"));
    assert_eq!(scratch_build.result("stage-0"), third.result("stage-0"));
}

#[test]
fn no_cache_builds_give_the_same_digest_as_each_other_and_as_a_cached_build() {
    let ctx = Context::new(&[("Dockerfile", SHARED_BASE)]);
    let cache = tempfile::tempdir().unwrap();
    let digests: Vec<String> = (0..3)
        .map(|i| {
            let args: &[&str] = if i < 2 {
                &["--target", "prod", "--no-cache"]
            } else {
                &["--target", "prod"]
            };
            let b = build(&ctx, cache.path(), args);
            b.assert_ok();
            b.result("prod").0
        })
        .collect();
    assert_eq!(digests[0], digests[1], "--no-cache twice");
    assert_eq!(digests[0], digests[2], "--no-cache and a cached build");
    // Another cache directory, plain directories instead of overlay mounts: same image.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stagecoach"))
        .env("STAGECOACH_BUILD_OVERLAY", "0")
        .args(["build", "--target", "prod", "--cache-dir"])
        .arg(other.path())
        .arg(ctx.path())
        .output()
        .unwrap();
    let plain = Build { out };
    plain.assert_ok();
    assert_eq!(
        plain.result("prod").0,
        digests[0],
        "overlay and plain roots"
    );
}

#[test]
fn push_and_layout_output_name_the_digest_stdout_gives() {
    let ctx = Context::new(&[("Dockerfile", SHARED_BASE)]);
    let cache = tempfile::tempdir().unwrap();
    let layout = tempfile::tempdir().unwrap();
    let out = format!("oci:{}", layout.path().display());
    let tag = format!("{}/e2e/app:1", registry());
    let b = build(
        &ctx,
        cache.path(),
        &[
            "--target", "prod", "--push", "--tag", &tag, "--output", &out,
        ],
    );
    b.assert_ok();
    let (digest, _) = b.result("prod");
    let inspect = |reference: &str| {
        let out = Command::new("skopeo")
            .args([
                "inspect",
                "--tls-verify=false",
                "--format",
                "{{.Digest}}",
                reference,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo inspect {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(inspect(&format!("docker://{tag}")), digest);
    assert_eq!(
        inspect(&format!("oci:{}:prod", layout.path().display())),
        digest
    );
}

/// The pinned manifest digest `stagecoach build` reported pulling for `image`.
fn pulled_digest(build: &Build, image: &str) -> Digest {
    let stderr = build.stderr();
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&format!("[pull] {image} ")))
        .unwrap_or_else(|| panic!("no pull of {image} in:\n{stderr}"));
    let digest = line.split("→ ").nth(1).unwrap().split(' ').next().unwrap();
    Digest::parse(digest).unwrap()
}

#[test]
fn a_stage_chain_run_in_place_in_baseline_containers_equals_stagecoach_build() {
    use stagecoach_protocol::job::{JOB_VERSION, JobBase, JobOptions, StageJob};
    use stagecoach_protocol::{CacheLayout, LayerRecord, StageResult};

    // Two stages, the second `FROM` the first: in a pod the second starts from the busybox
    // image again and applies the first stage's layers in place (with a whiteout), then
    // runs as a named user and with a cache mount.
    let ctx = Context::new(&[(
        "Dockerfile",
        "FROM $REGISTRY/library/busybox AS base\n\
         RUN mkdir -p /data && echo a > /data/a && echo old > /data/old\n\
         FROM base AS app\n\
         RUN rm /data/old && echo b > /data/b && chown 1000:1000 /data/b\n\
         RUN --mount=type=cache,id=c,target=/var/cache/c echo x > /var/cache/c/x && cp /var/cache/c/x /data/x\n",
    )]);
    let cache = tempfile::tempdir().unwrap();
    let layout = tempfile::tempdir().unwrap();
    let out = format!("oci:{}", layout.path().display());
    let built = build(&ctx, cache.path(), &["--target", "app", "--output", &out]);
    built.assert_ok();
    let (config, _) = unpack(layout.path(), "app");
    let expected: Vec<Digest> = config.rootfs.diff_ids.clone();

    // The base image as the controller resolves it: manifest, config and layers.
    let image = format!("{}/library/busybox", registry());
    let store = ContentStore::open(cache.path()).unwrap();
    let manifest_digest = pulled_digest(&built, &image);
    let manifest: ImageManifest =
        serde_json::from_slice(&store.read_to_vec(&manifest_digest, 1 << 20).unwrap()).unwrap();
    let config_bytes = store.read_to_vec(&manifest.config.digest, 1 << 20).unwrap();
    let base_config = ImageConfig::from_json(&config_bytes).unwrap();
    let base_layers: Vec<LayerRecord> =
        stagecoach_oci::layer_records(&manifest, &base_config).unwrap();
    // Each pod's root is the image, unpacked, plus the test binary's libraries.
    let image_root = |root: &Path| {
        for l in &base_layers {
            apply_layer_blob(
                &store,
                &l.digest,
                Some(&l.diff_id),
                root,
                &ApplyOptions::default(),
            )
            .unwrap();
        }
        common::add_binary_libs(root);
    };
    let job = |stage: usize, label: &str, base: JobBase, apply: Vec<LayerRecord>| StageJob {
        version: JOB_VERSION,
        build: "b".into(),
        dockerfile: std::fs::read_to_string(ctx.path().join("Dockerfile")).unwrap(),
        dockerfile_path: None,
        stage,
        label: label.into(),
        build_args: Default::default(),
        base,
        root: "/".into(),
        apply,
        context: CacheLayout::new(common::POD_CACHE).build_context("b"),
        cache: common::POD_CACHE.into(),
        stages: vec![],
        images: vec![],
        secrets: vec![],
        options: JobOptions::default(),
        export: None,
        export_shared: false,
        export_paths: None,
        result: Some(
            CacheLayout::new(common::POD_CACHE)
                .build_stage("b", stage)
                .join("result.json"),
        ),
        cache_mounts: Vec::new(),
        wait_for: Vec::new(),
    };
    let pods = tempfile::tempdir().unwrap();
    let run = |name: &str, job: &StageJob, mounts: &[(&str, &str)]| -> StageResult {
        let pod = common::Pod::new(&pods.path().join(name));
        // Both pods share one cache volume, as the stages of one build do.
        std::fs::remove_dir(pod.cache()).unwrap();
        std::os::unix::fs::symlink(pods.path().join("volume"), pod.cache()).unwrap();
        image_root(&pod.root());
        let (code, lines, result) = pod.run(job, mounts);
        assert_eq!(code, 0, "{name} failed:\n{}", lines.join("\n"));
        result
    };
    std::fs::create_dir_all(CacheLayout::new(pods.path().join("volume")).build_context("b"))
        .unwrap();
    let config_json: serde_json::Value = serde_json::from_slice(&config_bytes).unwrap();
    let base = run(
        "base",
        &job(
            0,
            "base",
            JobBase::Image {
                reference: format!("{image}@{manifest_digest}"),
                manifest: manifest_digest.clone(),
                config: config_json,
                layers: base_layers.clone(),
            },
            vec![],
        ),
        &[],
    );
    let own: Vec<LayerRecord> = base.layers[base_layers.len()..].to_vec();
    let app = run(
        "app",
        &job(
            1,
            "app",
            JobBase::Stage {
                index: 0,
                config: base.config_digest.clone().unwrap(),
                layers: base.layers.clone(),
            },
            own,
        ),
        &[("c", "/var/cache/c")],
    );
    let got: Vec<Digest> = app.layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(
        got, expected,
        "the pods' layers differ from stagecoach build's"
    );
    // The full result is on the cache volume too.
    let full: StageResult = serde_json::from_slice(
        &std::fs::read(
            CacheLayout::new(pods.path().join("volume"))
                .build_stage("b", 1)
                .join("result.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(full.layers, app.layers);
    assert!(!full.steps.is_empty());
}
