//! What operators look at and do, in one place so that `agentctl` and the
//! HTTP API (and so the dashboard) behave the same:
//!
//! - [`dlq`]: dead letters — summaries, selection, replay, purge, filters;
//! - [`streams`]: each agent type's queues, and which agent types exist;
//! - [`counts`]: workflows by status;
//! - [`stuck`]: why each stage of a workflow that has not ended is where it is.

pub mod counts;
pub mod dlq;
pub mod streams;
pub mod stuck;
