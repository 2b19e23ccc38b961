//! `integration-agent`: serves agent type `integration` (see the library docs).

use agent_sdk::RuntimeConfig;
use clap::Parser;
use integration_agent::IntegrationAgent;
use std::path::PathBuf;
use std::process::ExitCode;

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
async fn main() -> ExitCode {
    let cli: Cli = agent_sdk::parse_cli();
    let (repos, branch) = (cli.repos_dir, cli.main_branch);
    agent_sdk::daemon::run(
        "integration-agent",
        "integration",
        cli.runtime,
        async |cfg| {
            std::fs::create_dir_all(&repos).map_err(|e| {
                agent_sdk::Error::Config(format!("--repos-dir {}: {e}", repos.display()))
            })?;
            let artifacts = agent_sdk::daemon::client(cfg).await?.artifacts();
            Ok(IntegrationAgent::new(artifacts, repos, branch))
        },
    )
    .await
}
