//! Condition types and reasons of an ImageBuild. They are spelled once, in
//! `stagecoach-protocol` (the stage protocol maps a stage's failure onto them), and
//! re-exported here so users of the API types find them beside the status.

pub use stagecoach_protocol::condition::{
    ConditionStatus, READY, RECONCILING, Reason, STALLED, SUCCEEDED, UnknownReason,
};
