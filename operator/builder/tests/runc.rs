#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `RuncRunner` against the real runc (Debian's `runc`) over a busybox root filesystem
//! (Debian's `busybox-static`), as root. Every test checks that the run left nothing behind:
//! no container in its own runc state root, no mount under its directories, no bundle, and
//! no file in the root filesystem that the process did not write. Without root, runc or
//! busybox the tests print why and pass.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use stagecoach_builder::runc::{DEFAULT_RUNC, RuncRunner};
use stagecoach_builder::runner::{
    RunMount, RunNetwork, RunOutcome, RunRequest, Runner, RunnerError,
};
use stagecoach_builder::users::ProcessUser;

const BUSYBOX_CANDIDATES: [&str; 2] = ["/bin/busybox", "/usr/bin/busybox"];

fn busybox() -> Option<PathBuf> {
    BUSYBOX_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

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

/// Whether the real-part tests can run here; prints why not.
fn available(test: &str) -> bool {
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

/// A busybox root filesystem, a runc state root and a bundle parent, all private to one test.
struct Fixture {
    dir: tempfile::TempDir,
    runner: RuncRunner,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("tmp")).unwrap();
        let busybox = busybox().unwrap();
        fs::copy(&busybox, root.join("bin/busybox")).unwrap();
        // Relative links: `busybox --install -s` would point at the host's own busybox path.
        let list = Command::new(&busybox).arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if !applet.is_empty() && applet != "busybox" {
                symlink("busybox", root.join("bin").join(applet)).unwrap();
            }
        }
        fs::create_dir(dir.path().join("state")).unwrap();
        fs::create_dir(dir.path().join("bundles")).unwrap();
        let runner = RuncRunner::new()
            .with_state_root(dir.path().join("state"))
            .with_bundle_parent(dir.path().join("bundles"));
        Self { dir, runner }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn request(&self, script: &str) -> RunRequest {
        RunRequest {
            rootfs: self.root(),
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), "/bin".into())],
            cwd: PathBuf::from("/"),
            user: ProcessUser::default(),
            mounts: vec![],
            network: RunNetwork::Host,
            hostname: "stagecoach-test".into(),
            timeout: Some(Duration::from_secs(60)),
            tail_lines: 10,
        }
    }

    /// Runs and checks that nothing is left behind; returns the result and every line.
    fn run(&self, request: &RunRequest) -> (Result<RunOutcome, RunnerError>, Vec<String>) {
        let mut lines = Vec::new();
        let result = self
            .runner
            .run(request, &mut |line: &str| lines.push(line.to_string()));
        self.assert_nothing_left();
        (result, lines)
    }

    fn assert_nothing_left(&self) {
        let list = Command::new(DEFAULT_RUNC)
            .arg("--root")
            .arg(self.dir.path().join("state"))
            .args(["list", "-q"])
            .output()
            .unwrap();
        assert!(list.status.success());
        assert_eq!(
            String::from_utf8_lossy(&list.stdout).trim(),
            "",
            "containers left"
        );
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let ours = self.dir.path().to_str().unwrap();
        for line in mountinfo.lines() {
            let mount_point = line.split(' ').nth(4).unwrap_or_default();
            assert!(!mount_point.starts_with(ours), "still mounted: {line}");
        }
        let bundles: Vec<_> = fs::read_dir(self.dir.path().join("bundles"))
            .unwrap()
            .collect();
        assert!(bundles.is_empty(), "bundle left: {bundles:?}");
    }
}

/// Every path in the tree, relative, without following symlinks.
fn tree(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            out.insert(
                path.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

fn with(before: &BTreeSet<String>, added: &[&str]) -> BTreeSet<String> {
    let mut out = before.clone();
    out.extend(added.iter().map(|s| s.to_string()));
    out
}

#[test]
fn echo_streams_lines_and_exits_zero() {
    if !available("echo_streams_lines_and_exits_zero") {
        return;
    }
    let f = Fixture::new();
    let before = tree(&f.root());
    let (result, lines) = f.run(&f.request("echo hello; echo world >&2"));
    let mut outcome = result.unwrap();
    assert_eq!(outcome.exit_code, 0);
    // runc relays stdout and stderr through separate pipes, so their relative order is not
    // kept (as with BuildKit); each stream's own order is.
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["hello", "world"]);
    outcome.tail.sort();
    assert_eq!(outcome.tail, vec!["hello", "world"]);
    // No /proc, /dev, /sys, /etc/hosts or /etc/resolv.conf left in the root.
    assert_eq!(tree(&f.root()), before);
}

#[test]
fn runc_default_state_root_is_left_empty_of_our_containers() {
    if !available("runc_default_state_root_is_left_empty_of_our_containers") {
        return;
    }
    let f = Fixture::new();
    // The only test using runc's default state root (/run/runc), as `stagecoach build` does.
    let runner = RuncRunner::new().with_bundle_parent(f.dir.path().join("bundles"));
    let mut lines = Vec::new();
    let outcome = runner
        .run(&f.request("echo hi"), &mut |l: &str| {
            lines.push(l.to_string())
        })
        .unwrap();
    assert_eq!((outcome.exit_code, lines), (0, vec!["hi".to_string()]));
    f.assert_nothing_left();
    let list = Command::new(DEFAULT_RUNC)
        .args(["list", "-q"])
        .output()
        .unwrap();
    assert!(list.status.success());
    let ours = format!("stagecoach-{}-", std::process::id());
    let left: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|id| id.starts_with(&ours))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "containers left: {left:?}");
}

#[test]
fn non_zero_exit_code_and_tail() {
    if !available("non_zero_exit_code_and_tail") {
        return;
    }
    let f = Fixture::new();
    let mut request = f.request("for i in 1 2 3 4 5; do echo line$i; done; exit 3");
    request.tail_lines = 2;
    let (result, lines) = f.run(&request);
    let outcome = result.unwrap();
    assert_eq!(outcome.exit_code, 3);
    assert_eq!(outcome.tail, vec!["line4", "line5"]);
    assert_eq!(lines.len(), 5);
}

#[test]
fn writes_land_in_the_root_filesystem() {
    if !available("writes_land_in_the_root_filesystem") {
        return;
    }
    let f = Fixture::new();
    let before = tree(&f.root());
    let (result, _) = f.run(&f.request("echo data > /tmp/out.txt && mkdir -p /opt/app"));
    assert_eq!(result.unwrap().exit_code, 0);
    assert_eq!(
        fs::read_to_string(f.root().join("tmp/out.txt")).unwrap(),
        "data\n"
    );
    assert_eq!(
        tree(&f.root()),
        with(&before, &["tmp/out.txt", "opt", "opt/app"])
    );
}

#[test]
fn a_directory_the_process_filled_stays_without_placeholders() {
    if !available("a_directory_the_process_filled_stays_without_placeholders") {
        return;
    }
    let f = Fixture::new();
    let before = tree(&f.root());
    // /etc did not exist: the run created it for /etc/hosts, the process wrote into it.
    let (result, _) = f.run(&f.request("echo 'root:x:0:0::/:/bin/sh' > /etc/passwd"));
    assert_eq!(result.unwrap().exit_code, 0);
    assert_eq!(tree(&f.root()), with(&before, &["etc", "etc/passwd"]));
}

#[test]
fn env_cwd_and_user() {
    if !available("env_cwd_and_user") {
        return;
    }
    let f = Fixture::new();
    fs::create_dir(f.root().join("work")).unwrap();
    let mut request = f.request("echo \"$FOO\"; pwd; id -u; id -g; id -G; hostname");
    request.env.push(("FOO".into(), "first".into()));
    request.env.push(("FOO".into(), "bar baz".into()));
    request.cwd = PathBuf::from("/work");
    request.user = ProcessUser {
        uid: 1000,
        gid: 1000,
        additional_gids: vec![2000],
    };
    let (result, lines) = f.run(&request);
    assert_eq!(result.unwrap().exit_code, 0, "{lines:?}");
    assert_eq!(
        lines,
        vec![
            "bar baz",
            "/work",
            "1000",
            "1000",
            "1000 2000",
            "stagecoach-test"
        ]
    );
}

#[test]
fn root_gets_the_default_capabilities() {
    if !available("root_gets_the_default_capabilities") {
        return;
    }
    let f = Fixture::new();
    let (result, lines) = f.run(&f.request(
        "grep -E '^Cap(Eff|Bnd)|^NoNewPrivs' /proc/self/status; chown 1:1 /tmp && echo CHOWN_OK",
    ));
    assert_eq!(result.unwrap().exit_code, 0, "{lines:?}");
    // The 14 default capabilities: bits 0-8, 10, 13, 18, 27, 29, 31.
    assert!(
        lines.contains(&"CapEff:\t00000000a80425fb".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"CapBnd:\t00000000a80425fb".to_string()),
        "{lines:?}"
    );
    assert!(lines.contains(&"NoNewPrivs:\t1".to_string()), "{lines:?}");
    assert!(lines.contains(&"CHOWN_OK".to_string()));
}

#[test]
fn network_none_has_only_loopback_and_host_network_has_the_hosts() {
    if !available("network_none_has_only_loopback_and_host_network_has_the_hosts") {
        return;
    }
    fn interfaces<'a>(lines: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
        lines
            .into_iter()
            .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_string()))
            .filter(|name| !name.contains('|') && !name.is_empty())
            .collect()
    }
    let f = Fixture::new();
    let mut request = f.request("cat /proc/net/dev; ip link show lo");
    request.network = RunNetwork::None;
    let (result, lines) = f.run(&request);
    assert_eq!(result.unwrap().exit_code, 0, "{lines:?}");
    let net_dev: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .take_while(|l| !l.starts_with("1:"))
        .collect();
    assert_eq!(interfaces(net_dev), BTreeSet::from(["lo".to_string()]));
    assert!(
        lines.iter().any(|l| l.contains("lo:") && l.contains("UP")),
        "{lines:?}"
    );

    let (result, lines) = f.run(&f.request("cat /proc/net/dev"));
    assert_eq!(result.unwrap().exit_code, 0);
    let host = fs::read_to_string("/proc/net/dev").unwrap();
    assert_eq!(
        interfaces(lines.iter().map(String::as_str)),
        interfaces(host.lines())
    );
}

#[test]
fn bind_mounts_readonly_and_readwrite() {
    if !available("bind_mounts_readonly_and_readwrite") {
        return;
    }
    let f = Fixture::new();
    let ro = f.dir.path().join("ro-src");
    let rw = f.dir.path().join("rw-src");
    fs::create_dir(&ro).unwrap();
    fs::create_dir(&rw).unwrap();
    fs::write(ro.join("in.txt"), "from host\n").unwrap();
    let secret = f.dir.path().join("secret-src");
    fs::write(&secret, "s3cret\n").unwrap();
    let before = tree(&f.root());
    let mut request = f.request(
        "cat /mnt/ro/in.txt; (echo x > /mnt/ro/new) 2>/dev/null && echo WROTE || echo REFUSED; \
         echo out > /mnt/rw/out.txt; cat /run/secrets/token",
    );
    request.mounts = vec![
        RunMount::Bind {
            source: ro.clone(),
            target: PathBuf::from("/mnt/ro"),
            readonly: true,
        },
        RunMount::Bind {
            source: rw.clone(),
            target: PathBuf::from("/mnt/rw"),
            readonly: false,
        },
        RunMount::Bind {
            source: secret,
            target: PathBuf::from("/run/secrets/token"),
            readonly: true,
        },
    ];
    let (result, lines) = f.run(&request);
    assert_eq!(result.unwrap().exit_code, 0, "{lines:?}");
    assert_eq!(lines, vec!["from host", "REFUSED", "s3cret"]);
    assert!(!ro.join("new").exists());
    assert_eq!(fs::read_to_string(rw.join("out.txt")).unwrap(), "out\n");
    // /mnt, /mnt/ro, /mnt/rw, /run/secrets/token were mount points made for the run only.
    assert_eq!(tree(&f.root()), before);
}

#[test]
fn tmpfs_writes_vanish_and_existing_mount_points_stay() {
    if !available("tmpfs_writes_vanish_and_existing_mount_points_stay") {
        return;
    }
    let f = Fixture::new();
    fs::create_dir(f.root().join("cache")).unwrap();
    let before = tree(&f.root());
    let mut request = f.request(
        "echo x > /scratch/f && echo y > /cache/g && ls /scratch /cache && \
         grep -E ' /(scratch|cache) ' /proc/mounts | cut -d' ' -f2,3",
    );
    request.mounts = vec![
        RunMount::Tmpfs {
            target: PathBuf::from("/scratch"),
            size_bytes: Some(1 << 20),
        },
        RunMount::Tmpfs {
            target: PathBuf::from("/cache"),
            size_bytes: None,
        },
    ];
    let (result, lines) = f.run(&request);
    assert_eq!(result.unwrap().exit_code, 0, "{lines:?}");
    assert!(lines.contains(&"/scratch tmpfs".to_string()), "{lines:?}");
    assert!(lines.contains(&"/cache tmpfs".to_string()), "{lines:?}");
    assert_eq!(tree(&f.root()), before);
    assert!(f.root().join("cache").is_dir());
}

#[test]
fn generated_hosts_and_resolv_conf_never_touch_the_root() {
    if !available("generated_hosts_and_resolv_conf_never_touch_the_root") {
        return;
    }
    let f = Fixture::new();
    let etc = f.root().join("etc");
    fs::create_dir(&etc).unwrap();
    fs::write(etc.join("hosts"), "10.0.0.1 original\n").unwrap();
    let resolv = f.dir.path().join("resolv.conf");
    fs::write(&resolv, "nameserver 192.0.2.53\n").unwrap();
    let runner = f.runner.clone().with_resolv_conf(&resolv);
    // Old times on the directories, so a restored time is told from a fresh one.
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    for dir in [f.root(), etc.clone()] {
        fs::File::open(&dir)
            .unwrap()
            .set_times(fs::FileTimes::new().set_accessed(old).set_modified(old))
            .unwrap();
    }
    let before = tree(&f.root());
    let request = f.request("cat /etc/hosts /etc/resolv.conf; echo 1.2.3.4 x >> /etc/hosts");
    let mut lines = Vec::new();
    let outcome = runner
        .run(&request, &mut |l: &str| lines.push(l.to_string()))
        .unwrap();
    f.assert_nothing_left();
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    assert!(lines[0].starts_with("127.0.0.1") && lines[0].contains("stagecoach-test"));
    assert!(
        lines.contains(&"nameserver 192.0.2.53".to_string()),
        "{lines:?}"
    );
    assert_eq!(tree(&f.root()), before);
    assert_eq!(
        fs::read_to_string(etc.join("hosts")).unwrap(),
        "10.0.0.1 original\n"
    );
    // /etc/resolv.conf was created and removed in /etc: its times are back.
    assert_eq!(fs::metadata(&etc).unwrap().mtime(), 1_000_000);
    assert_eq!(fs::metadata(f.root()).unwrap().mtime(), 1_000_000);
}

#[test]
fn a_timeout_kills_the_process() {
    if !available("a_timeout_kills_the_process") {
        return;
    }
    let f = Fixture::new();
    let mut request = f.request("echo started; sleep 100");
    request.timeout = Some(Duration::from_millis(500));
    let start = Instant::now();
    let (result, lines) = f.run(&request);
    match result {
        Err(RunnerError::Timeout(d)) => assert_eq!(d, Duration::from_millis(500)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(lines, vec!["started"]);
    assert!(start.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_timeout_during_container_creation_still_kills() {
    if !available("a_timeout_during_container_creation_still_kills") {
        return;
    }
    let f = Fixture::new();
    let mut request = f.request("sleep 100");
    // Expires before runc has created the container.
    request.timeout = Some(Duration::from_millis(1));
    let start = Instant::now();
    let (result, _) = f.run(&request);
    assert!(matches!(result, Err(RunnerError::Timeout(_))), "{result:?}");
    // Well within the 5 s grace after which runc itself would be killed.
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_signal_gives_128_plus_its_number() {
    if !available("a_signal_gives_128_plus_its_number") {
        return;
    }
    let f = Fixture::new();
    // A sleep length no other process uses, to find this container's process on the host.
    let marker = format!("{}", 900_000 + std::process::id() % 90_000);
    let request = f.request(&format!("echo ready; exec sleep {marker}"));
    let mut lines = Vec::new();
    let result = f.runner.run(&request, &mut |line: &str| {
        lines.push(line.to_string());
        if line == "ready" {
            let deadline = Instant::now() + Duration::from_secs(10);
            let pid = loop {
                if let Some(pid) = find_process(&["sleep", &marker]) {
                    break pid;
                }
                assert!(Instant::now() < deadline, "sleep {marker} never started");
                std::thread::sleep(Duration::from_millis(5));
            };
            let status = Command::new(busybox().unwrap())
                .args(["kill", "-KILL", &pid])
                .status()
                .unwrap();
            assert!(status.success());
        }
    });
    f.assert_nothing_left();
    assert_eq!(result.unwrap().exit_code, 137, "{lines:?}");
}

/// The pid of the process whose argv is exactly `argv`.
fn find_process(argv: &[&str]) -> Option<String> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        (fs::read(entry.path().join("cmdline")).ok()? == want).then_some(name)
    })
}

#[test]
fn a_missing_program_fails_to_start() {
    if !available("a_missing_program_fails_to_start") {
        return;
    }
    let f = Fixture::new();
    let before = tree(&f.root());
    let mut request = f.request("");
    request.argv = vec!["/no/such/program".into()];
    let (result, _) = f.run(&request);
    match result {
        Err(RunnerError::Start(message)) => {
            assert!(message.contains("/no/such/program"), "{message}")
        }
        other => panic!("expected a start error, got {other:?}"),
    }
    assert_eq!(tree(&f.root()), before);
}

#[test]
fn invalid_requests_are_setup_errors() {
    // No runc needed: each request is refused before anything is created.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    let bundles = dir.path().join("bundles");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&bundles).unwrap();
    let runner = RuncRunner::new()
        .with_runc(dir.path().join("no-runc"))
        .with_bundle_parent(&bundles);
    let valid = RunRequest {
        rootfs: root.clone(),
        argv: vec!["true".into()],
        env: vec![],
        cwd: PathBuf::from("/"),
        user: ProcessUser::default(),
        mounts: vec![],
        network: RunNetwork::Host,
        hostname: String::new(),
        timeout: None,
        tail_lines: 0,
    };
    let expect_setup = |runner: &RuncRunner, request: &RunRequest, needle: &str| {
        let result = runner.run(request, &mut |_: &str| {});
        assert!(
            matches!(&result, Err(RunnerError::Setup(m)) if m.contains(needle)),
            "{needle}: {result:?}"
        );
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
        assert_eq!(fs::read_dir(&bundles).unwrap().count(), 0);
    };
    let mut request = valid.clone();
    request.cwd = PathBuf::from("relative");
    expect_setup(&runner, &request, "not absolute");

    let mut request = valid.clone();
    request.argv.clear();
    expect_setup(&runner, &request, "no program");

    let mut request = valid.clone();
    request.env = vec![("A=B".into(), "c".into())];
    expect_setup(&runner, &request, "environment");

    let mut request = valid.clone();
    request.mounts = vec![RunMount::Tmpfs {
        target: PathBuf::from("/a/../b"),
        size_bytes: None,
    }];
    expect_setup(&runner, &request, "'..'");

    let mut request = valid.clone();
    request.mounts = vec![RunMount::Bind {
        source: dir.path().join("missing"),
        target: PathBuf::from("/m"),
        readonly: true,
    }];
    expect_setup(&runner, &request, "bind mount source");

    // A bundle inside the root would land in the next snapshot.
    let inside = runner.clone().with_bundle_parent(&root);
    expect_setup(&inside, &valid, "inside the root");
}

#[test]
fn a_missing_runc_is_a_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    fs::create_dir(&root).unwrap();
    let bundles = dir.path().join("bundles");
    fs::create_dir(&bundles).unwrap();
    let runner = RuncRunner::new()
        .with_runc(dir.path().join("no-runc"))
        .with_bundle_parent(&bundles);
    let request = RunRequest {
        rootfs: root.clone(),
        argv: vec!["true".into()],
        env: vec![],
        cwd: PathBuf::from("/"),
        user: ProcessUser::default(),
        mounts: vec![],
        network: RunNetwork::Host,
        hostname: String::new(),
        timeout: None,
        tail_lines: 0,
    };
    let result = runner.run(&request, &mut |_: &str| {});
    assert!(matches!(result, Err(RunnerError::Start(_))), "{result:?}");
    // The placeholders made before runc was tried are gone again.
    assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
    assert_eq!(fs::read_dir(&bundles).unwrap().count(), 0);
}

#[test]
fn a_panicking_line_callback_still_cleans_up() {
    if !available("a_panicking_line_callback_still_cleans_up") {
        return;
    }
    let f = Fixture::new();
    let before = tree(&f.root());
    let request = f.request("echo boom; sleep 100");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        f.runner.run(&request, &mut |_: &str| panic!("caller bug"))
    }));
    assert!(result.is_err());
    f.assert_nothing_left();
    assert_eq!(tree(&f.root()), before);
}

#[test]
fn the_container_is_confined_like_a_docker_run() {
    if !available("the_container_is_confined_like_a_docker_run") {
        return;
    }
    let f = Fixture::new();
    let script = "\
        wc -c < /proc/timer_list; \
        (echo x > /proc/sysrq-trigger) 2>/dev/null && echo SYSRQ_WRITABLE || echo SYSRQ_RO; \
        touch /sys/x 2>/dev/null && echo SYS_WRITABLE || echo SYS_RO; \
        ls /dev | tr '\\n' ' '; echo; \
        echo ok > /dev/null && head -c 4 /dev/zero | wc -c; \
        grep -c . /proc/1/cmdline >/dev/null && ps -o pid= | head -1; \
        ulimit -n";
    // As root, who could read /proc/timer_list (6 KB here) were it not masked.
    let (result, lines) = f.run(&f.request(script));
    assert_eq!(result.unwrap().exit_code, 0, "{lines:?}");
    assert_eq!(lines[0].trim(), "0", "masked /proc/timer_list: {lines:?}");
    assert_eq!(lines[1], "SYSRQ_RO");
    assert_eq!(lines[2], "SYS_RO");
    for device in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue",
    ] {
        assert!(
            lines[3].split_whitespace().any(|d| d == device),
            "/dev lacks {device}: {}",
            lines[3]
        );
    }
    assert_eq!(lines[4].trim(), "4");
    // Its own pid namespace: the shell is pid 1.
    assert_eq!(lines[5].trim(), "1");
    let nofile: u64 = lines[6].trim().parse().unwrap();
    assert!(nofile >= 1024, "{lines:?}");
}

#[test]
fn a_dangling_resolv_conf_symlink_is_followed_and_left_as_it_was() {
    if !available("a_dangling_resolv_conf_symlink_is_followed_and_left_as_it_was") {
        return;
    }
    let f = Fixture::new();
    // As in images made for systemd-resolved: the link's target does not exist.
    fs::create_dir(f.root().join("etc")).unwrap();
    symlink(
        "/run/systemd/resolve/stub-resolv.conf",
        f.root().join("etc/resolv.conf"),
    )
    .unwrap();
    let resolv = f.dir.path().join("resolv.conf");
    fs::write(&resolv, "nameserver 192.0.2.1\n").unwrap();
    let runner = f.runner.clone().with_resolv_conf(&resolv);
    let before = tree(&f.root());
    let mut lines = Vec::new();
    let outcome = runner
        .run(&f.request("cat /etc/resolv.conf"), &mut |l: &str| {
            lines.push(l.to_string())
        })
        .unwrap();
    f.assert_nothing_left();
    assert_eq!(
        (outcome.exit_code, lines),
        (0, vec!["nameserver 192.0.2.1".to_string()])
    );
    assert_eq!(tree(&f.root()), before);
    assert_eq!(
        fs::read_link(f.root().join("etc/resolv.conf")).unwrap(),
        PathBuf::from("/run/systemd/resolve/stub-resolv.conf")
    );
}
