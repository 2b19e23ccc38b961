//! The committer: turns finished tasks into batched, fenced, atomic commits.
//!
//! Handler tasks send their [`Finished`] record over a channel; the committer
//! takes everything queued (up to [`MAX_BATCH`]) and commits it with one
//! `EVALSHA` of `commit.lua`. While one batch is in flight the next one
//! gathers, so under load the batches grow by themselves and the round trips
//! per task fall.

use super::metrics::WorkerMetrics;
use super::{Inflight, Settings};
use crate::connection::Conn;
use crate::scripts;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use schemas::DeadLetterReason;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

/// Most ops in one commit script call: bounds how long one call holds Redis.
pub(crate) const MAX_BATCH: usize = 256;

/// Stream fields: name and value bytes.
pub(crate) type Fields = Vec<(String, Vec<u8>)>;

/// A result to publish. `commit.lua` builds the results-stream fields from
/// these parts (fewer script arguments: each costs Redis an allocation).
#[derive(Debug)]
pub(crate) struct Publish {
    /// The result key, `N:agent:{T}:result:<task id>`.
    pub(crate) key: String,
    pub(crate) status: schemas::TaskStatus,
    pub(crate) task_id: String,
    pub(crate) attempt: u32,
    pub(crate) workflow_id: Option<String>,
    pub(crate) stage: Option<String>,
    /// The encoded result envelope.
    pub(crate) body: Vec<u8>,
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

/// Builds one `commit.lua` call for `batch`.
fn invocation<'a>(settings: &Settings, batch: &[Finished]) -> redis::ScriptInvocation<'a> {
    let mut inv = scripts::COMMIT.prepare_invoke();
    inv.key(&settings.tasks_key)
        .key(&settings.results_key)
        .key(&settings.dlq_key)
        .key(&settings.delayed_key);
    // The id range of the batch, for the one ownership lookup: compare ids
    // as Redis orders them, not as strings.
    let id_key = |id: &str| schemas::EntryId::parse(id);
    let lowest = batch
        .iter()
        .map(|f| f.stream_id.as_str())
        .min_by_key(|id| id_key(id))
        .unwrap_or("-");
    let highest = batch
        .iter()
        .map(|f| f.stream_id.as_str())
        .max_by_key(|id| id_key(id))
        .unwrap_or("+");
    inv.arg(schemas::WORKERS_GROUP)
        .arg(&*settings.consumer)
        .arg(settings.cfg.result_ttl.as_millis() as u64)
        .arg(settings.cfg.results_max_len)
        .arg(lowest)
        .arg(highest)
        // Everything we hold fits: never more than `concurrency` entries,
        // plus a margin for entries being settled.
        .arg(settings.cfg.concurrency * 2 + MAX_BATCH);
    // Result keys follow the four fixed keys in the order of the ops that
    // publish; the script walks them in the same order.
    let publish = |inv: &mut redis::ScriptInvocation<'_>, p: &Publish| {
        inv.key(&p.key)
            .arg(p.status.as_str())
            .arg(&p.task_id)
            .arg(p.attempt)
            .arg(p.workflow_id.as_deref().unwrap_or(""))
            .arg(p.stage.as_deref().unwrap_or(""))
            .arg(p.body.as_slice());
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
                inv.arg("D").arg(&f.stream_id).arg(dlq.len());
                for (k, v) in dlq {
                    inv.arg(k.as_str()).arg(v.as_slice());
                }
                match result {
                    Some(p) => {
                        inv.arg(1);
                        publish(&mut inv, p);
                    }
                    None => {
                        inv.arg(0);
                    }
                }
            }
        }
    }
    // Last, after the result keys: the dead-letter index (see commit.lua).
    inv.key(&settings.dlq_index_key);
    inv
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

/// Most commit calls in flight at once. Redis runs them one after the other,
/// but while it runs one the worker builds the next, so neither side idles.
const MAX_IN_FLIGHT: usize = 4;

/// One commit call's outcome: the batch, the handle its retries go through,
/// and the reply (`None`: abandoned because `stop` fired while retrying).
type Attempt = (Vec<Finished>, Conn, Option<redis::RedisResult<Vec<i64>>>);

/// Runs until every sender is gone and the queue is drained. After `stop`
/// fires, a batch that cannot be committed is left pending for another worker.
///
/// A failed call is retried by its own future, with its own backoff, beside
/// the other calls: one batch's wait never holds up the settlement of the
/// next ones, and the wait ends early when any call of this process
/// succeeds (see [`Conn::failed`]).
pub(crate) async fn run(
    settings: Arc<Settings>,
    inflight: Arc<Inflight>,
    metrics: Arc<WorkerMetrics>,
    mut rx: mpsc::UnboundedReceiver<Finished>,
    conn: Conn,
    stop: CancellationToken,
) {
    let mut running: FuturesUnordered<futures::future::BoxFuture<'static, Attempt>> =
        FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            // Settle finished calls first: that frees slots for the reader.
            Some((batch, mut handle, reply)) = running.next(), if !running.is_empty() => {
                match reply {
                    None => settle(batch, None, &inflight, &metrics),
                    Some(Ok(v)) => {
                        handle.succeeded();
                        settle(batch, Some(v), &inflight, &metrics);
                    }
                    Some(Err(e)) if is_nogroup(&e) => {
                        // The stream or its group was deleted (FLUSHALL, DEL):
                        // every entry we hold is gone with it.
                        tracing::warn!(error = %e, "task stream or group vanished under running tasks; their results are dropped");
                        let gone = vec![2; batch.len()];
                        settle(batch, Some(gone), &inflight, &metrics);
                    }
                    Some(Err(e)) => {
                        if e.code() == Some("OOM") {
                            tracing::error!(error = %e, "redis is out of memory; commits wait until it has room (maxmemory-policy must be noeviction)");
                        }
                        // Retrying is safe: the fencing check skips entries an
                        // earlier attempt committed after all.
                        let (s, stop) = (settings.clone(), stop.clone());
                        running.push(Box::pin(async move {
                            if !handle.failed(&e, &stop).await {
                                return (batch, handle, None);
                            }
                            commit_once(s, batch, handle, stop).await
                        }));
                    }
                }
            }
            first = rx.recv(), if open && running.len() < MAX_IN_FLIGHT => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                let mut batch = Vec::with_capacity(MAX_BATCH);
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(f) => batch.push(f),
                        Err(_) => break,
                    }
                }
                running.push(Box::pin(commit_once(settings.clone(), batch, conn.handle(), stop.clone())));
            }
            else => break,
        }
    }
}

/// One attempt at committing `batch`; hands the batch back with the reply.
async fn commit_once(
    settings: Arc<Settings>,
    batch: Vec<Finished>,
    mut handle: Conn,
    stop: CancellationToken,
) -> Attempt {
    let Some(mut c) = handle.get(&stop).await else {
        return (batch, handle, None);
    };
    let reply = invocation(&settings, &batch).invoke_async(&mut c).await;
    (batch, handle, Some(reply))
}

/// Releases a batch: counts what was committed, logs what was not. `None`
/// means abandoned at shutdown: the entries stay pending under our name and
/// another worker reclaims them after claim_idle.
fn settle(
    batch: Vec<Finished>,
    committed: Option<Vec<i64>>,
    inflight: &Inflight,
    metrics: &WorkerMetrics,
) {
    for (i, f) in batch.into_iter().enumerate() {
        inflight.finish(&f.stream_id);
        match committed.as_ref().map(|c| c.get(i).copied().unwrap_or(0)) {
            Some(1) => {
                inflight.count(!matches!(f.op, CommitOp::Ack(_)));
                metrics.committed(&f.op, f.ran_for);
            }
            Some(2) => {
                // Settled already: a retried call whose first attempt ran
                // but whose reply was lost, or the entry was deleted.
                tracing::info!(stream_id = %f.stream_id, "task no longer pending at commit; nothing to do");
            }
            Some(_) => {
                metrics.ownership_lost.increment(1);
                tracing::warn!(stream_id = %f.stream_id, "task was taken over by another worker before its commit; result discarded");
            }
            None => {
                tracing::warn!(stream_id = %f.stream_id, "commit abandoned at shutdown; the task stays pending for another worker");
            }
        }
        drop(f.permit);
    }
}
