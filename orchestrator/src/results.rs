//! Consumes one agent type's results stream through the `orchestrator`
//! consumer group and turns each result into a workflow event.
//!
//! A result is acknowledged (and deleted) only after its transition is
//! stored: a crash in between leaves it pending, and it is read again — by
//! this consumer's restart reading its own pending entries, or by another
//! replica claiming entries idle for `claim_idle`. Applying it a second time
//! changes nothing (the stage no longer waits for that task id), and carries
//! out the outbox the crash may have left.
//!
//! Results of tasks that belong to no workflow (standalone tasks) are
//! acknowledged at once.

use crate::engine::{Engine, Outcome};
use crate::machine::Event;
use crate::store::group_by_workflow;
use agent_sdk::connection::Conn;
use agent_sdk::schemas::codec::{DecodeLimits, decode_any};
use agent_sdk::schemas::{
    AgentType, ErrorKind, ORCHESTRATOR_GROUP, ResultEnvelope, TaskStatus, fields,
};
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Settings of the result consumers.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// This orchestrator's consumer name.
    pub consumer: String,
    /// Results read per call.
    pub batch: usize,
    /// How long a read blocks.
    pub block: Duration,
    /// A result pending this long at another consumer is taken over.
    pub claim_idle: Duration,
    /// Workflows transitioned at once.
    pub parallelism: usize,
}

/// Largest result body decoded (agent outputs can exceed a task's limit).
const MAX_RESULT_BYTES: usize = 16 * 1024 * 1024;

/// The workflow event a result means, if it belongs to a workflow.
pub fn result_event(result: &ResultEnvelope) -> Event {
    let task_id = result.task_id.clone();
    match result.status {
        TaskStatus::Succeeded => Event::TaskSucceeded {
            task_id,
            output: result.output.clone().unwrap_or(serde_json::Value::Null),
        },
        TaskStatus::DeadLettered => {
            let (kind, message) = result
                .error
                .as_ref()
                .map(|e| (Some(e.kind), e.message.clone()))
                .unwrap_or((None, "dead-lettered".to_owned()));
            match kind {
                // The agent said no attempt will succeed: the stage failed.
                Some(ErrorKind::Permanent | ErrorKind::InvalidInput) => Event::TaskFailed {
                    task_id,
                    error: message,
                },
                // Retries used up, poison, malformed: a person decides.
                _ => Event::TaskDeadLettered {
                    task_id,
                    error: message,
                },
            }
        }
    }
}

fn field(e: &StreamId, name: &str) -> Option<Vec<u8>> {
    e.map
        .get(name)
        .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok())
}

/// What to do with one results entry.
enum Parsed {
    /// Acknowledge without a transition.
    Skip,
    /// Apply this event to this workflow.
    Apply {
        workflow: String,
        event: Event,
        finished_at_ms: u64,
    },
}

fn parse(stream: &str, e: &StreamId) -> Parsed {
    let Some(wf) = field(e, fields::WORKFLOW).and_then(|w| String::from_utf8(w).ok()) else {
        return Parsed::Skip;
    };
    let Some(body) = field(e, fields::BODY) else {
        tracing::error!(stream, entry = %e.id, workflow = %wf, "result entry without a body; its workflow will time the stage out");
        return Parsed::Skip;
    };
    let limits = DecodeLimits {
        max_bytes: MAX_RESULT_BYTES,
        ..DecodeLimits::default()
    };
    match decode_any::<ResultEnvelope>(&body, limits) {
        Ok((r, _)) => Parsed::Apply {
            workflow: wf,
            event: result_event(&r),
            finished_at_ms: r.finished_at_ms,
        },
        Err(err) => {
            tracing::error!(stream, entry = %e.id, workflow = %wf, error = %err, "undecodable result; its workflow will time the stage out");
            Parsed::Skip
        }
    }
}

/// The plain `task_id` field of a results entry ('' when it has none).
fn task_of(e: &StreamId) -> String {
    field(e, fields::TASK_ID)
        .and_then(|t| String::from_utf8(t).ok())
        .unwrap_or_default()
}

/// Applies a batch of results; returns the (entry id, task id) pairs that
/// may be acknowledged.
async fn apply_batch(
    engine: &Engine,
    conn: &ConnectionManager,
    stream: &str,
    entries: &[StreamId],
    parallelism: usize,
) -> Vec<(String, String)> {
    let mut done = Vec::with_capacity(entries.len());
    let mut work = Vec::new();
    for e in entries {
        match parse(stream, e) {
            Parsed::Skip => done.push((e.id.clone(), task_of(e))),
            Parsed::Apply {
                workflow,
                event,
                finished_at_ms,
            } => work.push((
                workflow,
                ((e.id.clone(), task_of(e)), event, finished_at_ms),
            )),
        }
    }
    // One workflow's results in order, different workflows side by side:
    // round k applies the k-th result of every workflow in the batch, in
    // pipelined chunks of `parallelism` workflows (see `batch.rs`).
    let mut groups: Vec<(String, std::collections::VecDeque<_>)> = group_by_workflow(work)
        .into_iter()
        .map(|(wf, items)| (wf, items.into_iter().collect()))
        .collect();
    while !groups.is_empty() {
        let round: Vec<(String, (Entry, Event, u64))> = groups
            .iter_mut()
            .filter_map(|(wf, q)| q.pop_front().map(|item| (wf.clone(), item)))
            .collect();
        let chunks = round.chunks(parallelism.max(1)).map(|chunk| {
            let mut conn = conn.clone();
            async move {
                let items: Vec<(String, Event)> = chunk
                    .iter()
                    .map(|(wf, (_, event, _))| (wf.clone(), event.clone()))
                    .collect();
                let outcomes = engine.signal_results(&mut conn, &items).await;
                chunk
                    .iter()
                    .zip(outcomes)
                    .map(|((wf, (entry, _, finished)), o)| {
                        (wf.clone(), entry.clone(), *finished, o)
                    })
                    .collect::<Vec<_>>()
            }
        });
        let mut failed: Vec<String> = Vec::new();
        for (wf, entry, finished_at_ms, outcome) in futures::future::join_all(chunks)
            .await
            .into_iter()
            .flatten()
        {
            match outcome {
                Ok(outcome) => {
                    let what = match outcome {
                        Outcome::Applied { .. } => {
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map(|d| d.as_millis() as u64)
                                .unwrap_or(0);
                            // Worker and orchestrator clocks: a figure for
                            // people, never for logic.
                            metrics::histogram!("orchestrator_result_to_transition_seconds")
                                .record(now.saturating_sub(finished_at_ms) as f64 / 1000.0);
                            "applied"
                        }
                        Outcome::Unchanged { .. } => {
                            tracing::debug!(workflow = %wf, entry = %entry.0, "duplicate or stale result: nothing changes");
                            "unchanged"
                        }
                        Outcome::NotFound => {
                            tracing::warn!(workflow = %wf, entry = %entry.0, "result for an unknown workflow; dropped");
                            "unknown_workflow"
                        }
                    };
                    metrics::counter!("orchestrator_results_total", "outcome" => what).increment(1);
                    done.push(entry);
                }
                Err(err) if is_transient(&err) => {
                    // Left pending with the rest of its workflow's results:
                    // read again after a pause.
                    tracing::warn!(workflow = %wf, entry = %entry.0, error = %err, "cannot apply result yet; will retry");
                    failed.push(wf);
                }
                Err(err) => {
                    // Retrying cannot help (unreadable state, unknown
                    // definition): keep the result in the log, move on.
                    tracing::error!(workflow = %wf, entry = %entry.0, error = %err, "result cannot be applied; acknowledged without a transition");
                    metrics::counter!("orchestrator_results_total", "outcome" => "unapplicable")
                        .increment(1);
                    done.push(entry);
                }
            }
        }
        groups.retain(|(wf, q)| !q.is_empty() && !failed.contains(wf));
    }
    done
}

/// A results entry: its id and its task id.
type Entry = (String, String);

/// Errors that may pass: Redis, the pool, the SDK client's Redis calls.
fn is_transient(e: &crate::error::Error) -> bool {
    use crate::error::Error;
    matches!(
        e,
        Error::Redis(_) | Error::Pool(_) | Error::Sdk(_) | Error::Conflict(_)
    )
}

/// Acknowledges and deletes applied results and clears their tasks' deadlines.
async fn ack(
    conn: &ConnectionManager,
    stream: &str,
    deadlines: &str,
    done: &[(String, String)],
) -> redis::RedisResult<()> {
    if done.is_empty() {
        return Ok(());
    }
    let mut c = conn.clone();
    let mut inv = crate::scripts::ACK_RESULTS.prepare_invoke();
    inv.key(stream).key(deadlines).arg(ORCHESTRATOR_GROUP);
    for (id, task) in done {
        inv.arg(id).arg(task);
    }
    let _: i64 = inv.invoke_async(&mut c).await?;
    Ok(())
}

/// Creates the `orchestrator` group on `stream` (from the start, so results
/// written before the first orchestrator ran are not missed).
pub async fn ensure_group(conn: &ConnectionManager, stream: &str) -> redis::RedisResult<()> {
    let mut c = conn.clone();
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(ORCHESTRATOR_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await;
    match r {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Consumes `agent_type`'s results until `stop`.
pub async fn consume(
    engine: Arc<Engine>,
    conn: ConnectionManager,
    mut reader: Conn,
    agent_type: AgentType,
    s: ConsumerSettings,
    stop: CancellationToken,
) {
    let stream = engine.keys().results(&agent_type);
    let deadlines = engine.keys().deadlines(&agent_type);
    let mut group_ready = false;
    // Our own pending entries first: a restart under the same consumer
    // name finds what it read and had not acknowledged.
    let mut own_pending = true;
    let reclaim_every = (s.claim_idle / 2).max(Duration::from_millis(100));
    let mut next_reclaim = tokio::time::Instant::now();
    let mut claim_cursor = "0-0".to_owned();
    tracing::info!(stream = %stream, "consuming results");
    while !stop.is_cancelled() {
        if !group_ready {
            match ensure_group(&conn, &stream).await {
                Ok(()) => group_ready = true,
                Err(e) => {
                    tracing::warn!(stream = %stream, error = %e, "cannot create the orchestrator group; retrying");
                    if pause(&stop, Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let Some(mut c) = reader.get(&stop).await else {
            return;
        };
        let entries: redis::RedisResult<Vec<StreamId>> = if tokio::time::Instant::now()
            >= next_reclaim
        {
            next_reclaim = tokio::time::Instant::now() + reclaim_every;
            let r: redis::RedisResult<StreamAutoClaimReply> = redis::cmd("XAUTOCLAIM")
                .arg(&stream)
                .arg(ORCHESTRATOR_GROUP)
                .arg(&s.consumer)
                .arg(s.claim_idle.as_millis() as u64)
                .arg(&claim_cursor)
                .arg("COUNT")
                .arg(s.batch)
                .query_async(&mut c)
                .await;
            r.map(|r| {
                    claim_cursor = r.next_stream_id;
                    if !r.deleted_ids.is_empty() {
                        tracing::warn!(stream = %stream, ids = ?r.deleted_ids, "pending results whose entries were deleted");
                    }
                    r.claimed
                })
        } else {
            let from = if own_pending { "0" } else { ">" };
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(ORCHESTRATOR_GROUP)
                .arg(&s.consumer)
                .arg("COUNT")
                .arg(s.batch);
            if !own_pending {
                cmd.arg("BLOCK").arg(s.block.as_millis() as u64);
            }
            let r: redis::RedisResult<Option<StreamReadReply>> = cmd
                .arg("STREAMS")
                .arg(&stream)
                .arg(from)
                .query_async(&mut c)
                .await;
            r.map(|r| {
                let ids: Vec<StreamId> = r
                    .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                    .unwrap_or_default();
                if own_pending && ids.is_empty() {
                    own_pending = false;
                }
                ids
            })
        };
        let entries = match entries {
            Ok(e) => {
                reader.succeeded();
                e
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                tracing::warn!(stream = %stream, "orchestrator group missing (stream deleted or flushed); recreating it");
                group_ready = false;
                continue;
            }
            Err(e) => {
                own_pending = true;
                if !reader.failed(&e, &stop).await {
                    return;
                }
                continue;
            }
        };
        if entries.is_empty() {
            continue;
        }
        let done = apply_batch(&engine, &conn, &stream, &entries, s.parallelism).await;
        if done.len() < entries.len() {
            // Something could not be applied: read our pending entries
            // again after a pause rather than spin on them.
            own_pending = true;
            if pause(&stop, Duration::from_millis(500)).await {
                return;
            }
        }
        if let Err(e) = ack(&conn, &stream, &deadlines, &done).await {
            tracing::warn!(stream = %stream, error = %e, "cannot acknowledge results; they will be applied again (no effect)");
            own_pending = true;
        }
    }
}

/// Sleeps `d`; true if `stop` fired first.
pub(crate) async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_sdk::schemas::ErrorInfo;

    fn dead(kind: ErrorKind) -> ResultEnvelope {
        ResultEnvelope {
            v: 1,
            task_id: "w:a:1".into(),
            agent_type: "a".into(),
            status: TaskStatus::DeadLettered,
            output: None,
            error: Some(ErrorInfo {
                kind,
                message: "m".into(),
                details: None,
            }),
            attempt: 1,
            worker: "x".into(),
            workflow_id: Some("w".into()),
            stage: Some("a".into()),
            trace_id: None,
            finished_at_ms: 0,
            duration_ms: 0,
        }
    }

    #[test]
    fn permanent_failures_fail_the_stage_others_block_it() {
        for k in [ErrorKind::Permanent, ErrorKind::InvalidInput] {
            assert!(matches!(result_event(&dead(k)), Event::TaskFailed { .. }));
        }
        for k in [
            ErrorKind::Retryable,
            ErrorKind::Timeout,
            ErrorKind::Panic,
            ErrorKind::Malformed,
            ErrorKind::MaxDeliveries,
        ] {
            assert!(matches!(
                result_event(&dead(k)),
                Event::TaskDeadLettered { .. }
            ));
        }
    }
}
