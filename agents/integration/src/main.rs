//! `integration-agent`: serves agent type `integration` (see the library docs).

use agent_sdk::{Client, RuntimeConfig, Worker, shutdown, telemetry};
use clap::Parser;
use integration_agent::IntegrationAgent;
use std::path::PathBuf;

/// Commits project artifacts into git repositories and merges them.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeConfig,
    /// Directory holding one git repository per project (created when missing).
    #[arg(long, env = "AGENTIC_REPOS_DIR")]
    repos_dir: PathBuf,
    /// The branch workflow branches are merged into.
    #[arg(long, env = "AGENTIC_MAIN_BRANCH", default_value = "main")]
    main_branch: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(&cli.runtime)?;
    std::fs::create_dir_all(&cli.repos_dir)?;
    let client = Client::connect(&cli.runtime.redis_url, &cli.runtime.namespace).await?;
    let agent = IntegrationAgent::new(client.artifacts(), cli.repos_dir, cli.main_branch);
    let worker = Worker::builder(agent)
        .agent_type("integration")
        .config(cli.runtime)
        .build()?;
    worker.run_until(shutdown::on_signals()?).await?;
    Ok(())
}
