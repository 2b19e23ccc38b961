//! `e2e-agent`: serves agent type `e2e` (see the library docs).

use agent_sdk::RuntimeConfig;
use agent_toolkit::{Jail, JailArgs};
use clap::Parser;
use e2e_agent::E2eAgent;
use std::process::ExitCode;
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
    #[command(flatten)]
    jail: JailArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = agent_sdk::parse_cli();
    let timeout = cli.test_timeout;
    let jail = cli.jail;
    agent_sdk::daemon::run("e2e-agent", "e2e", cli.runtime, async |cfg| {
        // No jail, no agent: it would run untrusted suites on this host
        // (exit 64, unless the operator passed --unsafe-no-jail).
        let jail = Jail::new(&jail)
            .await
            .map_err(|e| agent_sdk::Error::Config(e.to_string()))?;
        Ok(E2eAgent::new(
            agent_sdk::daemon::client(cfg).await?.artifacts(),
            timeout,
            jail,
        ))
    })
    .await
}
