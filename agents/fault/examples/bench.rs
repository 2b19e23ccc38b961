//! Benchmark driver: enqueue rate, end-to-end throughput through one worker
//! process, and enqueue-to-handler-start latency at a steady rate.
//!
//! Build:  cargo build --release -p fault-agent --example bench --bin fault-agent
//! Run:    target/release/examples/bench --redis-url redis://127.0.0.1:6390
//! (or `scripts/bench.sh`, which starts a private Redis first).
//!
//! Prints exactly one JSON object on stdout; progress goes to stderr. Exits
//! non-zero, with `"ok": false` and an `"error"` in the JSON, when a phase
//! fails or its end state is wrong (tasks left, pending entries, dead letters,
//! a missing result).
//!
//! Phases:
//! 1. `enqueue_per_s`: `--tasks` no-op tasks enqueued with
//!    `Client::enqueue_many` (pipelined XADD), no worker running.
//! 2. `tasks_per_s`: one `fault-agent` process is spawned on that backlog; the
//!    results stream's XLEN is polled every 10 ms until it holds every result.
//!    `tasks_per_s` counts from the first result seen to the last,
//!    `tasks_per_s_incl_startup` from the spawn. Results are also stored by
//!    task id (the default `--result-ttl`), as in production: `result_keys`.
//! 3. `p50_ms` … `max_ms`: a fresh worker in a fresh namespace; after a
//!    warm-up, one task every 1/`--rate` s for `--seconds`, each stamped with
//!    its enqueue time; the handler reports how late it started.

use agent_sdk::schemas::codec::{DecodeLimits, decode_any};
use agent_sdk::schemas::{
    AgentType, Encoding, Keys, ResultEnvelope, TaskStatus, WORKERS_GROUP, fields,
};
use agent_sdk::{Client, EnqueueOptions};
use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use fault_agent::{FaultInput, FaultOutput, now_us};
use redis::aio::ConnectionManager;
use redis::streams::{StreamPendingReply, StreamRangeReply};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Agent type served by the `fault-agent` binary.
const AGENT_TYPE: &str = "fault";
/// Echo value marking warm-up tasks of the latency phase.
const WARMUP_MARK: &str = "warmup";
/// Results stream page size when reading results back.
const PAGE: usize = 1000;

/// Benchmarks the runtime against a Redis server with the `fault-agent` binary.
#[derive(Debug, Parser)]
#[command(args_override_self = true)]
struct Cli {
    /// Redis to benchmark against: a private one (scripts/bench.sh starts
    /// one), since the bench writes a lot.
    #[command(flatten)]
    redis: agent_sdk::RedisUrlArgs,

    /// The worker binary (default: `fault-agent` next to this executable or
    /// one directory up, i.e. `target/release/fault-agent`).
    #[arg(long)]
    worker_bin: Option<PathBuf>,

    /// Tasks of the enqueue and throughput phases.
    #[arg(long, default_value_t = 200_000)]
    tasks: u64,

    /// Tasks per second of the latency phase.
    #[arg(long, default_value_t = 1000)]
    rate: u64,

    /// Length of the latency phase's measured window, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,

    /// Warm-up tasks of the latency phase (not measured).
    #[arg(long, default_value_t = 200)]
    warmup: u64,

    /// Worker `--concurrency`. No-op tasks finish in microseconds, so deep
    /// batches are what amortises the round trips (measured: 512 gives ~85k
    /// tasks/s, 2048 ~105k); agents doing real work want far fewer.
    #[arg(long, default_value_t = 2048)]
    concurrency: usize,

    /// Worker `--batch-size`.
    #[arg(long, default_value_t = 512)]
    batch_size: usize,

    /// Namespace of the throughput phase.
    #[arg(long, default_value = "bench")]
    namespace: String,

    /// Namespace of the latency phase.
    #[arg(long, default_value = "bench-lat")]
    latency_namespace: String,

    /// Delete what earlier runs left in the two namespaces first (otherwise a
    /// non-empty namespace is an error).
    #[arg(long)]
    clean: bool,

    /// Give up when the results stream does not grow for this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    stall_timeout: Duration,

    /// Extra flag for both worker processes (repeat it; e.g.
    /// `--worker-arg=--result-ttl=0` to measure without result keys).
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    worker_args: Vec<String>,

    /// Stop after the throughput phase (for profiling it alone); the latency
    /// fields are then missing from the JSON.
    #[arg(long)]
    skip_latency: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help
        Err(e) => {
            let _ = e.print();
            println!("{}", json!({"ok": false, "error": e.kind().to_string()}));
            return ExitCode::from(2);
        }
    };
    let mut report = Map::new();
    let outcome = run(&cli, &mut report).await;
    let code = match outcome {
        Ok(()) => {
            report.insert("ok".into(), json!(true));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench: FAILED: {e:#}");
            report.insert("ok".into(), json!(false));
            report.insert("error".into(), json!(format!("{e:#}")));
            ExitCode::FAILURE
        }
    };
    println!("{}", Value::Object(report));
    code
}

async fn run(cli: &Cli, report: &mut Map<String, Value>) -> Result<()> {
    ensure!(cli.tasks > 0, "--tasks must be above 0");
    ensure!(
        cli.rate > 0 && cli.seconds > 0,
        "--rate and --seconds must be above 0"
    );
    let worker_bin = match &cli.worker_bin {
        Some(p) => p.clone(),
        None => default_worker_bin()?,
    };
    ensure!(
        worker_bin.is_file(),
        "worker binary {} not found (build it: cargo build --release -p agent-sdk --bin fault-agent)",
        worker_bin.display()
    );
    cli.redis.validate()?;
    let agent_type = AgentType::new(AGENT_TYPE)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let client = Client::connect(&cli.redis.url, &cli.namespace)
        .await
        .context("connecting to redis")?;
    let mut conn = client.connection();
    let server = info(&mut conn, "server").await?;
    let redis_version = info_field(&server, "redis_version")
        .unwrap_or("unknown")
        .to_owned();
    eprintln!(
        "bench: redis {redis_version} at {}, {cores} cores, worker {}",
        cli.redis.redacted_url(),
        worker_bin.display()
    );
    report.insert("redis_version".into(), json!(redis_version));
    report.insert("cores".into(), json!(cores));
    report.insert("tasks".into(), json!(cli.tasks));
    report.insert("concurrency".into(), json!(cli.concurrency));
    report.insert("batch_size".into(), json!(cli.batch_size));
    // Results by task id are part of the product: the workers keep the
    // default --result-ttl unless told otherwise.
    let result_keys = result_keys_kept(&cli.worker_args);
    report.insert("result_keys".into(), json!(result_keys));
    if !cli.worker_args.is_empty() {
        report.insert("worker_args".into(), json!(cli.worker_args));
    }

    let worker_args = |namespace: &str| -> Vec<String> {
        vec![
            "--namespace".into(),
            namespace.into(),
            "--concurrency".into(),
            cli.concurrency.to_string(),
            "--batch-size".into(),
            cli.batch_size.to_string(),
        ]
        .into_iter()
        .chain(cli.worker_args.iter().cloned())
        .collect()
    };

    // ---- Phase 1: enqueue rate, no worker running. ----
    let keys = client.keys().clone();
    prepare_namespace(&mut conn, &keys, &agent_type, cli.clean).await?;
    let lat = Client::connect(&cli.redis.url, &cli.latency_namespace)
        .await
        .context("connecting to redis")?;
    let lkeys = lat.keys().clone();
    let mut lconn = lat.connection();
    if !cli.skip_latency {
        ensure!(
            lkeys != keys,
            "--namespace and --latency-namespace must differ"
        );
        prepare_namespace(&mut lconn, &lkeys, &agent_type, cli.clean).await?;
    }
    eprintln!("bench: enqueueing {} tasks", cli.tasks);
    let input = FaultInput::default();
    let started = Instant::now();
    let ids = client
        .enqueue_many(
            &agent_type,
            std::iter::repeat_n(&input, cli.tasks as usize),
            Encoding::MsgPack,
        )
        .await
        .context("enqueue_many")?;
    let enqueue_s = started.elapsed().as_secs_f64();
    let backlog = xlen(&mut conn, &keys.tasks(&agent_type)).await?;
    ensure!(
        backlog == cli.tasks,
        "task stream holds {backlog} entries after enqueueing {}",
        cli.tasks
    );
    report.insert(
        "enqueue_per_s".into(),
        json!(round(cli.tasks as f64 / enqueue_s, 0)),
    );
    eprintln!(
        "bench: enqueued {} in {enqueue_s:.3}s ({:.0}/s)",
        cli.tasks,
        cli.tasks as f64 / enqueue_s
    );

    // ---- Phase 2: throughput through one worker process. ----
    let results_key = keys.results(&agent_type);
    let cpu0 = redis_cpu(&mut conn).await?;
    let stats0 = command_stats(&mut conn).await?;
    let spawned = Instant::now();
    let mut worker = WorkerProc::spawn(&worker_bin, &worker_args(&cli.namespace), &cli.redis.url)?;
    eprintln!("bench: worker pid {} started on the backlog", worker.pid());
    let mut first: Option<(Instant, u64)> = None;
    let mut progress = (Instant::now(), 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let done = loop {
        tick.tick().await;
        let n = xlen(&mut conn, &results_key).await?;
        let now = Instant::now();
        if n > 0 && first.is_none() {
            first = Some((now, n));
        }
        if n >= cli.tasks {
            break now;
        }
        if n != progress.1 {
            progress = (now, n);
        } else if now - progress.0 > cli.stall_timeout {
            bail!(
                "throughput phase: no new result for {:?} ({n}/{} done)",
                cli.stall_timeout,
                cli.tasks
            );
        }
        if let Some(st) = worker.try_wait()? {
            bail!(
                "throughput phase: the worker exited early ({st}) with {n}/{} done",
                cli.tasks
            );
        }
    };
    let worker_cpu = worker.cpu_seconds()?;
    let stats1 = command_stats(&mut conn).await?;
    let redis_cpu_s = redis_cpu(&mut conn).await? - cpu0;
    let rss = worker.peak_rss_mb()?;
    let (t_first, n_first) = first.context("no result seen")?;
    let steady_s = (done - t_first).as_secs_f64();
    let total_s = (done - spawned).as_secs_f64();
    let steady = if steady_s > 0.0 {
        (cli.tasks - n_first) as f64 / steady_s
    } else {
        f64::NAN
    };
    let incl = cli.tasks as f64 / total_s;
    eprintln!(
        "bench: {} results in {total_s:.3}s from spawn ({incl:.0}/s), first result after {:.3}s, \
         steady {steady:.0}/s; worker cpu {worker_cpu:.2}s, redis cpu {redis_cpu_s:.2}s, worker peak rss {rss:.1} MB",
        cli.tasks,
        (t_first - spawned).as_secs_f64()
    );
    report.insert("tasks_per_s".into(), json!(round(steady, 0)));
    report.insert("tasks_per_s_incl_startup".into(), json!(round(incl, 0)));
    report.insert(
        "tasks_per_s_redis_clock".into(),
        json!(round(redis_clock_rate(&mut conn, &results_key).await?, 0)),
    );
    report.insert(
        "first_result_after_s".into(),
        json!(round((t_first - spawned).as_secs_f64(), 3)),
    );
    report.insert("throughput_elapsed_s".into(), json!(round(total_s, 3)));
    report.insert("worker_cpu_s".into(), json!(round(worker_cpu, 2)));
    report.insert("redis_cpu_s".into(), json!(round(redis_cpu_s, 2)));
    report.insert(
        "worker_cpu_us_per_task".into(),
        json!(round(worker_cpu * 1e6 / cli.tasks as f64, 2)),
    );
    report.insert(
        "redis_cpu_us_per_task".into(),
        json!(round(redis_cpu_s * 1e6 / cli.tasks as f64, 2)),
    );
    print_command_stats(&stats0, &stats1, cli.tasks);
    report.insert("worker_rss_mb".into(), json!(round(rss, 1)));
    let mem = info(&mut conn, "memory").await?;
    if let Some(b) = info_field(&mem, "used_memory").and_then(|v| v.parse::<f64>().ok()) {
        report.insert(
            "redis_used_memory_mb".into(),
            json!(round(b / (1024.0 * 1024.0), 1)),
        );
    }
    let (st, stop_s) = worker.stop_timed()?;
    eprintln!("bench: worker stopped in {stop_s:.3}s ({st})");
    report.insert("worker_stop_s".into(), json!(round(stop_s, 3)));
    verify_settled(&mut conn, &keys, &agent_type, cli.tasks, "throughput").await?;
    // Results by task id are part of the product: spot-check them.
    let spot = if result_keys {
        vec![ids.first(), ids.last()]
    } else {
        Vec::new()
    };
    for id in spot.into_iter().flatten() {
        let r = client
            .result(&agent_type, id)
            .await?
            .with_context(|| format!("throughput phase: no result key for task {id}"))?;
        ensure!(
            r.status == TaskStatus::Succeeded,
            "task {id} ended {:?}",
            r.status
        );
    }
    drop(ids);

    if cli.skip_latency {
        return Ok(());
    }

    // ---- Phase 3: latency at a steady rate. ----
    let lresults = lkeys.results(&agent_type);
    let mut worker = WorkerProc::spawn(
        &worker_bin,
        &worker_args(&cli.latency_namespace),
        &cli.redis.url,
    )?;
    eprintln!(
        "bench: latency worker pid {}; warming up with {} tasks",
        worker.pid(),
        cli.warmup
    );
    let period = Duration::from_secs_f64(1.0 / cli.rate as f64);
    if cli.warmup > 0 {
        paced(&lat, &agent_type, cli.warmup, period, true).await?;
    }
    wait_for(
        &mut lconn,
        &lresults,
        cli.warmup,
        Duration::from_secs(30),
        &mut worker,
    )
    .await?;
    let total = cli.rate * cli.seconds;
    eprintln!("bench: measuring {total} tasks at {}/s", cli.rate);
    let (produce_s, max_lag) = paced(&lat, &agent_type, total, period, false).await?;
    wait_for(
        &mut lconn,
        &lresults,
        cli.warmup + total,
        Duration::from_secs(30),
        &mut worker,
    )
    .await?;
    let rss_lat = worker.peak_rss_mb()?;
    let (st, stop_s) = worker.stop_timed()?;
    eprintln!("bench: latency worker stopped in {stop_s:.3}s ({st})");
    report.insert("worker_stop_s_latency".into(), json!(round(stop_s, 3)));
    verify_settled(
        &mut lconn,
        &lkeys,
        &agent_type,
        cli.warmup + total,
        "latency",
    )
    .await?;
    let mut lat_us = read_latencies(&mut lconn, &lresults).await?;
    ensure!(
        lat_us.len() as u64 == total,
        "latency phase: {} measured results, expected {total}",
        lat_us.len()
    );
    lat_us.sort_unstable();
    let pct_ms = |q: f64| round(percentile(&lat_us, q) as f64 / 1000.0, 3);
    report.insert("p50_ms".into(), json!(pct_ms(0.50)));
    report.insert("p99_ms".into(), json!(pct_ms(0.99)));
    report.insert("p999_ms".into(), json!(pct_ms(0.999)));
    report.insert("max_ms".into(), json!(pct_ms(1.0)));
    report.insert("latency_samples".into(), json!(total));
    report.insert("latency_rate".into(), json!(cli.rate));
    report.insert(
        "latency_rate_achieved".into(),
        json!(round(total as f64 / produce_s, 1)),
    );
    report.insert(
        "producer_max_lag_ms".into(),
        json!(round(max_lag.as_secs_f64() * 1000.0, 3)),
    );
    report.insert("worker_rss_mb_latency".into(), json!(round(rss_lat, 1)));
    eprintln!(
        "bench: latency p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
        pct_ms(0.50),
        pct_ms(0.99),
        pct_ms(0.999),
        pct_ms(1.0)
    );
    Ok(())
}

/// Enqueues `n` tasks one every `period`, on a schedule computed from the
/// start so the rate stays exact when one enqueue is late (the next ones catch
/// up at once). Returns the time taken and the worst lateness against the
/// schedule.
async fn paced(
    client: &Client,
    agent_type: &AgentType,
    n: u64,
    period: Duration,
    warmup: bool,
) -> Result<(f64, Duration)> {
    let start = tokio::time::Instant::now();
    let mut max_lag = Duration::ZERO;
    for i in 0..n {
        let due = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        max_lag = max_lag.max(tokio::time::Instant::now() - due);
        let input = FaultInput {
            sent_at_us: Some(now_us()),
            echo: warmup.then(|| json!(WARMUP_MARK)),
            ..FaultInput::default()
        };
        client
            .enqueue(agent_type, &input, EnqueueOptions::default())
            .await
            .context("enqueue")?;
    }
    Ok((start.elapsed().as_secs_f64(), max_lag))
}

/// Waits until the results stream holds `n` entries.
async fn wait_for(
    conn: &mut ConnectionManager,
    results: &str,
    n: u64,
    timeout: Duration,
    worker: &mut WorkerProc,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let have = xlen(conn, results).await?;
        if have >= n {
            return Ok(());
        }
        if let Some(st) = worker.try_wait()? {
            bail!("the worker exited early ({st}) with {have}/{n} results");
        }
        if Instant::now() > deadline {
            bail!("only {have}/{n} results after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Latencies (µs) of the measured (non-warm-up) results, checking each one.
async fn read_latencies(conn: &mut ConnectionManager, results: &str) -> Result<Vec<u64>> {
    let limits = DecodeLimits {
        max_bytes: usize::MAX,
        ..DecodeLimits::default()
    };
    let mut out = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let page: StreamRangeReply = redis::cmd("XRANGE")
            .arg(results)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await?;
        let Some(last) = page.ids.last() else { break };
        start = format!("({}", last.id);
        for sid in &page.ids {
            let body: Vec<u8> = sid
                .get(fields::BODY)
                .with_context(|| format!("result {} has no body", sid.id))?;
            let (env, _) = decode_any::<ResultEnvelope>(&body, limits)
                .with_context(|| format!("result {}", sid.id))?;
            ensure!(
                env.status == TaskStatus::Succeeded,
                "task {} ended {:?}: {:?}",
                env.task_id,
                env.status,
                env.error
            );
            let output = env
                .output
                .with_context(|| format!("task {} has no output", env.task_id))?;
            let output: FaultOutput = serde_json::from_value(output)
                .with_context(|| format!("task {}: output", env.task_id))?;
            if output.echo.as_ref().and_then(Value::as_str) == Some(WARMUP_MARK) {
                continue;
            }
            out.push(
                output
                    .latency_us
                    .with_context(|| format!("task {} reports no latency", env.task_id))?,
            );
        }
        if page.ids.len() < PAGE {
            break;
        }
    }
    Ok(out)
}

/// Whether workers run with these extra flags store results by task id
/// (the last `--result-ttl` given wins; the default TTL is not zero).
fn result_keys_kept(args: &[String]) -> bool {
    let mut ttl: Option<&str> = None;
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix("--result-ttl=") {
            ttl = Some(v);
        } else if a == "--result-ttl" {
            ttl = args.get(i + 1).map(String::as_str);
        }
    }
    ttl.is_none_or(|v| humantime::parse_duration(v).map_or(true, |d| !d.is_zero()))
}

/// Nearest-rank percentile of sorted `v` (`q` in 0..=1).
fn percentile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// Checks a namespace is empty, or empties it with `clean`.
async fn prepare_namespace(
    conn: &mut ConnectionManager,
    keys: &Keys,
    t: &AgentType,
    clean: bool,
) -> Result<()> {
    let streams = [keys.tasks(t), keys.results(t), keys.dlq(t), keys.delayed(t)];
    let existing: u64 = redis::cmd("EXISTS")
        .arg(&streams[..])
        .query_async(conn)
        .await?;
    if existing == 0 {
        return Ok(());
    }
    if !clean {
        bail!(
            "namespace {} already holds data (pass --clean to delete it, or use a fresh redis)",
            keys.namespace()
        );
    }
    eprintln!("bench: cleaning namespace {}", keys.namespace());
    let _: u64 = redis::cmd("UNLINK")
        .arg(&streams[..])
        .query_async(conn)
        .await?;
    let pattern = format!("{}*", keys.result_prefix(t));
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(10_000)
            .query_async(conn)
            .await?;
        if !batch.is_empty() {
            let _: u64 = redis::cmd("UNLINK").arg(&batch).query_async(conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// The end state of a phase: every task settled exactly once, as a success.
async fn verify_settled(
    conn: &mut ConnectionManager,
    keys: &Keys,
    t: &AgentType,
    expected: u64,
    phase: &str,
) -> Result<()> {
    let tasks = xlen(conn, &keys.tasks(t)).await?;
    let pending: StreamPendingReply = redis::cmd("XPENDING")
        .arg(keys.tasks(t))
        .arg(WORKERS_GROUP)
        .query_async(conn)
        .await?;
    let dlq = xlen(conn, &keys.dlq(t)).await?;
    let delayed: u64 = redis::cmd("ZCARD")
        .arg(keys.delayed(t))
        .query_async(conn)
        .await?;
    let results = xlen(conn, &keys.results(t)).await?;
    eprintln!(
        "bench: {phase} end state: tasks {tasks}, pending {}, dlq {dlq}, delayed {delayed}, results {results}/{expected}",
        pending.count()
    );
    ensure!(
        tasks == 0 && pending.count() == 0 && dlq == 0 && delayed == 0 && results == expected,
        "{phase} phase end state wrong: task stream {tasks} (want 0), pending {} (want 0), \
         dlq {dlq} (want 0), delayed {delayed} (want 0), results {results} (want {expected})",
        pending.count()
    );
    Ok(())
}

/// Results per second by the Redis clock: the millisecond parts of the first
/// and last result entry ids.
async fn redis_clock_rate(conn: &mut ConnectionManager, results: &str) -> Result<f64> {
    let ms =
        |r: &StreamRangeReply| -> Option<u64> { r.ids.first()?.id.split('-').next()?.parse().ok() };
    let first: StreamRangeReply = redis::cmd("XRANGE")
        .arg(results)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let last: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(results)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let n = xlen(conn, results).await?;
    match (ms(&first), ms(&last)) {
        (Some(a), Some(b)) if b > a => Ok((n - 1) as f64 / ((b - a) as f64 / 1000.0)),
        _ => Ok(f64::NAN),
    }
}

async fn xlen(conn: &mut ConnectionManager, key: &str) -> Result<u64> {
    Ok(redis::cmd("XLEN").arg(key).query_async(conn).await?)
}

async fn info(conn: &mut ConnectionManager, section: &str) -> Result<String> {
    Ok(redis::cmd("INFO").arg(section).query_async(conn).await?)
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// `INFO commandstats` as command → (calls, usec). Commands run by scripts
/// are counted too (and again inside the script's own `evalsha` time).
async fn command_stats(conn: &mut ConnectionManager) -> Result<BTreeMap<String, (u64, u64)>> {
    let text = info(conn, "commandstats").await?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((name, rest)) = line.trim().split_once(':') else {
            continue;
        };
        let Some(name) = name.strip_prefix("cmdstat_") else {
            continue;
        };
        let field = |k: &str| -> u64 {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        out.insert(name.to_owned(), (field("calls"), field("usec")));
    }
    Ok(out)
}

/// Prints, on stderr, where Redis spent its command time between two
/// `command_stats` snapshots.
fn print_command_stats(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    tasks: u64,
) {
    let mut rows: Vec<(&str, u64, u64)> = after
        .iter()
        .map(|(k, &(c, u))| {
            let (c0, u0) = before.get(k).copied().unwrap_or((0, 0));
            (k.as_str(), c.saturating_sub(c0), u.saturating_sub(u0))
        })
        .filter(|r| r.1 > 0)
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.2));
    eprintln!(
        "bench: redis command time during the throughput phase (scripted commands also inside evalsha):"
    );
    eprintln!(
        "bench:   {:<14} {:>10} {:>10} {:>10} {:>11}",
        "command", "calls", "usec", "usec/call", "usec/task"
    );
    for (name, calls, usec) in rows {
        eprintln!(
            "bench:   {name:<14} {calls:>10} {usec:>10} {:>10.2} {:>11.2}",
            usec as f64 / calls as f64,
            usec as f64 / tasks as f64
        );
    }
}

/// Redis's user + system CPU seconds so far.
async fn redis_cpu(conn: &mut ConnectionManager) -> Result<f64> {
    let cpu = info(conn, "cpu").await?;
    let get = |name: &str| -> Result<f64> {
        info_field(&cpu, name)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("INFO cpu has no {name}"))
    };
    Ok(get("used_cpu_user")? + get("used_cpu_sys")?)
}

fn default_worker_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe.parent().context("this executable has no directory")?;
    let here = dir.join("fault-agent");
    if here.is_file() {
        return Ok(here);
    }
    // Examples live in target/<profile>/examples/, binaries one level up.
    Ok(dir.parent().map(|d| d.join("fault-agent")).unwrap_or(here))
}

/// A spawned worker process, stopped with SIGTERM (SIGKILL after 10 s) when
/// asked or when dropped.
struct WorkerProc {
    child: Child,
    done: Option<ExitStatus>,
}

impl WorkerProc {
    /// The URL goes in the environment: a password on the command line is
    /// readable by every user of the host.
    fn spawn(bin: &Path, args: &[String], redis_url: &str) -> Result<Self> {
        let child = Command::new(bin)
            .args(args)
            .env("AGENTIC_REDIS_URL", redis_url)
            .env_remove("AGENTIC_REDIS_URL_FILE")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        Ok(Self { child, done: None })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.done.is_none() {
            self.done = self.child.try_wait()?;
        }
        Ok(self.done)
    }

    fn status_file(&self, name: &str) -> Result<String> {
        let path = format!("/proc/{}/{name}", self.pid());
        std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
    }

    /// Peak resident set size (VmHWM) in MiB.
    fn peak_rss_mb(&self) -> Result<f64> {
        let status = self.status_file("status")?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/<pid>/status")?;
        Ok(kb / 1024.0)
    }

    /// User + system CPU seconds used so far.
    fn cpu_seconds(&self) -> Result<f64> {
        let stat = self.status_file("stat")?;
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 of the whole line, 12 and 13 after the name.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed /proc/<pid>/stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> Result<f64> {
            f.get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .context("malformed /proc/<pid>/stat")
        };
        Ok((ticks(11)? + ticks(12)?) / clock_ticks())
    }

    /// [`WorkerProc::stop`], and how long the process took to exit (seconds).
    fn stop_timed(&mut self) -> Result<(ExitStatus, f64)> {
        let t = Instant::now();
        let st = self.stop()?;
        Ok((st, t.elapsed().as_secs_f64()))
    }

    /// SIGTERM, then SIGKILL if the process is still there after 10 s.
    fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.try_wait()? {
            return Ok(st);
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(st) = self.try_wait()? {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "bench: worker {} ignored SIGTERM for 10s; killing it",
            self.pid()
        );
        self.child.kill()?;
        let st = self.child.wait()?;
        self.done = Some(st);
        Ok(st)
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("bench: cannot stop worker {}: {e:#}", self.pid());
        }
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
