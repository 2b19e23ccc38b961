//! The heartbeat: this instance's record in its type's fleet, and what it
//! last did.
//!
//! Each beat is one call of `heartbeat.lua` on the type's slot: the fleet
//! record (registry fields plus last read, last commit, last progress; Redis
//! times), the fleet's sorted sets (the instance counts as gone three beats
//! after its last one, and stays listed as `gone` until the orchestrator
//! prunes it), and the progress handlers reported since the last beat
//! ([`Activity`]): however often a handler calls
//! [`crate::TaskContext::progress`], Redis sees one write per beat. A clean
//! shutdown removes the instance at once.

use super::{Inflight, Settings};
use crate::clock::now_ms;
use crate::connection::{Conn, Connector};
use redis::Script;
use schemas::{AgentRecord, AgentStatus, TaskProgress};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

static HEARTBEAT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/heartbeat.lua")));

/// Ready or draining, shared with the worker.
#[derive(Debug, Clone, Default)]
pub(crate) struct Status {
    draining: Arc<AtomicBool>,
    changed: Arc<tokio::sync::Notify>,
}

impl Status {
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.changed.notify_one();
    }
}

/// A report as one beat writes it: task id, fraction, message, age (ms).
type Written = (String, f32, String, u64);

/// One task's latest progress, waiting for the next beat.
#[derive(Debug)]
struct Report {
    fraction: f32,
    message: String,
    at: Instant,
    /// Changed since the last beat wrote it.
    dirty: bool,
    /// Written to Redis at least once (so its settlement must delete it).
    written: bool,
}

/// What this instance last did, kept in memory by the loops and handlers
/// and written by the heartbeat. Times are this process's monotonic clock
/// (ms since `born`, 0 = never); the heartbeat sends them as ages.
#[derive(Debug)]
pub(crate) struct Activity {
    born: Instant,
    last_read: AtomicU64,
    last_commit: AtomicU64,
    last_progress: AtomicU64,
    progress: Mutex<HashMap<String, Report>>,
    /// Tasks whose written progress must be deleted at the next beat.
    settled: Mutex<Vec<String>>,
    /// The reader and committer loops are running.
    pub(crate) reader_up: AtomicBool,
    pub(crate) committer_up: AtomicBool,
    /// Why Redis is not usable, from the last beat (None: the last beat worked).
    redis_error: Mutex<Option<String>>,
    /// Last successful beat (ms since `born`, 0 = none yet).
    last_beat_ok: AtomicU64,
    /// The heartbeat interval, for the health check's staleness bound.
    beat_every_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            born: Instant::now(),
            last_read: AtomicU64::new(0),
            last_commit: AtomicU64::new(0),
            last_progress: AtomicU64::new(0),
            progress: Mutex::default(),
            settled: Mutex::default(),
            reader_up: AtomicBool::new(false),
            committer_up: AtomicBool::new(false),
            redis_error: Mutex::new(Some("not connected to redis yet".into())),
            last_beat_ok: AtomicU64::new(0),
            beat_every_ms: AtomicU64::new(5000),
        }
    }
}

/// Sets a loop's flag while it lives, clears it when it ends (even by panic).
pub(crate) struct LoopGuard<'a>(&'a AtomicBool);

impl Drop for LoopGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

impl Activity {
    fn tick(&self) -> u64 {
        // +1 so that a tick in the first millisecond is not "never".
        self.born.elapsed().as_millis() as u64 + 1
    }

    fn age(&self, tick: u64) -> i64 {
        if tick == 0 {
            -1
        } else {
            self.tick().saturating_sub(tick) as i64
        }
    }

    /// An XREADGROUP returned (with entries or none).
    pub(crate) fn read(&self) {
        self.last_read.store(self.tick(), Ordering::Relaxed);
    }

    /// A finished task was committed.
    pub(crate) fn committed(&self) {
        self.last_commit.store(self.tick(), Ordering::Relaxed);
    }

    /// Marks a loop as running until the guard drops.
    pub(crate) fn running<'a>(&self, flag: &'a AtomicBool) -> LoopGuard<'a> {
        flag.store(true, Ordering::Relaxed);
        LoopGuard(flag)
    }
}

impl crate::agent::ProgressSink for Activity {
    /// A handler's progress: kept in memory, written at the next beat.
    fn report(&self, task_id: &str, fraction: f32, message: &str) {
        let fraction = TaskProgress::clamp_fraction(fraction);
        let now = Instant::now();
        self.last_progress.store(self.tick(), Ordering::Relaxed);
        let mut map = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(task_id) {
            Some(r) => {
                r.fraction = fraction;
                r.at = now;
                r.dirty = true;
                // Same text (the usual case at high rates): no allocation.
                if r.message != message {
                    r.message = TaskProgress::clean_message(message);
                }
            }
            None => {
                map.insert(
                    task_id.to_owned(),
                    Report {
                        fraction,
                        message: TaskProgress::clean_message(message),
                        at: now,
                        dirty: true,
                        written: false,
                    },
                );
            }
        }
    }
}

impl Activity {
    /// The task's handler is over: its progress goes (deleted at the next
    /// beat if it was written).
    pub(crate) fn settle(&self, task_id: &str) {
        let removed = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(task_id);
        if removed.is_some_and(|r| r.written) {
            self.settled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(task_id.to_owned());
        }
    }

    /// Why this instance is not ready, or None when it is: a loop is down,
    /// or Redis did not take the last heartbeat (or none for three beats).
    pub(crate) fn not_ready(&self) -> Option<String> {
        if !self.reader_up.load(Ordering::Relaxed) {
            return Some("the reader loop is not running".into());
        }
        if !self.committer_up.load(Ordering::Relaxed) {
            return Some("the commit loop is not running".into());
        }
        if let Some(e) = self
            .redis_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Some(format!("redis unreachable: {e}"));
        }
        let last = self.last_beat_ok.load(Ordering::Relaxed);
        let every = self.beat_every_ms.load(Ordering::Relaxed);
        let age = self.age(last);
        if age < 0 || age as u64 > every * 3 {
            return Some(format!("no heartbeat reached redis for {age} ms"));
        }
        None
    }

    /// Why this instance is not live (a loop is down), or None.
    pub(crate) fn not_live(&self) -> Option<String> {
        if !self.reader_up.load(Ordering::Relaxed) {
            return Some("the reader loop is not running".into());
        }
        if !self.committer_up.load(Ordering::Relaxed) {
            return Some("the commit loop is not running".into());
        }
        None
    }

    fn beat_ok(&self) {
        *self.redis_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.last_beat_ok.store(self.tick(), Ordering::Relaxed);
    }

    fn beat_failed(&self, e: &redis::RedisError) {
        *self.redis_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
    }

    /// The reports changed since the last beat (marked written) and the
    /// settled tasks to delete, taken for one beat.
    fn take(&self) -> (Vec<Written>, Vec<String>) {
        let now = Instant::now();
        let mut out = Vec::new();
        for (id, r) in self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
            .filter(|(_, r)| r.dirty)
        {
            r.dirty = false;
            r.written = true;
            let age = now.saturating_duration_since(r.at).as_millis() as u64;
            out.push((id.clone(), r.fraction, r.message.clone(), age));
        }
        let settled = std::mem::take(&mut *self.settled.lock().unwrap_or_else(|e| e.into_inner()));
        (out, settled)
    }

    /// Puts back what a failed beat did not write.
    fn untake(&self, reports: Vec<Written>, settled: Vec<String>) {
        let mut map = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        for (id, ..) in reports {
            if let Some(r) = map.get_mut(&id) {
                r.dirty = true;
            }
        }
        drop(map);
        self.settled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(settled);
    }
}

/// An unchanged record is written again after this many beats anyway, so
/// the last read and commit times it shows are at most this many beats old
/// (the sorted sets that liveness is judged by move at every beat).
const FULL_EVERY: u32 = 6;

pub(crate) async fn run(
    s: Arc<Settings>,
    inflight: Arc<Inflight>,
    status: Status,
    mut conn: Conn,
    stop: CancellationToken,
) {
    let started_at_ms = now_ms();
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let activity = inflight.activity.clone();
    activity
        .beat_every_ms
        .store(s.cfg.heartbeat.as_millis() as u64, Ordering::Relaxed);
    let ttl = s.cfg.heartbeat * 3;
    let fleet = [
        s.keys.fleet(&s.agent_type),
        s.keys.fleet_seen(&s.agent_type),
        s.keys.fleet_expires(&s.agent_type),
        s.keys.fleet_active(&s.agent_type),
        s.keys.progress(&s.agent_type),
    ];
    let mut type_known = false;
    // The record last written and how many beats ago: an unchanged record
    // is not sent again until FULL_EVERY beats have passed (see heartbeat.lua).
    let mut written: Option<(String, u32)> = None;
    // The Redis server's time at the last full beat (the script returns it)
    // and when that was on this process's monotonic clock.
    let mut redis_clock: Option<(u64, std::time::Instant)> = None;
    // The newest activity the last touch wrote (monotonic ticks): an idle
    // instance's does not move between its reads.
    let mut touched_activity = 0u64;
    loop {
        let record = AgentRecord {
            instance_id: s.consumer.to_string(),
            agent_type: s.agent_type.to_string(),
            version: s.version.clone(),
            host: host.clone(),
            pid: std::process::id(),
            started_at_ms,
            // The script writes the Redis time; a constant here keeps
            // unchanged records equal from one beat to the next.
            last_seen_ms: 0,
            status: if status.draining.load(Ordering::Relaxed) {
                AgentStatus::Draining
            } else {
                AgentStatus::Ready
            },
            concurrency: s.cfg.concurrency as u32,
            in_flight: inflight.len() as u32,
            processed: inflight.processed.load(Ordering::Relaxed),
            failed: inflight.failed.load(Ordering::Relaxed),
        };
        let Some(mut c) = conn.get(&stop).await else {
            return;
        };
        let (reports, settled) = activity.take();
        let json = serde_json::to_string(&record).unwrap_or_default();
        let unchanged = written
            .as_ref()
            .is_some_and(|(last, beats)| *last == json && *beats < FULL_EVERY);
        if unchanged
            && reports.is_empty()
            && settled.is_empty()
            && let Some((at_ms, at)) = redis_clock
        {
            // A touch: only the sorted sets move, three plain ZADDs instead of
            // the script (most of an idle fleet's cost). Redis's time now is
            // its reading at the last full beat plus the time elapsed here
            // since, measured on one monotonic clock: no two hosts' clocks
            // are compared, and the next full beat reads it afresh.
            let now = at_ms + at.elapsed().as_millis() as u64;
            let latest = activity
                .last_read
                .load(Ordering::Relaxed)
                .max(activity.last_commit.load(Ordering::Relaxed))
                .max(activity.last_progress.load(Ordering::Relaxed));
            let newest = (latest != touched_activity && latest != 0)
                .then(|| now.saturating_sub(activity.age(latest).max(0) as u64));
            let mut pipe = redis::pipe();
            // XX: a record removed meanwhile (a clean stop, a prune) is not
            // brought back by a touch; CH: 0 changed means it was missing.
            pipe.cmd("ZADD")
                .arg(&fleet[1])
                .arg("XX")
                .arg("CH")
                .arg(now)
                .arg(&*s.consumer);
            pipe.cmd("ZADD")
                .arg(&fleet[2])
                .arg("XX")
                .arg(now + ttl.as_millis() as u64)
                .arg(&*s.consumer)
                .ignore();
            if let Some(n) = newest {
                pipe.cmd("ZADD")
                    .arg(&fleet[3])
                    .arg("XX")
                    .arg("GT")
                    .arg(n)
                    .arg(&*s.consumer)
                    .ignore();
            }
            match pipe.query_async::<(i64,)>(&mut c).await {
                Ok((1,)) => {
                    touched_activity = latest;
                    if let Some((_, beats)) = written.as_mut() {
                        *beats += 1;
                    }
                    activity.beat_ok();
                    conn.succeeded();
                    if !pause(&s, &status, &stop).await {
                        return;
                    }
                }
                Ok(_) => written = None,
                Err(e) => {
                    activity.beat_failed(&e);
                    if !conn.failed(&e, &stop).await {
                        return;
                    }
                }
            }
            continue;
        }
        let mut inv = HEARTBEAT.prepare_invoke();
        for k in &fleet {
            inv.key(k);
        }
        inv.arg(&*s.consumer)
            .arg(if unchanged { "" } else { json.as_str() })
            .arg(ttl.as_millis() as u64)
            .arg(activity.age(activity.last_read.load(Ordering::Relaxed)))
            .arg(activity.age(activity.last_commit.load(Ordering::Relaxed)))
            .arg(activity.age(activity.last_progress.load(Ordering::Relaxed)))
            .arg(reports.len());
        for (id, fraction, message, age) in &reports {
            inv.arg(id).arg(*fraction).arg(message).arg(*age);
        }
        for id in &settled {
            inv.arg(id);
        }
        // One command per beat: the fleet script (EVALSHA; loaded on
        // NOSCRIPT and sent again). The type joins the set of registered
        // types with the first beat only.
        let mut pipe = redis::pipe();
        if !type_known {
            pipe.sadd(s.keys.registry_types(), s.agent_type.as_str())
                .ignore();
        }
        pipe.invoke_script(&inv);
        let mut result = pipe.query_async::<(i64,)>(&mut c).await;
        if result
            .as_ref()
            .is_err_and(|e| e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
        {
            // First beat on this server (or after a SCRIPT FLUSH / restart).
            result = match inv.load_async(&mut c).await {
                Ok(_) => pipe.query_async::<(i64,)>(&mut c).await,
                Err(e) => Err(e),
            };
        }
        match result {
            Ok((-1,)) => {
                // The record is gone (Redis lost it): write it now.
                written = None;
                activity.untake(reports, settled);
                continue;
            }
            Ok((now,)) => {
                type_known = true;
                redis_clock = Some((now as u64, std::time::Instant::now()));
                written = Some(match written.take() {
                    Some((last, beats)) if unchanged => (last, beats + 1),
                    _ => (json, 1),
                });
                activity.beat_ok();
                conn.succeeded();
            }
            Err(e) => {
                activity.beat_failed(&e);
                activity.untake(reports, settled);
                if !conn.failed(&e, &stop).await {
                    return;
                }
                continue;
            }
        }
        if !pause(&s, &status, &stop).await {
            return;
        }
    }
}

/// Waits for the next beat (or a status change); false when stopped. Beats
/// fall on the process's grid ([`crate::clock::next_tick`]): the workers of
/// one process beat together, in one write on their shared connection.
async fn pause(s: &Settings, status: &Status, stop: &CancellationToken) -> bool {
    tokio::select! {
        // Stop first: a ready timer must not start another round after it.
        biased;
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep_until(crate::clock::next_tick(s.cfg.heartbeat)) => true,
        _ = status.changed.notified() => true,
    }
}

/// Removes this instance from the registry, and its consumer from the group
/// when it holds nothing (a consumer with pending entries must stay, or they
/// could never be claimed).
pub(crate) async fn deregister(s: &Settings, connector: &Connector) {
    let Ok(mut c) = connector.connect(Duration::from_secs(2)).await else {
        tracing::warn!("cannot reach redis to deregister; the registry record expires by itself");
        return;
    };
    let t = &s.agent_type;
    let mut pipe = redis::pipe();
    // A clean stop is not a disappearance: the fleet forgets it at once
    // (MULTI: one slot, all or nothing).
    pipe.cmd("MULTI")
        .ignore()
        .hdel(s.keys.fleet(t), &*s.consumer)
        .ignore()
        .zrem(s.keys.fleet_seen(t), &*s.consumer)
        .ignore()
        .zrem(s.keys.fleet_expires(t), &*s.consumer)
        .ignore()
        .zrem(s.keys.fleet_active(t), &*s.consumer)
        .ignore()
        .cmd("EXEC")
        .ignore();
    if let Err(e) = pipe.query_async::<()>(&mut c).await {
        tracing::warn!(error = %e, "cannot deregister; the registry record expires by itself");
    }
    let _ =
        crate::stream::leave_group(&mut c, &s.tasks_key, schemas::WORKERS_GROUP, &s.consumer).await;
}
