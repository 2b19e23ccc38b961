//! The orchestrator as a real process: `kill -9` in the middle of 200
//! workflows, two replicas sharing the work, and results that arrive twice
//! or too late. Every test accounts for every stage of every workflow.

use crate::common::*;
use agent_sdk::schemas::{ResultEnvelope, TaskStatus};
use agent_sdk::testing::TestRedis;
use orchestrator::machine::WorkflowStatus;
use serde_json::json;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(120);

async fn create_many(http: &reqwest::Client, bases: &[&str], n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let input = json!({ "n": i, "sleep_ms": { "validation": 50, "e2e": 50 } });
        ids.push(create(http, bases[i % bases.len()], "sdlc", input).await);
    }
    ids
}

/// Every workflow completed, its log in order with each stage completed
/// once, and each stage's task run exactly once by the agents.
async fn account(redis: &TestRedis, agents: &Agents, ids: &[String]) {
    let ended = wait_ended(redis, ids, PATIENCE).await;
    assert!(ended.iter().all(|s| s.status == WorkflowStatus::Completed));
    for id in ids {
        assert_log_completed_once(id, &log(redis, id).await, &SDLC);
    }
    let counts = agents.lab.ok_counts();
    assert_eq!(counts.len(), ids.len() * SDLC.len(), "a stage never ran");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "stages run more than once: {twice:?}");
    // Nothing left behind: no pending results, deadlines or active
    // entries. Each goes right after the transition that ended its
    // workflow, so they get a moment to settle.
    let left = || async {
        let mut c = conn(redis).await;
        let mut pending = 0u64;
        for t in SDLC {
            let v: redis::Value = redis::cmd("XPENDING")
                .arg(keys().results(&agent_type(t)))
                .arg("orchestrator")
                .query_async(&mut c)
                .await
                .unwrap();
            let redis::Value::Array(a) = v else {
                panic!("XPENDING reply {v:?}")
            };
            pending += redis::from_redis_value_ref::<u64>(&a[0]).unwrap();
        }
        let active: u64 = redis::cmd("ZCARD")
            .arg(keys().workflows_active())
            .query_async(&mut c)
            .await
            .unwrap();
        (pending, deadlines(redis, &SDLC).await, active)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut now = left().await;
    while now != (0, 0, 0) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = left().await;
    }
    assert_eq!(
        now,
        (0, 0, 0),
        "(pending results, armed deadlines, active workflows) left 30 s after every workflow ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_flight_then_restart_completes_every_workflow_once() {
    let redis = TestRedis::start_with_aof();
    let mut first = Proc::spawn(&redis, "orch-a", &[]).await;
    let http = http();
    let ids = create_many(&http, &[&first.url], 200).await;
    // Agents start once all 200 are in, so they all are mid-flight together.
    let agents = Agents::start(&redis, &SDLC);
    // Kill it while transitions are under way: some stages done, most not.
    wait_until("a third of the stages done", PATIENCE, || {
        let n = agents.lab.ok_counts().len();
        async move { n >= 300 }
    })
    .await;
    first.kill9();
    let done_at_kill = agents.lab.ok_counts().len();
    assert!(
        done_at_kill < 800,
        "{done_at_kill} of 1000 stages finished before the kill; too late to test much"
    );
    // A new process under another name: it must take over the dead one's
    // pending results and its unfinished outboxes.
    let second = Proc::spawn(&redis, "orch-b", &[]).await;
    account(&redis, &agents, &ids).await;
    assert!(second.log_text().contains("orchestrator serving"));
    eprintln!(
        "stages done at the kill: {done_at_kill}/1000; after restart:\n{}",
        second
            .log_text()
            .lines()
            .filter(|l| l.contains("interrupted") || l.contains("resumed") || l.contains("WARN"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    agents.shutdown().await;
}

fn transitions(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("orchestrator_transitions_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_work_and_apply_each_result_once() {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &SDLC);
    let a = Proc::spawn(&redis, "orch-a", &[]).await;
    let b = Proc::spawn(&redis, "orch-b", &[]).await;
    let http = http();
    let ids = create_many(&http, &[&a.url, &b.url], 200).await;
    account(&redis, &agents, &ids).await;
    // Both did transitions (not just the creations each was sent).
    let mut per = Vec::new();
    for p in [&a, &b] {
        let m = http
            .get(format!("{}/metrics", p.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        per.push(transitions(&m));
    }
    assert!(
        per.iter().all(|n| *n > 100),
        "transitions per replica: {per:?}"
    );
    assert_eq!(
        per.iter().sum::<u64>(),
        200 * 6,
        "transitions per replica: {per:?}"
    );
    agents.shutdown().await;
}

fn result_entry(
    task_id: &str,
    wf: &str,
    stage: &str,
    status: TaskStatus,
    output: serde_json::Value,
) -> Vec<(String, Vec<u8>)> {
    let r = ResultEnvelope {
        v: 1,
        task_id: task_id.into(),
        agent_type: stage.into(),
        status,
        output: Some(output),
        error: (status == TaskStatus::DeadLettered).then(|| agent_sdk::schemas::ErrorInfo {
            kind: agent_sdk::schemas::ErrorKind::Permanent,
            message: "late failure".into(),
            details: None,
        }),
        attempt: 1,
        worker: "intruder".into(),
        workflow_id: (!wf.is_empty()).then(|| wf.into()),
        stage: Some(stage.into()),
        trace_id: None,
        finished_at_ms: 0,
        duration_ms: 0,
    };
    let mut f = vec![
        ("task_id".to_string(), task_id.as_bytes().to_vec()),
        ("status".to_string(), status.as_str().as_bytes().to_vec()),
        ("attempt".to_string(), b"1".to_vec()),
    ];
    if !wf.is_empty() {
        f.push(("wf".to_string(), wf.as_bytes().to_vec()));
    }
    f.push(("body".to_string(), serde_json::to_vec(&r).unwrap()));
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_stale_results_change_nothing() {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &SDLC);
    let o = InProcess::start(&redis, &[]).await;
    let http = http();
    let id = create(
        &http,
        &o.url,
        "sdlc",
        json!({ "sleep_ms": { "validation": 3000 } }),
    )
    .await;
    wait_until("validation running", PATIENCE, || {
        let (redis, id) = (&redis, id.clone());
        async move { log(redis, &id).await.len() == 2 }
    })
    .await;
    let before = log(&redis, &id).await;
    let version = summaries(&redis, std::slice::from_ref(&id)).await[0]
        .as_ref()
        .unwrap()
        .version;

    let mut c = conn(&redis).await;
    let scaffold_results = keys().results(&agent_type("scaffold"));
    let validation_results = keys().results(&agent_type("validation"));
    let injected = [
        // The same success again, with another output.
        (
            &scaffold_results,
            result_entry(
                &format!("{id}:scaffold:1"),
                &id,
                "scaffold",
                TaskStatus::Succeeded,
                json!({ "evil": true }),
            ),
        ),
        // A late failure of a stage that completed.
        (
            &scaffold_results,
            result_entry(
                &format!("{id}:scaffold:1"),
                &id,
                "scaffold",
                TaskStatus::DeadLettered,
                json!(null),
            ),
        ),
        // A result for a dispatch that never happened.
        (
            &validation_results,
            result_entry(
                &format!("{id}:validation:7"),
                &id,
                "validation",
                TaskStatus::Succeeded,
                json!({}),
            ),
        ),
        // A workflow that does not exist, and a task of no workflow.
        (
            &validation_results,
            result_entry(
                "ghost:validation:1",
                "ghost",
                "validation",
                TaskStatus::Succeeded,
                json!({}),
            ),
        ),
        (
            &validation_results,
            result_entry(
                "standalone-1",
                "",
                "validation",
                TaskStatus::Succeeded,
                json!({}),
            ),
        ),
    ];
    for (stream, fields) in &injected {
        let _: String = redis::cmd("XADD")
            .arg(*stream)
            .arg("*")
            .arg(fields)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    // All consumed (acknowledged and deleted) while validation still sleeps.
    wait_until("injected results consumed", PATIENCE, || {
        let mut c = c.clone();
        let (a, b) = (scaffold_results.clone(), validation_results.clone());
        async move {
            let la: u64 = redis::cmd("XLEN").arg(a).query_async(&mut c).await.unwrap();
            let lb: u64 = redis::cmd("XLEN").arg(b).query_async(&mut c).await.unwrap();
            la == 0 && lb == 0
        }
    })
    .await;
    assert_eq!(log(&redis, &id).await, before, "the log changed");
    assert_eq!(
        summaries(&redis, std::slice::from_ref(&id)).await[0]
            .as_ref()
            .unwrap()
            .version,
        version
    );
    let ghost: bool = redis::cmd("EXISTS")
        .arg(keys().workflow("ghost").unwrap())
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!ghost);

    let ended = wait_ended(&redis, std::slice::from_ref(&id), PATIENCE).await;
    assert_eq!(ended[0].status, WorkflowStatus::Completed);
    let log = log(&redis, &id).await;
    assert_log_completed_once(&id, &log, &SDLC);
    let wf: serde_json::Value = http
        .get(o.api(&format!("/workflows/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        wf["stages"][0]["output"]["stage"], "scaffold",
        "the duplicate's output leaked in"
    );
    o.shutdown().await;
    agents.shutdown().await;
}

/// The crash window the outbox exists for, made certain: a transition is
/// stored (dispatch decided) and its process dies before dispatching. The
/// next orchestrator's start-up sweep carries the outbox out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_decided_before_a_crash_are_carried_out_on_start() {
    use orchestrator::catalog::Catalog;
    use orchestrator::machine::log::NewLogEntry;
    use orchestrator::machine::{Event, Workflow, apply};

    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &SDLC);
    let mut c = conn(&redis).await;
    let (def, _) = Catalog::new(keys())
        .register(&mut c, &orchestrator::Definition::sdlc())
        .await
        .unwrap();
    let fresh = Workflow::new("crashed-1", &def, json!({}), 1);
    let (started, commands) = apply(&fresh, &def, &Event::Started, 1).unwrap();
    assert!(!commands.is_empty());
    let store = store();
    store.index(&mut c, "crashed-1", 1).await.unwrap();
    let entry = NewLogEntry {
        kind: "started".into(),
        stage: None,
        event: json!({ "type": "started" }),
        dispatched: vec!["scaffold".into()],
    };
    assert!(
        store
            .save(&mut c, 0, &started, &commands, &entry)
            .await
            .unwrap()
    );
    // "Crash": nothing dispatched.
    let backlog: u64 = redis::cmd("XLEN")
        .arg(keys().tasks(&agent_type("scaffold")))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(backlog, 0);

    let o = InProcess::start(&redis, &[]).await;
    let ids = vec!["crashed-1".to_string()];
    let ended = wait_ended(&redis, &ids, PATIENCE).await;
    assert_eq!(ended[0].status, WorkflowStatus::Completed);
    assert_log_completed_once("crashed-1", &log(&redis, "crashed-1").await, &SDLC);
    assert!(agents.lab.ok_counts().values().all(|n| *n == 1));
    let outbox: Option<String> = redis::cmd("HGET")
        .arg(keys().workflow("crashed-1").unwrap())
        .arg("outbox")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(outbox, None);
    o.shutdown().await;
    agents.shutdown().await;
}

const FAN: &str = r#"
name: fan
stages:
  - { name: a, agent: alpha }
  - { name: b, agent: beta, depends_on: [a] }
  - { name: c, agent: gamma, depends_on: [a] }
  - { name: d, agent: beta, depends_on: [a] }
  - { name: e, agent: gamma, depends_on: [a] }
  - { name: f, agent: alpha, depends_on: [b, c, d, e] }
"#;

/// Parallel stages finish at nearly the same time, and two replicas share
/// their results: transitions of one workflow race, and the version check
/// must make every one of them count exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_results_of_parallel_stages_all_count_once() {
    let redis = TestRedis::start();
    let a = InProcess::start(&redis, &["--consumer", "orch-a"]).await;
    let b = InProcess::start(&redis, &["--consumer", "orch-b"]).await;
    let http = http();
    let r = http
        .post(a.api("/definitions"))
        .header("content-type", "application/yaml")
        .body(FAN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut ids = Vec::new();
    for i in 0..60 {
        let base = if i % 2 == 0 { &a.url } else { &b.url };
        ids.push(create(&http, base, "fan", json!({ "n": i })).await);
    }
    // All queued first, so each fan-out's results arrive together.
    let agents = Agents::start(&redis, &["alpha", "beta", "gamma"]);
    let ended = wait_ended(&redis, &ids, PATIENCE).await;
    assert!(ended.iter().all(|s| s.status == WorkflowStatus::Completed));
    for id in &ids {
        let log = log(&redis, id).await;
        assert_log_completed_once(id, &log, &["a", "b", "c", "d", "e", "f"]);
        // started + six completions, nothing else.
        assert_eq!(log.len(), 7, "{id}: {log:#?}");
    }
    assert!(agents.lab.ok_counts().values().all(|n| *n == 1));
    assert_eq!(agents.lab.ok_counts().len(), 60 * 6);
    a.shutdown().await;
    b.shutdown().await;
    agents.shutdown().await;
}

/// SIGTERM: the HTTP server drains, the loops stop, exit 0; the workflow in
/// flight is finished by the next orchestrator, its stages each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_loses_nothing() {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &SDLC);
    let mut first = Proc::spawn(&redis, "orch-a", &[]).await;
    let http = http();
    let ids = vec![
        create(
            &http,
            &first.url,
            "sdlc",
            json!({ "sleep_ms": { "validation": 1500 } }),
        )
        .await,
    ];
    wait_until("validation running", PATIENCE, || {
        let (redis, id) = (&redis, ids[0].clone());
        async move { log(redis, &id).await.len() == 2 }
    })
    .await;
    first.signal("TERM");
    assert_eq!(first.wait_exit(Duration::from_secs(20)).await, Some(0));
    let text = first.log_text();
    assert!(text.contains("HTTP server stopped"), "{text}");
    let _second = Proc::spawn(&redis, "orch-a", &[]).await;
    account(&redis, &agents, &ids).await;
    agents.shutdown().await;
}
