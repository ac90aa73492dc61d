//! BuildKit conformance: runs BuildKit's own Dockerfile parser test files and shell-expansion
//! vectors (kept in `../shared/conformance/buildkit`, or `$STAGECOACH_BUILDKIT_TESTFILES`)
//! against this crate, prints one summary line and fails unless every case passes.

// Test helpers outside #[test] functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "conformance/outcome.rs"]
mod outcome;
#[path = "conformance/parser_files.rs"]
mod parser_files;
#[path = "conformance/shell_vectors.rs"]
mod shell_vectors;

use std::path::PathBuf;

use outcome::Outcome;

/// The conformance folder: `$STAGECOACH_BUILDKIT_TESTFILES`, else `shared/conformance/buildkit`
/// beside the checkout (found by walking up from this crate).
fn conformance_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("STAGECOACH_BUILDKIT_TESTFILES") {
        return Some(PathBuf::from(dir));
    }
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|a| a.join("shared/conformance/buildkit"))
        .find(|p| p.is_dir())
}

#[test]
fn buildkit_conformance() {
    let Some(dir) = conformance_dir() else {
        println!(
            "buildkit conformance: SKIPPED (no shared/conformance/buildkit found and \
             STAGECOACH_BUILDKIT_TESTFILES is unset)"
        );
        return;
    };
    assert!(
        dir.is_dir(),
        "conformance folder {} does not exist",
        dir.display()
    );
    let parser = parser_files::run_positive(&dir.join("parser/testfiles"));
    let negative = parser_files::run_negative(&dir.join("parser/testfiles-negative"));
    let env_var = shell_vectors::run_env_var_test(&dir.join("shell/envVarTest"));
    let words = shell_vectors::run_words_test(&dir.join("shell/wordsTest"));
    println!(
        "buildkit conformance: parser {}, negative {}, envVarTest {}, wordsTest {}",
        parser.ratio(),
        negative.ratio(),
        env_var.ratio(),
        words.ratio()
    );
    let all: Vec<&Outcome> = vec![&parser, &negative, &env_var, &words];
    let failures: Vec<&String> = all.iter().flat_map(|o| o.failures.iter()).collect();
    for f in &failures {
        println!("FAIL {f}");
    }
    assert!(
        all.iter().all(|o| o.total > 0),
        "a conformance set had no cases"
    );
    assert!(
        failures.is_empty(),
        "{} conformance case(s) failed",
        failures.len()
    );
}
