//! The orchestrator: durable multi-stage workflows over the agents.
//!
//! - [`definition`]: workflow definitions — a DAG of stages — parsed from YAML
//!   or JSON, validated, planned into parallel levels; the built-in `sdlc`.
//! - [`machine`]: the workflow state machine as a pure function,
//!   `apply(state, event) -> (state, commands)`.
//! - [`store`], [`catalog`]: workflows and definitions in Redis.
//! - [`engine`]: the durable shell — versioned transitions, outbox, dispatch.
//! - [`results`], [`timers`], [`sweep`], [`changes`]: the loops that feed it.
//! - [`admin`]: what operators look at and do (dead letters, streams),
//!   shared by `agentctl` and the API.
//! - [`ctl`]: `agentctl`, the operators' CLI.
//! - [`api`], [`server`], [`config`]: the HTTP API and `orchestrator serve`.

pub mod admin;
pub mod api;
mod batch;
pub mod catalog;
pub mod changes;
pub mod config;
pub mod ctl;
pub mod definition;
pub mod engine;
mod error;
pub mod machine;
pub mod random_dag;
pub mod results;
mod scripts;
pub mod server;
pub mod store;
pub mod sweep;
pub mod timers;

pub use config::ServeConfig;
pub use definition::{Compensation, Definition, Plan, StageDef};
pub use engine::Engine;
pub use error::{DefinitionError, Error};

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
