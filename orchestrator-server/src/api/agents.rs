//! `/api/v1/agents`: live agent instances from the registry, and per agent
//! type whether a registered definition needs it while none is live.

use super::AppState;
use super::error::{ApiErrorBody, ApiResult};
use agent_sdk::schemas::AgentRecord;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use std::collections::BTreeMap;

/// One agent type's liveness.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = AgentTypeView)]
pub struct TypeView {
    /// The agent type.
    agent_type: String,
    /// Live instances.
    live: usize,
    /// Definitions whose stages it runs.
    needed_by: Vec<String>,
    /// Needed by a definition and no live instance: its stages will wait.
    warning: bool,
}

/// Answer of `GET /agents`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentsView {
    /// Live instances, from the registry.
    agents: Vec<AgentRecord>,
    /// Every agent type live or needed by a definition, by name.
    types: Vec<TypeView>,
}

/// Live agents
///
/// `GET /agents` — live instances, and per agent type: live count,
/// definitions needing it, `warning` when needed and none live.
#[utoipa::path(
    get,
    path = "/agents",
    tag = "agents",
    operation_id = "list_agents",
    responses(
        (status = 200, description = "Instances and types", body = AgentsView),
        (status = 500, description = "`internal`: a stored value cannot be read", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<AgentsView>> {
    let agents = state.engine().client().agents().await?;
    let mut conn = state.conn().await?;
    let defs = state.engine().catalog().latest_all(&mut conn).await?;
    let mut types: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
    for a in &agents {
        types.entry(a.agent_type.clone()).or_default().0 += 1;
    }
    for d in &defs {
        for s in &d.stages {
            let agents = std::iter::once(&s.agent)
                .chain(s.compensate.as_ref().and_then(|c| c.agent.as_ref()));
            for a in agents {
                let e = types.entry(a.clone()).or_default();
                if !e.1.contains(&d.name) {
                    e.1.push(d.name.clone());
                }
            }
        }
    }
    let types = types
        .into_iter()
        .map(|(agent_type, (live, needed_by))| TypeView {
            warning: live == 0 && !needed_by.is_empty(),
            agent_type,
            live,
            needed_by,
        })
        .collect();
    Ok(Json(AgentsView { agents, types }))
}
