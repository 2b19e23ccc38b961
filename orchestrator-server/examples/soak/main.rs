//! The soak: the whole system for a fixed time at a steady rate, with random
//! `kill -9` of agents and orchestrators, and short retention; then exact
//! accounting and memory figures. `scripts/soak.sh` builds and runs it.
//!
//! What runs, all real processes: a private `redis-server`; two
//! `orchestrator serve` replicas with short retention and an archive file;
//! one `fault-agent` per stage type of the built-in `sdlc` definition and two
//! of the standalone type `soak`. The load submits workflows over the HTTP
//! API and enqueues standalone tasks with the SDK's client, each at a steady
//! rate. Every `--kill-every` one process, chosen at random, is killed with
//! `SIGKILL` and started again.
//!
//! Prints one JSON object (see [`account::Report`]) and exits non-zero when
//! anything was lost or applied twice, or when Redis memory at the end is
//! more than 10 % above its plateau (memory that grows with the work done).

mod account;
mod fleet;
mod load;
mod results;
mod sample;

use anyhow::{Context, bail};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    about = "Runs the whole system under steady load with random kill -9 and prints one JSON object"
)]
pub(crate) struct Args {
    /// How long the load runs.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Workflows submitted per second.
    #[arg(long, default_value_t = 5.0)]
    workflows_per_s: f64,
    /// Standalone tasks enqueued per second.
    #[arg(long, default_value_t = 20.0)]
    tasks_per_s: f64,
    /// A random agent or orchestrator is killed with SIGKILL this often.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    kill_every: Duration,
    /// The orchestrators' `--retention` (short, so memory reaches a plateau).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    retention: Duration,
    /// Where the orchestrator and agent binaries are (`target/debug`).
    #[arg(long)]
    bin_dir: PathBuf,
    /// Working directory for Redis, logs and the archive (kept on failure).
    #[arg(long)]
    work_dir: PathBuf,
    /// Seed of the random choices (kills, faults); printed in the report.
    #[arg(long)]
    seed: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    fastrand::seed(seed);
    if args.duration < args.retention * 3 {
        bail!("--duration must be at least three times --retention, so memory can reach a plateau");
    }
    std::fs::create_dir_all(&args.work_dir).context("create the work directory")?;
    let mut fleet = fleet::Fleet::start(&args).await?;
    let reader = results::ResultsReader::start(&fleet.redis_url()).await?;
    let samples = sample::Sampler::start(fleet.redis_url(), fleet.pids());
    let outcome = load::run(&args, &mut fleet).await;
    // Memory is judged while the load runs: the drain's end is quieter.
    let series = samples.stop().await;
    let drained = account::drain(&fleet, &outcome, &reader.seen).await;
    reader.stop().await?;
    let report = account::Report::build(seed, &outcome, drained, &series, &fleet)?;
    fleet.stop();
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(why) = report.failure() {
        bail!("soak failed: {why} (logs in {})", args.work_dir.display());
    }
    Ok(())
}
