//! `agentctl`: the operators' CLI. Everything is in the library;
//! this parses the arguments and runs it.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli: agentctl::Cli = agent_sdk::parse_cli();
    // Warnings (an unreadable dead letter left out, a replay that could not
    // be recorded in its workflow) go to stderr; stdout stays the answer.
    agent_sdk::telemetry::init_logging_at(agent_sdk::LogFormat::Text, "warn");
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(agentctl::run(cli)),
        Err(e) => {
            eprintln!("agentctl: cannot start the runtime: {e}");
            agent_sdk::exit::Exit::Software.into()
        }
    }
}
