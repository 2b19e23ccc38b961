//! Task and result envelopes: the `body` field of task and result entries.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A task as sent to an agent type. Encoded into the `body` field of a
/// `N:agent:{T}:tasks` entry.
///
/// `I` is the agent's input type; readers that do not know it use the default
/// `serde_json::Value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[schemars(title = "TaskEnvelope")]
pub struct TaskEnvelope<I = serde_json::Value> {
    /// Protocol version: 1.
    pub v: u32,
    /// Task id: 1–128 of `A-Z a-z 0-9 - _ . : @ / + =`, unique per agent type. The
    /// result is stored under it.
    pub id: String,
    /// The agent's input.
    #[cfg_attr(feature = "utoipa", schema(value_type = Value))]
    pub input: I,
    /// Workflow this task belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// Stage of that workflow, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Trace id carried through logs of every process that touches the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// When the producer created the task (ms since the Unix epoch, producer's clock;
    /// informational only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at_ms: Option<u64>,
    /// Handler timeout for this task (ms); the worker's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Attempts allowed for this task; the worker's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

impl<I> TaskEnvelope<I> {
    /// A v1 envelope with only the required fields set.
    pub fn new(id: impl Into<String>, input: I) -> Self {
        Self {
            v: crate::PROTOCOL_VERSION,
            id: id.into(),
            input,
            workflow_id: None,
            stage: None,
            trace_id: None,
            created_at_ms: None,
            timeout_ms: None,
            max_attempts: None,
        }
    }
}

/// How a task ended, as published on the results stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// The handler returned an output.
    Succeeded,
    /// The task is in the dead-letter stream; `error` says why.
    DeadLettered,
}

impl TaskStatus {
    /// The value of the plain `status` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The handler said the failure may pass on a later attempt.
    Retryable,
    /// The handler said no attempt will succeed.
    Permanent,
    /// The input did not fit the agent (decoded, but rejected).
    InvalidInput,
    /// The handler ran past its timeout.
    Timeout,
    /// The handler panicked.
    Panic,
    /// The entry could not be decoded (garbage, unknown version, too large).
    Malformed,
    /// The entry was delivered more than `max_deliveries` times: its workers
    /// keep dying on it.
    MaxDeliveries,
}

/// An error as carried in results and dead letters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ErrorInfo {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Human-readable message.
    pub message: String,
    /// Structured details from the handler (findings, counts, output tail…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// A task's outcome. Encoded into the `body` field of a `N:agent:{T}:results`
/// entry and into `N:agent:{T}:result:<task id>`.
///
/// It is written in the encoding the task arrived in, so a JSON producer reads
/// JSON back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[schemars(title = "ResultEnvelope")]
pub struct ResultEnvelope<O = serde_json::Value> {
    /// Protocol version: 1.
    pub v: u32,
    /// The task this answers.
    pub task_id: String,
    /// Agent type that ran it.
    pub agent_type: String,
    /// How it ended.
    pub status: TaskStatus,
    /// The handler's output, when `status` is `succeeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Value>))]
    pub output: Option<O>,
    /// The last error, when `status` is `dead_lettered`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// The attempt that produced this result (1-based).
    pub attempt: u32,
    /// Worker instance that produced it.
    pub worker: String,
    /// Workflow of the task, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// Stage of the task, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Trace id of the task, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// When the result was produced (ms since the Unix epoch, worker's clock).
    pub finished_at_ms: u64,
    /// How long the handler ran (ms); 0 when it never ran.
    pub duration_ms: u64,
}
