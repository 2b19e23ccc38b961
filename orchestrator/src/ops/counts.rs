//! Workflows by status, for `/metrics`, `/overview` and the dashboard.

use crate::Result;
use crate::machine::WorkflowStatus;
use crate::store::WorkflowStore;
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Workflows by status: exact for the ones not ended (from the active
/// index), over the newest `recent_window` for the ended ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct WorkflowCounts {
    /// Not ended, by status.
    pub active: BTreeMap<String, u64>,
    /// Ended, by status, among the newest `recent_window` workflows.
    pub recent_ended: BTreeMap<String, u64>,
    /// How many of the newest workflows `recent_ended` looked at.
    pub recent_window: usize,
}

/// How many of the newest workflows the ended counts look at.
pub const RECENT_WINDOW: usize = 1000;
/// At most this many active workflows are counted.
const ACTIVE_MAX: usize = 100_000;
/// Active workflows read per round trip when counting.
const ACTIVE_PAGE: usize = 1000;

/// Workflows that have not ended, by status (every such status present,
/// 0 included), from the active index, a page of statuses per round trip,
/// at most the first 100,000. `/metrics` and `/overview` both use it.
pub async fn active_counts<C: ConnectionLike + Send>(
    store: &WorkflowStore,
    conn: &mut C,
) -> Result<BTreeMap<String, u64>> {
    let mut by_status: BTreeMap<String, u64> = WorkflowStatus::ALL
        .iter()
        .filter(|s| !s.is_terminal())
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    let mut offset = 0;
    while offset < ACTIVE_MAX {
        let page = store.active_page(conn, offset, ACTIVE_PAGE).await?;
        if page.is_empty() {
            break;
        }
        offset += page.len();
        let mut pipe = redis::pipe();
        for (id, _) in &page {
            pipe.cmd("HGET")
                .arg(store.keys().workflow(id)?)
                .arg("status");
        }
        let statuses: Vec<Option<String>> = pipe.query_async(conn).await?;
        for s in statuses.into_iter().flatten() {
            if let Some(s) = WorkflowStatus::parse(&s)
                && !s.is_terminal()
            {
                *by_status.entry(s.as_str().to_owned()).or_default() += 1;
            }
        }
    }
    Ok(by_status)
}

/// Counts workflows by status.
pub async fn workflow_counts<C: ConnectionLike + Send>(
    store: &WorkflowStore,
    conn: &mut C,
) -> Result<WorkflowCounts> {
    let active = active_counts(store, conn).await?;
    let mut recent_ended: BTreeMap<String, u64> = WorkflowStatus::ALL
        .iter()
        .filter(|s| s.is_terminal())
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    let newest: Vec<String> = redis::cmd("ZREVRANGE")
        .arg(store.keys().workflows_all())
        .arg(0)
        .arg(RECENT_WINDOW - 1)
        .query_async(conn)
        .await?;
    for s in store.summaries(conn, &newest).await?.into_iter().flatten() {
        if s.status.is_terminal() {
            *recent_ended
                .entry(s.status.as_str().to_owned())
                .or_default() += 1;
        }
    }
    Ok(WorkflowCounts {
        active,
        recent_ended,
        recent_window: RECENT_WINDOW,
    })
}
