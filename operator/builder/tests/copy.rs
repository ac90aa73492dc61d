#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! COPY/ADD end to end on real directories: a context, a root filesystem, plan then apply.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use stagecoach_builder::context::BuildContext;
use stagecoach_builder::copy::{
    self, ApplyOptions, CopyError, CopySpec, HeredocSource, OpSource, parse_chmod,
};
use stagecoach_builder::users::{Owner, resolve_chown};

struct Fixture {
    _ctx_dir: tempfile::TempDir,
    root_dir: tempfile::TempDir,
    ctx: BuildContext,
}

impl Fixture {
    fn new(files: &[(&str, &str)], ignore: &str) -> Self {
        let ctx_dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = ctx_dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        if !ignore.is_empty() {
            std::fs::write(ctx_dir.path().join(".dockerignore"), ignore).unwrap();
        }
        let ctx = BuildContext::open(ctx_dir.path()).unwrap();
        Self {
            _ctx_dir: ctx_dir,
            root_dir: tempfile::tempdir().unwrap(),
            ctx,
        }
    }

    fn ctx_path(&self) -> &Path {
        self.ctx.root()
    }

    fn root(&self) -> &Path {
        self.root_dir.path()
    }

    fn copy(&self, sources: &[&str], dest: &str) -> Result<(), CopyError> {
        self.run(CopySpec {
            sources: sources.iter().map(|s| s.to_string()).collect(),
            dest: dest.to_string(),
            ..CopySpec::default()
        })
    }

    fn run(&self, spec: CopySpec) -> Result<(), CopyError> {
        let plan = copy::plan(&self.ctx, &spec, self.root())?;
        copy::apply(&plan, self.root(), ApplyOptions::default())
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.root().join(path.trim_start_matches('/'))).unwrap()
    }

    fn meta(&self, path: &str) -> std::fs::Metadata {
        std::fs::symlink_metadata(self.root().join(path.trim_start_matches('/'))).unwrap()
    }

    fn exists(&self, path: &str) -> bool {
        std::fs::symlink_metadata(self.root().join(path.trim_start_matches('/'))).is_ok()
    }
}

#[test]
fn file_destination_rules() {
    let f = Fixture::new(&[("a.txt", "A"), ("b.txt", "B")], "");
    f.copy(&["a.txt"], "/dir/").unwrap();
    assert_eq!(f.read("/dir/a.txt"), "A");
    let m = f.meta("/dir");
    assert_eq!(m.mode() & 0o7777, 0o755);
    assert_eq!((m.uid(), m.gid()), (0, 0));

    f.copy(&["a.txt"], "/new/name").unwrap();
    assert_eq!(
        f.read("/new/name"),
        "A",
        "no trailing slash: the file's new name"
    );

    f.copy(&["b.txt"], "/dir").unwrap();
    assert_eq!(
        f.read("/dir/b.txt"),
        "B",
        "an existing directory receives the file"
    );

    f.copy(&["b.txt"], "/new/name").unwrap();
    assert_eq!(f.read("/new/name"), "B", "an existing file is replaced");

    f.copy(&["a.txt", "b.txt"], "/multi/").unwrap();
    assert_eq!(f.read("/multi/b.txt"), "B");
    let e = f.copy(&["a.txt", "b.txt"], "/multi").unwrap_err();
    assert_eq!(
        e.to_string(),
        "When using COPY with more than one source file, the destination must be a directory and end with a /"
    );
    let e = f.copy(&["*.txt"], "/multi").unwrap_err();
    assert!(matches!(e, CopyError::NeedDirectory { .. }), "{e}");
    f.copy(&["a*"], "/single").unwrap();
    assert_eq!(
        f.read("/single"),
        "A",
        "a wildcard matching one file is one source"
    );
}

#[test]
fn workdir_relative_destinations() {
    let f = Fixture::new(&[("a.txt", "A")], "");
    let spec = |dest: &str| CopySpec {
        sources: vec!["a.txt".into()],
        dest: dest.into(),
        workdir: "/app".into(),
        ..CopySpec::default()
    };
    f.run(spec(".")).unwrap();
    assert_eq!(f.read("/app/a.txt"), "A");
    f.run(spec("sub/")).unwrap();
    assert_eq!(f.read("/app/sub/a.txt"), "A");
    f.run(spec("../top")).unwrap();
    assert_eq!(f.read("/top"), "A");
    f.run(spec("../../../../escape")).unwrap();
    assert_eq!(f.read("/escape"), "A", "`..` stops at the root");
}

#[test]
fn directory_sources_copy_contents_with_metadata() {
    let f = Fixture::new(&[("src/a", "1"), ("src/sub/b", "2")], "");
    let ctx = f.ctx_path();
    std::fs::set_permissions(
        ctx.join("src/sub/b"),
        std::fs::Permissions::from_mode(0o4751),
    )
    .unwrap();
    std::fs::set_permissions(ctx.join("src/sub"), std::fs::Permissions::from_mode(0o700)).unwrap();
    symlink("sub/b", ctx.join("src/link")).unwrap();
    symlink("/etc/shadow", ctx.join("src/abs")).unwrap();
    let when = std::fs::FileTimes::new()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000));
    std::fs::File::options()
        .write(true)
        .open(ctx.join("src/a"))
        .unwrap()
        .set_times(when)
        .unwrap();
    // The source directory's own mtime is set after its contents are complete.
    std::fs::File::open(ctx.join("src/sub"))
        .unwrap()
        .set_times(when)
        .unwrap();

    f.copy(&["src"], "/out").unwrap();
    assert_eq!(f.read("/out/a"), "1");
    assert_eq!(f.read("/out/sub/b"), "2");
    assert!(!f.exists("/out/src"), "contents, not the directory itself");
    assert_eq!(
        f.meta("/out/sub/b").mode() & 0o7777,
        0o4751,
        "setuid survives chown"
    );
    assert_eq!(f.meta("/out/sub").mode() & 0o7777, 0o700);
    assert_eq!(f.meta("/out").mode() & 0o7777, 0o755);
    assert_eq!(f.meta("/out/a").mtime(), 1_000_000);
    assert_eq!(f.meta("/out/sub").mtime(), 1_000_000);
    let link = f.meta("/out/link");
    assert!(link.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(f.root().join("out/abs")).unwrap(),
        Path::new("/etc/shadow"),
        "link targets are copied as written, never followed"
    );

    // An existing destination directory keeps its metadata.
    std::fs::create_dir(f.root().join("keep")).unwrap();
    std::fs::set_permissions(
        f.root().join("keep"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    f.copy(&["src"], "/keep").unwrap();
    assert_eq!(f.meta("/keep").mode() & 0o7777, 0o750);
    assert_eq!(f.read("/keep/sub/b"), "2");

    // The context root itself.
    f.copy(&["."], "/all/").unwrap();
    assert_eq!(f.read("/all/src/a"), "1");
}

#[test]
fn chown_and_chmod() {
    let f = Fixture::new(&[("bin/tool", "#!/bin/sh\n"), ("conf", "c")], "");
    std::fs::create_dir(f.root().join("etc")).unwrap();
    std::fs::write(
        f.root().join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(f.root().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
    let owner = resolve_chown(f.root(), "app:staff").unwrap();
    assert_eq!(owner, Owner { uid: 1000, gid: 50 });
    f.run(CopySpec {
        sources: vec!["bin".into(), "conf".into()],
        dest: "/opt/x/".into(),
        owner: Some(owner),
        chmod: Some(parse_chmod("0750").unwrap()),
        ..CopySpec::default()
    })
    .unwrap();
    for p in ["/opt/x/tool", "/opt/x/conf"] {
        let m = f.meta(p);
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (1000, 50, 0o750),
            "{p}"
        );
    }
    let parent = f.meta("/opt");
    assert_eq!(
        (parent.uid(), parent.mode() & 0o7777),
        (1000, 0o755),
        "created parents"
    );
    assert!(parse_chmod("u+x").is_err());
    assert!(parse_chmod("17777").is_err());
    assert!(parse_chmod("").is_err());
}

#[test]
fn heredoc_sources() {
    let f = Fixture::new(&[], "");
    f.run(CopySpec {
        sources: vec!["EOF".into()],
        heredocs: vec![HeredocSource {
            name: "EOF".into(),
            content: "hello\n".into(),
        }],
        dest: "/etc/motd".into(),
        ..CopySpec::default()
    })
    .unwrap();
    assert_eq!(f.read("/etc/motd"), "hello\n");
    assert_eq!(f.meta("/etc/motd").mode() & 0o7777, 0o644);
    f.run(CopySpec {
        sources: vec!["A".into(), "B".into()],
        heredocs: vec![
            HeredocSource {
                name: "A".into(),
                content: "a".into(),
            },
            HeredocSource {
                name: "B".into(),
                content: "b".into(),
            },
        ],
        dest: "/d/".into(),
        chmod: Some(0o600),
        ..CopySpec::default()
    })
    .unwrap();
    assert_eq!(f.read("/d/B"), "b");
    assert_eq!(f.meta("/d/A").mode() & 0o7777, 0o600);
}

#[test]
fn parents_and_excludes() {
    let f = Fixture::new(
        &[
            ("app/a/b/c.txt", "c"),
            ("app/a/b/d.go", "d"),
            ("app/x/e.txt", "e"),
            ("home.txt", "h"),
            ("homer.md", "m"),
        ],
        "",
    );
    f.run(CopySpec {
        sources: vec!["app/*/b/c.txt".into(), "home.txt".into()],
        dest: "/p/".into(),
        parents: true,
        ..CopySpec::default()
    })
    .unwrap();
    assert_eq!(f.read("/p/app/a/b/c.txt"), "c");
    assert_eq!(f.read("/p/home.txt"), "h");
    f.run(CopySpec {
        sources: vec!["./app/./a/b".into()],
        dest: "/q/".into(),
        parents: true,
        ..CopySpec::default()
    })
    .unwrap();
    assert_eq!(
        f.read("/q/a/b/d.go"),
        "d",
        "the path below the /./ pivot is kept"
    );
    f.run(CopySpec {
        sources: vec!["hom*".into(), "app".into()],
        dest: "/r/".into(),
        excludes: vec!["*.txt".into(), "a/**/*.go".into()],
        ..CopySpec::default()
    })
    .unwrap();
    assert!(f.exists("/r/homer.md"));
    assert!(
        !f.exists("/r/home.txt"),
        "a wildcard match is matched by its name"
    );
    assert!(
        f.exists("/r/a/b/c.txt") && f.exists("/r/x/e.txt"),
        "*.txt is anchored at the source directory"
    );
    assert!(
        !f.exists("/r/a/b/d.go"),
        "paths below a directory source are relative to it"
    );
}

#[test]
fn parents_keep_source_directory_metadata() {
    let f = Fixture::new(&[("src/lib/a.rs", "a"), ("src/bin/b.rs", "b")], "");
    let ctx = f.ctx_path();
    std::fs::set_permissions(ctx.join("src/lib"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::set_permissions(ctx.join("src"), std::fs::Permissions::from_mode(0o700)).unwrap();
    f.run(CopySpec {
        sources: vec!["src/lib/a.rs".into(), "src/bin".into()],
        dest: "/p".into(),
        parents: true,
        ..CopySpec::default()
    })
    .unwrap();
    assert_eq!(f.read("/p/src/lib/a.rs"), "a");
    assert_eq!(f.read("/p/src/bin/b.rs"), "b");
    assert_eq!(
        f.meta("/p").mode() & 0o7777,
        0o755,
        "the destination is created 0755"
    );
    assert_eq!(f.meta("/p/src").mode() & 0o7777, 0o700);
    assert_eq!(f.meta("/p/src/lib").mode() & 0o7777, 0o750);
}

#[test]
fn read_only_directories_are_filled_before_their_mode_is_set() {
    let f = Fixture::new(&[("ro/sub/file", "x")], "");
    let ctx = f.ctx_path();
    std::fs::set_permissions(ctx.join("ro/sub"), std::fs::Permissions::from_mode(0o555)).unwrap();
    let plan = copy::plan(
        &f.ctx,
        &CopySpec {
            sources: vec!["ro".into()],
            dest: "/o/".into(),
            ..CopySpec::default()
        },
        f.root(),
    )
    .unwrap();
    copy::apply(&plan, f.root(), ApplyOptions { set_owner: false }).unwrap();
    assert_eq!(f.read("/o/sub/file"), "x");
    assert_eq!(f.meta("/o/sub").mode() & 0o7777, 0o555);
}

#[test]
fn hard_links_are_kept() {
    let f = Fixture::new(&[("d/one", "same")], "");
    std::fs::hard_link(f.ctx_path().join("d/one"), f.ctx_path().join("d/two")).unwrap();
    f.copy(&["d"], "/h/").unwrap();
    let (a, b) = (f.meta("/h/one"), f.meta("/h/two"));
    assert_eq!(a.ino(), b.ino(), "one inode, as in the context");
    assert_eq!(a.nlink(), 2);
    assert_eq!(f.read("/h/two"), "same");
}

#[test]
fn ignored_and_missing_sources() {
    let f = Fixture::new(
        &[("keep", "k"), ("secret.key", "s"), ("d/x.key", "x")],
        "*.key\n**/*.key\n",
    );
    let e = f.copy(&["secret.key"], "/").unwrap_err();
    assert_eq!(e.to_string(), "COPY: \"/secret.key\": not found");
    let e = f.copy(&["nope/*"], "/x/").unwrap_err();
    assert_eq!(
        e.to_string(),
        "COPY: \"nope/*\": no source files were specified"
    );
    f.copy(&["."], "/all/").unwrap();
    assert!(f.exists("/all/keep"));
    assert!(f.exists("/all/d"));
    assert!(!f.exists("/all/secret.key") && !f.exists("/all/d/x.key"));
}

#[test]
fn writes_never_leave_the_root() {
    let outside = tempfile::tempdir().unwrap();
    let f = Fixture::new(&[("a", "A"), ("dir/b", "B")], "");
    // Links in the root filesystem pointing out of it, absolute and relative.
    symlink(outside.path(), f.root().join("abs")).unwrap();
    symlink("../../../../../../..", f.root().join("rel")).unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    symlink(&victim, f.root().join("target")).unwrap();

    f.copy(&["a"], "/abs/").unwrap();
    f.copy(&["dir"], "/rel/tmp/").unwrap();
    f.copy(&["a"], "/target").unwrap();
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    let inside = outside.path().strip_prefix("/").unwrap();
    assert_eq!(
        std::fs::read_to_string(f.root().join(inside).join("a")).unwrap(),
        "A",
        "the absolute link resolves inside the root"
    );
    assert_eq!(f.read("/tmp/b"), "B");
    assert_eq!(
        f.read("/target"),
        "A",
        "the link is replaced, not written through"
    );
    assert!(!f.meta("/target").file_type().is_symlink());
}

#[test]
fn directory_and_file_conflicts() {
    let f = Fixture::new(&[("a", "A"), ("d/x", "X")], "");
    std::fs::create_dir_all(f.root().join("busy/a")).unwrap();
    let e = f.copy(&["a"], "/busy/").unwrap_err();
    assert!(matches!(e, CopyError::IsADirectory { .. }), "{e}");
    std::fs::write(f.root().join("file"), "").unwrap();
    let e = f.copy(&["d"], "/file").unwrap_err();
    assert_eq!(e.to_string(), "cannot copy to non-directory: /file");
}

#[test]
fn add_is_copy_for_plain_files_and_refuses_what_is_not_done_yet() {
    // Archives and downloads are covered in tests/add.rs; here: what ADD copies like COPY
    // and what plan() alone refuses.
    let f = Fixture::new(&[("plain.txt", "p")], "");
    let gz = f.ctx_path().join("x.tar.gz");
    std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0]).unwrap();
    let add = |sources: &[&str], unpack| CopySpec {
        is_add: true,
        sources: sources.iter().map(|s| s.to_string()).collect(),
        dest: "/".into(),
        unpack,
        ..CopySpec::default()
    };
    f.run(add(&["plain.txt"], None)).unwrap();
    assert_eq!(f.read("/plain.txt"), "p");
    // A gzip magic with no tar inside is not an archive: copied as is.
    f.run(add(&["x.tar.gz"], None)).unwrap();
    assert_eq!(
        std::fs::metadata(f.root().join("x.tar.gz")).unwrap().len(),
        8
    );
    // URLs are downloaded by the executor beforehand; plan() alone never fetches.
    let e = f
        .run(add(&["https://example.invalid/f"], None))
        .unwrap_err();
    assert!(matches!(e, CopyError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("https://example.invalid/f"), "{e}");
    let e = f
        .run(add(&["https://example.invalid/r.git"], None))
        .unwrap_err();
    assert!(e.to_string().contains("git repository"), "{e}");
}

#[test]
fn plans_are_inspectable() {
    let f = Fixture::new(&[("a", "A")], "");
    let plan = copy::plan(
        &f.ctx,
        &CopySpec {
            sources: vec!["a".into()],
            dest: "/x/y/".into(),
            ..CopySpec::default()
        },
        f.root(),
    )
    .unwrap();
    let dests: Vec<_> = plan.ops.iter().map(|o| o.dest.as_str()).collect();
    assert_eq!(dests, ["/x", "/x/y", "/x/y/a"]);
    assert!(matches!(plan.ops[2].source, OpSource::File(_)));
    assert_eq!(plan.ops[2].source_rel.as_deref(), Some("a"));
    assert!(!f.exists("/x"), "planning writes nothing");
}

#[test]
fn workdir_is_created_for_the_user() {
    let f = Fixture::new(&[], "");
    std::fs::create_dir(f.root().join("srv")).unwrap();
    std::fs::set_permissions(f.root().join("srv"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let plan = copy::workdir_plan(
        "/srv/app/data",
        Owner {
            uid: 1000,
            gid: 1000,
        },
    );
    copy::apply(&plan, f.root(), ApplyOptions::default()).unwrap();
    let m = f.meta("/srv/app/data");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o755));
    let existing = f.meta("/srv");
    assert_eq!(
        (existing.uid(), existing.mode() & 0o7777),
        (0, 0o700),
        "existing parents are left alone"
    );
}

#[test]
fn copy_from_a_stage_root() {
    // A stage's root filesystem as a source: no ignore rules, absolute paths, links resolved
    // inside that root.
    let stage = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(stage.path().join("go/bin")).unwrap();
    std::fs::write(stage.path().join("go/bin/app"), "ELF").unwrap();
    symlink("/go/bin/app", stage.path().join("app-link")).unwrap();
    let from = BuildContext::with_patterns(stage.path(), &[] as &[&str]).unwrap();
    let root = tempfile::tempdir().unwrap();
    let spec = CopySpec {
        sources: vec!["/app-link".into()],
        dest: "/usr/local/bin/app".into(),
        ..CopySpec::default()
    };
    let plan = copy::plan(&from, &spec, root.path()).unwrap();
    copy::apply(&plan, root.path(), ApplyOptions::default()).unwrap();
    assert_eq!(
        std::fs::read_to_string(root.path().join("usr/local/bin/app")).unwrap(),
        "ELF",
        "the source's own link is followed inside the stage root"
    );
}

#[test]
fn fifos_are_copied_as_fifos_with_their_mode_and_sockets_are_skipped() {
    use std::os::unix::fs::FileTypeExt;
    let f = Fixture::new(&[("dir/plain", "p")], "");
    let mkfifo = |rel: &str, mode: u32| {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            f.ctx_path().join(rel),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        std::fs::set_permissions(f.ctx_path().join(rel), PermissionsExt::from_mode(mode)).unwrap();
    };
    mkfifo("dir/pipe", 0o640);
    mkfifo("single", 0o604);
    let _socket = std::os::unix::net::UnixListener::bind(f.ctx_path().join("dir/sock")).unwrap();
    f.copy(&["dir"], "/out/").unwrap();
    f.copy(&["single"], "/one").unwrap();
    for (path, mode) in [("/out/pipe", 0o640), ("/one", 0o604)] {
        let m = f.meta(path);
        assert!(m.file_type().is_fifo(), "{path} is not a fifo");
        assert_eq!(m.mode() & 0o7777, mode, "{path}");
    }
    assert_eq!(f.read("/out/plain"), "p");
    assert!(!f.exists("/out/sock"), "a socket must not be copied");
}
