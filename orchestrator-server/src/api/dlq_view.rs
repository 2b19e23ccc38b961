//! How the API shows a dead letter: a summary in lists, the whole of it
//! (decoded envelope and raw fields) on its own.

use agent_sdk::schemas::{DeadLetter, TaskEnvelope};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// A dead letter without its raw fields: what lists show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetterSummary {
    /// DLQ entry id: the handle for show, replay and purge.
    pub id: String,
    /// Agent type whose task it was.
    pub agent_type: String,
    /// Task id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Workflow, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// Stage, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Why: `permanent`, `attempts_exhausted`, `malformed`, `max_deliveries`.
    pub reason: String,
    /// The last error message.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// Worker instance that dead-lettered it.
    pub worker: String,
    /// When (ms since the Unix epoch, that worker's clock).
    pub failed_at_ms: u64,
    /// Entry id the task had in its task stream.
    pub source_id: String,
}

impl From<&DeadLetter> for DeadLetterSummary {
    fn from(d: &DeadLetter) -> Self {
        Self {
            id: d.id.clone(),
            agent_type: d.agent_type.clone(),
            task_id: d.task_id.clone(),
            workflow_id: d.workflow_id.clone(),
            stage: d.stage.clone(),
            reason: d.reason.as_str().to_owned(),
            error: d.error.clone(),
            attempts: d.attempts,
            worker: d.worker.clone(),
            failed_at_ms: d.failed_at_ms,
            source_id: d.source_id.clone(),
        }
    }
}

/// One raw field of the original task entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RawField {
    /// Field name.
    pub name: String,
    /// The value as text, when it is UTF-8.
    pub text: Option<String>,
    /// The value's bytes, base64 (standard alphabet, padded).
    pub base64: String,
}

/// A dead letter in full: the entry, the task envelope decoded from its raw
/// body (or why it cannot be), and the raw fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetterDetail {
    /// The entry.
    pub dead_letter: DeadLetterSummary,
    /// The task envelope, decoded from the raw `body`.
    pub envelope: Option<TaskEnvelope>,
    /// Why the body could not be decoded, when it could not.
    pub decode_error: Option<String>,
    /// The original entry's fields, byte for byte.
    pub raw: Vec<RawField>,
}

impl From<&DeadLetter> for DeadLetterDetail {
    fn from(d: &DeadLetter) -> Self {
        let (envelope, decode_error) = match d.envelope() {
            Ok(env) => (Some(env), None),
            Err(e) => (None, Some(e)),
        };
        Self {
            dead_letter: d.into(),
            envelope,
            decode_error,
            raw: d
                .raw
                .iter()
                .map(|(name, v)| RawField {
                    name: name.clone(),
                    text: std::str::from_utf8(v).ok().map(str::to_owned),
                    base64: base64::engine::general_purpose::STANDARD.encode(v),
                })
                .collect(),
        }
    }
}
