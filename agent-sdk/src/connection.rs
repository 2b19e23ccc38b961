//! Redis connections that come back after Redis restarts or the network drops.
//!
//! redis-rs multiplexed connections do not reconnect by themselves, and a
//! response timeout leaves a possibly dead socket in place. Each long-lived
//! loop of the worker therefore uses a [`Conn`]: on an I/O error or a timeout
//! it drops the connection and the next use reconnects with exponential
//! backoff ([`redis_backoff`]), never in a busy loop.
//!
//! A worker process holds two connections, however many workers it runs:
//! every loop — reads, commits, lease renewals, the janitor, heartbeats —
//! shares one multiplexed connection ([`Connector::shared`]; no call on it
//! blocks), and the readers wait for new entries on the connector's
//! doorbell ([`crate::connection::bell`]), whose blocking `XREAD` has a
//! connection of its own ([`Connector::conn`]). A success on
//! any of them ends every loop's backoff wait, so after an outage nothing
//! sits out the rest of a long backoff step once Redis answers.

pub mod bell;

use crate::{Error, Result};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Parses a Redis URL, refusing anything that is not `redis://`, `rediss://` or `unix://`.
pub(crate) fn parse_url(url: &str) -> Result<redis::Client> {
    if !["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|p| url.starts_with(p))
    {
        return Err(Error::Config(format!(
            "redis URL must start with redis://, rediss:// or unix://, got {:?}",
            redact_url(url)
        )));
    }
    redis::Client::open(url).map_err(|e| {
        Error::Config(format!(
            "bad redis URL {}: {}",
            redact_url(url),
            e.category()
        ))
    })
}

pub use crate::redact::redact_url;

/// Whether the connection that returned `e` should be dropped and rebuilt.
pub fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// Shortest wait of [`redis_backoff`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait of [`redis_backoff`]: a cap, jitter included.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest wait after an `OOM` refusal: Redis answers one cheaply, and
/// memory may be freed at any moment, so a refused call is tried again
/// soon (a few calls a second per loop) instead of backing off to
/// [`BACKOFF_MAX`] while finished work sits uncommitted.
pub const OOM_RETRY_MAX: Duration = Duration::from_millis(250);

/// Backoff for reconnects and retried Redis calls: step `n` (from 0) waits
/// `50 ms × 2ⁿ` capped at 5 s, jittered down by up to half (so between half
/// the step and the step, never above 5 s), forever (callers stop on
/// cancellation). The jitter spreads a fleet's reconnects after an outage.
pub fn redis_backoff() -> impl Iterator<Item = Duration> + Send {
    (0u32..).map(|n| {
        let step = BACKOFF_MIN
            .saturating_mul(1u32 << n.min(16))
            .min(BACKOFF_MAX);
        step.mul_f64(1.0 - fastrand::f64() * 0.5)
    })
}

/// The connection all loops of a process but the blocking readers share,
/// and the signal that Redis answers again.
#[derive(Default)]
struct Shared {
    /// The connection and its generation (which connect made it).
    conn: tokio::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
    /// Woken when a call succeeds after failures, on any connection of this
    /// connector: every loop waiting out a backoff tries again at once.
    recovered: Notify,
    /// Loops waiting out a backoff (no wake-up to send when 0).
    waiting: AtomicUsize,
    /// The readers' doorbells (see [`crate::connection::bell`]).
    bells: Arc<crate::connection::bell::Bells>,
    /// Hash fields that hold the shared connection's Redis client id
    /// (`(key, field)`), written again at every reconnect before any other
    /// call: see [`Connector::record_client_id`].
    records: std::sync::Mutex<Vec<(String, String)>>,
}

/// Opens connections to one Redis.
#[derive(Clone)]
pub struct Connector {
    client: redis::Client,
    redacted: String,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("url", &self.redacted)
            .finish()
    }
}

impl Connector {
    pub fn new(url: &str) -> Result<Self> {
        Ok(Self {
            client: parse_url(url)?,
            redacted: redact_url(url),
            shared: Arc::default(),
        })
    }

    /// The underlying client, for connection kinds this type does not wrap
    /// (pools, pub/sub, connection managers).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Keeps `HSET key field <client id>` true of the shared connection:
    /// written by every connect of it before anything else is sent on it,
    /// so a reconnect (after a timeout in any loop) never leaves the old,
    /// closed connection's id recorded for long. The worker records its
    /// consumer here: the janitor takes the entries of a consumer whose
    /// recorded connection is gone at once, as a crash.
    pub fn record_client_id(&self, key: impl Into<String>, field: impl Into<String>) {
        let pair = (key.into(), field.into());
        let mut records = self
            .shared
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !records.contains(&pair) {
            records.push(pair);
        }
    }

    /// Stops recording `field` (a worker that stopped).
    pub fn forget_client_id(&self, key: &str, field: &str) {
        self.shared
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(k, f)| k != key || f != field);
    }

    pub(crate) fn bells(&self) -> Arc<crate::connection::bell::Bells> {
        self.shared.bells.clone()
    }

    pub fn redacted_url(&self) -> &str {
        &self.redacted
    }

    /// One connection whose responses time out after `response_timeout`.
    pub async fn connect(
        &self,
        response_timeout: Duration,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(response_timeout))
            // Commit batches and pipelined enqueues carry many commands.
            .set_pipeline_buffer_size(1024);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// A [`Conn`] of its own (for a blocking reader) that connects lazily
    /// and reconnects after failures.
    pub fn conn(&self, role: &'static str, response_timeout: Duration) -> Conn {
        Conn {
            connector: self.clone(),
            role,
            response_timeout,
            inner: None,
            shared: false,
            generation: 0,
            backoff: None,
        }
    }

    /// A handle on the one multiplexed connection every clone of this
    /// connector shares (responses time out after [`SHARED_TIMEOUT`]): what
    /// every loop but the blocking reader uses, so a worker process holds two
    /// connections whatever it runs. A failure seen through any handle
    /// rebuilds it for all; each handle keeps its own backoff.
    pub fn shared(&self, role: &'static str) -> Conn {
        Conn {
            shared: true,
            ..self.conn(role, SHARED_TIMEOUT)
        }
    }
}

/// Response timeout of the shared connection: no call on it blocks.
pub const SHARED_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection owned by one loop, or a handle on the shared one; see the
/// module docs.
pub struct Conn {
    connector: Connector,
    role: &'static str,
    response_timeout: Duration,
    inner: Option<MultiplexedConnection>,
    shared: bool,
    /// The generation of the shared connection last handed out.
    generation: u64,
    backoff: Option<Box<dyn Iterator<Item = Duration> + Send>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("role", &self.role)
            .field("shared", &self.shared)
            .field("connected", &self.inner.is_some())
            .finish()
    }
}

impl Conn {
    /// Another handle on the same connection (its own backoff): for a retry
    /// that runs beside the loop that made it.
    pub fn handle(&self) -> Conn {
        Conn {
            connector: self.connector.clone(),
            role: self.role,
            response_timeout: self.response_timeout,
            inner: if self.shared {
                None
            } else {
                self.inner.clone()
            },
            shared: self.shared,
            generation: self.generation,
            backoff: None,
        }
    }

    /// Counts connects: changes whenever the connection this handle hands out
    /// is a new one (for per-connection setup such as `CLIENT ID`).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The live connection, connecting (with backoff) if needed. `None` once
    /// `cancel` fires.
    pub async fn get(&mut self, cancel: &CancellationToken) -> Option<MultiplexedConnection> {
        loop {
            if self.shared {
                let shared = self.connector.shared.clone();
                let mut slot = shared.conn.lock().await;
                if let Some((g, c)) = slot.as_ref() {
                    self.generation = *g;
                    return Some(c.clone());
                }
                if cancel.is_cancelled() {
                    return None;
                }
                // Connect under the lock: one connect for every handle.
                match self.connect_recorded().await {
                    Some(c) => {
                        let g = shared.generation.fetch_add(1, Ordering::Relaxed) + 1;
                        self.connected(g);
                        *slot = Some((g, c.clone()));
                        self.generation = g;
                        return Some(c);
                    }
                    None => {
                        drop(slot);
                        if !self.pause(cancel, None).await {
                            return None;
                        }
                    }
                }
            } else {
                if let Some(c) = &self.inner {
                    return Some(c.clone());
                }
                if cancel.is_cancelled() {
                    return None;
                }
                match self.connect().await {
                    Some(c) => {
                        self.generation += 1;
                        self.connected(self.generation);
                        self.inner = Some(c.clone());
                        return Some(c);
                    }
                    None => {
                        if !self.pause(cancel, None).await {
                            return None;
                        }
                    }
                }
            }
        }
    }

    /// Logs a connect that is not the first of its connection (whichever
    /// handle of a shared connection made it).
    fn connected(&self, generation: u64) {
        if generation > 1 {
            tracing::info!(role = self.role, url = %self.connector.redacted, "reconnected to redis");
        }
    }

    /// A new shared connection, its client id recorded where asked (see
    /// [`Connector::record_client_id`]); a failure to record is a failure
    /// to connect.
    async fn connect_recorded(&mut self) -> Option<MultiplexedConnection> {
        let mut c = self.connect().await?;
        let records = self
            .connector
            .shared
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if records.is_empty() {
            return Some(c);
        }
        let recorded = async {
            let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut c).await?;
            let mut pipe = redis::pipe();
            for (key, field) in &records {
                pipe.hset(key, field, id).ignore();
            }
            pipe.query_async::<()>(&mut c).await
        };
        match recorded.await {
            Ok(()) => Some(c),
            Err(e) => {
                tracing::warn!(role = self.role, url = %self.connector.redacted, error = %e, "cannot record the new connection's client id; reconnecting");
                None
            }
        }
    }

    async fn connect(&mut self) -> Option<MultiplexedConnection> {
        match self.connector.connect(self.response_timeout).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(role = self.role, url = %self.connector.redacted, error = %e, "cannot connect to redis; retrying");
                None
            }
        }
    }

    /// Reports a failed call: drops the connection if the error says it is
    /// broken, then waits the next backoff step (at most [`OOM_RETRY_MAX`]
    /// after an `OOM` refusal), or less if a call on any connection of this
    /// connector succeeds meanwhile. Returns `false` if `cancel` fired while
    /// waiting.
    pub async fn failed(&mut self, e: &RedisError, cancel: &CancellationToken) -> bool {
        if is_connection_error(e) {
            if self.shared {
                let shared = self.connector.shared.clone();
                let mut slot = shared.conn.lock().await;
                if slot.as_ref().is_some_and(|(g, _)| *g == self.generation) {
                    *slot = None;
                }
            } else {
                self.inner = None;
            }
        }
        tracing::warn!(role = self.role, error = %e, "redis call failed; retrying");
        let cap = (e.code() == Some("OOM")).then_some(OOM_RETRY_MAX);
        self.pause(cancel, cap).await
    }

    /// Reports a successful call: the next failure starts the backoff afresh,
    /// and loops waiting out a backoff (Redis was failing) try again now.
    pub fn succeeded(&mut self) {
        if self.backoff.take().is_some()
            || self.connector.shared.waiting.load(Ordering::Relaxed) > 0
        {
            self.connector.shared.recovered.notify_waiters();
        }
    }

    async fn pause(&mut self, cancel: &CancellationToken, cap: Option<Duration>) -> bool {
        let mut delay = self
            .backoff
            .get_or_insert_with(|| Box::new(redis_backoff()))
            .next()
            .unwrap_or(BACKOFF_MAX);
        if let Some(cap) = cap {
            delay = delay.min(cap);
        }
        let shared = self.connector.shared.clone();
        let recovered = shared.recovered.notified();
        shared.waiting.fetch_add(1, Ordering::Relaxed);
        let r = tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
            _ = recovered => true,
        };
        shared.waiting.fetch_sub(1, Ordering::Relaxed);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_its_documented_bounds() {
        for (n, d) in redis_backoff().take(40).enumerate() {
            let step = BACKOFF_MIN
                .saturating_mul(1u32 << n.min(16))
                .min(BACKOFF_MAX);
            assert!(
                d <= step && d >= step / 2,
                "step {n}: {d:?} outside [{:?}, {step:?}]",
                step / 2
            );
            assert!(d <= BACKOFF_MAX);
        }
    }

    #[test]
    fn refuses_other_schemes_without_leaking() {
        let e = parse_url("http://:hunter2@h").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
