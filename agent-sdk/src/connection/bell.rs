//! The doorbell: how the readers of one process wait for new entries
//! without holding a connection each.
//!
//! A blocked `XREADGROUP` parks its connection, so a process that runs N
//! worker instances held N + 1 connections, and a fleet of 10,000 idle
//! instances more than Redis's default `maxclients`. Instead, a reader with
//! a [`Subscription`] reads without blocking (on the process's shared
//! multiplexed connection) and, when a read comes back empty, waits here.
//! One task per [`Connector`] (per process, in practice) watches every
//! stream that has a waiting reader with one blocking `XREAD` on a
//! connection of its own, and rings that stream's bell when an entry is
//! added: its readers read again. A process holds two connections however
//! many readers it runs.
//!
//! No entry is missed:
//! - a reader marks the bell seen *before* each read
//!   ([`Subscription::seen`]), so a ring that comes between its read and its
//!   wait ends the wait at once;
//! - the watcher starts watching a stream from its last entry
//!   (`XREVRANGE … + - COUNT 1`) and rings it right after, so an entry
//!   added between a reader's empty read and the start of the watch is read
//!   too; from then on its cursor moves to each entry `XREAD` returns, so
//!   every later entry rings the bell once;
//! - after a failed call the watcher starts every stream afresh (and rings).
//!
//! Streams without a waiting reader are not watched (a busy stream's
//! readers read without pause, and watching it would cost one `XREAD` per
//! burst for nobody); the cursor of a stream left unwatched is kept for
//! [`LINGER`], so a reader that comes back at once does not cost a restart.
//! Readers also read again at their own read period whatever the bell says
//! (the caller's deadline): a safety net for what no cursor can see, such
//! as a stream recreated with lower ids.

use crate::connection::Connector;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long the watcher's `XREAD` blocks: one call per process per period
/// while nothing arrives, and each wakes an idle Redis (about 50 µs of its
/// CPU on a small VM, most of what an idle process costs it). It decides
/// nothing else (readers keep their own read period, `--read-block`, 30 s
/// by default), only how soon a silently dead connection is noticed (its
/// response timeout is this plus 5 s); meanwhile readers still read every
/// read period.
pub const WATCH_BLOCK: Duration = Duration::from_secs(60);

/// How long the cursor of a stream no reader waits on is kept.
pub const LINGER: Duration = Duration::from_secs(1);

/// The bells of one connector's streams (kept in its shared state).
#[derive(Debug, Default)]
pub(crate) struct Bells {
    state: Mutex<State>,
    /// The set of streams to watch may have changed.
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    streams: HashMap<String, Bell>,
    /// The streams of the `XREAD` under way.
    watching: HashSet<String>,
    /// The watcher task runs, and what stops it (when the last
    /// subscription goes).
    watcher: Option<CancellationToken>,
}

#[derive(Debug)]
struct Bell {
    ring: watch::Sender<u64>,
    subscribers: usize,
    waiting: usize,
    /// The id after which new entries ring (None: start afresh).
    cursor: Option<String>,
    /// Since when no reader waits on it.
    unwatched_since: Option<Instant>,
}

impl Bell {
    fn ring(&self) {
        self.ring.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl Bells {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Connector {
    /// A subscription to `stream`'s bell (see the module docs); the
    /// connector's watcher starts with the first one and stops after the last.
    pub fn doorbell(&self, stream: &str) -> Subscription {
        let bells = self.bells();
        let mut st = bells.lock();
        let bell = st.streams.entry(stream.to_owned()).or_insert_with(|| Bell {
            ring: watch::channel(0).0,
            subscribers: 0,
            waiting: 0,
            cursor: None,
            unwatched_since: None,
        });
        bell.subscribers += 1;
        let rx = bell.ring.subscribe();
        if st.watcher.is_none() {
            let gone = CancellationToken::new();
            st.watcher = Some(gone.clone());
            tokio::spawn(watch(self.clone(), bells.clone(), gone));
        }
        drop(st);
        Subscription {
            bells,
            stream: stream.to_owned(),
            rx,
        }
    }
}

/// One reader's subscription to a stream's bell.
#[derive(Debug)]
pub struct Subscription {
    bells: Arc<Bells>,
    stream: String,
    rx: watch::Receiver<u64>,
}

impl Subscription {
    /// Marks every ring so far as seen: call it just before a read, so a
    /// ring during the read ends the next [`Subscription::wait`] at once.
    pub fn seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Waits for a ring after the last [`Subscription::seen`], until
    /// `until`, for `wake`, or for `stop`, whichever comes first.
    pub async fn wait(&mut self, until: Instant, wake: Option<&Notify>, stop: &CancellationToken) {
        {
            let mut st = self.bells.lock();
            let watched = st.watching.contains(&self.stream);
            if let Some(b) = st.streams.get_mut(&self.stream) {
                b.waiting += 1;
            }
            if !watched {
                self.bells.changed.notify_one();
            }
        }
        let _waiting = Waiting {
            bells: &self.bells,
            stream: &self.stream,
        };
        let rx = &mut self.rx;
        let woken = async {
            match wake {
                Some(w) => w.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => {}
            _ = rx.changed() => {}
            _ = woken => {}
            _ = tokio::time::sleep_until(until) => {}
        }
    }
}

/// Counts a reader as waiting while it lives.
struct Waiting<'a> {
    bells: &'a Bells,
    stream: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut st = self.bells.lock();
        if let Some(b) = st.streams.get_mut(self.stream) {
            b.waiting = b.waiting.saturating_sub(1);
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut st = self.bells.lock();
        if let Some(b) = st.streams.get_mut(&self.stream) {
            b.subscribers -= 1;
            if b.subscribers == 0 {
                st.streams.remove(&self.stream);
            }
        }
        if st.streams.is_empty()
            && let Some(gone) = st.watcher.take()
        {
            gone.cancel();
        }
    }
}

/// What the watcher does next.
enum Plan {
    /// Nobody waits: wait for a change.
    Idle,
    /// Start these streams afresh: their last entry is the cursor.
    Start(Vec<String>),
    /// Block on these streams from these cursors.
    Watch(Vec<(String, String)>),
}

fn plan(bells: &Bells) -> Plan {
    let mut st = bells.lock();
    let now = Instant::now();
    let mut start = Vec::new();
    let mut watch = Vec::new();
    for (key, b) in &mut st.streams {
        if b.waiting == 0 {
            let since = *b.unwatched_since.get_or_insert(now);
            if now.duration_since(since) >= LINGER {
                b.cursor = None;
            }
            continue;
        }
        b.unwatched_since = None;
        match &b.cursor {
            Some(c) => watch.push((key.clone(), c.clone())),
            None => start.push(key.clone()),
        }
    }
    if !start.is_empty() {
        st.watching.clear();
        return Plan::Start(start);
    }
    st.watching = watch.iter().map(|(k, _)| k.clone()).collect();
    if watch.is_empty() {
        Plan::Idle
    } else {
        Plan::Watch(watch)
    }
}

/// Forgets every cursor (after a failed call: entries may have come
/// meanwhile), so each watched stream starts afresh and rings.
fn restart_all(bells: &Bells) {
    let mut st = bells.lock();
    st.watching.clear();
    for b in st.streams.values_mut() {
        b.cursor = None;
    }
}

/// Sets cursors and rings: `(stream, id)` pairs.
fn advance(bells: &Bells, moved: Vec<(String, String)>) {
    let mut st = bells.lock();
    for (key, id) in moved {
        if let Some(b) = st.streams.get_mut(&key) {
            b.cursor = Some(id);
            b.ring();
        }
    }
}

/// The watcher: see the module docs. Ends when `gone` fires (the last
/// subscription went).
async fn watch(connector: Connector, bells: Arc<Bells>, gone: CancellationToken) {
    let mut conn = connector.conn("doorbell", WATCH_BLOCK + Duration::from_secs(5));
    let mut unblock = connector.shared("doorbell");
    // The Redis client id of the watcher's connection, by its generation.
    let mut client: Option<(u64, i64)> = None;
    while !gone.is_cancelled() {
        let watch = match plan(&bells) {
            Plan::Idle => {
                tokio::select! {
                    _ = gone.cancelled() => return,
                    _ = bells.changed.notified() => {}
                }
                continue;
            }
            Plan::Start(keys) => {
                let Some(mut c) = conn.get(&gone).await else {
                    return;
                };
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("XREVRANGE")
                        .arg(k)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1);
                }
                match pipe.query_async::<Vec<redis::Value>>(&mut c).await {
                    Ok(replies) => {
                        conn.succeeded();
                        let moved = keys
                            .into_iter()
                            .zip(replies)
                            .map(|(k, v)| (k, last_id(v).unwrap_or_else(|| "0-0".to_owned())))
                            .collect();
                        advance(&bells, moved);
                    }
                    Err(e) => {
                        restart_all(&bells);
                        conn.failed(&e, &gone).await;
                    }
                }
                continue;
            }
            Plan::Watch(watch) => watch,
        };
        let Some(mut c) = conn.get(&gone).await else {
            return;
        };
        if client.is_none_or(|(g, _)| g != conn.generation()) {
            match redis::cmd("CLIENT")
                .arg("ID")
                .query_async::<i64>(&mut c)
                .await
            {
                Ok(id) => client = Some((conn.generation(), id)),
                Err(e) => {
                    restart_all(&bells);
                    conn.failed(&e, &gone).await;
                    continue;
                }
            }
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(WATCH_BLOCK.as_millis() as u64)
            .arg("STREAMS");
        for (k, _) in &watch {
            cmd.arg(k);
        }
        for (_, id) in &watch {
            cmd.arg(id);
        }
        let read = cmd.query_async::<redis::Value>(&mut c);
        tokio::pin!(read);
        let first = tokio::select! {
            r = &mut read => Some(r),
            _ = bells.changed.notified() => None,
            _ = gone.cancelled() => None,
        };
        let reply = match first {
            Some(r) => r,
            None => {
                // The set to watch changed: end the block on the server
                // (it answers as if it timed out), then take that answer.
                // The XREAD may not have reached Redis yet (UNBLOCK then
                // answers 0 and the read would block a whole WATCH_BLOCK):
                // send it again until it lands or the read answers.
                loop {
                    if gone.is_cancelled() {
                        return;
                    }
                    let landed = match client {
                        Some((_, id)) => {
                            let send = async {
                                let mut u = unblock.get(&gone).await?;
                                redis::cmd("CLIENT")
                                    .arg("UNBLOCK")
                                    .arg(id)
                                    .query_async::<i64>(&mut u)
                                    .await
                                    .ok()
                            };
                            tokio::time::timeout(Duration::from_secs(1), send)
                                .await
                                .ok()
                                .flatten()
                                == Some(1)
                        }
                        None => true,
                    };
                    if landed {
                        break read.await;
                    }
                    tokio::select! {
                        r = &mut read => break r,
                        _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    }
                }
            }
        };
        match reply {
            Ok(v) => {
                conn.succeeded();
                let moved = read_reply_ids(v);
                advance(&bells, moved);
            }
            Err(e) => {
                restart_all(&bells);
                conn.failed(&e, &gone).await;
            }
        }
    }
}

/// The id of the last entry of an entry list (`[[id, fields], …]`, as
/// `XRANGE`/`XREVRANGE` and each stream of `XREAD` return it; for
/// `XREVRANGE … COUNT 1` the stream's last entry).
fn last_id(v: redis::Value) -> Option<String> {
    let redis::Value::Array(entries) = v else {
        return None;
    };
    let redis::Value::Array(pair) = entries.into_iter().last()? else {
        return None;
    };
    text(pair.into_iter().next()?)
}

/// The `(stream key, entries)` pairs of an `XREAD`/`XREADGROUP` reply:
/// `[[key, entries], …]` in RESP2, a map of key → entries in RESP3; none
/// when it timed out (nil). The one place that knows both shapes (the
/// stream readers parse their entries from it too).
pub(crate) fn read_reply_streams(v: redis::Value) -> Vec<(redis::Value, redis::Value)> {
    match v {
        redis::Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                redis::Value::Array(kv) => {
                    let mut kv = kv.into_iter();
                    Some((kv.next()?, kv.next()?))
                }
                _ => None,
            })
            .collect(),
        redis::Value::Map(kv) => kv,
        _ => Vec::new(),
    }
}

/// `(stream, id of its last entry)` of an `XREAD` reply.
fn read_reply_ids(v: redis::Value) -> Vec<(String, String)> {
    read_reply_streams(v)
        .into_iter()
        .filter_map(|(k, entries)| Some((text(k)?, last_id(entries)?)))
        .collect()
}

fn text(v: redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b).ok(),
        redis::Value::SimpleString(s) => Some(s),
        _ => None,
    }
}
