//! The promoter: moves due retries and delayed tasks into the task stream.
//!
//! Every worker runs one; `promote.lua` is atomic, so several promoters never
//! move one member twice.

use super::Settings;
use crate::connection::Conn;
use crate::scripts;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const PROMOTE_BATCH: usize = 1000;

pub(crate) async fn run(s: Arc<Settings>, mut conn: Conn, stop: CancellationToken) {
    let mut pause = Duration::ZERO;
    loop {
        tokio::select! {
            // Stop first: a ready timer must not start another round after it.
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = s.cfg.promote_interval;
        let Some(mut c) = conn.get(&stop).await else {
            return;
        };
        let r: redis::RedisResult<(u64, u64, i64)> = scripts::PROMOTE
            .key(&s.delayed_key)
            .key(&s.tasks_key)
            .key(&s.dlq_key)
            .arg(PROMOTE_BATCH)
            .arg(s.agent_type.as_str())
            .arg(&*s.consumer)
            .invoke_async(&mut c)
            .await;
        match r {
            Ok((moved, malformed, next_in_ms)) => {
                conn.succeeded();
                if malformed > 0 {
                    tracing::warn!(
                        count = malformed,
                        "dead-lettered unparseable members of the delayed set"
                    );
                }
                if moved as usize >= PROMOTE_BATCH {
                    pause = Duration::ZERO; // more are due right now
                } else if next_in_ms >= 0 {
                    pause = pause.min(Duration::from_millis(next_in_ms as u64));
                }
            }
            Err(e) => {
                if !conn.failed(&e, &stop).await {
                    return;
                }
            }
        }
    }
}
