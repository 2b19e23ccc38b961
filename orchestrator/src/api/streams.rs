//! `/api/v1/overview` and `/api/v1/streams`: what the dashboard's overview
//! shows (and `agentctl streams`): workflows by status, and per agent type
//! the backlog, pending, delayed and dead tasks.

use super::AppState;
use super::error::ApiResult;
use crate::admin::{self, StreamStats, WorkflowCounts};
use axum::Json;
use axum::extract::State;
use serde::Serialize;

/// Answer of `GET /overview`.
#[derive(Debug, Serialize)]
pub struct Overview {
    workflows: WorkflowCounts,
}

/// `GET /overview` — workflows by status.
pub async fn overview(State(state): State<AppState>) -> ApiResult<Json<Overview>> {
    let mut conn = state.conn().await?;
    let workflows = admin::workflow_counts(state.engine().store(), &mut conn).await?;
    Ok(Json(Overview { workflows }))
}

/// Answer of `GET /streams`.
#[derive(Debug, Serialize)]
pub struct StreamsView {
    streams: Vec<StreamStats>,
}

/// `GET /streams` — per agent type: backlog, pending, oldest pending age,
/// consumers, delayed, dead letters, lag.
pub async fn streams(State(state): State<AppState>) -> ApiResult<Json<StreamsView>> {
    let mut conn = state.conn().await?;
    let keys = state.engine().keys();
    let types = admin::agent_types(&mut conn, keys).await?;
    let streams = admin::stream_stats(&mut conn, keys, &types).await?;
    Ok(Json(StreamsView { streams }))
}
