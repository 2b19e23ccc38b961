//! Fires stage deadlines. They live per agent type in
//! `N:agent:{T}:deadlines` (by the Redis server's clock), armed by the
//! dispatch itself, so they survive orchestrator restarts and fire on
//! whichever replica takes them first. Firing twice is harmless: a deadline
//! of a task the stage no longer waits for changes nothing.

use crate::engine::{Engine, Outcome};
use crate::machine::Event;
use agent_sdk::schemas::{AgentType, TaskId};
use agent_sdk::shutdown::pause;
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How a taken deadline is held: it fires again after this if its taker dies.
pub const TIMER_LEASE: Duration = Duration::from_secs(30);

/// Deadlines taken per agent type per round.
const TIMER_BATCH: usize = 256;

/// Agent types whose due deadlines are taken in one round trip.
const TYPES_PER_ROUND_TRIP: usize = 512;

/// Polls every watched agent type's due deadlines every `tick` until `stop`:
/// one pipelined round trip per tick for all of them (per 512 types), not
/// one per type, so the cost of a tick in round trips does not grow with
/// the number of watched types.
pub async fn run(
    engine: Arc<Engine>,
    mut conn: ConnectionManager,
    tick: Duration,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let mut busy = false;
        let types: Vec<AgentType> = engine
            .watched_types()
            .into_iter()
            .filter_map(|t| AgentType::new(t).ok())
            .collect();
        for chunk in types.chunks(TYPES_PER_ROUND_TRIP) {
            let due = match engine
                .store()
                .claim_due_timers_many(&mut conn, chunk, TIMER_BATCH, TIMER_LEASE)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(types = chunk.len(), error = %e, "cannot read due deadlines; retrying");
                    continue;
                }
            };
            for (agent, due) in chunk.iter().zip(due) {
                busy |= due.len() == TIMER_BATCH;
                for member in &due {
                    fire(&engine, &mut conn, agent, member).await;
                }
            }
        }
        if !busy && pause(&stop, tick).await {
            return;
        }
    }
}

async fn fire(engine: &Engine, conn: &mut ConnectionManager, agent: &AgentType, member: &str) {
    let Some(wf) = TaskId::workflow_of(member) else {
        tracing::warn!(timer = member, "dropping a deadline that names no workflow");
        let _ = engine.store().remove_timer(conn, agent, member).await;
        return;
    };
    let event = Event::TaskTimedOut {
        task_id: member.to_owned(),
    };
    match engine.signal(conn, wf, &event).await {
        Ok(outcome) => {
            let applied = matches!(outcome, Outcome::Applied { .. });
            tracing::info!(timer = member, workflow = wf, applied, "deadline passed");
            if let Err(e) = engine.store().remove_timer(conn, agent, member).await {
                tracing::warn!(timer = member, error = %e, "cannot remove a fired deadline; it fires again (no effect)");
            }
        }
        Err(e) => {
            tracing::warn!(timer = member, error = %e, "cannot fire a deadline yet; it fires again after its lease");
        }
    }
}
