//! Evaluates the CRD's CEL rules with kube's client-side interpreter (kube-cel), which applies
//! schema defaults first as the API server does. Off by default (feature `cel-tests`): the
//! interpreter is a heavy build. The real API server test covers the same rules in the cluster
//! suite; this one makes a broken rule visible without a cluster:
//! `cargo test -p stagecoach-api --features cel-tests --test cel`.

// Helpers outside #[test] functions fail loudly on purpose, like the tests themselves;
// clippy.toml's test exemption only reaches #[test] bodies.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
#![cfg(feature = "cel-tests")]

mod common;

use kube::core::cel::{ScopeContext, Validator, WarningKind, analyze_rule, compile_schema};
use serde_json::{Value, json};

fn validate(object: &Value) -> Result<(), Vec<String>> {
    Validator::new()
        .validate(&common::schema(), object, None)
        .map_err(|errors| errors.iter().map(|e| e.to_string()).collect())
}

fn design() -> Value {
    serde_saphyr::from_str(common::DESIGN_EXAMPLE).expect("plain YAML")
}

fn expect_rejected(object: &Value, message_part: &str) {
    match validate(object) {
        Ok(()) => panic!("expected a CEL error mentioning {message_part:?} for {object}"),
        Err(errors) => assert!(
            errors.iter().any(|e| e.contains(message_part)),
            "expected {message_part:?} in {errors:?}"
        ),
    }
}

#[test]
fn every_rule_compiles_and_stays_within_budget() {
    let schema = common::schema();
    assert!(
        !compile_schema(&schema).has_errors(),
        "{:?}",
        compile_schema(&schema).compilation_errors()
    );
    let mut stack = vec![&schema];
    let mut checked = 0;
    while let Some(node) = stack.pop() {
        if let Some(rules) = node["x-kubernetes-validations"].as_array() {
            let compiled = compile_schema(node);
            for rule in rules {
                let rule = rule["rule"].as_str().expect("rule text");
                let warnings: Vec<_> = analyze_rule(rule, &compiled, ScopeContext::CrdValidation)
                    .into_iter()
                    .filter(|w| {
                        matches!(w.kind, WarningKind::CostExceeded | WarningKind::WrongScope)
                    })
                    .collect();
                assert!(warnings.is_empty(), "{rule}: {warnings:?}");
                checked += 1;
            }
        }
        match node {
            Value::Object(map) => stack.extend(map.values()),
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    assert_eq!(checked, 5, "every rule was looked at");
}

#[test]
fn examples_pass() {
    assert_eq!(validate(&design()), Ok(()));
    let hello: Value =
        serde_saphyr::from_str(&common::repo_file("examples/hello/imagebuild.yaml")).expect("YAML");
    assert_eq!(validate(&hello), Ok(()));
}

#[test]
fn source_needs_exactly_one_kind() {
    let mut two = design();
    two["spec"]["source"]["configMap"] = json!({"name": "ctx"});
    expect_rejected(&two, "exactly one of git, inline or configMap");

    let mut none = design();
    none["spec"]["source"] = json!({});
    expect_rejected(&none, "exactly one of git, inline or configMap");

    let mut all = design();
    all["spec"]["source"]["configMap"] = json!({"name": "ctx"});
    all["spec"]["source"]["inline"] = json!({"dockerfile": "FROM scratch"});
    expect_rejected(&all, "exactly one of git, inline or configMap");
}

#[test]
fn image_and_targets_exclude_each_other() {
    let mut both = design();
    both["spec"]["image"] = json!("registry.example.com/apps/who:2.0");
    expect_rejected(&both, "give each target its own image");

    let mut image_only = design();
    image_only["spec"]["image"] = json!("registry.example.com/apps/who:2.0");
    image_only["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("targets");
    assert_eq!(validate(&image_only), Ok(()));
}

#[test]
fn inline_source_needs_a_dockerfile() {
    let inline = |source: Value, dockerfile: Option<&str>| {
        let mut ib = design();
        ib["spec"]["source"] = json!({"inline": source});
        let spec = ib["spec"].as_object_mut().expect("spec");
        match dockerfile {
            Some(path) => spec.insert("dockerfile".into(), json!(path)),
            // Absent: the schema default "Dockerfile" applies before the rule runs.
            None => spec.remove("dockerfile"),
        };
        ib
    };
    expect_rejected(
        &inline(json!({"files": {"main.go": "package main"}}), None),
        "an inline source needs",
    );
    expect_rejected(&inline(json!({}), None), "an inline source needs");
    assert_eq!(
        validate(&inline(
            json!({"files": {"Dockerfile": "FROM scratch"}}),
            None
        )),
        Ok(())
    );
    assert_eq!(
        validate(&inline(
            json!({"files": {"docker/prod.Dockerfile": "FROM scratch"}}),
            Some("docker/prod.Dockerfile")
        )),
        Ok(())
    );
    expect_rejected(
        &inline(
            json!({"files": {"Dockerfile": "FROM scratch"}}),
            Some("other"),
        ),
        "an inline source needs",
    );
    assert_eq!(
        validate(&inline(
            json!({"dockerfile": "FROM scratch"}),
            Some("ignored")
        )),
        Ok(())
    );
}

#[test]
fn timeout_must_be_positive() {
    let mut zero = design();
    zero["spec"]["timeout"] = json!("0h0m0s");
    expect_rejected(&zero, "timeout must be greater than zero");
    let mut long = design();
    long["spec"]["timeout"] = json!("2h30m");
    assert_eq!(validate(&long), Ok(()));
}

#[test]
fn build_names_fit_a_label_value() {
    let mut long = design();
    long["metadata"]["name"] = json!("a".repeat(64));
    expect_rejected(&long, "at most 63 characters");
    long["metadata"]["name"] = json!("a".repeat(63));
    assert_eq!(validate(&long), Ok(()));
}
