//! The trait an agent implements, its error type and the task context.

use serde::{Serialize, de::DeserializeOwned};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// An agent: turns one typed input into one typed output.
///
/// The runtime decodes the input, calls [`Agent::handle`] under the task's
/// timeout, and turns the result into exactly one disposition: a success is
/// published and acknowledged, a [`AgentError::retryable`] failure is retried
/// with backoff, anything else (or the last attempt) is dead-lettered.
///
/// Delivery is at least once: make side effects idempotent using
/// [`TaskContext::task_id`].
pub trait Agent: Send + Sync + 'static {
    /// The task input, decoded from the envelope's `input`.
    type Input: DeserializeOwned + Send + 'static;
    /// The output, published in the result envelope.
    type Output: Serialize + Send + 'static;

    /// Runs one task. Implement it as `async fn handle(&self, ctx: &TaskContext, input: Self::Input) -> …`.
    fn handle(
        &self,
        ctx: &TaskContext,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, AgentError>> + Send;
}

/// What the handler says went wrong, and so what the runtime does next.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentError {
    pub(crate) kind: AgentErrorKind,
    pub(crate) message: String,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) details: Option<serde_json::Value>,
}

/// The kinds of [`AgentError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AgentErrorKind {
    /// May pass on a later attempt: retried with backoff until attempts run out.
    Retryable,
    /// No attempt will succeed: dead-lettered at once.
    Permanent,
    /// The input is unacceptable: dead-lettered at once.
    InvalidInput,
}

impl AgentError {
    /// A failure worth retrying (a timeout upstream, a busy resource).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(AgentErrorKind::Retryable, message)
    }

    /// A failure no retry will fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(AgentErrorKind::Permanent, message)
    }

    /// The input was decoded but is not acceptable.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(AgentErrorKind::InvalidInput, message)
    }

    fn new(kind: AgentErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
            details: None,
        }
    }

    /// Retry no sooner than `after` (overrides the backoff for this attempt).
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Structured details carried into the result and the dead letter.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> AgentErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AgentError {}

/// What a handler knows about the task it runs.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub(crate) task_id: String,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) agent_type: schemas::AgentType,
    pub(crate) workflow_id: Option<String>,
    pub(crate) stage: Option<String>,
    pub(crate) trace_id: Option<String>,
    pub(crate) deadline: Instant,
    pub(crate) cancel: CancellationToken,
    pub(crate) worker: std::sync::Arc<str>,
    /// Where [`TaskContext::progress`] keeps its reports until the next
    /// heartbeat writes them.
    pub(crate) progress: std::sync::Arc<dyn ProgressSink>,
}

/// Keeps a handler's progress reports (the worker's heartbeat state).
pub(crate) trait ProgressSink: Send + Sync + std::fmt::Debug {
    /// The latest report of `task_id`.
    fn report(&self, task_id: &str, fraction: f32, message: &str);
}

impl TaskContext {
    /// The task id: stable across attempts and redeliveries; key idempotent effects on it.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }
    /// This attempt, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// Attempts allowed in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }
    /// The agent type running the task.
    pub fn agent_type(&self) -> &schemas::AgentType {
        &self.agent_type
    }
    /// The workflow the task belongs to, if any.
    pub fn workflow_id(&self) -> Option<&str> {
        self.workflow_id.as_deref()
    }
    /// The workflow stage, if any.
    pub fn stage(&self) -> Option<&str> {
        self.stage.as_deref()
    }
    /// The trace id, if the producer sent one.
    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_deref()
    }
    /// When the task times out.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
    /// The worker instance running the task.
    pub fn worker(&self) -> &str {
        &self.worker
    }
    /// Fires when the handler should stop: timeout, shutdown past its grace
    /// period, or the task was taken over by another worker. Long handlers
    /// should `select!` on it; the runtime drops the handler's future anyway.
    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Reports how far the task is: `fraction` done (clamped into 0..=1)
    /// and a short message (control characters dropped, cut to
    /// [`schemas::registry::MAX_PROGRESS_MESSAGE`] bytes). Cheap at any
    /// rate: the latest report is kept in memory and written to Redis once
    /// per heartbeat (`N:agent:{T}:progress`), where the orchestrator shows
    /// it on the running stage; it is removed when the task settles. A
    /// report also counts as a sign of life against `wedged`.
    pub fn progress(&self, fraction: f32, message: &str) {
        self.progress.report(&self.task_id, fraction, message);
    }
}
