//! `/api/v1/workflows...`: create, read, list, operator actions, event log.

use super::AppState;
use super::auth::audit;
use super::doc::formats::{self, EntryIdText, JsonObject, Name, WorkflowId};
use super::error::{ApiError, ApiErrorBody, ApiResult};
use super::extract::{ApiJson, ApiQuery, OptionalJson, check_input};
use super::workflow_why::WorkflowDetail;
use crate::tokens::Caller;
use agent_sdk::schemas::AgentType;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use orchestrator::engine::{Creation, NewWorkflow, OperatorAction};
use orchestrator::machine::{StageStatus, Workflow, WorkflowStatus};
use orchestrator::store::{ListFilter, LogEntry, Page};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Body of `POST /workflows`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Definition name.
    #[schema(value_type = Name)]
    definition: String,
    /// Definition version (the latest when absent).
    #[schema(minimum = 1)]
    #[serde(
        default,
        deserialize_with = "orchestrator::definition::integral::opt_u32"
    )]
    version: Option<u32>,
    /// Workflow input, passed to every stage (null when absent): nested at
    /// most 62 levels, at most 256 KiB as its tasks carry it (MessagePack).
    #[serde(default)]
    input: Value,
    /// Workflow id (1–48 of `A-Z a-z 0-9 - _ .`); generated when absent.
    #[schema(value_type = Option<WorkflowId>)]
    #[serde(default)]
    id: Option<String>,
}

/// A workflow as the API shows it: its state, plus `version`, `progress`
/// and `stage_details`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkflowView {
    #[serde(flatten)]
    workflow: Workflow,
    /// Transitions stored.
    version: u64,
    /// Completed stages in percent.
    progress: u8,
    /// Per stage: the agent that runs it and how long it took.
    stage_details: Vec<StageDetail>,
}

/// One stage of a workflow, as its definition says.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct StageDetail {
    /// Stage name.
    name: String,
    /// Agent type that runs it.
    agent: String,
    /// Stages that must complete first.
    depends_on: Vec<String>,
    /// Dispatch number of the current run (1 = first; a replay keeps it).
    attempt: u32,
    /// From its last dispatch to its end, once it has ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<u64>,
    /// While it runs: its handler's latest progress report (fraction,
    /// message, when by the Redis clock, instance), if it reported any.
    /// The message is the handler's text: escape it.
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<agent_sdk::schemas::TaskProgress>,
}

/// Builds the view on the caller's connection: a handler never holds two
/// pooled connections at once (that deadlocks a busy pool).
async fn view(
    state: &AppState,
    conn: &mut deadpool_redis::Connection,
    workflow: Workflow,
    version: u64,
) -> ApiResult<WorkflowView> {
    let def = state
        .engine()
        .catalog()
        .get(
            conn,
            &workflow.definition,
            Some(workflow.definition_version),
        )
        .await?;
    let progress = running_progress(state, conn, &workflow, &def).await?;
    Ok(view_of(&def, workflow, version, &progress))
}

/// The view of `workflow` of definition `def` (no I/O), with the latest
/// progress of its running stages' tasks (by task id).
fn view_of(
    def: &orchestrator::Definition,
    workflow: Workflow,
    version: u64,
    progress: &std::collections::HashMap<String, agent_sdk::schemas::TaskProgress>,
) -> WorkflowView {
    let stage_details = workflow
        .stages
        .iter()
        .map(|s| {
            let sd = def.stage(&s.name);
            StageDetail {
                progress: (s.status == orchestrator::machine::StageStatus::Running)
                    .then(|| s.task_id.as_ref().and_then(|t| progress.get(t).cloned()))
                    .flatten(),
                name: s.name.clone(),
                agent: sd.map(|d| d.agent.clone()).unwrap_or_default(),
                depends_on: sd.map(|d| d.depends_on.clone()).unwrap_or_default(),
                attempt: s.dispatches,
                duration_ms: s
                    .started_at_ms
                    .zip(s.finished_at_ms)
                    .map(|(a, b)| b.saturating_sub(a)),
            }
        })
        .collect();
    WorkflowView {
        progress: workflow.progress(),
        workflow,
        version,
        stage_details,
    }
}

/// The latest progress of `workflow`'s running stages, by task id: one
/// `HMGET` per agent type.
pub(super) async fn running_progress(
    state: &AppState,
    conn: &mut deadpool_redis::Connection,
    workflow: &Workflow,
    def: &orchestrator::Definition,
) -> ApiResult<std::collections::HashMap<String, agent_sdk::schemas::TaskProgress>> {
    let running: Vec<(&str, &str)> = workflow
        .stages
        .iter()
        .filter(|s| s.status == orchestrator::machine::StageStatus::Running)
        .filter_map(|s| Some((def.stage(&s.name)?.agent.as_str(), s.task_id.as_deref()?)))
        .collect();
    Ok(orchestrator::ops::fleet::running_progress(conn, state.engine().keys(), &running).await?)
}

fn location(id: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("/api/v1/workflows/{id}"))
        .unwrap_or_else(|_| HeaderValue::from_static("/api/v1/workflows"))
}

/// Start a workflow
///
/// `POST /workflows` — 201 with the workflow and its `Location`.
///
/// Idempotent by `id`: sending the same body again (same `id`, definition,
/// version if given, input) answers 200 with the workflow it created; a
/// different body for a taken `id` is 409. Once the workflow is stored the
/// answer is a success: 202 when its first tasks could not be dispatched
/// yet (Redis out of memory, a lost connection) — they wait in its outbox
/// and an orchestrator's sweeper dispatches them. A 503 `unconfirmed` names
/// the id of a workflow whose store may have happened: send the body again
/// with that `id`. Without an `id` a retry creates another workflow.
#[utoipa::path(
    post,
    path = "/workflows",
    tag = "workflows",
    operation_id = "create_workflow",
    request_body = CreateRequest,
    responses(
        (status = 200, description = "The same request came before (same `id` and body): the workflow it created", body = WorkflowView,
            headers(("Location" = String, description = "`/api/v1/workflows/{id}`"))),
        (status = 201, description = "Created and started", body = WorkflowView,
            headers(("Location" = String, description = "`/api/v1/workflows/{id}`"))),
        (status = 202, description = "Stored; its first tasks are dispatched by the sweeper (Redis refused the dispatch for now)", body = WorkflowView,
            headers(("Location" = String, description = "`/api/v1/workflows/{id}`"))),
        (status = 400, description = "`malformed_json`: the body is not JSON; `too_deep`: nested more than 64 levels; `bad_body`: it could not be read", body = ApiErrorBody),
        (status = 404, description = "`not_found`: no such definition or version", body = ApiErrorBody),
        (status = 409, description = "`conflict`: a workflow with this id exists with another definition or input", body = ApiErrorBody),
        (status = 413, description = "`body_too_large`", body = ApiErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ApiErrorBody),
        (status = 422, description = "`invalid_body`: wrong shape or an unknown field; `invalid`: a bad workflow id, or an input over the input limits (62 levels deep, 256 KiB encoded)", body = ApiErrorBody),
        (status = 500, description = "`internal`: a stored value cannot be read", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached, nothing was stored; `unconfirmed`: the store may have happened — the message names the workflow id to send again", body = ApiErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CreateRequest>,
) -> ApiResult<Response> {
    check_input(&req.input)?;
    let mut conn = state.conn().await?;
    let created = state
        .engine()
        .create(
            &mut conn,
            NewWorkflow {
                definition: req.definition,
                version: req.version,
                input: req.input,
                id: req.id,
            },
        )
        .await?;
    let status = match created.creation {
        Creation::Created => StatusCode::CREATED,
        Creation::Existing => StatusCode::OK,
        Creation::Stored => StatusCode::ACCEPTED,
    };
    if created.creation != Creation::Existing {
        audit(&caller, "start", &created.workflow.id);
    }
    let loc = location(&created.workflow.id);
    // Built from what the create returned: no further read can turn a
    // stored workflow's answer into an error.
    let body = view_of(
        &created.definition,
        created.workflow,
        created.version,
        &Default::default(),
    );
    Ok((status, [(header::LOCATION, loc)], Json(body)).into_response())
}

async fn load(
    state: &AppState,
    conn: &mut deadpool_redis::Connection,
    id: &str,
) -> ApiResult<(Workflow, u64)> {
    agent_sdk::schemas::names::validate_workflow_id(id)
        .map_err(|_| ApiError::not_found("workflow", id))?;
    match state.engine().store().load(conn, id).await? {
        Some(s) => Ok((s.workflow, s.version)),
        None => Err(ApiError::not_found("workflow", id)),
    }
}

/// One workflow
///
/// `GET /workflows/{id}`: status, progress, every stage (status, attempt,
/// times, duration, output or error, compensation), and `why`: for every
/// stage that has not ended, one reason with its evidence.
#[utoipa::path(
    get,
    path = "/workflows/{id}",
    tag = "workflows",
    operation_id = "get_workflow",
    params(("id" = WorkflowId, Path, description = "Workflow id")),
    responses(
        (status = 200, description = "The workflow, and why each stage that has not ended is where it is", body = WorkflowDetail),
        (status = 404, description = "`not_found`: no such workflow", body = ApiErrorBody),
        (status = 500, description = "`internal`: a stored value cannot be read", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkflowDetail>> {
    let mut conn = state.conn().await?;
    let (wf, v) = load(&state, &mut conn, &id).await?;
    let why = super::workflow_why::explain(&state, &mut conn, &wf).await?;
    Ok(Json(WorkflowDetail {
        view: view(&state, &mut conn, wf, v).await?,
        why,
    }))
}

/// Query of `GET /workflows`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only workflows with this status: pending, running, awaiting_approval,
    /// blocked, compensating, completed, failed, cancelled.
    #[param(value_type = Option<WorkflowStatus>)]
    status: Option<String>,
    /// Only workflows of this definition.
    definition: Option<String>,
    /// The `next` of the previous page (`<ms>:<workflow id>`).
    #[param(pattern = "^[0-9]{1,19}:")]
    cursor: Option<String>,
    /// Page size, 1–1000 (50 by default).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// List workflows
///
/// `GET /workflows?status=&definition=&limit=&cursor=` — newest first;
/// `next` is the cursor of the next page.
#[utoipa::path(
    get,
    path = "/workflows",
    tag = "workflows",
    operation_id = "list_workflows",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of workflows, newest first", body = orchestrator::store::Page),
        (status = 400, description = "`bad_query`: an unknown parameter or a bad value; `bad_request`: an unknown status, a limit out of range or a cursor that is not a page's `next`", body = ApiErrorBody),
        (status = 500, description = "`internal`: a stored value cannot be read", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page>> {
    let status = match &q.status {
        Some(s) => Some(WorkflowStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown status {s:?}: one of pending, running, awaiting_approval, blocked, \
                 compensating, completed, failed, cancelled"
            ))
        })?),
        None => None,
    };
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit must be 1..=1000"));
    }
    if let Some(c) = &q.cursor
        && !formats::is_cursor(c)
    {
        return Err(ApiError::bad_request(format!(
            "cursor {c:?} is not the `next` of a page (<ms>:<workflow id>)"
        )));
    }
    let mut conn = state.conn().await?;
    let page = state
        .engine()
        .store()
        .list(
            &mut conn,
            &ListFilter {
                status,
                definition: q.definition,
                cursor: q.cursor,
                limit,
            },
        )
        .await?;
    Ok(Json(page))
}

/// Body of cancel / abort / reject (optional: an empty body is `{}`).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    /// Why, for the log (at most 1024 characters).
    #[schema(max_length = 1024)]
    #[serde(default)]
    reason: Option<String>,
}

/// Body of approve and stage replay: nothing to say, but a POST carries
/// JSON (an empty body or `{}`), like every POST of the API.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoBody {}

fn reason(r: ReasonRequest, default: &str) -> ApiResult<String> {
    let r = r.reason.unwrap_or_else(|| default.to_owned());
    // Characters, as the document's maxLength counts them.
    if r.chars().count() > 1024 {
        return Err(ApiError::invalid("reason is longer than 1024 characters"));
    }
    Ok(r)
}

/// Carries out an operator's action; 404 / 409 as [`Engine::act`] says.
async fn act(
    state: &AppState,
    caller: &Caller,
    id: &str,
    action: OperatorAction,
) -> ApiResult<Json<WorkflowView>> {
    let name = match &action {
        OperatorAction::Cancel { .. } => "cancel",
        OperatorAction::Abort { .. } => "abort",
        OperatorAction::Approve { .. } => "approve",
        OperatorAction::Reject { .. } => "reject",
    };
    audit(caller, name, id);
    let mut conn = state.conn().await?;
    let (workflow, version) = state
        .engine()
        .act_by(&mut conn, id, &action, Some(&caller.name))
        .await?;
    Ok(Json(view(state, &mut conn, workflow, version).await?))
}

/// Cancel a workflow
///
/// `POST /workflows/{id}/cancel` — stop dispatching, compensate, end `cancelled`.
#[utoipa::path(
    post,
    path = "/workflows/{id}/cancel",
    tag = "workflows",
    operation_id = "cancel_workflow",
    params(("id" = WorkflowId, Path, description = "Workflow id")),
    request_body = Option<ReasonRequest>,
    responses(
        (status = 200, description = "Cancelling: the workflow after the transition", body = WorkflowView),
        (status = 400, description = "`malformed_json`: the body is not JSON; `too_deep`: nested more than 64 levels; `bad_body`: it could not be read", body = ApiErrorBody),
        (status = 404, description = "`not_found`: no such workflow", body = ApiErrorBody),
        (status = 409, description = "`conflict`: nothing to do (it has ended or is ending)", body = ApiErrorBody),
        (status = 413, description = "`body_too_large`", body = ApiErrorBody),
        (status = 415, description = "`unsupported_media_type`: a body that is not `application/json`", body = ApiErrorBody),
        (status = 422, description = "`invalid_body`: wrong shape or an unknown field; `invalid`: the reason is too long", body = ApiErrorBody),
        (status = 500, description = "`internal`: a stored value cannot be read", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<Option<JsonObject<ReasonRequest>>>,
) -> ApiResult<Json<WorkflowView>> {
    let reason = reason(
        body.map(|b| b.0).unwrap_or_default(),
        "cancelled by an operator",
    )?;
    act(&state, &caller, &id, OperatorAction::Cancel { reason }).await
}

/// Abort a workflow
///
/// `POST /workflows/{id}/abort` — compensate, end `failed` (for a blocked workflow).
#[utoipa::path(
    post,
    path = "/workflows/{id}/abort",
    tag = "workflows",
    operation_id = "abort_workflow",
    params(("id" = WorkflowId, Path, description = "Workflow id")),
    request_body = Option<ReasonRequest>,
    responses(
        (status = 200, description = "Aborting: the workflow after the transition", body = WorkflowView),
        (status = 400, description = "`malformed_json`: the body is not JSON; `too_deep`: nested more than 64 levels; `bad_body`: it could not be read", body = ApiErrorBody),
        (status = 404, description = "`not_found`: no such workflow", body = ApiErrorBody),
        (status = 409, description = "`conflict`: nothing to do (it has ended or is ending)", body = ApiErrorBody),
        (status = 413, description = "`body_too_large`", body = ApiErrorBody),
        (status = 415, description = "`unsupported_media_type`: a body that is not `application/json`", body = ApiErrorBody),
        (status = 422, description = "`invalid_body`: wrong shape or an unknown field; `invalid`: the reason is too long", body = ApiErrorBody),
        (status = 500, description = "`internal`: a stored value cannot be read", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn abort(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<Option<JsonObject<ReasonRequest>>>,
) -> ApiResult<Json<WorkflowView>> {
    let reason = reason(
        body.map(|b| b.0).unwrap_or_default(),
        "aborted by an operator",
    )?;
    act(&state, &caller, &id, OperatorAction::Abort { reason }).await
}

async fn stage_exists(state: &AppState, id: &str, stage: &str) -> ApiResult<(Workflow, u64)> {
    let mut conn = state.conn().await?;
    let (wf, v) = load(state, &mut conn, id).await?;
    if wf.stage(stage).is_none() {
        return Err(ApiError::not_found("stage", stage));
    }
    Ok((wf, v))
}

/// Approve a stage
///
/// `POST /workflows/{id}/stages/{stage}/approve` — an approval stage that
/// waits is dispatched.
#[utoipa::path(
    post,
    path = "/workflows/{id}/stages/{stage}/approve",
    tag = "workflows",
    operation_id = "approve_stage",
    params(("id" = WorkflowId, Path, description = "Workflow id"), ("stage" = Name, Path, description = "Stage name")),
    request_body = Option<NoBody>,
    responses(
        (status = 200, description = "Approved: the workflow after the transition", body = WorkflowView),
        (status = 400, description = "`malformed_json`: the body is not JSON; `bad_body`: it could not be read", body = ApiErrorBody),
        (status = 413, description = "`body_too_large`", body = ApiErrorBody),
        (status = 422, description = "`invalid_body`: not an empty object", body = ApiErrorBody),
        (status = 404, description = "`not_found`: no such workflow or stage", body = ApiErrorBody),
        (status = 409, description = "`conflict`: the stage is not waiting for approval", body = ApiErrorBody),
        (status = 415, description = "`unsupported_media_type`: a body that is not `application/json`", body = ApiErrorBody),
        (status = 422, description = "`invalid`: a bad workflow id", body = ApiErrorBody),
        (status = 500, description = "`internal`: a stored value cannot be read", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn approve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, stage)): Path<(String, String)>,
    // No body, `null` or `{}` alike.
    OptionalJson(_): OptionalJson<Option<JsonObject<NoBody>>>,
) -> ApiResult<Json<WorkflowView>> {
    act(&state, &caller, &id, OperatorAction::Approve { stage }).await
}

/// Reject a stage
///
/// `POST /workflows/{id}/stages/{stage}/reject` — an approval stage that
/// waits fails, and the workflow is compensated.
#[utoipa::path(
    post,
    path = "/workflows/{id}/stages/{stage}/reject",
    tag = "workflows",
    operation_id = "reject_stage",
    params(("id" = WorkflowId, Path, description = "Workflow id"), ("stage" = Name, Path, description = "Stage name")),
    request_body = Option<ReasonRequest>,
    responses(
        (status = 200, description = "Rejected: the workflow after the transition", body = WorkflowView),
        (status = 400, description = "`malformed_json`: the body is not JSON; `too_deep`: nested more than 64 levels; `bad_body`: it could not be read", body = ApiErrorBody),
        (status = 404, description = "`not_found`: no such workflow or stage", body = ApiErrorBody),
        (status = 409, description = "`conflict`: the stage is not waiting for approval", body = ApiErrorBody),
        (status = 413, description = "`body_too_large`", body = ApiErrorBody),
        (status = 415, description = "`unsupported_media_type`: a body that is not `application/json`", body = ApiErrorBody),
        (status = 422, description = "`invalid_body`: wrong shape or an unknown field; `invalid`: the reason is too long", body = ApiErrorBody),
        (status = 500, description = "`internal`: a stored value cannot be read", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn reject(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, stage)): Path<(String, String)>,
    OptionalJson(body): OptionalJson<Option<JsonObject<ReasonRequest>>>,
) -> ApiResult<Json<WorkflowView>> {
    let reason = reason(
        body.map(|b| b.0).unwrap_or_default(),
        "rejected by an operator",
    )?;
    act(
        &state,
        &caller,
        &id,
        OperatorAction::Reject { stage, reason },
    )
    .await
}

/// Replay a dead-lettered stage
///
/// `POST /workflows/{id}/stages/{stage}/replay` — replays the dead letter of
/// a dead-lettered stage; the workflow resumes when its result comes.
#[utoipa::path(
    post,
    path = "/workflows/{id}/stages/{stage}/replay",
    tag = "workflows",
    operation_id = "replay_stage",
    params(("id" = WorkflowId, Path, description = "Workflow id"), ("stage" = Name, Path, description = "Stage name")),
    request_body = Option<NoBody>,
    responses(
        (status = 200, description = "Replayed: the workflow after the transition", body = WorkflowView),
        (status = 400, description = "`malformed_json`: the body is not JSON; `bad_body`: it could not be read", body = ApiErrorBody),
        (status = 413, description = "`body_too_large`", body = ApiErrorBody),
        (status = 404, description = "`not_found`: no such workflow or stage", body = ApiErrorBody),
        (status = 409, description = "`conflict`: the stage is not dead-lettered, or its dead letter is gone", body = ApiErrorBody),
        (status = 415, description = "`unsupported_media_type`: a body that is not `application/json`", body = ApiErrorBody),
        (status = 422, description = "`invalid_body`: not an empty object; `invalid`: the stage's agent type is not a valid name", body = ApiErrorBody),
        (status = 500, description = "`internal`: a stored value cannot be read", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn replay(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, stage)): Path<(String, String)>,
    // No body, `null` or `{}` alike.
    OptionalJson(_): OptionalJson<Option<JsonObject<NoBody>>>,
) -> ApiResult<Json<WorkflowView>> {
    audit(&caller, "replay", &format!("{id}/{stage}"));
    let (wf, _) = stage_exists(&state, &id, &stage).await?;
    let s = wf
        .stage(&stage)
        .ok_or_else(|| ApiError::not_found("stage", &stage))?;
    if s.status != StageStatus::DeadLettered {
        return Err(ApiError::conflict(format!(
            "stage {stage} is not dead-lettered"
        )));
    }
    let task_id = s.task_id.clone().unwrap_or_default();
    let mut conn = state.conn().await?;
    let def = state
        .engine()
        .catalog()
        .get(&mut conn, &wf.definition, Some(wf.definition_version))
        .await?;
    let agent = def
        .stage(&stage)
        .map(|d| d.agent.clone())
        .ok_or_else(|| ApiError::not_found("stage", &stage))?;
    let agent = AgentType::new(agent).map_err(|e| ApiError::invalid(e.to_string()))?;
    // By the dlq-index: found whatever the DLQ's length.
    let dlq = state.engine().client().dead_letters();
    let Some(entry) = dlq.find_by_task(&agent, &task_id).await? else {
        return Err(ApiError::conflict(format!(
            "no dead letter of task {task_id} in {agent}'s DLQ (replayed or purged already?)"
        )));
    };
    // Through the same replay as the DLQ routes and agentctl: recorded in
    // the workflow before the move (see `ops::dlq::replay`).
    let report = orchestrator::ops::dlq::replay(
        state.engine(),
        &mut conn,
        &agent,
        &orchestrator::ops::dlq::Selection::Ids(vec![entry.id.clone()]),
        &orchestrator::ops::dlq::ReplayOptions {
            by: Some(caller.name.clone()),
            ..orchestrator::ops::dlq::ReplayOptions::default()
        },
        |_| {},
    )
    .await?;
    if report.replayed != 1 {
        let why = report
            .items
            .first()
            .and_then(|i| i.error.clone())
            .unwrap_or_else(|| "it was replayed or purged meanwhile".into());
        return Err(ApiError::conflict(format!(
            "dead letter {} was not replayed: {why}",
            entry.id
        )));
    }
    let (workflow, version) = load(&state, &mut conn, &id).await?;
    Ok(Json(view(&state, &mut conn, workflow, version).await?))
}

/// Query of `GET /workflows/{id}/log`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Only entries after this entry id (the `next` of the previous page).
    #[param(value_type = Option<EntryIdText>, example = "1700000000000-0")]
    after: Option<String>,
    /// Page size, 1–10000 (1000 by default).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

/// A page of the event log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogPage {
    /// Oldest first.
    items: Vec<LogEntry>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// Whether `s` is a stream entry id (`ms-seq`).
pub(super) fn is_entry_id(s: &str) -> bool {
    formats::is_entry_id(s)
}

/// A workflow's event log
///
/// `GET /workflows/{id}/log?after=&limit=` — the event log, oldest first.
#[utoipa::path(
    get,
    path = "/workflows/{id}/log",
    tag = "workflows",
    operation_id = "workflow_log",
    params(("id" = WorkflowId, Path, description = "Workflow id"), LogQuery),
    responses(
        (status = 200, description = "A page of the log, oldest first", body = LogPage),
        (status = 400, description = "`bad_query`: an unknown parameter or a bad value; `bad_request`: `after` is not an entry id or `limit` is out of range", body = ApiErrorBody),
        (status = 404, description = "`not_found`: no such workflow", body = ApiErrorBody),
        (status = 500, description = "`internal`: a stored value cannot be read", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn log(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> ApiResult<Json<LogPage>> {
    let mut conn = state.conn().await?;
    load(&state, &mut conn, &id).await?;
    if let Some(a) = &q.after
        && !is_entry_id(a)
    {
        return Err(ApiError::bad_request(format!(
            "after must be an entry id like 1700000000000-0, got {a:?}"
        )));
    }
    let limit = q.limit.unwrap_or(1000);
    if limit == 0 || limit > 10_000 {
        return Err(ApiError::bad_request("limit must be 1..=10000"));
    }
    let items = state
        .engine()
        .store()
        .log(&mut conn, &id, q.after.as_deref(), limit)
        .await?;
    let next = (items.len() == limit)
        .then(|| items.last().map(|e| e.id.clone()))
        .flatten();
    Ok(Json(LogPage { items, next }))
}
