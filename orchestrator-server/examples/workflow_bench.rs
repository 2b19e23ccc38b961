//! Measures workflows through one orchestrator process: N five-stage
//! `sdlc`-shaped workflows over no-op agents, submitted over HTTP. Prints one
//! JSON object (`scripts/bench.sh` merges it into its own):
//!
//! - `workflows_per_s`: workflows completed per second, from the first
//!   submission to the last completion;
//! - `stage_transitions_per_s`: transitions stored per second over the same
//!   time (six per workflow: its start and its five stage completions, each
//!   also dispatching the next stage);
//! - `workflow_p50_ms`, `workflow_p99_ms`: creation to completion.
//!
//! The agents (five no-op workers, one per stage type) run in a child
//! process (this binary with `--role agents`), so the orchestrator's
//! process is measured alone.

use agent_sdk::{Agent, AgentError, CancellationToken, RuntimeConfig, TaskContext, Worker};
use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

// The allocator of the `orchestrator` binary, so the figures are its own.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STAGES: [&str; 5] = ["scaffold", "validation", "e2e", "integration", "deployment"];

#[derive(Debug, Parser)]
struct Args {
    /// Redis to use (a throw-away one: the bench writes into it).
    #[command(flatten)]
    redis: agent_sdk::RedisUrlArgs,
    /// Workflows to run.
    #[arg(long, default_value_t = 2000)]
    workflows: usize,
    /// Submissions in flight at once.
    #[arg(long, default_value_t = 64)]
    submitters: usize,
    /// `orchestrator` (default) or `agents` (the child process).
    #[arg(long, default_value = "orchestrator")]
    role: String,
    /// Namespace.
    #[arg(long, default_value = "wfbench")]
    namespace: String,
    /// Start the agents only once every workflow is submitted, and report
    /// how fast results alone move them (`result_transitions_per_s`).
    #[arg(long)]
    agents_after_submit: bool,
}

/// Accepts any input, returns a small output.
#[derive(Debug, Clone, Copy)]
struct NoOp;

impl Agent for NoOp {
    type Input = Value;
    type Output = Value;
    async fn handle(&self, _ctx: &TaskContext, _input: Value) -> Result<Value, AgentError> {
        Ok(json!({ "ok": true }))
    }
}

async fn agents(args: &Args) -> anyhow::Result<()> {
    let stop = agent_sdk::shutdown::on_signals()?;
    let mut handles = Vec::new();
    for t in STAGES {
        let cfg = RuntimeConfig {
            redis: agent_sdk::RedisArgs::new(args.redis.url.clone(), args.namespace.clone()),
            agent_type: Some(t.into()),
            concurrency: 512,
            batch_size: 256,
            ..RuntimeConfig::default()
        };
        let w = Worker::builder(NoOp).config(cfg).build()?;
        handles.push(tokio::spawn(w.run_until(stop.clone())));
    }
    for h in handles {
        h.await??;
    }
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn orchestrate(args: &Args) -> anyhow::Result<Value> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // The API always wants a token: one of its own, in a private file.
    let token_dir = tempfile::tempdir()?;
    let token_file = token_dir.path().join("token");
    let token = orchestrator_server::tokens::generate()?;
    orchestrator_server::tokens::write_private(&token_file, &token)?;
    let cfg = {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: orchestrator_server::ServeConfig,
        }
        let mut serve = Cli::try_parse_from([
            "orchestrator",
            "--listen",
            &addr.to_string(),
            "--api-token-file",
            &token_file.display().to_string(),
        ])?
        .serve;
        serve.redis = agent_sdk::RedisArgs::new(args.redis.url.clone(), args.namespace.clone());
        serve
    };
    let stop = CancellationToken::new();
    let server = tokio::spawn(orchestrator_server::server::serve(
        cfg,
        listener,
        stop.clone(),
    ));
    let base = format!("http://{addr}");
    let http = orchestrator_server::testing::http_as(&token);
    let ready = Instant::now();
    while !http
        .get(format!("{base}/ready"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if ready.elapsed() > Duration::from_secs(30) {
            bail!("orchestrator not ready after 30s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spawn_agents = || -> anyhow::Result<std::process::Child> {
        std::process::Command::new(std::env::current_exe()?)
            .args(["--role", "agents", "--namespace", &args.namespace])
            // Not on its command line: every user of the host can read those.
            .env("AGENTIC_REDIS_URL", &args.redis.url)
            .env_remove("AGENTIC_REDIS_URL_FILE")
            .env("RUST_LOG", "warn")
            .spawn()
            .context("spawning the agents")
    };
    let mut child = None;
    if !args.agents_after_submit {
        child = Some(spawn_agents()?);
        // Let the agents register and block on their streams.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let keys =
        agent_sdk::schemas::Keys::new(agent_sdk::schemas::Namespace::new(args.namespace.clone())?);
    let redis = redis::Client::open(args.redis.url.as_str())?;
    let mut conn = redis.get_multiplexed_async_connection().await?;

    let t0 = Instant::now();
    use futures::StreamExt;
    let ids: Vec<String> = futures::stream::iter(0..args.workflows)
        .map(|i| {
            let http = http.clone();
            let url = format!("{base}/api/v1/workflows");
            async move {
                let r = http
                    .post(url)
                    .json(&json!({ "definition": "sdlc", "input": { "n": i } }))
                    .send()
                    .await?;
                if r.status() != 201 {
                    bail!("create: {} {}", r.status(), r.text().await?);
                }
                let v: Value = r.json().await?;
                Ok(v["id"].as_str().unwrap_or_default().to_owned())
            }
        })
        .buffer_unordered(args.submitters)
        .collect::<Vec<anyhow::Result<String>>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let submitted = t0.elapsed();
    let t_agents = Instant::now();
    if child.is_none() {
        child = Some(spawn_agents()?);
    }
    loop {
        let active: u64 = redis::cmd("ZCARD")
            .arg(keys.workflows_active())
            .query_async(&mut conn)
            .await?;
        if active == 0 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("{active} workflows still active after 600s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let after_agents = t_agents.elapsed().as_secs_f64();
    let store = orchestrator::store::WorkflowStore::new(keys.clone());
    let mut latencies = Vec::new();
    let mut transitions = 0;
    for chunk in ids.chunks(500) {
        for s in store.summaries(&mut conn, chunk).await? {
            let s = s.context("a workflow vanished")?;
            if s.status != orchestrator::machine::WorkflowStatus::Completed {
                bail!("workflow {} ended {:?}", s.id, s.status);
            }
            transitions += s.version;
            latencies.push(s.updated_at_ms.saturating_sub(s.created_at_ms));
        }
    }
    latencies.sort_unstable();
    stop.cancel();
    let _ = server.await;
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
    if args.agents_after_submit {
        // Five result-driven transitions per workflow, agents' start-up included.
        return Ok(json!({
            "result_transitions_per_s": ((ids.len() * 5) as f64 / after_agents).round(),
        }));
    }
    Ok(json!({
        "workflows": ids.len(),
        "workflows_per_s": (ids.len() as f64 / elapsed).round(),
        "stage_transitions_per_s": (transitions as f64 / elapsed).round(),
        "workflow_submit_s": (submitted.as_secs_f64() * 100.0).round() / 100.0,
        "workflow_p50_ms": percentile(&latencies, 0.5),
        "workflow_p99_ms": percentile(&latencies, 0.99),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.redis.validate()?;
    if args.role == "agents" {
        return agents(&args).await;
    }
    agent_sdk::telemetry::init_logging(agent_sdk::LogFormat::Text);
    let figures = orchestrate(&args).await?;
    println!("{figures}");
    Ok(())
}
