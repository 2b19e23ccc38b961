//! The orchestrator library: durable multi-stage workflows over the agents.
//! It holds no HTTP stack: `orchestrator-server` serves it, `agentctl`
//! operates it.
//!
//! - [`definition`]: workflow definitions — a DAG of stages — parsed from YAML
//!   or JSON, validated, planned into parallel levels; the built-in `sdlc`.
//! - [`machine`]: the workflow state machine as a pure function,
//!   `apply(state, event) -> (state, commands)`, and the event log it
//!   decides. No I/O.
//! - [`store`], [`catalog`]: workflows and definitions in Redis.
//! - [`engine`]: the durable shell — one transition pipeline (versioned
//!   store, outbox, dispatch) for one event or a batch.
//! - [`loops`]: what feeds the engine — results, deadlines, the sweeper —
//!   and the change feed.
//! - [`ops`]: what operators look at and do — dead letters, streams,
//!   counts — for `agentctl` and the API alike.

pub mod catalog;
pub mod definition;
pub mod engine;
mod error;
pub mod loops;
pub mod machine;
pub mod ops;
mod scripts;
pub mod store;
#[cfg(feature = "test-util")]
pub mod testing;

pub use definition::{Compensation, Definition, Plan, StageDef};
pub use engine::Engine;
pub use error::{DefinitionError, Error};

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
