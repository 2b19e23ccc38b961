//! The sweeper: finds workflows whose orchestrator died between storing a
//! transition and carrying out its commands, and carries them out. Runs at
//! start (the resume after a crash) and then every `interval`, so a replica
//! that never restarts is covered by the others.
//!
//! It reads only the outbox index (`N:wfs:outbox`): the workflows that have
//! commands not carried out yet, scored by when the oldest was decided on
//! the Redis server's clock, and of those only the ones older than the
//! grace, compared with that same clock (`TIME`). A replica whose clock is
//! off sweeps and is swept like any other. Idle, a sweep is one `TIME` and
//! one empty range read, whatever the number of active workflows. The same
//! index names ids whose creation died between indexing and storing: they
//! are pruned from every index once a minute old (Redis clock).

use crate::engine::Engine;
use crate::store::server_time_ms;
use agent_sdk::shutdown::pause;
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Ids read per round trip.
const PAGE: usize = 500;

/// An id indexed this long without a stored workflow is an orphan.
const ORPHAN_AFTER: Duration = Duration::from_secs(60);

/// Settings of the sweeper.
#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    /// Time between sweeps.
    pub interval: Duration,
    /// An outbox older than this is taken over (its orchestrator is
    /// presumed dead; carrying it out twice is harmless anyway).
    pub grace: Duration,
}

/// One pass over the outboxes older than `grace` (Redis clock). Returns how
/// many it carried out.
pub async fn sweep_once(
    engine: &Engine,
    conn: &mut ConnectionManager,
    grace: Duration,
) -> crate::Result<usize> {
    let store = engine.store();
    let now = server_time_ms(conn).await?;
    let cutoff = now.saturating_sub(grace.as_millis() as u64);
    let mut offset = 0;
    let mut resumed = 0;
    loop {
        let page: Vec<String> = redis::cmd("ZRANGE")
            .arg(store.keys().workflows_outbox())
            .arg("-inf")
            .arg(cutoff)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(offset)
            .arg(PAGE)
            .query_async(conn)
            .await?;
        let full = page.len() == PAGE;
        for id in &page {
            // An entry that leaves the index moves the next page's start
            // back by one.
            let left = match engine.resume(conn, id).await {
                Ok(true) => {
                    resumed += 1;
                    tracing::info!(workflow = %id, "carried out commands left by an interrupted transition");
                    true
                }
                Ok(false) => match store.forget_outbox(conn, id, ORPHAN_AFTER).await {
                    Ok(n) => n != 0,
                    Err(e) => {
                        tracing::warn!(workflow = %id, error = %e, "cannot prune the outbox index yet");
                        false
                    }
                },
                Err(e) => {
                    tracing::warn!(workflow = %id, error = %e, "cannot resume workflow yet");
                    false
                }
            };
            if !left {
                offset += 1;
            }
        }
        if !full {
            return Ok(resumed);
        }
    }
}

/// Puts every active workflow that holds an outbox into the outbox index
/// (`NX`: an entry's age is kept). Outboxes left by an orchestrator that
/// predates the index are in no index; once per start, before the first
/// sweep, is the only time the sweeper reads every active workflow.
/// Returns how many it added.
pub async fn index_outboxes(engine: &Engine, conn: &mut ConnectionManager) -> crate::Result<usize> {
    let store = engine.store();
    let now = server_time_ms(conn).await?;
    let mut offset = 0;
    let mut added = 0;
    loop {
        let page = store.active_page(conn, offset, PAGE).await?;
        if page.is_empty() {
            return Ok(added);
        }
        offset += page.len();
        let mut pipe = redis::pipe();
        for (id, _) in &page {
            pipe.cmd("HEXISTS")
                .arg(store.keys().workflow(id)?)
                .arg("outbox");
        }
        let has: Vec<bool> = pipe.query_async(conn).await?;
        let mut pipe = redis::pipe();
        for ((id, _), has) in page.iter().zip(has) {
            if has {
                pipe.cmd("ZADD")
                    .arg(store.keys().workflows_outbox())
                    .arg("NX")
                    .arg(now)
                    .arg(id);
            }
        }
        let n: Vec<i64> = pipe.query_async(conn).await?;
        added += n.iter().filter(|n| **n == 1).count();
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
    match index_outboxes(&engine, &mut conn).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(outboxes = n, "indexed outboxes no index had"),
        Err(e) => tracing::warn!(error = %e, "cannot index outboxes left before the outbox index"),
    }
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
