//! `/health`, `/ready` and `/metrics`.

use super::AppState;
use super::error::{ApiError, ApiErrorBody, ApiResult};
use agent_sdk::schemas::{AgentType, EntryId, ORCHESTRATOR_GROUP, WORKERS_GROUP};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orchestrator::machine::WorkflowStatus;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

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

/// Which of the engine's loops run: the server marks each while its task
/// lives, and `/ready` is 503 naming one that ended.
#[derive(Debug, Default)]
pub struct Loops {
    running: Mutex<BTreeMap<&'static str, bool>>,
}

impl Loops {
    /// Runs `fut` as loop `name`, marked running until it ends (by return or
    /// panic).
    pub fn track<F: std::future::Future>(
        self: &std::sync::Arc<Self>,
        name: &'static str,
        fut: F,
    ) -> impl std::future::Future<Output = F::Output> + use<F> {
        struct Down(std::sync::Arc<Loops>, &'static str);
        impl Drop for Down {
            fn drop(&mut self) {
                self.0.set(self.1, false);
            }
        }
        self.set(name, true);
        let guard = Down(self.clone(), name);
        async move {
            let _guard = guard;
            fut.await
        }
    }

    fn set(&self, name: &'static str, up: bool) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, up);
    }

    /// The first loop that is not running, if any.
    pub fn down(&self) -> Option<&'static str> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(_, up)| !**up)
            .map(|(n, _)| *n)
    }
}

/// What the port answers while the orchestrator is still connecting to
/// Redis: `/health` 200 (the process is up), `/ready` and everything else
/// 503 saying why. Served from the first moment, so a probe never times out.
pub fn starting_router() -> axum::Router {
    async fn not_yet() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "starting: redis unreachable (connecting)",
        )
    }
    axum::Router::new()
        .route("/health", axum::routing::get(health))
        .route("/ready", axum::routing::get(not_yet))
        .fallback(not_yet)
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
/// `GET /health` — the process is up. Answered from the first moment,
/// before Redis is reached, and whatever Redis does.
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
/// `GET /ready` — Redis answers (within 500 ms), every engine loop runs
/// (results, timers, sweep, changes) and every watched results stream has
/// the `orchestrator` group; 503 naming what is missing otherwise.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    operation_id = "ready",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "`not_ready`: Redis does not answer, a loop is down, or a consumer group is missing", body = ApiErrorBody),
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

/// Longest a readiness check waits for Redis: a probe gets its 503 well
/// inside a second, never a hang, while Redis is unreachable.
const READY_REDIS_WAIT: Duration = Duration::from_millis(500);

async fn check_ready(state: &AppState) -> ApiResult<Vec<String>> {
    let unavailable = |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", m);
    if let Some(down) = state.loops().down() {
        return Err(unavailable(format!("the {down} loop is not running")));
    }
    let ping = async {
        let mut conn = state
            .conn()
            .await
            .map_err(|e| unavailable(format!("redis unreachable: {}", e.message)))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(format!("redis unreachable: {e}")))?;
        Ok::<_, ApiError>(conn)
    };
    let mut conn = tokio::time::timeout(READY_REDIS_WAIT, ping)
        .await
        .map_err(|_| {
            unavailable(format!(
                "redis unreachable: no answer to PING within {} ms",
                READY_REDIS_WAIT.as_millis()
            ))
        })??;
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
    fleet_metrics(&state, &mut conn, &types, &mut out).await?;
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

/// Per agent type (watched or registered): instances by state, and the age
/// of the oldest waiting and oldest pending task. One fleet script call and
/// one pipelined round trip per type, whatever the fleet's size.
async fn fleet_metrics(
    state: &AppState,
    conn: &mut deadpool_redis::Connection,
    watched: &[String],
    out: &mut String,
) -> ApiResult<()> {
    let keys = state.engine().keys();
    let mut types: std::collections::BTreeSet<String> = watched.iter().cloned().collect();
    for t in orchestrator::ops::fleet::types(conn, keys).await? {
        types.insert(t.to_string());
    }
    let types: Vec<AgentType> = types
        .into_iter()
        .filter_map(|t| AgentType::new(t).ok())
        .collect();
    let summaries = orchestrator::ops::fleet::summaries(conn, keys, &types, state.fleet()).await?;
    let _ = writeln!(
        out,
        "# HELP agentic_agents Agent instances by state (gone: vanished, listed for --keep-gone; wedged: live, work waiting, no read, commit or progress for --wedged-after)."
    );
    let _ = writeln!(out, "# TYPE agentic_agents gauge");
    for s in &summaries {
        let ready = s.live.saturating_sub(s.wedged);
        for (state, n) in [("live", ready), ("wedged", s.wedged), ("gone", s.gone)] {
            let _ = writeln!(
                out,
                "agentic_agents{{agent_type=\"{}\",state=\"{state}\"}} {n}",
                s.agent_type
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP agentic_oldest_waiting_age_seconds Age of the oldest task not yet delivered to any worker (the backlog head; 0 when none waits), by agent type."
    );
    let _ = writeln!(out, "# TYPE agentic_oldest_waiting_age_seconds gauge");
    for s in &summaries {
        let age = s.oldest_waiting_age_ms.unwrap_or(0) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "agentic_oldest_waiting_age_seconds{{agent_type=\"{}\"}} {age}",
            s.agent_type
        );
    }
    // Oldest pending: XPENDING's summary per type, one round trip (an error
    // reply for a type without stream or group reads as none pending).
    let mut pipe = redis::pipe();
    pipe.cmd("TIME");
    for t in &types {
        pipe.cmd("XPENDING").arg(keys.tasks(t)).arg(WORKERS_GROUP);
    }
    let replies: Vec<redis::Value> = pipe
        .ignore_errors()
        .query_async(conn)
        .await
        .map_err(orchestrator::Error::from)?;
    let now_ms = replies
        .first()
        .and_then(|v| redis::from_redis_value_ref::<(u64, u64)>(v).ok())
        .map_or(0, |(s, us)| s * 1000 + us / 1000);
    let _ = writeln!(
        out,
        "# HELP agentic_oldest_pending_age_seconds Age since enqueue of the oldest task delivered and not yet settled (0 when none), by agent type."
    );
    let _ = writeln!(out, "# TYPE agentic_oldest_pending_age_seconds gauge");
    for (t, reply) in types.iter().zip(replies.iter().skip(1)) {
        let oldest = match reply {
            redis::Value::Array(parts) => parts
                .get(1)
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                .and_then(|id| EntryId::ms_of(&id)),
            _ => None,
        };
        let age = oldest.map_or(0.0, |ms| now_ms.saturating_sub(ms) as f64 / 1000.0);
        let _ = writeln!(
            out,
            "agentic_oldest_pending_age_seconds{{agent_type=\"{t}\"}} {age}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Loops;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_loop_that_ends_is_reported_down() {
        let loops = Arc::new(Loops::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let results = tokio::spawn(loops.track("results", async move {
            let _ = rx.await;
        }));
        let timers = loops.track("timers", std::future::pending::<()>());
        let _timers = tokio::spawn(timers);
        tokio::task::yield_now().await;
        assert_eq!(loops.down(), None);
        tx.send(()).unwrap();
        results.await.unwrap();
        assert_eq!(loops.down(), Some("results"));
    }
}
