//! `deployment-agent`: serves agent type `deployment` (see the library docs).

use agent_sdk::{Client, RuntimeConfig, Worker, shutdown, telemetry};
use clap::Parser;
use deployment_agent::DeploymentAgent;
use std::path::PathBuf;

/// Installs project artifacts as releases and rolls them back.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeConfig,
    /// Directory holding `<app>/releases/<id>` and `<app>/current`.
    #[arg(long, env = "AGENTIC_RELEASES_DIR")]
    releases_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(&cli.runtime)?;
    std::fs::create_dir_all(&cli.releases_dir)?;
    let client = Client::connect(&cli.runtime.redis_url, &cli.runtime.namespace).await?;
    let worker = Worker::builder(DeploymentAgent::new(client.artifacts(), cli.releases_dir))
        .agent_type("deployment")
        .config(cli.runtime)
        .build()?;
    worker.run_until(shutdown::on_signals()?).await?;
    Ok(())
}
