//! `fault-agent`: the fault-test agent as a daemon (see `agent_sdk::fault`).
//! Tests kill, pause and restart it as a real process; the benchmark uses it
//! as its no-op worker.

use agent_sdk::fault::FaultAgent;
use agent_sdk::{RuntimeConfig, Worker, shutdown, telemetry};
use clap::Parser;
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
    let cli = Cli::parse();
    if let Err(e) = telemetry::init(&cli.runtime) {
        eprintln!("fault-agent: {e}");
        return ExitCode::from(64);
    }
    let worker = match Worker::builder(FaultAgent)
        .agent_type("fault")
        .config(cli.runtime)
        .build()
    {
        Ok(w) => w,
        Err(e) => {
            eprintln!("fault-agent: {e}");
            return ExitCode::from(64);
        }
    };
    let stop = match shutdown::on_signals() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fault-agent: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    match worker.run_until(stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "worker failed");
            ExitCode::FAILURE
        }
    }
}
