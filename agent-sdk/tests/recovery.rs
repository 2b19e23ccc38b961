//! Recovery without idle waits, against a real redis-server: out of memory
//! and freed again under three busy workers, and a Redis freeze (SIGSTOP)
//! longer than `--claim-idle` under workers running long tasks.
//!
//! Every test ends by accounting for every task it enqueued.

#![allow(clippy::unwrap_used)]

mod common;

use agent_sdk::testing::TestRedis;
use agent_sdk::{Agent, AgentError, RuntimeConfig, TaskContext};
use common::*;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A field of `INFO <section>`.
fn info_field(redis: &TestRedis, section: &str, name: &str) -> String {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query(&mut redis.connection())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// How many calls Redis refused with `OOM` so far.
fn oom_refusals(redis: &TestRedis) -> u64 {
    let line = info_field(redis, "errorstats", "errorstat_OOM");
    line.strip_prefix("count=")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Sleeps a little, counts the handlers that ended, succeeds.
#[derive(Clone, Default)]
struct Counted {
    ended: Arc<AtomicUsize>,
}

impl Agent for Counted {
    type Input = serde_json::Value;
    type Output = serde_json::Value;

    async fn handle(
        &self,
        _ctx: &TaskContext,
        input: serde_json::Value,
    ) -> Result<serde_json::Value, AgentError> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.ended.fetch_add(1, Ordering::SeqCst);
        Ok(input)
    }
}

fn config(redis: &TestRedis, instance: &str) -> RuntimeConfig {
    RuntimeConfig {
        concurrency: 4,
        instance_id: Some(instance.into()),
        ..common::config(redis)
    }
}

/// Three workers have finished tasks they cannot commit: Redis is out of
/// memory (`maxmemory`, `noeviction`). Once the memory is freed, every
/// commit goes through at once: no worker sits out a long backoff step
/// while its finished tasks hold their slots and leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freed_memory_settles_the_last_task_within_two_seconds() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let agent = Counted::default();
    let workers: Vec<_> = ["oom-a", "oom-b", "oom-c"]
        .into_iter()
        .map(|w| start(agent.clone(), config(&redis, w)))
        .collect();
    // Every slot busy: 3 workers × 4 slots.
    let ids = enqueue_n(&client, 12, &sleep_input(0)).await;
    wait_until(WAIT, "every task delivered", || async {
        pending(&redis).len() == 12
    })
    .await;

    // Out of memory: a big key (built in small pieces: a big argument's
    // query buffer would count as used memory until freed), then a limit
    // below what is used.
    let mut conn = redis.connection();
    for _ in 0..32 {
        let _: u64 = redis::cmd("APPEND")
            .arg("ballast")
            .arg(vec![b'x'; 256 * 1024])
            .query(&mut conn)
            .unwrap();
    }
    let used: u64 = info_field(&redis, "memory", "used_memory").parse().unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used - 2 * 1024 * 1024)
        .query(&mut conn)
        .unwrap();
    let before = oom_refusals(&redis);
    wait_until(WAIT, "every handler ended", || async {
        agent.ended.load(Ordering::SeqCst) == 12
    })
    .await;
    // Memory stays full for 3 s while the workers hold finished tasks whose
    // commits are refused, again and again: long enough for an exponential
    // backoff to have grown to seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        oom_refusals(&redis) > before + 12,
        "commits were refused with OOM"
    );
    assert_eq!(
        ledger(&redis).settled(),
        0,
        "nothing committed while out of memory"
    );

    let _: () = redis::cmd("DEL").arg("ballast").query(&mut conn).unwrap();
    let freed = Instant::now();
    wait_settled(&redis, 12).await;
    let took = freed.elapsed();
    println!(
        "last task settled {} ms after memory was freed",
        took.as_millis()
    );
    assert!(
        took < Duration::from_secs(2),
        "the last task settled {took:?} after memory was freed (bound: 2 s)"
    );

    for w in workers {
        w.shutdown().await;
    }
    ledger(&redis).assert_exact(&ids, &[]);
}

/// Redis is frozen (SIGSTOP) for 10 s while workers run long tasks: on
/// resume every entry looks idle far beyond `--claim-idle`, yet the workers
/// are alive. The reclaimer sees the server's clock jump, waits for the
/// workers to renew their tasks, and takes none of them over: every task is
/// delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_freeze_takes_no_task_from_a_live_worker() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let workers: Vec<_> = ["frz-a", "frz-b", "frz-c"]
        .into_iter()
        .map(|w| start_fault(config(&redis, w)))
        .collect();
    // Longer than the freeze, so they still run when Redis comes back.
    let ids = enqueue_n(&client, 12, &sleep_input(13_000)).await;
    wait_until(WAIT, "every task delivered", || async {
        pending(&redis).len() == 12
    })
    .await;
    let pid = info_field(&redis, "server", "process_id");
    let kill = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    kill("-STOP");
    tokio::time::sleep(Duration::from_secs(10)).await;
    kill("-CONT");

    // Until everything is settled, no entry may be delivered twice.
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ledger(&redis).settled() < 12 {
        assert!(
            Instant::now() < deadline,
            "not settled: {:#?}",
            ledger(&redis)
        );
        for (id, owner, n) in pending(&redis) {
            assert_eq!(
                n, 1,
                "entry {id} delivered {n} times (now at {owner}) after the freeze"
            );
            most = most.max(n);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("most deliveries of any entry across a 10 s freeze: {most}");
    for w in workers {
        w.shutdown().await;
    }
    ledger(&redis).assert_exact(&ids, &[]);
}

/// The holder of the fault type's janitor lease, if any.
fn janitor_holder(redis: &TestRedis) -> Option<String> {
    redis::cmd("HGET")
        .arg(keys().janitor(&fault_type()))
        .arg("holder")
        .query(&mut redis.connection())
        .unwrap()
}

/// One instance of an agent type holds the janitor lease (promoter and
/// reclaimer) and keeps it; when it stops, another takes over, and delayed
/// tasks are still promoted and run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_janitor_per_agent_type_and_another_takes_over() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let names = ["jan-a", "jan-b", "jan-c"];
    let mut workers: Vec<_> = names
        .into_iter()
        .map(|w| Some(start_fault(config(&redis, w))))
        .collect();
    wait_until(WAIT, "a janitor lease holder", || async {
        janitor_holder(&redis).is_some()
    })
    .await;
    let first = janitor_holder(&redis).unwrap();
    assert!(names.contains(&first.as_str()), "holder {first}");
    // Several renewal periods: it keeps the lease, nobody else takes it.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(janitor_holder(&redis).as_deref(), Some(first.as_str()));
    }

    let i = names.iter().position(|n| *n == first).unwrap();
    workers[i].take().unwrap().shutdown().await;
    wait_until(WAIT, "another holder of the janitor lease", || async {
        janitor_holder(&redis).is_some_and(|h| h != first && names.contains(&h.as_str()))
    })
    .await;

    // Delayed tasks need the new holder's promoter.
    let mut ids = Vec::new();
    for _ in 0..5 {
        let opts = agent_sdk::EnqueueOptions {
            delay: Some(Duration::from_millis(300)),
            ..agent_sdk::EnqueueOptions::default()
        };
        ids.push(
            client
                .enqueue(&fault_type(), &sleep_input(10), opts)
                .await
                .unwrap()
                .task_id,
        );
    }
    ids.extend(enqueue_n(&client, 5, &sleep_input(10)).await);
    wait_settled(&redis, 10).await;
    for w in workers.into_iter().flatten() {
        w.shutdown().await;
    }
    ledger(&redis).assert_exact(&ids, &[]);
}

/// Records the Redis server's time (ms) when each handler starts.
#[derive(Clone)]
struct Clocked {
    redis: redis::Client,
    started_ms: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl Agent for Clocked {
    type Input = serde_json::Value;
    type Output = serde_json::Value;

    async fn handle(
        &self,
        _ctx: &TaskContext,
        input: serde_json::Value,
    ) -> Result<serde_json::Value, AgentError> {
        let mut c = self
            .redis
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| AgentError::retryable(e.to_string()))?;
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut c)
            .await
            .map_err(|e| AgentError::retryable(e.to_string()))?;
        self.started_ms
            .lock()
            .unwrap()
            .push(secs * 1000 + micros / 1000);
        Ok(input)
    }
}

/// The server's clock jumped since the janitor lease's last renewal (as
/// after a freeze): the instance that takes the lease over claims nothing
/// before the hold is over, however long the entries look idle, so that
/// live workers can renew first. Checked on the server's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_clock_jump_claims_wait_for_the_hold() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    create_group(&redis);
    let ids = enqueue_n(&client, 1, &sleep_input(0)).await;
    // Delivered to a consumer that then stopped, idle for ten minutes.
    deliver_unseen(&redis, "stopped");
    let mut conn = redis.connection();
    let entry = pending(&redis)[0].0.clone();
    let _: Vec<String> = redis::cmd("XCLAIM")
        .arg(keys().tasks(&fault_type()))
        .arg("workers")
        .arg("stopped")
        .arg(0)
        .arg(&entry)
        .arg("IDLE")
        .arg(600_000)
        .arg("JUSTID")
        .query(&mut conn)
        .unwrap();
    // The lease was last renewed a minute ago and has lapsed.
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut conn).unwrap();
    let now = secs * 1000 + micros / 1000;
    let _: () = redis::cmd("HSET")
        .arg(keys().janitor(&fault_type()))
        .arg("holder")
        .arg("stopped")
        .arg("expires")
        .arg(now - 1)
        .arg("tick")
        .arg(now - 60_000)
        .arg("hold_until")
        .arg(0)
        .query(&mut conn)
        .unwrap();

    let agent = Clocked {
        redis: redis::Client::open(redis.url()).unwrap(),
        started_ms: Arc::default(),
    };
    let cfg = config(&redis, "after-jump");
    // The hold the runtime documents: three renewal periods.
    let hold = 3 * cfg.lease_renew.as_millis() as u64;
    let worker = start(agent.clone(), cfg);
    wait_settled(&redis, 1).await;
    worker.shutdown().await;
    let hold_until: u64 = redis::cmd("HGET")
        .arg(keys().janitor(&fault_type()))
        .arg("hold_until")
        .query(&mut conn)
        .unwrap();
    let started = agent.started_ms.lock().unwrap().clone();
    assert!(
        hold_until >= now + hold,
        "the new holder set a hold of {hold} ms from its takeover (hold until {hold_until}, lease lapsed at {now})"
    );
    assert_eq!(started.len(), 1, "the task ran once: {started:?}");
    assert!(
        started[0] >= hold_until,
        "the abandoned task was claimed at {} ms, before the hold ended at {hold_until} ms",
        started[0]
    );
    ledger(&redis).assert_exact(&ids, &[]);
}

const WAIT: Duration = Duration::from_secs(30);
