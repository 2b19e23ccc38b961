//! The orchestrator: durable multi-stage workflows over the agents.
//!
//! Built so far (see `orchestrator/README.md` for what is not):
//!
//! - [`definition`]: workflow definitions — a DAG of stages — parsed from YAML
//!   or JSON, validated, planned into parallel levels; the built-in `sdlc`.
//! - [`machine`]: the workflow state machine as a pure function,
//!   `apply(state, event) -> (state, commands)`.

pub mod definition;
mod error;
pub mod machine;
pub mod random_dag;

pub use definition::{Compensation, Definition, Plan, StageDef};
pub use error::{DefinitionError, Result};
