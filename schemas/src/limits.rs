//! The one set of input limits: what the HTTP API accepts is exactly what a
//! worker can decode, so nothing accepted is dead-lettered as malformed.
//!
//! The API checks requests against these constants; the codec's
//! [`DecodeLimits::default`](crate::DecodeLimits) is built from them; the
//! orchestrator's definition parser and validator use them. A deployment
//! that raises a worker's `--max-payload` or the server's `--max-body`
//! changes one side only, so keep the two equal.
//!
//! Depth counts nested arrays and objects (maps), the outermost one being
//! level 1: `{}` is 1 deep, `{"a": [1]}` 2 deep, a scalar 0 deep. The same
//! count applies to JSON and to MessagePack.

use thiserror::Error;

/// Largest body a worker decodes and the API accepts by default, in bytes
/// (1 MiB): a task envelope as written to its stream, a request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Deepest nesting of arrays and objects in any body the runtime decodes:
/// a task or result envelope, an API request body.
pub const MAX_DEPTH: usize = 64;

/// Levels the runtime wraps around an input before a worker decodes it: the
/// task envelope (`{"v", "id", "input": …}`) and, for a workflow stage, the
/// stage input (`{"workflow_id", "stage", "input": …}`).
pub const INPUT_WRAPPING: usize = 2;

/// Deepest input accepted (a workflow's input, a task's, a definition's
/// `compensate.input`): [`MAX_DEPTH`] less [`INPUT_WRAPPING`], so its task
/// is never too deep for a worker.
pub const MAX_INPUT_DEPTH: usize = MAX_DEPTH - INPUT_WRAPPING;

/// Largest input accepted, in bytes of its MessagePack encoding (what its
/// task carries; about the size of its compact JSON): a quarter of
/// [`MAX_BODY_BYTES`], so the first task of a workflow fits with room left
/// for what later stages add (the outputs of the stages they depend on).
pub const MAX_INPUT_BYTES: usize = MAX_BODY_BYTES / 4;

/// Largest workflow definition accepted, in bytes of its YAML or JSON text.
pub const MAX_DEFINITION_BYTES: usize = 256 * 1024;

/// Most stages a workflow definition may have.
pub const MAX_STAGES: usize = 256;

/// A limit that was exceeded; the message names the limit and its value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LimitError {
    /// Arrays and objects nested deeper than `limit` levels.
    #[error("{what} nests arrays and objects deeper than the depth limit of {limit} levels")]
    TooDeep { what: &'static str, limit: usize },
    /// Larger than `limit` bytes.
    #[error("{what} of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    /// The input cannot be encoded at all.
    #[error("{what} cannot be encoded: {message}")]
    Unencodable { what: &'static str, message: String },
}

/// Checks that the JSON text `bytes` nests arrays and objects at most
/// `limit` levels deep, without parsing it: one pass over the bytes that
/// counts `[` and `{` outside strings. It stops at the first level over the
/// limit, so a hostile body costs no more than its length. Malformed JSON
/// is not reported here (the parser that follows reports it).
pub fn check_json_depth(what: &'static str, bytes: &[u8], limit: usize) -> Result<(), LimitError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(LimitError::TooDeep { what, limit });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// How deep `value` nests arrays and objects (a scalar is 0 deep).
pub fn value_depth(value: &serde_json::Value) -> usize {
    // Iterative, so a value built deeper than the stack allows is measured
    // rather than overflowing it.
    let mut deepest = 0;
    let mut stack = vec![(value, 1usize)];
    while let Some((v, level)) = stack.pop() {
        match v {
            serde_json::Value::Array(items) => {
                deepest = deepest.max(level);
                stack.extend(items.iter().map(|i| (i, level + 1)));
            }
            serde_json::Value::Object(fields) => {
                deepest = deepest.max(level);
                stack.extend(fields.values().map(|i| (i, level + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// Checks an input (of a workflow, a task, a compensation) against
/// [`MAX_INPUT_DEPTH`] and [`MAX_INPUT_BYTES`]; `what` names it in the error.
pub fn check_input(what: &'static str, input: &serde_json::Value) -> Result<(), LimitError> {
    // Depth first: it is measured without recursion, and encoding (which
    // recurses) then only sees a value of bounded depth.
    if value_depth(input) > MAX_INPUT_DEPTH {
        return Err(LimitError::TooDeep {
            what,
            limit: MAX_INPUT_DEPTH,
        });
    }
    // The encoded size is the exact measure of what the task will carry.
    let bytes = rmp_serde::to_vec_named(input).map_err(|e| LimitError::Unencodable {
        what,
        message: e.to_string(),
    })?;
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(LimitError::TooLarge {
            what,
            size: bytes.len(),
            limit: MAX_INPUT_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn json_depth_counts_containers_outside_strings() {
        check_json_depth("body", nested(MAX_DEPTH).as_bytes(), MAX_DEPTH).unwrap();
        let err =
            check_json_depth("body", nested(MAX_DEPTH + 1).as_bytes(), MAX_DEPTH).unwrap_err();
        assert!(err.to_string().contains("depth limit of 64"), "{err}");
        // Brackets inside strings, escaped quotes included, are text.
        let text = format!(
            r#"{{"a": "{}\"{}", "b": [1]}}"#,
            "[".repeat(200),
            "{".repeat(200)
        );
        check_json_depth("body", text.as_bytes(), 2).unwrap();
        assert!(check_json_depth("body", text.as_bytes(), 1).is_err());
        // Objects and arrays count alike.
        check_json_depth("body", br#"{"a": {"b": [{}]}}"#, 4).unwrap();
        assert!(check_json_depth("body", br#"{"a": {"b": [{}]}}"#, 3).is_err());
    }

    #[test]
    fn the_scan_agrees_with_serde_json_and_value_depth() {
        for levels in [0, 1, 2, 10, 62, 63, 64, 65] {
            let text = nested(levels);
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value_depth(&v), levels);
            assert_eq!(
                check_json_depth("x", text.as_bytes(), MAX_DEPTH).is_ok(),
                levels <= MAX_DEPTH
            );
        }
        assert_eq!(value_depth(&json!({"a": [1, {"b": {}}], "c": 2})), 4);
    }

    #[test]
    fn inputs_are_bounded_in_depth_and_encoded_size() {
        let at: Value = serde_json::from_str(&nested(MAX_INPUT_DEPTH)).unwrap();
        check_input("input", &at).unwrap();
        let over: Value = serde_json::from_str(&nested(MAX_INPUT_DEPTH + 1)).unwrap();
        let err = check_input("input", &over).unwrap_err();
        assert!(err.to_string().contains("depth limit of 62"), "{err}");

        let big = json!({ "s": "x".repeat(MAX_INPUT_BYTES) });
        let err = check_input("input", &big).unwrap_err();
        assert!(
            matches!(
                err,
                LimitError::TooLarge {
                    limit: MAX_INPUT_BYTES,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("262144"), "{err}");
        // Floats take 9 bytes in MessagePack and 4 in JSON (`0.5,`): the
        // limit is on what the task carries, not on the JSON text.
        let floats = Value::Array(vec![json!(0.5); MAX_INPUT_BYTES / 8]);
        assert!(serde_json::to_vec(&floats).unwrap().len() < MAX_INPUT_BYTES);
        assert!(check_input("input", &floats).is_err());
    }

    #[test]
    fn a_stage_task_of_the_deepest_input_is_within_the_body_depth() {
        // The wrapping is real: envelope, then stage input, then the input.
        let input: Value = serde_json::from_str(&nested(MAX_INPUT_DEPTH)).unwrap();
        let stage = crate::StageInput {
            workflow_id: "wf".into(),
            stage: "s".into(),
            input,
            deps: Default::default(),
            output: None,
            extra: Default::default(),
        };
        let env = crate::TaskEnvelope::new("wf:s:1", stage);
        let v = serde_json::to_value(&env).unwrap();
        assert_eq!(value_depth(&v), MAX_DEPTH);
    }
}
