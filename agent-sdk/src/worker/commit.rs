//! The committer: turns finished tasks into batched, fenced, atomic commits.
//!
//! Handler tasks send their [`Finished`] record over a channel; the committer
//! takes everything queued (up to [`MAX_BATCH`]) and commits it with one
//! `EVALSHA` of `commit.lua`. While one batch is in flight the next one
//! gathers, so under load the batches grow by themselves and the round trips
//! per task fall.

use super::{Inflight, Settings};
use crate::connection::Conn;
use crate::metrics::WorkerMetrics;
use crate::scripts;
use schemas::DeadLetterReason;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

/// Most ops in one commit script call: bounds how long one call holds Redis.
pub(crate) const MAX_BATCH: usize = 256;

/// Stream fields: name and value bytes.
pub(crate) type Fields = Vec<(String, Vec<u8>)>;

/// A result to publish: its lookup key and its stream fields, body last.
#[derive(Debug)]
pub(crate) struct Publish {
    pub(crate) key: String,
    pub(crate) fields: Fields,
}

/// One entry's share of a commit.
#[derive(Debug)]
pub(crate) enum CommitOp {
    Ack(Publish),
    Retry {
        delay: Duration,
        member: Vec<u8>,
    },
    DeadLetter {
        dlq: Fields,
        result: Option<Publish>,
        reason: DeadLetterReason,
    },
}

/// A finished task waiting to be committed.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) stream_id: String,
    pub(crate) op: CommitOp,
    /// Its concurrency slot, freed once the commit is done so the group's
    /// pending list never holds more than `concurrency` entries of ours.
    pub(crate) permit: OwnedSemaphorePermit,
    /// Handler run time, for the duration histogram (None when it never ran).
    pub(crate) ran_for: Option<Duration>,
}

fn push_fields(inv: &mut redis::ScriptInvocation<'_>, fields: &Fields) {
    inv.arg(fields.len());
    for (k, v) in fields {
        inv.arg(k.as_str()).arg(v.as_slice());
    }
}

/// Builds one `commit.lua` call for `batch`.
fn invocation<'a>(settings: &Settings, batch: &[Finished]) -> redis::ScriptInvocation<'a> {
    let mut inv = scripts::COMMIT.prepare_invoke();
    inv.key(&settings.tasks_key)
        .key(&settings.results_key)
        .key(&settings.dlq_key)
        .key(&settings.delayed_key);
    inv.arg(schemas::WORKERS_GROUP)
        .arg(&*settings.consumer)
        .arg(settings.cfg.result_ttl.as_millis() as u64)
        .arg(settings.cfg.results_max_len);
    let mut next_key = 5;
    let mut publish = |inv: &mut redis::ScriptInvocation<'_>, p: &Publish| {
        inv.key(&p.key);
        inv.arg(next_key);
        next_key += 1;
        push_fields(inv, &p.fields);
    };
    for f in batch {
        match &f.op {
            CommitOp::Ack(p) => {
                inv.arg("A").arg(&f.stream_id);
                publish(&mut inv, p);
            }
            CommitOp::Retry { delay, member } => {
                inv.arg("R")
                    .arg(&f.stream_id)
                    .arg(delay.as_millis() as u64)
                    .arg(member.as_slice());
            }
            CommitOp::DeadLetter { dlq, result, .. } => {
                inv.arg("D").arg(&f.stream_id);
                push_fields(&mut inv, dlq);
                match result {
                    Some(p) => publish(&mut inv, p),
                    None => {
                        inv.arg(0).arg(0);
                    }
                }
            }
        }
    }
    inv
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

/// Runs until every sender is gone and the queue is drained. After `stop`
/// fires, a batch that cannot be committed is left pending for another worker.
pub(crate) async fn run(
    settings: Arc<Settings>,
    inflight: Arc<Inflight>,
    metrics: Arc<WorkerMetrics>,
    mut rx: mpsc::UnboundedReceiver<Finished>,
    mut conn: Conn,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let committed = commit(&settings, &batch, &mut conn, &stop).await;
        for (i, f) in batch.drain(..).enumerate() {
            match committed.as_ref().map(|c| c.get(i).copied().unwrap_or(0)) {
                Some(1) => {
                    inflight.finish(&f.stream_id);
                    inflight.count(!matches!(f.op, CommitOp::Ack(_)));
                    metrics.committed(&f.op, f.ran_for);
                }
                Some(2) => {
                    // Settled already: a retried call whose first attempt
                    // ran but whose reply was lost, or the entry was deleted.
                    inflight.finish(&f.stream_id);
                    tracing::info!(stream_id = %f.stream_id, "task no longer pending at commit; nothing to do");
                }
                Some(_) => {
                    inflight.finish(&f.stream_id);
                    metrics.ownership_lost.increment(1);
                    tracing::warn!(stream_id = %f.stream_id, "task was taken over by another worker before its commit; result discarded");
                }
                None => {
                    // Not committed: the entry stays pending under our name
                    // and another worker reclaims it after claim_idle.
                    inflight.finish(&f.stream_id);
                    tracing::warn!(stream_id = %f.stream_id, "commit abandoned at shutdown; the task stays pending for another worker");
                }
            }
            drop(f.permit);
        }
    }
}

/// Commits `batch`, retrying through reconnects. `None` when abandoned at stop.
async fn commit(
    settings: &Settings,
    batch: &[Finished],
    conn: &mut Conn,
    stop: &CancellationToken,
) -> Option<Vec<i64>> {
    let inv = invocation(settings, batch);
    loop {
        let mut c = conn.get(stop).await?;
        match inv.invoke_async::<Vec<i64>>(&mut c).await {
            Ok(v) => {
                conn.succeeded();
                return Some(v);
            }
            Err(e) if is_nogroup(&e) => {
                // The stream or its group was deleted (FLUSHALL, DEL): every
                // entry we hold is gone with it, there is nothing to commit.
                tracing::warn!(error = %e, "task stream or group vanished under running tasks; their results are dropped");
                return Some(vec![2; batch.len()]);
            }
            Err(e) => {
                if e.code() == Some("OOM") {
                    tracing::error!(error = %e, "redis is out of memory; commits wait until it has room (maxmemory-policy must be noeviction)");
                }
                if !conn.failed(&e, stop).await {
                    return None;
                }
            }
        }
    }
}
