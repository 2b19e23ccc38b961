//! Liveness that tells the truth, with real `fault-agent` processes and a
//! real Redis: a killed worker stays listed `gone` with its last-seen time, a
//! worker whose handler is stuck while its heartbeats go on is `wedged`, a
//! worker's `/live` and `/ready` follow its loops and Redis, handler progress
//! reaches Redis once per heartbeat whatever its rate, and a type's fleet
//! summary costs one script call at 10,000 instances.

#![allow(clippy::unwrap_used)]

mod common;

use agent_sdk::{Agent, AgentError, EnqueueOptions, TaskContext};
use common::*;
use orchestrator::ops::fleet::{self, FleetSettings, InstanceStatus, InstanceView};
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

async fn aconn(redis: &TestRedis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn settings(wedged_after: Duration) -> FleetSettings {
    FleetSettings {
        wedged_after,
        keep_gone: Duration::from_secs(3600),
    }
}

async fn view_of(redis: &TestRedis, id: &str, s: &FleetSettings) -> Option<InstanceView> {
    let mut c = aconn(redis).await;
    fleet::instances(&mut c, &keys(), &fault_type(), s)
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.record.record.instance_id == id)
}

/// Polls instance `id` until `want` holds for it; its view then.
async fn wait_view(
    redis: &TestRedis,
    id: &str,
    s: &FleetSettings,
    what: &str,
    want: impl Fn(&InstanceView) -> bool,
) -> InstanceView {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = view_of(redis, id, s).await;
        if let Some(v) = v.filter(|v| want(v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: not {what} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One plain HTTP/1.1 GET: status and body (the test needs no client crate).
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_listed_gone_with_its_last_seen_time() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let s = settings(Duration::from_secs(300));
    let mut a = daemon(&config(&redis), "worker-gone");
    let live = wait_view(&redis, "worker-gone", &s, "ready", |v| {
        v.state == InstanceStatus::Ready
    })
    .await;
    a.kill9();
    let killed = Instant::now();
    let gone = wait_view(&redis, "worker-gone", &s, "gone", |v| {
        v.state == InstanceStatus::Gone
    })
    .await;
    let took = killed.elapsed();
    // Its last-seen time is its last heartbeat, before the kill.
    assert!(gone.record.record.last_seen_ms >= live.record.record.last_seen_ms);
    assert!(gone.heartbeat_age_ms > 0);
    println!(
        "kill -9 worker listed gone after {} ms, last seen {} ms before that reading",
        took.as_millis(),
        gone.heartbeat_age_ms
    );
    // Its old registry record expires while the fleet still lists it gone.
    wait_until(WAIT, "the registry record expires", || async {
        client
            .agents()
            .await
            .unwrap()
            .iter()
            .all(|r| r.instance_id != "worker-gone")
    })
    .await;
    let mut c = aconn(&redis).await;
    let sum = fleet::summary(&mut c, &keys(), &fault_type(), &s)
        .await
        .unwrap();
    assert_eq!((sum.total, sum.live, sum.gone), (1, 0, 1), "{sum:?}");
    assert!(sum.newest_heartbeat_age_ms.is_some(), "{sum:?}");
    let still = view_of(&redis, "worker-gone", &s).await.unwrap();
    assert_eq!(still.state, InstanceStatus::Gone);
    assert_eq!(
        still.record.record.last_seen_ms,
        gone.record.record.last_seen_ms
    );
    // Past --keep-gone it is forgotten.
    let short = FleetSettings {
        keep_gone: Duration::from_millis(1),
        ..s
    };
    let sum = fleet::summary(&mut c, &keys(), &fault_type(), &short)
        .await
        .unwrap();
    assert_eq!(sum.total, 0, "{sum:?}");
    assert!(view_of(&redis, "worker-gone", &s).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_handler_blocks_while_heartbeats_go_on_is_reported_wedged() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let cfg = agent_sdk::RuntimeConfig {
        concurrency: 1,
        ..config(&redis)
    };
    let mut w = daemon(&cfg, "worker-stuck");
    // Its one slot runs a task that never ends (well past the test); the
    // second waits in the stream, undelivered.
    let stuck = enqueue(&client, &sleep_input(600_000)).await;
    let waiting = enqueue(&client, &sleep_input(0)).await;
    let wedged_after = Duration::from_millis(1000);
    let short = settings(wedged_after);
    let long = settings(Duration::from_secs(3600));
    let v = wait_view(&redis, "worker-stuck", &short, "wedged", |v| {
        v.state == InstanceStatus::Wedged
    })
    .await;
    // Heartbeats go on: its record is newer than its last sign of work.
    assert!(v.heartbeat_age_ms < v.idle_ms, "{v:?}");
    assert!(v.idle_ms > wedged_after.as_millis() as u64, "{v:?}");
    assert_eq!(v.record.record.in_flight, 1, "{v:?}");
    let mut c = aconn(&redis).await;
    let sum = fleet::summary(&mut c, &keys(), &fault_type(), &short)
        .await
        .unwrap();
    assert_eq!((sum.live, sum.wedged), (1, 1), "{sum:?}");
    assert_eq!(sum.wedged_instances, vec!["worker-stuck".to_owned()]);
    assert!(
        sum.oldest_waiting_age_ms.is_some(),
        "the second task waits: {sum:?}"
    );
    // The same instance judged with a long --wedged-after is ready.
    let sum = fleet::summary(&mut c, &keys(), &fault_type(), &long)
        .await
        .unwrap();
    assert_eq!((sum.live, sum.wedged), (1, 0), "{sum:?}");
    assert_eq!(
        view_of(&redis, "worker-stuck", &long).await.unwrap().state,
        InstanceStatus::Ready
    );
    // Account for both tasks: the wedged worker is killed, and a worker
    // with a short handler timeout takes both over.
    w.kill9();
    let rescue = agent_sdk::RuntimeConfig {
        task_timeout: Duration::from_millis(200),
        ..config(&redis)
    };
    let r = start_fault(rescue);
    let ledger = settle(&redis, 2).await;
    // The stuck task times out on each attempt and is dead-lettered; the
    // waiting one succeeds.
    ledger.assert_exact(&[waiting], &[stuck]);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_live_and_ready_follow_its_loops_and_redis() {
    let mut redis = TestRedis::start();
    let cfg = config(&redis);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut args = flags(&cfg);
    args.extend([
        "--instance-id".into(),
        "worker-probed".into(),
        "--health-listen".into(),
        addr.clone(),
    ]);
    let mut w = Proc::spawn(
        "worker-probed",
        env!("CARGO_BIN_EXE_fault-agent"),
        &args,
        &[("RUST_LOG", "info")],
        redis.dir().join("worker-probed.log"),
    );
    let ready = |want: u16| {
        let addr = addr.clone();
        move || {
            let r = get(&addr, "/ready");
            async move { r.is_some_and(|(s, _)| s == want) }
        }
    };
    wait_until(WAIT, "/ready 200", ready(200)).await;
    assert_eq!(get(&addr, "/live").map(|r| r.0), Some(200));

    redis.kill();
    let killed = Instant::now();
    wait_until(WAIT, "/ready 503 once redis is gone", ready(503)).await;
    let took = killed.elapsed();
    let (_, why) = get(&addr, "/ready").unwrap();
    assert!(why.contains("redis"), "{why}");
    // Its loops still run (waiting for Redis): live.
    assert_eq!(get(&addr, "/live").map(|r| r.0), Some(200));
    println!(
        "redis killed: worker /ready 503 after {} ms: {}",
        took.as_millis(),
        why.trim()
    );

    redis.restart();
    wait_until(WAIT, "/ready 200 with redis back", ready(200)).await;
    // A draining worker's reader has stopped: not live, not ready.
    w.signal("TERM");
    w.wait_exit(WAIT).await;
    assert!(
        get(&addr, "/live").is_none(),
        "the listener ends with the worker"
    );
}

/// Reports progress `REPORTS` times as fast as it can, then waits until
/// released: a handler that is busy and says so.
struct Reporter {
    release: Arc<AtomicBool>,
}

const REPORTS: u32 = 100_000;

impl Agent for Reporter {
    type Input = serde_json::Value;
    type Output = u32;

    async fn handle(
        &self,
        ctx: &TaskContext,
        _input: serde_json::Value,
    ) -> Result<u32, AgentError> {
        for i in 1..=REPORTS {
            ctx.progress(i as f32 / REPORTS as f32, &format!("step {i}"));
        }
        // Handler-chosen text: a terminal escape and a very long line.
        ctx.progress(0.5, &format!("\u{1b}[2J<b>{}", "x".repeat(5000)));
        while !self.release.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(REPORTS)
    }
}

fn evalsha_calls(redis: &TestRedis) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.connection())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_coalesced_per_heartbeat_bounded_and_removed_when_the_task_settles() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let release = Arc::new(AtomicBool::new(false));
    let w = start(
        Reporter {
            release: release.clone(),
        },
        config(&redis),
    );
    let before = evalsha_calls(&redis);
    let task = client
        .enqueue(
            &fault_type(),
            &serde_json::json!({}),
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .task_id;
    let mut c = aconn(&redis).await;
    let deadline = Instant::now() + WAIT;
    let p = loop {
        let got = fleet::progress(&mut c, &keys(), &fault_type(), &[&task])
            .await
            .unwrap();
        if let Some(p) = got.get(&task).filter(|p| p.fraction == 0.5) {
            break p.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no final progress within {WAIT:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let scripts = evalsha_calls(&redis) - before;
    // 100,001 reports cost a handful of script calls (heartbeats, reads'
    // claims, promotes), not one each.
    assert!(
        scripts < 1000,
        "{scripts} script calls for {REPORTS} reports"
    );
    assert_eq!(p.instance, w.instance_id);
    assert!(
        p.message.starts_with("[2J<b>xxx"),
        "control characters dropped: {:?}",
        p.message
    );
    assert!(p.message.len() <= agent_sdk::schemas::registry::MAX_PROGRESS_MESSAGE);
    assert!(p.at_ms > 0);
    println!("{REPORTS} progress reports: {scripts} script calls of any kind meanwhile");
    release.store(true, Ordering::Relaxed);
    let ledger = settle(&redis, 1).await;
    ledger.assert_exact(std::slice::from_ref(&task), &[]);
    wait_until(WAIT, "the settled task's progress is removed", || async {
        let mut c = aconn(&redis).await;
        fleet::progress(&mut c, &keys(), &fault_type(), &[&task])
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_summary_at_10000_instances_is_one_cheap_script_call() {
    const N: u64 = 10_000;
    const GONE: u64 = 100;
    const WEDGED: u64 = 50;
    let redis = TestRedis::start();
    let t = fault_type();
    let k = keys();
    let mut c = aconn(&redis).await;
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    let now = secs * 1000 + micros / 1000;
    // 10,000 registered instances, as their heartbeats would leave them:
    // 100 gone (expired), 50 wedged (quiet for 10 min, holding a task).
    let mut pipe = redis::pipe();
    for i in 0..N {
        let id = format!("host-{i}");
        let gone = i < GONE;
        let wedged = (GONE..GONE + WEDGED).contains(&i);
        let record = serde_json::json!({
            "instance_id": id, "agent_type": "fault", "version": "0", "host": "h",
            "pid": i, "started_at_ms": now - 60_000, "last_seen_ms": now - 100,
            "status": "ready", "concurrency": 4, "in_flight": u32::from(wedged),
            "processed": 0, "failed": 0, "expires_at_ms": now + 60_000,
        });
        let expires = if gone { now - 1000 } else { now + 60_000 };
        let active = if wedged { now - 600_000 } else { now - 100 };
        pipe.hset(k.fleet(&t), &id, record.to_string())
            .ignore()
            .zadd(k.fleet_seen(&t), &id, now - 100)
            .ignore()
            .zadd(k.fleet_expires(&t), &id, expires)
            .ignore()
            .zadd(k.fleet_active(&t), &id, active)
            .ignore();
    }
    let () = pipe.query_async(&mut c).await.unwrap();
    let s = settings(Duration::from_secs(300));
    let sum = fleet::summary(&mut c, &k, &t, &s).await.unwrap();
    assert_eq!(
        (sum.total, sum.live, sum.gone, sum.wedged),
        (N, N - GONE, GONE, WEDGED),
        "{sum:?}"
    );
    // Its cost on the server, by Redis's own accounting.
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut c)
        .await
        .unwrap();
    const CALLS: u32 = 200;
    let t0 = Instant::now();
    for _ in 0..CALLS {
        fleet::summary(&mut c, &k, &t, &s).await.unwrap();
    }
    let round_trip = t0.elapsed() / CALLS;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    let usec: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("usec_per_call=")))
        .and_then(|v| v.parse().ok())
        .expect("evalsha stats");
    println!(
        "fleet summary at {N} instances ({WEDGED} wedged): {usec:.1} µs of Redis CPU per call (one call per type), {} µs per round trip from the test",
        round_trip.as_micros()
    );
    // The same fleet with no quiet instance: the summary's base cost.
    let mut pipe = redis::pipe();
    for i in GONE..GONE + WEDGED {
        pipe.zadd(k.fleet_active(&t), format!("host-{i}"), now)
            .ignore();
    }
    let () = pipe.query_async(&mut c).await.unwrap();
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut c)
        .await
        .unwrap();
    for _ in 0..CALLS {
        let s = fleet::summary(&mut c, &k, &t, &s).await.unwrap();
        assert_eq!(s.wedged, 0);
    }
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    let base: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("usec_per_call=")))
        .and_then(|v| v.parse().ok())
        .expect("evalsha stats");
    println!("fleet summary at {N} instances, none wedged: {base:.1} µs of Redis CPU per call");
    // Put them back: the paging below counts them wedged.
    let mut pipe = redis::pipe();
    for i in GONE..GONE + WEDGED {
        pipe.zadd(k.fleet_active(&t), format!("host-{i}"), now - 600_000)
            .ignore();
    }
    let () = pipe.query_async(&mut c).await.unwrap();
    // Paging lists every instance exactly once, with its state.
    let all = fleet::instances(&mut c, &k, &t, &s).await.unwrap();
    let mut ids: Vec<&str> = all
        .iter()
        .map(|v| v.record.record.instance_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len() as u64, N);
    let count = |st: InstanceStatus| all.iter().filter(|v| v.state == st).count() as u64;
    assert_eq!(
        (
            count(InstanceStatus::Gone),
            count(InstanceStatus::Wedged),
            count(InstanceStatus::Ready)
        ),
        (GONE, WEDGED, N - GONE - WEDGED)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_silent_for_a_week_are_forgotten_by_a_workers_heartbeat() {
    let redis = TestRedis::start();
    let (t, k) = (fault_type(), keys());
    let mut c = aconn(&redis).await;
    let (secs, _): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    let day = 24 * 3600 * 1000;
    let now = secs * 1000;
    for (id, age) in [("eight-days", 8 * day), ("six-days", 6 * day)] {
        let () = redis::pipe()
            .hset(k.fleet(&t), id, "{}")
            .ignore()
            .zadd(k.fleet_seen(&t), id, now - age)
            .ignore()
            .zadd(k.fleet_expires(&t), id, now - age + 600)
            .ignore()
            .zadd(k.fleet_active(&t), id, now - age)
            .ignore()
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let w = start_fault(config(&redis));
    wait_until(WAIT, "the week-old instance is forgotten", || async {
        let mut c = aconn(&redis).await;
        let known: bool = redis::cmd("HEXISTS")
            .arg(k.fleet(&t))
            .arg("eight-days")
            .query_async(&mut c)
            .await
            .unwrap();
        !known
    })
    .await;
    let seen: Vec<String> = redis::cmd("ZRANGE")
        .arg(k.fleet_seen(&t))
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!seen.contains(&"eight-days".to_owned()), "{seen:?}");
    assert!(
        seen.contains(&"six-days".to_owned()),
        "a younger one stays: {seen:?}"
    );
    assert!(seen.contains(&w.instance_id), "{seen:?}");
    w.shutdown().await;
}
