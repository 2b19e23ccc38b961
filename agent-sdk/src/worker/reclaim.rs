//! Reclaiming: taking over tasks left pending by dead workers.
//!
//! Every `claim_idle / 4` the reader runs one pass between two reads, so the
//! pass draws on the same free slots (a reader blocked in `XREADGROUP` holds
//! every free slot; a separate reclaimer would starve).
//!
//! A pass looks before it claims: `XPENDING … IDLE <claim_idle>` lists
//! abandoned entries with their delivery counts, and the counts decide:
//!
//! - delivered `max_deliveries` times already: a poison message that keeps
//!   killing (or stalling) its workers. Claimed and dead-lettered, not run.
//! - delivered once: its worker died once. Claimed in bulk and run.
//! - delivered more than once: it was in flight when workers died more than
//!   once — maybe the culprit, maybe a bystander of the culprit. At most one
//!   such suspect is claimed per pass, so a poison message no longer takes
//!   its neighbours down with it and each suspect is judged on its own.
//!
//! Live workers never lose their tasks this way because the lease loop renews
//! them well inside `claim_idle` (checked by `RuntimeConfig::validate`).

use super::Shared;
use super::delivery::{Entry, parse_entries};
use super::execute::{Tx, dispatch};
use crate::agent::Agent;
use crate::scripts;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamPendingCountReply;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// Claims `ids` for this consumer if still idle for `min_idle_ms` (claim.lua).
/// Entries whose body is gone are acknowledged, reported and counted.
async fn claim<A: Agent>(
    shared: &Arc<Shared<A>>,
    c: &mut MultiplexedConnection,
    ids: impl IntoIterator<Item = &String>,
    min_idle_ms: u64,
) -> redis::RedisResult<Vec<Entry>> {
    let s = &shared.settings;
    let mut inv = scripts::CLAIM.prepare_invoke();
    inv.key(&s.tasks_key)
        .arg(schemas::WORKERS_GROUP)
        .arg(&*s.consumer)
        .arg(min_idle_ms);
    for id in ids {
        inv.arg(id);
    }
    let (claimed, vanished): (redis::Value, Vec<String>) = inv.invoke_async(c).await?;
    if !vanished.is_empty() {
        tracing::error!(count = vanished.len(), ids = ?vanished, "pending tasks vanished from the stream before they ran (trimmed or deleted by someone else)");
        shared.metrics.vanished.increment(vanished.len() as u64);
    }
    Ok(parse_entries(claimed))
}

/// Picks up entries of this consumer's own pending list that this process
/// never saw: a read whose reply was lost (timeout, dropped connection) may
/// still have delivered them on the server. Listing with `XPENDING` counts no
/// delivery, so only the unseen entries are claimed (and counted), never the
/// running ones. Returns where to continue, or `None` once the list is done.
pub(crate) async fn recover_own<A: Agent>(
    shared: &Arc<Shared<A>>,
    tx: &Tx,
    c: &mut MultiplexedConnection,
    from: Option<&str>,
    mut permit: OwnedSemaphorePermit,
) -> redis::RedisResult<Option<String>> {
    let s = &shared.settings;
    let want = permit.num_permits();
    let start = from.map_or("-".to_owned(), |id| format!("({id}"));
    let own: StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(&s.tasks_key)
        .arg(schemas::WORKERS_GROUP)
        .arg(start)
        .arg("+")
        .arg(want)
        .arg(&*s.consumer)
        .query_async(c)
        .await?;
    let next = match own.ids.last() {
        Some(last) if own.ids.len() == want => Some(last.id.clone()),
        _ => None,
    };
    let unseen: Vec<String> = own
        .ids
        .into_iter()
        .map(|p| p.id)
        .filter(|id| !shared.inflight.contains(id))
        .collect();
    if !unseen.is_empty() {
        tracing::info!(
            count = unseen.len(),
            "picking up tasks delivered to this worker by a read whose reply was lost"
        );
        for entry in claim(shared, c, &unseen, 0).await? {
            let Some(one) = permit.split(1) else { break };
            dispatch(shared, tx, entry, one, None);
        }
    }
    Ok(next)
}

/// Most pending entries inspected per pass.
const SCAN: usize = 200;

/// Where the next pass resumes scanning the pending list.
#[derive(Debug, Default)]
pub(crate) struct Cursor(Option<String>);

pub(crate) async fn reclaim_once<A: Agent>(
    shared: &Arc<Shared<A>>,
    tx: &Tx,
    c: &mut MultiplexedConnection,
    cursor: &mut Cursor,
    mut permit: OwnedSemaphorePermit,
) -> redis::RedisResult<()> {
    let s = &shared.settings;
    let start = cursor
        .0
        .as_ref()
        .map_or("-".to_owned(), |id| format!("({id}"));
    let idle: StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(&s.tasks_key)
        .arg(schemas::WORKERS_GROUP)
        .arg("IDLE")
        .arg(s.cfg.claim_idle.as_millis() as u64)
        .arg(start)
        .arg("+")
        .arg(SCAN)
        .query_async(c)
        .await?;
    cursor.0 = if idle.ids.len() < SCAN {
        None // wrapped: the next pass starts from the beginning
    } else {
        idle.ids.last().map(|p| p.id.clone())
    };

    let max = s.cfg.max_deliveries as usize;
    let mut budget = permit.num_permits();
    let mut suspect_taken = false;
    let mut chosen: HashMap<String, usize> = HashMap::new();
    for p in idle.ids {
        if budget == 0 {
            break;
        }
        if shared.inflight.contains(&p.id) {
            continue; // ours and running (a renewal ran late)
        }
        let take = if p.times_delivered >= max || p.times_delivered <= 1 {
            true
        } else if !suspect_taken {
            suspect_taken = true;
            true
        } else {
            false
        };
        if take {
            budget -= 1;
            chosen.insert(p.id, p.times_delivered);
        }
    }
    if chosen.is_empty() {
        return Ok(());
    }

    let claimed = claim(
        shared,
        c,
        chosen.keys(),
        s.cfg.claim_idle.as_millis() as u64,
    )
    .await?;
    if claimed.is_empty() {
        return Ok(());
    }
    shared.metrics.reclaimed.increment(claimed.len() as u64);
    tracing::info!(
        count = claimed.len(),
        "reclaimed tasks abandoned by other workers"
    );
    for entry in claimed {
        // Deliveries including this claim.
        let deliveries = chosen
            .get(&entry.id)
            .map_or(u32::MAX, |n| u32::try_from(n + 1).unwrap_or(u32::MAX));
        let Some(one) = permit.split(1) else { break };
        dispatch(shared, tx, entry, one, Some(deliveries));
    }
    Ok(())
}
