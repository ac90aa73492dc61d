//! The generated CRD has the shape the issue and docs/api.md promise: names, printer columns,
//! status subresource, CEL rules, list-map markers, required fields, defaults, bounds, and a
//! description on every field. Each test looks at the schema the API server would receive, so
//! a change in the types or in kube's schema generation that drops one of these fails here.

// Helpers outside #[test] functions fail loudly on purpose, like the tests themselves;
// clippy.toml's test exemption only reaches #[test] bodies.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use common::{property, schema};
use serde_json::{Value, json};
use stagecoach_api::bounds;

#[test]
fn names_scope_and_subresources() {
    let crd = common::crd_json();
    assert_eq!(crd["metadata"]["name"], "imagebuilds.stagecoach.dev");
    let spec = &crd["spec"];
    assert_eq!(spec["group"], "stagecoach.dev");
    assert_eq!(spec["scope"], "Namespaced");
    assert_eq!(spec["names"]["kind"], "ImageBuild");
    assert_eq!(spec["names"]["plural"], "imagebuilds");
    assert_eq!(spec["names"]["singular"], "imagebuild");
    assert_eq!(spec["names"]["shortNames"], json!(["ib"]));
    assert_eq!(spec["names"]["categories"], json!(["stagecoach"]));
    let versions = spec["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0]["name"], "v1alpha1");
    assert_eq!(versions[0]["served"], true);
    assert_eq!(versions[0]["storage"], true);
    assert_eq!(versions[0]["subresources"], json!({"status": {}}));
}

#[test]
fn printer_columns() {
    let crd = common::crd_json();
    let columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns");
    let summary: Vec<(&str, &str, &str, i64)> = columns
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default(),
                c["type"].as_str().unwrap_or_default(),
                c["jsonPath"].as_str().unwrap_or_default(),
                c["priority"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "Succeeded",
                "string",
                r#".status.conditions[?(@.type=="Succeeded")].status"#,
                0
            ),
            (
                "Reason",
                "string",
                r#".status.conditions[?(@.type=="Succeeded")].reason"#,
                0
            ),
            ("Stages", "string", ".status.stagesSummary", 0),
            ("Image", "string", ".status.images[0].image", 0),
            ("Digest", "string", ".status.images[0].digest", 1),
            ("Age", "date", ".metadata.creationTimestamp", 0),
        ]
    );
    // Every column path must point at a field the schema has, or kubectl shows nothing.
    let s = schema();
    property(&s, "status.conditions.[].status");
    property(&s, "status.conditions.[].reason");
    property(&s, "status.stagesSummary");
    property(&s, "status.images.[].image");
    property(&s, "status.images.[].digest");
}

fn rules(schema: &Value) -> Vec<String> {
    schema["x-kubernetes-validations"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| r["rule"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn source_has_the_exactly_one_cel_rule() {
    let s = schema();
    let source = property(&s, "spec.source");
    let rules = rules(source);
    assert_eq!(rules.len(), 1, "{rules:?}");
    for field in ["git", "inline", "configMap"] {
        assert!(
            rules[0].contains(&format!("has(self.{field})")),
            "{}",
            rules[0]
        );
        property(&s, &format!("spec.source.{field}"));
    }
    assert!(rules[0].ends_with("== 1"), "{}", rules[0]);
    let message = source["x-kubernetes-validations"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("exactly one"), "{message}");
}

#[test]
fn spec_timeout_and_root_cel_rules() {
    let s = schema();
    let spec_rules = rules(property(&s, "spec"));
    assert!(
        spec_rules
            .iter()
            .any(|r| r.contains("self.image") && r.contains("self.targets"))
    );
    assert!(
        spec_rules
            .iter()
            .any(|r| r.contains("self.source.inline.files"))
    );
    assert_eq!(
        rules(property(&s, "spec.timeout")),
        vec!["duration(self) > duration('0s')"]
    );
    assert_eq!(rules(&s), vec!["self.metadata.name.size() <= 63"]);
    // Every rule carries a message: the API server's default ("failed rule: …") shows CEL.
    let mut stack = vec![&s];
    while let Some(node) = stack.pop() {
        for rule in node["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert!(rule["message"].is_string(), "rule without message: {rule}");
        }
        match node {
            Value::Object(map) => stack.extend(map.values()),
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
}

#[test]
fn list_maps() {
    let s = schema();
    for (path, key) in [
        ("spec.targets", "stage"),
        ("spec.secrets", "id"),
        ("status.conditions", "type"),
        ("status.stages", "name"),
        ("status.images", "target"),
    ] {
        let list = property(&s, path);
        assert_eq!(list["x-kubernetes-list-type"], "map", "{path}");
        assert_eq!(list["x-kubernetes-list-map-keys"], json!([key]), "{path}");
        // The API server rejects a list-map whose key is optional.
        let required = list["items"]["required"].as_array().expect("required");
        assert!(
            required.contains(&json!(key)),
            "{path}: {key} must be required"
        );
        assert!(list["maxItems"].is_u64(), "{path} has no maxItems");
    }
}

#[test]
fn required_fields() {
    let s = schema();
    let required = |path: &str| -> Vec<String> {
        let node = if path.is_empty() {
            &s
        } else {
            property(&s, path)
        };
        let mut names: Vec<String> = node["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    };
    assert_eq!(required(""), ["spec"]);
    assert_eq!(required("spec"), ["source"]);
    assert!(required("spec.source").is_empty());
    assert_eq!(required("spec.source.git"), ["url"]);
    assert!(required("spec.source.inline").is_empty());
    assert_eq!(required("spec.source.configMap"), ["name"]);
    assert_eq!(required("spec.targets.[]"), ["stage"]);
    assert_eq!(required("spec.pushSecret"), ["name"]);
    assert_eq!(required("spec.cache"), ["claimName"]);
    assert_eq!(required("spec.secrets.[]"), ["id", "secretKeyRef"]);
    assert_eq!(required("spec.secrets.[].secretKeyRef"), ["key", "name"]);
    assert!(required("status").is_empty());
    assert_eq!(required("status.stages.[]"), ["index", "name", "state"]);
    assert_eq!(required("status.images.[]"), ["digest", "image", "target"]);
}

#[test]
fn schema_defaults_match_serde_defaults() {
    let s = schema();
    assert_eq!(
        property(&s, "spec.dockerfile")["default"],
        stagecoach_api::DEFAULT_DOCKERFILE
    );
    assert_eq!(
        property(&s, "spec.timeout")["default"],
        stagecoach_api::DEFAULT_TIMEOUT
    );
    // Defaults must satisfy their own field's schema, or the API server rejects the CRD.
    for path in ["spec.dockerfile", "spec.timeout"] {
        let field = property(&s, path);
        let errors = common::structural_errors(field, &field["default"]);
        assert!(errors.is_empty(), "{path}: {errors:?}");
    }
    assert!(stagecoach_api::parse_timeout(stagecoach_api::DEFAULT_TIMEOUT).is_ok());
}

#[test]
fn bounds_reach_the_schema() {
    let s = schema();
    let cases: &[(&str, &str, u32)] = &[
        ("spec.dockerfile", "maxLength", bounds::MAX_CONTEXT_PATH),
        ("spec.buildArgs", "maxProperties", bounds::MAX_BUILD_ARGS),
        (
            "spec.buildArgs",
            "additionalProperties.maxLength",
            bounds::MAX_BUILD_ARG_VALUE,
        ),
        ("spec.targets", "maxItems", bounds::MAX_TARGETS),
        ("spec.secrets", "maxItems", bounds::MAX_BUILD_SECRETS),
        ("spec.secrets.[].id", "maxLength", bounds::MAX_SECRET_ID),
        (
            "spec.secrets.[].secretKeyRef.name",
            "maxLength",
            bounds::MAX_DNS1123_SUBDOMAIN,
        ),
        (
            "spec.secrets.[].secretKeyRef.key",
            "maxLength",
            bounds::MAX_SECRET_KEY,
        ),
        ("spec.targets.[].stage", "maxLength", bounds::MAX_STAGE_NAME),
        ("spec.image", "maxLength", bounds::MAX_IMAGE_REFERENCE),
        ("spec.source.git.url", "maxLength", bounds::MAX_GIT_URL),
        (
            "spec.source.git.revision",
            "maxLength",
            bounds::MAX_GIT_REVISION,
        ),
        (
            "spec.source.git.subPath",
            "maxLength",
            bounds::MAX_CONTEXT_PATH,
        ),
        (
            "spec.source.inline.dockerfile",
            "maxLength",
            bounds::MAX_INLINE_DOCKERFILE,
        ),
        (
            "spec.source.inline.files",
            "maxProperties",
            bounds::MAX_INLINE_FILES,
        ),
        (
            "spec.source.inline.files",
            "additionalProperties.maxLength",
            bounds::MAX_INLINE_FILE,
        ),
        (
            "spec.source.configMap.name",
            "maxLength",
            bounds::MAX_DNS1123_SUBDOMAIN,
        ),
        (
            "spec.pushSecret.name",
            "maxLength",
            bounds::MAX_DNS1123_SUBDOMAIN,
        ),
        (
            "spec.cache.claimName",
            "maxLength",
            bounds::MAX_DNS1123_SUBDOMAIN,
        ),
        ("spec.timeout", "maxLength", bounds::MAX_TIMEOUT),
        (
            "spec.nodeSelector",
            "maxProperties",
            bounds::MAX_NODE_SELECTOR,
        ),
        (
            "spec.nodeSelector",
            "additionalProperties.maxLength",
            bounds::MAX_LABEL_VALUE,
        ),
        ("spec.tolerations", "maxItems", bounds::MAX_TOLERATIONS),
        (
            "spec.serviceAccountName",
            "maxLength",
            bounds::MAX_DNS1123_SUBDOMAIN,
        ),
        ("status.conditions", "maxItems", bounds::MAX_CONDITIONS),
        (
            "status.conditions.[].message",
            "maxLength",
            bounds::MAX_CONDITION_MESSAGE,
        ),
        (
            "status.conditions.[].reason",
            "maxLength",
            bounds::MAX_CONDITION_REASON,
        ),
        (
            "status.conditions.[].type",
            "maxLength",
            bounds::MAX_CONDITION_TYPE,
        ),
        ("status.stages", "maxItems", bounds::MAX_STAGES),
        (
            "status.stages.[].message",
            "maxLength",
            bounds::MAX_STAGE_MESSAGE,
        ),
        (
            "status.stagesSummary",
            "maxLength",
            bounds::MAX_STAGES_SUMMARY,
        ),
        ("status.images", "maxItems", bounds::MAX_TARGETS),
        ("status.images.[].digest", "maxLength", bounds::MAX_DIGEST),
    ];
    for (path, key, expected) in cases {
        let mut node = property(&s, path);
        for part in key.split('.') {
            node = &node[part];
        }
        assert_eq!(node.as_u64(), Some(u64::from(*expected)), "{path} {key}");
    }
    // Names that become Kubernetes object references are DNS-1123 subdomains.
    for path in [
        "spec.source.configMap.name",
        "spec.pushSecret.name",
        "spec.cache.claimName",
        "spec.serviceAccountName",
    ] {
        assert_eq!(
            property(&s, path)["pattern"],
            bounds::DNS1123_SUBDOMAIN,
            "{path}"
        );
    }
}

/// Every string the user or the controller writes is bounded: an unbounded string makes the
/// API server's CEL cost estimate assume megabytes, and lets one object grow without limit.
#[test]
fn every_own_string_list_and_map_is_bounded() {
    let s = schema();
    // k8s-openapi's embedded core types are bounded by the API server's own rules for them.
    let embedded = [
        "spec.resources",
        "spec.tolerations",
        "status.conditions.[].lastTransitionTime",
    ];
    let mut unbounded = Vec::new();
    walk(&s, "", &mut |path, node| {
        if embedded.iter().any(|e| path.starts_with(e)) {
            return;
        }
        let bounded = match node["type"].as_str() {
            Some("string") => {
                node["maxLength"].is_u64()
                    || node["enum"].is_array()
                    || node["format"] == "date-time"
            }
            Some("array") => node["maxItems"].is_u64(),
            Some("object") => {
                !node["additionalProperties"].is_object() || node["maxProperties"].is_u64()
            }
            _ => true,
        };
        if !bounded {
            unbounded.push(path.to_owned());
        }
    });
    assert!(unbounded.is_empty(), "unbounded fields: {unbounded:?}");
}

#[test]
fn every_field_has_a_description() {
    let s = schema();
    let mut missing = Vec::new();
    walk(&s, "", &mut |path, node| {
        let is_field = !path.is_empty() && !path.ends_with("[]") && !path.ends_with("{}");
        let described = node["description"].as_str().is_some_and(|d| !d.is_empty());
        if is_field && !described {
            missing.push(path.to_owned());
        }
    });
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}

/// Calls `visit` on every schema node below `node`, with a path like
/// `spec.targets[].stage` (`[]` for list items, `{}` for map values).
fn walk(node: &Value, path: &str, visit: &mut dyn FnMut(&str, &Value)) {
    visit(path, node);
    if let Some(properties) = node["properties"].as_object() {
        for (name, child) in properties {
            let child_path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            walk(child, &child_path, visit);
        }
    }
    if node["items"].is_object() {
        walk(&node["items"], &format!("{path}[]"), visit);
    }
    if node["additionalProperties"].is_object() {
        walk(&node["additionalProperties"], &format!("{path}{{}}"), visit);
    }
}

#[test]
fn stage_state_enum_matches_the_rust_enum() {
    let s = schema();
    let values: Vec<&str> = property(&s, "status.stages.[].state")["enum"]
        .as_array()
        .expect("enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let expected: Vec<&str> = stagecoach_api::StageState::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    assert_eq!(values, expected);
}

#[test]
fn condition_items_carry_metav1_bounds() {
    let s = schema();
    assert_eq!(
        property(&s, "status.conditions.[].status")["enum"],
        json!(["True", "False", "Unknown"])
    );
    // Every reason the controller can write passes the reason pattern.
    let reason = property(&s, "status.conditions.[].reason");
    for r in stagecoach_api::Reason::ALL {
        let errors = common::structural_errors(reason, &json!(r.as_str()));
        assert!(errors.is_empty(), "{r}: {errors:?}");
    }
}

/// Every field of spec and status has its row in docs/api.md (fields under `spec.source` as
/// `git.url` and the like in their own table), so the reference cannot miss a field. Fields
/// of Kubernetes' own types (resources, tolerations, conditions) are documented by them.
#[test]
fn docs_api_md_has_a_row_for_every_field() {
    fn walk(schema: &Value, path: &str, out: &mut Vec<String>) {
        let schema = schema.get("items").unwrap_or(schema);
        let Some(props) = schema.get("properties").and_then(Value::as_object) else {
            return;
        };
        for (name, sub) in props {
            let list = if sub.get("items").is_some() { "[]" } else { "" };
            let child = if path.is_empty() {
                format!("{name}{list}")
            } else {
                format!("{path}.{name}{list}")
            };
            out.push(child.clone());
            if !["resources", "tolerations[]", "conditions[]"].contains(&child.as_str()) {
                walk(sub, &child, out);
            }
        }
    }
    let docs = common::repo_file("docs/api.md");
    let mut missing = Vec::new();
    for root in ["spec", "status"] {
        let mut paths = Vec::new();
        walk(property(&schema(), root), "", &mut paths);
        for path in paths {
            let short = match (root, path.strip_prefix("source.")) {
                ("spec", Some(rest)) => rest.to_string(),
                _ => path.clone(),
            };
            // An object documented only through its fields is fine.
            let documented = docs.contains(&format!("`{short}`"))
                || docs.contains(&format!("`{path}`"))
                || docs.contains(&format!("`{short}."))
                || docs.contains(&format!("`{short}[]."));
            if !documented {
                missing.push(format!("{root}.{path}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/api.md has no row for: {missing:#?}"
    );
}
