//! The workflow state machine as a pure function:
//! [`apply`]`(state, definition, event, now) -> Option<(state, commands)>`.
//!
//! No I/O and no clock of its own, so every event sequence can be tested
//! directly. The durable shell around it loads the state, applies one event,
//! stores the new state with a version check, then carries out the commands.
//!
//! Rules:
//!
//! - A stage starts when every stage it depends on has completed; stages
//!   whose dependencies are met run in parallel. A stage marked `approval`
//!   first waits for a person.
//! - Each dispatch has its own task id (`<workflow>:<stage>:<n>`), so a
//!   result can only ever complete the dispatch it answers: duplicate and
//!   stale results change nothing.
//! - A stage that fails permanently (the agent said so, it timed out, or its
//!   approval was rejected), an abort, or a cancel ends the workflow: nothing
//!   new is dispatched, running stages are waited for, then the completed
//!   stages that have a `compensate` are undone one at a time in reverse
//!   order of completion; the workflow ends `failed` (or `cancelled`).
//! - A dead-lettered stage (retries used up, poison, malformed) blocks the
//!   workflow until an operator replays its dead letter (the stage runs on)
//!   or aborts the workflow (it is compensated).
//! - One timeout, one outcome: a stage's `timeout` is the orchestrator's
//!   deadline and the agent's handler timeout. Whichever notices first, the
//!   stage has timed out and the workflow fails: the deadline firing, a
//!   dead letter the agent's timeout made, or any failure or dead letter
//!   that arrives once the stage's deadline has passed (by the Redis
//!   server's clock, `now` here) — also when no orchestrator was running
//!   when the deadline fell due.

use crate::definition::Definition;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// Where a workflow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    /// Created, not started.
    Pending,
    /// At least one stage is running.
    Running,
    /// Nothing runs; a stage waits for approval.
    AwaitingApproval,
    /// A stage is dead-lettered: an operator must replay it or abort.
    Blocked,
    /// Ending: waiting for running stages, then undoing completed ones.
    Compensating,
    /// Every stage completed.
    Completed,
    /// Ended by a failure or an abort (after compensation).
    Failed,
    /// Ended by a cancel (after compensation).
    Cancelled,
}

impl WorkflowStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 8] = [
        Self::Pending,
        Self::Running,
        Self::AwaitingApproval,
        Self::Blocked,
        Self::Compensating,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// Completed, failed or cancelled: no event changes it any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The stored spelling (`awaiting_approval`, …), the same as serde's.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::AwaitingApproval => "awaiting_approval",
            Self::Blocked => "blocked",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses [`WorkflowStatus::as_str`]'s spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// Where a stage stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Waiting for its dependencies.
    Pending,
    /// Dependencies done; waiting for a person to approve.
    AwaitingApproval,
    /// Its task is out; waiting for the result.
    Running,
    /// Succeeded; `output` holds the agent's output.
    Completed,
    /// Failed permanently, timed out, or its approval was rejected.
    Failed,
    /// Its task is in the dead-letter queue.
    DeadLettered,
    /// Never ran: the workflow ended first.
    Skipped,
}

/// Progress of undoing a completed stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CompensationState {
    /// The compensation task is out.
    Running {
        /// Its task id.
        task_id: String,
    },
    /// Undone.
    Done,
    /// The compensation itself failed; `error` says how.
    Failed {
        /// What went wrong.
        error: String,
    },
}

/// One stage of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Stage {
    /// Stage name (as in the definition).
    pub name: String,
    /// Where it stands.
    pub status: StageStatus,
    /// Dispatches made so far (the `n` of the latest task id).
    pub dispatches: u32,
    /// The task the stage waits for, or last waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The agent's output, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Why it failed or was dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was last dispatched (ms, Redis clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// When its task's time is up (ms, Redis clock): its dispatch (or
    /// replay) plus the stage's timeout. A failure or dead letter that
    /// arrives later counts as the timeout (see [`apply`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at_ms: Option<u64>,
    /// When it completed or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// Position in completion order (1-based), for compensating in reverse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_seq: Option<u32>,
    /// Undoing it, when the workflow is being compensated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<CompensationState>,
}

/// Why a workflow is ending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ending {
    /// A stage failed, or an operator aborted: ends `failed`.
    Failed {
        /// What happened.
        reason: String,
    },
    /// An operator cancelled: ends `cancelled`.
    Cancelled {
        /// What they said.
        reason: String,
    },
}

/// A workflow's whole state: what the durable shell stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Workflow {
    /// Workflow id.
    pub id: String,
    /// Definition name.
    pub definition: String,
    /// Definition version it runs (kept even if the definition changes).
    pub definition_version: u32,
    /// The input it was started with.
    pub input: Value,
    /// Where it stands.
    pub status: WorkflowStatus,
    /// Its stages, in definition order.
    pub stages: Vec<Stage>,
    /// Set once the workflow is ending (failure, abort, cancel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ending: Option<Ending>,
    /// Stages completed so far, for `completed_seq`.
    pub completions: u32,
    /// Created (ms, Redis clock).
    pub created_at_ms: u64,
    /// Last transition (ms, Redis clock).
    pub updated_at_ms: u64,
}

/// Something that happened to a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Start it.
    Started,
    /// A task succeeded.
    TaskSucceeded {
        /// The task.
        task_id: String,
        /// Its output.
        output: Value,
    },
    /// A task failed permanently (the agent said no attempt will succeed).
    TaskFailed {
        /// The task.
        task_id: String,
        /// Why.
        error: String,
    },
    /// A task could not be dispatched and never will be (its body is over
    /// the size limit workers accept, its agent type cannot be watched,
    /// Redis refuses the entry for good): the stage fails as if the agent
    /// had failed it permanently, so the workflow never waits for a task
    /// that is not on any stream.
    DispatchFailed {
        /// The task.
        task_id: String,
        /// Why, naming the limit or the refusal.
        error: String,
    },
    /// A task was dead-lettered (retries exhausted, poison, malformed).
    TaskDeadLettered {
        /// The task.
        task_id: String,
        /// Why.
        error: String,
    },
    /// A task's deadline passed without a result.
    TaskTimedOut {
        /// The task.
        task_id: String,
    },
    /// A person approved a stage.
    Approved {
        /// The stage.
        stage: String,
    },
    /// A person rejected a stage.
    Rejected {
        /// The stage.
        stage: String,
        /// Why.
        reason: String,
    },
    /// An operator replayed a dead-lettered stage's task.
    Replayed {
        /// The stage.
        stage: String,
    },
    /// An operator aborts the workflow (it is compensated and fails).
    Aborted {
        /// Why.
        reason: String,
    },
    /// An operator cancels the workflow (it is compensated and cancelled).
    Cancelled {
        /// Why.
        reason: String,
    },
}

/// What the shell must do after a transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Enqueue a task (idempotently: the task id is the idempotency key).
    Dispatch {
        /// The stage it is for.
        stage: String,
        /// Its task id.
        task_id: String,
        /// Agent type.
        agent: String,
        /// Task input.
        input: Value,
        /// Handler timeout.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<Duration>,
        /// Attempts the agent may make.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_attempts: Option<u32>,
        /// True for a compensation task.
        compensation: bool,
    },
    /// Fire [`Event::TaskTimedOut`] for `task_id` after `after`, durably.
    ArmTimer {
        /// The task.
        task_id: String,
        /// From now.
        after: Duration,
    },
    /// The timer of `task_id` is no longer needed.
    CancelTimer {
        /// The task.
        task_id: String,
    },
}

/// Stage deadline when the definition gives none.
pub const DEFAULT_STAGE_TIMEOUT: Duration = Duration::from_secs(3600);

impl Workflow {
    /// A new, pending workflow of `definition` (validated) with `input`.
    pub fn new(id: impl Into<String>, definition: &Definition, input: Value, now_ms: u64) -> Self {
        Self {
            id: id.into(),
            definition: definition.name.clone(),
            definition_version: definition.version,
            input,
            status: WorkflowStatus::Pending,
            stages: definition
                .stages
                .iter()
                .map(|s| Stage {
                    name: s.name.clone(),
                    status: StageStatus::Pending,
                    dispatches: 0,
                    task_id: None,
                    output: None,
                    error: None,
                    started_at_ms: None,
                    deadline_at_ms: None,
                    finished_at_ms: None,
                    completed_seq: None,
                    compensation: None,
                })
                .collect(),
            ending: None,
            completions: 0,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        }
    }

    /// Completed stages in percent (100 only when the workflow completed).
    pub fn progress(&self) -> u8 {
        if self.status == WorkflowStatus::Completed || self.stages.is_empty() {
            return if self.status == WorkflowStatus::Completed {
                100
            } else {
                0
            };
        }
        let done = self
            .stages
            .iter()
            .filter(|s| s.status == StageStatus::Completed)
            .count();
        ((done * 100) / self.stages.len()).min(99) as u8
    }

    /// The stage named `name`.
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// Stages or compensations whose task is out.
    pub fn running_tasks(&self) -> Vec<&str> {
        let mut out = Vec::new();
        for s in &self.stages {
            if s.status == StageStatus::Running
                && let Some(t) = &s.task_id
            {
                out.push(t.as_str());
            }
            if let Some(CompensationState::Running { task_id }) = &s.compensation {
                out.push(task_id.as_str());
            }
        }
        out
    }
}

mod apply;
pub mod log;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use apply::apply;
