//! `agentctl`, the operators' CLI: dead letters, streams, agents, tasks and
//! workflows, straight against Redis (no orchestrator needed to look or to
//! replay; workflow commands go through the same durable engine as the
//! API, so they are safe beside running orchestrators).
//!
//! Tables for people, `--json` for scripts (one JSON document on stdout;
//! JSON lines for `dlq export`). Exit codes: see [`ExitStatus`].

mod dlq;
mod housekeeping;
mod inspect;
pub mod output;
mod task;
mod workflow;

use agent_sdk::connection::{is_connection_error, redact_url};
use agent_sdk::exit::Exit;
use agent_sdk::{Client, RedisArgs};
use clap::{Args, Parser, Subcommand};
use orchestrator::Engine;
use output::Out;
use std::process::ExitCode;

/// Operate the agent runtime: dead letters, streams, agents, tasks, workflows.
#[derive(Debug, Parser)]
#[command(name = "agentctl", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args)]
struct Global {
    #[command(flatten)]
    redis: RedisArgs,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Dead letters: list, show, replay, purge, export, import.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Per agent type: backlog, pending, oldest pending, consumers, delayed,
    /// DLQ (count, bytes, oldest), lag; `prune-consumers`, `trim-results`.
    Streams(housekeeping::StreamsArgs),
    /// Redis memory by key family (sampled) against maxmemory.
    Memory(housekeeping::MemoryArgs),
    /// Live agent instances from the registry; stale ones marked.
    Agents(inspect::AgentsArgs),
    /// Enqueue a task or read its result.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Submit, inspect, watch and steer workflows.
    #[command(subcommand)]
    Workflow(workflow::WorkflowCommand),
}

/// What an `agentctl` run ended with; each has its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum ExitStatus {
    /// 1: the command ran and the outcome is a failure (a watched workflow
    /// failed, a waited-for task failed, a purge was not confirmed).
    #[error("{0}")]
    Failed(String),
    /// 2: bad arguments (also clap's own usage errors).
    #[error("{0}")]
    Usage(String),
    /// 64: bad configuration: a Redis URL or namespace that parses as a
    /// flag but cannot be used (the same code as every binary's).
    #[error("{0}")]
    Config(String),
    /// 3: no such workflow, stage, task or dead letter.
    #[error("{0}")]
    NotFound(String),
    /// 4: refused by the current state (approving a stage that is not
    /// waiting, cancelling an ended workflow).
    #[error("{0}")]
    Conflict(String),
    /// 5: gave up waiting (`--wait`, `--timeout`).
    #[error("{0}")]
    TimedOut(String),
    /// 65: an input file is malformed (`dlq import`); nothing was imported.
    #[error("{0}")]
    Data(String),
    /// 69: Redis cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// 70: anything else (a Redis error reply, unreadable stored data).
    #[error("{0}")]
    Internal(String),
}

impl ExitStatus {
    /// The process exit code: the project's shared ones
    /// ([`agent_sdk::exit::Exit`]) and agentctl's own outcomes 3–5.
    pub fn code(&self) -> u8 {
        match self {
            Self::Failed(_) => Exit::Failure.code(),
            Self::Usage(_) => Exit::Usage.code(),
            Self::Config(_) => Exit::Config.code(),
            Self::NotFound(_) => 3,
            Self::Conflict(_) => 4,
            Self::TimedOut(_) => 5,
            Self::Data(_) => Exit::Data.code(),
            Self::Unavailable(_) => Exit::Unavailable.code(),
            Self::Internal(_) => Exit::Software.code(),
        }
    }
}

impl From<orchestrator::Error> for ExitStatus {
    fn from(e: orchestrator::Error) -> Self {
        use orchestrator::Error as E;
        match e {
            E::NotFound { .. } => Self::NotFound(e.to_string()),
            E::Conflict(m) => Self::Conflict(m),
            E::Invalid(m) => Self::Usage(m),
            E::Definition(d) => Self::Usage(d.to_string()),
            E::Config(m) => Self::Config(m),
            E::Redis(r) if is_connection_error(&r) => {
                Self::Unavailable(format!("cannot reach Redis: {r}"))
            }
            E::Sdk(s) => s.into(),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<agent_sdk::Error> for ExitStatus {
    fn from(e: agent_sdk::Error) -> Self {
        match e {
            agent_sdk::Error::Redis(r) if is_connection_error(&r) => {
                Self::Unavailable(format!("cannot reach Redis: {r}"))
            }
            agent_sdk::Error::Config(m) => Self::Config(m),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<redis::RedisError> for ExitStatus {
    fn from(e: redis::RedisError) -> Self {
        orchestrator::Error::Redis(e).into()
    }
}

/// Result of a command.
pub type CtlResult<T = ()> = std::result::Result<T, ExitStatus>;

/// What commands share: the connection, the engine, the output.
struct Ctx {
    client: Client,
    engine: Engine,
    out: Out,
}

impl Ctx {
    fn conn(&self) -> redis::aio::ConnectionManager {
        self.client.connection()
    }
}

/// Runs `agentctl`; returns the exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let out = Out::new(cli.global.json);
    let result = async {
        let out = out.clone();
        // One plain attempt first: the client's connection manager retries
        // for several seconds, too long to tell an operator Redis is down.
        cli.global
            .redis
            .validate()
            .map_err(|e| ExitStatus::Config(e.to_string()))?;
        let probe = cli.global.redis.connector()?;
        if let Err(e) = probe.connect(std::time::Duration::from_secs(5)).await {
            return Err(ExitStatus::Unavailable(format!(
                "cannot reach Redis at {}: {e}",
                probe.redacted_url()
            )));
        }
        let client = Client::connect(&cli.global.redis.url, &cli.global.redis.namespace)
            .await
            .map_err(|e| match e {
                agent_sdk::Error::Redis(r) => ExitStatus::Unavailable(format!(
                    "cannot reach Redis at {}: {r}",
                    redact_url(&cli.global.redis.url)
                )),
                other => ExitStatus::from(other),
            })?;
        // The engine's channel announces agent types for result consumers;
        // agentctl runs none (the orchestrators do), so it is dropped.
        let (engine, _) = Engine::new(client.clone());
        let ctx = Ctx {
            client,
            engine,
            out,
        };
        match cli.command {
            Command::Dlq(c) => dlq::run(&ctx, c).await,
            Command::Streams(a) => match a.command {
                None => inspect::streams(&ctx).await,
                Some(c) => housekeeping::run(&ctx, c).await,
            },
            Command::Memory(a) => housekeeping::memory(&ctx, a).await,
            Command::Agents(a) => inspect::agents(&ctx, a).await,
            Command::Task(c) => task::run(&ctx, c).await,
            Command::Workflow(c) => workflow::run(&ctx, c).await,
        }
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            out.error(&e);
            ExitCode::from(e.code())
        }
    }
}

/// Parses a JSON value given on the command line.
fn json_arg(what: &str, s: &str) -> CtlResult<serde_json::Value> {
    serde_json::from_str(s).map_err(|e| ExitStatus::Usage(format!("{what} is not valid JSON: {e}")))
}

/// Parses an agent type given on the command line.
fn agent_type_arg(s: &str) -> CtlResult<agent_sdk::schemas::AgentType> {
    agent_sdk::schemas::AgentType::new(s).map_err(|e| ExitStatus::Usage(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
