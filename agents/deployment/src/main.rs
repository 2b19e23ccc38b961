//! `deployment-agent`: serves agent type `deployment` (see the library docs).

use agent_sdk::RuntimeConfig;
use agent_toolkit::{Jail, JailArgs};
use clap::Parser;
use deployment_agent::DeploymentAgent;
use std::path::PathBuf;
use std::process::ExitCode;

/// Installs project artifacts as releases and rolls them back.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeConfig,
    /// Directory holding `<app>/releases/<id>` and `<app>/current`.
    #[arg(long, env = "AGENTIC_RELEASES_DIR")]
    releases_dir: PathBuf,
    #[command(flatten)]
    jail: JailArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = agent_sdk::parse_cli();
    let releases = cli.releases_dir;
    let jail = cli.jail;
    agent_sdk::daemon::run("deployment-agent", "deployment", cli.runtime, async |cfg| {
        std::fs::create_dir_all(&releases).map_err(|e| {
            agent_sdk::Error::Config(format!("--releases-dir {}: {e}", releases.display()))
        })?;
        // Smoke checks run project code: no jail, no agent (exit 64),
        // unless the operator passed --unsafe-no-jail.
        let jail = Jail::new(&jail)
            .await
            .map_err(|e| agent_sdk::Error::Config(e.to_string()))?;
        let artifacts = agent_sdk::daemon::client(cfg).await?.artifacts();
        Ok(DeploymentAgent::new(artifacts, releases, jail))
    })
    .await
}
