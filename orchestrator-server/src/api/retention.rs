//! `DELETE /api/v1/workflows/{id}`: an operator deletes an ended workflow
//! now (retention does the same on its own schedule), and the retention
//! and dead-letter figures `/metrics` adds.

use super::AppState;
use super::auth::audit;
use super::doc::formats::WorkflowId;
use super::error::{ApiError, ApiErrorBody, ApiResult};
use crate::tokens::Caller;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use orchestrator::machine::WorkflowStatus;
use orchestrator::ops::housekeeping;
use orchestrator::store::Deletion;
use serde::Serialize;
use std::fmt::Write as _;

/// Answer of `DELETE /workflows/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    /// The workflow id.
    #[schema(value_type = WorkflowId)]
    id: String,
    /// The status it had ended with.
    status: WorkflowStatus,
    /// Redis bytes released (state + event log, as measured when it ended).
    bytes: u64,
}

/// Delete an ended workflow
///
/// `DELETE /workflows/{id}` — deletes a completed, failed or cancelled
/// workflow now: its state, event log and index entries. A workflow that
/// has not ended (running, blocked on a dead letter, …) is refused.
#[utoipa::path(
    delete,
    path = "/workflows/{id}",
    tag = "workflows",
    operation_id = "delete_workflow",
    params(("id" = WorkflowId, Path, description = "Workflow id")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 404, description = "`not_found`: no such workflow", body = ApiErrorBody),
        (status = 409, description = "`conflict`: it has not ended (the message says its status), or its last commands are still being carried out (try again)", body = ApiErrorBody),
        (status = 500, description = "`internal`: a stored value cannot be read", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn delete_workflow(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Deleted>> {
    agent_sdk::schemas::names::validate_workflow_id(&id)
        .map_err(|_| ApiError::not_found("workflow", &id))?;
    let mut conn = state.conn().await?;
    match state.engine().store().delete_ended(&mut conn, &id).await? {
        Deletion::Deleted { status, bytes } => {
            audit(&caller, "workflow_delete", &id);
            Ok(Json(Deleted { id, status, bytes }))
        }
        Deletion::Gone => Err(ApiError::not_found("workflow", &id)),
        Deletion::NotEnded(s) => Err(ApiError::conflict(format!(
            "workflow {id:?} has not ended (it is {}): only completed, failed or cancelled workflows are deleted; cancel or abort it first",
            s.as_str()
        ))),
        Deletion::OutboxPending(s) => Err(ApiError::conflict(format!(
            "workflow {id:?} has ended ({}) but its last commands are still being carried out; try again in a moment",
            s.as_str()
        ))),
    }
}

/// Appends to `/metrics` the ended workflows retention keeps and each
/// watched type's dead letters (count, bytes, oldest age by Redis's clock).
pub(super) async fn write_metrics(
    state: &AppState,
    conn: &mut deadpool_redis::Connection,
    out: &mut String,
) -> ApiResult<()> {
    let store = state.engine().store();
    let ended = store.ended_totals(conn).await?;
    let gauge = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
    };
    gauge(
        out,
        "orchestrator_retained_workflows",
        "Ended workflows kept until retention expires them.",
    );
    let _ = writeln!(out, "orchestrator_retained_workflows {}", ended.count);
    gauge(
        out,
        "orchestrator_retained_workflow_bytes",
        "Redis bytes of the ended workflows kept (state + event log, measured when each ended).",
    );
    let _ = writeln!(out, "orchestrator_retained_workflow_bytes {}", ended.bytes);
    let types: Vec<_> = state
        .engine()
        .watched_types()
        .into_iter()
        .filter_map(|t| agent_sdk::schemas::AgentType::new(t).ok())
        .collect();
    let dlq = housekeeping::dlq_stats(conn, store.keys(), &types).await?;
    for (name, help, value) in [
        (
            "agentic_dlq_bytes",
            "Redis bytes of the dead-letter stream (MEMORY USAGE, sampled), by agent type.",
            (|s: &housekeeping::DlqStats| s.bytes as f64) as fn(&housekeeping::DlqStats) -> f64,
        ),
        (
            "agentic_dlq_oldest_age_seconds",
            "Age of the oldest dead letter (Redis clock; 0 when none), by agent type.",
            |s| s.oldest_age_ms.map_or(0.0, |ms| ms as f64 / 1000.0),
        ),
    ] {
        gauge(out, name, help);
        for s in &dlq {
            let _ = writeln!(
                out,
                "{name}{{agent_type=\"{}\"}} {}",
                s.agent_type,
                value(s)
            );
        }
    }
    Ok(())
}
