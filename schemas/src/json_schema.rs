//! JSON Schema of the envelopes, for integrators in other languages.
//!
//! The files in `schemas/json/` are generated from these types; a test fails
//! when they are stale. Regenerate with
//! `UPDATE_SCHEMAS=1 cargo test -p agentic-schemas json_schema`.

use crate::{AgentRecord, DeadLetter, ResultEnvelope, TaskEnvelope};

/// `(file name, pretty JSON)` of every generated schema.
pub fn all() -> Vec<(&'static str, String)> {
    fn pretty(schema: schemars::Schema) -> String {
        // A Schema is a JSON value; printing it cannot fail.
        let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
        s.push('\n');
        s
    }
    vec![
        (
            "task-envelope.json",
            pretty(schemars::schema_for!(TaskEnvelope)),
        ),
        (
            "result-envelope.json",
            pretty(schemars::schema_for!(ResultEnvelope)),
        ),
        (
            "dead-letter.json",
            pretty(schemars::schema_for!(DeadLetter)),
        ),
        (
            "agent-record.json",
            pretty(schemars::schema_for!(AgentRecord)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn json_schema_files_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
        let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
        let mut stale = Vec::new();
        for (name, text) in super::all() {
            let path = dir.join(name);
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &text).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(name);
            }
        }
        assert!(
            stale.is_empty(),
            "stale JSON Schema files in schemas/json: {stale:?}; regenerate with \
             UPDATE_SCHEMAS=1 cargo test -p agentic-schemas json_schema"
        );
    }
}
