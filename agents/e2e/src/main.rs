//! `e2e-agent`: serves agent type `e2e` (see the library docs).

use agent_sdk::{Client, RuntimeConfig, Worker, shutdown, telemetry};
use clap::Parser;
use e2e_agent::E2eAgent;
use std::time::Duration;

/// Runs projects' own test suites in a sandbox.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeConfig,
    /// How long a test suite may run before it is killed (a retryable failure).
    #[arg(long, env = "AGENTIC_TEST_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    test_timeout: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(&cli.runtime)?;
    let client = Client::connect(&cli.runtime.redis_url, &cli.runtime.namespace).await?;
    let worker = Worker::builder(E2eAgent::new(client.artifacts(), cli.test_timeout))
        .agent_type("e2e")
        .config(cli.runtime)
        .build()?;
    worker.run_until(shutdown::on_signals()?).await?;
    Ok(())
}
