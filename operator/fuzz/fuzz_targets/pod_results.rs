//! Fuzz target: what the controller reads from pods is untrusted (a RUN step runs as root
//! in the same container and can write the termination-message file or the log). No bytes
//! may make the readers of a stage result, a push or fetch result, or the Dockerfile a fetch
//! pod prints to its log panic; a result that parses must also survive being cut to the
//! termination message's size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stagecoach_protocol::job::{FetchResult, PushResult, dockerfile_from_log};
use stagecoach_protocol::result::{StageResult, TERMINATION_MESSAGE_LIMIT};
use stagecoach_protocol::{Digest, StageReason};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(result) = serde_json::from_str::<StageResult>(text) {
        let cut = result.to_json_within(TERMINATION_MESSAGE_LIMIT);
        assert!(
            serde_json::from_slice::<StageResult>(&cut).is_ok(),
            "a result cut to size no longer parses"
        );
        let _ = result.reason.map(StageReason::condition);
    }
    let _ = serde_json::from_str::<PushResult>(text);
    let _ = Digest::parse(text);
    let _ = StageReason::parse(text);
    // The first line as the fetch pod's result, the rest as its log.
    let (head, log) = text.split_once('\n').unwrap_or((text, ""));
    if let Ok(fetched) = serde_json::from_str::<FetchResult>(head) {
        let _ = dockerfile_from_log(log, &fetched);
    }
});
