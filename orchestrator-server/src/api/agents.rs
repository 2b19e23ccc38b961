//! `/api/v1/agents`: the fleet of agent instances, per agent type, from the
//! per-type summaries (one script call per type, whatever the fleet's size)
//! and pages of instances; and per agent type whether a registered
//! definition needs it while none is live.

use super::AppState;
use super::doc::formats::{AgentTypeName, AgentsCursor};
use super::error::{ApiError, ApiErrorBody, ApiResult};
use super::extract::ApiQuery;
use agent_sdk::schemas::AgentType;
use axum::Json;
use axum::extract::State;
use orchestrator::ops::fleet::{self, FleetSummary, InstanceView};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Instances listed per page when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;

/// One agent type's liveness.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = AgentTypeView)]
pub struct TypeView {
    /// The agent type.
    agent_type: String,
    /// Live instances (ready, draining or wedged).
    live: u64,
    /// Definitions whose stages it runs.
    needed_by: Vec<String>,
    /// Needed by a definition and no live instance: its stages will wait.
    warning: bool,
    /// Counts, heartbeat ages and the oldest waiting task, by the Redis clock.
    summary: Option<FleetSummary>,
}

/// Query of `GET /agents`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AgentsQuery {
    /// Only instances of this agent type, one page at a time.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<AgentTypeName>)]
    agent_type: Option<String>,
    /// The `next_cursor` of the previous page, `<type>:<position>`: it
    /// names its agent type, and lists that type's next page whatever
    /// `type` says.
    #[param(value_type = Option<AgentsCursor>, example = "e2e:0")]
    cursor: Option<String>,
    /// Instances per page, 1–1000 (100 by default); without `type`, the
    /// most instances listed in all.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Answer of `GET /agents`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentsView {
    /// Instances: with `type`, one page of that type's; without, the first
    /// page of each type, `limit` in all (`truncated` when there are more).
    agents: Vec<InstanceView>,
    /// Every agent type registered or needed by a definition, by name.
    types: Vec<TypeView>,
    /// With `type` (or a cursor): the cursor of that type's next page
    /// (`<type>:<position>`), absent after the last.
    next_cursor: Option<String>,
    /// Without `type`: more instances exist than listed (page by type).
    truncated: bool,
}

/// Agents
///
/// `GET /agents?type=&cursor=&limit=` — per agent type a summary (live,
/// wedged and gone instances, oldest and newest heartbeat, age of the oldest
/// waiting task; one Redis script call per type), the definitions needing
/// it and `warning` when needed and none live; and instances, each with its
/// state (`ready`, `draining`, `wedged`, `gone` with its last-seen time),
/// one page of one type with `type`.
#[utoipa::path(
    get,
    path = "/agents",
    tag = "agents",
    operation_id = "list_agents",
    params(AgentsQuery),
    responses(
        (status = 200, description = "Instances and types", body = AgentsView),
        (status = 400, description = "`bad_request`: a bad type, cursor or limit", body = ApiErrorBody),
        (status = 500, description = "`internal`: a stored value cannot be read", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AgentsQuery>,
) -> ApiResult<Json<AgentsView>> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=fleet::MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={}, got {limit}",
            fleet::MAX_PAGE
        )));
    }
    // A cursor names its type (`<type>:<position>`), so it is never
    // without one, and it wins over `type` (it continues what it began).
    let (only, cursor) = match (&q.cursor, &q.agent_type) {
        (Some(c), _) => {
            let bad = || ApiError::bad_request(format!("cursor {c:?} is not a page cursor"));
            let (t, pos) = c.rsplit_once(':').ok_or_else(bad)?;
            if pos.is_empty() || pos.len() > 20 || !pos.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let t = AgentType::new(t).map_err(|e| ApiError::bad_request(format!("cursor: {e}")))?;
            (Some(t), pos.to_owned())
        }
        (None, Some(t)) => (
            Some(
                AgentType::new(t.clone())
                    .map_err(|e| ApiError::bad_request(format!("type: {e}")))?,
            ),
            "0".to_owned(),
        ),
        (None, None) => (None, "0".to_owned()),
    };
    let mut conn = state.conn().await?;
    let keys = state.engine().keys();
    let settings = *state.fleet();
    let defs = state.engine().catalog().latest_all(&mut conn).await?;
    let mut needed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in fleet::types(&mut conn, keys).await? {
        needed.entry(t.to_string()).or_default();
    }
    for d in &defs {
        for s in &d.stages {
            let agents = std::iter::once(&s.agent)
                .chain(s.compensate.as_ref().and_then(|c| c.agent.as_ref()));
            for a in agents {
                let e = needed.entry(a.clone()).or_default();
                if !e.contains(&d.name) {
                    e.push(d.name.clone());
                }
            }
        }
    }
    if let Some(t) = &only {
        needed.retain(|name, _| name == t.as_str());
        needed.entry(t.to_string()).or_default();
    }
    let mut types = Vec::with_capacity(needed.len());
    let mut agents = Vec::new();
    let mut next_cursor = None;
    let mut truncated = false;
    for (name, needed_by) in needed {
        let summary = match AgentType::new(name.clone()) {
            Ok(t) => {
                let s = fleet::summary(&mut conn, keys, &t, &settings).await?;
                if only.is_some() {
                    let p = fleet::page(&mut conn, keys, &t, &cursor, limit, &settings).await?;
                    agents.extend(p.instances);
                    next_cursor = p.next_cursor.map(|n| format!("{t}:{n}"));
                } else if s.total > 0 {
                    let room = limit.saturating_sub(agents.len());
                    if room == 0 {
                        truncated = true;
                    } else {
                        let p = fleet::page(&mut conn, keys, &t, "0", room, &settings).await?;
                        truncated |= p.next_cursor.is_some() || p.instances.len() > room;
                        agents.extend(p.instances.into_iter().take(room));
                    }
                }
                Some(s)
            }
            Err(_) => None,
        };
        let live = summary.as_ref().map_or(0, |s| s.live);
        types.push(TypeView {
            warning: live == 0 && !needed_by.is_empty(),
            agent_type: name,
            live,
            needed_by,
            summary,
        });
    }
    agents.sort_by(|a, b| {
        (&a.record.record.agent_type, &a.record.record.instance_id)
            .cmp(&(&b.record.record.agent_type, &b.record.record.instance_id))
    });
    Ok(Json(AgentsView {
        agents,
        types,
        next_cursor,
        truncated,
    }))
}
