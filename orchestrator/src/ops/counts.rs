//! Workflows by status, for `/metrics`, `/overview` and the dashboard.

use crate::Result;
use crate::machine::WorkflowStatus;
use crate::store::WorkflowStore;
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

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
/// Active workflows read per round trip when counting.
const ACTIVE_PAGE: usize = 1000;

/// Workflows by status as the transition script keeps them in
/// `N:wfs:counts` (every status present, 0 included): one `HGETALL`
/// whatever the number of workflows, so a scrape costs the same at 100
/// workflows and at 100,000. The figures move in the same script as the
/// statuses, so they are exact and every replica reads the same ones.
pub async fn status_counts<C: ConnectionLike + Send>(
    store: &WorkflowStore,
    conn: &mut C,
) -> Result<BTreeMap<String, u64>> {
    let stored: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(store.keys().workflow_counts())
        .query_async(conn)
        .await?;
    Ok(WorkflowStatus::ALL
        .iter()
        .map(|s| {
            // Never below 0, even if someone edited the hash by hand.
            let n = stored.get(s.as_str()).copied().unwrap_or(0).max(0);
            (s.as_str().to_owned(), n as u64)
        })
        .collect())
}

/// Counts the workflows stored before the counters existed into them, the
/// first time it runs against a Redis (`seed_counts.lua`: atomic, exact at
/// that instant); every later call returns at once with `None`. The server
/// calls it at start. Returns how many workflows were counted.
///
/// Replicas of a version without the counters, still running during an
/// upgrade, move statuses without moving the counters: upgrade them all.
pub async fn seed_counts<C: ConnectionLike + Send>(
    store: &WorkflowStore,
    conn: &mut C,
) -> Result<Option<u64>> {
    let keys = store.keys();
    // Seeded already (every start but the first): a plain read, so a start
    // under an ACL that only lets it read here goes on.
    let seeded: bool = redis::cmd("HEXISTS")
        .arg(keys.workflow_counts())
        .arg("_seeded")
        .query_async(conn)
        .await?;
    if seeded {
        return Ok(None);
    }
    // `N:wf:{<id>}` around a placeholder id: what the script puts ids in.
    let sample = keys.workflow("x")?;
    let (prefix, suffix) = sample
        .rsplit_once('x')
        .ok_or_else(|| crate::Error::Config(format!("unexpected workflow key {sample:?}")))?;
    let n: i64 = crate::scripts::SEED_COUNTS
        .key(keys.workflow_counts())
        .key(keys.workflows_all())
        .arg(prefix)
        .arg(suffix)
        .invoke_async(conn)
        .await?;
    Ok(u64::try_from(n).ok())
}

/// Workflows that have not ended, by status (every such status present,
/// 0 included), from the counters ([`status_counts`]).
pub async fn active_counts<C: ConnectionLike + Send>(
    store: &WorkflowStore,
    conn: &mut C,
) -> Result<BTreeMap<String, u64>> {
    let mut all = status_counts(store, conn).await?;
    all.retain(|s, _| WorkflowStatus::parse(s).is_some_and(|s| !s.is_terminal()));
    Ok(all)
}

/// Workflows that have not ended, by status, counted the slow way: every
/// id of the active index, a page of statuses per round trip, however many
/// there are. For checking the counters ([`active_counts`]) against the
/// states, never on a request path.
pub async fn count_active_by_scan<C: ConnectionLike + Send>(
    store: &WorkflowStore,
    conn: &mut C,
) -> Result<BTreeMap<String, u64>> {
    let mut by_status: BTreeMap<String, u64> = WorkflowStatus::ALL
        .iter()
        .filter(|s| !s.is_terminal())
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    let mut offset = 0;
    loop {
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
