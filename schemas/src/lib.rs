//! Wire protocol v1 of the agentic runtime.
//!
//! Everything that crosses Redis is defined here: key names ([`keys`]), the
//! entry field names ([`fields`]), the task / result / dead-letter envelopes
//! ([`envelope`], [`dead_letter`]), the registry record ([`registry`]), the
//! codecs ([`codec`]), the input limits shared by the API and the workers
//! ([`limits`]), and the contracts between the orchestrator and the
//! agents: the stage input ([`stage_input`]) and the task-id grammar
//! ([`task_id`]); plus stream entry ids ([`entry_id`]) and the name rules of
//! a file inside a project tree ([`tree_path`]). This crate does no I/O, so any process — an agent, the
//! orchestrator, a test, a tool in another language reading `PROTOCOL.md` —
//! agrees on the same bytes.

pub mod codec;
pub mod dead_letter;
pub mod entry_id;
pub mod envelope;
mod error;
pub mod fields;
pub mod json_schema;
pub mod keys;
pub mod limits;
pub mod names;
pub mod registry;
pub mod stage_input;
pub mod task_id;
pub mod tree_path;

pub use codec::{DecodeLimits, Encoding};
pub use dead_letter::{DeadLetter, DeadLetterReason};
pub use entry_id::EntryId;
pub use envelope::{ErrorInfo, ErrorKind, ResultEnvelope, TaskEnvelope, TaskStatus};
pub use error::{Error, Result};
pub use keys::Keys;
pub use names::{AgentType, Namespace};
pub use registry::{AgentRecord, AgentStatus, FleetRecord, TaskProgress};
pub use stage_input::{StageInput, TaskInput};
pub use task_id::{TaskId, TaskKind};
pub use tree_path::check_tree_path;

/// The protocol version written into every envelope (`"v": 1`). A reader
/// rejects any other value: a task of an unknown version is dead-lettered,
/// never guessed at.
pub const PROTOCOL_VERSION: u32 = 1;

/// Consumer group of the agent daemons on every `…:tasks` stream.
pub const WORKERS_GROUP: &str = "workers";

/// Consumer group of the orchestrator on every `…:results` stream.
pub const ORCHESTRATOR_GROUP: &str = "orchestrator";

/// Namespace used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "agentic";
