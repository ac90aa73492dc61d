//! Shared test helpers: the generated schema as JSON, the ImageBuild from DESIGN.md §1, and a
//! small checker that applies the schema's structural rules (types, required, bounds,
//! patterns, enums, list-map keys, unknown fields) to an object, the way the API server does
//! before CEL. It is deliberately partial: enough to show that examples fit the schema and that
//! bad values are caught, not a replacement for the real API server test.

// Helpers outside #[test] functions fail loudly on purpose, like the tests themselves;
// clippy.toml's test exemption only reaches #[test] bodies.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
#![allow(dead_code)] // each test file uses a different part

use std::collections::BTreeSet;

use serde_json::Value;

/// The ImageBuild that DESIGN.md §1 shows the user writing, copied verbatim so the test does
/// not depend on the shared folder.
pub const DESIGN_EXAMPLE: &str = r#"
apiVersion: stagecoach.dev/v1alpha1
kind: ImageBuild
metadata: {name: who, namespace: apps}
spec:
  source:                       # exactly one of: git, inline, configMap
    git: {url: https://example.com/team/who.git, revision: main, subPath: ""}
  dockerfile: Dockerfile        # path in the context (inline sources may carry it directly)
  buildArgs: {GO_VERSION: "1.23"}
  targets:                      # default: the last stage, pushed to spec.image
    - stage: test               # built and must succeed; not pushed
    - stage: prod
      image: registry.example.com/apps/who:2.0
  pushSecret: {name: regcred}   # kubernetes.io/dockerconfigjson
  cache: {claimName: stagecoach-cache}   # shared PVC; the chart can create one
  timeout: 30m
"#;

/// Reads a file relative to the repository root.
pub fn repo_file(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

/// The whole CRD as JSON.
pub fn crd_json() -> Value {
    serde_json::to_value(stagecoach_api::crd().expect("CRD renders")).expect("CRD to JSON")
}

/// The openAPIV3Schema of the only version.
pub fn schema() -> Value {
    crd_json()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Follows `properties` through a dotted path, e.g. `spec.source.git`.
pub fn property<'a>(schema: &'a Value, path: &str) -> &'a Value {
    let mut at = schema;
    for part in path.split('.') {
        at = match part {
            "[]" => &at["items"],
            _ => &at["properties"][part],
        };
        assert!(!at.is_null(), "schema has no {path} (stopped at {part})");
    }
    at
}

/// Checks `value` against `schema` and returns one message per violation, each naming the
/// path.
pub fn structural_errors(schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, value, "", true, &mut errors);
    errors
}

fn check(schema: &Value, value: &Value, path: &str, root: bool, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema["nullable"] != Value::Bool(true) {
            errors.push(format!("{path}: null is not allowed"));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == Value::Bool(true) {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            errors.push(format!("{path}: must be an integer or a string"));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    match schema["type"].as_str() {
        Some("string") => check_string(schema, value, path, errors),
        Some("integer") => match value.as_i64() {
            Some(n) => {
                if let Some(min) = schema["minimum"].as_f64()
                    && (n as f64) < min
                {
                    errors.push(format!("{path}: {n} is below the minimum {min}"));
                }
            }
            None => errors.push(format!("{path}: must be an integer")),
        },
        Some("boolean") => {
            if !value.is_boolean() {
                errors.push(format!("{path}: must be a boolean"));
            }
        }
        Some("array") => check_array(schema, value, path, errors),
        Some("object") => check_object(schema, value, path, root, errors),
        other => errors.push(format!("{path}: schema has unexpected type {other:?}")),
    }
}

fn check_string(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(text) = value.as_str() else {
        errors.push(format!("{path}: must be a string"));
        return;
    };
    let length = text.chars().count() as u64;
    if let Some(max) = schema["maxLength"].as_u64()
        && length > max
    {
        errors.push(format!("{path}: longer than {max}"));
    }
    if let Some(min) = schema["minLength"].as_u64()
        && length < min
    {
        errors.push(format!("{path}: shorter than {min}"));
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        let re = regex_lite::Regex::new(pattern).expect("schema pattern compiles");
        if !re.is_match(text) {
            errors.push(format!("{path}: {text:?} does not match {pattern}"));
        }
    }
}

fn check_array(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(items) = value.as_array() else {
        errors.push(format!("{path}: must be a list"));
        return;
    };
    if let Some(max) = schema["maxItems"].as_u64()
        && items.len() as u64 > max
    {
        errors.push(format!("{path}: more than {max} items"));
    }
    for (i, item) in items.iter().enumerate() {
        check(
            &schema["items"],
            item,
            &format!("{path}[{i}]"),
            false,
            errors,
        );
    }
    if schema["x-kubernetes-list-type"] == "map" {
        let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
            .as_array()
            .expect("list-map keys")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let mut seen = BTreeSet::new();
        for item in items {
            let key: Vec<String> = keys.iter().map(|k| item[*k].to_string()).collect();
            if !seen.insert(key.clone()) {
                errors.push(format!("{path}: duplicate entry for key {key:?}"));
            }
        }
    }
}

fn check_object(schema: &Value, value: &Value, path: &str, root: bool, errors: &mut Vec<String>) {
    let Some(fields) = value.as_object() else {
        errors.push(format!("{path}: must be an object"));
        return;
    };
    if let Some(max) = schema["maxProperties"].as_u64()
        && fields.len() as u64 > max
    {
        errors.push(format!("{path}: more than {max} entries"));
    }
    for required in schema["required"].as_array().into_iter().flatten() {
        let name = required.as_str().unwrap_or_default();
        if !fields.contains_key(name) {
            errors.push(format!("{path}.{name}: required"));
        }
    }
    for (name, field) in fields {
        let field_path = format!("{path}.{name}");
        if let Some(property) = schema["properties"].get(name) {
            check(property, field, &field_path, false, errors);
        } else if schema["additionalProperties"].is_object() {
            check(
                &schema["additionalProperties"],
                field,
                &field_path,
                false,
                errors,
            );
        } else if root && ["apiVersion", "kind", "metadata"].contains(&name.as_str()) {
            // The API server validates these itself.
        } else if schema["x-kubernetes-preserve-unknown-fields"] != Value::Bool(true) {
            errors.push(format!("{field_path}: unknown field"));
        }
    }
}
