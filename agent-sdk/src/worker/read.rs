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
    // Where to resume reading our own pending list, when it may hold entries
    // we never saw: a read whose reply was lost (timeout, dropped connection)
    // may still have delivered entries to us on the server.
    let mut backlog: Option<String> = Some("0".into());
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

        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(schemas::WORKERS_GROUP)
            .arg(&*s.consumer)
            .arg("COUNT")
            .arg(want);
        match &backlog {
            Some(from) => {
                cmd.arg("STREAMS").arg(&s.tasks_key).arg(from);
            }
            None => {
                cmd.arg("BLOCK")
                    .arg(block_ms)
                    .arg("STREAMS")
                    .arg(&s.tasks_key)
                    .arg(">");
            }
        }
        let reply: redis::RedisResult<redis::Value> = cmd.query_async(&mut c).await;
        match reply {
            Ok(reply) => {
                conn.succeeded();
                let ids = parse_read_reply(reply);
                if let Some(from) = &mut backlog {
                    match ids.last() {
                        Some(last) => *from = last.id.clone(),
                        None => backlog = None,
                    }
                }
                let mut gone = Vec::new();
                for entry in ids {
                    if entry.fields.is_empty() {
                        // Our pending list names an entry whose body was
                        // deleted or trimmed: nothing left to run.
                        gone.push(entry.id);
                        continue;
                    }
                    let Some(one) = permit.split(1) else { break };
                    dispatch(&shared, &tx, entry, one, None);
                }
                if !gone.is_empty() {
                    forget_vanished(&mut c, &s.tasks_key, &gone).await;
                    shared.metrics.vanished.increment(gone.len() as u64);
                }
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                tracing::warn!(stream = %s.tasks_key, "consumer group missing (stream deleted or flushed); recreating it");
                if !ensure_group(&mut conn, &s, &stop).await {
                    return;
                }
            }
            Err(e) => {
                backlog = Some("0".into());
                if !conn.failed(&e, &stop).await {
                    return;
                }
            }
        }
    }
}

/// Acks entries whose bodies are gone so they leave the pending list. Logged
/// as an error: a task was deleted or trimmed before it ran.
pub(crate) async fn forget_vanished(
    c: &mut redis::aio::MultiplexedConnection,
    tasks_key: &str,
    ids: &[String],
) {
    tracing::error!(count = ids.len(), ids = ?ids, "pending tasks vanished from the stream before they ran (trimmed or deleted by someone else)");
    let r: redis::RedisResult<i64> = redis::cmd("XACK")
        .arg(tasks_key)
        .arg(schemas::WORKERS_GROUP)
        .arg(ids)
        .query_async(c)
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot ack vanished entries; will retry when seen again");
    }
}
