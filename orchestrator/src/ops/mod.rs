//! What operators look at and do, in one place so that `agentctl` and the
//! HTTP API (and so the dashboard) behave the same:
//!
//! - [`dlq`]: dead letters — summaries, selection, replay, purge, filters;
//! - [`streams`]: each agent type's queues, and which agent types exist;
//! - [`counts`]: workflows by status;
//! - [`fleet`]: agent instances per type (live, wedged, gone) and task progress;
//! - [`housekeeping`]: dead consumers pruned, unread results capped, dead
//!   letters measured;
//! - [`memory`]: Redis memory by key family (sampled);
//! - [`stuck`]: why each stage of a workflow that has not ended is where it is.

pub mod counts;
pub mod dlq;
pub mod fleet;
pub mod housekeeping;
pub mod memory;
pub mod streams;
pub mod stuck;
