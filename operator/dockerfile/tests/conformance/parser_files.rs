//! BuildKit's parser test files: each `testfiles/*/Dockerfile` parsed and dumped in BuildKit's
//! AST dump format must equal its `result`; each `testfiles-negative/*/Dockerfile` must fail.

use std::path::{Path, PathBuf};

use stagecoach_dockerfile::parser::{self, Node};

use super::outcome::Outcome;

/// Each case folder's name and its Dockerfile's text, in name order.
fn cases(dir: &Path) -> Vec<(String, PathBuf, String)> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|case| {
            let name = case
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text =
                std::fs::read_to_string(case.join("Dockerfile")).expect("Dockerfile readable");
            (name, case, text)
        })
        .collect()
}

/// BuildKit's dump of the whole file: one parenthesised node per line.
fn dump(nodes: &[Node]) -> String {
    nodes.iter().map(|n| format!("{}\n", n.dump())).collect()
}

pub fn run_positive(dir: &Path) -> Outcome {
    let mut outcome = Outcome::default();
    for (name, case, text) in cases(dir) {
        let expected = std::fs::read_to_string(case.join("result")).expect("result readable");
        // BuildKit's test compares after normalising Windows line endings in the result.
        let expected = expected.replace("\r\n", "\n");
        match parser::parse(&text) {
            Ok(parsed) => {
                let got = dump(&parsed.nodes);
                outcome.record(got == expected, || {
                    format!("parser {name}: dump differs\n--- expected\n{expected}--- got\n{got}")
                });
            }
            Err(e) => outcome.record(false, || format!("parser {name}: failed to parse: {e}")),
        }
    }
    outcome
}

pub fn run_negative(dir: &Path) -> Outcome {
    let mut outcome = Outcome::default();
    for (name, _, text) in cases(dir) {
        // Like BuildKit's negative test, a file passes when parsing or reading its
        // instructions fails.
        let failed = stagecoach_dockerfile::Dockerfile::parse(&text).is_err();
        outcome.record(failed, || format!("negative {name}: parsed without error"));
    }
    outcome
}
