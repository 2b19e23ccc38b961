//! The janitor: one instance per agent type runs the promoter and the
//! reclaim scan, under a lease in Redis, so their cost does not grow with
//! the fleet.
//!
//! The lease (`N:agent:{T}:janitor`, `janitor.lua`) is kept by the Redis
//! server's clock: its holder renews it every `--lease-renew / 2` and it
//! lapses `3 × --lease-renew` after the last renewal. Other instances try to
//! take it every one to two lease periods (jittered), so a fleet's attempts
//! cost one call per instance per period at most; an instance's first
//! attempt also takes the
//! lease over at once from a holder whose connection is gone (a crashed
//! process restarted by its supervisor does not wait for the lapse).
//!
//! While it holds the lease, an instance
//! - promotes due delayed tasks (`promote.lua`) every `--promote-interval`,
//!   or sooner when the next one is due sooner;
//! - lets its reader run reclaim passes (see [`super::reclaim`]), which
//!   `reclaim.lua` fences on the lease itself;
//! - looks, every renewal, for consumers that hold entries but whose
//!   reader's connection is gone (`XPENDING` summary, the consumers hash,
//!   `CLIENT LIST ID`): their entries are taken over at once instead of
//!   after `--claim-idle`, so a poison message that crashes its worker is
//!   dead-lettered within seconds per crash.
//!
//! Freezes: when the server's clock ran on for more than a renewal period
//! since the lease's last renewal (Redis was stopped, or every janitor was),
//! idle times say nothing about which workers are alive, so claims wait
//! `3 × --lease-renew`: live workers' lease loops reset their entries first.

use super::Settings;
use super::promote;
use crate::connection::Conn;
use crate::scripts;
use redis::aio::MultiplexedConnection;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The lease's timings, all derived from `--lease-renew`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timings {
    /// How often the holder renews (and looks for dead consumers).
    pub(crate) tick: Duration,
    /// How long a lease lasts after its last renewal; also how often other
    /// instances try to take it.
    pub(crate) ttl: Duration,
    /// The largest gap between two renewals that is not a freeze.
    pub(crate) max_gap: Duration,
    /// How long claims wait after a freeze.
    pub(crate) hold: Duration,
}

impl Timings {
    pub(crate) fn new(lease_renew: Duration) -> Self {
        let tick = lease_renew / 2;
        Self {
            tick,
            ttl: lease_renew * 3,
            max_gap: tick + lease_renew,
            hold: lease_renew * 3,
        }
    }
}

/// What the janitor tells the reader.
#[derive(Debug)]
pub(crate) struct JanitorState {
    /// This instance holds the lease (the reclaim script checks it again).
    pub(crate) leader: AtomicBool,
    /// Dead consumers were found: a reclaim pass is wanted now.
    pub(crate) urgent: AtomicBool,
    /// Consumers holding entries whose connection is gone.
    pub(crate) dead: Mutex<Vec<String>>,
    pub(crate) lease_key: String,
    pub(crate) max_gap_ms: u64,
    /// Ends the reader's wait for new entries early, for a reclaim pass
    /// that cannot wait.
    pub(crate) wake: Arc<Notify>,
    /// The suspect this instance took over last (an entry delivered more
    /// than once, fewer than max_deliveries): no other is taken while it runs.
    pub(crate) suspect: Mutex<Option<String>>,
}

impl JanitorState {
    pub(crate) fn new(s: &Settings) -> Self {
        Self {
            leader: AtomicBool::new(false),
            urgent: AtomicBool::new(false),
            dead: Mutex::new(Vec::new()),
            lease_key: s.keys.janitor(&s.agent_type),
            max_gap_ms: Timings::new(s.cfg.lease_renew).max_gap.as_millis() as u64,
            wake: Arc::default(),
            suspect: Mutex::new(None),
        }
    }

    pub(crate) fn dead(&self) -> Vec<String> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_dead(&self, dead: Vec<String>) {
        let any = !dead.is_empty();
        *self.dead.lock().unwrap_or_else(|e| e.into_inner()) = dead;
        if any {
            self.urgent.store(true, Ordering::Relaxed);
        }
    }
}

/// One lease call's answer.
enum Lease {
    Held,
    Other { holder: String, client: Option<i64> },
}

async fn lease_call(
    s: &Settings,
    t: &Timings,
    state: &JanitorState,
    c: &mut MultiplexedConnection,
    take_from: &str,
) -> redis::RedisResult<Lease> {
    let reply: Vec<redis::Value> = scripts::JANITOR
        .key(&state.lease_key)
        .key(s.keys.consumers(&s.agent_type))
        .arg(&*s.consumer)
        .arg(t.ttl.as_millis() as u64)
        .arg(t.max_gap.as_millis() as u64)
        .arg(t.hold.as_millis() as u64)
        .arg(take_from)
        .invoke_async(c)
        .await?;
    let int =
        |v: Option<&redis::Value>| v.and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok());
    if int(reply.first()) == Some(1) {
        return Ok(Lease::Held);
    }
    let holder = reply
        .get(2)
        .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
        .unwrap_or_default();
    let client = reply.get(3).and_then(|v| {
        redis::from_redis_value::<String>(v.clone())
            .ok()
            .and_then(|s| s.parse().ok())
    });
    Ok(Lease::Other { holder, client })
}

/// The lease's `holder`, `expires` and `tick`.
type LeaseFields = (Option<String>, Option<u64>, Option<u64>);

/// Whether another instance holds the lease and renews it within our lease
/// period, by the Redis server's clock (`TIME` in the same round trip): the
/// test `janitor.lua` makes, without running a script.
async fn held_by_other(
    s: &Settings,
    t: &Timings,
    state: &JanitorState,
    c: &mut MultiplexedConnection,
) -> redis::RedisResult<bool> {
    let ((secs, micros), (holder, expires, tick)): ((u64, u64), LeaseFields) = redis::pipe()
        .cmd("TIME")
        .cmd("HMGET")
        .arg(&state.lease_key)
        .arg("holder")
        .arg("expires")
        .arg("tick")
        .query_async(c)
        .await?;
    let now = secs * 1000 + micros / 1000;
    let ttl = t.ttl.as_millis() as u64;
    Ok(holder.is_some_and(|h| h != *s.consumer)
        && expires.is_some_and(|e| e > now)
        && tick.is_none_or(|k| now.saturating_sub(k) <= ttl))
}

/// The client ids among `ids` that are connected.
async fn connected(
    c: &mut MultiplexedConnection,
    ids: &[i64],
) -> redis::RedisResult<BTreeSet<i64>> {
    if ids.is_empty() {
        return Ok(BTreeSet::new());
    }
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("LIST").arg("ID");
    for id in ids {
        cmd.arg(id);
    }
    let list: String = cmd.query_async(c).await?;
    Ok(list
        .lines()
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .collect())
}

/// Consumers other than us that hold entries but whose recorded reader
/// connection is gone. Consumers never recorded (older workers) are left to
/// `--claim-idle`. Records of dead consumers that hold nothing any more are
/// removed.
async fn find_dead(
    s: &Settings,
    c: &mut MultiplexedConnection,
    known: &[String],
) -> redis::RedisResult<Vec<String>> {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(&s.tasks_key)
        .arg(schemas::WORKERS_GROUP)
        .query_async(c)
        .await?;
    let mut holding: Vec<String> = Vec::new();
    if let redis::Value::Array(v) = summary
        && let Some(redis::Value::Array(consumers)) = v.into_iter().nth(3)
    {
        for pair in consumers {
            if let Ok((name, _)) = redis::from_redis_value::<(String, String)>(pair)
                && name != *s.consumer
            {
                holding.push(name);
            }
        }
    }
    let hash = s.keys.consumers(&s.agent_type);
    let gone: Vec<&String> = known.iter().filter(|k| !holding.contains(k)).collect();
    if !gone.is_empty() {
        let _: i64 = redis::cmd("HDEL")
            .arg(&hash)
            .arg(&gone)
            .query_async(c)
            .await?;
    }
    if holding.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(&hash)
        .arg(&holding)
        .query_async(c)
        .await?;
    let recorded: BTreeMap<&String, i64> = holding
        .iter()
        .zip(&ids)
        .filter_map(|(n, id)| Some((n, id.as_deref()?.parse().ok()?)))
        .collect();
    let ids: Vec<i64> = recorded.values().copied().collect();
    let live = connected(c, &ids).await?;
    Ok(recorded
        .into_iter()
        .filter(|(_, id)| !live.contains(id))
        .map(|(n, _)| n.clone())
        .collect())
}

pub(crate) async fn run(
    s: Arc<Settings>,
    state: Arc<JanitorState>,
    mut conn: Conn,
    stop: CancellationToken,
) {
    run_until_stopped(&s, &state, &mut conn, &stop).await;
    if state.leader.swap(false, Ordering::Relaxed) {
        // Hand the lease on at once: a lease that lapses now is free for
        // the next instance's attempt, not after three renewal periods.
        let release = async {
            let t = Timings {
                ttl: Duration::ZERO,
                ..Timings::new(s.cfg.lease_renew)
            };
            if let Some(mut c) = conn.get(&CancellationToken::new()).await {
                let _ = lease_call(&s, &t, &state, &mut c, "").await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), release).await;
    }
}

async fn run_until_stopped(
    s: &Arc<Settings>,
    state: &Arc<JanitorState>,
    conn: &mut Conn,
    stop: &CancellationToken,
) {
    let (s, state, stop) = (s.clone(), state.clone(), stop.clone());
    let t = Timings::new(s.cfg.lease_renew);
    // The first attempt looks at the holder's connection: a restarted
    // process takes the lease over from its crashed predecessor at once.
    let mut first = true;
    let mut take_from = String::new();
    let mut next_promote = Instant::now();
    loop {
        let Some(mut c) = conn.get(&stop).await else {
            return;
        };
        // A contender looks first with two plain reads (a script call costs
        // Redis ten times more): most of its attempts find the lease held.
        if !first
            && take_from.is_empty()
            && !state.leader.load(Ordering::Relaxed)
            && let Ok(true) = held_by_other(&s, &t, &state, &mut c).await
        {
            conn.succeeded();
            let wait = t.ttl.mul_f64(1.0 + fastrand::f64());
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(on_beat(&s, wait)) => {}
            }
            continue;
        }
        let lease = lease_call(&s, &t, &state, &mut c, &take_from).await;
        take_from.clear();
        let wait = match lease {
            Ok(Lease::Held) => {
                conn.succeeded();
                if !state.leader.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        "holding the janitor lease: promoting and reclaiming for this agent type"
                    );
                }
                match find_dead(&s, &mut c, &state.dead()).await {
                    Ok(dead) => {
                        let any = !dead.is_empty();
                        if any {
                            tracing::info!(consumers = ?dead, "consumers holding entries have lost their connection; taking their entries over");
                        }
                        state.set_dead(dead);
                        if any {
                            // The reader may be waiting for a while: the
                            // pass is due now.
                            state.wake.notify_one();
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot look for dead consumers"),
                }
                // Promote until the next renewal is due.
                let renew_at = Instant::now() + t.tick;
                loop {
                    if Instant::now() >= next_promote {
                        match promote::once(&s, &mut c).await {
                            Ok(pause) => next_promote = Instant::now() + pause,
                            Err(e) => {
                                tracing::warn!(error = %e, "promotion failed; retrying");
                                next_promote = Instant::now()
                                    + s.cfg.promote_interval.max(Duration::from_millis(100));
                            }
                        }
                    }
                    let until = next_promote.min(renew_at);
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep_until(until) => {}
                    }
                    if Instant::now() >= renew_at {
                        break;
                    }
                }
                first = false;
                continue;
            }
            Ok(Lease::Other { holder, client }) => {
                conn.succeeded();
                if state.leader.swap(false, Ordering::Relaxed) {
                    tracing::info!(%holder, "lost the janitor lease");
                }
                if std::mem::take(&mut first)
                    && let Some(id) = client
                    && let Ok(live) = connected(&mut c, &[id]).await
                    && !live.contains(&id)
                {
                    tracing::info!(%holder, "the janitor lease's holder has lost its connection; taking the lease over");
                    take_from = holder;
                    continue;
                }
                // Once or twice a lease period, jittered so that a fleet's
                // attempts spread out: a lapsed lease is taken within a
                // period by a fleet of two, within a fraction of one by a
                // larger fleet, at one call per instance per period or two.
                t.ttl.mul_f64(1.0 + fastrand::f64())
            }
            Err(e) => {
                state.leader.store(false, Ordering::Relaxed);
                if !conn.failed(&e, &stop).await {
                    return;
                }
                continue;
            }
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(on_beat(&s, wait)) => {}
        }
    }
}

/// The first heartbeat of this process after `wait` from now: a contender's
/// attempts leave with the heartbeats of the process's workers, in one
/// write (see [`crate::clock::next_tick`]). The jitter of `wait` still
/// spreads a fleet's processes.
fn on_beat(s: &Settings, wait: Duration) -> Instant {
    crate::clock::tick_after(std::time::Instant::now() + wait, s.cfg.heartbeat)
}

/// Records the connection this instance reads on (its Redis client id: the
/// process's shared connection) in the consumers hash, so the janitor can
/// tell when its process is gone.
pub(crate) async fn register_reader(
    s: &Settings,
    c: &mut MultiplexedConnection,
) -> redis::RedisResult<()> {
    let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(c).await?;
    redis::cmd("HSET")
        .arg(s.keys.consumers(&s.agent_type))
        .arg(&*s.consumer)
        .arg(id)
        .query_async(c)
        .await
}

/// Removes this instance's record at a clean shutdown, unless it still
/// holds entries (left pending past the grace period): then the record
/// stays, and once this process is gone the janitor takes them at once.
pub(crate) async fn leave(s: &Settings, c: &mut MultiplexedConnection) {
    let held: redis::RedisResult<redis::streams::StreamPendingCountReply> = redis::cmd("XPENDING")
        .arg(&s.tasks_key)
        .arg(schemas::WORKERS_GROUP)
        .arg("-")
        .arg("+")
        .arg(1)
        .arg(&*s.consumer)
        .query_async(c)
        .await;
    if held.is_ok_and(|p| p.ids.is_empty()) {
        let _: redis::RedisResult<i64> = redis::cmd("HDEL")
            .arg(s.keys.consumers(&s.agent_type))
            .arg(&*s.consumer)
            .query_async(c)
            .await;
    }
}
