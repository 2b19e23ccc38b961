//! `scaffold-agent`: serves agent type `scaffold` (see the library docs).

use agent_sdk::{Client, RuntimeConfig, Worker, shutdown, telemetry};
use clap::Parser;
use scaffold_agent::ScaffoldAgent;

/// Generates projects from built-in templates and publishes them as artifacts.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(&cli.runtime)?;
    let client = Client::connect(&cli.runtime.redis_url, &cli.runtime.namespace).await?;
    let worker = Worker::builder(ScaffoldAgent::new(client.artifacts()))
        .agent_type("scaffold")
        .config(cli.runtime)
        .build()?;
    worker.run_until(shutdown::on_signals()?).await?;
    Ok(())
}
