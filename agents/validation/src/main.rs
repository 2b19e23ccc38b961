//! `validation-agent`: serves agent type `validation` (see the library docs).

use agent_sdk::{Client, RuntimeConfig, Worker, shutdown, telemetry};
use clap::Parser;
use validation_agent::ValidationAgent;

/// Checks generated projects: manifest, files, names, sizes, secrets, syntax.
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
    let worker = Worker::builder(ValidationAgent::new(client.artifacts()))
        .agent_type("validation")
        .config(cli.runtime)
        .build()?;
    worker.run_until(shutdown::on_signals()?).await?;
    Ok(())
}
