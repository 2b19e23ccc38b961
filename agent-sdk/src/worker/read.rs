//! The reader: pulls entries through the shared [`GroupReader`], never more
//! than there are free slots, and hands each to its fate (see [`dispatch`]).
//! Between reads the reader takes over abandoned tasks under the worker's
//! [`Triage`] policy, and picks up entries of its own that a lost reply
//! delivered unseen.

use super::Shared;
use super::execute::{Tx, dispatch};
use super::janitor::{self, JanitorState};
use super::reclaim::Triage;
use crate::agent::Agent;
use crate::connection::Conn;
use crate::stream::GroupReader;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub(crate) async fn run<A: Agent>(
    shared: Arc<Shared<A>>,
    tx: Tx,
    mut reader: GroupReader,
    mut conn: Conn,
    janitor: &JanitorState,
    stop: CancellationToken,
) {
    let s = shared.settings.clone();
    let policy = Triage {
        inflight: &shared.inflight,
        max_deliveries: s.cfg.max_deliveries,
        janitor,
    };
    // The connection recorded in the consumers hash (its generation): the
    // first time here; every reconnect records it itself (the connector).
    let mut registered = None;
    loop {
        // Wait for at least one free slot, then take every free one up to
        // the batch size: a read never fetches work we cannot start.
        // Biased: once stop fired, never start another read, even when a
        // slot is free at the same moment.
        let mut permit = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            p = shared.slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let more = shared.slots.available_permits().min(s.cfg.batch_size - 1);
        if more > 0
            && let Ok(p) = shared.slots.clone().try_acquire_many_owned(more as u32)
        {
            permit.merge(p);
        }
        let want = permit.num_permits();
        // Before reading on a new connection, record its client id: while
        // it stays connected, the janitor knows this process is alive.
        let Some(mut rc) = conn.get(&stop).await else {
            return;
        };
        if registered != Some(conn.generation()) {
            match janitor::register_reader(&s, &mut rc).await {
                Ok(()) => registered = Some(conn.generation()),
                // Tried again before the next read; meanwhile our
                // entries are only reclaimed after claim_idle.
                Err(e) => tracing::debug!(error = %e, "cannot record the reader's connection"),
            }
        }
        drop(rc);
        let Some(taken) = reader.next(&mut conn, &stop, want, &policy).await else {
            return;
        };
        // A read that returned, empty or not: this instance is not wedged.
        shared.inflight.activity.read();
        shared.metrics.vanished.increment(taken.vanished as u64);
        let reclaimed = taken
            .entries
            .iter()
            .filter(|d| d.deliveries.is_some())
            .count();
        shared.metrics.reclaimed.increment(reclaimed as u64);
        let max = s.cfg.max_deliveries;
        if let Some(d) = taken
            .entries
            .iter()
            .find(|d| d.deliveries.is_some_and(|n| n >= 3 && n <= max))
        {
            // Taken as a suspect: delivered more than once before this claim.
            *janitor.suspect.lock().unwrap_or_else(|e| e.into_inner()) = Some(d.entry.id.clone());
        }
        for d in taken.entries {
            let Some(one) = permit.split(1) else { break };
            dispatch(&shared, &tx, d.entry, one, d.deliveries);
        }
    }
}
