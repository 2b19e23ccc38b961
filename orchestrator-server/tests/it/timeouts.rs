//! One timeout, one outcome: a stage's `timeout` is both the orchestrator's
//! deadline and the agent's handler timeout, and whichever notices first —
//! or a dead letter that comes after the deadline while no orchestrator
//! ran — the stage has timed out: the workflow is compensated and ends
//! `failed`, never `blocked`, and leaves no dead letter behind. Real
//! orchestrator processes, stage agents on the SDK; every workflow counted.

use crate::common::*;
use orchestrator::machine::WorkflowStatus;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(90);

/// `prep` (compensated) then `slow`, whose single attempt sleeps past its
/// 1 s timeout: the agent's timeout and the orchestrator's deadline race.
const RACY: &str = r#"
name: racy
stages:
  - name: prep
    agent: prep
    compensate: { input: { action: undo } }
  - name: slow
    agent: slow
    depends_on: [prep]
    timeout: 1s
    max_attempts: 1
"#;

/// One stage of two attempts that each fail after 1.5 s: the second fails
/// after the 2 s deadline, dead-lettered for "retries used up".
const LATE: &str = r#"
name: late
stages:
  - name: slow
    agent: slow
    timeout: 2s
    max_attempts: 2
"#;

async fn register(http: &reqwest::Client, base: &str, yaml: &str) {
    let r = http
        .post(format!("{base}/api/v1/definitions"))
        .header("content-type", "application/yaml")
        .body(yaml.to_owned())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
}

/// Waits until every workflow of `ids` has settled (ended, or blocked on a
/// dead letter, which no timeout would move any more); the count by status.
async fn settle(redis: &TestRedis, ids: &[String]) -> BTreeMap<String, usize> {
    let settled = |s: WorkflowStatus| s.is_terminal() || s == WorkflowStatus::Blocked;
    let mut by = BTreeMap::new();
    wait_until("every workflow settled", PATIENCE, || {
        let ids = ids.to_vec();
        async move {
            let s = summaries(redis, &ids).await;
            s.iter().flatten().filter(|s| settled(s.status)).count() == ids.len()
        }
    })
    .await;
    for s in summaries(redis, ids).await.into_iter().flatten() {
        *by.entry(s.status.as_str().to_owned()).or_default() += 1;
    }
    by
}

/// `(entries ever added, entries left)` of a stream (`XINFO STREAM`).
async fn added_and_left(redis: &TestRedis, key: &str) -> (u64, u64) {
    let mut c = conn(redis).await;
    let info: redis::Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap_or(redis::Value::Nil);
    let redis::Value::Array(kv) = &info else {
        return (0, 0);
    };
    let mut added = 0;
    let mut len = 0;
    for pair in kv.chunks(2) {
        let k: String = redis::from_redis_value_ref(&pair[0]).unwrap_or_default();
        match k.as_str() {
            "entries-added" => added = redis::from_redis_value_ref(&pair[1]).unwrap_or(0),
            "length" => len = redis::from_redis_value_ref(&pair[1]).unwrap_or(0),
            _ => {}
        }
    }
    (added, len)
}

/// Waits until the agents have published `n` results of type `agent` and
/// the orchestrators have applied and deleted every one (dead letters
/// behind them are deleted before that), then returns the dead letters of
/// `agent` left.
async fn dead_letters_left(redis: &TestRedis, agent: &str, n: u64) -> u64 {
    let results = keys().results(&agent_type(agent));
    wait_until("every result of the slow stage applied", PATIENCE, || {
        let results = results.clone();
        async move { added_and_left(redis, &results).await == (n, 0) }
    })
    .await;
    xlen(redis, &keys().dlq(&agent_type(agent))).await
}

/// Dispatches of stage `stage` (not its compensation) in workflow `id`'s
/// event log.
async fn dispatches(redis: &TestRedis, id: &str, stage: &str) -> usize {
    log(redis, id)
        .await
        .iter()
        .flat_map(|e| e.dispatched.clone())
        .filter(|s| s == stage)
        .count()
}

async fn race(replicas: usize) {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &["prep", "slow"]);
    let mut procs = Vec::new();
    for i in 0..replicas {
        procs.push(Proc::spawn(&redis, &format!("orch-{i}"), &[]).await);
    }
    let http = http();
    register(&http, &procs[0].url, RACY).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let base = &procs[i % replicas].url;
        let input = json!({ "n": i, "sleep_ms": { "slow": 2000 } });
        ids.push(create(&http, base, "racy", input).await);
    }
    let by = settle(&redis, &ids).await;
    eprintln!("{replicas} replica(s): outcomes {by:?}");
    assert_eq!(by.get("failed"), Some(&30), "outcomes: {by:?}");
    assert_eq!(by.get("blocked"), None, "outcomes: {by:?}");
    // Compensated: each prep ran once and was undone once; slow was
    // dispatched once.
    let ok = agents.lab.ok_counts();
    for id in &ids {
        assert_eq!(ok.get(&(id.clone(), "prep".into())), Some(&1), "{id}");
        assert_eq!(ok.get(&(id.clone(), "prep.undo".into())), Some(&1), "{id}");
        assert_eq!(dispatches(&redis, id, "slow").await, 1, "{id}");
    }
    // Every slow task was dead-lettered by its agent (a timeout, once): 30
    // results, and no dead letter left for a workflow that has failed.
    assert_eq!(dead_letters_left(&redis, "slow", 30).await, 0);
    agents.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_timeouts_fail_every_workflow_with_one_replica() {
    race(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_timeouts_fail_every_workflow_with_two_replicas() {
    race(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_after_a_deadline_missed_by_a_dead_orchestrator_fails_the_workflow() {
    let redis = TestRedis::start();
    let mut first = Proc::spawn(&redis, "orch-a", &[]).await;
    let http = http();
    register(&http, &first.url, LATE).await;
    // Each attempt fails (retryably) after 1.5 s: the second one is
    // dead-lettered 1 s after the 2 s deadline, as "retries used up".
    let mut ids = Vec::new();
    for i in 0..20 {
        let input = json!({ "n": i, "sleep_ms": { "slow": 1500 }, "dead_letter": "slow" });
        ids.push(create(&http, &first.url, "late", input).await);
    }
    // Down before any task runs: nobody fires the deadlines.
    first.kill9();
    let agents = Agents::start(&redis, &["slow"]);
    let dlq = keys().dlq(&agent_type("slow"));
    wait_until("every task dead-lettered", PATIENCE, || {
        let dlq = dlq.clone();
        let redis = &redis;
        async move { xlen(redis, &dlq).await == 20 }
    })
    .await;
    let s = summaries(&redis, &ids).await;
    assert!(
        s.iter()
            .flatten()
            .all(|s| s.status == WorkflowStatus::Running),
        "nothing moved while no orchestrator ran"
    );
    // The next orchestrator finds both the passed deadlines and the dead
    // letters: in whichever order it takes them, every stage timed out.
    let second = Proc::spawn(&redis, "orch-b", &[]).await;
    let by = settle(&redis, &ids).await;
    eprintln!("after the outage: outcomes {by:?}");
    assert_eq!(by.get("failed"), Some(&20), "outcomes: {by:?}");
    assert_eq!(by.get("blocked"), None, "outcomes: {by:?}");
    for id in &ids {
        assert_eq!(dispatches(&redis, id, "slow").await, 1, "{id}");
    }
    assert_eq!(dead_letters_left(&redis, "slow", 20).await, 0);
    assert!(second.log_text().contains("orchestrator serving"));
    agents.shutdown().await;
}

/// One stage, one attempt, no timeout to speak of: a retryable failure is
/// dead-lettered and blocks the workflow.
const BLOCKY: &str = r#"
name: blocky
stages:
  - name: slow
    agent: slow
    max_attempts: 1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_workflow_keeps_its_dead_letter_until_it_is_aborted() {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &["slow"]);
    let o = Proc::spawn(&redis, "orch-a", &[]).await;
    let http = http();
    register(&http, &o.url, BLOCKY).await;
    let id = create(&http, &o.url, "blocky", json!({ "dead_letter": "slow" })).await;
    let by = settle(&redis, std::slice::from_ref(&id)).await;
    assert_eq!(by.get("blocked"), Some(&1), "{by:?}");
    // Blocked on it: the operator's to replay, so it stays.
    assert_eq!(dead_letters_left(&redis, "slow", 1).await, 1);
    let r = http
        .post(o.api(&format!("/workflows/{id}/abort")))
        .json(&json!({ "reason": "given up" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let ended = wait_ended(&redis, std::slice::from_ref(&id), PATIENCE).await;
    assert_eq!(ended[0].status, WorkflowStatus::Failed);
    // Ended: it leaves no dead letter of its stages behind.
    assert_eq!(xlen(&redis, &keys().dlq(&agent_type("slow"))).await, 0);
    agents.shutdown().await;
}
