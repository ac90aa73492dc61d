//! ImageBuild objects in every state the controller writes, as `e2e/gitops/testdata/*.json`,
//! made by the controller's own status code. `e2e/gitops` runs Argo CD's health check (in
//! gopher-lua, the VM Argo CD embeds) and Flux's `kstatus` on them, so the conditions GitOps
//! tools read are tested against what the controller really writes. This test fails when
//! the committed files drift from the code; regenerate them with
//! `STAGECOACH_UPDATE_FIXTURES=1 cargo test -p stagecoach-controller --test gitops_fixtures`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use stagecoach_api::{ImageBuildStatus, Reason};
use stagecoach_controller::status::with_reason;

fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

fn object(generation: i64, status: Option<ImageBuildStatus>) -> serde_json::Value {
    let mut object = serde_json::json!({
        "apiVersion": "stagecoach.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": "who", "namespace": "demo", "generation": generation},
        "spec": {"source": {"git": {"url": "https://git.example/who.git"}},
                 "image": "registry.example/who:1"},
    });
    if let Some(status) = status {
        object["status"] = serde_json::to_value(status).unwrap();
    }
    object
}

fn fixtures() -> Vec<(String, serde_json::Value)> {
    let mut out = vec![("new".to_string(), object(1, None))];
    let pending = with_reason(
        None,
        1,
        Reason::Pending,
        "resolving the base image",
        vec![],
        at(1_800_000_010),
    );
    out.push(("pending".into(), object(1, Some(pending.clone()))));
    let building = with_reason(
        Some(&pending),
        1,
        Reason::Building,
        "1 of 3 stages built",
        vec![],
        at(1_800_000_020),
    );
    out.push(("building".into(), object(1, Some(building.clone()))));
    let succeeded = with_reason(
        Some(&building),
        1,
        Reason::Succeeded,
        "built 3 stages and pushed 1 images",
        vec![],
        at(1_800_000_030),
    );
    out.push(("succeeded".into(), object(1, Some(succeeded.clone()))));
    // The spec changed; the controller has not seen it yet.
    out.push(("stale".into(), object(2, Some(succeeded))));
    for reason in Reason::ALL {
        if reason.status() != stagecoach_api::ConditionStatus::False {
            continue;
        }
        let failed = with_reason(
            Some(&building),
            1,
            reason,
            &format!("stage app: what went wrong ({reason})"),
            vec![],
            at(1_800_000_040),
        );
        out.push((
            format!("failed-{}", reason.as_str()),
            object(1, Some(failed)),
        ));
    }
    out
}

#[test]
fn gitops_fixtures_match_the_controller() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../e2e/gitops/testdata");
    let update = std::env::var_os("STAGECOACH_UPDATE_FIXTURES").is_some_and(|v| v == "1");
    let fixtures = fixtures();
    for (name, value) in &fixtures {
        let path = dir.join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(value).unwrap() + "\n";
        if update {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            committed,
            text,
            "{} is out of date; regenerate with STAGECOACH_UPDATE_FIXTURES=1 cargo test -p stagecoach-controller --test gitops_fixtures",
            path.display()
        );
    }
    // No fixture that the code no longer makes.
    let names: Vec<String> = fixtures.iter().map(|(n, _)| format!("{n}.json")).collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().to_string();
        assert!(
            names.contains(&file),
            "{file} in {} is not made by this test",
            dir.display()
        );
    }
}
