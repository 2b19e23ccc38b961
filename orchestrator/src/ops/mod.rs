//! What operators look at and do, in one place so that `agentctl` and the
//! HTTP API (and so the dashboard) behave the same:
//!
//! - [`dlq`]: dead letters — summaries, selection, replay, purge, filters;
//! - [`streams`]: each agent type's queues, and which agent types exist;
//! - [`counts`]: workflows by status;
//! - [`fleet`]: agent instances per type (live, wedged, gone) and task progress.

pub mod counts;
pub mod dlq;
pub mod fleet;
pub mod streams;
