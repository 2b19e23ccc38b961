//! `scaffold-agent`: serves agent type `scaffold` (see the library docs).

use agent_sdk::RuntimeConfig;
use clap::Parser;
use scaffold_agent::ScaffoldAgent;
use std::process::ExitCode;

/// Generates projects from built-in templates and publishes them as artifacts.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = agent_sdk::parse_cli();
    agent_sdk::daemon::run("scaffold-agent", "scaffold", cli.runtime, async |cfg| {
        Ok(ScaffoldAgent::new(
            agent_sdk::daemon::client(cfg).await?.artifacts(),
        ))
    })
    .await
}
