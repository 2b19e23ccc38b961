//! The worker's policy for tasks left pending by dead workers: poison triage.
//!
//! Only the holder of the janitor lease reclaims (see [`super::janitor`]).
//! Every `claim_idle / 4`, or at once when the janitor found a consumer whose
//! process is gone, its reader ([`crate::stream::GroupReader`]) runs one
//! reclaim pass between two reads, so the pass draws on the same free slots
//! (a reader blocked in `XREADGROUP` holds every free slot; a separate
//! reclaimer would starve). The pass (`reclaim.lua`) looks at a bounded
//! window of the pending list and decides by delivery count:
//!
//! - delivered `max_deliveries` times already: a poison message that keeps
//!   killing (or stalling) its workers. Claimed and dead-lettered, not run
//!   (see `execute::dispatch`).
//! - delivered once: its worker died once. Claimed in bulk and run.
//! - delivered more than once: it was in flight when workers died more than
//!   once — maybe the culprit, maybe a bystander of the culprit. At most one
//!   such suspect is claimed per pass, and none while the last one claimed
//!   still runs, so a poison message no longer takes its neighbours down
//!   with it and each suspect is judged on its own. The next pass follows
//!   as soon as the suspect is settled.
//!
//! Live workers never lose their tasks this way because the lease loop renews
//! them well inside `claim_idle` (checked by `RuntimeConfig::validate`), and
//! after a Redis freeze claims wait until they had the time to.

use super::Inflight;
use super::janitor::JanitorState;
use crate::stream::ReadPolicy;
use std::sync::atomic::Ordering;

/// See the module docs.
pub(crate) struct Triage<'a> {
    pub(crate) inflight: &'a Inflight,
    pub(crate) max_deliveries: u32,
    pub(crate) janitor: &'a JanitorState,
}

impl ReadPolicy for Triage<'_> {
    fn holds(&self, id: &str) -> bool {
        // Ours and running (a renewal ran late, or our own pending list).
        self.inflight.contains(id)
    }

    fn max_deliveries(&self) -> Option<u32> {
        Some(self.max_deliveries)
    }

    fn reclaims(&self) -> bool {
        self.janitor.leader.load(Ordering::Relaxed)
    }

    fn reclaim_now(&self) -> bool {
        // The suspect we ran last is settled: the next one need not wait
        // for the pass's interval.
        let settled = {
            let mut s = self
                .janitor
                .suspect
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match s.as_deref() {
                Some(id) if !self.inflight.contains(id) => {
                    *s = None;
                    true
                }
                _ => false,
            }
        };
        self.janitor.urgent.swap(false, Ordering::Relaxed) || settled
    }

    fn suspects(&self) -> bool {
        let s = self
            .janitor
            .suspect
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        s.as_deref().is_none_or(|id| !self.inflight.contains(id))
    }

    fn short_block(&self) -> bool {
        !self.janitor.dead().is_empty()
    }

    fn dead_consumers(&self) -> Vec<String> {
        self.janitor.dead()
    }

    fn lease(&self) -> Option<(&str, u64)> {
        Some((&self.janitor.lease_key, self.janitor.max_gap_ms))
    }
}
