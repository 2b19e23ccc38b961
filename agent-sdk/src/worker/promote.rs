//! The promoter: moves due retries and delayed tasks into the task stream.
//!
//! Run by the janitor lease's holder only (one per agent type, see
//! [`super::janitor`]); `promote.lua` is atomic anyway, so a second promoter
//! during a takeover never moves one member twice.

use super::Settings;
use crate::scripts;
use redis::aio::MultiplexedConnection;
use std::time::Duration;

const PROMOTE_BATCH: usize = 1000;

/// One promotion; how long until the next one is worth making.
pub(crate) async fn once(
    s: &Settings,
    c: &mut MultiplexedConnection,
) -> redis::RedisResult<Duration> {
    let (moved, malformed, next_in_ms): (u64, u64, i64) = scripts::PROMOTE
        .key(&s.delayed_key)
        .key(&s.tasks_key)
        .key(&s.dlq_key)
        .arg(PROMOTE_BATCH)
        .arg(s.agent_type.as_str())
        .arg(&*s.consumer)
        .invoke_async(c)
        .await?;
    if malformed > 0 {
        tracing::warn!(
            count = malformed,
            "dead-lettered unparseable members of the delayed set"
        );
    }
    Ok(if moved as usize >= PROMOTE_BATCH {
        Duration::ZERO // more are due right now
    } else if next_in_ms >= 0 {
        s.cfg
            .promote_interval
            .min(Duration::from_millis(next_in_ms as u64))
    } else {
        s.cfg.promote_interval
    })
}
