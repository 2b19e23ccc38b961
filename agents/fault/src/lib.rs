//! The fault-test agent: its input says how to behave, so tests, benchmarks
//! and operators can drive every path of the runtime from outside.
//!
//! ```json
//! {"sleep_ms": 100, "fail": "retryable", "fail_attempts": 2, "panic": false, "exit": false, "echo": {"any": "value"}}
//! ```
//!
//! - `sleep_ms`: sleep first (cancellable).
//! - `fail`: `"retryable"` or `"permanent"`; with `fail_attempts: n`, only
//!   attempts 1..=n fail.
//! - `panic`: panic in the handler.
//! - `exit`: end the whole process at once (exit code 3), like a crash.
//! - `echo`: returned as is.
//! - `sent_at_us`: microseconds since the Unix epoch at enqueue; the output's
//!   `latency_us` is the time from then to the handler's start (benchmarks).
//!
//! A workflow stage's task (a [`StageInput`](agent_sdk::schemas::StageInput))
//! takes its behaviour from the workflow input's `faults.<stage>`, and
//! succeeds when there is none, so `fault-agent --agent-type <stage>` stands
//! in for any agent of a pipeline:
//!
//! ```json
//! {"faults": {"e2e": {"fail": "permanent"}, "validation": {"sleep_ms": 500}}}
//! ```

#[cfg(feature = "test-util")]
pub mod testing;

pub use agent_sdk::clock::now_us;
use agent_sdk::schemas::stage_input::field;
use agent_sdk::{Agent, AgentError, TaskContext};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How a fault-test task fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Fail with a retryable error.
    Retryable,
    /// Fail with a permanent error.
    Permanent,
}

/// Input of [`FaultAgent`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultInput {
    /// Sleep this long first.
    #[serde(default)]
    pub sleep_ms: u64,
    /// Fail this way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<FailMode>,
    /// Fail only on attempts up to this one (all attempts when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_attempts: Option<u32>,
    /// Panic.
    #[serde(default)]
    pub panic: bool,
    /// Exit the process.
    #[serde(default)]
    pub exit: bool,
    /// Returned in the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<serde_json::Value>,
    /// Enqueue time in µs since the Unix epoch (same host only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_us: Option<u64>,
}

/// What a fault-test task asks for: a [`FaultInput`] directly, or a
/// workflow stage whose workflow input says (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct FaultTask {
    /// The behaviour.
    pub fault: FaultInput,
    /// The workflow stage, for a stage's task.
    pub stage: Option<String>,
}

impl<'de> Deserialize<'de> for FaultTask {
    // By hand, field by field, instead of `schemas::TaskInput`: the
    // benchmark's worker decodes one of these per task, and going through a
    // `serde_json::Value` cost it a third more CPU per task. The stage
    // input's field names come from `schemas::stage_input::field`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FaultTaskVisitor)
    }
}

struct FaultTaskVisitor;

impl<'de> serde::de::Visitor<'de> for FaultTaskVisitor {
    type Value = FaultTask;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a fault-agent input or a workflow stage's task")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FaultTask, A::Error> {
        use serde::de::Error;
        let mut fault = FaultInput::default();
        let (mut workflow, mut stage, mut input) =
            (false, None::<String>, None::<serde_json::Value>);
        let mut unknown = None::<String>;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "sleep_ms" => fault.sleep_ms = map.next_value()?,
                "fail" => fault.fail = map.next_value()?,
                "fail_attempts" => fault.fail_attempts = map.next_value()?,
                "panic" => fault.panic = map.next_value()?,
                "exit" => fault.exit = map.next_value()?,
                "echo" => fault.echo = map.next_value()?,
                "sent_at_us" => fault.sent_at_us = map.next_value()?,
                k if k == field::WORKFLOW_ID => {
                    workflow = true;
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
                k if k == field::STAGE => stage = map.next_value()?,
                k if k == field::INPUT => input = map.next_value()?,
                other => {
                    unknown.get_or_insert_with(|| other.to_owned());
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        if workflow && let Some(stage) = stage {
            // A workflow stage: its behaviour is the workflow input's
            // `faults.<stage>`; success when there is none.
            let spec = input
                .as_ref()
                .and_then(|i| i.get("faults"))
                .and_then(|f| f.get(&stage))
                .cloned()
                .unwrap_or_else(|| serde_json::json!({}));
            let fault = serde_json::from_value(spec)
                .map_err(|e| A::Error::custom(format!("faults.{stage}: {e}")))?;
            return Ok(FaultTask {
                fault,
                stage: Some(stage),
            });
        }
        let stray = [
            (workflow, field::WORKFLOW_ID),
            (stage.is_some(), field::STAGE),
            (input.is_some(), field::INPUT),
        ]
        .into_iter()
        .find_map(|(present, name)| present.then(|| name.to_owned()));
        if let Some(field) = unknown.or(stray) {
            return Err(A::Error::custom(format!(
                "unknown field `{field}` of a fault-agent input"
            )));
        }
        Ok(FaultTask { fault, stage: None })
    }
}

/// Output of [`FaultAgent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultOutput {
    /// The input's `echo`.
    pub echo: Option<serde_json::Value>,
    /// The attempt that succeeded.
    pub attempt: u32,
    /// The worker that ran it.
    pub worker: String,
    /// Enqueue-to-start latency, when `sent_at_us` was given.
    pub latency_us: Option<u64>,
    /// The workflow stage, for a stage's task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultAgent;

impl Agent for FaultAgent {
    type Input = FaultTask;
    type Output = FaultOutput;

    async fn handle(&self, ctx: &TaskContext, task: FaultTask) -> Result<FaultOutput, AgentError> {
        let FaultTask {
            fault: input,
            stage,
        } = task;
        let latency_us = input.sent_at_us.map(|t| now_us().saturating_sub(t));
        if input.exit {
            tracing::warn!(
                task_id = ctx.task_id(),
                "fault agent: exiting the process as asked"
            );
            std::process::exit(3);
        }
        if input.sleep_ms > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(input.sleep_ms)) => {}
                _ = ctx.cancelled().cancelled() => return Err(AgentError::retryable("cancelled")),
            }
        }
        if input.panic {
            panic!("fault agent: panicking as asked");
        }
        if let Some(mode) = input.fail
            && input.fail_attempts.is_none_or(|n| ctx.attempt() <= n)
        {
            let msg = format!("fault agent: failing attempt {} as asked", ctx.attempt());
            return Err(match mode {
                FailMode::Retryable => AgentError::retryable(msg),
                FailMode::Permanent => AgentError::permanent(msg),
            });
        }
        Ok(FaultOutput {
            echo: input.echo,
            attempt: ctx.attempt(),
            worker: ctx.worker().to_owned(),
            latency_us,
            stage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(v: serde_json::Value) -> Result<FaultTask, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn reads_direct_inputs_and_workflow_stages() {
        let t = task(json!({ "fail": "permanent" })).unwrap();
        assert_eq!(t.fault.fail, Some(FailMode::Permanent));
        assert_eq!(t.stage, None);

        let stage = |name: &str| {
            json!({
                "workflow_id": "w1",
                "stage": name,
                "input": { "faults": { "e2e": { "fail": "permanent", "sleep_ms": 5 } } },
                "deps": {}
            })
        };
        let t = task(stage("e2e")).unwrap();
        assert_eq!(t.fault.fail, Some(FailMode::Permanent));
        assert_eq!(t.fault.sleep_ms, 5);
        assert_eq!(t.stage.as_deref(), Some("e2e"));
        // A stage the workflow input says nothing about succeeds.
        let t = task(stage("scaffold")).unwrap();
        assert_eq!(t.fault, FaultInput::default());

        let e = task(json!({ "colour": "red" })).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        let e = task(json!({ "stage": "a" })).unwrap_err().to_string();
        assert!(e.contains("`stage`"), "{e}");
        assert!(task(json!("just a string")).is_err());
        // MessagePack, as the runtime sends it.
        let bytes = rmp_serde::to_vec_named(&FaultInput {
            sleep_ms: 3,
            ..FaultInput::default()
        })
        .unwrap();
        let t: FaultTask = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(t.fault.sleep_ms, 3);
        let bad = json!({ "workflow_id": "w", "stage": "a", "input": { "faults": { "a": { "oops": 1 } } } });
        let e = task(bad).unwrap_err().to_string();
        assert!(e.contains("faults.a") && e.contains("oops"), "{e}");
    }
}
