//! [`apply`] and the rules behind it (see the module docs of [`super`]).

use super::{
    Command, CompensationState, DEFAULT_STAGE_TIMEOUT, Ending, Event, StageStatus, Workflow,
    WorkflowStatus,
};
use crate::definition::{Definition, StageDef};
use agent_sdk::schemas::{StageInput, TaskId};
use serde_json::Value;
use std::time::Duration;

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
        Event::TaskFailed { task_id, error } | Event::TaskDeadLettered { task_id, error }
            if overdue(wf, task_id, now_ms) =>
        {
            // It came after the stage's deadline: the stage timed out,
            // whether or not the deadline has fired yet (one timeout, one
            // outcome).
            time_out(wf, task_id, Some(error), now_ms)
        }
        Event::TaskFailed { task_id, error }
        | Event::DispatchFailed { task_id, error }
        | Event::TaskDeadLettered { task_id, error } => {
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
        Event::TaskTimedOut { task_id } => time_out(wf, task_id, None, now_ms),
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
                let timeout = stage_timeout(&def.stages[i]);
                s.deadline_at_ms = Some(now_ms.saturating_add(timeout.as_millis() as u64));
                if let Some(task_id) = s.task_id.clone() {
                    cmds.push(Command::ArmTimer {
                        task_id,
                        after: timeout,
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

/// Whether `task_id` is the task of a running stage whose deadline has
/// passed at `now_ms`.
fn overdue(wf: &Workflow, task_id: &str, now_ms: u64) -> bool {
    matches!(find_task(wf, task_id), Some((i, false))
        if wf.stages[i].status == StageStatus::Running
            && wf.stages[i].deadline_at_ms.is_some_and(|d| d <= now_ms))
}

/// `task_id` timed out: its running stage fails (the workflow ends
/// `failed`), or its compensation fails. `error` is what the agent said, if
/// its failure is what showed it. A dead-lettered stage has no deadline: it
/// waits for a person.
fn time_out(wf: &mut Workflow, task_id: &str, error: Option<&String>, now_ms: u64) -> bool {
    match find_task(wf, task_id) {
        Some((i, false)) if wf.stages[i].status == StageStatus::Running => {
            let s = &mut wf.stages[i];
            s.status = StageStatus::Failed;
            s.error = Some(match error {
                Some(e) => format!("timed out ({e})"),
                None => "timed out".into(),
            });
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
    }
}

/// The durable timer of a stage's approval wait: a [`Event::TaskTimedOut`]
/// with this id means the wait ran out.
fn approval_timer_id(workflow: &str, stage: &str) -> String {
    TaskId::approval(workflow, stage).to_string()
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
fn stage_input(wf: &Workflow, def: &Definition, i: usize) -> StageInput {
    StageInput {
        workflow_id: wf.id.clone(),
        stage: def.stages[i].name.clone(),
        input: wf.input.clone(),
        deps: def.stages[i]
            .depends_on
            .iter()
            .filter_map(|d| {
                let s = wf.stage(d)?;
                Some((d.clone(), s.output.clone().unwrap_or(Value::Null)))
            })
            .collect(),
        output: None,
        extra: serde_json::Map::new(),
    }
}

/// A stage input as the task's input (a `StageInput` always serialises).
fn to_value(input: &StageInput) -> Value {
    serde_json::to_value(input).unwrap_or(Value::Null)
}

fn dispatch(wf: &mut Workflow, def: &Definition, i: usize, now_ms: u64, cmds: &mut Vec<Command>) {
    let input = to_value(&stage_input(wf, def, i));
    let sd = &def.stages[i];
    let s = &mut wf.stages[i];
    s.dispatches += 1;
    let task_id = TaskId::run(&wf.id, &s.name, s.dispatches).to_string();
    s.status = StageStatus::Running;
    s.task_id = Some(task_id.clone());
    s.started_at_ms = Some(now_ms);
    let timeout = stage_timeout(sd);
    s.deadline_at_ms = Some(now_ms.saturating_add(timeout.as_millis() as u64));
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
        input.output = Some(wf.stages[i].output.clone().unwrap_or(Value::Null));
        if let Value::Object(extra) = &comp.input {
            input.extra = extra.clone();
        }
        let input = to_value(&input);
        let s = &mut wf.stages[i];
        let task_id = TaskId::undo(&wf.id, &s.name).to_string();
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
