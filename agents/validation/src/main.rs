//! `validation-agent`: serves agent type `validation` (see the library docs).

use agent_sdk::RuntimeConfig;
use clap::Parser;
use std::process::ExitCode;
use validation_agent::ValidationAgent;

/// Checks generated projects: manifest, files, names, sizes, secrets, syntax.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = agent_sdk::parse_cli();
    agent_sdk::daemon::run("validation-agent", "validation", cli.runtime, async |cfg| {
        Ok(ValidationAgent::new(
            agent_sdk::daemon::client(cfg).await?.artifacts(),
        ))
    })
    .await
}
