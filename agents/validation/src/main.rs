//! `validation-agent`: serves agent type `validation` (see the library docs).

use agent_sdk::RuntimeConfig;
use agent_toolkit::{Jail, JailArgs};
use clap::Parser;
use std::process::ExitCode;
use validation_agent::ValidationAgent;

/// Checks generated projects: manifest, files, names, sizes, secrets, syntax.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeConfig,
    #[command(flatten)]
    jail: JailArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = agent_sdk::parse_cli();
    let jail = cli.jail;
    agent_sdk::daemon::run("validation-agent", "validation", cli.runtime, async |cfg| {
        // Syntax checks build project code: no jail, no agent (exit 64),
        // unless the operator passed --unsafe-no-jail.
        let jail = Jail::new(&jail)
            .await
            .map_err(|e| agent_sdk::Error::Config(e.to_string()))?;
        Ok(ValidationAgent::new(
            agent_sdk::daemon::client(cfg).await?.artifacts(),
            jail,
        ))
    })
    .await
}
