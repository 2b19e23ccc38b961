//! A complete custom agent: greets whoever the task names.
//!
//! Run it:    cargo run -p agent-sdk --example echo -- --redis-url redis://127.0.0.1:6379
//! Feed it:   see "Enqueue a task with redis-cli" in schemas/PROTOCOL.md
use agent_sdk::{Agent, AgentError, RuntimeConfig, TaskContext};
use clap::Parser;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input {
    name: String,
}

#[derive(Serialize)]
struct Output {
    greeting: String,
    attempt: u32,
}

struct Echo;

impl Agent for Echo {
    type Input = Input;
    type Output = Output;

    async fn handle(&self, ctx: &TaskContext, input: Input) -> Result<Output, AgentError> {
        if input.name.trim().is_empty() {
            return Err(AgentError::invalid_input("name must not be empty"));
        }
        Ok(Output {
            greeting: format!("hello, {}", input.name),
            attempt: ctx.attempt(),
        })
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeConfig,
}

/// Checks the settings, starts logs and metrics, runs the worker until
/// SIGTERM or SIGINT, drains, and exits 0, or 64 on bad configuration.
#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    agent_sdk::daemon::run("echo", "echo", cli.runtime, async |_| Ok(Echo)).await
}
