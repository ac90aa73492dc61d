//! The status step's pure half: what `status` an ImageBuild gets for a reason and message.
//! The `Succeeded` condition keeps its `lastTransitionTime` while its status does not change
//! (Kubernetes' convention, and what lets a reader tell how long a build has been in a state),
//! messages are cut to the API's bound, and `observedGeneration` names the generation the
//! status describes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use stagecoach_api::bounds;
use stagecoach_api::{
    ConditionStatus, ImageBuildStatus, READY, RECONCILING, Reason, STALLED, SUCCEEDED, StageState,
    StageStatus,
};
use stagecoach_dockerfile::planner::Plan;

/// Whether `status` holds the final verdict (Succeeded True or False) of `generation`:
/// nothing changes until the spec does.
pub fn has_final_verdict(status: Option<&ImageBuildStatus>, generation: i64) -> bool {
    status.is_some_and(|s| {
        s.observed_generation == Some(generation)
            && s.succeeded()
                .is_some_and(|c| c.status != stagecoach_api::ConditionStatus::Unknown.as_str())
    })
}

/// One `Pending` entry per stage the plan needs, in Dockerfile order, named as the API
/// says (the lower-case name, else the index).
pub fn pending_stages(plan: &Plan) -> Vec<StageStatus> {
    let mut needed: Vec<usize> = plan.waves.iter().flatten().copied().collect();
    needed.sort_unstable();
    needed
        .into_iter()
        .map(|i| {
            let stage = &plan.stages[i];
            StageStatus {
                name: stage.name.clone().unwrap_or_else(|| i.to_string()),
                index: i32::try_from(i).unwrap_or(i32::MAX),
                state: StageState::Pending,
                ..StageStatus::default()
            }
        })
        .collect()
}

/// The plan's stages with what `previous` (at this generation) says of those already done (a later wave's image
/// may fail to resolve after earlier stages succeeded), and every other stage in `rest`.
pub fn stages_kept(
    plan: &Plan,
    previous: Option<&ImageBuildStatus>,
    generation: i64,
    rest: StageState,
) -> Vec<StageStatus> {
    let previous = previous.filter(|p| p.observed_generation == Some(generation));
    pending_stages(plan)
        .into_iter()
        .map(|stage| {
            previous
                .and_then(|p| p.stages.iter().find(|s| s.name == stage.name))
                .filter(|s| s.state.is_done())
                .cloned()
                .unwrap_or(StageStatus {
                    state: rest,
                    ..stage
                })
        })
        .collect()
}

/// Whether this generation has been `Pending` (waiting for an image's registry) for longer
/// than `limit`: the condition's lastTransitionTime says since when.
pub fn pending_longer_than(
    previous: Option<&ImageBuildStatus>,
    generation: i64,
    now: k8s_openapi::jiff::Timestamp,
    limit: std::time::Duration,
) -> bool {
    let Some(condition) = previous.and_then(|p| p.succeeded()) else {
        return false;
    };
    condition.reason == Reason::Pending.as_str()
        && condition.observed_generation == Some(generation)
        && now
            .duration_since(condition.last_transition_time.0)
            .unsigned_abs()
            > limit
}

/// The status for `reason` at `generation`, built on `previous`, with `stages` (empty when
/// they are not known).
pub fn with_reason(
    previous: Option<&ImageBuildStatus>,
    generation: i64,
    reason: Reason,
    message: &str,
    stages: Vec<StageStatus>,
    now: Time,
) -> ImageBuildStatus {
    let message = truncate(message, bounds::MAX_CONDITION_MESSAGE as usize);
    // Each condition keeps its lastTransitionTime while its status stays.
    let condition = |type_: &str, status: ConditionStatus| {
        let status = status.as_str().to_string();
        let last_transition_time =
            match previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == type_)) {
                Some(c) if c.status == status && c.observed_generation == Some(generation) => {
                    c.last_transition_time.clone()
                }
                _ => now.clone(),
            };
        Condition {
            type_: type_.to_string(),
            status,
            reason: reason.as_str().to_string(),
            message: message.clone(),
            last_transition_time,
            observed_generation: Some(generation),
        }
    };
    let verdict = reason.status();
    let flag = |on: bool| {
        if on {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    };
    // Succeeded is ours; Ready, Reconciling and Stalled say the same in the words kstatus,
    // Flux and Argo CD read.
    let conditions = vec![
        condition(SUCCEEDED, verdict),
        condition(READY, verdict),
        condition(RECONCILING, flag(verdict == ConditionStatus::Unknown)),
        condition(STALLED, flag(verdict == ConditionStatus::False)),
    ];
    let same_generation = previous.and_then(|p| p.observed_generation) == Some(generation);
    let done = reason.status() != stagecoach_api::ConditionStatus::Unknown;
    ImageBuildStatus {
        conditions,
        observed_generation: Some(generation),
        start_time: previous
            .filter(|_| same_generation)
            .and_then(|p| p.start_time.clone())
            .or_else(|| Some(now.clone())),
        completion_time: done.then_some(now),
        stages_summary: (!stages.is_empty()).then(|| ImageBuildStatus::summarize_stages(&stages)),
        stages,
        images: Vec::new(),
        source: None,
    }
}

/// Whether `status` says something `previous` does not: times aside (a condition's
/// `lastTransitionTime` and the completion time follow from the rest), so an unchanged build
/// is not written again, and every change of a stage's state, pod or node is.
pub fn differs(previous: Option<&ImageBuildStatus>, status: &ImageBuildStatus) -> bool {
    let Some(previous) = previous else {
        return true;
    };
    let timeless = |s: &ImageBuildStatus| {
        let mut s = s.clone();
        s.completion_time = None;
        for c in &mut s.conditions {
            c.last_transition_time = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        }
        s
    };
    timeless(previous) != timeless(status)
}

/// At most `limit` bytes, cut on a character boundary with a note that it was cut.
pub(crate) fn truncate(message: &str, limit: usize) -> String {
    if message.len() <= limit {
        return message.to_string();
    }
    const MARK: &str = " … (cut)";
    let mut cut = limit.saturating_sub(MARK.len());
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{MARK}", &message[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn pending_too_long_counts_from_the_transition_at_this_generation() {
        let limit = std::time::Duration::from_secs(120);
        let pending = with_reason(None, 2, Reason::Pending, "waiting", vec![], at(1000));
        let now = |s| Timestamp::from_second(s).unwrap();
        assert!(!pending_longer_than(Some(&pending), 2, now(1100), limit));
        assert!(pending_longer_than(Some(&pending), 2, now(1121), limit));
        // Another generation, or another reason, starts the clock again.
        assert!(!pending_longer_than(Some(&pending), 3, now(5000), limit));
        let building = with_reason(Some(&pending), 2, Reason::Building, "", vec![], at(1050));
        assert!(!pending_longer_than(Some(&building), 2, now(5000), limit));
        assert!(!pending_longer_than(None, 2, now(5000), limit));
    }

    #[test]
    fn stages_kept_keeps_what_this_generation_finished() {
        let dockerfile = stagecoach_dockerfile::Dockerfile::parse(
            "FROM a AS one\nFROM b AS two\nCOPY --from=one /x /x\n",
        )
        .unwrap();
        let plan = stagecoach_dockerfile::planner::plan(&dockerfile, &Default::default()).unwrap();
        let mut earlier = with_reason(None, 4, Reason::Building, "", pending_stages(&plan), at(10));
        earlier.stages[0].state = StageState::Succeeded;
        let kept = stages_kept(&plan, Some(&earlier), 4, StageState::Skipped);
        let states: Vec<_> = kept.iter().map(|s| (s.name.as_str(), s.state)).collect();
        assert_eq!(
            states,
            [("one", StageState::Succeeded), ("two", StageState::Skipped)]
        );
        // What an older generation finished is not this one's.
        let kept = stages_kept(&plan, Some(&earlier), 5, StageState::Pending);
        assert!(
            kept.iter().all(|s| s.state == StageState::Pending),
            "{kept:?}"
        );
    }

    #[test]
    fn transitions_keep_their_time_until_the_status_changes() {
        let first = with_reason(None, 1, Reason::Pending, "waiting", vec![], at(10));
        let c = first.succeeded().unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("Unknown", "Pending")
        );
        assert_eq!(c.last_transition_time, at(10));
        assert_eq!(first.start_time, Some(at(10)));
        assert_eq!(first.completion_time, None);

        let again = with_reason(Some(&first), 1, Reason::Building, "running", vec![], at(20));
        assert_eq!(again.succeeded().unwrap().last_transition_time, at(10));
        assert_eq!(again.start_time, Some(at(10)));

        let failed = with_reason(
            Some(&again),
            1,
            Reason::StageFailed,
            "line 3",
            vec![],
            at(30),
        );
        let c = failed.succeeded().unwrap();
        assert_eq!(
            (c.status.as_str(), c.last_transition_time.clone()),
            ("False", at(30))
        );
        assert_eq!(failed.completion_time, Some(at(30)));

        let next = with_reason(
            Some(&failed),
            2,
            Reason::Pending,
            "new spec",
            vec![],
            at(40),
        );
        assert_eq!(
            next.start_time,
            Some(at(40)),
            "a new generation is a new build"
        );
        assert_eq!(next.observed_generation, Some(2));
    }

    #[test]
    fn needed_stages_are_listed_pending_in_dockerfile_order() {
        let df = stagecoach_dockerfile::Dockerfile::parse(
            "FROM busybox AS Tools\nFROM busybox\nFROM busybox AS unused\nFROM scratch AS out\nCOPY --from=1 /a /a\nCOPY --from=tools /b /b\n",
        )
        .unwrap();
        let plan = stagecoach_dockerfile::planner::plan(&df, &Default::default()).unwrap();
        let stages = pending_stages(&plan);
        let named: Vec<(&str, i32)> = stages.iter().map(|s| (s.name.as_str(), s.index)).collect();
        assert_eq!(named, [("tools", 0), ("1", 1), ("out", 3)]);
        assert!(stages.iter().all(|s| s.state == StageState::Pending));
        let status = with_reason(None, 1, Reason::Pending, "ok", stages, at(1));
        assert_eq!(status.stages_summary.as_deref(), Some("0/3"));
    }

    #[test]
    fn long_messages_are_cut_to_the_bound() {
        let long = "é".repeat(40_000);
        let s = with_reason(None, 1, Reason::InvalidDockerfile, &long, vec![], at(1));
        let m = &s.succeeded().unwrap().message;
        assert!(m.len() <= bounds::MAX_CONDITION_MESSAGE as usize);
        assert!(m.ends_with("(cut)"));
    }
}
