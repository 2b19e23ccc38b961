//! `agentctl`: the operators' CLI. Everything is in `orchestrator::ctl`;
//! this parses the arguments and runs it.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = orchestrator::ctl::Cli::parse();
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(orchestrator::ctl::run(cli)),
        Err(e) => {
            eprintln!("agentctl: cannot start the runtime: {e}");
            ExitCode::from(70)
        }
    }
}
