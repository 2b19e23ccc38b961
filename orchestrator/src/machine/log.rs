//! What a transition writes into its workflow's event log, decided from the
//! state before it, the event and the commands: pure, like the machine.

use super::{Command, CompensationState, Event, Workflow};
use agent_sdk::schemas::TaskId;
use serde_json::Value;

/// What the transition script writes into the event log (the version is
/// added by the script).
#[derive(Debug, Clone, PartialEq)]
pub struct NewLogEntry {
    /// The event type (`started`, `task_succeeded`, …).
    pub kind: String,
    /// The stage the event concerned, if one (`name.undo` for a compensation).
    pub stage: Option<String>,
    /// The event, task outputs left out (they are in the state).
    pub event: Value,
    /// Stages dispatched by the transition (`name` or `name.undo`).
    pub dispatched: Vec<String>,
}

impl Event {
    /// The event's `type` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::TaskSucceeded { .. } => "task_succeeded",
            Self::TaskFailed { .. } => "task_failed",
            Self::DispatchFailed { .. } => "dispatch_failed",
            Self::TaskDeadLettered { .. } => "task_dead_lettered",
            Self::TaskTimedOut { .. } => "task_timed_out",
            Self::Approved { .. } => "approved",
            Self::Rejected { .. } => "rejected",
            Self::Replayed { .. } => "replayed",
            Self::Aborted { .. } => "aborted",
            Self::Cancelled { .. } => "cancelled",
        }
    }

    /// The task whose result this event is (its deadline goes with the
    /// result's acknowledgement).
    pub fn settled_task(&self) -> Option<&str> {
        match self {
            Self::TaskSucceeded { task_id, .. }
            | Self::TaskFailed { task_id, .. }
            | Self::TaskDeadLettered { task_id, .. } => Some(task_id.as_str()),
            _ => None,
        }
    }

    /// The stage the event concerns, found in the state before it.
    fn stage_in(&self, wf: &Workflow) -> Option<String> {
        match self {
            Self::TaskSucceeded { task_id, .. }
            | Self::TaskFailed { task_id, .. }
            | Self::DispatchFailed { task_id, .. }
            | Self::TaskDeadLettered { task_id, .. }
            | Self::TaskTimedOut { task_id } => wf
                .stages
                .iter()
                .find(|s| {
                    s.task_id.as_deref() == Some(task_id)
                        || matches!(&s.compensation, Some(CompensationState::Running { task_id: t }) if t == task_id)
                })
                .map(|s| match TaskId::parse(task_id) {
                    Some(t) if t.is_undo() => t.stage_label(),
                    _ => s.name.clone(),
                }),
            Self::Approved { stage } | Self::Rejected { stage, .. } | Self::Replayed { stage } => {
                Some(stage.clone())
            }
            Self::Started | Self::Aborted { .. } | Self::Cancelled { .. } => None,
        }
    }

    /// The event as logged: task outputs are left out (they are in the state).
    fn logged(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.remove("output");
        }
        v
    }
}

/// The log entry of the transition that `event` made from `before`,
/// deciding `commands`.
pub fn log_entry(before: &Workflow, event: &Event, commands: &[Command]) -> NewLogEntry {
    NewLogEntry {
        kind: event.kind().to_owned(),
        stage: event.stage_in(before),
        event: event.logged(),
        dispatched: commands
            .iter()
            .filter_map(|c| match c {
                Command::Dispatch {
                    stage,
                    compensation,
                    ..
                } => Some(if *compensation {
                    format!("{stage}.undo")
                } else {
                    stage.clone()
                }),
                _ => None,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn logged_events_leave_outputs_out() {
        let e = Event::TaskSucceeded {
            task_id: "w:a:1".into(),
            output: json!({"big": "x"}),
        };
        assert_eq!(
            e.logged(),
            json!({"type": "task_succeeded", "task_id": "w:a:1"})
        );
        assert_eq!(e.kind(), "task_succeeded");
        assert_eq!(e.settled_task(), Some("w:a:1"));
        for e in [
            Event::Started,
            Event::Approved { stage: "s".into() },
            Event::Aborted { reason: "r".into() },
        ] {
            assert_eq!(serde_json::to_value(&e).unwrap()["type"], json!(e.kind()));
            assert_eq!(e.settled_task(), None);
        }
    }
}
