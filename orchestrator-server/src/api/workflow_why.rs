//! What `GET /workflows/{id}` adds to a workflow: for every stage that has
//! not ended, why it is where it is ([`orchestrator::ops::stuck`]).

use super::AppState;
use super::error::ApiResult;
use super::workflows::WorkflowView;
use orchestrator::machine::Workflow;
use orchestrator::ops::stuck::{self, StageWhy};
use serde::Serialize;

/// A workflow as `GET /workflows/{id}` shows it: its view, and `why`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WorkflowDetail)]
pub struct WorkflowDetail {
    #[serde(flatten)]
    pub(super) view: WorkflowView,
    /// For every stage that has not ended (none once the workflow has),
    /// one reason with its evidence, tagged by `kind`: `waiting_for_stages`,
    /// `awaiting_approval`, `queued` (N tasks ahead in its stream),
    /// `no_live_agent` (since when), `running` (on which instance, for how
    /// long), `dead_lettered` (the error, and how to replay it),
    /// `retry_scheduled` (due when) or `finishing` (its result is on its
    /// way). Times are the Redis server's.
    pub(super) why: Vec<StageWhy>,
}

/// Why each stage of `wf` that has not ended is where it is, on the
/// caller's connection.
pub(super) async fn explain(
    state: &AppState,
    conn: &mut deadpool_redis::Connection,
    wf: &Workflow,
) -> ApiResult<Vec<StageWhy>> {
    if wf.status.is_terminal() {
        return Ok(Vec::new());
    }
    let def = state
        .engine()
        .catalog()
        .get(conn, &wf.definition, Some(wf.definition_version))
        .await?;
    Ok(stuck::explain(conn, state.engine().keys(), wf, &def).await?)
}
