//! `/api/v1/dlq...`: dead letters per agent type — list, show, replay,
//! purge — for the dashboard and for automation. The same operations as
//! `agentctl dlq`, from [`orchestrator::ops::dlq`].

mod selection;

use super::AppState;
use super::auth::audit;
use super::dlq_view::{DeadLetterDetail, DeadLetterSummary};
use super::doc::formats::{self, AgentTypeName, EntryIdText, SinceText};
use super::error::{ApiError, ApiErrorBody, ApiResult};
use super::extract::{ApiJson, ApiQuery};
use crate::tokens::Caller;
use agent_sdk::DeadLetterFilter;
use agent_sdk::schemas::AgentType;
use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use orchestrator::ops::dlq::{
    self, DlqSummary, PurgeSelection, ReplayOptions, ReplayReport, Selection,
};
use serde::{Deserialize, Serialize};

/// Most per-entry items a replay answer lists (the counts cover all).
const MAX_REPORT_ITEMS: usize = 1000;

/// Most ids one request may name.
const MAX_IDS: usize = 10_000;

pub(super) fn agent_type(s: &str) -> ApiResult<AgentType> {
    AgentType::new(s).map_err(|e| ApiError::invalid(e.to_string()))
}

/// Answer of `GET /dlq`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = DlqQueues)]
pub struct QueuesView {
    /// One per agent type with any stream in the namespace, by name.
    queues: Vec<DlqSummary>,
}

/// Dead-letter queues
///
/// `GET /dlq` — every agent type's dead-letter count, oldest and newest.
#[utoipa::path(
    get,
    path = "/dlq",
    tag = "dlq",
    operation_id = "list_dlqs",
    responses(
        (status = 200, description = "Every agent type's queue", body = QueuesView),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn queues(State(state): State<AppState>) -> ApiResult<Json<QueuesView>> {
    let mut conn = state.conn().await?;
    let keys = state.engine().keys();
    let types = state.agent_types(&mut conn).await?;
    let queues = dlq::dlq_summaries(&mut conn, keys, &types).await?;
    Ok(Json(QueuesView { queues }))
}

/// Filters of `GET /dlq/{type}` and of a replay or purge by filter.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FilterQuery {
    /// Only errors containing this text (case-insensitive).
    #[serde(default)]
    error_contains: Option<String>,
    /// Only this workflow's.
    #[serde(default)]
    workflow: Option<String>,
    /// Only those failed since: a duration ago (`2h`) or a UTC time.
    #[param(value_type = Option<SinceText>, example = "2h")]
    #[serde(default)]
    since: Option<String>,
    /// Page size (1–1000, 50 by default); lists only.
    #[param(minimum = 1, maximum = 1000)]
    #[serde(default)]
    limit: Option<usize>,
    /// Start after this entry id (the `next` of the previous page); lists only.
    #[param(value_type = Option<EntryIdText>, example = "1700000000000-0")]
    #[serde(default)]
    after: Option<String>,
}

impl FilterQuery {
    fn is_empty(&self) -> bool {
        self.error_contains.is_none() && self.workflow.is_none() && self.since.is_none()
    }

    fn filter(&self) -> ApiResult<DeadLetterFilter> {
        if let Some(a) = &self.after
            && !super::workflows::is_entry_id(a)
        {
            return Err(ApiError::bad_request(format!(
                "after must be an entry id like 1700000000000-0, got {a:?}"
            )));
        }
        let limit = self.limit.unwrap_or(50);
        if limit == 0 || limit > 1000 {
            return Err(ApiError::bad_request("limit must be 1..=1000"));
        }
        if let Some(s) = &self.since {
            formats::check_since(s).map_err(ApiError::bad_request)?;
        }
        let filter = dlq::dead_letter_filter(
            self.error_contains.clone(),
            self.workflow.clone(),
            self.since.as_deref(),
        )
        .map_err(|e| ApiError::bad_request(format!("since: {e}")))?;
        Ok(DeadLetterFilter {
            after: self.after.clone(),
            limit,
            ..filter
        })
    }
}

/// Answer of `GET /dlq/{type}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = DeadLetterPage)]
pub struct DeadLetterPageView {
    /// Oldest first.
    items: Vec<DeadLetterSummary>,
    /// Pass as `after` for the next page; null at the end. A page can be
    /// short, even empty, and still have one: a request reads at most
    /// 10,000 dead letters looking for matches (and a full last page is
    /// followed by an empty one).
    next: Option<String>,
}

/// List dead letters
///
/// `GET /dlq/{type}` — dead letters, oldest first, filtered and paged.
#[utoipa::path(
    get,
    path = "/dlq/{agent_type}",
    tag = "dlq",
    operation_id = "list_dead_letters",
    params(("agent_type" = AgentTypeName, Path, description = "Agent type"), FilterQuery),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterPageView),
        (status = 400, description = "`bad_query`: an unknown parameter or a bad value; `bad_request`: a bad `after`, `limit` or `since`", body = ApiErrorBody),
        (status = 422, description = "`invalid`: a bad agent type", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Path(agent): Path<String>,
    ApiQuery(q): ApiQuery<FilterQuery>,
) -> ApiResult<Json<DeadLetterPageView>> {
    let agent = agent_type(&agent)?;
    let page = state
        .engine()
        .client()
        .dead_letters()
        .list(&agent, &q.filter()?)
        .await?;
    Ok(Json(DeadLetterPageView {
        items: page.items.iter().map(DeadLetterSummary::from).collect(),
        next: page.next,
    }))
}

/// One dead letter
///
/// `GET /dlq/{type}/{id}` — one dead letter in full: the entry, the task
/// envelope decoded from its raw body (or why it cannot be), the raw fields.
#[utoipa::path(
    get,
    path = "/dlq/{agent_type}/{id}",
    tag = "dlq",
    operation_id = "get_dead_letter",
    params(("agent_type" = AgentTypeName, Path, description = "Agent type"), ("id" = EntryIdText, Path, description = "DLQ entry id", example = "1700000000000-0")),
    responses(
        (status = 200, description = "The dead letter", body = DeadLetterDetail),
        (status = 400, description = "`bad_request`: the id is not an entry id", body = ApiErrorBody),
        (status = 404, description = "`not_found`: no such dead letter", body = ApiErrorBody),
        (status = 422, description = "`invalid`: a bad agent type", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    Path((agent, id)): Path<(String, String)>,
) -> ApiResult<Json<DeadLetterDetail>> {
    let agent = agent_type(&agent)?;
    if !super::workflows::is_entry_id(&id) {
        return Err(ApiError::bad_request(format!(
            "a dead letter id is an entry id like 1700000000000-0, got {id:?}"
        )));
    }
    let d = state
        .engine()
        .client()
        .dead_letters()
        .get(&agent, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("dead letter", &id))?;
    Ok(Json(DeadLetterDetail::from(&d)))
}

/// Body of `POST /dlq/{type}/replay` and `/purge`: exactly one of `ids`,
/// `all`, a filter (and for purge, `older_than`).
/// What a replay or purge body selects ([`selection`] has the bodies).
#[derive(Debug, Default)]
pub struct SelectionRequest {
    /// These entry ids.
    ids: Option<Vec<String>>,
    /// Every dead letter of the type.
    all: bool,
    /// Purge only: those dead-lettered more than this long ago (`7d`).
    older_than: Option<String>,
    /// Only errors containing this text.
    error_contains: Option<String>,
    /// Only this workflow's.
    workflow: Option<String>,
    /// Only those failed since (`2h`, or an RFC 3339 time).
    since: Option<String>,
    /// Replay only: report what would move, move nothing.
    dry_run: bool,
    /// Replay only: replay tasks of workflows that have ended too (left in
    /// the DLQ otherwise: their results would change nothing).
    force: bool,
}

impl SelectionRequest {
    fn filter(&self) -> FilterQuery {
        FilterQuery {
            error_contains: self.error_contains.clone(),
            workflow: self.workflow.clone(),
            since: self.since.clone(),
            ..FilterQuery::default()
        }
    }

    /// How many of the selection kinds were given.
    fn kinds(&self) -> usize {
        usize::from(self.ids.is_some())
            + usize::from(self.all)
            + usize::from(self.older_than.is_some())
            + usize::from(!self.filter().is_empty())
    }

    fn ids(&self) -> ApiResult<Option<Vec<String>>> {
        let Some(ids) = &self.ids else {
            return Ok(None);
        };
        if ids.is_empty() || ids.len() > MAX_IDS {
            return Err(ApiError::bad_request(format!(
                "ids must name 1..={MAX_IDS} dead letters"
            )));
        }
        if let Some(bad) = ids.iter().find(|i| !super::workflows::is_entry_id(i)) {
            return Err(ApiError::bad_request(format!(
                "{bad:?} is not an entry id like 1700000000000-0"
            )));
        }
        // An id named twice is moved once, not reported gone the second time.
        let mut seen = std::collections::HashSet::new();
        Ok(Some(
            ids.iter().filter(|i| seen.insert(*i)).cloned().collect(),
        ))
    }
}

const SELECT_ONE: &str = "say which dead letters: exactly one of ids, all: true, \
                          or filters (error_contains, workflow, since)";

/// Replay dead letters
///
/// `POST /dlq/{type}/replay` — moves dead letters back to the task stream
/// with attempts reset, atomically per entry; `dry_run` shows what would
/// move.
#[utoipa::path(
    post,
    path = "/dlq/{agent_type}/replay",
    tag = "dlq",
    operation_id = "replay_dead_letters",
    params(("agent_type" = AgentTypeName, Path, description = "Agent type")),
    request_body(content = selection::ReplaySelection, description = "Exactly one of `ids`, `all: true`, or filters (`error_contains`, `workflow`, `since`); `dry_run` and `force` optional"),
    responses(
        (status = 200, description = "What happened to each selected dead letter", body = ReplayReport),
        (status = 400, description = "`bad_request`: not exactly one selection, a bad id, a filter value or an option of the other operation; `malformed_json`: the body is not JSON; `bad_body`: it could not be read", body = ApiErrorBody),
        (status = 413, description = "`body_too_large`", body = ApiErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ApiErrorBody),
        (status = 422, description = "`invalid_body`: wrong shape or an unknown field; `invalid`: a bad agent type", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn replay(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(agent): Path<String>,
    ApiJson(body): ApiJson<selection::ReplayBody>,
) -> ApiResult<Json<ReplayReport>> {
    let agent = agent_type(&agent)?;
    let req = SelectionRequest::from(body);
    if req.kinds() != 1 {
        return Err(ApiError::bad_request(SELECT_ONE));
    }
    let selection = match req.ids()? {
        Some(ids) => Selection::Ids(ids),
        None => Selection::Matching(DeadLetterFilter {
            limit: 0,
            after: None,
            ..req.filter().filter()?
        }),
    };
    if !req.dry_run {
        audit(&caller, "dlq_replay", agent.as_str());
    }
    let mut conn = state.conn().await?;
    let report = dlq::replay(
        state.engine(),
        &mut conn,
        &agent,
        &selection,
        &ReplayOptions {
            dry_run: req.dry_run,
            rate: None,
            force: req.force,
            by: Some(caller.name.clone()),
        },
        |_| {},
    )
    .await?;
    Ok(Json(report.capped(MAX_REPORT_ITEMS)))
}

/// Answer of `POST /dlq/{type}/purge`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Purged {
    /// Dead letters deleted.
    purged: u64,
}

/// Purge dead letters
///
/// `POST /dlq/{type}/purge` — deletes dead letters for good.
#[utoipa::path(
    post,
    path = "/dlq/{agent_type}/purge",
    tag = "dlq",
    operation_id = "purge_dead_letters",
    params(("agent_type" = AgentTypeName, Path, description = "Agent type")),
    request_body(content = selection::PurgeSelection, description = "Exactly one of `ids`, `all: true`, `older_than`, or filters (`error_contains`, `workflow`, `since`)"),
    responses(
        (status = 200, description = "How many were deleted", body = Purged),
        (status = 400, description = "`bad_request`: not exactly one selection, a bad id, a filter value or an option of the other operation; `malformed_json`: the body is not JSON; `bad_body`: it could not be read", body = ApiErrorBody),
        (status = 413, description = "`body_too_large`", body = ApiErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ApiErrorBody),
        (status = 422, description = "`invalid_body`: wrong shape or an unknown field; `invalid`: a bad agent type", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn purge(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(agent): Path<String>,
    ApiJson(body): ApiJson<selection::PurgeBody>,
) -> ApiResult<Json<Purged>> {
    let agent = agent_type(&agent)?;
    let req = SelectionRequest::from(body);
    if req.kinds() != 1 {
        return Err(ApiError::bad_request(format!("{SELECT_ONE}, older_than")));
    }
    let selection = if let Some(ids) = req.ids()? {
        PurgeSelection::Ids(ids)
    } else if req.all {
        PurgeSelection::All
    } else if let Some(age) = &req.older_than {
        PurgeSelection::OlderThan(
            formats::duration("older_than", age).map_err(ApiError::bad_request)?,
        )
    } else {
        PurgeSelection::Matching(DeadLetterFilter {
            limit: 0,
            after: None,
            ..req.filter().filter()?
        })
    };
    audit(&caller, "dlq_purge", agent.as_str());
    let mut conn = state.conn().await?;
    let dlq = state.engine().client().dead_letters();
    let purged = dlq::purge(&dlq, &mut conn, &agent, &selection).await?;
    Ok(Json(Purged { purged }))
}
