//! The lease loop: keeps this worker's running tasks claimed.
//!
//! Every `lease_renew` it runs `renew.lua` over the entries it holds, which
//! resets their idle time (so no live task looks abandoned, however long it
//! runs) and reports entries another worker has taken over since — for
//! example after this process was paused past `claim_idle`. Their handlers
//! are stopped at once; the commit step would discard their results anyway.

use super::{Inflight, Settings};
use crate::connection::Conn;
use crate::scripts;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

const RENEW_BATCH: usize = 1000;

pub(crate) async fn run(
    s: Arc<Settings>,
    inflight: Arc<Inflight>,
    mut conn: Conn,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(s.cfg.lease_renew);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Stop first: a ready timer must not start another round after it.
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ids = inflight.ids();
        let mut chunks = ids.chunks(RENEW_BATCH);
        let mut chunk = chunks.next();
        while let Some(ids) = chunk {
            let mut inv = scripts::RENEW.prepare_invoke();
            inv.key(&s.tasks_key)
                .arg(schemas::WORKERS_GROUP)
                .arg(&*s.consumer);
            for id in ids {
                inv.arg(id);
            }
            let Some(mut c) = conn.get(&stop).await else {
                return;
            };
            match inv.invoke_async::<Vec<String>>(&mut c).await {
                Ok(lost) => {
                    conn.succeeded();
                    for id in lost {
                        // Not pending any more can also mean "just committed";
                        // only running handlers are stopped.
                        if inflight.contains(&id) {
                            tracing::warn!(stream_id = %id, "task was taken over by another worker; stopping its handler");
                            inflight.abandon(&id);
                        }
                    }
                    chunk = chunks.next();
                }
                Err(e) => {
                    // Try the same renewal again as soon as Redis answers
                    // (the wait ends early when any call succeeds), not a
                    // whole period later: after an outage or a freeze the
                    // idle clocks of our entries ran, and the reclaimer
                    // gives live workers one renewal period to reset them.
                    if !conn.failed(&e, &stop).await {
                        return;
                    }
                }
            }
        }
    }
}
