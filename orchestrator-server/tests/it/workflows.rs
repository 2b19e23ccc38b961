//! Workflows end to end: a real Redis, the orchestrator in-process, stage
//! agents on the SDK.

use crate::common::*;
use agent_sdk::testing::TestRedis;
use orchestrator::machine::WorkflowStatus;
use serde_json::{Value, json};
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(60);

async fn register(http: &reqwest::Client, o: &InProcess, yaml: &str) {
    let r = http
        .post(o.api("/definitions"))
        .header("content-type", "application/yaml")
        .body(yaml.to_owned())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
}

async fn get(http: &reqwest::Client, o: &InProcess, id: &str) -> Value {
    http.get(o.api(&format!("/workflows/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdlc_runs_through_all_five_stages() {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &SDLC);
    let o = InProcess::start(&redis, &[]).await;
    let http = http();
    let id = create(&http, &o.url, "sdlc", json!({ "project": "demo" })).await;
    wait_ended(&redis, std::slice::from_ref(&id), PATIENCE).await;

    let wf = get(&http, &o, &id).await;
    assert_eq!(wf["status"], "completed", "{wf:#}");
    assert_eq!(wf["progress"], 100);
    for (i, s) in SDLC.iter().enumerate() {
        let st = &wf["stages"][i];
        assert_eq!(st["name"], *s);
        assert_eq!(st["status"], "completed");
        assert_eq!(st["output"]["stage"], *s, "{st:#}");
        assert_eq!(st["output"]["agent"], *s);
        // Each stage got the output of the one before it.
        let deps: Vec<&str> = if i == 0 { vec![] } else { vec![SDLC[i - 1]] };
        assert_eq!(st["output"]["deps"], json!(deps));
        assert!(st["started_at_ms"].as_u64().unwrap() <= st["finished_at_ms"].as_u64().unwrap());
        assert_eq!(wf["stage_details"][i]["attempt"], 1);
    }

    let log = log(&redis, &id).await;
    assert_log_completed_once(&id, &log, &SDLC);
    let kinds: Vec<(&str, Option<&str>)> = log
        .iter()
        .map(|e| (e.kind.as_str(), e.stage.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("started", None),
            ("task_succeeded", Some("scaffold")),
            ("task_succeeded", Some("validation")),
            ("task_succeeded", Some("e2e")),
            ("task_succeeded", Some("integration")),
            ("task_succeeded", Some("deployment")),
        ]
    );
    assert_eq!(log[0].dispatched, vec!["scaffold"]);
    assert_eq!(log[1].dispatched, vec!["validation"]);
    assert!(log[5].dispatched.is_empty());

    // The API's copy of the log matches.
    let api_log: Value = http
        .get(o.api(&format!("/workflows/{id}/log")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api_log["items"].as_array().unwrap().len(), 6);

    // Exactly one run per stage; nothing undone.
    let counts = agents.lab.ok_counts();
    assert_eq!(counts.len(), 5, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    o.shutdown().await;
    agents.shutdown().await;
}

const DIAMOND: &str = r#"
name: diamond
stages:
  - name: a
    agent: alpha
  - name: b
    agent: beta
    depends_on: [a]
  - name: c
    agent: gamma
    depends_on: [a]
  - name: d
    agent: alpha
    depends_on: [b, c]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_stages_run_in_parallel() {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &["alpha", "beta", "gamma"]);
    let o = InProcess::start(&redis, &[]).await;
    let http = http();
    register(&http, &o, DIAMOND).await;
    let input = json!({ "sleep_ms": { "b": 600, "c": 600 } });
    let id = create(&http, &o.url, "diamond", input).await;
    let ended = wait_ended(&redis, std::slice::from_ref(&id), PATIENCE).await;
    assert_eq!(ended[0].status, WorkflowStatus::Completed);

    // One transition dispatched b and c together ...
    let log = log(&redis, &id).await;
    assert_eq!(log[1].stage.as_deref(), Some("a"));
    assert_eq!(log[1].dispatched, vec!["b", "c"]);
    // ... and d waited for both.
    let d_input_deps = &get(&http, &o, &id).await["stages"][3]["output"]["deps"];
    assert_eq!(d_input_deps, &json!(["b", "c"]));
    // Their agents ran them at the same time.
    let runs = agents.lab.runs();
    let b = runs.iter().find(|r| r.stage == "b").unwrap();
    let c = runs.iter().find(|r| r.stage == "c").unwrap();
    assert!(
        b.started < c.finished && c.started < b.finished,
        "b and c did not overlap: {b:?} {c:?}"
    );
    o.shutdown().await;
    agents.shutdown().await;
}

/// scaffold and validation are undone by their own agents; deployment
/// by a rollback.
const UNDOABLE: &str = r#"
name: undoable
stages:
  - name: scaffold
    agent: scaffold
    compensate: { input: { action: delete } }
  - name: validation
    agent: validation
    depends_on: [scaffold]
    compensate: { input: { action: forget } }
  - name: e2e
    agent: e2e
    depends_on: [validation]
  - name: integration
    agent: integration
    depends_on: [e2e]
  - name: deployment
    agent: deployment
    depends_on: [integration]
    compensate: { input: { action: rollback } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_compensates_in_reverse_and_fails() {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &SDLC);
    let o = InProcess::start(&redis, &[]).await;
    let http = http();
    register(&http, &o, UNDOABLE).await;
    let id = create(&http, &o.url, "undoable", json!({ "fail": "e2e" })).await;
    let ended = wait_ended(&redis, std::slice::from_ref(&id), PATIENCE).await;
    assert_eq!(ended[0].status, WorkflowStatus::Failed);

    let wf = get(&http, &o, &id).await;
    let status = |i: usize| wf["stages"][i]["status"].as_str().unwrap().to_owned();
    assert_eq!(status(2), "failed");
    assert!(
        wf["stages"][2]["error"]
            .as_str()
            .unwrap()
            .contains("fails as asked")
    );
    assert_eq!(status(3), "skipped");
    assert_eq!(status(4), "skipped");
    assert_eq!(wf["stages"][0]["compensation"]["status"], "done");
    assert_eq!(wf["stages"][1]["compensation"]["status"], "done");
    assert_eq!(wf["ending"]["kind"], "failed");

    // Deployment and integration never ran; the undos ran newest first.
    let runs = agents.lab.runs();
    assert!(
        runs.iter()
            .all(|r| r.stage != "deployment" && r.stage != "integration"),
        "{runs:?}"
    );
    let undos: Vec<&str> = runs
        .iter()
        .filter(|r| r.undo)
        .map(|r| r.stage.as_str())
        .collect();
    assert_eq!(undos, vec!["validation", "scaffold"]);
    let log = log(&redis, &id).await;
    let kinds: Vec<(&str, Option<&str>)> = log
        .iter()
        .map(|e| (e.kind.as_str(), e.stage.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("started", None),
            ("task_succeeded", Some("scaffold")),
            ("task_succeeded", Some("validation")),
            ("task_failed", Some("e2e")),
            ("task_succeeded", Some("validation.undo")),
            ("task_succeeded", Some("scaffold.undo")),
        ]
    );
    assert_eq!(log[3].dispatched, vec!["validation.undo"]);
    assert_eq!(log.last().unwrap().status, WorkflowStatus::Failed);
    o.shutdown().await;
    agents.shutdown().await;
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
async fn dead_lettered_stage_blocks_until_replayed() {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &["scaffold", "e2e", "deployment"]);
    let o = InProcess::start(&redis, &[]).await;
    let http = http();
    register(&http, &o, FRAGILE).await;
    let id = create(&http, &o.url, "fragile", json!({ "dead_letter": "e2e" })).await;
    let mut c = conn(&redis).await;
    wait_until("workflow blocked", PATIENCE, || {
        let (redis, id) = (&redis, id.clone());
        async move {
            summaries(redis, &[id]).await[0]
                .as_ref()
                .is_some_and(|s| s.status == WorkflowStatus::Blocked)
        }
    })
    .await;
    let wf = get(&http, &o, &id).await;
    assert_eq!(wf["stages"][1]["status"], "dead_lettered");
    assert_eq!(wf["stages"][2]["status"], "pending");
    let dlq_len: u64 = redis::cmd("XLEN")
        .arg(keys().dlq(&agent_type("e2e")))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(dlq_len, 1);

    // Replaying a stage that is not dead-lettered is refused.
    let r = http
        .post(o.api(&format!("/workflows/{id}/stages/scaffold/replay")))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    agents
        .lab
        .healed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let r = http
        .post(o.api(&format!("/workflows/{id}/stages/e2e/replay")))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let ended = wait_ended(&redis, std::slice::from_ref(&id), PATIENCE).await;
    assert_eq!(ended[0].status, WorkflowStatus::Completed);
    let dlq_len: u64 = redis::cmd("XLEN")
        .arg(keys().dlq(&agent_type("e2e")))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(dlq_len, 0);
    let log = log(&redis, &id).await;
    assert_log_completed_once(&id, &log, &["scaffold", "e2e", "deployment"]);
    let kinds: Vec<&str> = log.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "started",
            "task_succeeded",
            "task_dead_lettered",
            "replayed",
            "task_succeeded",
            "task_succeeded"
        ]
    );
    // The audit trail: the replay names the token that did it.
    assert_eq!(log[3].event["by"], "test-admin", "{:?}", log[3]);
    // The same task id ran twice (failed, then replayed); every other once.
    let e2e_runs: Vec<_> = agents
        .lab
        .runs()
        .into_iter()
        .filter(|r| r.stage == "e2e")
        .collect();
    assert_eq!(e2e_runs.len(), 2);
    assert_eq!(e2e_runs[0].task_id, e2e_runs[1].task_id);
    assert_eq!(e2e_runs.iter().filter(|r| r.ok).count(), 1);
    o.shutdown().await;
    agents.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_a_blocked_workflow_compensates_it() {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &SDLC);
    let o = InProcess::start(&redis, &[]).await;
    let http = http();
    register(
        &http,
        &o,
        &UNDOABLE.replace("agent: e2e\n", "agent: e2e\n    max_attempts: 1\n"),
    )
    .await;
    let id = create(&http, &o.url, "undoable", json!({ "dead_letter": "e2e" })).await;
    wait_until("workflow blocked", PATIENCE, || {
        let (redis, id) = (&redis, id.clone());
        async move {
            summaries(redis, &[id]).await[0]
                .as_ref()
                .is_some_and(|s| s.status == WorkflowStatus::Blocked)
        }
    })
    .await;
    let r = http
        .post(o.api(&format!("/workflows/{id}/abort")))
        .json(&json!({ "reason": "bad build" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let ended = wait_ended(&redis, std::slice::from_ref(&id), PATIENCE).await;
    assert_eq!(ended[0].status, WorkflowStatus::Failed);
    let undos: Vec<String> = agents
        .lab
        .runs()
        .into_iter()
        .filter(|r| r.undo)
        .map(|r| r.stage)
        .collect();
    assert_eq!(undos, vec!["validation", "scaffold"]);
    // Aborting again: it has ended.
    let r = http
        .post(o.api(&format!("/workflows/{id}/abort")))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    o.shutdown().await;
    agents.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_dispatching_and_compensates() {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &SDLC);
    let o = InProcess::start(&redis, &[]).await;
    let http = http();
    register(&http, &o, UNDOABLE).await;
    let id = create(
        &http,
        &o.url,
        "undoable",
        json!({ "sleep_ms": { "e2e": 1500 } }),
    )
    .await;
    wait_until("e2e running", PATIENCE, || {
        let (http, o, id) = (&http, &o, id.clone());
        async move { get(http, o, &id).await["stages"][2]["status"] == "running" }
    })
    .await;
    let r = http
        .post(o.api(&format!("/workflows/{id}/cancel")))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "compensating");
    let ended = wait_ended(&redis, std::slice::from_ref(&id), PATIENCE).await;
    assert_eq!(ended[0].status, WorkflowStatus::Cancelled);
    let wf = get(&http, &o, &id).await;
    // e2e finished (it was running) and was kept; nothing after it started.
    assert_eq!(wf["stages"][3]["status"], "skipped");
    assert_eq!(wf["stages"][4]["status"], "skipped");
    let undos: Vec<String> = agents
        .lab
        .runs()
        .into_iter()
        .filter(|r| r.undo)
        .map(|r| r.stage)
        .collect();
    assert_eq!(undos, vec!["validation", "scaffold"]);
    o.shutdown().await;
    agents.shutdown().await;
}

const GATED: &str = r#"
name: gated
stages:
  - name: build
    agent: alpha
  - name: ship
    agent: alpha
    depends_on: [build]
    approval: true
"#;

const HURRIED: &str = r#"
name: hurried
stages:
  - name: build
    agent: alpha
  - name: ship
    agent: alpha
    depends_on: [build]
    approval: true
    approval_timeout: 1s
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_stages_wait_for_a_person() {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &["alpha"]);
    let o = InProcess::start(&redis, &[]).await;
    let http = http();
    register(&http, &o, GATED).await;
    register(&http, &o, HURRIED).await;
    let approved = create(&http, &o.url, "gated", json!({})).await;
    let rejected = create(&http, &o.url, "gated", json!({})).await;
    let forgotten = create(&http, &o.url, "hurried", json!({})).await;
    for id in [&approved, &rejected] {
        wait_until("awaiting approval", PATIENCE, || {
            let (redis, id) = (&redis, id.clone());
            async move {
                summaries(redis, &[id]).await[0]
                    .as_ref()
                    .is_some_and(|s| s.status == WorkflowStatus::AwaitingApproval)
            }
        })
        .await;
    }
    // Approving a stage that does not wait, or does not exist.
    let r = http
        .post(o.api(&format!("/workflows/{approved}/stages/build/approve")))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = http
        .post(o.api(&format!("/workflows/{approved}/stages/nope/approve")))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let r = http
        .post(o.api(&format!("/workflows/{approved}/stages/ship/approve")))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = http
        .post(o.api(&format!("/workflows/{rejected}/stages/ship/reject")))
        .json(&json!({ "reason": "not today" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let ended = wait_ended(
        &redis,
        &[approved.clone(), rejected.clone(), forgotten.clone()],
        PATIENCE,
    )
    .await;
    assert_eq!(ended[0].status, WorkflowStatus::Completed);
    assert_eq!(ended[1].status, WorkflowStatus::Failed);
    // Nobody approved in time: the durable approval timer failed it.
    assert_eq!(ended[2].status, WorkflowStatus::Failed);
    let wf = get(&http, &o, &forgotten).await;
    assert_eq!(wf["stages"][1]["error"], "approval timed out");
    assert_eq!(deadlines(&redis, &["alpha"]).await, 0);
    let wf = get(&http, &o, &rejected).await;
    assert!(
        wf["stages"][1]["error"]
            .as_str()
            .unwrap()
            .contains("not today")
    );
    o.shutdown().await;
    agents.shutdown().await;
}

const SLOW: &str = r#"
name: slow
stages:
  - name: wait
    agent: nobody
    timeout: 2s
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_timeout_fires_across_an_orchestrator_restart() {
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, &[]).await;
    let http = http();
    register(&http, &o, SLOW).await;
    let id = create(&http, &o.url, "slow", json!({})).await;
    // Down before the deadline: no process holds the timer in memory.
    o.shutdown().await;
    assert_eq!(deadlines(&redis, &["nobody"]).await, 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        summaries(&redis, std::slice::from_ref(&id)).await[0]
            .as_ref()
            .unwrap()
            .status,
        WorkflowStatus::Running
    );

    let o = InProcess::start(&redis, &[]).await;
    let ended = wait_ended(&redis, std::slice::from_ref(&id), PATIENCE).await;
    assert_eq!(ended[0].status, WorkflowStatus::Failed);
    let wf = get(&http, &o, &id).await;
    assert_eq!(wf["stages"][0]["error"], "timed out");
    let log = log(&redis, &id).await;
    assert_eq!(log.last().unwrap().kind, "task_timed_out");
    assert_eq!(deadlines(&redis, &["nobody"]).await, 0);
    o.shutdown().await;
}
