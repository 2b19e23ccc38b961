//! `agentctl agents` and `agentctl streams` on a live fleet: a worker whose
//! handler is stuck with work waiting is WEDGED, the backlog head's age is
//! shown, and an idle live worker counts as a consumer on Redis 7.0 (which
//! adds a consumer to the group only once a read returned entries).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agent_sdk::testing::{Ledger, RunningWorker, TestRedis, short_timings, wait_until};
use agent_sdk::{Agent, AgentError, Client, EnqueueOptions, TaskContext};
use orchestrator::testing::{NS, agent_type, keys};
use serde_json::Value;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(60);

async fn ctl(redis: &TestRedis, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(["--redis-url", &redis.url(), "--namespace", NS])
        .args(args)
        .env_remove("AGENTIC_REDIS_URL")
        .env_remove("AGENTIC_NAMESPACE")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, out)
        .await
        .expect("agentctl did not finish")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn ctl_json(redis: &TestRedis, args: &[&str]) -> Value {
    let (code, out) = ctl(redis, args).await;
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Holds every task until released.
struct Gate(Arc<AtomicBool>);

impl Agent for Gate {
    type Input = Value;
    type Output = Value;

    async fn handle(&self, _ctx: &TaskContext, input: Value) -> Result<Value, AgentError> {
        while !self.0.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(input)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_shows_a_stuck_worker_wedged_and_streams_the_waiting_age_and_idle_consumers() {
    let redis = TestRedis::start();
    let open = Arc::new(AtomicBool::new(false));
    let stuck = RunningWorker::spawn(
        Gate(open.clone()),
        "stuck",
        agent_sdk::RuntimeConfig {
            concurrency: 1,
            ..short_timings(&redis, NS, "stuck")
        },
    );
    let idle = RunningWorker::spawn(
        Gate(Arc::new(AtomicBool::new(true))),
        "quiet",
        short_timings(&redis, NS, "quiet"),
    );
    let client = Client::connect(&redis.url(), NS).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..2 {
        let e = client
            .enqueue(
                &agent_type("stuck"),
                &serde_json::json!({ "n": i }),
                EnqueueOptions::default(),
            )
            .await
            .unwrap();
        ids.push(e.task_id);
    }
    wait_until(PATIENCE, "the stuck worker listed wedged", || async {
        let v = ctl_json(&redis, &["agents", "--wedged-after", "1s", "--json"]).await;
        v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["instance_id"] == stuck.instance_id.as_str() && a["state"] == "wedged")
    })
    .await;
    let v = ctl_json(&redis, &["agents", "--wedged-after", "1s", "--json"]).await;
    let types = v["types"].as_array().unwrap();
    let of = |t: &str| types.iter().find(|s| s["agent_type"] == t).unwrap().clone();
    assert_eq!(
        (of("stuck")["live"].as_u64(), of("stuck")["wedged"].as_u64()),
        (Some(1), Some(1))
    );
    // Nothing waits for the idle one: ready, however long it has been quiet.
    assert_eq!(
        (of("quiet")["live"].as_u64(), of("quiet")["wedged"].as_u64()),
        (Some(1), Some(0))
    );
    let (code, table) = ctl(&redis, &["agents", "--wedged-after", "1s"]).await;
    assert_eq!(code, 0);
    assert!(table.contains("WEDGED (idle"), "{table}");
    // With the default --wedged-after nobody is wedged.
    let (_, table) = ctl(&redis, &["agents"]).await;
    assert!(!table.contains("WEDGED (idle"), "{table}");
    // One page of one type.
    let v = ctl_json(&redis, &["agents", "--type", "quiet", "--json"]).await;
    assert_eq!(v["agents"].as_array().unwrap().len(), 1);
    assert_eq!(v["agents"][0]["instance_id"], idle.instance_id.as_str());

    let v = ctl_json(&redis, &["streams", "--json"]).await;
    let streams = v["streams"].as_array().unwrap();
    let of = |t: &str| {
        streams
            .iter()
            .find(|s| s["agent_type"] == t)
            .unwrap()
            .clone()
    };
    // The second task waits undelivered; the first is pending.
    assert!(
        of("stuck")["oldest_waiting_age_ms"].as_u64().is_some(),
        "{v}"
    );
    assert!(
        of("stuck")["oldest_pending_age_ms"].as_u64().is_some(),
        "{v}"
    );
    // The idle worker never got an entry: Redis 7.0's group has no consumer
    // for it, the column counts it all the same.
    assert_eq!(of("quiet")["consumers"].as_u64(), Some(1), "{v}");
    assert!(of("quiet")["oldest_waiting_age_ms"].is_null(), "{v}");
    let (_, table) = ctl(&redis, &["streams"]).await;
    assert!(table.contains("OLDEST WAITING"), "{table}");

    // Released, both tasks succeed, once each.
    open.store(true, Ordering::Relaxed);
    wait_until(PATIENCE, "both tasks settled", || async {
        Ledger::read(&redis, &keys(), &agent_type("stuck")).settled() == 2
    })
    .await;
    stuck.shutdown().await;
    idle.shutdown().await;
    Ledger::read(&redis, &keys(), &agent_type("stuck")).assert_exact(&ids, &[]);
}

/// Reports progress, then holds its task until released.
struct Reporting(Arc<AtomicBool>);

impl Agent for Reporting {
    type Input = Value;
    type Output = Value;

    async fn handle(&self, ctx: &TaskContext, input: Value) -> Result<Value, AgentError> {
        ctx.progress(0.42, "linking\u{1b}[31m objects");
        while !self.0.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(input)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_watch_prints_the_running_stages_progress() {
    use tokio::io::AsyncBufReadExt;
    let redis = TestRedis::start();
    let o = orchestrator_server::testing::InProcess::start(&redis, &[]).await;
    let r = orchestrator_server::testing::http()
        .post(o.api("/definitions"))
        .header("content-type", "application/yaml")
        .body("name: slow\nstages:\n  - name: link\n    agent: linker\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let open = Arc::new(AtomicBool::new(false));
    let worker = RunningWorker::spawn(
        Reporting(open.clone()),
        "linker",
        short_timings(&redis, NS, "linker"),
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(["--redis-url", &redis.url(), "--namespace", NS])
        .args(["workflow", "submit", "slow", "--input", "{}", "--watch"])
        .env_remove("AGENTIC_REDIS_URL")
        .env_remove("AGENTIC_NAMESPACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let line = loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("no progress line")
            .unwrap()
            .expect("watch ended before any progress");
        if line.contains("progress") {
            break line;
        }
    };
    assert!(line.contains("link") && line.contains("42%"), "{line}");
    // The escape character a handler sent never reaches the terminal.
    assert!(
        line.contains("linking[31m objects") && !line.contains('\u{1b}'),
        "{line}"
    );
    open.store(true, Ordering::Relaxed);
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("watch did not end")
        .unwrap();
    assert!(status.success(), "the workflow completed: {status:?}");
    worker.shutdown().await;
    o.shutdown().await;
}
