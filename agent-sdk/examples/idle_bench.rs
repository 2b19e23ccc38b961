//! The idle benchmark's processes (driven by `scripts/idle-bench.sh`).
//!
//! `idle_bench workers --instances N`: runs N idle worker instances of a
//! no-op agent in this process, sharing one connector (so the process
//! holds two connections), with default settings, until SIGTERM.
//!
//! `idle_bench reclaim --pending N`: puts N tasks in a stream, delivers them
//! all to a consumer that then goes away, and runs reclaim passes over that
//! pending list as the worker's reader does: once with entries abandoned
//! (each pass claims a batch), once with none old enough (each pass scans
//! its window and claims nothing), and once the scan the reader made before
//! (`XPENDING … IDLE` over the whole list). Prints one JSON object with the
//! Redis CPU per call of each, from `INFO commandstats`.
use agent_sdk::connection::Connector;
use agent_sdk::stream::{GroupReader, ReadPolicy};
use agent_sdk::{Agent, AgentError, RedisArgs, RuntimeConfig, TaskContext, Worker};
use clap::{Parser, Subcommand};
use std::time::Duration;

struct Noop;

/// Claims every abandoned entry, and asks for a reclaim pass at every step.
struct PassNow;

impl ReadPolicy for PassNow {
    fn reclaim_now(&self) -> bool {
        true
    }
}

impl Agent for Noop {
    type Input = serde_json::Value;
    type Output = serde_json::Value;

    async fn handle(
        &self,
        _ctx: &TaskContext,
        input: serde_json::Value,
    ) -> Result<serde_json::Value, AgentError> {
        Ok(input)
    }
}

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Idle worker instances until SIGTERM.
    Workers {
        #[arg(long)]
        redis_url: String,
        #[arg(long, default_value = "idlebench")]
        namespace: String,
        /// Worker instances in this process.
        #[arg(long, default_value_t = 100)]
        instances: usize,
        /// Agent type of the instances.
        #[arg(long, default_value = "idler")]
        agent_type: String,
        /// Heartbeat period (the runtime's default when not given).
        #[arg(long, value_parser = humantime::parse_duration)]
        heartbeat: Option<Duration>,
    },
    /// Reclaim cost per call at a long pending list.
    Reclaim {
        #[arg(long)]
        redis_url: String,
        /// Entries pending at a consumer that is gone.
        #[arg(long, default_value_t = 200_000)]
        pending: usize,
        /// Reclaim passes measured per case.
        #[arg(long, default_value_t = 100)]
        calls: usize,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().mode {
        Mode::Workers {
            redis_url,
            namespace,
            instances,
            agent_type,
            heartbeat,
        } => workers(redis_url, namespace, instances, agent_type, heartbeat).await,
        Mode::Reclaim {
            redis_url,
            pending,
            calls,
        } => reclaim(redis_url, pending, calls).await,
    }
}

async fn workers(
    url: String,
    namespace: String,
    instances: usize,
    agent_type: String,
    heartbeat: Option<Duration>,
) -> anyhow::Result<()> {
    let stop = agent_sdk::shutdown::on_signals()?;
    let connector = Connector::new(&url)?;
    let mut handles = Vec::new();
    for _ in 0..instances {
        let mut cfg = RuntimeConfig {
            redis: RedisArgs::new(url.clone(), namespace.clone()),
            ..RuntimeConfig::default()
        };
        if let Some(h) = heartbeat {
            cfg.heartbeat = h;
        }
        let worker = Worker::builder(Noop)
            .agent_type(agent_type.clone())
            .config(cfg)
            .connector(connector.clone())
            .build()?;
        handles.push(tokio::spawn(worker.run_until(stop.clone())));
        // Spread the start-up, as a fleet's would be.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for h in handles {
        h.await??;
    }
    Ok(())
}

/// `(calls, usec)` of one command in `INFO commandstats`.
async fn stat(c: &mut redis::aio::MultiplexedConnection, cmd: &str) -> anyhow::Result<(u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await?;
    let prefix = format!("cmdstat_{cmd}:");
    let Some(line) = info.lines().find(|l| l.starts_with(&prefix)) else {
        return Ok((0, 0));
    };
    let field = |name: &str| -> u64 {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("calls"), field("usec")))
}

async fn passes(
    url: &str,
    c: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    claim_idle: Duration,
    calls: usize,
) -> anyhow::Result<(f64, usize)> {
    let connector = Connector::new(url)?;
    let mut conn = connector.conn("bench", Duration::from_secs(10));
    let stop = agent_sdk::CancellationToken::new();
    let before = stat(c, "evalsha").await?;
    let mut claimed = 0;
    let mut ran = 0;
    let mut reader = GroupReader::new(
        stream,
        "workers",
        format!("bench-reclaimer-{}", claim_idle.as_millis()),
        claim_idle,
        Duration::from_millis(10),
    );
    while ran < calls {
        let Some(t) = reader.next(&mut conn, &stop, 64, &PassNow).await else {
            anyhow::bail!("reader stopped");
        };
        claimed += t.entries.len();
        ran += 1;
    }
    let after = stat(c, "evalsha").await?;
    // The first call of a script may be an EVALSHA refused with NOSCRIPT
    // (then loaded): counted, cheap, and it only lowers the average a little.
    let per_call = (after.1 - before.1) as f64 / (after.0 - before.0).max(1) as f64;
    Ok((per_call, claimed))
}

async fn reclaim(url: String, pending: usize, calls: usize) -> anyhow::Result<()> {
    let client = redis::Client::open(url.as_str())?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let stream = "idlebench:agent:{reclaim}:tasks";
    let _: () = redis::cmd("DEL").arg(stream).query_async(&mut c).await?;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("workers")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await?;
    let mut left = pending;
    while left > 0 {
        let n = left.min(5000);
        let mut pipe = redis::pipe();
        for _ in 0..n {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("body")
                .arg("{}")
                .ignore();
        }
        let _: () = pipe.query_async(&mut c).await?;
        left -= n;
    }
    // Delivered in chunks: a reply of every entry at once would outlast the
    // connection's response timeout.
    for _ in 0..pending.div_ceil(5000) {
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("workers")
            .arg("gone")
            .arg("COUNT")
            .arg(5000)
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(&mut c)
            .await?;
    }
    // Let every entry be idle for a while at the consumer that is gone.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Abandoned: idle 200 ms is old enough, every pass claims a batch.
    let (claiming, claimed) =
        passes(&url, &mut c, stream, Duration::from_millis(200), calls).await?;
    // Nothing old enough (idle an hour): every pass scans its window only.
    let (scanning, _) = passes(&url, &mut c, stream, Duration::from_secs(3600), calls).await?;
    // The scan the reader made before: XPENDING … IDLE from the start.
    let before = stat(&mut c, "xpending").await?;
    for _ in 0..5 {
        let _: redis::Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg("workers")
            .arg("IDLE")
            .arg(3_600_000)
            .arg("-")
            .arg("+")
            .arg(200)
            .query_async(&mut c)
            .await?;
    }
    let after = stat(&mut c, "xpending").await?;
    let old = (after.1 - before.1) as f64 / (after.0 - before.0).max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "pending": pending,
            "reclaim_us_per_call": (claiming * 10.0).round() / 10.0,
            "reclaim_claimed": claimed,
            "reclaim_scan_only_us_per_call": (scanning * 10.0).round() / 10.0,
            "old_xpending_idle_us_per_call": old.round(),
        })
    );
    Ok(())
}
