//! One consumer of one group over many streams, on one connection: what
//! the orchestrator reads its results streams with (one per agent type).
//!
//! New entries of every stream come in one blocking call
//! (`XREADGROUP … STREAMS s1 s2 … > > …`), so a stream joining the set
//! costs an argument, not a connection. The upkeep stays per stream and is
//! [`GroupReader`]'s own: the group is created on each stream, a reclaim
//! pass (one bounded `reclaim.lua` call) runs on each stream whose pass is
//! due, and our own
//! pending list is gone through stream by stream when it may hold entries
//! never seen (at start, after a failed call).
//!
//! On Redis Cluster one call can only read streams of one node: the set
//! would have to be split per node, a reader each (not done here).

use super::{GroupReader, ReadPolicy, Step, Taken, parse_read_reply_by_stream};
use crate::connection::{Conn, is_connection_error};
use crate::shutdown::pause;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A reader of `group` as one consumer over a set of streams that only
/// grows; see the module docs.
#[derive(Debug)]
pub struct ManyReader {
    group: String,
    consumer: Arc<str>,
    claim_idle: Duration,
    block: Duration,
    /// One per stream, for the upkeep of that stream.
    readers: Vec<GroupReader>,
}

impl ManyReader {
    /// A reader of `group` as `consumer`, over no stream yet. Entries idle
    /// `claim_idle` at another consumer are taken over; a read blocks for
    /// at most `block` (its connection's response timeout must be longer).
    pub fn new(
        group: impl Into<String>,
        consumer: impl Into<Arc<str>>,
        claim_idle: Duration,
        block: Duration,
    ) -> Self {
        Self {
            group: group.into(),
            consumer: consumer.into(),
            claim_idle,
            block,
            readers: Vec::new(),
        }
    }

    /// Adds `stream` to the set (read from the next step on); `false` when
    /// it is in already.
    pub fn add(&mut self, stream: impl Into<String>) -> bool {
        let stream = stream.into();
        if self.readers.iter().any(|r| r.stream == stream) {
            return false;
        }
        self.readers.push(GroupReader::new(
            stream,
            self.group.clone(),
            self.consumer.clone(),
            self.claim_idle,
            self.block,
        ));
        true
    }

    /// The streams read, in the order they were added.
    pub fn streams(&self) -> impl Iterator<Item = &str> {
        self.readers.iter().map(|r| r.stream.as_str())
    }

    /// How many streams are read.
    pub fn len(&self) -> usize {
        self.readers.len()
    }

    /// Whether no stream is read yet.
    pub fn is_empty(&self) -> bool {
        self.readers.is_empty()
    }

    /// Our own pending list on `stream` may hold entries the caller has
    /// not handled: go through it again.
    pub fn reread_own(&mut self, stream: &str) {
        if let Some(r) = self.readers.iter_mut().find(|r| r.stream == stream) {
            r.reread_own();
        }
    }

    /// One step: what it took, by stream (streams with nothing left out),
    /// for `want` entries per stream. Upkeep first (reclaim passes that are
    /// due, own pending lists), then one blocking read of new entries of
    /// every stream. Empty when nothing came within the block time (or the
    /// set is empty); `None` once `stop` fired.
    pub async fn next<P: ReadPolicy>(
        &mut self,
        conn: &mut Conn,
        stop: &CancellationToken,
        want: usize,
        policy: &P,
    ) -> Option<Vec<(String, Taken)>> {
        let want = want.max(1);
        loop {
            if stop.is_cancelled() {
                return None;
            }
            let mut c = conn.get(stop).await?;
            if let Err(e) = self.create_missing_groups(&mut c).await {
                if !conn.failed(&e, stop).await {
                    return None;
                }
                continue;
            }
            if !self.readers.iter().any(|r| r.group_ready) {
                return (!pause(stop, self.block).await).then(Vec::new);
            }
            let taken = match self.upkeep(&mut c, want, policy).await {
                Ok(t) if t.is_empty() => self.read_new(&mut c, want).await,
                other => other,
            };
            match taken {
                Ok(t) => {
                    conn.succeeded();
                    return Some(t);
                }
                Err(e) if e.code() == Some("NOGROUP") => {
                    // One of the streams lost its group (deleted or
                    // flushed); which one the error does not say reliably.
                    // Creating a group that exists is a no-op, and a read
                    // refused this way delivered nothing.
                    tracing::warn!(group = %self.group, error = %e, "a consumer group is missing (stream deleted or flushed); recreating the groups");
                    for r in &mut self.readers {
                        r.group_ready = false;
                    }
                }
                Err(e) => {
                    // The call may have run on the server with its reply
                    // lost: every stream's own pending list is read again.
                    for r in &mut self.readers {
                        r.reread_own();
                    }
                    if !conn.failed(&e, stop).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Creates the group on every stream that has none yet. A stream whose
    /// group Redis refuses to create (an ACL, a key of another type) is
    /// left out of the reads until it can be, so it never holds up the
    /// others; only a broken connection is an error.
    async fn create_missing_groups(
        &mut self,
        c: &mut redis::aio::MultiplexedConnection,
    ) -> redis::RedisResult<()> {
        for r in self.readers.iter_mut().filter(|r| !r.group_ready) {
            if let Err(e) = r.create_group(c).await {
                if is_connection_error(&e) {
                    return Err(e);
                }
                tracing::warn!(stream = %r.stream, group = %self.group, error = %e, "cannot create the consumer group; the stream is left out of the reads until it can be");
            }
        }
        Ok(())
    }

    /// The upkeep due on every stream: the reclaim passes that are due,
    /// then own pending lists that may hold unseen entries. What every stream took, by stream; a failed call ends the
    /// upkeep (the caller reads every own pending list again).
    async fn upkeep<P: ReadPolicy>(
        &mut self,
        c: &mut redis::aio::MultiplexedConnection,
        want: usize,
        policy: &P,
    ) -> redis::RedisResult<Vec<(String, Taken)>> {
        let mut out = Vec::new();
        let mut reclaim = Vec::new();
        let mut own = Vec::new();
        for (i, r) in self.readers.iter_mut().enumerate() {
            if !r.group_ready {
                continue;
            }
            match r.upkeep_due(policy) {
                Some(Step::Reclaim) => reclaim.push(i),
                Some(Step::Own(from)) => own.push((i, from)),
                Some(Step::New) | None => {}
            }
        }
        for i in reclaim {
            let r = &mut self.readers[i];
            let t = match r.take(c, Step::Reclaim, want, policy).await {
                Ok(t) => t,
                Err(e) => {
                    r.after_error(&e);
                    return Err(e);
                }
            };
            if !t.entries.is_empty() || t.vanished > 0 {
                out.push((r.stream.clone(), t));
            }
        }
        for (i, from) in own {
            let r = &mut self.readers[i];
            let t = match r.take(c, Step::Own(from), want, policy).await {
                Ok(t) => t,
                Err(e) => {
                    r.after_error(&e);
                    return Err(e);
                }
            };
            if !t.entries.is_empty() || t.vanished > 0 {
                out.push((r.stream.clone(), t));
            }
        }
        Ok(out)
    }

    /// New entries of every stream, in one call that blocks up to `block`.
    async fn read_new(
        &mut self,
        c: &mut redis::aio::MultiplexedConnection,
        want: usize,
    ) -> redis::RedisResult<Vec<(String, Taken)>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&*self.consumer)
            .arg("COUNT")
            .arg(want)
            .arg("BLOCK")
            .arg(self.block.as_millis() as u64)
            .arg("STREAMS");
        let ready: Vec<&GroupReader> = self.readers.iter().filter(|r| r.group_ready).collect();
        for r in &ready {
            cmd.arg(&r.stream);
        }
        for _ in &ready {
            cmd.arg(">");
        }
        let reply: redis::Value = cmd.query_async(c).await?;
        Ok(parse_read_reply_by_stream(reply)
            .into_iter()
            .filter(|(_, entries)| !entries.is_empty())
            .map(|(stream, entries)| {
                let taken = Taken {
                    entries: entries
                        .into_iter()
                        .map(|entry| super::Delivered {
                            entry,
                            deliveries: None,
                        })
                        .collect(),
                    vanished: 0,
                };
                (stream, taken)
            })
            .collect())
    }
}
