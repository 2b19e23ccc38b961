//! Fires durable timers: stage deadlines live in `N:wfs:timers` (by the
//! Redis server's clock), so they survive orchestrator restarts and fire on
//! whichever replica takes them first. Firing twice is harmless: a deadline
//! of a task the stage no longer waits for changes nothing.

use crate::engine::Engine;
use crate::machine::Event;
use crate::results::pause;
use crate::store::workflow_of_task;
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How a taken timer is held: it fires again after this if its taker dies.
pub const TIMER_LEASE: Duration = Duration::from_secs(30);

/// Timers taken per round.
const TIMER_BATCH: usize = 256;

/// Polls for due timers every `tick` until `stop`.
pub async fn run(
    engine: Arc<Engine>,
    mut conn: ConnectionManager,
    tick: Duration,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let due = match engine
            .store()
            .claim_due_timers(&mut conn, TIMER_BATCH, TIMER_LEASE)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read due timers; retrying");
                if pause(&stop, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        for member in &due {
            fire(&engine, &mut conn, member).await;
        }
        if due.len() < TIMER_BATCH && pause(&stop, tick).await {
            return;
        }
    }
}

async fn fire(engine: &Engine, conn: &mut ConnectionManager, member: &str) {
    let Some(wf) = workflow_of_task(member) else {
        tracing::warn!(timer = member, "dropping a timer that names no workflow");
        let _ = engine.store().remove_timer(conn, member).await;
        return;
    };
    let event = Event::TaskTimedOut {
        task_id: member.to_owned(),
    };
    match engine.signal(conn, wf, &event).await {
        Ok(outcome) => {
            tracing::info!(
                timer = member,
                workflow = wf,
                applied = matches!(outcome, crate::engine::Outcome::Applied { .. }),
                "deadline passed"
            );
            if let Err(e) = engine.store().remove_timer(conn, member).await {
                tracing::warn!(timer = member, error = %e, "cannot remove a fired timer; it fires again (no effect)");
            }
        }
        Err(e) => {
            tracing::warn!(timer = member, error = %e, "cannot fire timer yet; it fires again after its lease");
        }
    }
}
