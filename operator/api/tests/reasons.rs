//! Condition reasons and stage states are API: scripts match on the strings, the controller
//! uses them for events and metric labels. These tests pin every spelling, so renaming one is
//! a deliberate, visible change.

use stagecoach_api::{ConditionStatus, ImageBuildStatus, Reason, StageState, StageStatus};

#[test]
fn reason_spellings_and_statuses_are_stable() {
    let table: Vec<(&str, &str)> = Reason::ALL
        .iter()
        .map(|r| (r.as_str(), r.status().as_str()))
        .collect();
    assert_eq!(
        table,
        [
            ("Pending", "Unknown"),
            ("Building", "Unknown"),
            ("Succeeded", "True"),
            ("InvalidSpec", "False"),
            ("SourceFetchFailed", "False"),
            ("InvalidDockerfile", "False"),
            ("UnknownTarget", "False"),
            ("ResolveFailed", "False"),
            ("StageFailed", "False"),
            ("PodFailed", "False"),
            ("PushFailed", "False"),
            ("Timeout", "False"),
        ]
    );
}

#[test]
fn reasons_parse_back_and_reject_strangers() {
    for reason in Reason::ALL {
        assert_eq!(reason.as_str().parse::<Reason>(), Ok(reason));
        assert_eq!(reason.to_string(), reason.as_str());
    }
    assert!("succeeded".parse::<Reason>().is_err());
    assert!("".parse::<Reason>().is_err());
}

#[test]
fn only_succeeded_is_true() {
    let true_reasons: Vec<Reason> = Reason::ALL
        .into_iter()
        .filter(|r| r.status() == ConditionStatus::True)
        .collect();
    assert_eq!(true_reasons, [Reason::Succeeded]);
}

#[test]
fn stage_states_serialize_as_their_names() {
    for state in StageState::ALL {
        assert_eq!(
            serde_json::to_value(state).expect("serializes"),
            serde_json::Value::String(state.as_str().to_owned())
        );
    }
    assert!(serde_json::from_str::<StageState>("\"running\"").is_err());
}

#[test]
fn stages_summary_counts_succeeded_and_cached() {
    let stage = |state| StageStatus {
        state,
        ..Default::default()
    };
    assert_eq!(ImageBuildStatus::summarize_stages(&[]), "0/0");
    let all: Vec<StageStatus> = StageState::ALL.into_iter().map(stage).collect();
    assert_eq!(ImageBuildStatus::summarize_stages(&all), "2/6");
    let finals: Vec<StageState> = StageState::ALL
        .into_iter()
        .filter(|s| s.is_final())
        .collect();
    assert_eq!(
        finals,
        [
            StageState::Succeeded,
            StageState::Failed,
            StageState::Skipped,
            StageState::Cached
        ]
    );
}
