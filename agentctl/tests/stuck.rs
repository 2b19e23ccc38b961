//! "Why is this stuck?": each reason a stage that has not ended can give,
//! made to happen for real (a real Redis, the orchestrator in-process, SDK
//! workers), then read from `GET /api/v1/workflows/{id}` and from the real
//! `agentctl workflow get` binary: both must say the same.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agent_sdk::RuntimeConfig;
use agent_sdk::testing::{RunningWorker, TestRedis};
use orchestrator::testing::*;
use orchestrator_server::testing::{InProcess, VIEWER, http, http_as};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(60);

/// Runs the agentctl binary with `args`; (exit code, stdout, stderr).
async fn ctl(redis: &TestRedis, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(["--redis-url", &redis.url(), "--namespace", NS])
        .args(args)
        .env_remove("AGENTIC_REDIS_URL")
        .env_remove("AGENTIC_NAMESPACE")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, out)
        .await
        .expect("agentctl did not finish")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn register(o: &InProcess, yaml: &str) -> Value {
    let r = http()
        .post(o.api("/definitions"))
        .header("content-type", "application/yaml")
        .body(yaml.to_owned())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    r.json().await.unwrap()
}

async fn create(o: &InProcess, definition: &str, input: Value) -> String {
    let r = http()
        .post(o.api("/workflows"))
        .json(&json!({ "definition": definition, "input": input }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// `why` of stage `stage` of workflow `id` from the API (as a viewer).
async fn api_why(o: &InProcess, id: &str, stage: &str) -> Value {
    let r = http_as(VIEWER)
        .get(o.api(&format!("/workflows/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    pick(&v, stage)
}

/// `why` of stage `stage` of workflow `id` from `agentctl --json workflow get`.
async fn ctl_why(redis: &TestRedis, id: &str, stage: &str) -> Value {
    let (code, out, err) = ctl(redis, &["--json", "workflow", "get", id]).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    pick(&v, stage)
}

fn pick(v: &Value, stage: &str) -> Value {
    v["why"]
        .as_array()
        .unwrap_or_else(|| panic!("no why: {v:#}"))
        .iter()
        .find(|w| w["stage"] == stage)
        .map(|w| w["reason"].clone())
        .unwrap_or(Value::Null)
}

/// Waits until the API says stage `stage` of `id` is of `kind`; its reason.
async fn wait_kind(o: &InProcess, id: &str, stage: &str, kind: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = api_why(o, id, stage).await;
        if r["kind"] == kind {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id}/{stage} never became {kind}: {r:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Redis server's clock (ms).
async fn redis_now(redis: &TestRedis) -> u64 {
    let mut c = conn(redis).await;
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    s * 1000 + us / 1000
}

/// One worker of `agent` whose settings `tune` adjusts.
fn worker(
    redis: &TestRedis,
    agent: &str,
    lab: &Arc<Lab>,
    tune: fn(&mut RuntimeConfig),
) -> RunningWorker {
    let mut cfg = worker_config(redis, agent);
    tune(&mut cfg);
    let a = StageAgent {
        agent: agent.into(),
        lab: lab.clone(),
    };
    RunningWorker::spawn(a, agent, cfg)
}

const ONE: &str = "name: one\nstages:\n  - {name: s, agent: q}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_and_queued_behind_n_tasks() {
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, &[]).await;
    register(&o, ONE).await;
    let lab = Arc::new(Lab::default());
    // One slot: the first task runs (and sleeps), the rest wait.
    let w = worker(&redis, "q", &lab, |c| {
        c.concurrency = 1;
        c.batch_size = 1;
        c.shutdown_grace = Duration::from_millis(200);
    });
    let slow = json!({ "sleep_ms": { "s": 20_000 } });
    let first = create(&o, "one", slow.clone()).await;
    let running = wait_kind(&o, &first, "s", "running").await;
    assert_eq!(running["instance"], w.instance_id.as_str(), "{running:#}");
    assert_eq!(running["instance_live"], true);
    assert_eq!(running["deliveries"], 1);
    assert!(running["progress"].is_null());
    assert!(running["entry_id"].as_str().unwrap().contains('-'));
    let mut ahead = Vec::new();
    for _ in 0..3 {
        ahead.push(create(&o, "one", slow.clone()).await);
    }
    let last = create(&o, "one", slow.clone()).await;
    let queued = wait_kind(&o, &last, "s", "queued").await;
    assert_eq!(queued["ahead"], 3, "{queued:#}");
    assert_eq!(queued["at_least"], false);
    assert_eq!(queued["live_instances"], 1);
    // The first one waiting has none ahead.
    assert_eq!(api_why(&o, &ahead[0], "s").await["ahead"], 0);
    // agentctl says the same.
    let c = ctl_why(&redis, &last, "s").await;
    assert_eq!(
        (c["kind"].clone(), c["ahead"].clone()),
        (json!("queued"), json!(3))
    );
    let c = ctl_why(&redis, &first, "s").await;
    assert_eq!(c["kind"], "running");
    assert_eq!(c["instance"], w.instance_id.as_str());
    let (code, out, _) = ctl(&redis, &["workflow", "get", &last]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("waiting for 3 tasks ahead in its stream"),
        "{out}"
    );
    // Nothing ran but the first, which is still running.
    assert!(lab.runs().is_empty());
    w.shutdown().await;
    o.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_live_agent_never_seen_and_since_it_left() {
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, &[]).await;
    register(&o, "name: ghostly\nstages:\n  - {name: s, agent: ghost}\n").await;
    register(&o, "name: leaving\nstages:\n  - {name: s, agent: left}\n").await;
    let id = create(&o, "ghostly", json!({})).await;
    let r = wait_kind(&o, &id, "s", "no_live_agent").await;
    assert!(r["last_seen_ms"].is_null(), "{r:#}");
    assert_eq!(r["ahead"], 0);
    let c = ctl_why(&redis, &id, "s").await;
    assert_eq!(c["kind"], "no_live_agent");
    assert!(c["last_seen_ms"].is_null());
    let (_, out, _) = ctl(&redis, &["workflow", "get", &id]).await;
    assert!(
        out.contains("no live agent of its type (never seen)"),
        "{out}"
    );

    // The only instance of `left` stops while running a task: it leaves
    // the task pending on its consumer and its registry record goes.
    let lab = Arc::new(Lab::default());
    let w = worker(&redis, "left", &lab, |c| {
        c.concurrency = 1;
        c.shutdown_grace = Duration::from_millis(100);
    });
    let gone = w.instance_id.clone();
    let held = create(&o, "leaving", json!({ "sleep_ms": { "s": 30_000 } })).await;
    wait_kind(&o, &held, "s", "running").await;
    let before = redis_now(&redis).await;
    w.shutdown().await;
    let r = wait_kind(&o, &held, "s", "no_live_agent").await;
    let seen = r["last_seen_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("{r:#}"));
    // Last seen by the server's clock: not before it started, not later
    // than now.
    assert!(seen <= redis_now(&redis).await, "{r:#}");
    assert!(seen + 60_000 >= before, "{r:#}");
    assert!(r["ahead"].is_null(), "{r:#}");
    let c = ctl_why(&redis, &held, "s").await;
    assert_eq!(c["kind"], "no_live_agent");
    assert_eq!(c["last_seen_ms"], seen);
    // Its task is pending on the consumer that left.
    let mut conn = conn(&redis).await;
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(keys().tasks(&agent_type("left")))
        .arg("workers")
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1, gone);
    o.shutdown().await;
}

const FRAGILE: &str = r#"
name: fragile
stages:
  - name: scaffold
    agent: scaffold
  - name: e2e
    agent: e2e
    depends_on: [scaffold]
    max_attempts: 1
  - name: deployment
    agent: deployment
    depends_on: [e2e]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettered_with_its_replay_and_stages_waiting_behind_it() {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &["scaffold", "e2e", "deployment"]);
    let o = InProcess::start(&redis, &[]).await;
    register(&o, FRAGILE).await;
    let id = create(&o, "fragile", json!({ "dead_letter": "e2e" })).await;
    let r = wait_kind(&o, &id, "e2e", "dead_lettered").await;
    let mut c = conn(&redis).await;
    type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;
    let dlq: Entries = redis::cmd("XRANGE")
        .arg(keys().dlq(&agent_type("e2e")))
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(dlq.len(), 1);
    let dead_id = &dlq[0].0;
    assert_eq!(r["dead_letter_id"], dead_id.as_str(), "{r:#}");
    assert!(
        r["error"].as_str().unwrap().contains("broken until healed"),
        "{r:#}"
    );
    assert_eq!(
        r["replay_command"],
        format!("agentctl dlq replay e2e {dead_id}")
    );
    assert_eq!(
        r["replay_route"],
        format!("POST /api/v1/workflows/{id}/stages/e2e/replay")
    );
    let w = api_why(&o, &id, "deployment").await;
    assert_eq!(
        w,
        json!({ "kind": "waiting_for_stages", "stages": ["e2e"] })
    );
    // Ended stages give no reason.
    assert!(api_why(&o, &id, "scaffold").await.is_null());
    assert_eq!(ctl_why(&redis, &id, "e2e").await, r);
    assert_eq!(ctl_why(&redis, &id, "deployment").await, w);

    // The command it names replays it, and the workflow completes.
    agents
        .lab
        .healed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (code, _, err) = ctl(&redis, &["dlq", "replay", "e2e", dead_id]).await;
    assert_eq!(code, 0, "{err}");
    let ended = wait_ended(&redis, std::slice::from_ref(&id), PATIENCE).await;
    assert_eq!(
        ended[0].status,
        orchestrator::machine::WorkflowStatus::Completed
    );
    o.shutdown().await;
    agents.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaiting_approval_since_and_retry_scheduled() {
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, &[]).await;
    register(
        &o,
        "name: gated\nstages:\n  - {name: gate, agent: appr, approval: true}\n",
    )
    .await;
    register(
        &o,
        "name: flaky\nstages:\n  - {name: s, agent: flaky, max_attempts: 3}\n",
    )
    .await;
    let before = redis_now(&redis).await;
    let gated = create(&o, "gated", json!({})).await;
    let r = wait_kind(&o, &gated, "gate", "awaiting_approval").await;
    let since = r["since_ms"].as_u64().unwrap_or_else(|| panic!("{r:#}"));
    assert!(since >= before && since <= redis_now(&redis).await, "{r:#}");
    assert_eq!(
        r["approve_command"],
        format!("agentctl workflow approve {gated} gate")
    );
    let c = ctl_why(&redis, &gated, "gate").await;
    assert_eq!(c["kind"], "awaiting_approval");
    assert_eq!(c["since_ms"], since);

    // A retryable failure with a minute of backoff: its retry waits in the
    // delayed set.
    let lab = Arc::new(Lab::default());
    let w = worker(&redis, "flaky", &lab, |c| {
        c.retry.backoff_initial = Duration::from_secs(60);
        c.retry.backoff_max = Duration::from_secs(60);
    });
    let id = create(&o, "flaky", json!({ "dead_letter": "s" })).await;
    let r = wait_kind(&o, &id, "s", "retry_scheduled").await;
    let now = redis_now(&redis).await;
    let due = r["due_ms"].as_u64().unwrap();
    assert!(due > now && due <= now + 130_000, "{r:#} now {now}");
    let c = ctl_why(&redis, &id, "s").await;
    assert_eq!(c["kind"], "retry_scheduled");
    assert_eq!(c["due_ms"], due);
    // It ran once and failed; nothing else ran.
    let runs = lab.runs();
    assert_eq!(runs.len(), 1);
    assert!(!runs[0].ok);
    w.shutdown().await;
    o.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishing_while_no_orchestrator_takes_its_result() {
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, &[]).await;
    register(&o, "name: fin\nstages:\n  - {name: s, agent: fin}\n").await;
    let lab = Arc::new(Lab::default());
    let w = worker(&redis, "fin", &lab, |_| {});
    let id = create(&o, "fin", json!({ "sleep_ms": { "s": 1_000 } })).await;
    wait_kind(&o, &id, "s", "running").await;
    // No orchestrator: the task finishes and its result waits unread.
    o.shutdown().await;
    wait_until("the task ran", PATIENCE, || async { lab.runs().len() == 1 }).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let r = loop {
        let r = ctl_why(&redis, &id, "s").await;
        if r["kind"] != "running" || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(r["kind"], "finishing", "{r:#}");
    assert_eq!(r["scanned"], 0);
    // Its result is in the results stream, unread.
    let results = xlen(&redis, &keys().results(&agent_type("fin"))).await;
    assert_eq!(results, 1);
    assert!(lab.runs()[0].ok);
    w.shutdown().await;
}
