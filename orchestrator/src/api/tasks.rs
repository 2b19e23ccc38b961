//! `/api/v1/tasks...`: submit a standalone task to an agent type and read
//! its result.

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery};
use agent_sdk::EnqueueOptions;
use agent_sdk::schemas::{AgentType, ResultEnvelope};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// Longest `?wait=` on a result.
const MAX_WAIT: Duration = Duration::from_secs(30);

fn agent_type(s: &str) -> ApiResult<AgentType> {
    AgentType::new(s).map_err(|e| ApiError::invalid(e.to_string()))
}

fn duration(what: &str, s: &Option<String>) -> ApiResult<Option<Duration>> {
    s.as_deref()
        .map(|s| {
            humantime::parse_duration(s)
                .map_err(|e| ApiError::invalid(format!("{what} {s:?}: {e} (write e.g. 30s, 5m)")))
        })
        .transpose()
}

/// Body of `POST /tasks/{agent_type}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The task input.
    input: Value,
    /// Enqueue at most once per key.
    #[serde(default)]
    idempotency_key: Option<String>,
    /// Run no sooner than this (`10s`).
    #[serde(default)]
    delay: Option<String>,
    /// Handler timeout (`30s`).
    #[serde(default)]
    timeout: Option<String>,
    /// Attempts allowed.
    #[serde(default)]
    max_attempts: Option<u32>,
}

/// Answer of `POST /tasks/{agent_type}`.
#[derive(Debug, Serialize)]
pub struct Submitted {
    task_id: String,
    agent_type: String,
    /// True when the idempotency key was used before (nothing was added).
    duplicate: bool,
}

/// `POST /tasks/{agent_type}` — 202 with the task id and a `Location` for its result.
pub async fn submit(
    State(state): State<AppState>,
    Path(t): Path<String>,
    ApiJson(req): ApiJson<SubmitRequest>,
) -> ApiResult<Response> {
    let t = agent_type(&t)?;
    if let Some(n) = req.max_attempts
        && !(1..=100).contains(&n)
    {
        return Err(ApiError::invalid("max_attempts must be 1..=100"));
    }
    let enq = state
        .engine()
        .client()
        .enqueue(
            &t,
            &req.input,
            EnqueueOptions {
                idempotency_key: req.idempotency_key,
                delay: duration("delay", &req.delay)?,
                timeout: duration("timeout", &req.timeout)?,
                max_attempts: req.max_attempts,
                ..EnqueueOptions::default()
            },
        )
        .await?;
    state.engine().watch(t.as_str());
    let loc = HeaderValue::from_str(&format!("/api/v1/tasks/{t}/{}", enq.task_id))
        .unwrap_or_else(|_| HeaderValue::from_static("/api/v1/tasks"));
    let body = Submitted {
        task_id: enq.task_id,
        agent_type: t.to_string(),
        duplicate: enq.duplicate,
    };
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, loc)], Json(body)).into_response())
}

/// Query of `GET /tasks/{agent_type}/{task_id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultQuery {
    /// Wait up to this long for the result (`5s`, at most 30s).
    wait: Option<String>,
}

/// `GET /tasks/{agent_type}/{task_id}?wait=5s` — the result, or 404 while there is none.
pub async fn result(
    State(state): State<AppState>,
    Path((t, task_id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ResultQuery>,
) -> ApiResult<Json<ResultEnvelope>> {
    let t = agent_type(&t)?;
    agent_sdk::schemas::names::validate_task_id(&task_id)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let wait = duration("wait", &q.wait)?.unwrap_or_default();
    if wait > MAX_WAIT {
        return Err(ApiError::invalid("wait must be at most 30s"));
    }
    let client = state.engine().client();
    let r = if wait.is_zero() {
        client.result(&t, &task_id).await?
    } else {
        client.wait_for_result(&t, &task_id, wait).await?
    };
    r.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_result",
            format!("task {task_id:?} has no result (yet, or it expired)"),
        )
    })
}
