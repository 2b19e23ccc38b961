//! The one consumer-group reader: everything either side of a stream does
//! to take entries from a group — the worker on `…:tasks`, the
//! orchestrator on `…:results` — so the edge cases are handled once.
//!
//! A [`GroupReader`] makes one step per [`GroupReader::next`] call:
//!
//! 1. creates the group if it is missing (`XGROUP CREATE … 0 MKSTREAM`:
//!    from the start, so entries added before the first reader are work
//!    too; `BUSYGROUP` is success; `NOGROUP` at run time — the stream was
//!    deleted or flushed — means "create it again and go on");
//! 2. every [`reclaim_interval`] of `claim_idle` (or at once when the
//!    caller's [`ReadPolicy`] asks: a consumer known dead), takes over
//!    entries idle that long at other consumers (dead ones) in one call of
//!    `reclaim.lua`: a window of [`RECLAIM_SCAN`] pending entries from a
//!    cursor kept between passes (cost O(window), not O(pending list)),
//!    poison triage by delivery count, and entries whose body is gone
//!    acknowledged (a trimmed or deleted entry would otherwise vanish
//!    unseen). A policy may name a lease the pass must hold (the worker's
//!    janitor lease: one reclaimer per agent type), checked in the script;
//! 3. goes through its own pending list when it may hold entries this
//!    process never saw — at start (a restart under the same name), and
//!    after any failed call (a read whose reply was lost may still have
//!    delivered on the server). Listing with `XPENDING` counts no delivery;
//!    only entries the caller does not hold are claimed;
//! 4. otherwise reads new entries with `XREADGROUP … BLOCK`; or, with a
//!    doorbell ([`GroupReader::with_doorbell`]: the worker's readers), reads
//!    without blocking and, when nothing came, waits for the stream's bell
//!    ([`crate::connection::bell`]), so that readers hold no connection of
//!    their own.
//!
//! Connection failures go through [`Conn`]'s backoff. The reader never
//! acknowledges: what an entry's handling means — a worker's fenced commit,
//! the orchestrator's apply-then-ack — is the caller's.

mod many;

pub use crate::connection::bell::Subscription;
pub use many::ManyReader;

use crate::connection::Conn;
use crate::scripts;
use redis::aio::ConnectionLike;
use redis::streams::StreamPendingCountReply;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Pending entries looked at per reclaim pass: the window `reclaim.lua`
/// scans from its cursor, whatever the pending list's length.
pub const RECLAIM_SCAN: usize = 200;

/// How often a reader looks for abandoned entries: a quarter of the idle
/// time after which they count as abandoned (at least 50 ms), so one is
/// taken over at most `claim_idle × 1.25` after its consumer stopped.
pub fn reclaim_interval(claim_idle: Duration) -> Duration {
    (claim_idle / 4).max(Duration::from_millis(50))
}

/// A consumer name unique per process: `[role-]host-pid-random`, readable in
/// `XINFO CONSUMERS` and valid as a consumer name.
pub fn consumer_id(role: Option<&str>) -> String {
    let host: String = gethostname::gethostname()
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let host = if host.is_empty() {
        "host".to_owned()
    } else {
        host
    };
    let id = format!(
        "{host}-{}-{:06x}",
        std::process::id(),
        fastrand::u32(..0x100_0000)
    );
    match role {
        Some(role) => format!("{role}-{id}"),
        None => id,
    }
}

/// Removes `consumer` from `group` when it holds nothing: a consumer with
/// pending entries must stay, or they could never be claimed (`XGROUP
/// DELCONSUMER` drops them from the pending list). Returns whether it left.
pub async fn leave_group<C: ConnectionLike + Send>(
    c: &mut C,
    stream: &str,
    group: &str,
    consumer: &str,
) -> redis::RedisResult<bool> {
    let pending: StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(1)
        .arg(consumer)
        .query_async(c)
        .await?;
    if !pending.ids.is_empty() {
        return Ok(false);
    }
    let _: i64 = redis::cmd("XGROUP")
        .arg("DELCONSUMER")
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .query_async(c)
        .await?;
    Ok(true)
}

/// A stream entry as read: its id and its fields, byte for byte, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry id.
    pub id: String,
    /// Field names and values.
    pub fields: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// The value of field `name`.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The value of field `name` as text, when it is UTF-8.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.field(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Bytes of every field name and value.
    pub fn size(&self) -> usize {
        self.fields.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// Entries of a stream reply, parsed straight from the reply value: one
/// `[id, [field, value, …]]` pair each, as `XREADGROUP`, `XCLAIM` and
/// `XRANGE` return them. A nil field list (an entry whose body was deleted
/// while it was pending) becomes an entry with no fields.
///
/// redis-rs's typed `StreamId` builds a `HashMap` per entry; on the hot path
/// that was a tenth of the worker's time, and it loses the field order.
pub(crate) fn parse_entries(v: redis::Value) -> Vec<Entry> {
    let redis::Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let redis::Value::Array(pair) = item else {
                return None;
            };
            let mut pair = pair.into_iter();
            let id = String::from_utf8(value_bytes(pair.next()?)).ok()?;
            let fields = match pair.next() {
                Some(redis::Value::Array(flat)) => {
                    let mut fields = Vec::with_capacity(flat.len() / 2);
                    let mut flat = flat.into_iter();
                    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                        fields.push((
                            String::from_utf8_lossy(&value_bytes(k)).into_owned(),
                            value_bytes(v),
                        ));
                    }
                    fields
                }
                _ => Vec::new(),
            };
            Some(Entry { id, fields })
        })
        .collect()
}

/// The entries of an `XREADGROUP` reply (nil when the read timed out).
fn parse_read_reply(v: redis::Value) -> Vec<Entry> {
    parse_read_reply_by_stream(v)
        .into_iter()
        .flat_map(|(_, entries)| entries)
        .collect()
}

/// The entries of an `XREADGROUP` reply, by stream (nil when the read
/// timed out): `[[stream key, entries], …]` in RESP2, a map of key →
/// entries in RESP3.
fn parse_read_reply_by_stream(v: redis::Value) -> Vec<(String, Vec<Entry>)> {
    crate::connection::bell::read_reply_streams(v)
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&value_bytes(k)).into_owned(),
                parse_entries(v),
            )
        })
        .collect()
}

/// The bytes of a stream field value (always a bulk string from Redis; the
/// other arms only keep odd replies readable instead of failing).
fn value_bytes(v: redis::Value) -> Vec<u8> {
    match v {
        redis::Value::BulkString(b) => b,
        redis::Value::SimpleString(s) => s.into_bytes(),
        redis::Value::Int(i) => i.to_string().into_bytes(),
        other => format!("{other:?}").into_bytes(),
    }
}

/// What a reader's caller decides about entries.
pub trait ReadPolicy {
    /// Whether this process holds `id` already (it is running it): such an
    /// entry is never claimed again by its own process.
    fn holds(&self, _id: &str) -> bool {
        false
    }

    /// Poison triage: an abandoned entry delivered this many times is still
    /// claimed (for the caller to dead-letter), one delivered more than once
    /// but fewer only one per pass. `None`: claim every abandoned entry.
    fn max_deliveries(&self) -> Option<u32> {
        None
    }

    /// Whether this reader runs reclaim passes now (another process may be
    /// the one that does).
    fn reclaims(&self) -> bool {
        true
    }

    /// Whether a pass is wanted before its interval is up (asked once: the
    /// answer is consumed).
    fn reclaim_now(&self) -> bool {
        false
    }

    /// Consumers known dead: their entries are abandoned whatever their
    /// idle time.
    fn dead_consumers(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether a pass may claim a suspect (see [`ReadPolicy::max_deliveries`])
    /// now: no earlier suspect of ours is still running.
    fn suspects(&self) -> bool {
        true
    }

    /// Whether reads should block only briefly: passes are wanted soon
    /// (entries of dead consumers wait for them).
    fn short_block(&self) -> bool {
        false
    }

    /// The lease a pass must hold, and the largest gap (ms by the server's
    /// clock) since its holder's last renewal at which claims may go on:
    /// checked atomically with the claims (see `reclaim.lua`).
    fn lease(&self) -> Option<(&str, u64)> {
        None
    }
}

/// Claims every abandoned entry.
#[derive(Debug, Clone, Copy, Default)]
pub struct TakeAll;

impl ReadPolicy for TakeAll {}

/// One entry a reader took.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The entry.
    pub entry: Entry,
    /// For an entry taken over (from another consumer, or from our own
    /// pending list): its deliveries including this claim. `None` for a new
    /// entry.
    pub deliveries: Option<u32>,
}

/// What one step took.
#[derive(Debug, Clone, Default)]
pub struct Taken {
    /// The entries, each to be handled by the caller.
    pub entries: Vec<Delivered>,
    /// Pending entries found without a body (trimmed or deleted by someone
    /// else before anyone handled them): acknowledged, and logged.
    pub vanished: usize,
}

/// The reader of one consumer in one group of one stream; see the module docs.
#[derive(Debug)]
pub struct GroupReader {
    stream: String,
    group: String,
    consumer: Arc<str>,
    claim_idle: Duration,
    block: Duration,
    group_ready: bool,
    /// Our own pending list may hold entries we never saw: where to go on
    /// through it (`Some(None)`: from its start).
    own: Option<Option<String>>,
    next_reclaim: Instant,
    /// Where the next reclaim window starts (`-`, or `(<id>` after the
    /// last entry looked at).
    reclaim_cursor: String,
    /// The last pass filled its budget or stopped mid-list: another may
    /// find more at once.
    reclaim_more: bool,
    /// Reads do not block; an empty one waits for this bell.
    bell: Option<Subscription>,
    /// Ends a wait for the bell early (a reclaim pass that cannot wait).
    wake: Option<Arc<Notify>>,
}

/// What one step did.
enum Step {
    Reclaim,
    Own(Option<String>),
    New,
}

impl GroupReader {
    /// A reader of `group` on `stream` as `consumer`. Entries idle
    /// `claim_idle` at another consumer are taken over; a read blocks for
    /// at most `block` (its connection's response timeout must be longer).
    pub fn new(
        stream: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<Arc<str>>,
        claim_idle: Duration,
        block: Duration,
    ) -> Self {
        Self {
            stream: stream.into(),
            group: group.into(),
            consumer: consumer.into(),
            claim_idle,
            block,
            group_ready: false,
            own: Some(None),
            next_reclaim: Instant::now() + reclaim_interval(claim_idle),
            reclaim_cursor: "-".to_owned(),
            reclaim_more: false,
            bell: None,
            wake: None,
        }
    }

    /// Reads without blocking and waits for `bell` when nothing came (see
    /// the module docs), for at most the read period given to
    /// [`GroupReader::new`]; `wake` ends such a wait early.
    pub fn with_doorbell(mut self, bell: Subscription, wake: Arc<Notify>) -> Self {
        self.bell = Some(bell);
        self.wake = Some(wake);
        self
    }

    /// The stream read.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Our own pending list may hold entries the caller has not handled (a
    /// failed call, entries it could not handle yet): go through it again.
    pub fn reread_own(&mut self) {
        self.own = Some(None);
    }

    /// Creates the group, retrying through outages; `false` once `stop`
    /// fired first.
    pub async fn ensure_group(&mut self, conn: &mut Conn, stop: &CancellationToken) -> bool {
        while !self.group_ready {
            let Some(mut c) = conn.get(stop).await else {
                return false;
            };
            match self.create_group(&mut c).await {
                Ok(()) => conn.succeeded(),
                Err(e) => {
                    if !conn.failed(&e, stop).await {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// One step (see the module docs): what it took, for `want` free
    /// slots. `None` once `stop` fired.
    pub async fn next<P: ReadPolicy>(
        &mut self,
        conn: &mut Conn,
        stop: &CancellationToken,
        want: usize,
        policy: &P,
    ) -> Option<Taken> {
        let want = want.max(1);
        loop {
            // A live connection is handed out even after `stop`: look first.
            if stop.is_cancelled() {
                return None;
            }
            if !self.ensure_group(conn, stop).await {
                return None;
            }
            let mut c = conn.get(stop).await?;
            let step = self.upkeep_due(policy).unwrap_or(Step::New);
            let new = matches!(step, Step::New);
            if new && let Some(bell) = &mut self.bell {
                bell.seen();
            }
            match self.take(&mut c, step, want, policy).await {
                Ok(taken) => {
                    conn.succeeded();
                    if new && taken.entries.is_empty() && self.bell.is_some() {
                        drop(c);
                        // A reclaimer's wait ends at its next pass; the
                        // others' on the process-wide grid of their read
                        // period, so that a process's idle readers read
                        // again together (one write on the shared connection).
                        let until = if policy.reclaims() {
                            Instant::now() + self.block_for(policy)
                        } else {
                            crate::clock::next_tick(self.block)
                        };
                        let wake = self.wake.clone();
                        if let Some(bell) = &mut self.bell {
                            bell.wait(until, wake.as_deref(), stop).await;
                        }
                    }
                    return Some(taken);
                }
                Err(e) => {
                    if !self.after_error(&e) && !conn.failed(&e, stop).await {
                        return None;
                    }
                }
            }
        }
    }

    /// The upkeep step due, if one is: a reclaim pass every
    /// [`reclaim_interval`] (its clock restarts now), sooner when the policy
    /// asks or the last pass may have left more behind; else our own
    /// pending list when it may hold entries never seen.
    fn upkeep_due<P: ReadPolicy>(&mut self, policy: &P) -> Option<Step> {
        let now = Instant::now();
        let due = now >= self.next_reclaim;
        if due {
            self.next_reclaim = now + reclaim_interval(self.claim_idle);
        }
        let urgent = policy.reclaim_now();
        if (due || urgent || std::mem::take(&mut self.reclaim_more)) && policy.reclaims() {
            Some(Step::Reclaim)
        } else {
            self.own.clone().map(Step::Own)
        }
    }

    async fn take<C: ConnectionLike + Send, P: ReadPolicy>(
        &mut self,
        c: &mut C,
        step: Step,
        want: usize,
        policy: &P,
    ) -> redis::RedisResult<Taken> {
        match step {
            Step::Reclaim => self.reclaim(c, want, policy).await,
            Step::Own(from) => self.recover_own(c, from, want, policy).await,
            Step::New => {
                let block = (self.bell.is_none()).then(|| self.block_for(policy));
                self.read_new(c, want, block).await
            }
        }
    }

    /// How long to wait for new entries: a reclaimer no longer than until
    /// its next pass.
    fn block_for<P: ReadPolicy>(&self, policy: &P) -> Duration {
        if policy.reclaims() && policy.short_block() {
            self.block.min(Duration::from_millis(100))
        } else if policy.reclaims() {
            self.block.min(
                self.next_reclaim
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(10)),
            )
        } else {
            self.block
        }
    }

    /// Takes a failed call into account: a missing group (the stream was
    /// deleted or flushed) is created again at the next step — `true`,
    /// nothing else to do; any other error — `false` — may have run on the
    /// server with its reply lost, so our own pending list is read again.
    fn after_error(&mut self, e: &redis::RedisError) -> bool {
        if e.code() == Some("NOGROUP") {
            tracing::warn!(stream = %self.stream, group = %self.group, "consumer group missing (stream deleted or flushed); recreating it");
            self.group_ready = false;
            self.own = None;
            return true;
        }
        self.own = Some(None);
        false
    }

    async fn create_group<C: ConnectionLike + Send>(
        &mut self,
        c: &mut C,
    ) -> redis::RedisResult<()> {
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(c)
            .await;
        match r {
            Ok(()) => {
                tracing::info!(stream = %self.stream, group = %self.group, "created consumer group");
                self.group_ready = true;
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => {
                self.group_ready = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `XREADGROUP … >`, blocking for `block` if given.
    async fn read_new<C: ConnectionLike + Send>(
        &mut self,
        c: &mut C,
        want: usize,
        block: Option<Duration>,
    ) -> redis::RedisResult<Taken> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&*self.consumer)
            .arg("COUNT")
            .arg(want);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        let reply: redis::Value = cmd
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(c)
            .await?;
        Ok(Taken {
            entries: parse_read_reply(reply)
                .into_iter()
                .map(|entry| Delivered {
                    entry,
                    deliveries: None,
                })
                .collect(),
            vanished: 0,
        })
    }

    /// A page of our own pending list from `from`; the entries the caller
    /// does not hold are claimed (without waiting for them to be idle).
    async fn recover_own<C: ConnectionLike + Send, P: ReadPolicy>(
        &mut self,
        c: &mut C,
        from: Option<String>,
        want: usize,
        policy: &P,
    ) -> redis::RedisResult<Taken> {
        let start = from.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let own: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(start)
            .arg("+")
            .arg(want)
            .arg(&*self.consumer)
            .query_async(c)
            .await?;
        self.own = match own.ids.last() {
            Some(last) if own.ids.len() == want => Some(Some(last.id.clone())),
            _ => None,
        };
        // Deliveries so far: a process restarted under the same name (a
        // fixed --instance-id) finds here what its predecessor was running
        // when it crashed, and a poison message must still reach
        // max_deliveries.
        let unseen: Vec<(String, usize)> = own
            .ids
            .into_iter()
            .filter(|p| !policy.holds(&p.id))
            .map(|p| (p.id, p.times_delivered))
            .collect();
        if unseen.is_empty() {
            return Ok(Taken::default());
        }
        tracing::info!(
            stream = %self.stream,
            count = unseen.len(),
            "picking up entries delivered to this consumer that it never handled (a lost reply, or a restart)"
        );
        let ids: Vec<String> = unseen.iter().map(|(id, _)| id.clone()).collect();
        let (claimed, vanished) = self.claim(c, &ids, 0).await?;
        Ok(Taken {
            entries: claimed
                .into_iter()
                .map(|entry| {
                    // The claim counted one more delivery.
                    let n = unseen
                        .iter()
                        .find(|(id, _)| *id == entry.id)
                        .map_or(1, |(_, n)| n + 1);
                    Delivered {
                        entry,
                        deliveries: Some(u32::try_from(n).unwrap_or(u32::MAX)),
                    }
                })
                .collect(),
            vanished,
        })
    }

    /// One reclaim pass (`reclaim.lua`, see the module docs): takes at most
    /// `want` entries abandoned by other consumers.
    async fn reclaim<C: ConnectionLike + Send, P: ReadPolicy>(
        &mut self,
        c: &mut C,
        want: usize,
        policy: &P,
    ) -> redis::RedisResult<Taken> {
        let mut inv = scripts::RECLAIM.prepare_invoke();
        inv.key(&self.stream);
        let gap = match policy.lease() {
            Some((key, gap)) => {
                inv.key(key);
                gap
            }
            None => 0,
        };
        inv.arg(&self.group)
            .arg(&*self.consumer)
            .arg(self.claim_idle.as_millis() as u64)
            .arg(&self.reclaim_cursor)
            .arg(RECLAIM_SCAN)
            .arg(want)
            .arg(policy.max_deliveries().unwrap_or(0))
            .arg(gap)
            .arg(u8::from(policy.suspects()));
        for dead in policy.dead_consumers() {
            inv.arg(dead);
        }
        let (state, claimed, ids, counts, vanished, next): (
            i64,
            redis::Value,
            Vec<String>,
            Vec<u32>,
            Vec<String>,
            String,
        ) = inv.invoke_async(c).await?;
        if state != 1 {
            if state < 0 {
                tracing::debug!(stream = %self.stream, "reclaim on hold: the server's clock jumped (a freeze?); live workers renew first");
            }
            return Ok(Taken::default());
        }
        self.reclaim_more = next != "-" && !ids.is_empty();
        self.reclaim_cursor = next;
        if !vanished.is_empty() {
            tracing::error!(stream = %self.stream, count = vanished.len(), ids = ?vanished, "pending entries vanished from the stream before they were handled (trimmed or deleted by someone else)");
        }
        let entries: Vec<Delivered> = parse_entries(claimed)
            .into_iter()
            .map(|entry| {
                let deliveries = ids
                    .iter()
                    .position(|id| *id == entry.id)
                    .and_then(|i| counts.get(i).copied())
                    .unwrap_or(u32::MAX);
                Delivered {
                    entry,
                    deliveries: Some(deliveries),
                }
            })
            .collect();
        if !entries.is_empty() {
            tracing::info!(
                stream = %self.stream,
                count = entries.len(),
                "reclaimed entries abandoned by other consumers"
            );
        }
        Ok(Taken {
            entries,
            vanished: vanished.len(),
        })
    }

    /// Claims `ids` for this consumer if still idle `min_idle_ms`
    /// (`claim.lua`). Entries whose body is gone are acknowledged, logged
    /// and counted (the second of the pair).
    async fn claim<C: ConnectionLike + Send>(
        &self,
        c: &mut C,
        ids: &[String],
        min_idle_ms: u64,
    ) -> redis::RedisResult<(Vec<Entry>, usize)> {
        let mut inv = scripts::CLAIM.prepare_invoke();
        inv.key(&self.stream)
            .arg(&self.group)
            .arg(&*self.consumer)
            .arg(min_idle_ms);
        for id in ids {
            inv.arg(id);
        }
        let (claimed, vanished): (redis::Value, Vec<String>) = inv.invoke_async(c).await?;
        if !vanished.is_empty() {
            tracing::error!(stream = %self.stream, count = vanished.len(), ids = ?vanished, "pending entries vanished from the stream before they were handled (trimmed or deleted by someone else)");
        }
        Ok((parse_entries(claimed), vanished.len()))
    }
}
