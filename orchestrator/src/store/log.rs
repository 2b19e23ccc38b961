//! A workflow's event log (`N:wf:{<id>}:events`), written by the transition
//! script, and the change message it publishes.

use super::{Result, WorkflowStore, corrupt};
use crate::machine::WorkflowStatus;
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Event-log entries kept per workflow (approximately; oldest dropped first).
pub const EVENT_LOG_CAP: usize = 10_000;

/// One entry of a workflow's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct LogEntry {
    /// Stream entry id (SSE clients resume after it).
    pub id: String,
    /// The workflow version this transition produced.
    pub version: u64,
    /// Event type (`started`, `task_succeeded`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// The stage the event concerned, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Workflow status after the transition.
    pub status: WorkflowStatus,
    /// Progress after the transition, in percent.
    pub progress: u8,
    /// When (ms, the orchestrator's clock).
    pub at_ms: u64,
    /// The event (task outputs left out: they are in the workflow state);
    /// for an operator's action, `by` names the API token that did it.
    pub event: Value,
    /// Stages dispatched by this transition (`name` or `name.undo`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dispatched: Vec<String>,
}

/// The pub/sub message of one stored transition (`N:wfs:changes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "utoipa", schema(as = WorkflowChange))]
pub struct Change {
    /// Workflow id.
    pub workflow_id: String,
    /// Definition name.
    pub definition: String,
    /// Version after the transition.
    pub version: u64,
    /// Status after it.
    pub status: WorkflowStatus,
    /// Progress after it.
    pub progress: u8,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The stage concerned, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// When (ms, orchestrator clock).
    pub at_ms: u64,
}

impl WorkflowStore {
    /// The event log of `id` after stream id `after` (from the start when
    /// `None`), at most `count` entries.
    pub async fn log<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<LogEntry>> {
        let start = match after {
            Some(a) => format!("({a}"),
            None => "-".to_owned(),
        };
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.workflow_events(id)?)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(conn)
            .await?;
        reply
            .ids
            .into_iter()
            .map(|e| parse_log_entry(id, e))
            .collect()
    }
}

fn parse_log_entry(wf: &str, e: redis::streams::StreamId) -> Result<LogEntry> {
    let get = |k: &str| -> Option<String> {
        e.map
            .get(k)
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
    };
    let bad = |what: &str| corrupt(wf, format!("event-log entry {} lacks {what}", e.id));
    let status = get("status")
        .and_then(|s| WorkflowStatus::parse(&s))
        .ok_or_else(|| bad("status"))?;
    Ok(LogEntry {
        id: e.id.clone(),
        version: get("version")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("version"))?,
        kind: get("type").ok_or_else(|| bad("type"))?,
        stage: get("stage"),
        status,
        progress: get("progress").and_then(|v| v.parse().ok()).unwrap_or(0),
        at_ms: get("at_ms").and_then(|v| v.parse().ok()).unwrap_or(0),
        event: get("event")
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or(Value::Null),
        dispatched: get("dispatched")
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default(),
    })
}
