//! Canonical JSON for everything we hash: object keys sorted bytewise at every depth, no
//! insignificant whitespace. A manifest's or config's digest is the digest of its bytes, so
//! the same value must always give the same bytes, whatever map type or serde feature
//! (`preserve_order` may be switched on by another crate in the build) produced it.

use std::io::Write;

use serde::Serialize;
use serde_json::Value;

/// Why a value could not be written as canonical JSON.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The value could not be represented as JSON (a map with non-string keys, for example).
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        /// What was being encoded, for the message.
        what: &'static str,
        /// The serializer's error.
        source: serde_json::Error,
    },
    /// The value could not be decoded.
    #[error("cannot decode {what} from JSON: {source}")]
    Decode {
        /// What was being decoded, for the message.
        what: &'static str,
        /// The deserializer's error.
        source: serde_json::Error,
    },
}

/// Serializes `value` canonically. `what` names the value in error messages.
pub fn to_canonical_vec<T: Serialize + ?Sized>(
    value: &T,
    what: &'static str,
) -> Result<Vec<u8>, JsonError> {
    let tree = serde_json::to_value(value).map_err(|source| JsonError::Encode { what, source })?;
    let mut out = Vec::with_capacity(512);
    write_value(&mut out, &tree).map_err(|source| JsonError::Encode { what, source })?;
    Ok(out)
}

fn write_value(out: &mut Vec<u8>, v: &Value) -> Result<(), serde_json::Error> {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k)?;
                out.push(b':');
                write_value(out, val)?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item)?;
            }
            out.push(b']');
        }
        // Scalars have a single serde_json spelling already.
        leaf => serde_json::to_writer(&mut *out, leaf)?,
    }
    // Writing into a Vec cannot fail; keep the signature honest for `to_writer` anyway.
    out.flush().map_err(serde_json::Error::io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn keys_are_sorted_at_every_depth() {
        let mut inner = HashMap::new();
        inner.insert("zeta", 1);
        inner.insert("alpha", 2);
        let mut outer = HashMap::new();
        outer.insert(
            "b",
            serde_json::json!({"y": [3, {"d": 1, "c": 2}], "x": null}),
        );
        outer.insert("a", serde_json::to_value(&inner).unwrap());
        let bytes = to_canonical_vec(&outer, "test").unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"a":{"alpha":2,"zeta":1},"b":{"x":null,"y":[3,{"c":2,"d":1}]}}"#
        );
    }

    #[test]
    fn strings_are_escaped() {
        let bytes = to_canonical_vec(&serde_json::json!({"k\"": "a\nb"}), "test").unwrap();
        assert_eq!(bytes, br#"{"k\"":"a\nb"}"#);
    }
}
