//! Fuzz target: no `.dockerignore` text or path may make the pattern reader, the matcher or
//! the glob engine panic (or hang: the engine is an automaton, never backtracking); a line
//! splits the input into the ignore file and the paths to match against it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stagecoach_dockerfile::dockerignore::{PatternMatcher, parse};
use stagecoach_dockerfile::pattern::{Flavor, Glob};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (ignore, paths) = text.split_once("\n---\n").unwrap_or((text, "a/b/c"));
    let patterns = parse(ignore);
    if let Ok(matcher) = PatternMatcher::new(&patterns) {
        let _ = matcher.has_exclusions();
        for path in paths.lines().take(64) {
            let _ = matcher.matches(path);
        }
    }
    // Each line also as a COPY source wildcard (one path component at a time).
    for line in ignore.lines().take(16) {
        if let Ok(glob) = Glob::new(line, Flavor::Component) {
            for path in paths.lines().take(16) {
                let _ = glob.matches(path);
            }
        }
    }
});
