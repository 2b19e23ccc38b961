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

pub use crate::clock::now_us;
use crate::{Agent, AgentError, TaskContext};
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
}

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultAgent;

impl Agent for FaultAgent {
    type Input = FaultInput;
    type Output = FaultOutput;

    async fn handle(
        &self,
        ctx: &TaskContext,
        input: FaultInput,
    ) -> Result<FaultOutput, AgentError> {
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
        })
    }
}
