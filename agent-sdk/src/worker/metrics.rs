//! Worker metrics through the `metrics` facade.
//!
//! Handles are resolved once per worker, so the hot path increments an atomic
//! instead of looking a metric up by name. Labels are the agent type, the
//! outcome and the dead-letter reason — never a task id.

use super::commit::CommitOp;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use schemas::{AgentType, DeadLetterReason};
use std::time::Duration;

pub(crate) struct WorkerMetrics {
    succeeded: Counter,
    retried: Counter,
    dead_lettered: [Counter; 4],
    duration_succeeded: Histogram,
    duration_failed: Histogram,
    pub(crate) in_flight: Gauge,
    pub(crate) reclaimed: Counter,
    pub(crate) ownership_lost: Counter,
    pub(crate) abandoned: Counter,
    pub(crate) vanished: Counter,
}

fn reason_index(r: DeadLetterReason) -> usize {
    match r {
        DeadLetterReason::Permanent => 0,
        DeadLetterReason::AttemptsExhausted => 1,
        DeadLetterReason::Malformed => 2,
        DeadLetterReason::MaxDeliveries => 3,
    }
}

impl WorkerMetrics {
    pub(crate) fn new(agent_type: &AgentType) -> Self {
        let t = agent_type.to_string();
        let dl = |r: DeadLetterReason| counter!("agentic_tasks_total", "agent_type" => t.clone(), "outcome" => "dead_lettered", "reason" => r.as_str());
        Self {
            succeeded: counter!("agentic_tasks_total", "agent_type" => t.clone(), "outcome" => "succeeded"),
            retried: counter!("agentic_tasks_total", "agent_type" => t.clone(), "outcome" => "retried"),
            dead_lettered: [
                dl(DeadLetterReason::Permanent),
                dl(DeadLetterReason::AttemptsExhausted),
                dl(DeadLetterReason::Malformed),
                dl(DeadLetterReason::MaxDeliveries),
            ],
            duration_succeeded: histogram!("agentic_task_duration_seconds", "agent_type" => t.clone(), "outcome" => "succeeded"),
            duration_failed: histogram!("agentic_task_duration_seconds", "agent_type" => t.clone(), "outcome" => "failed"),
            in_flight: gauge!("agentic_tasks_in_flight", "agent_type" => t.clone()),
            reclaimed: counter!("agentic_tasks_reclaimed_total", "agent_type" => t.clone()),
            ownership_lost: counter!("agentic_tasks_ownership_lost_total", "agent_type" => t.clone()),
            abandoned: counter!("agentic_tasks_abandoned_total", "agent_type" => t.clone()),
            vanished: counter!("agentic_tasks_vanished_total", "agent_type" => t),
        }
    }

    /// Counts a committed op.
    pub(crate) fn committed(&self, op: &CommitOp, ran_for: Option<Duration>) {
        let (counter, hist) = match op {
            CommitOp::Ack(_) => (&self.succeeded, &self.duration_succeeded),
            CommitOp::Retry { .. } => (&self.retried, &self.duration_failed),
            CommitOp::DeadLetter { reason, .. } => (
                &self.dead_lettered[reason_index(*reason)],
                &self.duration_failed,
            ),
        };
        counter.increment(1);
        if let Some(d) = ran_for {
            hist.record(d.as_secs_f64());
        }
    }
}
