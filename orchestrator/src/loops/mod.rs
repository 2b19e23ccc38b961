//! The loops of an orchestrator process, each on its own connection:
//!
//! | loop | what it does |
//! |---|---|
//! | [`results`] | one for every watched agent type (one reader, one connection): results → workflow events, applied in batches, then acknowledged |
//! | [`timers`] | fires stage deadlines and approval waits (Redis clock) |
//! | [`sweep`] | carries out outboxes left by interrupted transitions; prunes the active index |
//! | [`retention`] | expires ended workflows (age, count, bytes), archiving them first if asked; and the streams' housekeeping |
//! | [`changes`] | fans the change channel out to this process's live views |

pub mod changes;
pub mod results;
pub mod retention;
pub mod sweep;
pub mod timers;
