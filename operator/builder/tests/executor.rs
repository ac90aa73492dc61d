#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The stage executor on real directories: a real build context, root filesystem, content
//! store and key store. RUN goes through a fake runner that only records what it was handed
//! and edits the root directly to stand in for a process; everything else is the real code.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use stagecoach_builder::context::BuildContext;
use stagecoach_builder::executor::{
    BaseImage, ExecutorError, ExecutorOptions, ExitCode, Outcome, ProgressEvent, StageExecutor,
    StageOutcome, StageResult, StageSpec,
};
use stagecoach_builder::image_state::ArgSource;
use stagecoach_builder::runner::{RunMount, RunOutcome, RunRequest, Runner, RunnerError};
use stagecoach_dockerfile::Dockerfile;
use stagecoach_oci::layer::apply_layer_blob;
use stagecoach_oci::{ApplyOptions, Compression, ContentStore, ImageConfig};

/// Interprets a tiny command language, `;`-separated, so tests can say what "the process"
/// does: `write PATH TEXT` (`$NAME` in TEXT from the request's env), `rm PATH`, `rmdir PATH`,
/// `mkdir PATH`, `echo TEXT`, `fail CODE`, `expose-mounts` (copies every bind mount's source
/// file onto its target, as a real bind mount would show it), `touch-mount TARGET` (writes a
/// file through the bind mount at TARGET, into its host source).
#[derive(Default)]
struct FakeRunner {
    calls: Mutex<Vec<RunRequest>>,
}

impl FakeRunner {
    fn calls(&self) -> Vec<RunRequest> {
        self.calls.lock().unwrap().clone()
    }
}

fn in_root(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

impl Runner for FakeRunner {
    fn run(
        &self,
        request: &RunRequest,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<RunOutcome, RunnerError> {
        self.calls.lock().unwrap().push(request.clone());
        let script = request.argv.last().cloned().unwrap_or_default();
        let mut tail = Vec::new();
        for cmd in script.split(';').map(str::trim).filter(|c| !c.is_empty()) {
            let mut words = cmd.splitn(3, ' ');
            let op = words.next().unwrap();
            let a = words.next().unwrap_or("");
            let b = words.next().unwrap_or("");
            let root = &request.rootfs;
            match op {
                "write" => {
                    let mut text = b.to_string();
                    for (k, v) in &request.env {
                        text = text.replace(&format!("${k}"), v);
                    }
                    std::fs::write(in_root(root, a), text).unwrap();
                }
                "rm" => std::fs::remove_file(in_root(root, a)).unwrap(),
                "rmdir" => std::fs::remove_dir_all(in_root(root, a)).unwrap(),
                "mkdir" => std::fs::create_dir_all(in_root(root, a)).unwrap(),
                "echo" => {
                    let line = format!("{a} {b}").trim().to_string();
                    on_line(&line);
                    tail.push(line);
                }
                "expose-mounts" => {
                    for m in &request.mounts {
                        if let RunMount::Bind { source, target, .. } = m
                            && source.is_file()
                        {
                            std::fs::copy(source, in_root(root, target.to_str().unwrap())).unwrap();
                        }
                    }
                }
                "touch-mount" => {
                    for m in &request.mounts {
                        if let RunMount::Bind { source, target, .. } = m
                            && target == Path::new(a)
                        {
                            assert!(source.join("conf.txt").is_file(), "a copy of the context");
                            std::fs::write(source.join("touched"), "x").unwrap();
                        }
                    }
                }
                "fail" => {
                    return Ok(RunOutcome {
                        exit_code: a.parse().unwrap(),
                        tail,
                        duration: Duration::from_millis(1),
                    });
                }
                other => panic!("fake runner: unknown op {other}"),
            }
        }
        Ok(RunOutcome {
            exit_code: 0,
            tail,
            duration: Duration::from_millis(1),
        })
    }
}

struct Build {
    outcome: StageOutcome,
    root: tempfile::TempDir,
    events: Vec<String>,
}

fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        // Fixed source mtimes: COPY keeps them, and determinism across contexts needs them.
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
    }
    dir
}

fn build_with(
    dockerfile: &str,
    ctx: &Path,
    store: &ContentStore,
    runner: &FakeRunner,
    options: ExecutorOptions,
    secrets: &[(&str, &Path)],
) -> Build {
    let df = Dockerfile::parse(dockerfile).unwrap();
    let root = tempfile::tempdir().unwrap();
    let context = BuildContext::open(ctx).unwrap();
    let mut ex = StageExecutor::new(store, root.path(), &context, runner, options).unwrap();
    for (id, path) in secrets {
        ex = ex.with_secret(id, path);
    }
    let spec = StageSpec {
        label: "stage-0".into(),
        instructions: &df.stages[0].instructions,
        escape: df.escape,
        args: ArgSource::default(),
        base: BaseImage::default(),
    };
    let mut events = Vec::new();
    let outcome = ex.run(&spec, &mut |e: &ProgressEvent<'_>| {
        events.push(e.to_string())
    });
    Build {
        outcome,
        root,
        events,
    }
}

fn build(
    dockerfile: &str,
    ctx: &Path,
    store: &ContentStore,
    runner: &FakeRunner,
    no_cache: bool,
) -> Build {
    let options = ExecutorOptions {
        no_cache,
        ..ExecutorOptions::default()
    };
    build_with(dockerfile, ctx, store, runner, options, &[])
}

/// Applies every layer of a result onto a fresh directory.
fn unpack(store: &ContentStore, result: &StageResult) -> (tempfile::TempDir, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut whiteouts = 0;
    for l in &result.layers {
        let stats = apply_layer_blob(
            store,
            &l.digest,
            Some(&l.diff_id),
            dir.path(),
            &ApplyOptions::default(),
        )
        .unwrap();
        whiteouts += stats.whiteouts;
    }
    (dir, whiteouts)
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Paths, types, modes, owners, contents (short text, else size and checksum) and link
/// targets below a root.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let what = if m.is_dir() {
                walk(root, &p, out);
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else {
                let bytes = std::fs::read(&p).unwrap();
                match String::from_utf8(bytes) {
                    Ok(text) if text.len() <= 256 => format!("file {text}"),
                    Ok(text) => format!("file {} bytes {}", text.len(), checksum(text.as_bytes())),
                    Err(e) => format!(
                        "file {} bytes {}",
                        e.as_bytes().len(),
                        checksum(e.as_bytes())
                    ),
                }
            };
            out.insert(
                rel,
                format!(
                    "{what} {:o} {}:{}",
                    m.permissions().mode() & 0o7777,
                    m.uid(),
                    m.gid()
                ),
            );
        }
    }
    walk(root, root, &mut out);
    out
}

fn config(store: &ContentStore, result: &StageResult) -> ImageConfig {
    let digest = result.config_digest.clone().unwrap();
    ImageConfig::from_json(&store.read_to_vec(&digest, 1 << 20).unwrap()).unwrap()
}

/// Everything in the store is a finished blob or key: no temporary names left behind.
fn assert_no_temp_files(store: &ContentStore) {
    for sub in ["blobs/sha256", "keys"] {
        let dir = store.root().join(sub);
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in read {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(
                name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()),
                "unexpected file {sub}/{name}"
            );
        }
    }
}

const DOCKERFILE: &str = "FROM scratch
COPY app/ /app/
ENV GREETING=hello
WORKDIR /work
RUN write /work/out.txt $GREETING; rm /app/remove.txt; mkdir /work/d; echo ran
COPY conf.txt /etc/conf.txt
RUN rmdir /work/d; write /etc/conf.txt changed
LABEL a=b
";

fn app_context(conf: &str) -> tempfile::TempDir {
    context(&[
        ("app/main.sh", "echo main"),
        ("app/remove.txt", "bye"),
        ("app/sub/data", "data"),
        ("conf.txt", conf),
    ])
}

#[test]
fn a_stage_produces_layers_that_rebuild_its_root() {
    let ctx = app_context("v1");
    let store_dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(store_dir.path()).unwrap();
    let runner = FakeRunner::default();
    let b = build(DOCKERFILE, ctx.path(), &store, &runner, false);
    assert!(b.outcome.error.is_none(), "{:?}", b.outcome.error);
    let r = &b.outcome.result;
    assert_eq!(r.outcome, Outcome::Succeeded);
    assert_eq!(b.outcome.exit_code(), ExitCode::Ok);
    // COPY, WORKDIR, RUN, COPY, RUN each make a layer; ENV and LABEL do not.
    assert_eq!(r.layers.len(), 5);
    assert_eq!(r.cache_hits, 0);
    assert_eq!(r.steps.len(), 7);

    let (unpacked, whiteouts) = unpack(&store, r);
    assert_eq!(tree(unpacked.path()), tree(b.root.path()));
    let t = tree(unpacked.path());
    assert!(t["work/out.txt"].starts_with("file hello "), "{t:?}");
    assert!(t["etc/conf.txt"].starts_with("file changed "));
    assert!(!t.contains_key("app/remove.txt"));
    assert!(!t.contains_key("work/d"));
    assert!(t.contains_key("app/sub/data"));
    assert!(
        whiteouts >= 2,
        "remove.txt and work/d are whiteouts: {whiteouts}"
    );

    // What the executor handed the runner.
    let calls = runner.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0].argv,
        [
            "/bin/sh",
            "-c",
            "write /work/out.txt $GREETING; rm /app/remove.txt; mkdir /work/d; echo ran"
        ]
    );
    assert!(calls[0].env.contains(&("GREETING".into(), "hello".into())));
    assert!(calls[0].env.iter().any(|(k, _)| k == "PATH"));
    assert_eq!(calls[0].cwd, Path::new("/work"));
    assert_eq!((calls[0].user.uid, calls[0].user.gid), (0, 0));
    assert_eq!(calls[0].rootfs, b.root.path());

    // The config: history in order, empty layers marked, diffIDs matching layers.
    let c = config(&store, r);
    let created: Vec<_> = c
        .history
        .iter()
        .map(|h| (h.created_by.clone().unwrap(), h.empty_layer))
        .collect();
    assert_eq!(created.len(), 7);
    assert_eq!(created[1], ("ENV GREETING=hello".to_string(), true));
    assert_eq!(created[2], ("WORKDIR /work".to_string(), false));
    assert_eq!(created[6], ("LABEL a=b".to_string(), true));
    assert_eq!(c.rootfs.diff_ids.len(), 5);
    for (d, l) in c.rootfs.diff_ids.iter().zip(&r.layers) {
        assert_eq!(*d, l.diff_id);
    }
    let cc = c.config.unwrap();
    assert_eq!(cc.working_dir.as_deref(), Some("/work"));
    assert!(cc.env.contains(&"GREETING=hello".to_string()));

    // Progress lines.
    assert!(
        b.events
            .iter()
            .any(|e| e.starts_with("[stage-0 3/7] WORKDIR /work"))
    );
    assert!(b.events.iter().any(|e| e == "#4 ran"), "{:?}", b.events);
    assert_no_temp_files(&store);
}

#[test]
fn a_second_build_hits_the_cache_and_a_changed_file_reruns_from_its_copy() {
    let ctx = app_context("v1");
    let store_dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(store_dir.path()).unwrap();
    let runner = FakeRunner::default();
    let first = build(DOCKERFILE, ctx.path(), &store, &runner, false);
    assert!(first.outcome.error.is_none());

    let again = FakeRunner::default();
    let second = build(DOCKERFILE, ctx.path(), &store, &again, false);
    assert!(second.outcome.error.is_none(), "{:?}", second.outcome.error);
    assert_eq!(again.calls().len(), 0, "nothing ran");
    assert_eq!(second.outcome.result.cache_hits, 5);
    assert_eq!(second.outcome.result.layers, first.outcome.result.layers);
    assert_eq!(
        second.outcome.result.config_digest,
        first.outcome.result.config_digest
    );
    assert_eq!(tree(second.root.path()), tree(first.root.path()));
    assert!(second.events.iter().any(|e| e == "#4 CACHED"));

    // conf.txt changes: COPY conf.txt and the RUN after it run again, nothing before.
    std::fs::write(ctx.path().join("conf.txt"), "v2").unwrap();
    let third_runner = FakeRunner::default();
    let third = build(DOCKERFILE, ctx.path(), &store, &third_runner, false);
    assert!(third.outcome.error.is_none());
    let cached: Vec<_> = third
        .outcome
        .result
        .steps
        .iter()
        .map(|s| (s.keyword.as_str(), s.cached))
        .collect();
    assert_eq!(
        cached,
        [
            ("COPY", true),
            ("ENV", false),
            ("WORKDIR", true),
            ("RUN", true),
            ("COPY", false),
            ("RUN", false),
            ("LABEL", false)
        ]
    );
    assert_eq!(third_runner.calls().len(), 1);
    let (a, b) = (&first.outcome.result.layers, &third.outcome.result.layers);
    assert_eq!(a[..3], b[..3]);
    assert_ne!(a[3], b[3]);
    let (unpacked, _) = unpack(&store, &third.outcome.result);
    assert_eq!(tree(unpacked.path()), tree(third.root.path()));
    assert_no_temp_files(&store);
}

#[test]
fn no_cache_twice_gives_identical_digests() {
    let ctx = app_context("v1");
    let store_dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(store_dir.path()).unwrap();
    let runner = FakeRunner::default();
    let a = build(DOCKERFILE, ctx.path(), &store, &runner, true);
    // Let the clock move so any leaked timestamp would show.
    std::thread::sleep(Duration::from_millis(1100));
    let b = build(DOCKERFILE, ctx.path(), &store, &runner, true);
    assert!(a.outcome.error.is_none() && b.outcome.error.is_none());
    assert_eq!(runner.calls().len(), 4, "both builds ran everything");
    assert_eq!(b.outcome.result.cache_hits, 0);
    assert_eq!(a.outcome.result.layers, b.outcome.result.layers);
    assert_eq!(
        a.outcome.result.config_digest,
        b.outcome.result.config_digest
    );
}

#[test]
fn a_failing_run_stops_the_stage_with_its_code_and_tail() {
    let ctx = app_context("v1");
    let store_dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(store_dir.path()).unwrap();
    let runner = FakeRunner::default();
    let b = build(
        "FROM scratch\nCOPY conf.txt /c\nRUN echo compiling; echo boom; fail 7\nRUN echo never\n",
        ctx.path(),
        &store,
        &runner,
        false,
    );
    let r = &b.outcome.result;
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(r.reason.map(|r| r.as_str()), Some("RunFailed"));
    assert_eq!(r.exit_code, 1);
    assert_eq!(b.outcome.exit_code(), ExitCode::InstructionFailed);
    let f = r.failed_step.as_ref().unwrap();
    assert_eq!(f.line, 3);
    assert_eq!(f.exit_code, Some(7));
    assert_eq!(f.tail, ["compiling", "boom"]);
    assert!(f.instruction.starts_with("RUN echo compiling"));
    match b.outcome.error.as_ref().unwrap() {
        ExecutorError::RunFailed {
            line,
            exit_code,
            tail,
            ..
        } => {
            assert_eq!((*line, *exit_code), (3, 7));
            assert_eq!(tail.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(runner.calls().len(), 1, "the stage stopped");
    assert_eq!(r.layers.len(), 1, "the COPY's layer only");
    assert!(r.config_digest.is_none());
    assert_no_temp_files(&store);
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["failedStep"]["exitCode"], 7);
    assert!(r.to_json_within(4096).len() <= 4096);
}

#[test]
fn metadata_only_instructions_add_history_without_layers() {
    let ctx = context(&[]);
    let store_dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(store_dir.path()).unwrap();
    let runner = FakeRunner::default();
    let b = build(
        "FROM scratch\nENV A=1\nLABEL x=y\nCMD [\"/app\"]\nEXPOSE 80\nWORKDIR /\nUSER 1000\n",
        ctx.path(),
        &store,
        &runner,
        false,
    );
    let r = &b.outcome.result;
    assert!(b.outcome.error.is_none(), "{:?}", b.outcome.error);
    assert!(r.layers.is_empty());
    let c = config(&store, r);
    assert_eq!(c.history.len(), 6);
    assert!(c.history.iter().all(|h| h.empty_layer));
    assert!(c.rootfs.diff_ids.is_empty());
    let cc = c.config.unwrap();
    assert_eq!(cc.cmd, Some(vec!["/app".to_string()]));
    assert_eq!(cc.user.as_deref(), Some("1000"));
    assert!(cc.exposed_ports.contains("80/tcp"));
}

#[test]
fn a_secret_is_mounted_for_one_run_and_never_lands_in_a_layer() {
    let ctx = context(&[]);
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("token");
    std::fs::write(&secret, "s3cr3t-value").unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(store_dir.path()).unwrap();
    let runner = FakeRunner::default();
    let options = ExecutorOptions {
        compression: Compression::None,
        ..ExecutorOptions::default()
    };
    let b = build_with(
        "FROM scratch\nRUN --mount=type=secret,id=tok --mount=type=cache,target=/cache \
         expose-mounts; write /out done\n",
        ctx.path(),
        &store,
        &runner,
        options,
        &[("tok", &secret)],
    );
    assert!(b.outcome.error.is_none(), "{:?}", b.outcome.error);
    let calls = runner.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].mounts[0],
        RunMount::Bind {
            source: secret.clone(),
            target: PathBuf::from("/run/secrets/tok"),
            readonly: true
        }
    );
    match &calls[0].mounts[1] {
        RunMount::Bind { source, target, .. } => {
            assert_eq!(target, Path::new("/cache"));
            assert!(source.starts_with(store_dir.path().join("mounts")));
        }
        other => panic!("{other:?}"),
    }
    // The stubs are gone from the root, and no layer carries the secret or the mounts.
    assert!(!b.root.path().join("run").exists());
    assert!(!b.root.path().join("cache").exists());
    let (unpacked, _) = unpack(&store, &b.outcome.result);
    let t = tree(unpacked.path());
    assert_eq!(t.keys().collect::<Vec<_>>(), ["out"]);
    for l in &b.outcome.result.layers {
        let blob = std::fs::read(store.blob_path(&l.digest)).unwrap();
        assert!(!blob.windows(12).any(|w| w == b"s3cr3t-value"));
    }
    // A required secret that is missing is bad input.
    let missing = build(
        "FROM scratch\nRUN --mount=type=secret,id=nope,required=true echo x\n",
        ctx.path(),
        &store,
        &runner,
        false,
    );
    assert_eq!(missing.outcome.exit_code(), ExitCode::BadInput);
    assert_eq!(
        missing.outcome.result.reason.map(|r| r.as_str()),
        Some("MissingInput")
    );
}

#[test]
fn copy_from_a_stage_and_bind_mount_inputs_are_part_of_the_keys() {
    let ctx = context(&[("conf.txt", "v1")]);
    let stage0 = context(&[("out/bin", "binary-v1")]);
    let store_dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(store_dir.path()).unwrap();
    let df = Dockerfile::parse(
        "FROM scratch AS build\nFROM scratch\nCOPY --from=build /out/bin /app/bin\n\
         RUN --mount=type=bind,source=conf.txt,target=/mnt/conf write /seen yes\n",
    )
    .unwrap();
    let run = |runner: &FakeRunner| {
        let root = tempfile::tempdir().unwrap();
        let context = BuildContext::open(ctx.path()).unwrap();
        let ex = StageExecutor::new(
            &store,
            root.path(),
            &context,
            runner,
            ExecutorOptions::default(),
        )
        .unwrap()
        .with_stage(
            0,
            stagecoach_builder::executor::StageSource {
                name: Some("build".into()),
                root: stage0.path().to_owned(),
            },
        );
        let spec = StageSpec {
            label: "1".into(),
            instructions: &df.stages[1].instructions,
            escape: df.escape,
            args: ArgSource::default(),
            base: BaseImage::default(),
        };
        let outcome = ex.run(&spec, &mut |_: &ProgressEvent<'_>| {});
        (outcome, root)
    };
    let first_runner = FakeRunner::default();
    let (first, root) = run(&first_runner);
    assert!(first.error.is_none(), "{:?}", first.error);
    let calls = first_runner.calls();
    assert_eq!(
        calls[0].mounts,
        [RunMount::Bind {
            source: ctx.path().join("conf.txt"),
            target: PathBuf::from("/mnt/conf"),
            readonly: true
        }]
    );
    let t = tree(root.path());
    assert_eq!(
        t.keys().collect::<Vec<_>>(),
        ["app", "app/bin", "seen"],
        "the mount stub and its parent are gone"
    );
    assert!(t["app/bin"].starts_with("file binary-v1 "));

    // The bound file changes: the COPY still hits, the RUN runs again.
    std::fs::write(ctx.path().join("conf.txt"), "v2").unwrap();
    let second_runner = FakeRunner::default();
    let (second, _root) = run(&second_runner);
    let cached: Vec<_> = second.result.steps.iter().map(|s| s.cached).collect();
    assert_eq!(cached, [true, false]);
    assert_eq!(second_runner.calls().len(), 1);

    // The stage's file changes: both run again.
    std::fs::write(stage0.path().join("out/bin"), "binary-v2").unwrap();
    let third_runner = FakeRunner::default();
    let (third, _root) = run(&third_runner);
    let cached: Vec<_> = third.result.steps.iter().map(|s| s.cached).collect();
    assert_eq!(cached, [false, false]);

    // An unknown stage is bad input.
    let df2 = Dockerfile::parse("FROM scratch\nCOPY --from=nope /x /x\n").unwrap();
    let root = tempfile::tempdir().unwrap();
    let context = BuildContext::open(ctx.path()).unwrap();
    let runner = FakeRunner::default();
    let ex = StageExecutor::new(
        &store,
        root.path(),
        &context,
        &runner,
        ExecutorOptions::default(),
    )
    .unwrap();
    let spec = StageSpec {
        label: "0".into(),
        instructions: &df2.stages[0].instructions,
        escape: df2.escape,
        args: ArgSource::default(),
        base: BaseImage::default(),
    };
    let outcome = ex.run(&spec, &mut |_: &ProgressEvent<'_>| {});
    assert_eq!(outcome.exit_code(), ExitCode::BadInput);
}

#[test]
fn a_base_image_starts_the_chain_and_its_onbuild_triggers_run_first() {
    let ctx = context(&[]);
    let store_dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(store_dir.path()).unwrap();
    let base = ImageConfig::from_json(
        br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
            "config":{"Env":["FROM_BASE=1"],"OnBuild":["ENV TRIGGERED=yes"]},
            "history":[{"created_by":"base"}]}"#,
    )
    .unwrap();
    let df = Dockerfile::parse("FROM base\nWORKDIR /w\nWORKDIR /w\nRUN write /w/x $TRIGGERED\n")
        .unwrap();
    let runner = FakeRunner::default();
    let root = tempfile::tempdir().unwrap();
    let context = BuildContext::open(ctx.path()).unwrap();
    let ex = StageExecutor::new(
        &store,
        root.path(),
        &context,
        &runner,
        ExecutorOptions::default(),
    )
    .unwrap();
    let spec = StageSpec {
        label: "0".into(),
        instructions: &df.stages[0].instructions,
        escape: df.escape,
        args: ArgSource::default(),
        base: BaseImage {
            config: Some(base),
            layers: Vec::new(),
        },
    };
    let outcome = ex.run(&spec, &mut |_: &ProgressEvent<'_>| {});
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let c = config(&store, &outcome.result);
    assert_eq!(c.architecture, "arm64", "the base config is kept");
    let history: Vec<_> = c
        .history
        .iter()
        .map(|h| (h.created_by.clone().unwrap(), h.empty_layer))
        .collect();
    assert_eq!(
        history,
        [
            ("base".to_string(), false),
            ("ENV TRIGGERED=yes".to_string(), true),
            ("WORKDIR /w".to_string(), false),
            ("WORKDIR /w".to_string(), true),
            (
                "RUN /bin/sh -c write /w/x $TRIGGERED # buildkit".to_string(),
                false
            ),
        ],
        "the second WORKDIR created nothing, so it has no layer"
    );
    let cc = c.config.unwrap();
    assert!(cc.on_build.is_empty());
    assert!(cc.env.contains(&"FROM_BASE=1".to_string()));
    assert_eq!(outcome.result.layers.len(), 2);
    assert_eq!(
        std::fs::read_to_string(root.path().join("w/x")).unwrap(),
        "yes"
    );
}

#[test]
fn a_read_write_bind_mount_gets_a_throw_away_copy() {
    let ctx = context(&[("conf.txt", "v1")]);
    let store_dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(store_dir.path()).unwrap();
    let runner = FakeRunner::default();
    let b = build(
        "FROM scratch\nRUN --mount=type=bind,rw,target=/src touch-mount /src; write /done y\n",
        ctx.path(),
        &store,
        &runner,
        false,
    );
    assert!(b.outcome.error.is_none(), "{:?}", b.outcome.error);
    let calls = runner.calls();
    match &calls[0].mounts[0] {
        RunMount::Bind {
            source, readonly, ..
        } => {
            assert!(!readonly);
            assert!(source.starts_with(store_dir.path().join("tmp")));
            assert!(!source.exists(), "the copy is removed after the run");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !ctx.path().join("touched").exists(),
        "the context is untouched"
    );
    assert_eq!(
        tree(b.root.path()).keys().collect::<Vec<_>>(),
        ["done"],
        "the mount point is gone"
    );
}

#[test]
fn a_long_result_fits_a_termination_message() {
    let result = StageResult {
        outcome: Outcome::Failed,
        reason: Some(stagecoach_builder::executor::StageReason::RunFailed),
        message: Some("m".repeat(3000)),
        failed_step: Some(stagecoach_builder::executor::FailedStep {
            instruction: "RUN x".into(),
            line: 2,
            exit_code: Some(1),
            tail: vec!["l".repeat(200); 20],
        }),
        exit_code: 1,
        layers: Vec::new(),
        config_digest: None,
        config_size: None,
        cache_hits: 0,
        steps: Vec::new(),
        duration_ms: 1,
    };
    let json = result.to_json_within(4096);
    assert!(json.len() <= 4096);
    let back: StageResult = serde_json::from_slice(&json).unwrap();
    assert_eq!(back.reason.map(|r| r.as_str()), Some("RunFailed"));
    assert_eq!(back.failed_step.unwrap().exit_code, Some(1));
}

// ---- RUN under the real runc (skipped with a message without root, runc or busybox) ----

mod real_runc {
    use super::*;
    use stagecoach_builder::runc::RuncRunner;

    use super::common::{available as available_for, install_busybox};

    fn available(test: &str) -> bool {
        available_for(test, "runc containers")
    }

    /// A busybox root: /bin/busybox plus relative applet links, /tmp and /etc.
    fn busybox_root(root: &Path) {
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        install_busybox(root);
    }

    #[test]
    fn run_steps_under_runc_make_minimal_layers_and_fail_with_the_exit_code() {
        if !available("run_steps_under_runc_make_minimal_layers_and_fail_with_the_exit_code") {
            return;
        }
        let work = tempfile::tempdir().unwrap();
        let root = work.path().join("rootfs");
        busybox_root(&root);
        let initial = tempfile::tempdir().unwrap();
        busybox_root(initial.path());
        std::fs::create_dir(work.path().join("state")).unwrap();
        std::fs::create_dir(work.path().join("bundles")).unwrap();
        let runner = RuncRunner::new()
            .with_state_root(work.path().join("state"))
            .with_bundle_parent(work.path().join("bundles"));
        let ctx = context(&[]);
        let secret = work.path().join("secret");
        std::fs::write(&secret, "s3cr3t-value").unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(store_dir.path()).unwrap();
        let context = BuildContext::open(ctx.path()).unwrap();
        let ex = StageExecutor::new(&store, &root, &context, &runner, ExecutorOptions::default())
            .unwrap()
            .with_secret("tok", &secret);
        let df = Dockerfile::parse(
            "FROM scratch\n\
             ENV WHO=runc\n\
             RUN echo \"hello $WHO\" > /greeting && rm /bin/ls && mkdir -p /data\n\
             RUN --mount=type=secret,id=tok grep -q s3cr3t /run/secrets/tok && echo ok > /data/ok\n\
             RUN echo about to fail; exit 3\n",
        )
        .unwrap();
        let spec = StageSpec {
            label: "runc".into(),
            instructions: &df.stages[0].instructions,
            escape: df.escape,
            args: ArgSource::default(),
            base: BaseImage::default(),
        };
        let mut events = Vec::new();
        let outcome = ex.run(&spec, &mut |e: &ProgressEvent<'_>| {
            events.push(e.to_string())
        });
        let r = &outcome.result;
        assert_eq!(
            r.reason.map(|r| r.as_str()),
            Some("RunFailed"),
            "{:?}",
            outcome.error
        );
        let f = r.failed_step.as_ref().unwrap();
        assert_eq!((f.line, f.exit_code), (5, Some(3)));
        assert!(f.tail.iter().any(|l| l == "about to fail"), "{:?}", f.tail);
        assert_eq!(r.layers.len(), 2);

        // Each layer holds only what its RUN changed: no runc mount points, no secret.
        let one = tempfile::tempdir().unwrap();
        apply_layer_blob(
            &store,
            &r.layers[0].digest,
            None,
            one.path(),
            &ApplyOptions::default(),
        )
        .unwrap();
        let t = tree(one.path());
        let mut top: Vec<_> = t.keys().filter(|k| !k.contains('/')).cloned().collect();
        top.sort();
        assert_eq!(top, ["bin", "data", "greeting"], "{t:?}");
        assert!(t["greeting"].starts_with("file hello runc\n"));
        let two = tempfile::tempdir().unwrap();
        apply_layer_blob(
            &store,
            &r.layers[1].digest,
            None,
            two.path(),
            &ApplyOptions::default(),
        )
        .unwrap();
        let t2 = tree(two.path());
        assert_eq!(t2.keys().collect::<Vec<_>>(), ["data", "data/ok"], "{t2:?}");

        // The layers over the initial root give the root as the build left it.
        for l in &r.layers {
            apply_layer_blob(
                &store,
                &l.digest,
                None,
                initial.path(),
                &ApplyOptions::default(),
            )
            .unwrap();
        }
        assert_eq!(tree(initial.path()), tree(&root));
        assert!(!root.join("bin/ls").exists());
        assert!(!root.join("run").exists());
        assert_no_temp_files(&store);
    }
}
