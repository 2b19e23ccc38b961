//! Wire protocol v1 of the agentic runtime.
//!
//! Everything that crosses Redis is defined here: key names ([`keys`]), the
//! entry field names ([`fields`]), the task / result / dead-letter envelopes
//! ([`envelope`], [`dead_letter`]), the registry record ([`registry`]) and the
//! codecs ([`codec`]). This crate does no I/O, so any process — an agent, the
//! orchestrator, a test, a tool in another language reading `PROTOCOL.md` —
//! agrees on the same bytes.

pub mod codec;
pub mod dead_letter;
pub mod envelope;
mod error;
pub mod fields;
pub mod json_schema;
pub mod keys;
pub mod names;
pub mod registry;

pub use codec::{DecodeLimits, Encoding};
pub use dead_letter::{DeadLetter, DeadLetterReason};
pub use envelope::{ErrorInfo, ErrorKind, ResultEnvelope, TaskEnvelope, TaskStatus};
pub use error::{Error, Result};
pub use keys::Keys;
pub use names::{AgentType, Namespace};
pub use registry::{AgentRecord, AgentStatus};

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
