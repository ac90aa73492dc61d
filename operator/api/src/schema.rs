//! Schema transforms for the bounds that schemars' attributes cannot express: the size of a
//! string-to-string map and the length of its values, and the field formats of Kubernetes'
//! `Condition` (k8s-openapi's schema for it carries none of the validation the API server's
//! own `metav1.Condition` has). They run while the CRD schema is generated, where kube inlines
//! every subschema, so they edit the schema in place.

use schemars::Schema;
use serde_json::{Value, json};

use crate::bounds;

/// Bounds a `map[string]string` field: at most `ENTRIES` keys, values at most `VALUE_LEN`
/// characters. Map keys cannot be bounded in a structural schema; the controller checks them.
pub(crate) fn string_map<const ENTRIES: u32, const VALUE_LEN: u32>(schema: &mut Schema) {
    schema.insert("maxProperties".into(), ENTRIES.into());
    if let Some(Value::Object(values)) = schema.get_mut("additionalProperties") {
        values.insert("maxLength".into(), VALUE_LEN.into());
    }
}

/// Bounds the items of a `[]Condition` field like `metav1.Condition` does upstream, so
/// what we write is what any Kubernetes tool expects to read.
pub(crate) fn condition_items(schema: &mut Schema) {
    let Some(Value::Object(properties)) = schema
        .get_mut("items")
        .and_then(|items| items.get_mut("properties"))
    else {
        return;
    };
    let mut bound = |name: &str, extra: Value| {
        if let (Some(Value::Object(property)), Value::Object(extra)) =
            (properties.get_mut(name), extra)
        {
            property.extend(extra);
        }
    };
    bound(
        "type",
        json!({"minLength": 1, "maxLength": bounds::MAX_CONDITION_TYPE}),
    );
    bound("status", json!({"enum": ["True", "False", "Unknown"]}));
    bound(
        "reason",
        json!({
            "minLength": 1,
            "maxLength": bounds::MAX_CONDITION_REASON,
            "pattern": bounds::CONDITION_REASON,
        }),
    );
    bound(
        "message",
        json!({"maxLength": bounds::MAX_CONDITION_MESSAGE}),
    );
    bound("observedGeneration", json!({"minimum": 0}));
}
