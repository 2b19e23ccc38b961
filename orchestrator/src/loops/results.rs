//! Consumes the results streams of every watched agent type through the
//! `orchestrator` consumer group and turns each result into a workflow
//! event.
//!
//! One consumer reads them all: the SDK's [`ManyReader`] — one blocking
//! `XREADGROUP … STREAMS s1 s2 …` on one connection, whatever the number
//! of types, with the same reclaim cadence as the workers' reader, on every
//! stream — so a type the engine starts watching joins the set at the next
//! read instead of opening a connection. A restart under the same consumer
//! name picks up its own pending results, and results pending at a dead
//! replica are taken over after `claim_idle`. What is this consumer's own is
//! the policy: apply, then acknowledge. A result is acknowledged (and
//! deleted) only after its transition is stored: a crash in between leaves
//! it pending, and it is read again. Applying it a second time changes
//! nothing (the stage no longer waits for that task id), and carries out the
//! outbox the crash may have left.
//!
//! Results of tasks that belong to no workflow (standalone tasks) are
//! acknowledged at once.
//!
//! On Redis Cluster one call reads the streams of one node only: the set
//! would be split per node, a reader each (another issue).

use crate::engine::{Engine, Outcome};
use crate::machine::Event;
use agent_sdk::connection::Conn;
use agent_sdk::schemas::codec::{DecodeLimits, decode_any};
use agent_sdk::schemas::{
    AgentType, ErrorKind, ORCHESTRATOR_GROUP, ResultEnvelope, TaskStatus, fields,
};
use agent_sdk::shutdown::pause;
use agent_sdk::stream::{Entry, ManyReader, TakeAll};
use redis::aio::ConnectionManager;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Settings of the result consumers.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// This orchestrator's consumer name.
    pub consumer: String,
    /// Results read per call, per agent type.
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
                // The agent's handler timeout is the stage's timeout: the
                // same outcome as the orchestrator's deadline firing.
                Some(ErrorKind::Timeout) => Event::TaskTimedOut { task_id },
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

/// What to do with one results entry.
enum Parsed {
    /// Acknowledge without a transition.
    Skip,
    /// Apply this event to this workflow.
    Apply {
        workflow: String,
        event: Event,
        /// A dead letter stands behind it.
        dead: bool,
    },
}

fn parse(stream: &str, e: &Entry) -> Parsed {
    let Some(wf) = e.text(fields::WORKFLOW).map(str::to_owned) else {
        return Parsed::Skip;
    };
    let Some(body) = e.field(fields::BODY) else {
        tracing::error!(stream, entry = %e.id, workflow = %wf, "result entry without a body; its workflow will time the stage out");
        return Parsed::Skip;
    };
    let limits = DecodeLimits {
        max_bytes: MAX_RESULT_BYTES,
        ..DecodeLimits::default()
    };
    match decode_any::<ResultEnvelope>(body, limits) {
        Ok((r, _)) => Parsed::Apply {
            workflow: wf,
            event: result_event(&r),
            dead: r.status == TaskStatus::DeadLettered,
        },
        Err(err) => {
            tracing::error!(stream, entry = %e.id, workflow = %wf, error = %err, "undecodable result; its workflow will time the stage out");
            Parsed::Skip
        }
    }
}

/// The plain `task_id` field of a results entry ('' when it has none).
fn task_of(e: &Entry) -> String {
    e.text(fields::TASK_ID).unwrap_or_default().to_owned()
}

/// Whether the dead letter behind a `dead_lettered` result of `task` is
/// still its workflow's business after the result was applied: only while
/// the workflow waits on it (its stage is dead-lettered on this very task,
/// for an operator to replay). Otherwise — the stage timed out or failed,
/// the workflow ended — it would be left behind for nothing. A task naming
/// a workflow that does not exist keeps its dead letter: nothing says what
/// it was for.
fn keeps_dead_letter(outcome: &Outcome, task: &str) -> bool {
    let wf = match outcome {
        Outcome::Applied { workflow, .. } | Outcome::Unchanged { workflow, .. } => workflow,
        Outcome::NotFound => return true,
    };
    !wf.status.is_terminal()
        && wf.stages.iter().any(|s| {
            s.status == crate::machine::StageStatus::DeadLettered
                && s.task_id.as_deref() == Some(task)
        })
}

/// Applies a batch of results; returns the (entry id, task id) pairs that
/// may be acknowledged, and the dead letters to delete (their results
/// entries) before they are.
async fn apply_batch(
    engine: &Engine,
    conn: &ConnectionManager,
    entries: &[(usize, &str, Entry)],
    parallelism: usize,
) -> (Vec<Settled>, Vec<Settled>) {
    let mut done = Vec::with_capacity(entries.len());
    let mut forget = Vec::new();
    let mut work = Vec::new();
    for (at, stream, e) in entries {
        let settled = (*at, e.id.clone(), task_of(e));
        match parse(stream, e) {
            Parsed::Skip => done.push(settled),
            Parsed::Apply {
                workflow,
                event,
                dead,
            } => work.push((workflow, (settled, event, dead))),
        }
    }
    // One workflow's results in order, different workflows side by side:
    // round k applies the k-th result of every workflow in the batch, in
    // pipelined chunks of `parallelism` workflows (see `batch.rs`).
    let mut groups: Vec<(String, VecDeque<_>)> = group_by_workflow(work);
    while !groups.is_empty() {
        let round: Vec<(String, (Settled, Event, bool))> = groups
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
                    .map(|((wf, (entry, _, dead)), o)| (wf.clone(), entry.clone(), *dead, o))
                    .collect::<Vec<_>>()
            }
        });
        let mut failed: Vec<String> = Vec::new();
        for (wf, entry, dead, outcome) in futures::future::join_all(chunks)
            .await
            .into_iter()
            .flatten()
        {
            match outcome {
                Ok(outcome) => {
                    if dead
                        && !engine.keeps_dead_letters()
                        && !keeps_dead_letter(&outcome, &entry.2)
                    {
                        forget.push(entry.clone());
                    }
                    let what = match outcome {
                        Outcome::Applied { workflow, .. } => {
                            // Both times are the Redis server's: the
                            // result's entry id and the transition's `now`.
                            if let Some(ms) = entry
                                .1
                                .split('-')
                                .next()
                                .and_then(|m| m.parse::<u64>().ok())
                            {
                                metrics::histogram!("orchestrator_result_to_transition_seconds")
                                    .record(
                                        workflow.updated_at_ms.saturating_sub(ms) as f64 / 1000.0,
                                    );
                            }
                            "applied"
                        }
                        Outcome::Unchanged { .. } => {
                            tracing::debug!(workflow = %wf, entry = %entry.1, "duplicate or stale result: nothing changes");
                            "unchanged"
                        }
                        Outcome::NotFound => {
                            tracing::warn!(workflow = %wf, entry = %entry.1, "result for an unknown workflow; dropped");
                            "unknown_workflow"
                        }
                    };
                    metrics::counter!("orchestrator_results_total", "outcome" => what).increment(1);
                    done.push(entry);
                }
                Err(err) if err.is_transient() => {
                    // Left pending with the rest of its workflow's results:
                    // read again after a pause.
                    tracing::warn!(workflow = %wf, entry = %entry.1, error = %err, "cannot apply result yet; will retry");
                    failed.push(wf);
                }
                Err(err) => {
                    // Retrying cannot help (unreadable state, unknown
                    // definition): keep the result in the log, move on.
                    tracing::error!(workflow = %wf, entry = %entry.1, error = %err, "result cannot be applied; acknowledged without a transition");
                    metrics::counter!("orchestrator_results_total", "outcome" => "unapplicable")
                        .increment(1);
                    done.push(entry);
                }
            }
        }
        groups.retain(|(wf, q)| !q.is_empty() && !failed.contains(wf));
    }
    (done, forget)
}

/// Deletes the dead letters behind `forget` (results entries of `streams`'
/// agent types): one script call each, in one round trip. Each is looked
/// for no later than its result's entry (written in the same step).
async fn forget_dead_letters(
    engine: &Engine,
    conn: &ConnectionManager,
    types: &[Option<AgentType>],
    forget: &[Settled],
) -> redis::RedisResult<()> {
    let calls: Vec<redis::ScriptInvocation<'static>> = forget
        .iter()
        .filter_map(|(at, entry, task)| {
            let t = types.get(*at)?.as_ref()?;
            let ms = entry.split('-').next()?.parse::<u64>().ok()?;
            Some(engine.forget_dead_letter_invocation(t, task, Some(ms + 1)))
        })
        .collect();
    let calls: Vec<&redis::ScriptInvocation<'_>> = calls.iter().collect();
    let mut c = conn.clone();
    let gone: Vec<Option<String>> =
        crate::scripts::invoke_all(&mut c, &crate::scripts::FORGET_DEAD_LETTER, &calls).await?;
    let n = gone.iter().flatten().count() as u64;
    if n > 0 {
        tracing::info!(
            dead_letters = n,
            "deleted dead letters of tasks their workflows no longer wait for (timed out, failed or ended)"
        );
        metrics::counter!("orchestrator_dead_letters_forgotten_total").increment(n);
    }
    Ok(())
}

/// A results entry to acknowledge: its stream (index in the batch's
/// streams), its id and its task id.
type Settled = (usize, String, String);

/// Groups items by workflow, keeping the order within each and the order
/// in which workflows first appear.
fn group_by_workflow<T>(items: Vec<(String, T)>) -> Vec<(String, VecDeque<T>)> {
    let mut at: HashMap<String, usize> = HashMap::new();
    let mut groups: Vec<(String, VecDeque<T>)> = Vec::new();
    for (wf, item) in items {
        match at.get(&wf) {
            Some(&i) => groups[i].1.push_back(item),
            None => {
                at.insert(wf.clone(), groups.len());
                groups.push((wf, VecDeque::from([item])));
            }
        }
    }
    groups
}

/// Acknowledges and deletes applied results and clears their tasks'
/// deadlines: one script call per stream (each in its agent type's slot),
/// all in one round trip.
async fn ack(
    conn: &ConnectionManager,
    streams: &[(String, String)],
    done: &[Settled],
) -> redis::RedisResult<()> {
    let mut calls = Vec::new();
    for (at, (stream, deadlines)) in streams.iter().enumerate() {
        let mut inv = crate::scripts::ACK_RESULTS.prepare_invoke();
        inv.key(stream).key(deadlines).arg(ORCHESTRATOR_GROUP);
        let mut any = false;
        for (_, id, task) in done.iter().filter(|(s, _, _)| *s == at) {
            inv.arg(id).arg(task);
            any = true;
        }
        if any {
            calls.push(inv);
        }
    }
    let mut c = conn.clone();
    let calls: Vec<&redis::ScriptInvocation<'_>> = calls.iter().collect();
    let _: Vec<i64> =
        crate::scripts::invoke_all(&mut c, &crate::scripts::ACK_RESULTS, &calls).await?;
    Ok(())
}

/// Consumes the results of every agent type `watch` announces (the
/// channel [`Engine::new`] returned: types already watched are on it too)
/// until `stop`, on `reader_conn` alone for the reads, `conn` for the rest.
pub async fn consume(
    engine: Arc<Engine>,
    conn: ConnectionManager,
    mut reader_conn: Conn,
    mut watch: mpsc::UnboundedReceiver<AgentType>,
    s: ConsumerSettings,
    stop: CancellationToken,
) {
    let mut reader = ManyReader::new(
        ORCHESTRATOR_GROUP,
        s.consumer.as_str(),
        s.claim_idle,
        s.block,
    );
    // Results stream → deadlines set, and agent type, of each type read.
    let mut deadlines_of: HashMap<String, String> = HashMap::new();
    let mut types_of: HashMap<String, AgentType> = HashMap::new();
    loop {
        if reader.is_empty() {
            // Nothing to read yet: wait for a first type.
            tokio::select! {
                _ = stop.cancelled() => return,
                t = watch.recv() => match t {
                    Some(t) => join(&engine, &mut reader, &mut deadlines_of, &mut types_of, &t),
                    None => return,
                },
            }
        }
        // Types watched since the last read join the set.
        while let Ok(t) = watch.try_recv() {
            join(&engine, &mut reader, &mut deadlines_of, &mut types_of, &t);
        }
        let Some(taken) = reader
            .next(&mut reader_conn, &stop, s.batch, &TakeAll)
            .await
        else {
            return;
        };
        let streams: Vec<(String, String)> = taken
            .iter()
            .map(|(stream, _)| {
                let deadlines = deadlines_of.get(stream).cloned().unwrap_or_default();
                (stream.clone(), deadlines)
            })
            .collect();
        let entries: Vec<(usize, &str, Entry)> = taken
            .iter()
            .enumerate()
            .flat_map(|(at, (stream, t))| {
                t.entries
                    .iter()
                    .map(move |d| (at, stream.as_str(), d.entry.clone()))
            })
            .collect();
        if entries.is_empty() {
            continue;
        }
        let (done, forget) = apply_batch(&engine, &conn, &entries, s.parallelism).await;
        if !forget.is_empty() {
            let types: Vec<Option<AgentType>> = streams
                .iter()
                .map(|(stream, _)| types_of.get(stream).cloned())
                .collect();
            // Before the acknowledgement: if this fails, the results are
            // applied again (no effect) and their dead letters looked for
            // again.
            if let Err(e) = forget_dead_letters(&engine, &conn, &types, &forget).await {
                tracing::warn!(error = %e, "cannot delete dead letters of ended stages yet; their results are read again");
                for (stream, _) in &streams {
                    reader.reread_own(stream);
                }
                if pause(&stop, Duration::from_millis(500)).await {
                    return;
                }
                continue;
            }
        }
        if done.len() < entries.len() {
            // Something could not be applied: read our pending entries of
            // those streams again after a pause rather than spin on them.
            for (at, (stream, _)) in streams.iter().enumerate() {
                let all = entries.iter().filter(|(s, _, _)| *s == at).count();
                let settled = done.iter().filter(|(s, _, _)| *s == at).count();
                if settled < all {
                    reader.reread_own(stream);
                }
            }
            if pause(&stop, Duration::from_millis(500)).await {
                return;
            }
        }
        if let Err(e) = ack(&conn, &streams, &done).await {
            tracing::warn!(error = %e, "cannot acknowledge results; they will be applied again (no effect)");
            for (stream, _) in &streams {
                reader.reread_own(stream);
            }
        }
    }
}

/// Adds agent type `t`'s results stream to the reader's set.
fn join(
    engine: &Engine,
    reader: &mut ManyReader,
    deadlines_of: &mut HashMap<String, String>,
    types_of: &mut HashMap<String, AgentType>,
    t: &AgentType,
) {
    let stream = engine.keys().results(t);
    if reader.add(stream.clone()) {
        tracing::info!(stream = %stream, streams = reader.len(), "consuming results");
        deadlines_of.insert(stream.clone(), engine.keys().deadlines(t));
        types_of.insert(stream, t.clone());
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
    fn grouping_keeps_order() {
        let g = group_by_workflow(vec![
            ("b".to_string(), 1),
            ("a".to_string(), 2),
            ("b".to_string(), 3),
        ]);
        assert_eq!(
            g,
            vec![
                ("b".to_string(), VecDeque::from([1, 3])),
                ("a".to_string(), VecDeque::from([2]))
            ]
        );
    }

    #[test]
    fn permanent_failures_fail_the_stage_others_block_it() {
        for k in [ErrorKind::Permanent, ErrorKind::InvalidInput] {
            assert!(matches!(result_event(&dead(k)), Event::TaskFailed { .. }));
        }
        assert!(matches!(
            result_event(&dead(ErrorKind::Timeout)),
            Event::TaskTimedOut { .. }
        ));
        for k in [
            ErrorKind::Retryable,
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
