#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Cache keys over a real context: a change reaches exactly the keys of the instructions that
//! read it and those after them.

use std::path::Path;

use stagecoach_builder::cache_key::{CacheKey, digest_copy_plan, digest_source};
use stagecoach_builder::context::BuildContext;
use stagecoach_builder::copy::{self, CopySpec};
use stagecoach_builder::image_state::{ArgSource, ImageState};
use stagecoach_dockerfile::Dockerfile;
use stagecoach_dockerfile::instructions::Instruction;
use stagecoach_dockerfile::shell::ShellLex;

const DOCKERFILE: &str = "FROM scratch
COPY go.mod /src/
ARG VERSION=1
RUN make deps
COPY cmd /src/cmd
ENV V=$VERSION
RUN make
";

/// The key of every instruction, computed the way the executor will.
fn keys(context: &Path, build_args: &[(&str, &str)]) -> Vec<String> {
    let ctx = BuildContext::open(context).unwrap();
    let rootfs = tempfile::tempdir().unwrap();
    let d = Dockerfile::parse(DOCKERFILE).unwrap();
    let lex = ShellLex::new(d.escape);
    let mut args = ArgSource::default();
    for (k, v) in build_args {
        args.build_args.insert(k.to_string(), v.to_string());
    }
    let mut state = ImageState::scratch();
    let mut parent = "sha256:scratch".to_string();
    let mut out = Vec::new();
    for located in &d.stages[0].instructions {
        let key = match &located.instruction {
            Instruction::Copy(c) => {
                let e = state.expand_transfer(&lex, "COPY", &c.transfer).unwrap();
                let h = ImageState::transfer_history("COPY", &c.transfer, &e);
                let plan = copy::plan(
                    &ctx,
                    &CopySpec {
                        sources: e.sources.clone(),
                        dest: e.dest.clone(),
                        workdir: state.working_dir.clone(),
                        ..CopySpec::default()
                    },
                    rootfs.path(),
                )
                .unwrap();
                CacheKey::new(&parent, &h.created_by)
                    .input("copy", &digest_copy_plan(&plan).unwrap())
            }
            Instruction::Run(r) => {
                let h = state.run_history(r, &args);
                let env = state.run_env(&args);
                CacheKey::new(&parent, &h.created_by)
                    .args(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            }
            other => {
                let applied = state.apply(&lex, other, &args).unwrap();
                let env = state.expansion_env();
                let used: Vec<(String, String)> = applied
                    .used_args
                    .iter()
                    .filter_map(|n| {
                        env.iter()
                            .rev()
                            .find(|(k, _)| k == n)
                            .map(|(k, v)| (k.clone(), v.clone()))
                    })
                    .collect();
                let text = applied.history.map(|h| h.created_by).unwrap_or_default();
                CacheKey::new(&parent, &text)
                    .args(used.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            }
        };
        parent = key.digest();
        out.push(parent.clone());
    }
    out
}

fn context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("go.mod"), "module x\n").unwrap();
    std::fs::create_dir_all(dir.path().join("cmd/app")).unwrap();
    std::fs::write(dir.path().join("cmd/app/main.go"), "package main\n").unwrap();
    std::fs::write(dir.path().join("cmd/app/notes.tmp"), "scratch\n").unwrap();
    std::fs::write(dir.path().join(".dockerignore"), "**/*.tmp\n").unwrap();
    dir
}

#[test]
fn same_inputs_same_keys() {
    let a = context();
    let b = context();
    assert_eq!(
        keys(a.path(), &[]),
        keys(b.path(), &[]),
        "paths and mtimes do not matter"
    );
}

#[test]
fn a_change_invalidates_from_its_reader_on() {
    let dir = context();
    let before = keys(dir.path(), &[]);

    std::fs::write(
        dir.path().join("cmd/app/main.go"),
        "package main // changed\n",
    )
    .unwrap();
    let after = keys(dir.path(), &[]);
    // COPY go.mod, ARG and RUN make deps keep their keys; COPY cmd and everything after change.
    assert_eq!(before[..3], after[..3]);
    for i in 3..before.len() {
        assert_ne!(before[i], after[i], "instruction {i}");
    }

    std::fs::write(dir.path().join("go.mod"), "module y\n").unwrap();
    let again = keys(dir.path(), &[]);
    for i in 0..before.len() {
        assert_ne!(
            after[i], again[i],
            "the first COPY reads go.mod: instruction {i}"
        );
    }
}

#[test]
fn ignored_files_and_modes() {
    let dir = context();
    let before = keys(dir.path(), &[]);
    std::fs::write(dir.path().join("cmd/app/notes.tmp"), "other\n").unwrap();
    assert_eq!(before, keys(dir.path(), &[]), "ignored files are not read");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path().join("cmd/app/main.go"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let after = keys(dir.path(), &[]);
    assert_eq!(before[..3], after[..3]);
    assert_ne!(before[3], after[3], "a mode change is a change");
}

#[test]
fn build_args_reach_only_their_users() {
    let dir = context();
    let before = keys(dir.path(), &[]);
    let after = keys(dir.path(), &[("VERSION", "2")]);
    // Before the ARG nothing changes; the ARG's own history shows the value in force (as
    // BuildKit records it), so it and everything after change.
    assert_eq!(before[0], after[0]);
    assert_ne!(before[1], after[1]);
    assert_eq!(
        before,
        keys(dir.path(), &[("UNDECLARED", "x")]),
        "a build arg no ARG declares is read by nothing"
    );
}

#[test]
fn source_digests() {
    let dir = context();
    let ctx = BuildContext::open(dir.path()).unwrap();
    let d1 = digest_source(&ctx, "cmd").unwrap();
    std::fs::write(dir.path().join("cmd/app/notes.tmp"), "other\n").unwrap();
    assert_eq!(d1, digest_source(&ctx, "cmd").unwrap());
    std::fs::write(dir.path().join("cmd/app/new.go"), "package main\n").unwrap();
    assert_ne!(d1, digest_source(&ctx, "cmd").unwrap());
    assert_ne!(digest_source(&ctx, "go.mod").unwrap(), d1);
}
