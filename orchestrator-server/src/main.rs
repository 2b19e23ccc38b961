//! `orchestrator`: serve the workflow engine and its HTTP API, check a
//! definition file, or print the API's OpenAPI document. Logic lives in the library; this maps it to exit codes.

use agent_sdk::exit::Exit;
use clap::{Parser, Subcommand};
use orchestrator::Definition;
use orchestrator_server::tokens::{self, Role};
use orchestrator_server::{ServeConfig, server};
use std::path::PathBuf;
use std::process::ExitCode;

// The orchestrator allocates and frees many small JSON values per
// transition: under load malloc and free were a quarter of its CPU, and
// mimalloc raised its transitions per second by about 15 % (measured with
// orchestrator/examples/workflow_bench.rs, which uses it too).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Durable multi-stage workflows over the agents.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the orchestrator: consume results, drive workflows, serve the API.
    Serve(Box<ServeConfig>),
    /// Validate a definition file (YAML or JSON) and print its parallel levels.
    Check {
        /// The definition file.
        file: PathBuf,
        /// Also warn (on stderr) about agent types its stages name that were
        /// never seen in Redis (--redis-url, --namespace): no worker of the
        /// type has read its task stream and none is registered. The
        /// warnings do not change the exit code; an unreachable Redis does.
        #[arg(long)]
        agent_types: bool,
        /// Redis and namespace, with --agent-types.
        #[command(flatten)]
        redis: agent_sdk::RedisArgs,
    },
    /// Print the HTTP API's OpenAPI document (pretty JSON; needs no Redis).
    Openapi,
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token: print it once on stdout, and append its hash (never
    /// the token) to the tokens file.
    New {
        /// The token's name, recorded in the audit trail (1 to 64 of
        /// A-Z a-z 0-9 . _ -).
        #[arg(long)]
        name: String,
        /// What it may do.
        #[arg(long, value_enum)]
        role: Role,
        /// The tokens file to append to (created, readable by the owner
        /// only, when missing).
        #[arg(long, env = "AGENTIC_TOKENS_FILE")]
        tokens_file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli: Cli = agent_sdk::parse_cli();
    match cli.command {
        Command::Check {
            file,
            agent_types,
            redis,
        } => check(&file, agent_types.then_some(&redis)),
        Command::Token(TokenCommand::New {
            name,
            role,
            tokens_file,
        }) => new_token(&name, role, &tokens_file),
        Command::Openapi => {
            println!("{}", orchestrator_server::api::openapi_json());
            ExitCode::SUCCESS
        }
        Command::Serve(cfg) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("orchestrator: cannot start the runtime: {e}");
                    return Exit::Software.into();
                }
            };
            runtime.block_on(serve(*cfg))
        }
    }
}

fn new_token(name: &str, role: Role, file: &std::path::Path) -> ExitCode {
    let made =
        tokens::generate().and_then(|t| tokens::append_entry(file, name, role, &t).map(|()| t));
    match made {
        Ok(token) => {
            // The only place the token is ever shown.
            println!("{token}");
            eprintln!(
                "orchestrator: token {name:?} ({role}) added to {}; it is not shown again",
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("orchestrator: {e}");
            e.exit().into()
        }
    }
}

fn check(file: &PathBuf, redis: Option<&agent_sdk::RedisArgs>) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("orchestrator: {}: {e}", file.display());
            return Exit::NoInput.into();
        }
    };
    match Definition::parse(&text).and_then(|d| d.validate().map(|p| (d, p))) {
        Ok((d, plan)) => {
            println!(
                "{}: {} stages in {} levels",
                d.name,
                d.stages.len(),
                plan.levels.len()
            );
            for (i, level) in plan.levels.iter().enumerate() {
                println!("  level {i}: {}", level.join(", "));
            }
            match redis {
                Some(redis) => warn_agent_types(redis, &d),
                None => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("orchestrator: {}: {e}", file.display());
            Exit::Data.into()
        }
    }
}

/// Prints the agent-type warnings of `def` on stderr.
fn warn_agent_types(redis: &agent_sdk::RedisArgs, def: &Definition) -> ExitCode {
    let found = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(orchestrator_server::Error::from)
        .and_then(|rt| rt.block_on(orchestrator_server::check::agent_type_warnings(redis, def)));
    match found {
        Ok(warnings) => {
            for w in warnings {
                eprintln!("warning: {}", w.message);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("orchestrator: cannot check the agent types: {e}");
            e.exit().into()
        }
    }
}

async fn serve(cfg: ServeConfig) -> ExitCode {
    agent_sdk::telemetry::init_logging(cfg.log_format);
    if let Err(e) = cfg.validate() {
        eprintln!("orchestrator: {e}");
        return e.exit().into();
    }
    let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("orchestrator: cannot listen on {}: {e}", cfg.listen);
            return Exit::Unavailable.into();
        }
    };
    let stop = match agent_sdk::shutdown::on_signals() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("orchestrator: cannot install signal handlers: {e}");
            return Exit::Software.into();
        }
    };
    match server::serve(cfg, listener, stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orchestrator: {e}");
            tracing::error!(error = %e, "orchestrator failed");
            e.exit().into()
        }
    }
}
