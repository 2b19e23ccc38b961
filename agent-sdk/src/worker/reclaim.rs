//! The worker's policy for tasks left pending by dead workers: poison triage.
//!
//! Every `claim_idle / 4` the reader ([`crate::stream::GroupReader`]) runs
//! one reclaim pass between two reads, so the pass draws on the same free
//! slots (a reader blocked in `XREADGROUP` holds every free slot; a separate
//! reclaimer would starve). The pass lists abandoned entries with their
//! delivery counts, and [`Triage`] decides:
//!
//! - delivered `max_deliveries` times already: a poison message that keeps
//!   killing (or stalling) its workers. Claimed and dead-lettered, not run
//!   (see `execute::dispatch`).
//! - delivered once: its worker died once. Claimed in bulk and run.
//! - delivered more than once: it was in flight when workers died more than
//!   once — maybe the culprit, maybe a bystander of the culprit. At most one
//!   such suspect is claimed per pass, so a poison message no longer takes
//!   its neighbours down with it and each suspect is judged on its own.
//!
//! Live workers never lose their tasks this way because the lease loop renews
//! them well inside `claim_idle` (checked by `RuntimeConfig::validate`).

use super::Inflight;
use crate::stream::{Abandoned, ReadPolicy};

/// See the module docs.
pub(crate) struct Triage<'a> {
    pub(crate) inflight: &'a Inflight,
    pub(crate) max_deliveries: usize,
}

impl ReadPolicy for Triage<'_> {
    fn holds(&self, id: &str) -> bool {
        // Ours and running (a renewal ran late, or our own pending list).
        self.inflight.contains(id)
    }

    fn choose(&self, abandoned: &[Abandoned], budget: usize) -> Vec<usize> {
        let mut chosen = Vec::new();
        let mut suspect_taken = false;
        for (i, a) in abandoned.iter().enumerate() {
            if chosen.len() == budget {
                break;
            }
            let take = if a.deliveries >= self.max_deliveries || a.deliveries <= 1 {
                true
            } else if !suspect_taken {
                suspect_taken = true;
                true
            } else {
                false
            };
            if take {
                chosen.push(i);
            }
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(id: &str, deliveries: usize) -> Abandoned {
        Abandoned {
            id: id.into(),
            deliveries,
        }
    }

    #[test]
    fn poison_and_first_timers_go_in_bulk_suspects_one_at_a_time() {
        let inflight = Inflight::default();
        let t = Triage {
            inflight: &inflight,
            max_deliveries: 3,
        };
        let list = [a("1", 1), a("2", 2), a("3", 2), a("4", 3), a("5", 1)];
        assert_eq!(t.choose(&list, 10), vec![0, 1, 3, 4]);
        assert_eq!(t.choose(&list, 2), vec![0, 1]);
    }
}
