//! Redis connections that come back after Redis restarts or the network drops.
//!
//! redis-rs multiplexed connections do not reconnect by themselves, and a
//! response timeout leaves a possibly dead socket in place. Each long-lived
//! loop of the worker therefore owns a [`Conn`]: on an I/O error or a timeout
//! it drops the connection and the next use reconnects with exponential
//! backoff (`backon`), never in a busy loop.

use crate::{Error, Result};
use backon::{BackoffBuilder, ExponentialBuilder};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};
use std::time::Duration;
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

/// Exponential backoff for reconnects and retried Redis calls: 50 ms doubling
/// to 5 s, with jitter, forever (callers stop on cancellation).
pub fn redis_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Opens connections to one Redis.
#[derive(Clone)]
pub struct Connector {
    client: redis::Client,
    redacted: String,
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
        })
    }

    /// The underlying client, for connection kinds this type does not wrap
    /// (pools, pub/sub, connection managers).
    pub fn client(&self) -> &redis::Client {
        &self.client
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

    /// A [`Conn`] that connects lazily and reconnects after failures.
    pub fn conn(&self, role: &'static str, response_timeout: Duration) -> Conn {
        Conn {
            connector: self.clone(),
            role,
            response_timeout,
            inner: None,
            backoff: None,
        }
    }
}

/// A connection owned by one loop; see the module docs.
pub struct Conn {
    connector: Connector,
    role: &'static str,
    response_timeout: Duration,
    inner: Option<MultiplexedConnection>,
    backoff: Option<Box<dyn Iterator<Item = Duration> + Send>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("role", &self.role)
            .field("connected", &self.inner.is_some())
            .finish()
    }
}

impl Conn {
    /// The live connection, connecting (with backoff) if needed. `None` once
    /// `cancel` fires.
    pub async fn get(&mut self, cancel: &CancellationToken) -> Option<MultiplexedConnection> {
        loop {
            if let Some(c) = &self.inner {
                return Some(c.clone());
            }
            if cancel.is_cancelled() {
                return None;
            }
            match self.connector.connect(self.response_timeout).await {
                Ok(c) => {
                    if self.backoff.take().is_some() {
                        tracing::info!(role = self.role, url = %self.connector.redacted, "reconnected to redis");
                    }
                    self.inner = Some(c);
                }
                Err(e) => {
                    tracing::warn!(role = self.role, url = %self.connector.redacted, error = %e, "cannot connect to redis; retrying");
                    if !self.pause(cancel).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Reports a failed call: drops the connection if the error says it is
    /// broken, then waits the next backoff step. Returns `false` if `cancel`
    /// fired while waiting.
    pub async fn failed(&mut self, e: &RedisError, cancel: &CancellationToken) -> bool {
        if is_connection_error(e) {
            self.inner = None;
        }
        tracing::warn!(role = self.role, error = %e, "redis call failed; retrying");
        self.pause(cancel).await
    }

    /// Reports a successful call: the next failure starts the backoff afresh.
    pub fn succeeded(&mut self) {
        if self.inner.is_some() {
            self.backoff = None;
        }
    }

    async fn pause(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self
            .backoff
            .get_or_insert_with(|| Box::new(redis_backoff()))
            .next()
            .unwrap_or(Duration::from_secs(5));
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_other_schemes_without_leaking() {
        let e = parse_url("http://:hunter2@h").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
