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

use crate::definition::{Definition, StageDef};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// Where a workflow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Completed, failed or cancelled: no event changes it any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// Where a stage stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// When it was last dispatched (ms, orchestrator clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Created (ms, orchestrator clock).
    pub created_at_ms: u64,
    /// Last transition (ms, orchestrator clock).
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

/// Applies `event` to `wf`. `None` when the event changes nothing (a
/// duplicate or stale result, an approval of a stage that is not waiting, any
/// event after the end): the shell then stores nothing and dispatches nothing.
pub fn apply(
    wf: &Workflow,
    def: &Definition,
    event: &Event,
    now_ms: u64,
) -> Option<(Workflow, Vec<Command>)> {
    if wf.status.is_terminal() || def.stages.len() != wf.stages.len() {
        return None;
    }
    let mut next = wf.clone();
    let mut cmds = Vec::new();
    let changed = step(&mut next, def, event, now_ms, &mut cmds);
    if !changed {
        return None;
    }
    advance(&mut next, def, now_ms, &mut cmds);
    next.status = derive_status(&next);
    next.updated_at_ms = now_ms;
    Some((next, cmds))
}

fn stage_index(wf: &Workflow, name: &str) -> Option<usize> {
    wf.stages.iter().position(|s| s.name == name)
}

/// Finds what `task_id` answers: a stage waiting for it (`false`) or a
/// running compensation (`true`). A dead-lettered stage still waits for its
/// task: an operator may replay the dead letter from anywhere (the DLQ API,
/// `agentctl`), and its result then moves the workflow on.
fn find_task(wf: &Workflow, task_id: &str) -> Option<(usize, bool)> {
    wf.stages.iter().enumerate().find_map(|(i, s)| {
        let waiting = matches!(s.status, StageStatus::Running | StageStatus::DeadLettered);
        if waiting && s.task_id.as_deref() == Some(task_id) {
            Some((i, false))
        } else if matches!(&s.compensation, Some(CompensationState::Running { task_id: t }) if t == task_id) {
            Some((i, true))
        } else {
            None
        }
    })
}

fn end(wf: &mut Workflow, ending: Ending) {
    if wf.ending.is_none() {
        wf.ending = Some(ending);
    }
}

/// Records the event's direct effect. Returns whether anything changed.
fn step(
    wf: &mut Workflow,
    def: &Definition,
    event: &Event,
    now_ms: u64,
    cmds: &mut Vec<Command>,
) -> bool {
    match event {
        Event::Started => {
            if wf.status != WorkflowStatus::Pending {
                return false;
            }
            wf.status = WorkflowStatus::Running;
            true
        }
        Event::TaskSucceeded { task_id, output } => match find_task(wf, task_id) {
            Some((i, false)) => {
                cmds.push(Command::CancelTimer {
                    task_id: task_id.clone(),
                });
                wf.completions += 1;
                let s = &mut wf.stages[i];
                s.status = StageStatus::Completed;
                s.output = Some(output.clone());
                // A dead-lettered stage replayed from the DLQ completes
                // here directly: its old error is no longer its state.
                s.error = None;
                s.finished_at_ms = Some(now_ms);
                s.completed_seq = Some(wf.completions);
                true
            }
            Some((i, true)) => {
                cmds.push(Command::CancelTimer {
                    task_id: task_id.clone(),
                });
                wf.stages[i].compensation = Some(CompensationState::Done);
                true
            }
            None => false,
        },
        Event::TaskFailed { task_id, error } | Event::TaskDeadLettered { task_id, error } => {
            let dead = matches!(event, Event::TaskDeadLettered { .. });
            match find_task(wf, task_id) {
                Some((i, false)) => {
                    cmds.push(Command::CancelTimer {
                        task_id: task_id.clone(),
                    });
                    let s = &mut wf.stages[i];
                    s.error = Some(error.clone());
                    s.finished_at_ms = Some(now_ms);
                    if dead {
                        // Blocked until an operator replays it or aborts.
                        s.status = StageStatus::DeadLettered;
                    } else {
                        s.status = StageStatus::Failed;
                        let reason = format!("stage {} failed: {error}", s.name);
                        end(wf, Ending::Failed { reason });
                    }
                    true
                }
                Some((i, true)) => {
                    cmds.push(Command::CancelTimer {
                        task_id: task_id.clone(),
                    });
                    wf.stages[i].compensation = Some(CompensationState::Failed {
                        error: error.clone(),
                    });
                    true
                }
                None => false,
            }
        }
        Event::TaskTimedOut { task_id }
            if wf.stages.iter().any(|st| {
                st.status == StageStatus::AwaitingApproval
                    && approval_timer_id(&wf.id, &st.name) == *task_id
            }) =>
        {
            let Some(s) = wf
                .stages
                .iter_mut()
                .find(|st| approval_timer_id(&wf.id, &st.name) == *task_id)
            else {
                return false;
            };
            s.status = StageStatus::Failed;
            s.error = Some("approval timed out".into());
            s.finished_at_ms = Some(now_ms);
            let reason = format!("stage {} was not approved in time", s.name);
            end(wf, Ending::Failed { reason });
            true
        }
        Event::TaskTimedOut { task_id } => match find_task(wf, task_id) {
            // A dead-lettered stage has no deadline: it waits for a person.
            Some((i, false)) if wf.stages[i].status == StageStatus::Running => {
                let s = &mut wf.stages[i];
                s.status = StageStatus::Failed;
                s.error = Some("timed out".into());
                s.finished_at_ms = Some(now_ms);
                let reason = format!("stage {} timed out", s.name);
                end(wf, Ending::Failed { reason });
                true
            }
            Some((i, true)) => {
                wf.stages[i].compensation = Some(CompensationState::Failed {
                    error: "timed out".into(),
                });
                true
            }
            _ => false,
        },
        Event::Approved { stage } => match stage_index(wf, stage) {
            Some(i)
                if wf.stages[i].status == StageStatus::AwaitingApproval && wf.ending.is_none() =>
            {
                cancel_approval_timer(wf, def, i, cmds);
                dispatch(wf, def, i, now_ms, cmds);
                true
            }
            _ => false,
        },
        Event::Rejected { stage, reason } => match stage_index(wf, stage) {
            Some(i) if wf.stages[i].status == StageStatus::AwaitingApproval => {
                cancel_approval_timer(wf, def, i, cmds);
                let s = &mut wf.stages[i];
                s.status = StageStatus::Failed;
                s.error = Some(format!("approval rejected: {reason}"));
                s.finished_at_ms = Some(now_ms);
                let reason = format!("stage {} was rejected: {reason}", s.name);
                end(wf, Ending::Failed { reason });
                true
            }
            _ => false,
        },
        Event::Replayed { stage } => match stage_index(wf, stage) {
            // The dead letter went back to the task stream with the same task
            // id: the stage waits for that task again.
            Some(i) if wf.stages[i].status == StageStatus::DeadLettered && wf.ending.is_none() => {
                let s = &mut wf.stages[i];
                s.status = StageStatus::Running;
                s.error = None;
                s.finished_at_ms = None;
                s.started_at_ms = Some(now_ms);
                if let Some(task_id) = s.task_id.clone() {
                    cmds.push(Command::ArmTimer {
                        task_id,
                        after: stage_timeout(&def.stages[i]),
                    });
                }
                true
            }
            _ => false,
        },
        Event::Aborted { reason } | Event::Cancelled { reason } => {
            if wf.ending.is_some() {
                return false;
            }
            let ending = match event {
                Event::Aborted { .. } => Ending::Failed {
                    reason: format!("aborted: {reason}"),
                },
                _ => Ending::Cancelled {
                    reason: reason.clone(),
                },
            };
            end(wf, ending);
            true
        }
    }
}

/// The durable timer of a stage's approval wait (`<workflow>:<stage>:approval`):
/// a [`Event::TaskTimedOut`] with this id means the wait ran out.
pub fn approval_timer_id(workflow: &str, stage: &str) -> String {
    format!("{workflow}:{stage}:approval")
}

fn cancel_approval_timer(wf: &Workflow, def: &Definition, i: usize, cmds: &mut Vec<Command>) {
    if def.stages[i].approval_timeout.is_some() {
        cmds.push(Command::CancelTimer {
            task_id: approval_timer_id(&wf.id, &wf.stages[i].name),
        });
    }
}

fn stage_timeout(def: &StageDef) -> Duration {
    def.timeout.unwrap_or(DEFAULT_STAGE_TIMEOUT)
}

/// The task input of stage `i`: the workflow input and the outputs of the
/// stages it depends on.
fn stage_input(wf: &Workflow, def: &Definition, i: usize) -> Value {
    let mut deps = Map::new();
    for d in &def.stages[i].depends_on {
        if let Some(s) = wf.stage(d) {
            deps.insert(d.clone(), s.output.clone().unwrap_or(Value::Null));
        }
    }
    json!({ "workflow_id": wf.id, "stage": def.stages[i].name, "input": wf.input, "deps": deps })
}

fn dispatch(wf: &mut Workflow, def: &Definition, i: usize, now_ms: u64, cmds: &mut Vec<Command>) {
    let input = stage_input(wf, def, i);
    let sd = &def.stages[i];
    let s = &mut wf.stages[i];
    s.dispatches += 1;
    let task_id = format!("{}:{}:{}", wf.id, s.name, s.dispatches);
    s.status = StageStatus::Running;
    s.task_id = Some(task_id.clone());
    s.started_at_ms = Some(now_ms);
    let timeout = stage_timeout(sd);
    cmds.push(Command::Dispatch {
        stage: s.name.clone(),
        task_id: task_id.clone(),
        agent: sd.agent.clone(),
        input,
        timeout: Some(timeout),
        max_attempts: sd.max_attempts,
        compensation: false,
    });
    cmds.push(Command::ArmTimer {
        task_id,
        after: timeout,
    });
}

/// Moves the workflow forward after an event: starts stages whose
/// dependencies are met, or, when ending, skips what never started and runs
/// the next compensation.
fn advance(wf: &mut Workflow, def: &Definition, now_ms: u64, cmds: &mut Vec<Command>) {
    if wf.ending.is_none() {
        if wf.status == WorkflowStatus::Pending {
            return;
        }
        for i in 0..wf.stages.len() {
            if wf.stages[i].status != StageStatus::Pending {
                continue;
            }
            let ready = def.stages[i].depends_on.iter().all(|d| {
                wf.stage(d)
                    .is_some_and(|s| s.status == StageStatus::Completed)
            });
            if !ready {
                continue;
            }
            if def.stages[i].approval {
                wf.stages[i].status = StageStatus::AwaitingApproval;
                if let Some(after) = def.stages[i].approval_timeout {
                    cmds.push(Command::ArmTimer {
                        task_id: approval_timer_id(&wf.id, &wf.stages[i].name),
                        after,
                    });
                }
            } else {
                dispatch(wf, def, i, now_ms, cmds);
            }
        }
        return;
    }
    // Ending: nothing new starts.
    for i in 0..wf.stages.len() {
        if wf.stages[i].status == StageStatus::AwaitingApproval {
            cancel_approval_timer(wf, def, i, cmds);
        }
        let s = &mut wf.stages[i];
        if matches!(
            s.status,
            StageStatus::Pending | StageStatus::AwaitingApproval
        ) {
            s.status = StageStatus::Skipped;
        }
    }
    // Running stages finish first: one completing later would need undoing too.
    if wf.stages.iter().any(|s| s.status == StageStatus::Running) {
        return;
    }
    if wf
        .stages
        .iter()
        .any(|s| matches!(s.compensation, Some(CompensationState::Running { .. })))
    {
        return;
    }
    // The next stage to undo: the latest completed one with a compensation
    // that has not been undone yet.
    let next = (0..wf.stages.len())
        .filter(|&i| {
            wf.stages[i].status == StageStatus::Completed
                && wf.stages[i].compensation.is_none()
                && def.stages[i].compensate.is_some()
        })
        .max_by_key(|&i| wf.stages[i].completed_seq.unwrap_or(0));
    if let Some(i) = next {
        let sd = &def.stages[i];
        let Some(comp) = &sd.compensate else { return };
        let mut input = stage_input(wf, def, i);
        if let Value::Object(obj) = &mut input {
            obj.insert(
                "output".into(),
                wf.stages[i].output.clone().unwrap_or(Value::Null),
            );
            if let Value::Object(extra) = &comp.input {
                for (k, v) in extra {
                    obj.insert(k.clone(), v.clone());
                }
            }
        }
        let s = &mut wf.stages[i];
        let task_id = format!("{}:{}:undo", wf.id, s.name);
        s.compensation = Some(CompensationState::Running {
            task_id: task_id.clone(),
        });
        let timeout = stage_timeout(sd);
        cmds.push(Command::Dispatch {
            stage: s.name.clone(),
            task_id: task_id.clone(),
            agent: comp.agent.clone().unwrap_or_else(|| sd.agent.clone()),
            input,
            timeout: Some(timeout),
            max_attempts: sd.max_attempts,
            compensation: true,
        });
        cmds.push(Command::ArmTimer {
            task_id,
            after: timeout,
        });
    }
}

/// The workflow status that follows from its stages and its ending.
fn derive_status(wf: &Workflow) -> WorkflowStatus {
    let any = |st: StageStatus| wf.stages.iter().any(|s| s.status == st);
    if let Some(ending) = &wf.ending {
        let busy = any(StageStatus::Running)
            || wf
                .stages
                .iter()
                .any(|s| matches!(s.compensation, Some(CompensationState::Running { .. })));
        if busy {
            return WorkflowStatus::Compensating;
        }
        return match ending {
            Ending::Failed { .. } => WorkflowStatus::Failed,
            Ending::Cancelled { .. } => WorkflowStatus::Cancelled,
        };
    }
    if wf.status == WorkflowStatus::Pending {
        return WorkflowStatus::Pending;
    }
    if wf.stages.iter().all(|s| s.status == StageStatus::Completed) {
        WorkflowStatus::Completed
    } else if any(StageStatus::DeadLettered) {
        WorkflowStatus::Blocked
    } else if any(StageStatus::Running) {
        WorkflowStatus::Running
    } else {
        WorkflowStatus::AwaitingApproval
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{Compensation, StageDef};
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    /// A definition from `(name, depends_on, approval, compensated)`.
    fn def(stages: &[(&str, &[&str], bool, bool)]) -> Definition {
        Definition {
            name: "test".into(),
            version: 1,
            description: None,
            stages: stages
                .iter()
                .map(|(name, deps, approval, comp)| StageDef {
                    name: (*name).into(),
                    agent: format!("agent-{name}"),
                    depends_on: deps.iter().map(|d| (*d).into()).collect(),
                    timeout: Some(Duration::from_secs(60)),
                    max_attempts: Some(3),
                    compensate: comp.then(|| Compensation {
                        agent: None,
                        input: json!({"action": "rollback"}),
                    }),
                    approval: *approval,
                    approval_timeout: None,
                })
                .collect(),
        }
    }

    fn chain(n: usize, compensated: &[usize]) -> Definition {
        let names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let mut d = def(&[]);
        for i in 0..n {
            d.stages.push(StageDef {
                name: names[i].clone(),
                agent: format!("agent-{i}"),
                depends_on: if i == 0 {
                    vec![]
                } else {
                    vec![names[i - 1].clone()]
                },
                timeout: Some(Duration::from_secs(60)),
                max_attempts: None,
                compensate: compensated.contains(&i).then(|| Compensation {
                    agent: None,
                    input: json!({"action": "rollback"}),
                }),
                approval: false,
                approval_timeout: None,
            });
        }
        d
    }

    /// Drives a workflow: applies events, remembers every dispatched task.
    struct Run {
        def: Definition,
        wf: Workflow,
        now: u64,
        dispatched: Vec<(String, String, bool)>, // (stage, task id, compensation)
        inputs: HashMap<String, Value>,
    }

    impl Run {
        fn new(def: Definition) -> Self {
            let wf = Workflow::new("wf-1", &def, json!({"project": "demo"}), 0);
            Self {
                def,
                wf,
                now: 0,
                dispatched: Vec::new(),
                inputs: HashMap::new(),
            }
        }

        fn apply(&mut self, e: Event) -> bool {
            self.now += 1;
            match apply(&self.wf, &self.def, &e, self.now) {
                Some((wf, cmds)) => {
                    for c in cmds {
                        if let Command::Dispatch {
                            stage,
                            task_id,
                            input,
                            compensation,
                            ..
                        } = c
                        {
                            self.inputs.insert(task_id.clone(), input);
                            self.dispatched.push((stage, task_id, compensation));
                        }
                    }
                    self.wf = wf;
                    true
                }
                None => false,
            }
        }

        fn task_of(&self, stage: &str) -> String {
            self.wf
                .stage(stage)
                .and_then(|s| s.task_id.clone())
                .expect("stage has a task")
        }

        fn succeed(&mut self, stage: &str) -> bool {
            let task_id = self.task_of(stage);
            self.apply(Event::TaskSucceeded {
                task_id,
                output: json!({ "from": stage }),
            })
        }

        fn undo_task(&self, stage: &str) -> String {
            match &self.wf.stage(stage).unwrap().compensation {
                Some(CompensationState::Running { task_id }) => task_id.clone(),
                other => panic!("{stage} is not being compensated: {other:?}"),
            }
        }
    }

    #[test]
    fn a_chain_runs_stage_by_stage_to_completion() {
        let mut r = Run::new(chain(5, &[]));
        assert_eq!(r.wf.status, WorkflowStatus::Pending);
        assert!(r.apply(Event::Started));
        for i in 0..5 {
            assert_eq!(r.wf.status, WorkflowStatus::Running);
            assert_eq!(r.dispatched.len(), i + 1, "one stage at a time");
            assert_eq!(r.wf.progress() as usize, i * 20);
            assert!(r.succeed(&format!("s{i}")));
        }
        assert_eq!(r.wf.status, WorkflowStatus::Completed);
        assert_eq!(r.wf.progress(), 100);
        for s in &r.wf.stages {
            assert_eq!(s.output, Some(json!({ "from": s.name })));
        }
        // A stage's input carries the workflow input and its dependencies' outputs.
        let last = &r.inputs[&r.task_of("s4")];
        assert_eq!(last["input"], json!({"project": "demo"}));
        assert_eq!(last["deps"], json!({"s3": {"from": "s3"}}));
        assert_eq!(last["stage"], "s4");
        // After the end nothing changes.
        assert!(!r.apply(Event::Cancelled {
            reason: "late".into()
        }));
    }

    #[test]
    fn sdlc_completes_and_a_failure_at_e2e_never_deploys() {
        let sdlc = Definition::sdlc();
        sdlc.validate().unwrap();
        let mut r = Run::new(sdlc.clone());
        r.apply(Event::Started);
        for s in ["scaffold", "validation", "e2e", "integration", "deployment"] {
            r.succeed(s);
        }
        assert_eq!(r.wf.status, WorkflowStatus::Completed);

        let mut r = Run::new(sdlc);
        r.apply(Event::Started);
        r.succeed("scaffold");
        r.succeed("validation");
        let e2e = r.task_of("e2e");
        r.apply(Event::TaskFailed {
            task_id: e2e,
            error: "2 tests failed".into(),
        });
        // Only deployment has a compensation, and it never ran: nothing to undo.
        assert_eq!(r.wf.status, WorkflowStatus::Failed);
        assert_eq!(
            r.wf.stage("deployment").unwrap().status,
            StageStatus::Skipped
        );
        assert!(r.dispatched.iter().all(|d| d.0 != "deployment"));
    }

    #[test]
    fn independent_stages_run_in_parallel() {
        let mut r = Run::new(def(&[
            ("a", &[], false, false),
            ("b", &["a"], false, false),
            ("c", &["a"], false, false),
            ("d", &["b", "c"], false, false),
        ]));
        r.apply(Event::Started);
        r.succeed("a");
        let running: Vec<_> =
            r.wf.stages
                .iter()
                .filter(|s| s.status == StageStatus::Running)
                .map(|s| s.name.as_str())
                .collect();
        assert_eq!(running, ["b", "c"], "b and c go out in the same transition");
        r.succeed("c");
        assert_eq!(
            r.wf.stage("d").unwrap().status,
            StageStatus::Pending,
            "d waits for b too"
        );
        r.succeed("b");
        let d_input = r.inputs[&r.task_of("d")].clone();
        assert_eq!(
            d_input["deps"],
            json!({"b": {"from": "b"}, "c": {"from": "c"}})
        );
        r.succeed("d");
        assert_eq!(r.wf.status, WorkflowStatus::Completed);
    }

    #[test]
    fn a_permanent_failure_compensates_in_reverse_and_fails() {
        let mut r = Run::new(chain(5, &[0, 1, 3]));
        r.apply(Event::Started);
        r.succeed("s0");
        r.succeed("s1");
        let t2 = r.task_of("s2");
        assert!(r.apply(Event::TaskFailed {
            task_id: t2,
            error: "tests failed".into()
        }));
        assert_eq!(r.wf.status, WorkflowStatus::Compensating);
        for later in ["s3", "s4"] {
            assert_eq!(
                r.wf.stage(later).unwrap().status,
                StageStatus::Skipped,
                "{later} never runs"
            );
        }
        // s1 is undone first, then s0; one at a time.
        let undo1 = r.undo_task("s1");
        assert!(r.wf.stage("s0").unwrap().compensation.is_none());
        let input = &r.inputs[&undo1];
        assert_eq!(input["action"], "rollback");
        assert_eq!(input["output"], json!({"from": "s1"}));
        assert!(r.apply(Event::TaskSucceeded {
            task_id: undo1,
            output: json!(null)
        }));
        let undo0 = r.undo_task("s0");
        assert!(r.apply(Event::TaskSucceeded {
            task_id: undo0,
            output: json!(null)
        }));
        assert_eq!(r.wf.status, WorkflowStatus::Failed);
        let order: Vec<_> = r
            .dispatched
            .iter()
            .filter(|d| d.2)
            .map(|d| d.0.as_str())
            .collect();
        assert_eq!(order, ["s1", "s0"]);
        assert!(matches!(&r.wf.ending, Some(Ending::Failed { reason }) if reason.contains("s2")));
    }

    #[test]
    fn a_failure_waits_for_running_branches_before_compensating() {
        let mut r = Run::new(def(&[
            ("a", &[], false, true),
            ("b", &["a"], false, true),
            ("c", &["a"], false, false),
        ]));
        r.apply(Event::Started);
        r.succeed("a");
        let tc = r.task_of("c");
        r.apply(Event::TaskFailed {
            task_id: tc,
            error: "no".into(),
        });
        assert_eq!(r.wf.status, WorkflowStatus::Compensating);
        assert!(
            r.dispatched.iter().all(|d| !d.2),
            "b still runs: nothing is undone yet"
        );
        r.succeed("b");
        // b completed after all, so it is undone first, then a.
        let ub = r.undo_task("b");
        r.apply(Event::TaskSucceeded {
            task_id: ub,
            output: json!(null),
        });
        let ua = r.undo_task("a");
        r.apply(Event::TaskFailed {
            task_id: ua,
            error: "rollback broke".into(),
        });
        assert_eq!(r.wf.status, WorkflowStatus::Failed);
        assert!(matches!(
            r.wf.stage("a").unwrap().compensation,
            Some(CompensationState::Failed { .. })
        ));
    }

    #[test]
    fn a_dead_letter_blocks_until_replayed() {
        let mut r = Run::new(chain(3, &[]));
        r.apply(Event::Started);
        r.succeed("s0");
        let t1 = r.task_of("s1");
        r.apply(Event::TaskDeadLettered {
            task_id: t1.clone(),
            error: "attempts exhausted".into(),
        });
        assert_eq!(r.wf.status, WorkflowStatus::Blocked);
        assert!(
            !r.apply(Event::TaskTimedOut {
                task_id: t1.clone()
            }),
            "a blocked stage waits for a person, not a clock"
        );
        assert!(r.apply(Event::Replayed { stage: "s1".into() }));
        assert_eq!(r.wf.status, WorkflowStatus::Running);
        assert_eq!(
            r.task_of("s1"),
            t1,
            "the replayed dead letter keeps its task id"
        );
        r.succeed("s1");
        r.succeed("s2");
        assert_eq!(r.wf.status, WorkflowStatus::Completed);
    }

    #[test]
    fn a_result_of_a_dead_letter_replayed_elsewhere_resumes_the_workflow() {
        let mut r = Run::new(chain(2, &[]));
        r.apply(Event::Started);
        let t0 = r.task_of("s0");
        r.apply(Event::TaskDeadLettered {
            task_id: t0,
            error: "x".into(),
        });
        assert!(r.succeed("s0"));
        assert_eq!(r.wf.stage("s1").unwrap().status, StageStatus::Running);
    }

    #[test]
    fn aborting_a_blocked_workflow_compensates() {
        let mut r = Run::new(chain(3, &[0]));
        r.apply(Event::Started);
        r.succeed("s0");
        let t1 = r.task_of("s1");
        r.apply(Event::TaskDeadLettered {
            task_id: t1,
            error: "x".into(),
        });
        assert!(r.apply(Event::Aborted {
            reason: "operator".into()
        }));
        let u0 = r.undo_task("s0");
        r.apply(Event::TaskSucceeded {
            task_id: u0,
            output: json!(null),
        });
        assert_eq!(r.wf.status, WorkflowStatus::Failed);
        assert!(!r.apply(Event::Replayed { stage: "s1".into() }));
    }

    #[test]
    fn approvals_gate_a_stage() {
        let d = def(&[
            ("build", &[], false, true),
            ("ship", &["build"], true, false),
        ]);
        let mut r = Run::new(d.clone());
        r.apply(Event::Started);
        assert!(
            !r.apply(Event::Approved {
                stage: "ship".into()
            }),
            "not waiting yet"
        );
        r.succeed("build");
        assert_eq!(r.wf.status, WorkflowStatus::AwaitingApproval);
        assert_eq!(r.dispatched.len(), 1);
        assert!(r.apply(Event::Approved {
            stage: "ship".into()
        }));
        assert!(
            !r.apply(Event::Approved {
                stage: "ship".into()
            }),
            "approving twice changes nothing"
        );
        r.succeed("ship");
        assert_eq!(r.wf.status, WorkflowStatus::Completed);

        let mut r = Run::new(d);
        r.apply(Event::Started);
        r.succeed("build");
        assert!(r.apply(Event::Rejected {
            stage: "ship".into(),
            reason: "not today".into()
        }));
        let u = r.undo_task("build");
        r.apply(Event::TaskSucceeded {
            task_id: u,
            output: json!(null),
        });
        assert_eq!(r.wf.status, WorkflowStatus::Failed);
        assert!(
            r.wf.stage("ship")
                .unwrap()
                .error
                .as_deref()
                .unwrap()
                .contains("not today")
        );
    }

    #[test]
    fn approval_waits_are_durable_timers() {
        let mut d = def(&[
            ("build", &[], false, true),
            ("ship", &["build"], true, false),
        ]);
        d.stages[1].approval_timeout = Some(Duration::from_secs(60));
        let timer = approval_timer_id("wf-1", "ship");
        let arms = |cmds: &[Command]| {
            cmds.iter()
                .any(|c| matches!(c, Command::ArmTimer { task_id, after } if *task_id == timer && after.as_secs() == 60))
        };
        let cancels = |cmds: &[Command]| {
            cmds.iter()
                .any(|c| matches!(c, Command::CancelTimer { task_id } if *task_id == timer))
        };
        let wf = Workflow::new("wf-1", &d, json!({}), 0);
        let (wf, _) = apply(&wf, &d, &Event::Started, 1).unwrap();
        let build = wf.stage("build").unwrap().task_id.clone().unwrap();
        let ok = Event::TaskSucceeded {
            task_id: build,
            output: json!(1),
        };
        let (waiting, cmds) = apply(&wf, &d, &ok, 2).unwrap();
        assert_eq!(waiting.status, WorkflowStatus::AwaitingApproval);
        assert!(arms(&cmds), "{cmds:?}");

        // Approved in time: the timer goes, the stage runs; a late firing changes nothing.
        let (approved, cmds) = apply(
            &waiting,
            &d,
            &Event::Approved {
                stage: "ship".into(),
            },
            3,
        )
        .unwrap();
        assert!(cancels(&cmds), "{cmds:?}");
        assert_eq!(approved.stage("ship").unwrap().status, StageStatus::Running);
        assert!(
            apply(
                &approved,
                &d,
                &Event::TaskTimedOut {
                    task_id: timer.clone()
                },
                4
            )
            .is_none()
        );

        // Not approved in time: the stage fails and the workflow with it.
        let (late, _) = apply(
            &waiting,
            &d,
            &Event::TaskTimedOut {
                task_id: timer.clone(),
            },
            5,
        )
        .unwrap();
        assert_eq!(late.stage("ship").unwrap().status, StageStatus::Failed);
        assert_eq!(
            late.stage("ship").unwrap().error.as_deref(),
            Some("approval timed out")
        );
        assert!(matches!(
            late.status,
            WorkflowStatus::Compensating | WorkflowStatus::Failed
        ));

        // Cancelled while waiting: the timer goes too.
        let (_, cmds) = apply(
            &waiting,
            &d,
            &Event::Cancelled {
                reason: "no".into(),
            },
            6,
        )
        .unwrap();
        assert!(cancels(&cmds), "{cmds:?}");
    }

    #[test]
    fn cancel_waits_for_running_stages_then_compensates() {
        let mut r = Run::new(chain(3, &[0, 1]));
        r.apply(Event::Started);
        r.succeed("s0");
        assert!(r.apply(Event::Cancelled {
            reason: "changed my mind".into()
        }));
        assert_eq!(r.wf.status, WorkflowStatus::Compensating);
        assert!(!r.apply(Event::Cancelled {
            reason: "again".into()
        }));
        r.succeed("s1");
        assert_eq!(r.wf.stage("s2").unwrap().status, StageStatus::Skipped);
        let u1 = r.undo_task("s1");
        r.apply(Event::TaskSucceeded {
            task_id: u1,
            output: json!(null),
        });
        let u0 = r.undo_task("s0");
        r.apply(Event::TaskSucceeded {
            task_id: u0,
            output: json!(null),
        });
        assert_eq!(r.wf.status, WorkflowStatus::Cancelled);
    }

    #[test]
    fn cancelling_before_start_skips_everything() {
        let mut r = Run::new(chain(2, &[0]));
        assert!(r.apply(Event::Cancelled {
            reason: "never mind".into()
        }));
        assert_eq!(r.wf.status, WorkflowStatus::Cancelled);
        assert!(r.wf.stages.iter().all(|s| s.status == StageStatus::Skipped));
        assert!(r.dispatched.is_empty());
    }

    #[test]
    fn duplicate_and_stale_results_change_nothing() {
        let mut r = Run::new(chain(2, &[]));
        r.apply(Event::Started);
        let t0 = r.task_of("s0");
        assert!(r.succeed("s0"));
        let before = r.wf.clone();
        assert!(
            !r.apply(Event::TaskSucceeded {
                task_id: t0.clone(),
                output: json!(1)
            }),
            "duplicate"
        );
        assert!(
            !r.apply(Event::TaskFailed {
                task_id: t0.clone(),
                error: "late".into()
            }),
            "stale"
        );
        assert!(!r.apply(Event::TaskTimedOut { task_id: t0 }), "stale timer");
        assert!(!r.apply(Event::TaskSucceeded {
            task_id: "wf-1:nope:1".into(),
            output: json!(1)
        }));
        assert_eq!(r.wf, before);
    }

    #[test]
    fn a_timeout_fails_the_stage() {
        let mut r = Run::new(chain(2, &[]));
        r.apply(Event::Started);
        let t0 = r.task_of("s0");
        assert!(r.apply(Event::TaskTimedOut {
            task_id: t0.clone()
        }));
        assert_eq!(r.wf.status, WorkflowStatus::Failed);
        assert!(
            !r.apply(Event::TaskSucceeded {
                task_id: t0,
                output: json!(1)
            }),
            "too late"
        );
    }

    // ---- properties over random event sequences ----

    /// A random DAG of up to 6 stages; some need approval, some compensate.
    fn arb_def() -> impl Strategy<Value = Definition> {
        (1usize..=6)
            .prop_flat_map(|n| {
                (
                    Just(n),
                    proptest::collection::vec(proptest::collection::vec(any::<bool>(), n), n),
                    proptest::collection::vec(any::<(bool, bool)>(), n),
                )
            })
            .prop_map(|(n, edges, flags)| {
                let mut d = def(&[]);
                for i in 0..n {
                    d.stages.push(StageDef {
                        name: format!("s{i}"),
                        agent: "a".into(),
                        depends_on: (0..i)
                            .filter(|&j| edges[i][j])
                            .map(|j| format!("s{j}"))
                            .collect(),
                        timeout: None,
                        max_attempts: None,
                        compensate: flags[i].1.then_some(Compensation {
                            agent: None,
                            input: Value::Null,
                        }),
                        approval: flags[i].0 && i % 2 == 1,
                        approval_timeout: None,
                    });
                }
                d
            })
    }

    /// An abstract event: which kind, and a number to pick its target with.
    #[derive(Debug, Clone)]
    enum Pick {
        Start,
        Succeed(usize),
        Fail(usize),
        Dead(usize),
        Timeout(usize),
        Approve(usize),
        Reject(usize),
        Replay(usize),
        Abort,
        Cancel,
    }

    fn arb_pick() -> impl Strategy<Value = Pick> {
        prop_oneof![
            1 => Just(Pick::Start),
            8 => any::<usize>().prop_map(Pick::Succeed),
            1 => any::<usize>().prop_map(Pick::Fail),
            1 => any::<usize>().prop_map(Pick::Dead),
            1 => any::<usize>().prop_map(Pick::Timeout),
            2 => any::<usize>().prop_map(Pick::Approve),
            1 => any::<usize>().prop_map(Pick::Reject),
            2 => any::<usize>().prop_map(Pick::Replay),
            1 => Just(Pick::Abort),
            1 => Just(Pick::Cancel),
        ]
    }

    /// Turns a pick into an event. Results target any task ever dispatched
    /// (so duplicates and stale ones happen), mostly the running ones.
    fn event(r: &Run, p: &Pick) -> Event {
        let tasks: Vec<String> = r.dispatched.iter().map(|d| d.1.clone()).collect();
        let running: Vec<String> =
            r.wf.running_tasks()
                .into_iter()
                .map(str::to_owned)
                .collect();
        let pick_task = |k: usize| -> String {
            if !running.is_empty() && !k.is_multiple_of(4) {
                running[k % running.len()].clone()
            } else if !tasks.is_empty() {
                tasks[k % tasks.len()].clone()
            } else {
                "wf-1:none:1".into()
            }
        };
        let stage = |k: usize| r.wf.stages[k % r.wf.stages.len()].name.clone();
        match p {
            Pick::Start => Event::Started,
            Pick::Succeed(k) => Event::TaskSucceeded {
                task_id: pick_task(*k),
                output: json!(k % 7),
            },
            Pick::Fail(k) => Event::TaskFailed {
                task_id: pick_task(*k),
                error: "e".into(),
            },
            Pick::Dead(k) => Event::TaskDeadLettered {
                task_id: pick_task(*k),
                error: "d".into(),
            },
            Pick::Timeout(k) => Event::TaskTimedOut {
                task_id: pick_task(*k),
            },
            Pick::Approve(k) => Event::Approved { stage: stage(*k) },
            Pick::Reject(k) => Event::Rejected {
                stage: stage(*k),
                reason: "r".into(),
            },
            Pick::Replay(k) => Event::Replayed { stage: stage(*k) },
            Pick::Abort => Event::Aborted { reason: "a".into() },
            Pick::Cancel => Event::Cancelled { reason: "c".into() },
        }
    }

    /// What must hold after every step.
    fn check_invariants(r: &Run) {
        let wf = &r.wf;
        let running = wf.stages.iter().any(|s| s.status == StageStatus::Running)
            || wf
                .stages
                .iter()
                .any(|s| matches!(s.compensation, Some(CompensationState::Running { .. })));
        let waiting = wf.stages.iter().any(|s| {
            matches!(
                s.status,
                StageStatus::AwaitingApproval | StageStatus::DeadLettered
            )
        });
        match wf.status {
            WorkflowStatus::Pending => assert!(r.dispatched.is_empty()),
            WorkflowStatus::Running | WorkflowStatus::Compensating => {
                assert!(running, "{:?} with nothing running: {wf:#?}", wf.status)
            }
            WorkflowStatus::AwaitingApproval => {
                assert!(!running);
                assert!(
                    wf.stages
                        .iter()
                        .any(|s| s.status == StageStatus::AwaitingApproval),
                    "{wf:#?}"
                );
            }
            WorkflowStatus::Blocked => assert!(
                wf.stages
                    .iter()
                    .any(|s| s.status == StageStatus::DeadLettered)
            ),
            WorkflowStatus::Completed => {
                assert!(wf.stages.iter().all(|s| s.status == StageStatus::Completed));
                assert_eq!(wf.progress(), 100);
            }
            WorkflowStatus::Failed | WorkflowStatus::Cancelled => {
                assert!(!running, "ended with work out: {wf:#?}");
                assert!(wf.ending.is_some());
                for (i, st) in wf.stages.iter().enumerate() {
                    if st.status == StageStatus::Completed && r.def.stages[i].compensate.is_some() {
                        assert!(
                            st.compensation.is_some(),
                            "{} was never undone: {wf:#?}",
                            st.name
                        );
                    }
                }
            }
        }
        // Undoing starts only once every running stage has finished: one
        // finishing later would have needed undoing first.
        if wf
            .stages
            .iter()
            .any(|s| matches!(s.compensation, Some(CompensationState::Running { .. })))
        {
            assert!(
                wf.stages.iter().all(|s| s.status != StageStatus::Running),
                "a compensation runs next to a running stage: {wf:#?}"
            );
        }
        // Nothing is left hanging: not ended means something runs or waits.
        if !wf.status.is_terminal() && wf.status != WorkflowStatus::Pending {
            assert!(running || waiting, "stuck: {wf:#?}");
        }
        // Dependencies are honoured.
        for (i, s) in wf.stages.iter().enumerate() {
            if matches!(
                s.status,
                StageStatus::Running | StageStatus::Completed | StageStatus::AwaitingApproval
            ) && s.dispatches > 0
                || s.status == StageStatus::AwaitingApproval
            {
                for d in &r.def.stages[i].depends_on {
                    assert_eq!(
                        wf.stage(d).unwrap().status,
                        StageStatus::Completed,
                        "{} started before {d}",
                        s.name
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn no_event_sequence_breaks_the_rules(d in arb_def(), picks in proptest::collection::vec(arb_pick(), 0..60)) {
            let mut r = Run::new(d);
            let mut completed_once: HashSet<String> = HashSet::new();
            let mut undone_once: HashSet<String> = HashSet::new();
            let mut first_undo: Option<HashSet<String>> = None;
            for p in &picks {
                let before = r.wf.clone();
                let e = event(&r, p);
                let changed = r.apply(e);
                if first_undo.is_none() && r.dispatched.iter().any(|d| d.2) {
                    first_undo = Some(
                        before.stages.iter().filter(|s| s.status == StageStatus::Completed).map(|s| s.name.clone())
                            .chain(r.wf.stages.iter().filter(|s| s.status == StageStatus::Completed).map(|s| s.name.clone()))
                            .collect(),
                    );
                }
                if before.status.is_terminal() {
                    prop_assert!(!changed, "a terminal workflow changed");
                }
                for (b, a) in before.stages.iter().zip(&r.wf.stages) {
                    if b.status != StageStatus::Completed && a.status == StageStatus::Completed {
                        prop_assert!(completed_once.insert(a.name.clone()), "stage {} completed twice", a.name);
                    }
                    if b.compensation != Some(CompensationState::Done) && a.compensation == Some(CompensationState::Done) {
                        prop_assert!(undone_once.insert(a.name.clone()), "stage {} undone twice", a.name);
                    }
                }
                check_invariants(&r);
            }
            // Compensations go out in reverse order of completion, among the
            // stages completed when compensating began. (A dead-lettered
            // stage replayed from outside can still complete later; it is
            // undone then, after the others.)
            let seqs: Vec<u32> = r
                .dispatched
                .iter()
                .filter(|d| d.2 && first_undo.as_ref().is_some_and(|done| done.contains(&d.0)))
                .map(|d| r.wf.stage(&d.0).and_then(|s| s.completed_seq).unwrap_or(0))
                .collect();
            prop_assert!(seqs.windows(2).all(|w| w[0] > w[1]), "compensations out of order: {:?}", seqs);
            let ids: HashSet<_> = r.dispatched.iter().map(|d| &d.1).collect();
            prop_assert_eq!(ids.len(), r.dispatched.len(), "a task id was dispatched twice");
        }

        #[test]
        fn answering_every_task_with_success_completes(d in arb_def()) {
            let mut r = Run::new(d);
            r.apply(Event::Started);
            for _ in 0..100 {
                let running: Vec<String> = r.wf.running_tasks().into_iter().map(str::to_owned).collect();
                let waiting: Vec<String> = r.wf.stages.iter().filter(|s| s.status == StageStatus::AwaitingApproval).map(|s| s.name.clone()).collect();
                if running.is_empty() && waiting.is_empty() {
                    break;
                }
                for t in running {
                    r.apply(Event::TaskSucceeded { task_id: t, output: json!(true) });
                }
                for s in waiting {
                    r.apply(Event::Approved { stage: s });
                }
                check_invariants(&r);
            }
            prop_assert_eq!(r.wf.status, WorkflowStatus::Completed);
            prop_assert_eq!(r.dispatched.len(), r.wf.stages.len(), "each stage dispatched once");
        }
    }
}
