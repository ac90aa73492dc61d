//! BuildKit's shell-expansion vectors (`envVarTest`, `wordsTest`), Unix rows only.
//!
//! The files are read the way BuildKit's own `lex_test.go` reads them, so trimming rules (and
//! the significant trailing spaces in `wordsTest`) mean the same here. Every row is expanded
//! twice, once against a map and once against an ordered list, as BuildKit checks both its
//! list and its map entry points.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;

use stagecoach_dockerfile::shell::{Env, ShellError, ShellLex};

use super::outcome::Outcome;

/// The environment `envVarTest` assumes (BuildKit's `TestShellParser4EnvVars`).
const ENV_VAR_TEST_ENV: [(&str, &str); 4] = [
    ("PWD", "/home"),
    ("SHELL", "bash"),
    ("KOREAN", "한국어"),
    ("NULL", ""),
];

pub fn run_env_var_test(file: &Path) -> Outcome {
    let mut outcome = Outcome::default();
    let Some(text) = read(file, &mut outcome) else {
        return outcome;
    };
    let list: Vec<(String, String)> = ENV_VAR_TEST_ENV
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let map: BTreeMap<String, String> = list.iter().cloned().collect();
    let lex = ShellLex::new('\\');

    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let columns: Vec<&str> = line.trim().split('|').collect();
        let [platform, input, expected] = columns.as_slice() else {
            outcome.record(false, || {
                format!("envVarTest:{line_no}: malformed row (want 3 columns): {line:?}")
            });
            continue;
        };
        let (platform, input, expected) = (platform.trim(), input.trim(), expected.trim());
        match platform {
            "W" => continue,
            "A" | "U" => {}
            other => {
                outcome.record(false, || {
                    format!("envVarTest:{line_no}: unknown platform tag {other:?}")
                });
                continue;
            }
        }
        let expand = |env: &dyn Env| lex.process_word(input, env).map(|e| e.value);
        let results = [expand(&map), expand(&list)];
        let ok = results.iter().all(|result| match result {
            Ok(value) => expected != "error" && value == expected,
            Err(_) => expected == "error",
        });
        outcome.record(ok, || {
            failure("envVarTest", line_no, input, expected, &results)
        });
    }
    outcome
}

pub fn run_words_test(file: &Path) -> Outcome {
    let mut outcome = Outcome::default();
    let Some(text) = read(file, &mut outcome) else {
        return outcome;
    };
    let lex = ShellLex::new('\\');
    let mut list: Vec<(String, String)> = Vec::new();

    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(assignment) = line.strip_prefix("ENV ") {
            // Only leading spaces go: some values end in spaces on purpose.
            let assignment = assignment.trim_start_matches(' ');
            let (key, value) = assignment.split_once('=').unwrap_or((assignment, ""));
            list.push((key.to_owned(), value.to_owned()));
            continue;
        }
        let columns: Vec<&str> = line.split('|').collect();
        let [input, expected] = columns.as_slice() else {
            outcome.record(false, || {
                format!("wordsTest:{line_no}: malformed row (want exactly one '|'): {line:?}")
            });
            continue;
        };
        let input = input.trim();
        let expected: Vec<String> = expected
            .trim_start_matches(' ')
            .split(',')
            .map(str::to_owned)
            .collect();
        let map: BTreeMap<String, String> = list.iter().cloned().collect();
        let split = |env: &dyn Env| lex.process_words(input, env);
        let results = [split(&map), split(&list)];
        let ok = results.iter().all(|result| match result {
            Ok(words) => *words == expected,
            Err(_) => expected == ["error"],
        });
        outcome.record(ok, || {
            failure("wordsTest", line_no, input, &expected, &results)
        });
    }
    outcome
}

fn read(file: &Path, outcome: &mut Outcome) -> Option<String> {
    match std::fs::read_to_string(file) {
        Ok(text) => Some(text),
        Err(err) => {
            outcome.record(false, || format!("cannot read {}: {err}", file.display()));
            None
        }
    }
}

fn failure<E: Debug + ?Sized, T: Debug>(
    set: &str,
    line_no: usize,
    input: &str,
    expected: &E,
    results: &[Result<T, ShellError>],
) -> String {
    let got: Vec<String> = results
        .iter()
        .map(|result| match result {
            Ok(value) => format!("{value:?}"),
            Err(err) => format!("error ({err})"),
        })
        .collect();
    format!(
        "{set}:{line_no}: input {input:?}: expected {expected:?}, got {} (map, list)",
        got.join(" / ")
    )
}
