//! Running one entry: decode, handler under timeout and panic guard, one disposition.

use super::commit::{CommitOp, Fields, Finished, Publish};
use super::delivery::{self, Delivery, Parsed};
use super::{Settings, Shared};
use crate::agent::{Agent, AgentErrorKind, TaskContext};
use crate::clock::now_ms;
use crate::retry::{Disposition, Failure};
use crate::stream::Entry;
use futures::FutureExt;
use schemas::{
    DeadLetterReason, Encoding, ErrorInfo, ErrorKind, ResultEnvelope, TaskStatus, fields,
};
use serde::Serialize;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc::UnboundedSender;
use tracing::Instrument;

pub(crate) type Tx = UnboundedSender<Finished>;

/// Longest handler timeout a task can ask for.
const MAX_TASK_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Longest error message kept in a dead letter or result.
const MAX_ERROR_LEN: usize = 16 * 1024;

/// What is known about a task's identity.
#[derive(Debug, Clone, Default)]
struct Meta {
    task_id: Option<String>,
    workflow_id: Option<String>,
    stage: Option<String>,
    trace_id: Option<String>,
}

/// Hands one entry (holding one slot) to its fate. `deliveries` is the
/// entry's delivery count when it was reclaimed (None for fresh reads).
pub(crate) fn dispatch<A: Agent>(
    shared: &Arc<Shared<A>>,
    tx: &Tx,
    entry: Entry,
    permit: OwnedSemaphorePermit,
    deliveries: Option<u32>,
) {
    let s = &shared.settings;
    let token = shared.hard_stop.child_token();
    if !shared.inflight.start(&entry.id, token.clone()) {
        // Already running here (a re-read of our own pending list).
        return;
    }
    let (entry, meta, attempt, encoding, reason, error) = match delivery::parse::<A::Input>(
        entry, s.limits,
    ) {
        Parsed::Malformed(m) => {
            let m = *m;
            let meta = Meta {
                task_id: m.task_id,
                workflow_id: m.workflow_id,
                stage: m.stage,
                trace_id: None,
            };
            let error = ErrorInfo {
                kind: ErrorKind::Malformed,
                message: m.error,
                details: None,
            };
            (
                m.entry,
                meta,
                m.attempt,
                m.encoding,
                DeadLetterReason::Malformed,
                error,
            )
        }
        Parsed::Task(d) => match deliveries {
            // Delivered max_deliveries times before this claim, never settled.
            Some(n) if n > s.cfg.max_deliveries => {
                let d = *d;
                let meta = Meta {
                    task_id: Some(d.envelope.id),
                    workflow_id: d.envelope.workflow_id,
                    stage: d.envelope.stage,
                    trace_id: d.envelope.trace_id,
                };
                let error = ErrorInfo {
                    kind: ErrorKind::MaxDeliveries,
                    message: format!(
                        "delivered {} times (max {}): its workers died or were stopped every time",
                        n - 1,
                        s.cfg.max_deliveries
                    ),
                    details: None,
                };
                (
                    d.entry,
                    meta,
                    d.attempt,
                    d.encoding,
                    DeadLetterReason::MaxDeliveries,
                    error,
                )
            }
            _ => {
                let id = d.entry.id.clone();
                let inflight = shared.inflight.clone();
                let run = AssertUnwindSafe(run_task(shared.clone(), tx.clone(), *d, token, permit));
                shared.tracker.spawn(async move {
                    // Handler panics are caught inside; this catches the
                    // runtime's own. Without it the entry would stay in
                    // `inflight`, be renewed forever and never settle.
                    if run.catch_unwind().await.is_err() {
                        tracing::error!(stream_id = %id, "bug: the runtime panicked while running a task; it stays pending and will be reclaimed");
                        inflight.finish(&id);
                    }
                });
                return;
            }
        },
    };
    tracing::warn!(
        stream_id = %entry.id,
        task_id = meta.task_id.as_deref().unwrap_or("-"),
        reason = reason.as_str(),
        error = %error.message,
        "dead-lettering entry without running it"
    );
    let op = dead_letter(
        s,
        &entry,
        &meta,
        attempt,
        encoding,
        reason,
        error,
        Duration::ZERO,
    );
    send(tx, entry.id, op, permit, None);
}

fn send(
    tx: &Tx,
    stream_id: String,
    op: CommitOp,
    permit: OwnedSemaphorePermit,
    ran_for: Option<Duration>,
) {
    // The committer only stops after every sender is dropped, so this cannot
    // fail while we hold `tx`; if it ever did, the entry would stay pending
    // and be reclaimed, not lost.
    let _ = tx.send(Finished {
        stream_id,
        op,
        permit,
        ran_for,
    });
}

async fn run_task<A: Agent>(
    shared: Arc<Shared<A>>,
    tx: Tx,
    d: Delivery<A::Input>,
    token: tokio_util::sync::CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let s = &shared.settings;
    let Delivery {
        entry,
        envelope,
        attempt,
        encoding,
    } = d;
    // The task may choose its timeout, within reason: 0 means the default,
    // and no value may overflow the deadline arithmetic.
    let timeout = envelope
        .timeout_ms
        .filter(|ms| *ms > 0)
        .map_or(s.cfg.task_timeout, Duration::from_millis)
        .min(MAX_TASK_TIMEOUT);
    let max_attempts = s.cfg.retry.attempts_for(envelope.max_attempts);
    let meta = Meta {
        task_id: Some(envelope.id.clone()),
        workflow_id: envelope.workflow_id.clone(),
        stage: envelope.stage.clone(),
        trace_id: envelope.trace_id.clone(),
    };
    // Constant fields (agent type, stream, instance) live on the worker span,
    // the parent: formatting them again for every task cost a tenth of the
    // worker's time.
    let span = tracing::info_span!(
        parent: &shared.span,
        "task",
        task_id = %envelope.id,
        attempt,
        trace_id = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    if let Some(t) = &envelope.trace_id {
        span.record("trace_id", t.as_str());
    }
    let ctx = TaskContext {
        task_id: envelope.id,
        attempt,
        max_attempts,
        agent_type: s.agent_type.clone(),
        workflow_id: envelope.workflow_id,
        stage: envelope.stage,
        trace_id: envelope.trace_id,
        deadline: Instant::now() + timeout,
        cancel: token.clone(),
        worker: s.consumer.clone(),
        progress: shared.inflight.activity.clone(),
    };
    shared.metrics.in_flight.increment(1.0);
    let started = Instant::now();
    let run = async {
        let handler = AssertUnwindSafe(shared.agent.handle(&ctx, envelope.input)).catch_unwind();
        tokio::select! {
            // Cancelled first: a handler that returns because its token
            // fired (a cancellable sleep) has not finished its work, and
            // its entry is no longer ours to settle.
            biased;
            _ = token.cancelled() => None,
            r = tokio::time::timeout(timeout, handler) => Some(r),
        }
    }
    .instrument(span.clone())
    .await;
    let ran_for = started.elapsed();
    shared.metrics.in_flight.decrement(1.0);
    // Its progress goes with it (deleted from Redis at the next beat).
    shared.inflight.activity.settle(&ctx.task_id);

    let (output, failure) = match run {
        None => {
            // Taken over by another worker, or shutdown's grace is over: the
            // entry is not ours to settle any more.
            span.record("outcome", "abandoned");
            shared.inflight.finish(&entry.id);
            shared.metrics.abandoned.increment(1);
            tracing::warn!(parent: &span, "handler abandoned; the task is left to the worker that owns it");
            return;
        }
        Some(Err(_elapsed)) => {
            token.cancel();
            (
                None,
                Some(failure_of(
                    ErrorKind::Timeout,
                    format!("timed out after {}", humantime::format_duration(timeout)),
                )),
            )
        }
        Some(Ok(Err(panic))) => (
            None,
            Some(failure_of(
                ErrorKind::Panic,
                format!("handler panicked: {}", panic_message(&panic)),
            )),
        ),
        Some(Ok(Ok(Err(e)))) => {
            let kind = match e.kind {
                AgentErrorKind::Retryable => ErrorKind::Retryable,
                AgentErrorKind::Permanent => ErrorKind::Permanent,
                AgentErrorKind::InvalidInput => ErrorKind::InvalidInput,
            };
            (
                None,
                Some(Failure {
                    kind,
                    message: e.message,
                    details: e.details,
                    retry_after: e.retry_after,
                }),
            )
        }
        Some(Ok(Ok(Ok(out)))) => (Some(out), None),
    };

    let mut failure = failure;
    // A success is only a success once its result is encoded.
    let success = match &output {
        Some(out) => match result_publish(
            s,
            &meta,
            TaskStatus::Succeeded,
            attempt,
            Some(out),
            None,
            encoding,
            ran_for,
        ) {
            Ok(p) => Some(p),
            Err(e) => {
                failure = Some(failure_of(
                    ErrorKind::Permanent,
                    format!("cannot encode the output: {e}"),
                ));
                None
            }
        },
        None => None,
    };
    let disposition = s
        .cfg
        .retry
        .decide(failure.as_ref(), attempt, max_attempts, fastrand::f64());
    let op = match (disposition, success) {
        (Disposition::Ack, Some(p)) => {
            span.record("outcome", "succeeded");
            tracing::debug!(parent: &span, ms = ran_for.as_millis() as u64, "task succeeded");
            CommitOp::Ack(p)
        }
        (Disposition::Retry { after }, _) => {
            span.record("outcome", "retried");
            let error = failure.as_ref().map_or("", |f| f.message.as_str());
            tracing::info!(parent: &span, error, retry_in = ?after, "task failed; retrying");
            CommitOp::Retry {
                delay: after,
                member: retry_member(&entry, attempt + 1),
            }
        }
        (d, _) => {
            // `decide` acks only without a failure, and without a failure
            // there is an encoded success; anything else is a dead letter.
            let reason = match d {
                Disposition::DeadLetter { reason } => reason,
                _ => DeadLetterReason::Permanent,
            };
            span.record("outcome", "dead_lettered");
            let f = failure.unwrap_or_else(|| failure_of(ErrorKind::Permanent, "no output".into()));
            tracing::warn!(parent: &span, reason = reason.as_str(), error = %f.message, "task dead-lettered");
            let error = ErrorInfo {
                kind: f.kind,
                message: f.message,
                details: f.details,
            };
            dead_letter(s, &entry, &meta, attempt, encoding, reason, error, ran_for)
        }
    };
    send(&tx, entry.id, op, permit, Some(ran_for));
}

fn failure_of(kind: ErrorKind, message: String) -> Failure {
    Failure {
        kind,
        message,
        details: None,
        retry_after: None,
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into())
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The entry as it will be re-added for attempt `attempt`: every original
/// field kept byte for byte, `attempt` replaced.
fn retry_member(entry: &Entry, attempt: u32) -> Vec<u8> {
    let attempt = attempt.to_string();
    crate::scripts::delayed_member(
        entry
            .fields
            .iter()
            .filter(|(k, _)| k != fields::ATTEMPT)
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .chain(std::iter::once((fields::ATTEMPT, attempt.as_bytes()))),
    )
}

#[allow(clippy::too_many_arguments)]
fn result_publish<O: Serialize>(
    s: &Settings,
    meta: &Meta,
    status: TaskStatus,
    attempt: u32,
    output: Option<&O>,
    error: Option<ErrorInfo>,
    encoding: Encoding,
    ran_for: Duration,
) -> schemas::Result<Publish> {
    let task_id = meta.task_id.clone().unwrap_or_default();
    let envelope = ResultEnvelope {
        v: schemas::PROTOCOL_VERSION,
        task_id: task_id.clone(),
        agent_type: s.agent_type.to_string(),
        status,
        output,
        error,
        attempt,
        worker: s.consumer.to_string(),
        workflow_id: meta.workflow_id.clone(),
        stage: meta.stage.clone(),
        trace_id: meta.trace_id.clone(),
        finished_at_ms: now_ms(),
        duration_ms: ran_for.as_millis() as u64,
    };
    let body = encoding.encode(&envelope)?;
    Ok(Publish {
        key: format!("{}{}", s.result_prefix, task_id),
        status,
        task_id,
        attempt,
        workflow_id: meta.workflow_id.clone(),
        stage: meta.stage.clone(),
        body,
    })
}

/// The commit op that dead-letters `entry`: a DLQ entry keeping every raw
/// field, plus a `dead_lettered` result when the task id is known.
#[allow(clippy::too_many_arguments)]
fn dead_letter(
    s: &Settings,
    entry: &Entry,
    meta: &Meta,
    attempt: u32,
    encoding: Encoding,
    reason: DeadLetterReason,
    mut error: ErrorInfo,
    ran_for: Duration,
) -> CommitOp {
    error.message = truncate(std::mem::take(&mut error.message));
    let mut dlq: Fields = Vec::with_capacity(10 + entry.fields.len());
    let mut put = |k: &str, v: &[u8]| dlq.push((k.to_owned(), v.to_vec()));
    put(fields::AGENT_TYPE, s.agent_type.as_str().as_bytes());
    if let Some(id) = &meta.task_id {
        put(fields::TASK_ID, id.as_bytes());
    }
    if let Some(wf) = &meta.workflow_id {
        put(fields::WORKFLOW, wf.as_bytes());
    }
    if let Some(st) = &meta.stage {
        put(fields::STAGE, st.as_bytes());
    }
    put(fields::REASON, reason.as_str().as_bytes());
    put(fields::ERROR, error.message.as_bytes());
    put(fields::ATTEMPTS, attempt.to_string().as_bytes());
    put(fields::WORKER, s.consumer.as_bytes());
    put(fields::FAILED_AT_MS, now_ms().to_string().as_bytes());
    put(fields::SOURCE_ID, entry.id.as_bytes());
    for (k, v) in &entry.fields {
        dlq.push((format!("{}{k}", fields::RAW_PREFIX), v.clone()));
    }
    let result = match &meta.task_id {
        Some(_) => result_publish::<()>(s, meta, TaskStatus::DeadLettered, attempt, None, Some(error), encoding, ran_for)
            .map_err(|e| tracing::error!(error = %e, "cannot encode a dead_lettered result; the dead letter is kept without it"))
            .ok(),
        None => None,
    };
    CommitOp::DeadLetter {
        dlq,
        result,
        reason,
    }
}
