//! Pins the stage protocol's API: every stage reason's spelling, exit code and condition
//! reason, the exit-code mapping, and the JSON shape of jobs and results.

use std::collections::BTreeSet;

use stagecoach_protocol::condition::Reason;
use stagecoach_protocol::job::{JOB_VERSION, JobBase, JobError, StageJob};
use stagecoach_protocol::reason::{ExitCode, StageReason, condition_for_exit};
use stagecoach_protocol::result::{FailedStep, Outcome, StageResult, StepRecord};
use stagecoach_protocol::{Digest, LayerRecord};

use ExitCode::{BadInput, Infrastructure, InstructionFailed};
use Reason::{PodFailed, StageFailed};

/// The table the docs (docs/builder.md) show: spelling, exit code, condition.
const TABLE: [(StageReason, &str, Option<ExitCode>, Reason); 23] = [
    (
        StageReason::RunFailed,
        "RunFailed",
        Some(InstructionFailed),
        StageFailed,
    ),
    (
        StageReason::InvalidInstruction,
        "InvalidInstruction",
        Some(BadInput),
        StageFailed,
    ),
    (
        StageReason::CopyFailed,
        "CopyFailed",
        Some(InstructionFailed),
        StageFailed,
    ),
    (
        StageReason::ChecksumMismatch,
        "ChecksumMismatch",
        Some(InstructionFailed),
        StageFailed,
    ),
    (
        StageReason::DownloadFailed,
        "DownloadFailed",
        None,
        StageFailed,
    ),
    (
        StageReason::UnknownUser,
        "UnknownUser",
        Some(BadInput),
        StageFailed,
    ),
    (
        StageReason::Unsupported,
        "Unsupported",
        Some(BadInput),
        StageFailed,
    ),
    (
        StageReason::MissingInput,
        "MissingInput",
        Some(BadInput),
        StageFailed,
    ),
    (
        StageReason::MountMissing,
        "MountMissing",
        Some(BadInput),
        PodFailed,
    ),
    (
        StageReason::InvalidJob,
        "InvalidJob",
        Some(BadInput),
        PodFailed,
    ),
    (
        StageReason::RunnerFailed,
        "RunnerFailed",
        Some(Infrastructure),
        PodFailed,
    ),
    (
        StageReason::SnapshotFailed,
        "SnapshotFailed",
        Some(Infrastructure),
        PodFailed,
    ),
    (
        StageReason::LayerWriteFailed,
        "LayerWriteFailed",
        Some(Infrastructure),
        PodFailed,
    ),
    (
        StageReason::LayerApplyFailed,
        "LayerApplyFailed",
        Some(Infrastructure),
        PodFailed,
    ),
    (
        StageReason::StoreFailed,
        "StoreFailed",
        Some(Infrastructure),
        PodFailed,
    ),
    (
        StageReason::SourceReadFailed,
        "SourceReadFailed",
        Some(Infrastructure),
        PodFailed,
    ),
    (
        StageReason::PathResolveFailed,
        "PathResolveFailed",
        Some(Infrastructure),
        PodFailed,
    ),
    (
        StageReason::ConfigFailed,
        "ConfigFailed",
        Some(Infrastructure),
        PodFailed,
    ),
    (
        StageReason::IoFailed,
        "IoFailed",
        Some(Infrastructure),
        PodFailed,
    ),
    (
        StageReason::PullFailed,
        "PullFailed",
        Some(Infrastructure),
        PodFailed,
    ),
    (
        StageReason::NoSpace,
        "NoSpace",
        Some(Infrastructure),
        PodFailed,
    ),
    (
        StageReason::CacheFull,
        "CacheFull",
        Some(Infrastructure),
        PodFailed,
    ),
    (
        StageReason::InputGone,
        "InputGone",
        Some(Infrastructure),
        PodFailed,
    ),
];

#[test]
fn every_stage_reason_is_pinned() {
    let listed: BTreeSet<&str> = StageReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(listed.len(), StageReason::ALL.len(), "ALL has duplicates");
    let pinned: BTreeSet<&str> = TABLE.iter().map(|t| t.1).collect();
    assert_eq!(listed, pinned, "ALL and the pinned table differ");
    for (reason, text, exit, condition) in TABLE {
        assert_eq!(reason.as_str(), text);
        assert_eq!(reason.to_string(), text);
        assert_eq!(StageReason::parse(text), Some(reason));
        assert_eq!(reason.exit_code(), exit, "{text}");
        assert_eq!(reason.condition(), condition, "{text}");
        assert_eq!(
            serde_json::to_string(&reason).unwrap(),
            format!("\"{text}\""),
            "the JSON spelling is the same"
        );
        assert!(
            reason.condition().status() == stagecoach_protocol::condition::ConditionStatus::False
        );
    }
    assert_eq!(StageReason::parse("runfailed"), None);
}

#[test]
fn exit_codes_are_stable() {
    let codes: Vec<(ExitCode, i32, bool)> = ExitCode::ALL
        .iter()
        .map(|c| (*c, c.code(), c.retryable()))
        .collect();
    assert_eq!(
        codes,
        [
            (ExitCode::Ok, 0, false),
            (InstructionFailed, 1, false),
            (BadInput, 2, false),
            (Infrastructure, 3, true),
        ]
    );
    for c in ExitCode::ALL {
        assert_eq!(ExitCode::from_code(c.code()), Some(c));
    }
    assert_eq!(
        ExitCode::from_code(137),
        None,
        "an OOM kill is not our verdict"
    );
    assert_eq!(
        serde_json::to_string(&InstructionFailed).unwrap(),
        "\"instructionFailed\""
    );
}

#[test]
fn container_exits_map_to_conditions() {
    assert_eq!(condition_for_exit(0, None), Reason::Succeeded);
    assert_eq!(
        condition_for_exit(1, Some(StageReason::RunFailed)),
        StageFailed
    );
    assert_eq!(
        condition_for_exit(3, Some(StageReason::StoreFailed)),
        PodFailed
    );
    assert_eq!(
        condition_for_exit(2, Some(StageReason::MountMissing)),
        PodFailed
    );
    // No result written: our own codes still say whose fault it was.
    assert_eq!(condition_for_exit(1, None), StageFailed);
    assert_eq!(condition_for_exit(2, None), StageFailed);
    assert_eq!(condition_for_exit(3, None), PodFailed);
    // Killed (OOM: 137) or a missing binary (127): the pod failed, whatever a stale result says.
    assert_eq!(condition_for_exit(137, None), PodFailed);
    assert_eq!(
        condition_for_exit(127, Some(StageReason::RunFailed)),
        PodFailed
    );
}

fn digest(byte: &str) -> Digest {
    Digest::of_bytes(byte.as_bytes())
}

fn layer(n: &str) -> LayerRecord {
    LayerRecord {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        digest: digest(n),
        diff_id: digest(&format!("diff {n}")),
        size: 10,
    }
}

#[test]
fn results_fit_a_termination_message_and_read_back() {
    let result = StageResult {
        outcome: Outcome::Failed,
        reason: Some(StageReason::RunFailed),
        message: Some("line 5: `RUN make` exited with code 2 ".repeat(80)),
        failed_step: Some(FailedStep {
            instruction: "RUN make".into(),
            line: 5,
            exit_code: Some(2),
            tail: (0..40)
                .map(|i| format!("output line {i} {}", "x".repeat(60)))
                .collect(),
        }),
        exit_code: 1,
        layers: vec![layer("a"), layer("b")],
        config_digest: None,
        config_size: None,
        cache_hits: 1,
        steps: (1..50)
            .map(|i| StepRecord {
                step: i,
                line: i + 1,
                keyword: "RUN".into(),
                cached: false,
                duration_ms: 3,
                layer: Some(digest("l")),
            })
            .collect(),
        duration_ms: 1000,
    };
    let full = serde_json::to_vec(&result).unwrap();
    assert!(full.len() > 4096);
    let small = result.to_json_within(4096);
    assert!(small.len() <= 4096, "{}", small.len());
    let back: StageResult = serde_json::from_slice(&small).unwrap();
    assert_eq!(back.reason, Some(StageReason::RunFailed));
    assert_eq!(back.layers, result.layers, "layers are never dropped");
    assert!(back.steps.is_empty());
    let tail = back.failed_step.unwrap().tail;
    assert!(!tail.is_empty() && tail.len() < 40);
    assert_eq!(
        tail.last(),
        result.failed_step.unwrap().tail.last(),
        "the last lines stay"
    );
    let json: serde_json::Value = serde_json::from_slice(&small).unwrap();
    assert_eq!(json["reason"], "RunFailed");
    assert_eq!(json["layers"][0]["diffId"], digest("diff a").as_str());
}

#[test]
fn jobs_round_trip_and_refuse_other_versions() {
    let job = StageJob {
        version: JOB_VERSION,
        build: "uid-1".into(),
        dockerfile: "FROM busybox\nRUN true\n".into(),
        dockerfile_path: Some("Dockerfile".into()),
        stage: 0,
        label: "0".into(),
        build_args: [("V".to_string(), "1".to_string())].into(),
        base: JobBase::Image {
            reference: "r/busybox@sha256:...".into(),
            manifest: digest("m"),
            config: serde_json::json!({"architecture": "amd64", "os": "linux"}),
            layers: vec![layer("base")],
        },
        root: "/".into(),
        apply: vec![],
        context: "/cache/builds/uid-1/context".into(),
        cache: "/cache".into(),
        stages: vec![],
        images: vec![],
        secrets: vec![],
        options: Default::default(),
        export: None,
        export_shared: false,
        export_paths: None,
        result: None,
        cache_mounts: Vec::new(),
        wait_for: Vec::new(),
    };
    let bytes = serde_json::to_vec(&job).unwrap();
    assert_eq!(StageJob::from_json(&bytes).unwrap(), job);
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["base"]["kind"], "image");

    let mut other = json.clone();
    other["version"] = 2.into();
    let err = StageJob::from_json(&serde_json::to_vec(&other).unwrap()).unwrap_err();
    assert!(matches!(err, JobError::Version { found: 2 }), "{err}");

    let mut typo = json;
    typo["buildArg"] = serde_json::json!({});
    let err = StageJob::from_json(&serde_json::to_vec(&typo).unwrap()).unwrap_err();
    assert!(
        err.to_string().contains("buildArg"),
        "an unknown field is named: {err}"
    );
}
