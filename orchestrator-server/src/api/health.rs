//! `/health`, `/ready` and `/metrics`.

use super::AppState;
use super::error::{ApiError, ApiErrorBody, ApiResult};
use agent_sdk::schemas::{AgentType, ORCHESTRATOR_GROUP};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orchestrator::machine::WorkflowStatus;
use serde::Serialize;
use std::fmt::Write;
use std::sync::OnceLock;

static PROMETHEUS: OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
    OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls and a
/// process that already has a recorder get the figures computed per scrape
/// only).
pub fn install_metrics() {
    PROMETHEUS.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .ok()
    });
}

/// Answer of `GET /health`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness
///
/// `GET /health` — the process is up.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    operation_id = "health",
    responses((status = 200, description = "Up", body = Health))
)]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Answer of `GET /ready`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ready {
    /// Always `ready`.
    #[schema(example = "ready")]
    status: &'static str,
    /// The agent types whose results streams this process consumes.
    results_streams: Vec<String>,
}

/// Readiness
///
/// `GET /ready` — Redis answers and every watched results stream has the
/// `orchestrator` group; 503 naming what is missing otherwise.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    operation_id = "ready",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "`not_ready`: Redis does not answer or a consumer group is missing", body = ApiErrorBody),
    )
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    match check_ready(&state).await {
        Ok(types) => Json(Ready {
            status: "ready",
            results_streams: types,
        })
        .into_response(),
        Err(e) => {
            let mut r = e.into_response();
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
    }
}

async fn check_ready(state: &AppState) -> ApiResult<Vec<String>> {
    let unavailable = |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", m);
    let mut conn = state
        .conn()
        .await
        .map_err(|e| unavailable(format!("redis: {}", e.message)))?;
    let _: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(|e| unavailable(format!("redis: {e}")))?;
    // Every watched stream's groups in one round trip, however many types.
    let types = state.engine().watched_types();
    let streams: Vec<String> = types
        .iter()
        .filter_map(|t| AgentType::new(t.clone()).ok())
        .map(|t| state.engine().keys().results(&t))
        .collect();
    if streams.is_empty() {
        return Ok(types);
    }
    let mut pipe = redis::pipe();
    for stream in &streams {
        // A missing stream is an error reply, read as "no group" below.
        pipe.cmd("XINFO").arg("GROUPS").arg(stream);
    }
    let replies: Vec<redis::Value> = pipe
        .ignore_errors()
        .query_async(&mut conn)
        .await
        .map_err(|e| unavailable(format!("redis: {e}")))?;
    for (stream, reply) in streams.iter().zip(replies) {
        let groups: Vec<std::collections::HashMap<String, redis::Value>> =
            redis::from_redis_value(reply).unwrap_or_default();
        let has = groups.iter().any(|g| {
            g.get("name")
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                .is_some_and(|n| n == ORCHESTRATOR_GROUP)
        });
        if !has {
            return Err(unavailable(format!(
                "consumer group {ORCHESTRATOR_GROUP} missing on {stream}"
            )));
        }
    }
    Ok(types)
}

/// Prometheus metrics
///
/// `GET /metrics` — Prometheus text: this process's counters and
/// histograms, plus figures read from Redis at each scrape in a fixed
/// number of round trips: workflows by status (counters the transitions
/// keep, never a walk over the workflows), backlog, delayed and DLQ size
/// per watched agent type. With `--metrics-token-required` it asks for the
/// API token (401 `unauthorized` without it; not in this document, which
/// describes the default, open `/metrics`: the auth layer's roles will
/// settle how the document says it).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4",
            content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    // Any role may read the figures; with the flag, only a known token.
    if state.metrics_token_required() && state.caller(&headers).is_none() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "/metrics needs a bearer token (--metrics-token-required): send Authorization: Bearer <token>",
        ));
    }
    let mut out = String::new();
    let mut conn = state.conn().await?;
    let store = state.engine().store();
    let keys = state.engine().keys();

    let by_status = orchestrator::ops::counts::status_counts(store, &mut conn).await?;
    let total: u64 = redis::cmd("ZCARD")
        .arg(keys.workflows_all())
        .query_async(&mut conn)
        .await
        .map_err(orchestrator::Error::from)?;
    let ended = |s: &str| WorkflowStatus::parse(s).is_some_and(|s| s.is_terminal());
    let _ = writeln!(
        out,
        "# HELP orchestrator_workflows Workflows that have not ended, by status."
    );
    let _ = writeln!(out, "# TYPE orchestrator_workflows gauge");
    for (s, n) in by_status.iter().filter(|(s, _)| !ended(s)) {
        let _ = writeln!(out, "orchestrator_workflows{{status=\"{s}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP orchestrator_workflows_ended Workflows that have ended, by final status."
    );
    let _ = writeln!(out, "# TYPE orchestrator_workflows_ended gauge");
    for (s, n) in by_status.iter().filter(|(s, _)| ended(s)) {
        let _ = writeln!(out, "orchestrator_workflows_ended{{status=\"{s}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP orchestrator_workflows_stored Workflows stored, ended or not."
    );
    let _ = writeln!(out, "# TYPE orchestrator_workflows_stored gauge");
    let _ = writeln!(out, "orchestrator_workflows_stored {total}");

    let types = state.engine().watched_types();
    let mut pipe = redis::pipe();
    for t in &types {
        let Ok(at) = AgentType::new(t.clone()) else {
            continue;
        };
        pipe.cmd("XLEN").arg(keys.tasks(&at));
        pipe.cmd("ZCARD").arg(keys.delayed(&at));
        pipe.cmd("XLEN").arg(keys.dlq(&at));
    }
    let sizes: Vec<u64> = if types.is_empty() {
        Vec::new()
    } else {
        pipe.query_async(&mut conn)
            .await
            .map_err(orchestrator::Error::from)?
    };
    for (i, (name, help)) in [
        (
            "agentic_backlog",
            "Entries in the task stream (waiting or running), by agent type.",
        ),
        (
            "agentic_delayed",
            "Tasks waiting for a retry or a delay, by agent type.",
        ),
        ("agentic_dlq_size", "Dead letters, by agent type."),
    ]
    .iter()
    .enumerate()
    {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (j, t) in types.iter().enumerate() {
            if let Some(n) = sizes.get(j * 3 + i) {
                let _ = writeln!(out, "{name}{{agent_type=\"{t}\"}} {n}");
            }
        }
    }
    super::retention::write_metrics(&state, &mut conn, &mut out).await?;
    if let Some(Some(h)) = PROMETHEUS.get() {
        out.push_str(&h.render());
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}
