//! The reclaimer: takes over tasks left pending by dead workers.
//!
//! Every `claim_idle / 4` it runs `XAUTOCLAIM … <claim_idle>` for as many
//! entries as there are free slots. A claimed entry whose delivery count now
//! exceeds `max_deliveries` has killed (or stalled) its workers that many
//! times: it is dead-lettered instead of run again. Live workers never lose
//! their tasks this way because the lease loop renews them well inside
//! `claim_idle` (checked by `RuntimeConfig::validate`).

use super::Shared;
use super::delivery::Entry;
use super::execute::{Tx, dispatch};
use crate::agent::Agent;
use crate::connection::Conn;
use redis::streams::{StreamAutoClaimReply, StreamPendingCountReply};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most entries claimed per call.
const CLAIM_BATCH: usize = 100;

pub(crate) async fn run<A: Agent>(
    shared: Arc<Shared<A>>,
    tx: Tx,
    mut conn: Conn,
    stop: CancellationToken,
) {
    let s = shared.settings.clone();
    let every = (s.cfg.claim_idle / 4).max(Duration::from_millis(50));
    let mut cursor = "0-0".to_owned();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let free = shared.slots.available_permits().min(CLAIM_BATCH);
        if free == 0 {
            continue;
        }
        let Ok(mut permit) = shared.slots.clone().try_acquire_many_owned(free as u32) else {
            continue;
        };
        let Some(mut c) = conn.get(&stop).await else {
            return;
        };
        let reply: redis::RedisResult<StreamAutoClaimReply> = redis::cmd("XAUTOCLAIM")
            .arg(&s.tasks_key)
            .arg(schemas::WORKERS_GROUP)
            .arg(&*s.consumer)
            .arg(s.cfg.claim_idle.as_millis() as u64)
            .arg(&cursor)
            .arg("COUNT")
            .arg(free)
            .query_async(&mut c)
            .await;
        let reply = match reply {
            Ok(r) => {
                conn.succeeded();
                r
            }
            Err(e) if e.code() == Some("NOGROUP") => continue, // the reader recreates it
            Err(e) => {
                if !conn.failed(&e, &stop).await {
                    return;
                }
                continue;
            }
        };
        cursor = reply.next_stream_id;
        if !reply.deleted_ids.is_empty() {
            // XAUTOCLAIM already dropped them from the pending list.
            tracing::error!(count = reply.deleted_ids.len(), ids = ?reply.deleted_ids, "pending tasks vanished from the stream before they ran (trimmed or deleted by someone else)");
            shared
                .metrics
                .vanished
                .increment(reply.deleted_ids.len() as u64);
        }
        let claimed: Vec<_> = reply
            .claimed
            .into_iter()
            .filter(|e| !shared.inflight.contains(&e.id))
            .collect();
        if claimed.is_empty() {
            continue;
        }
        // XAUTOCLAIM does not return delivery counts; ask for each entry
        // (this consumer owns them now, so nobody else changes the counts).
        let mut pipe = redis::pipe();
        for e in &claimed {
            pipe.cmd("XPENDING")
                .arg(&s.tasks_key)
                .arg(schemas::WORKERS_GROUP)
                .arg(&e.id)
                .arg(&e.id)
                .arg(1);
        }
        let counts: Vec<StreamPendingCountReply> = match pipe.query_async(&mut c).await {
            Ok(v) => v,
            Err(e) => {
                // They stay pending under our name; the next pass (or
                // another worker) claims them again.
                let _ = conn.failed(&e, &stop).await;
                continue;
            }
        };
        shared.metrics.reclaimed.increment(claimed.len() as u64);
        tracing::info!(
            count = claimed.len(),
            "reclaimed tasks abandoned by other workers"
        );
        for (sid, count) in claimed.into_iter().zip(counts) {
            let deliveries = count.ids.first().map_or(u32::MAX, |p| {
                u32::try_from(p.times_delivered).unwrap_or(u32::MAX)
            });
            let Some(one) = permit.split(1) else { break };
            if sid.map.is_empty() {
                continue;
            }
            dispatch(
                &shared,
                &tx,
                Entry::from_stream_id(sid),
                one,
                Some(deliveries),
            );
        }
    }
}
