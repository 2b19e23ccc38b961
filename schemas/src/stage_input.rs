//! The input of a workflow stage's task: the contract between the
//! orchestrator, which builds it, and the agents, which read it.
//!
//! ```json
//! {"workflow_id": "wf-1", "stage": "e2e", "input": {…the workflow input…},
//!  "deps": {"validation": {…that stage's output…}}}
//! ```
//!
//! A compensation task (`<workflow>:<stage>:undo`) also carries the output of
//! the stage it undoes (`output`) and the fields of the definition's
//! `compensate.input` (e.g. `"action": "rollback"`), side by side with the
//! others.
//!
//! An agent that serves both workflows and direct callers declares
//! `type Input = TaskInput<Direct, Workflow>`: a task whose input has both
//! `workflow_id` and `stage` is a stage's; anything else is a direct input.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Field names of a stage input, for readers that walk it by hand (the
/// fault-test agent does, to stay cheap on the benchmark's hot path).
pub mod field {
    /// The workflow id.
    pub const WORKFLOW_ID: &str = "workflow_id";
    /// The stage name.
    pub const STAGE: &str = "stage";
    /// The workflow's input.
    pub const INPUT: &str = "input";
    /// Outputs of the stages depended on, by stage name.
    pub const DEPS: &str = "deps";
    /// A compensation's: the output of the stage it undoes.
    pub const OUTPUT: &str = "output";
}

/// What the orchestrator sends a stage's agent. `I` is the workflow input
/// as the agent reads it (`Value` for any).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageInput<I = Value> {
    /// The workflow.
    pub workflow_id: String,
    /// The stage this task is for.
    pub stage: String,
    /// The workflow's input.
    pub input: I,
    /// Outputs of the stages this one depends on, by stage name.
    #[serde(default)]
    pub deps: BTreeMap<String, Value>,
    /// For a compensation: the output of the stage being undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// For a compensation: the fields of the definition's `compensate.input`.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl<I> StageInput<I> {
    /// A text field of the compensation's extra fields (`action`, …).
    pub fn extra_str(&self, name: &str) -> Option<&str> {
        self.extra.get(name).and_then(Value::as_str)
    }
}

/// A task input that is either a direct input `D` or a workflow stage's
/// input whose workflow input is `W`.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskInput<D, W = D> {
    /// Sent directly (`POST /tasks/{type}`, `agentctl task enqueue`, a client).
    Direct(D),
    /// Sent by the orchestrator for a workflow stage.
    Stage(StageInput<W>),
}

impl<D, W> TaskInput<D, W> {
    /// The stage input, when the task is a stage's.
    pub fn stage(&self) -> Option<&StageInput<W>> {
        match self {
            Self::Stage(s) => Some(s),
            Self::Direct(_) => None,
        }
    }
}

impl<'de, D: DeserializeOwned, W: DeserializeOwned> Deserialize<'de> for TaskInput<D, W> {
    fn deserialize<De: Deserializer<'de>>(d: De) -> Result<Self, De::Error> {
        // Which one it is shows only in the keys, so the value is read once
        // into a tree and then typed. Reference agents read one input per
        // task; the cost is nothing next to their work.
        let v = Value::deserialize(d)?;
        let is_stage = v
            .as_object()
            .is_some_and(|m| m.contains_key(field::WORKFLOW_ID) && m.contains_key(field::STAGE));
        if is_stage {
            serde_json::from_value(v)
                .map(Self::Stage)
                .map_err(|e| De::Error::custom(format!("stage input: {e}")))
        } else {
            serde_json::from_value(v)
                .map(Self::Direct)
                .map_err(De::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Direct {
        n: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Wf {
        n: u32,
    }

    #[test]
    fn a_stage_input_round_trips_with_its_compensation_fields() {
        let v = json!({
            "workflow_id": "w", "stage": "deploy", "input": {"n": 1},
            "deps": {"build": {"artifact": "x"}},
            "output": {"release": "r1"}, "action": "rollback"
        });
        let s: StageInput = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(s.extra_str("action"), Some("rollback"));
        assert_eq!(s.output, Some(json!({"release": "r1"})));
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
        let plain: StageInput = serde_json::from_value(json!({
            "workflow_id": "w", "stage": "a", "input": null, "deps": {}
        }))
        .unwrap();
        assert!(plain.extra.is_empty() && plain.output.is_none());
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            json!({"workflow_id": "w", "stage": "a", "input": null, "deps": {}})
        );
    }

    #[test]
    fn a_task_input_tells_stages_from_direct_inputs() {
        let t: TaskInput<Direct, Wf> = serde_json::from_value(json!({"n": 2})).unwrap();
        assert_eq!(t, TaskInput::Direct(Direct { n: 2 }));
        let t: TaskInput<Direct, Wf> = serde_json::from_value(json!({
            "workflow_id": "w", "stage": "a", "input": {"n": 3, "other": true}, "deps": {}
        }))
        .unwrap();
        assert_eq!(t.stage().map(|s| &s.input), Some(&Wf { n: 3 }));
        let e = serde_json::from_value::<TaskInput<Direct, Wf>>(json!({"n": 1, "x": 2}))
            .unwrap_err()
            .to_string();
        assert!(e.contains('x'), "{e}");
        // MessagePack, as the runtime sends it.
        let bytes = rmp_serde::to_vec_named(&json!({"workflow_id": "w", "stage": "a",
            "input": {"n": 4}, "deps": {}}))
        .unwrap();
        let t: TaskInput<Direct, Wf> = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(t.stage().map(|s| s.input.n), Some(4));
    }
}
