#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! ADD's own semantics end to end: local tar archives (each compression) extracted, files that
//! only look like archives copied, hostile archives contained, and `ADD <url>` downloads from
//! a small HTTP server on 127.0.0.1 (checksum, Last-Modified, --chown/--chmod, cache keys).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};
use stagecoach_builder::context::BuildContext;
use stagecoach_builder::copy::{self, ApplyOptions, CopyError, CopySpec};
use stagecoach_builder::executor::{
    BaseImage, ExecutorOptions, ProgressEvent, StageExecutor, StageOutcome, StageSpec,
};
use stagecoach_builder::image_state::ArgSource;
use stagecoach_builder::runner::{RunOutcome, RunRequest, Runner, RunnerError};
use stagecoach_builder::users::Owner;
use stagecoach_dockerfile::Dockerfile;
use stagecoach_oci::layer::apply_layer_blob;
use stagecoach_oci::{ApplyOptions as LayerApply, ContentStore};

// ---------------------------------------------------------------------------------------
// Archives built in the test.

/// A tar entry with raw header fields, so tests can also write names `tar` would refuse.
struct Entry {
    name: &'static str,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: &'static str,
    data: &'static [u8],
}

fn entry(name: &'static str, kind: tar::EntryType) -> Entry {
    Entry {
        name,
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 1_000_000,
        link: "",
        data: b"",
    }
}

fn file(name: &'static str, data: &'static [u8]) -> Entry {
    Entry {
        data,
        ..entry(name, tar::EntryType::Regular)
    }
}

fn tar_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        let old = h.as_old_mut();
        old.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
        old.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(e.data.len() as u64);
        h.set_cksum();
        b.append(&h, e.data).unwrap();
    }
    b.into_inner().unwrap()
}

/// `bytes` compressed with a system tool (`gzip`, `bzip2`, `xz`, `zstd`), or as is.
fn compress(bytes: &[u8], tool: Option<&str>) -> Vec<u8> {
    let Some(tool) = tool else {
        return bytes.to_vec();
    };
    let mut child = Command::new(tool)
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool} is needed for this test: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{tool} failed");
    out.stdout
}

fn sample_archive() -> Vec<u8> {
    tar_bytes(&[
        Entry {
            mode: 0o750,
            uid: 1234,
            gid: 2345,
            mtime: 1_100_000,
            ..entry("top/", tar::EntryType::Directory)
        },
        Entry {
            mode: 0o640,
            uid: 1234,
            gid: 2345,
            mtime: 1_500_000,
            ..file("top/a.txt", b"A")
        },
        Entry {
            link: "a.txt",
            ..entry("top/link", tar::EntryType::Symlink)
        },
        Entry {
            link: "top/a.txt",
            ..entry("top/hard", tar::EntryType::Link)
        },
        // No entry for top/sub: extraction makes it.
        Entry {
            mode: 0o4755,
            ..file("top/sub/deep.sh", b"#!/bin/sh\n")
        },
        // Whiteout names are not special to ADD.
        file("top/.wh.gone", b""),
    ])
}

// ---------------------------------------------------------------------------------------
// COPY plans run directly.

struct Fixture {
    ctx_dir: tempfile::TempDir,
    /// The root is `outer/root`, so anything escaping it shows up in `outer`.
    outer: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let outer = tempfile::tempdir().unwrap();
        std::fs::create_dir(outer.path().join("root")).unwrap();
        Self {
            ctx_dir: tempfile::tempdir().unwrap(),
            outer,
        }
    }

    fn put(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.ctx_dir.path().join(name), bytes).unwrap();
    }

    fn root(&self) -> PathBuf {
        self.outer.path().join("root")
    }

    fn at(&self, path: &str) -> PathBuf {
        self.root().join(path.trim_start_matches('/'))
    }

    fn add(&self, spec: CopySpec) -> Result<(), CopyError> {
        let ctx = BuildContext::open(self.ctx_dir.path()).unwrap();
        let spec = CopySpec {
            is_add: true,
            ..spec
        };
        let plan = copy::plan(&ctx, &spec, &self.root())?;
        copy::apply(&plan, &self.root(), ApplyOptions::default())
    }

    fn add_simple(&self, source: &str, dest: &str) -> Result<(), CopyError> {
        self.add(CopySpec {
            sources: vec![source.to_string()],
            dest: dest.to_string(),
            ..CopySpec::default()
        })
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn local_archives_are_extracted_in_every_compression() {
    let tar = sample_archive();
    for tool in [None, Some("gzip"), Some("bzip2"), Some("xz"), Some("zstd")] {
        let f = Fixture::new();
        // A name that says nothing: detection is by content.
        f.put("bundle.bin", &compress(&tar, tool));
        f.add_simple("bundle.bin", "/opt/app").unwrap();
        let label = tool.unwrap_or("plain tar");

        assert!(!f.at("/opt/app/bundle.bin").exists(), "{label}: not copied");
        assert_eq!(std::fs::read(f.at("/opt/app/top/a.txt")).unwrap(), b"A");
        let a = std::fs::metadata(f.at("/opt/app/top/a.txt")).unwrap();
        assert_eq!(a.mode() & 0o7777, 0o640, "{label}");
        assert_eq!(a.mtime(), 1_500_000, "{label}");
        let top = std::fs::metadata(f.at("/opt/app/top")).unwrap();
        assert_eq!(top.mode() & 0o7777, 0o750, "{label}");
        assert_eq!(top.mtime(), 1_100_000, "{label}: set after its contents");
        if is_root() {
            assert_eq!((a.uid(), a.gid()), (1234, 2345), "{label}: archive owners");
            assert_eq!((top.uid(), top.gid()), (1234, 2345));
        }
        let link = f.at("/opt/app/top/link");
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("a.txt"));
        let hard = std::fs::metadata(f.at("/opt/app/top/hard")).unwrap();
        assert_eq!(hard.ino(), a.ino(), "{label}: hard link kept");
        let sub = std::fs::metadata(f.at("/opt/app/top/sub")).unwrap();
        assert_eq!(sub.mode() & 0o7777, 0o755, "{label}: implied directory");
        let deep = std::fs::metadata(f.at("/opt/app/top/sub/deep.sh")).unwrap();
        assert_eq!(deep.mode() & 0o7777, 0o4755, "{label}: setuid kept");
        assert!(
            f.at("/opt/app/top/.wh.gone").is_file(),
            "{label}: whiteout is a file"
        );
    }
}

#[test]
fn extraction_merges_into_existing_directories_and_chown_applies_to_entries() {
    let f = Fixture::new();
    f.put("a.tar", &sample_archive());
    std::fs::create_dir_all(f.at("/dest/top")).unwrap();
    std::fs::write(f.at("/dest/top/existing.txt"), "kept").unwrap();
    std::fs::write(f.at("/dest/top/a.txt"), "replaced").unwrap();
    f.add(CopySpec {
        sources: vec!["a.tar".into()],
        dest: "/dest/".into(),
        owner: Some(Owner { uid: 7, gid: 8 }),
        chmod: Some(0o700),
        ..CopySpec::default()
    })
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(f.at("/dest/top/existing.txt")).unwrap(),
        "kept"
    );
    assert_eq!(std::fs::read(f.at("/dest/top/a.txt")).unwrap(), b"A");
    let a = std::fs::metadata(f.at("/dest/top/a.txt")).unwrap();
    assert_eq!(
        a.mode() & 0o7777,
        0o640,
        "--chmod is not applied to entries"
    );
    let top = std::fs::metadata(f.at("/dest/top")).unwrap();
    assert_eq!(
        top.mode() & 0o7777,
        0o750,
        "a merged directory takes the entry's mode"
    );
    if is_root() {
        for p in [
            "/dest/top",
            "/dest/top/a.txt",
            "/dest/top/sub",
            "/dest/top/sub/deep.sh",
        ] {
            let m = std::fs::symlink_metadata(f.at(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (7, 8), "{p}: --chown applies");
        }
    }
}

#[test]
fn files_that_only_look_like_archives_are_copied() {
    let f = Fixture::new();
    f.put("notes.tar.gz", b"just text, not an archive");
    // gzip, but of something that is not a tar.
    let gz = compress(b"plain text inside gzip", Some("gzip"));
    f.put("data.txt.gz", &gz);
    // An empty archive has no first header: Docker copies it too.
    f.put("empty.tar", &[0u8; 1024]);
    let real = compress(&sample_archive(), Some("gzip"));
    f.put("real.tgz", &real);
    f.add(CopySpec {
        sources: vec![
            "notes.tar.gz".into(),
            "data.txt.gz".into(),
            "empty.tar".into(),
        ],
        dest: "/d/".into(),
        ..CopySpec::default()
    })
    .unwrap();
    assert_eq!(
        std::fs::read(f.at("/d/notes.tar.gz")).unwrap(),
        b"just text, not an archive"
    );
    assert_eq!(std::fs::read(f.at("/d/data.txt.gz")).unwrap(), gz);
    assert_eq!(std::fs::read(f.at("/d/empty.tar")).unwrap().len(), 1024);

    // --unpack=false copies a real archive as a file.
    f.add(CopySpec {
        sources: vec!["real.tgz".into()],
        dest: "/e/".into(),
        unpack: Some(false),
        ..CopySpec::default()
    })
    .unwrap();
    assert_eq!(std::fs::read(f.at("/e/real.tgz")).unwrap(), real);
    assert!(!f.at("/e/top").exists());

    // COPY never extracts.
    let ctx = BuildContext::open(f.ctx_dir.path()).unwrap();
    let spec = CopySpec {
        sources: vec!["real.tgz".into()],
        dest: "/c/".into(),
        ..CopySpec::default()
    };
    let plan = copy::plan(&ctx, &spec, &f.root()).unwrap();
    copy::apply(&plan, &f.root(), ApplyOptions::default()).unwrap();
    assert_eq!(std::fs::read(f.at("/c/real.tgz")).unwrap(), real);
}

/// Everything under `dir`, relative, sorted.
fn listing(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn hostile_archives_cannot_write_outside_the_destination() {
    // `..` out of the destination is refused outright.
    let f = Fixture::new();
    f.put(
        "climb.tar",
        &tar_bytes(&[file("ok.txt", b"ok"), file("../../escaped", b"x")]),
    );
    let err = f.add_simple("climb.tar", "/dest/").unwrap_err();
    assert!(
        err.to_string().contains("outside the extraction directory"),
        "{err}"
    );
    assert_eq!(
        listing(f.outer.path()),
        ["root", "root/dest", "root/dest/ok.txt"]
    );

    // Symlinks the archive plants are followed inside the destination only: an absolute
    // one to `/`, a relative one climbing out, and a hard link through them.
    let f = Fixture::new();
    f.put(
        "links.tar",
        &tar_bytes(&[
            Entry {
                link: "/",
                ..entry("abs", tar::EntryType::Symlink)
            },
            file("abs/escaped-abs", b"1"),
            Entry {
                link: "../../../..",
                ..entry("up", tar::EntryType::Symlink)
            },
            file("up/escaped-up", b"2"),
            Entry {
                link: "up/escaped-up",
                ..entry("hard", tar::EntryType::Link)
            },
        ]),
    );
    f.add_simple("links.tar", "/dest/").unwrap();
    assert_eq!(
        listing(f.outer.path()),
        [
            "root",
            "root/dest",
            "root/dest/abs",
            "root/dest/escaped-abs",
            "root/dest/escaped-up",
            "root/dest/hard",
            "root/dest/up",
        ]
    );
    assert_eq!(std::fs::read(f.at("/dest/hard")).unwrap(), b"2");
    // A symlink in the image's root is no way out either.
    let f = Fixture::new();
    std::os::unix::fs::symlink("/", f.at("/dest")).unwrap();
    f.put("one.tar", &tar_bytes(&[file("etc/marker", b"m")]));
    f.add_simple("one.tar", "/dest/").unwrap();
    assert_eq!(std::fs::read(f.at("/etc/marker")).unwrap(), b"m");
    assert_eq!(
        listing(f.outer.path()),
        ["root", "root/dest", "root/etc", "root/etc/marker"]
    );
}

// ---------------------------------------------------------------------------------------
// The executor: ADD <url> and archive steps with cache keys.

/// A tiny HTTP/1.1 server: every GET gets the current body (and Last-Modified if set).
#[derive(Clone)]
struct Server {
    port: u16,
    body: Arc<Mutex<Vec<u8>>>,
    last_modified: Arc<Mutex<Option<String>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(body: &[u8]) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = Server {
            port: listener.local_addr().unwrap().port(),
            body: Arc::new(Mutex::new(body.to_vec())),
            last_modified: Arc::new(Mutex::new(None)),
            requests: Arc::new(Mutex::new(Vec::new())),
        };
        let s = server.clone();
        // The thread ends with the test process; each connection is answered and closed.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                s.requests.lock().unwrap().push(path.clone());
                let (status, body) = if path.starts_with("/missing") {
                    ("404 Not Found", b"no".to_vec())
                } else {
                    ("200 OK", s.body.lock().unwrap().clone())
                };
                let mut head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                if let Some(lm) = s.last_modified.lock().unwrap().as_ref() {
                    head.push_str(&format!("Last-Modified: {lm}\r\n"));
                }
                head.push_str("\r\n");
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
                let _ = stream.flush();
            }
        });
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn set_body(&self, body: &[u8]) {
        *self.body.lock().unwrap() = body.to_vec();
    }

    fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// ADD steps never run a process.
struct NoRunner;

impl Runner for NoRunner {
    fn run(
        &self,
        _request: &RunRequest,
        _on_line: &mut dyn FnMut(&str),
    ) -> Result<RunOutcome, RunnerError> {
        panic!("no RUN in these tests")
    }
}

struct Built {
    outcome: StageOutcome,
    root: tempfile::TempDir,
}

fn build(dockerfile: &str, ctx: &Path, store: &ContentStore) -> Built {
    let df = Dockerfile::parse(dockerfile).unwrap();
    let root = tempfile::tempdir().unwrap();
    let context = BuildContext::open(ctx).unwrap();
    let options = ExecutorOptions {
        source_date_epoch: 1_700_000_000,
        ..ExecutorOptions::default()
    };
    let ex = StageExecutor::new(store, root.path(), &context, &NoRunner, options).unwrap();
    let spec = StageSpec {
        label: "stage-0".into(),
        instructions: &df.stages[0].instructions,
        escape: df.escape,
        args: ArgSource::default(),
        base: BaseImage::default(),
    };
    let outcome = ex.run(&spec, &mut |_: &ProgressEvent<'_>| {});
    Built { outcome, root }
}

fn ok(b: &Built) {
    assert!(b.outcome.error.is_none(), "{:?}", b.outcome.error);
}

/// The store's layers of a result applied to a fresh directory.
fn unpack_layers(store: &ContentStore, b: &Built) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for l in &b.outcome.result.layers {
        apply_layer_blob(
            store,
            &l.digest,
            Some(&l.diff_id),
            dir.path(),
            &LayerApply::default(),
        )
        .unwrap();
    }
    dir
}

fn sha256(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Nothing left in the cache root's `tmp/` (downloads are staged there).
fn assert_no_staging(store: &ContentStore) {
    let tmp = store.root().join("tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|r| r.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "staging left behind: {left:?}");
}

#[test]
fn add_url_downloads_with_mode_mtime_and_a_content_cache_key() {
    let server = Server::start(b"tool v1");
    *server.last_modified.lock().unwrap() = Some("Sun, 06 Nov 1994 08:49:37 GMT".into());
    let ctx = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(store_dir.path()).unwrap();
    let dockerfile = format!(
        "FROM scratch\nENV BASE={}\nADD ${{BASE}}/dl/tool.bin?v=1 /opt/\nADD {} /named\n",
        server.url(""),
        server.url("/dl/other")
    );

    let first = build(&dockerfile, ctx.path(), &store);
    ok(&first);
    let tool = first.root.path().join("opt/tool.bin");
    assert_eq!(std::fs::read(&tool).unwrap(), b"tool v1");
    let m = std::fs::metadata(&tool).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert_eq!(m.mtime(), 784_111_777, "Last-Modified");
    assert_eq!(
        std::fs::read(first.root.path().join("named")).unwrap(),
        b"tool v1",
        "a destination without / is the file's name"
    );
    let layers = unpack_layers(&store, &first);
    let in_layer = std::fs::metadata(layers.path().join("opt/tool.bin")).unwrap();
    assert_eq!(in_layer.mode() & 0o7777, 0o600);
    assert_eq!(first.outcome.result.cache_hits, 0);
    assert_eq!(server.request_count(), 2);
    assert!(
        server.requests.lock().unwrap()[0] == "/dl/tool.bin?v=1",
        "the URL is expanded"
    );

    // Same content: both ADD steps hit (the URLs are fetched again to know that).
    let second = build(&dockerfile, ctx.path(), &store);
    ok(&second);
    assert_eq!(second.outcome.result.cache_hits, 2);
    assert_eq!(second.outcome.result.layers, first.outcome.result.layers);
    assert_eq!(server.request_count(), 4);

    // New content behind the same URLs: a miss, and the new bytes.
    server.set_body(b"tool v2");
    let third = build(&dockerfile, ctx.path(), &store);
    ok(&third);
    assert_eq!(third.outcome.result.cache_hits, 0);
    assert_ne!(third.outcome.result.layers, first.outcome.result.layers);
    assert_eq!(
        std::fs::read(third.root.path().join("opt/tool.bin")).unwrap(),
        b"tool v2"
    );
    assert_no_staging(&store);
}

#[test]
fn add_url_checksum_chown_and_chmod() {
    let server = Server::start(b"payload");
    let ctx = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(store_dir.path()).unwrap();
    let good = sha256(b"payload");
    let dockerfile = format!(
        "FROM scratch\nADD --checksum={good} --chown=5:6 --chmod=0755 {} /bin/tool\n",
        server.url("/tool")
    );
    let b = build(&dockerfile, ctx.path(), &store);
    ok(&b);
    let m = std::fs::metadata(b.root.path().join("bin/tool")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755);
    if is_root() {
        assert_eq!((m.uid(), m.gid()), (5, 6));
    }
    // No Last-Modified: the layer clamps the time of writing to SOURCE_DATE_EPOCH.
    let layers = unpack_layers(&store, &b);
    let in_layer = std::fs::metadata(layers.path().join("bin/tool")).unwrap();
    assert!(in_layer.mtime() <= 1_700_000_000);

    let wrong = sha256(b"something else");
    let dockerfile = format!(
        "FROM scratch\n\nADD --checksum={wrong} {} /bin/tool\n",
        server.url("/tool")
    );
    let b = build(&dockerfile, ctx.path(), &store);
    let err = b.outcome.error.as_ref().expect("a mismatch fails");
    assert_eq!(err.reason().as_str(), "ChecksumMismatch");
    let message = err.to_string();
    assert!(message.starts_with("line 3: "), "{message}");
    assert!(message.contains(&format!("expected {wrong}")), "{message}");
    assert!(message.contains(&format!("got {good}")), "{message}");
    assert!(!b.root.path().join("bin/tool").exists());
    assert_no_staging(&store);

    let b = build(
        "FROM scratch\nADD --checksum=md5:abc http://127.0.0.1:1/x /x\n",
        ctx.path(),
        &store,
    );
    assert_eq!(
        b.outcome.result.reason.map(|r| r.as_str()),
        Some("InvalidInstruction")
    );

    let b = build(
        &format!("FROM scratch\nADD {} /x\n", server.url("/missing")),
        ctx.path(),
        &store,
    );
    let err = b.outcome.error.as_ref().expect("a 404 fails");
    assert_eq!(err.reason().as_str(), "DownloadFailed");
    assert!(err.to_string().contains("HTTP status 404"), "{err}");
}

#[test]
fn add_url_checksum_takes_sha384_and_sha512() {
    use sha2::Digest as _;
    let server = Server::start(b"payload");
    let ctx = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(store_dir.path()).unwrap();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let sha384 = format!("sha384:{}", hex(&sha2::Sha384::digest(b"payload")));
    let sha512 = format!("sha512:{}", hex(&sha2::Sha512::digest(b"payload")));
    for good in [&sha384, &sha512] {
        let b = build(
            &format!(
                "FROM scratch\nADD --checksum={good} {} /tool\n",
                server.url("/tool")
            ),
            ctx.path(),
            &store,
        );
        ok(&b);
        assert_eq!(
            std::fs::read(b.root.path().join("tool")).unwrap(),
            b"payload"
        );
    }
    let wrong = format!("sha512:{}", hex(&sha2::Sha512::digest(b"other")));
    let b = build(
        &format!(
            "FROM scratch\nADD --checksum={wrong} {} /tool\n",
            server.url("/tool")
        ),
        ctx.path(),
        &store,
    );
    let err = b.outcome.error.as_ref().expect("a mismatch fails");
    assert_eq!(err.reason().as_str(), "ChecksumMismatch");
    assert!(err.to_string().contains(&format!("got {sha512}")), "{err}");
}

#[test]
fn git_sources_stay_unsupported() {
    let ctx = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(store_dir.path()).unwrap();
    for source in ["https://github.com/x/y.git", "git@github.com:x/y.git"] {
        let b = build(
            &format!("FROM scratch\nADD {source} /src\n"),
            ctx.path(),
            &store,
        );
        let err = b.outcome.error.as_ref().expect("git is refused");
        assert_eq!(err.reason().as_str(), "Unsupported", "{err}");
        assert!(err.to_string().contains("not supported yet"), "{err}");
    }
}

#[test]
fn remote_archives_are_unpacked_only_on_request() {
    let archive = compress(&sample_archive(), Some("gzip"));
    let server = Server::start(&archive);
    let ctx = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(store_dir.path()).unwrap();
    let url = server.url("/a.tar.gz");
    let b = build(
        &format!("FROM scratch\nADD {url} /kept/\nADD --unpack=true {url} /unpacked/\n"),
        ctx.path(),
        &store,
    );
    ok(&b);
    assert_eq!(
        std::fs::read(b.root.path().join("kept/a.tar.gz")).unwrap(),
        archive
    );
    assert_eq!(
        std::fs::read(b.root.path().join("unpacked/top/a.txt")).unwrap(),
        b"A"
    );
}

#[test]
fn a_local_archive_step_is_cached_by_the_archive_content() {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("app.tar.xz"),
        compress(&sample_archive(), Some("xz")),
    )
    .unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(store_dir.path()).unwrap();
    let dockerfile = "FROM scratch\nADD app.tar.xz /app\n";
    let first = build(dockerfile, ctx.path(), &store);
    ok(&first);
    let layers = unpack_layers(&store, &first);
    assert_eq!(
        std::fs::read(layers.path().join("app/top/a.txt")).unwrap(),
        b"A"
    );
    let deep = std::fs::metadata(layers.path().join("app/top/sub/deep.sh")).unwrap();
    assert_eq!(deep.mode() & 0o7777, 0o4755);

    let second = build(dockerfile, ctx.path(), &store);
    ok(&second);
    assert_eq!(second.outcome.result.cache_hits, 1);

    let changed = tar_bytes(&[file("top/a.txt", b"B")]);
    std::fs::write(
        ctx.path().join("app.tar.xz"),
        compress(&changed, Some("xz")),
    )
    .unwrap();
    let third = build(dockerfile, ctx.path(), &store);
    ok(&third);
    assert_eq!(third.outcome.result.cache_hits, 0);
    assert_eq!(
        std::fs::read(third.root.path().join("app/top/a.txt")).unwrap(),
        b"B"
    );
}

/// The server must see a complete request before answering; reading the whole response
/// here checks the framing the downloader relies on.
#[test]
fn the_test_server_speaks_http() {
    let server = Server::start(b"hello");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nhello"), "{out}");
}
