//! The stage-replay route finds its dead letter through the dlq-index,
//! however many dead letters lie around it.

use super::*;
use orchestrator::machine::WorkflowStatus;
use serde_json::json;
use std::time::Instant;

const FRAGILE: &str = r#"
name: fragile
stages:
  - name: scaffold
    agent: scaffold
  - name: e2e
    agent: e2e
    depends_on: [scaffold]
    max_attempts: 1
"#;

/// Adds `n` dead letters of other tasks to `t`'s DLQ the way a DLQ written
/// before the index existed holds them: stream entries, no index entry.
async fn other_dead_letters(redis: &TestRedis, t: &str, tag: &str, n: usize) {
    let mut c = conn(redis).await;
    let key = keys().dlq(&agent_type(t));
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("agent_type")
                .arg(t)
                .arg("task_id")
                .arg(format!("other-{tag}-{i}"))
                .arg("reason")
                .arg("permanent")
                .arg("error")
                .arg("another task's failure")
                .arg("attempts")
                .arg(1)
                .arg("worker")
                .arg("w")
                .arg("failed_at_ms")
                .arg(1)
                .arg("source_id")
                .arg("1-0")
                .arg("raw.id")
                .arg(format!("other-{tag}-{i}"))
                .ignore();
        }
        let () = pipe.query_async(&mut c).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_replay_finds_its_dead_letter_behind_10500_others() {
    const AROUND: usize = 10_500;
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &["scaffold", "e2e"]);
    let o = InProcess::start(&redis, &[]).await;
    let http = http();
    register(&http, &o, FRAGILE).await;
    // 10,500 older dead letters ahead of it (what an oldest-first scan of
    // 10,000 entries gave up on: 409 before the index)…
    other_dead_letters(&redis, "e2e", "old", AROUND).await;
    let id = create(&http, &o.url, "fragile", json!({ "dead_letter": "e2e" })).await;
    wait_status(&redis, &id, WorkflowStatus::Blocked).await;
    // …and 10,500 newer ones after it, so a newest-first scan would miss
    // it as well: only the index finds it.
    other_dead_letters(&redis, "e2e", "new", AROUND).await;
    let dlq_key = keys().dlq(&agent_type("e2e"));
    assert_eq!(xlen(&redis, &dlq_key).await, 2 * AROUND as u64 + 1);

    agents
        .lab
        .healed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    let r = http
        .post(o.api(&format!("/workflows/{id}/stages/e2e/replay")))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    println!(
        "stage replay behind {AROUND} older and {AROUND} newer dead letters: {:.1} ms",
        took.as_secs_f64() * 1000.0
    );
    let ended = wait_ended(&redis, std::slice::from_ref(&id), PATIENCE).await;
    assert_eq!(ended[0].status, WorkflowStatus::Completed);
    // Exactly its own dead letter left the DLQ, and its index entry with it.
    assert_eq!(xlen(&redis, &dlq_key).await, 2 * AROUND as u64);
    let mut c = conn(&redis).await;
    let indexed: u64 = redis::cmd("HLEN")
        .arg(keys().dlq_index(&agent_type("e2e")))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(indexed, 0);
    // Every stage ran to success once; e2e failed once before.
    let ok = agents.lab.ok_counts();
    assert_eq!(ok.get(&(id.clone(), "scaffold".into())), Some(&1));
    assert_eq!(ok.get(&(id.clone(), "e2e".into())), Some(&1));
    let e2e_runs = agents
        .lab
        .runs()
        .iter()
        .filter(|r| r.stage == "e2e")
        .count();
    assert_eq!(e2e_runs, 2);
    o.shutdown().await;
    agents.shutdown().await;
}
