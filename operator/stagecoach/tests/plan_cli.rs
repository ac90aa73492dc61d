//! `stagecoach plan` end to end: the real binary on the example Dockerfiles, checking the
//! JSON contract of docs/cli.md, the text output, and that bad input exits non-zero with a
//! message that names what is wrong.

// Test helpers outside #[test] functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/patterns")
}

fn stagecoach(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stagecoach"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stagecoach runs");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().expect("stagecoach finishes")
}

fn plan_json(file: &str, extra: &[&str]) -> Value {
    let path = examples().join(file);
    let mut args = vec![
        "plan",
        "-f",
        path.to_str().expect("utf-8 path"),
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = stagecoach(&args, None);
    assert!(
        out.status.success(),
        "plan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("plan prints JSON")
}

fn plan_err(text: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["plan", "-f", "-"];
    args.extend_from_slice(extra);
    let out = stagecoach(&args, Some(text));
    assert!(
        !out.status.success(),
        "plan unexpectedly succeeded on {text:?}"
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn builder_to_scratch() {
    let plan = plan_json("builder-scratch.Dockerfile", &[]);
    assert_eq!(
        plan,
        json!({
            "stages": [
                {"index": 0, "name": "builder", "base": {"image": "golang:1.23"}, "dependsOn": [], "images": [], "needed": true},
                {"index": 1, "name": null, "base": {"scratch": true}, "dependsOn": [0], "images": [], "needed": true}
            ],
            "targets": [1],
            "waves": [[0], [1]]
        })
    );
}

#[test]
fn shared_base_builds_only_what_the_target_needs() {
    let prod = plan_json("shared-base.Dockerfile", &["--target", "prod"]);
    assert_eq!(prod["targets"], json!([2]));
    assert_eq!(prod["waves"], json!([[0], [2]]));
    assert_eq!(prod["stages"][1]["needed"], json!(false));
    assert_eq!(prod["stages"][2]["base"], json!({"stage": 0}));
    let both = plan_json(
        "shared-base.Dockerfile",
        &["--target", "TEST", "--target", "prod"],
    );
    assert_eq!(both["targets"], json!([1, 2]));
    assert_eq!(both["waves"], json!([[0], [1, 2]]));
}

#[test]
fn fan_out_runs_independent_stages_in_one_wave() {
    let plan = plan_json("fan-out.Dockerfile", &[]);
    assert_eq!(plan["waves"], json!([[0, 1, 2], [3]]));
    assert_eq!(plan["stages"][3]["dependsOn"], json!([0, 1, 2]));
    assert_eq!(plan["stages"][3]["images"], json!(["nginx:1.27"]));
    assert_eq!(plan["stages"][3]["base"], json!({"image": "busybox"}));
}

#[test]
fn arg_in_from_with_defaults_and_overrides() {
    let plan = plan_json("arg-in-from.Dockerfile", &[]);
    assert_eq!(
        plan["stages"][0]["base"],
        json!({"image": "docker.io/library/golang:1.23"})
    );
    assert_eq!(
        plan["stages"][1]["base"],
        json!({"image": "docker.io/library/busybox:latest"})
    );
    let plan = plan_json(
        "arg-in-from.Dockerfile",
        &[
            "--build-arg",
            "GO_VERSION=1.24",
            "--build-arg",
            "REGISTRY=registry.local:5000/library",
        ],
    );
    assert_eq!(
        plan["stages"][0]["base"],
        json!({"image": "registry.local:5000/library/golang:1.24"})
    );
    // BUSYBOX_TAG is not a global ARG, so --build-arg cannot set it (as in BuildKit).
    assert_eq!(
        plan["stages"][1]["base"],
        json!({"image": "registry.local:5000/library/busybox:latest"})
    );
}

#[test]
fn text_format_shows_waves_and_targets() {
    let path = examples().join("shared-base.Dockerfile");
    let out = stagecoach(
        &[
            "plan",
            "-f",
            path.to_str().expect("utf-8"),
            "--target",
            "prod",
        ],
        None,
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("wave 0") && text.contains("wave 1"), "{text}");
    assert!(
        text.contains("prod (from stage base)") && text.contains("target"),
        "{text}"
    );
    assert!(text.contains("not needed: test"), "{text}");
}

#[test]
fn unknown_target_fails_naming_it() {
    let (code, err) = plan_err(
        "FROM a AS build\nFROM b AS prod\n",
        &["--target", "release"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown target \"release\"") && err.contains("build, prod"),
        "{err}"
    );
}

#[test]
fn bad_references_fail_naming_stage_and_line() {
    let (_, err) = plan_err("FROM a AS one\nCOPY --from=two /x /x\nFROM b AS two\n", &[]);
    assert!(
        err.contains("line 2") && err.contains("one") && err.contains("two"),
        "{err}"
    );
    let (_, err) = plan_err("FROM a AS one\nCOPY --from=one /x /x\n", &[]);
    assert!(err.contains("itself"), "{err}");
    let (_, err) = plan_err("FROM a\nCOPY --from=$STAGE /x /x\n", &[]);
    assert!(
        err.contains("line 2") && err.contains("not expanded"),
        "{err}"
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let (code, err) = plan_err("FROM a\n\nRUN <<EOF\necho\n", &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("lines 3-4") && err.contains("unterminated heredoc"),
        "{err}"
    );
    let (_, err) = plan_err("FROM a\nRUNN x\n", &[]);
    assert!(err.contains("line 2: unknown instruction: RUNN"), "{err}");
    let (_, err) = plan_err("ARG V\nFROM ${V}\n", &[]);
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let out = stagecoach(&["plan", "-f", "/nonexistent/Dockerfile"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/Dockerfile"));
    let (code, err) = plan_err("FROM a\n", &["--build-arg", "=x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--build-arg"), "{err}");
}
