//! Field names of stream entries and registry hashes.
//!
//! Entries carry a few plain fields readable with `redis-cli` plus one encoded
//! `body`. Only `attempt` is authoritative among the plain fields of a task
//! (the runtime rewrites it on retry without re-encoding the body); the others
//! are copies for people reading the stream.

/// Task id (plain copy; the body's `id` is authoritative).
pub const ID: &str = "id";
/// Attempt number, starting at 1. Absent means 1.
pub const ATTEMPT: &str = "attempt";
/// Workflow id, when the task belongs to one.
pub const WORKFLOW: &str = "wf";
/// Workflow stage, when the task belongs to one.
pub const STAGE: &str = "stage";
/// The encoded envelope: MessagePack, or JSON (first byte `{`).
pub const BODY: &str = "body";

/// Result entry: the task id it answers.
pub const TASK_ID: &str = "task_id";
/// Result entry: `succeeded` or `dead_lettered`.
pub const STATUS: &str = "status";

/// Dead letter: why (see [`crate::DeadLetterReason`]).
pub const REASON: &str = "reason";
/// Dead letter: the error message.
pub const ERROR: &str = "error";
/// Dead letter: attempts made.
pub const ATTEMPTS: &str = "attempts";
/// Dead letter: the worker instance that dead-lettered it.
pub const WORKER: &str = "worker";
/// Dead letter: when (ms since the Unix epoch, the worker's clock; for people, not for logic).
pub const FAILED_AT_MS: &str = "failed_at_ms";
/// Dead letter: the entry id the task had in its task stream.
pub const SOURCE_ID: &str = "source_id";
/// Dead letter: the agent type.
pub const AGENT_TYPE: &str = "agent_type";
/// Dead letter: prefix of the original entry's fields, kept byte for byte
/// (`raw.body`, `raw.attempt`, …) so a replay restores exactly what was sent.
pub const RAW_PREFIX: &str = "raw.";
