//! `fault-agent`: the fault-test agent as a daemon (see the library docs).
//! Tests kill, pause and restart it as a real process; the benchmark uses it
//! as its no-op worker.

use agent_sdk::RuntimeConfig;
use clap::Parser;
use fault_agent::FaultAgent;
use std::process::ExitCode;

/// Runs the fault-test agent: its task input decides whether it sleeps,
/// fails, panics or exits.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = agent_sdk::parse_cli();
    agent_sdk::daemon::run("fault-agent", "fault", cli.runtime, async |_| {
        Ok(FaultAgent)
    })
    .await
}
