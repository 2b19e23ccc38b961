//! The sweeper: finds workflows whose orchestrator died between storing a
//! transition and carrying out its commands, and carries them out. Runs at
//! start (the resume after a crash) and then every `interval`, so a replica
//! that never restarts is covered by the others. Also prunes the active
//! index of workflows that ended, and of ids whose creation never finished.

use crate::engine::Engine;
use crate::machine::WorkflowStatus;
use agent_sdk::clock::now_ms;
use agent_sdk::shutdown::pause;
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Ids read per round trip.
const PAGE: usize = 500;

/// Settings of the sweeper.
#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    /// Time between sweeps.
    pub interval: Duration,
    /// An outbox older than this is taken over (its orchestrator is
    /// presumed dead; carrying it out twice is harmless anyway).
    pub grace: Duration,
}

/// One pass over the active workflows. Returns how many outboxes it carried out.
pub async fn sweep_once(
    engine: &Engine,
    conn: &mut ConnectionManager,
    grace: Duration,
) -> crate::Result<usize> {
    let store = engine.store();
    let mut offset = 0;
    let mut resumed = 0;
    loop {
        let page = store.active_page(conn, offset, PAGE).await?;
        if page.is_empty() {
            return Ok(resumed);
        }
        offset += page.len();
        let mut pipe = redis::pipe();
        for (id, _) in &page {
            pipe.cmd("HMGET")
                .arg(store.keys().workflow(id)?)
                .arg(&["status", "outbox_at_ms"]);
        }
        let rows: Vec<(Option<String>, Option<u64>)> = pipe.query_async(conn).await?;
        let now = now_ms();
        for ((id, created), (status, outbox_at)) in page.iter().zip(rows) {
            match (status, outbox_at) {
                // Indexed but never stored: creation died in between.
                (None, _) if now.saturating_sub(*created) > 60_000 => {
                    store.unindex(conn, id).await?;
                    offset -= 1;
                }
                (Some(_), Some(at)) if now.saturating_sub(at) >= grace.as_millis() as u64 => {
                    match engine.resume(conn, id).await {
                        Ok(true) => {
                            resumed += 1;
                            tracing::info!(workflow = %id, "carried out commands left by an interrupted transition");
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(workflow = %id, error = %e, "cannot resume workflow yet")
                        }
                    }
                }
                (Some(status), None)
                    if WorkflowStatus::parse(&status).is_some_and(|s| s.is_terminal()) =>
                {
                    store.deactivate(conn, id).await?;
                    offset -= 1;
                }
                _ => {}
            }
        }
    }
}

/// Sweeps at once, then every `interval`, until `stop`.
pub async fn run(
    engine: Arc<Engine>,
    mut conn: ConnectionManager,
    s: SweepSettings,
    stop: CancellationToken,
) {
    // At start every outbox is taken over: a previous run of this
    // orchestrator may have died with some in hand.
    let mut grace = Duration::ZERO;
    loop {
        match sweep_once(&engine, &mut conn, grace).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(resumed = n, "sweep resumed interrupted workflows"),
            Err(e) => tracing::warn!(error = %e, "sweep failed; trying again later"),
        }
        grace = s.grace;
        if pause(&stop, s.interval).await {
            return;
        }
    }
}
