//! The reader: pulls entries with `XREADGROUP`, never more than there are free
//! slots, and between reads takes over abandoned ones (see [`reclaim`]).

use super::delivery::parse_read_reply;
use super::execute::{Tx, dispatch};
use super::{Shared, ensure_group, reclaim};
use crate::agent::Agent;
use crate::connection::Conn;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub(crate) async fn run<A: Agent>(
    shared: Arc<Shared<A>>,
    tx: Tx,
    mut conn: Conn,
    stop: CancellationToken,
) {
    let s = shared.settings.clone();
    let block_ms = s.cfg.read_block.as_millis() as u64;
    // Where to resume going through our own pending list, when it may hold
    // entries we never saw (see `reclaim::recover_own`); "-" is its start.
    // A new consumer's list is empty, but the check is cheap.
    let mut backlog: Option<String> = Some("-".into());
    let reclaim_every = (s.cfg.claim_idle / 4).max(std::time::Duration::from_millis(50));
    let mut next_reclaim = tokio::time::Instant::now() + reclaim_every;
    let mut reclaim_cursor = reclaim::Cursor::default();
    loop {
        // Wait for at least one free slot, then take every free one up to
        // the batch size: a read never fetches work we cannot start.
        // Biased: once stop fired, never start another read, even when a
        // slot is free at the same moment.
        let mut permit = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            p = shared.slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let more = shared.slots.available_permits().min(s.cfg.batch_size - 1);
        if more > 0
            && let Ok(p) = shared.slots.clone().try_acquire_many_owned(more as u32)
        {
            permit.merge(p);
        }
        let want = permit.num_permits();
        let Some(mut c) = conn.get(&stop).await else {
            return;
        };

        if tokio::time::Instant::now() >= next_reclaim {
            next_reclaim = tokio::time::Instant::now() + reclaim_every;
            match reclaim::reclaim_once(&shared, &tx, &mut c, &mut reclaim_cursor, permit).await {
                Ok(()) => conn.succeeded(),
                // NOGROUP: the next read recreates the group.
                Err(e) if e.code() == Some("NOGROUP") => {}
                Err(e) => {
                    if !conn.failed(&e, &stop).await {
                        return;
                    }
                }
            }
            continue;
        }

        if let Some(from) = &backlog {
            let from = (from != "-").then_some(from.as_str());
            match reclaim::recover_own(&shared, &tx, &mut c, from, permit).await {
                Ok(next) => {
                    conn.succeeded();
                    backlog = next;
                }
                Err(e) if e.code() == Some("NOGROUP") => backlog = None,
                Err(e) => {
                    if !conn.failed(&e, &stop).await {
                        return;
                    }
                }
            }
            continue;
        }

        let reply: redis::RedisResult<redis::Value> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(schemas::WORKERS_GROUP)
            .arg(&*s.consumer)
            .arg("COUNT")
            .arg(want)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&s.tasks_key)
            .arg(">")
            .query_async(&mut c)
            .await;
        match reply {
            Ok(reply) => {
                conn.succeeded();
                for entry in parse_read_reply(reply) {
                    let Some(one) = permit.split(1) else { break };
                    dispatch(&shared, &tx, entry, one, None);
                }
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                tracing::warn!(stream = %s.tasks_key, "consumer group missing (stream deleted or flushed); recreating it");
                if !ensure_group(&mut conn, &s, &stop).await {
                    return;
                }
            }
            Err(e) => {
                // The read may have run on the server with its reply lost.
                backlog = Some("-".into());
                if !conn.failed(&e, &stop).await {
                    return;
                }
            }
        }
    }
}
