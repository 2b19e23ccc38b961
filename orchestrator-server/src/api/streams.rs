//! `/api/v1/overview` and `/api/v1/streams`: what the dashboard's overview
//! shows (and `agentctl streams`): workflows by status, and per agent type
//! the backlog, pending, delayed and dead tasks.

use super::AppState;
use super::error::{ApiErrorBody, ApiResult};
use axum::Json;
use axum::extract::State;
use orchestrator::ops::counts::{self, WorkflowCounts};
use orchestrator::ops::housekeeping::{self, DlqStats};
use orchestrator::ops::streams::{self, StreamStats};
use serde::Serialize;

/// Answer of `GET /overview`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Overview {
    /// Workflows by status.
    workflows: WorkflowCounts,
}

/// Overview
///
/// `GET /overview` — workflows by status: exact for those not ended, over
/// the newest `recent_window` for the ended ones.
#[utoipa::path(
    get,
    path = "/overview",
    tag = "streams",
    operation_id = "overview",
    responses(
        (status = 200, description = "Workflows by status", body = Overview),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn overview(State(state): State<AppState>) -> ApiResult<Json<Overview>> {
    let mut conn = state.conn().await?;
    let workflows = counts::workflow_counts(state.engine().store(), &mut conn).await?;
    Ok(Json(Overview { workflows }))
}

/// Answer of `GET /streams`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StreamsView {
    /// One per agent type with any stream in the namespace, by name.
    streams: Vec<StreamStats>,
    /// Dead letters per agent type: count, bytes, oldest age.
    dead_letters: Vec<DlqStats>,
}

/// Task streams
///
/// `GET /streams` — per agent type: backlog, pending, oldest pending age,
/// consumers, delayed, dead letters, lag.
#[utoipa::path(
    get,
    path = "/streams",
    tag = "streams",
    operation_id = "list_streams",
    responses(
        (status = 200, description = "Every agent type's queues", body = StreamsView),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn streams(State(state): State<AppState>) -> ApiResult<Json<StreamsView>> {
    let mut conn = state.conn().await?;
    let keys = state.engine().keys();
    let types = state.agent_types(&mut conn).await?;
    let streams = streams::stream_stats(&mut conn, keys, &types).await?;
    let dead_letters = housekeeping::dlq_stats(&mut conn, keys, &types).await?;
    Ok(Json(StreamsView {
        streams,
        dead_letters,
    }))
}
