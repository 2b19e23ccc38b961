//! Server-sent events.
//!
//! - `/api/v1/events`: every workflow change in this namespace, live (from
//!   the `N:wfs:changes` channel every replica publishes to).
//! - `/api/v1/workflows/{id}/events`: one workflow's event log, from the
//!   start (or after `Last-Event-ID` / `?after=`), then live, in order, each
//!   event's SSE id being its log entry id; ends with an `end` event once the
//!   workflow has ended. The log is the source: a change message only wakes
//!   the stream up, so a lost message delays an event, never drops it.

use super::AppState;
use super::doc::formats::{EntryIdText, SseEvent, WorkflowId};
use super::error::{ApiError, ApiErrorBody, ApiResult};
use super::extract::ApiQuery;
use super::workflows::is_entry_id;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// Even without a change message, the log is re-read this often, and the
/// running stages' progress with it (a handler's report reaches Redis once
/// per worker heartbeat, so a faster poll would show nothing new).
const PROGRESS_POLL: Duration = Duration::from_secs(1);

fn into_sse(rx: mpsc::Receiver<Event>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Every workflow change, live
///
/// `GET /events` — server-sent events: a `change` event per stored
/// transition of any workflow (data: a `WorkflowChange` as JSON), a
/// `lagged` event when this client fell behind and changes were skipped
/// (re-read the state); keep-alive comments in between.
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    operation_id = "all_events",
    responses(
        (status = 200, description = "An endless event stream: `change` events (data: `WorkflowChange`), `lagged` events",
            content_type = "text/event-stream", body = SseEvent),
    )
)]
pub async fn all(State(state): State<AppState>) -> Response {
    let mut changes = state.inner.changes.subscribe();
    let stop = state.inner.stop.clone();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
                c = changes.recv() => match c {
                    Ok(c) => Event::default()
                        .event("change")
                        .json_data(&*c)
                        .unwrap_or_else(|_| Event::default().comment("unencodable change")),
                    Err(broadcast::error::RecvError::Lagged(n)) => Event::default()
                        .event("lagged")
                        .data(format!("{n} changes skipped: re-read the state")),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    });
    into_sse(rx)
}

/// Query of the per-workflow stream.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Start after this log entry id (`Last-Event-ID` wins when both are given).
    #[param(value_type = Option<EntryIdText>, example = "1700000000000-0")]
    after: Option<String>,
}

/// A workflow's events, live
///
/// `GET /workflows/{id}/events` — server-sent events: the workflow's event
/// log from the start (or after `Last-Event-ID` / `?after=`), then live, a
/// `transition` event per entry (SSE id: the log entry id; data: a
/// `LogEntry` as JSON); a `progress` event (`{"stage", "task_id",
/// "progress": {"fraction", "message", "at_ms", "instance"}}`) when a
/// running stage's handler reported progress (the message is the handler's
/// text: escape it); an `end` event (`{"workflow_id", "ended": true}`) once
/// the workflow has ended, and the stream closes.
#[utoipa::path(
    get,
    path = "/workflows/{id}/events",
    tag = "events",
    operation_id = "workflow_events",
    params(
        ("id" = WorkflowId, Path, description = "Workflow id"),
        ("Last-Event-ID" = Option<EntryIdText>, Header, description = "Resume after this log entry id"),
        StreamQuery,
    ),
    responses(
        (status = 200, description = "An event stream: `transition` events (data: `LogEntry`) and `progress` events (data: `{stage, task_id, progress}`), then `end`",
            content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "`bad_request`: not an event id; `bad_query`: an unknown parameter", body = ApiErrorBody),
        (status = 404, description = "`not_found`: no such workflow", body = ApiErrorBody),
        (status = 500, description = "`internal`: a stored value cannot be read", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn workflow(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> ApiResult<Response> {
    agent_sdk::schemas::names::validate_workflow_id(&id)
        .map_err(|_| ApiError::not_found("workflow", &id))?;
    // A header that is not text is refused, not ignored: the stream would
    // start from the beginning instead of where the client asked.
    let header = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("Last-Event-ID is not an event id"))?
                .to_owned(),
        ),
        None => None,
    };
    // Each one given is checked, though the header wins: a bad `?after=`
    // is refused, not ignored.
    for a in header.iter().chain(q.after.iter()) {
        if !is_entry_id(a) {
            return Err(ApiError::bad_request(format!("not an event id: {a:?}")));
        }
    }
    let mut after = header.or(q.after);
    // Per stage: the (time, fraction) of the progress last sent.
    let mut sent: HashMap<String, (u64, u32)> = HashMap::new();
    {
        let mut conn = state.conn().await?;
        if state.engine().store().load(&mut conn, &id).await?.is_none() {
            return Err(ApiError::not_found("workflow", &id));
        }
    }
    // Subscribe before the first read, so no change falls in between.
    let mut changes = state.inner.changes.subscribe();
    let stop = state.inner.stop.clone();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let entries = match state.conn().await {
                Ok(mut conn) => state
                    .engine()
                    .store()
                    .log(&mut conn, &id, after.as_deref(), 500)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.message),
            };
            let entries = match entries {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(workflow = %id, error = %e, "cannot read the event log for a stream; retrying");
                    Vec::new()
                }
            };
            let mut ended = false;
            let full = entries.len() == 500;
            for e in entries {
                ended = e.status.is_terminal();
                after = Some(e.id.clone());
                let ev = Event::default()
                    .event("transition")
                    .id(e.id.clone())
                    .json_data(&e)
                    .unwrap_or_else(|_| Event::default().comment("unencodable entry"));
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            if ended && !full {
                let _ = tx
                    .send(
                        Event::default().event("end").data(
                            serde_json::json!({ "workflow_id": id, "ended": true }).to_string(),
                        ),
                    )
                    .await;
                return;
            }
            if full {
                continue;
            }
            // Running stages' progress, when it moved since last sent.
            for ev in progress_events(&state, &id, &mut sent).await {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            // Wait for a change of this workflow (or poll, often enough to
            // follow progress: a handler's report reaches Redis once per
            // worker heartbeat).
            let deadline = tokio::time::sleep(PROGRESS_POLL);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = &mut deadline => break,
                    c = changes.recv() => match c {
                        Ok(c) if c.workflow_id == id => break,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        }
    });
    Ok(into_sse(rx))
}

/// `progress` events of `id`'s running stages whose report changed since
/// `sent` (updated). Errors only cost this round's events.
async fn progress_events(
    state: &AppState,
    id: &str,
    sent: &mut HashMap<String, (u64, u32)>,
) -> Vec<Event> {
    let Ok(mut conn) = state.conn().await else {
        return Vec::new();
    };
    let Ok(Some(stored)) = state.engine().store().load(&mut conn, id).await else {
        return Vec::new();
    };
    let wf = stored.workflow;
    let Ok(def) = state
        .engine()
        .catalog()
        .get(&mut conn, &wf.definition, Some(wf.definition_version))
        .await
    else {
        return Vec::new();
    };
    let Ok(progress) = super::workflows::running_progress(state, &mut conn, &wf, &def).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in &wf.stages {
        let Some(p) = s.task_id.as_ref().and_then(|t| progress.get(t)) else {
            continue;
        };
        let mark = (p.at_ms, p.fraction.to_bits());
        if sent.get(&s.name) == Some(&mark) {
            continue;
        }
        sent.insert(s.name.clone(), mark);
        // A struct, not `json!`: a `Value` would widen the f32 (0.42 →
        // 0.41999998688697815).
        #[derive(serde::Serialize)]
        struct StageProgress<'a> {
            stage: &'a str,
            task_id: Option<&'a str>,
            progress: &'a agent_sdk::schemas::TaskProgress,
        }
        let data = StageProgress {
            stage: &s.name,
            task_id: s.task_id.as_deref(),
            progress: p,
        };
        out.push(
            Event::default()
                .event("progress")
                .json_data(&data)
                .unwrap_or_else(|_| Event::default().comment("unencodable progress")),
        );
    }
    out
}
