//! The life of an agent daemon, the same for every agent binary: check the
//! settings, start logs and metrics, build the agent, run its worker until
//! SIGTERM or SIGINT, drain, and exit with the project's exit codes
//! ([`crate::exit`]: 64 for bad configuration, 69 when Redis cannot be
//! reached at start, 70 otherwise).
//!
//! ```no_run
//! # use agent_sdk::{Agent, AgentError, RuntimeConfig, TaskContext};
//! # struct Upper;
//! # impl Agent for Upper {
//! #     type Input = String;
//! #     type Output = String;
//! #     async fn handle(&self, _: &TaskContext, i: String) -> Result<String, AgentError> { Ok(i) }
//! # }
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     let cfg = RuntimeConfig::default(); // from clap in a real binary
//!     agent_sdk::daemon::run("upper-agent", "upper", cfg, async |_cfg| Ok(Upper)).await
//! }
//! ```

use crate::exit::Exit;
use crate::{Agent, Client, Result, RuntimeConfig, Worker, shutdown, telemetry};
use std::process::ExitCode;

/// Runs the daemon `binary` serving `agent_type` (unless the configuration
/// names another) with the agent `make` builds; see the module docs.
pub async fn run<A, F>(binary: &str, agent_type: &str, cfg: RuntimeConfig, make: F) -> ExitCode
where
    A: Agent,
    F: AsyncFnOnce(&RuntimeConfig) -> Result<A>,
{
    let result = async {
        // Logging first: validation warns (a password given on the command line).
        telemetry::init_logging(cfg.log_format);
        cfg.validate()?;
        telemetry::init_metrics(&cfg)?;
        let agent = make(&cfg).await?;
        let worker = Worker::builder(agent)
            .agent_type(agent_type)
            .config(cfg)
            .build()?;
        worker.run_until(shutdown::on_signals()?).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{binary}: {e}");
            Exit::of(&e).into()
        }
    }
}

/// The producer client of `cfg`'s Redis and namespace, for agents that read
/// and write artifacts.
pub async fn client(cfg: &RuntimeConfig) -> Result<Client> {
    Client::connect(&cfg.redis.url, &cfg.redis.namespace).await
}
