//! Wall-clock timestamps for records people read (`finished_at_ms`,
//! `last_seen_ms`, …). Never used to decide anything: hosts' clocks differ.
//! And the process's grid of periodic work ([`next_tick`]), on the
//! monotonic clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The next instant after now on this process's grid of `period` (multiples
/// of `period` since the process first asked). Periodic calls of the many
/// workers of one process (heartbeats, idle re-reads, lease attempts) fall
/// due together and leave in one write on the shared connection: Redis
/// reads, runs and answers them in one pass of its event loop instead of
/// one each, which is most of what an idle instance costs it. Processes
/// start at different times, so a fleet's calls still spread out.
pub(crate) fn next_tick(period: std::time::Duration) -> tokio::time::Instant {
    tick_after(std::time::Instant::now(), period)
}

/// The first instant after `at` on this process's grid of `period` (see
/// [`next_tick`]).
pub(crate) fn tick_after(
    at: std::time::Instant,
    period: std::time::Duration,
) -> tokio::time::Instant {
    use std::sync::LazyLock;
    static EPOCH: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);
    let epoch = *EPOCH;
    let period = period.as_nanos().max(1);
    let since = at.saturating_duration_since(epoch).as_nanos();
    let next = (since / period + 1) * period;
    let at = epoch + std::time::Duration::from_nanos(u64::try_from(next).unwrap_or(u64::MAX));
    tokio::time::Instant::from_std(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ticks_are_on_one_grid_and_within_a_period() {
        let p = Duration::from_millis(50);
        let a = next_tick(p);
        let now = tokio::time::Instant::now();
        assert!(a > now - Duration::from_millis(1) && a <= now + p);
        std::thread::sleep(Duration::from_millis(7));
        let b = next_tick(p);
        // Same grid point, or the next one if the sleep crossed it.
        let d = b.duration_since(a);
        assert!(d == Duration::ZERO || d == p, "{d:?}");
    }
}
