//! `GET /api/v1/memory`: Redis memory against `maxmemory`, and the
//! namespace's keys by family from a bounded sample (see
//! [`orchestrator::ops::memory`]).

use super::AppState;
use super::error::{ApiErrorBody, ApiResult};
use super::extract::ApiQuery;
use axum::Json;
use axum::extract::State;
use orchestrator::ops::memory::{self, DEFAULT_SAMPLE, MAX_SAMPLE, MemoryReport};
use serde::Deserialize;

/// Query of `GET /memory`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MemoryQuery {
    /// Keys to look at (1–100000; default 2000): more is closer, slower.
    #[param(minimum = 1, maximum = 100000)]
    sample: Option<usize>,
}

/// Redis memory
///
/// `GET /memory` — `used_memory` against `maxmemory` (`maxmemory` null:
/// none set), and the namespace's keys by family, estimated from a sample
/// (`sampled` says so).
#[utoipa::path(
    get,
    path = "/memory",
    tag = "streams",
    operation_id = "memory",
    params(MemoryQuery),
    responses(
        (status = 200, description = "Memory by key family", body = MemoryReport),
        (status = 400, description = "`bad_query`: an unknown or malformed parameter", body = ApiErrorBody),
        (status = 422, description = "`invalid`: `sample` out of range", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn memory(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<MemoryQuery>,
) -> ApiResult<Json<MemoryReport>> {
    let sample = q.sample.unwrap_or(DEFAULT_SAMPLE);
    if sample == 0 || sample > MAX_SAMPLE {
        return Err(super::error::ApiError::invalid(format!(
            "sample must be 1..={MAX_SAMPLE}"
        )));
    }
    let mut conn = state.conn().await?;
    Ok(Json(
        memory::memory_report(&mut conn, state.engine().keys(), sample).await?,
    ))
}
