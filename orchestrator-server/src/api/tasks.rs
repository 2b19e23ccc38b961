//! `/api/v1/tasks...`: submit a standalone task to an agent type and read
//! its result.

use super::AppState;
use super::auth::audit;
use super::doc::formats::{self, AgentTypeName, DurationText, TaskKey, WaitText};
use super::error::{ApiError, ApiErrorBody, ApiResult};
use super::extract::{ApiJson, ApiQuery, check_input};
use crate::tokens::Caller;
use agent_sdk::EnqueueOptions;
use agent_sdk::schemas::{AgentType, ResultEnvelope};
use axum::Extension;
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
        .map(|s| formats::duration(what, s).map_err(ApiError::invalid))
        .transpose()
}

/// Whether a registered definition (a stage or a compensation) or a live
/// agent names `t`: raw tasks go only to such types, so a request cannot
/// make up streams and consumers.
async fn known_type(state: &AppState, t: &AgentType) -> ApiResult<bool> {
    if state
        .engine()
        .watched_types()
        .iter()
        .any(|w| w == t.as_str())
    {
        return Ok(true);
    }
    let mut conn = state.conn().await?;
    let defs = state.engine().catalog().latest_all(&mut conn).await?;
    let named = defs.iter().flat_map(|d| &d.stages).any(|s| {
        s.agent == t.as_str()
            || s.compensate
                .as_ref()
                .and_then(|c| c.agent.as_ref())
                .is_some_and(|a| a == t.as_str())
    });
    if named {
        return Ok(true);
    }
    let agents = state.engine().client().agents().await?;
    Ok(agents.iter().any(|a| a.agent_type == t.as_str()))
}

/// Body of `POST /tasks/{agent_type}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The task input: nested at most 62 levels, at most 256 KiB as the
    /// task carries it (MessagePack).
    input: Value,
    /// Enqueue at most once per key.
    #[schema(value_type = Option<TaskKey>)]
    #[serde(default)]
    idempotency_key: Option<String>,
    /// Run no sooner than this (`10s`).
    #[schema(value_type = Option<DurationText>, example = "10s")]
    #[serde(default)]
    delay: Option<String>,
    /// Handler timeout (`30s`).
    #[schema(value_type = Option<DurationText>, example = "30s")]
    #[serde(default)]
    timeout: Option<String>,
    /// Attempts allowed, 1–100.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(
        default,
        deserialize_with = "orchestrator::definition::integral::opt_u32"
    )]
    max_attempts: Option<u32>,
}

/// Answer of `POST /tasks/{agent_type}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Submitted {
    /// The task id (the handle of its result).
    task_id: String,
    /// The agent type.
    agent_type: String,
    /// True when the idempotency key was used before (nothing was added).
    duplicate: bool,
}

/// Submit a task
///
/// `POST /tasks/{agent_type}` — 202 with the task id and a `Location` for its result.
#[utoipa::path(
    post,
    path = "/tasks/{agent_type}",
    tag = "tasks",
    operation_id = "submit_task",
    params(("agent_type" = AgentTypeName, Path, description = "Agent type")),
    request_body = SubmitRequest,
    responses(
        (status = 202, description = "Enqueued (or a duplicate of the same idempotency key)", body = Submitted,
            headers(("Location" = String, description = "`/api/v1/tasks/{agent_type}/{task_id}`"))),
        (status = 400, description = "`malformed_json`: the body is not JSON; `too_deep`: nested more than 64 levels; `bad_body`: it could not be read", body = ApiErrorBody),
        (status = 413, description = "`body_too_large`", body = ApiErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ApiErrorBody),
        (status = 422, description = "`invalid_body`: wrong shape or an unknown field; `invalid`: a bad agent type, duration or max_attempts, or an input over the input limits (62 levels deep, 256 KiB encoded)", body = ApiErrorBody),
        (status = 404, description = "`unknown_agent_type`: no registered definition and no live agent names the type (nothing is enqueued)", body = ApiErrorBody),
        (status = 500, description = "`internal`: a stored value cannot be read", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(t): Path<String>,
    ApiJson(req): ApiJson<SubmitRequest>,
) -> ApiResult<Response> {
    let t = agent_type(&t)?;
    if !known_type(&state, &t).await? {
        // Not found, as a route to a type nothing knows: the request may be
        // well formed, the type is simply not one the system serves.
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_agent_type",
            format!(
                "no registered definition and no live agent names agent type {t:?}: \
                 a raw task goes only to a type the system knows"
            ),
        ));
    }
    if let Some(n) = req.max_attempts
        && !(1..=100).contains(&n)
    {
        return Err(ApiError::invalid("max_attempts must be 1..=100"));
    }
    check_input(&req.input)?;
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
    audit(&caller, "raw_task", &format!("{t}/{}", enq.task_id));
    // The type is not watched because of this request: a request alone
    // never makes the orchestrator consume a stream. Standalone results are
    // read by their caller (`GET /tasks/{type}/{id}`).
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
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ResultQuery {
    /// Wait up to this long for the result: 0–30 whole seconds (`5s`).
    #[param(value_type = Option<WaitText>, example = "5s")]
    wait: Option<String>,
}

/// A task's result
///
/// `GET /tasks/{agent_type}/{task_id}?wait=5s` — the result, or 404 while there is none.
#[utoipa::path(
    get,
    path = "/tasks/{agent_type}/{task_id}",
    tag = "tasks",
    operation_id = "task_result",
    params(
        ("agent_type" = AgentTypeName, Path, description = "Agent type"),
        ("task_id" = TaskKey, Path, description = "Task id"),
        ResultQuery,
    ),
    responses(
        (status = 200, description = "The result", body = ResultEnvelope),
        (status = 400, description = "`bad_query`: an unknown parameter", body = ApiErrorBody),
        (status = 404, description = "`no_result`: no result yet, or it expired", body = ApiErrorBody),
        (status = 422, description = "`invalid`: a bad agent type, task id or wait", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn result(
    State(state): State<AppState>,
    Path((t, task_id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ResultQuery>,
) -> ApiResult<Json<ResultEnvelope>> {
    let t = agent_type(&t)?;
    agent_sdk::schemas::names::validate_task_id(&task_id)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let wait = match &q.wait {
        Some(w) => formats::wait(w, MAX_WAIT).map_err(ApiError::invalid)?,
        None => Duration::ZERO,
    };
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
