//! The runtime every agent daemon links.
//!
//! An agent implements [`Agent`]; a [`Worker`] pulls its tasks from
//! `N:agent:{T}:tasks` through the `workers` consumer group, runs them with
//! bounded concurrency, and settles each one exactly once: published and
//! acknowledged, retried with backoff, or dead-lettered — crash, restart,
//! pause or poison notwithstanding. [`Client`] enqueues tasks and reads
//! results; [`DeadLetters`] inspects, replays and purges the DLQ;
//! [`stream::GroupReader`] is the consumer-group reader of the worker, and
//! [`stream::ManyReader`] the same reader over many streams on one
//! connection, for the orchestrator's results consumer.
//!
//! ```no_run
//! use agent_sdk::{Agent, AgentError, TaskContext, Worker, RuntimeConfig};
//!
//! struct Upper;
//! impl Agent for Upper {
//!     type Input = String;
//!     type Output = String;
//!     async fn handle(&self, _ctx: &TaskContext, input: String) -> Result<String, AgentError> {
//!         Ok(input.to_uppercase())
//!     }
//! }
//!
//! # async fn run() -> agent_sdk::Result<()> {
//! let shutdown = agent_sdk::shutdown::on_signals()?;
//! Worker::builder(Upper)
//!     .agent_type("upper")
//!     .config(RuntimeConfig::default())
//!     .build()?
//!     .run_until(shutdown)
//!     .await
//! # }
//! ```

mod agent;
pub mod artifacts;
mod client;
pub mod clock;
mod config;
pub mod connection;
pub mod daemon;
mod dlq;
mod error;
pub mod exit;
mod redact;
mod redis_args;
mod retry;
mod scripts;
pub mod shutdown;
pub mod stream;
pub mod telemetry;
#[cfg(feature = "test-util")]
pub mod testing;
mod worker;

pub use agent::{Agent, AgentError, AgentErrorKind, TaskContext};
pub use artifacts::{ArtifactLimits, ArtifactRef, Artifacts};
pub use client::{Client, DEFAULT_IDEMPOTENCY_TTL, EnqueueOptions, Enqueued, PlainFields};
pub use config::{LogFormat, RuntimeConfig};
pub use connection::redact_url;
pub use dlq::{DeadLetterFilter, DeadLetterPage, DeadLetters};
pub use error::{Error, Result};
pub use redis_args::{DEFAULT_REDIS_URL, RedisArgs, RedisUrlArgs, parse_cli};
pub use retry::RetryPolicy;
pub use worker::{Worker, WorkerBuilder};

/// The wire protocol crate, re-exported so agents need one dependency.
pub use schemas;
/// Re-exported so binaries can build shutdown tokens without a direct dependency.
pub use tokio_util::sync::CancellationToken;
