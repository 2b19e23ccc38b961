//! Dispatches that can never be made fail their stage, naming why; those
//! Redis refuses for a while are tried again.

use super::*;
use crate::common::*;
use agent_sdk::schemas::codec::DecodeLimits;
use orchestrator::machine::WorkflowStatus;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_over_the_task_limit_fails_the_workflow_naming_the_limit() {
    let kit = Kit::start(&[]).await;
    assert_eq!(kit.define(&one_stage("big", "bigtask")).await.0, 201);
    // JSON `0.1,` is 4 bytes, the same number in MessagePack 9: an input
    // of about 800 KB as JSON would be a task body of about 1.8 MB.
    let floats: Vec<f64> = vec![0.1; 200_000];
    let input = json!({ "numbers": floats });
    assert!(serde_json::to_vec(&input).unwrap().len() < 1024 * 1024);
    // The API refuses it at the door (the input limits, measured encoded)...
    let r = kit
        .http
        .post(kit.o.api("/workflows"))
        .json(&json!({ "definition": "big", "input": input }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "{:?}", r.text().await);
    // ...and a workflow created another way (the engine as a library, as
    // any embedding program may) still cannot get stuck on it: its
    // dispatch is refused and the stage fails, naming the limit.
    let client = agent_sdk::Client::connect(&kit.redis.url(), NS)
        .await
        .unwrap();
    let (engine, _) = orchestrator::engine::Engine::new(client);
    let mut c = conn(&kit.redis).await;
    let created = engine
        .create(
            &mut c,
            orchestrator::engine::NewWorkflow {
                definition: "big".into(),
                version: None,
                input,
                id: None,
            },
        )
        .await
        .unwrap()
        .workflow;
    let id = created.id.clone();

    let s = ended(&kit.redis, &id).await;
    assert_eq!(s.status, WorkflowStatus::Failed, "{s:?}");
    let limit = DecodeLimits::default().max_bytes.to_string();
    let log = log(&kit.redis, &id).await;
    let refused = log
        .iter()
        .find(|e| e.kind == "dispatch_failed")
        .unwrap_or_else(|| panic!("no dispatch_failed in {log:#?}"));
    let why = refused.event["error"].as_str().unwrap();
    assert!(why.contains(&limit), "the limit is not named: {why}");
    assert!(why.contains("bytes"), "{why}");
    assert_eq!(refused.stage.as_deref(), Some("only"));
    // The stage says why too, and nothing went to the stream.
    let r = kit.http.get(kit.o.api(&format!("/workflows/{id}")));
    let v: Value = r.send().await.unwrap().json().await.unwrap();
    let stage_error = v["stages"][0]["error"].as_str().unwrap_or_default();
    assert!(stage_error.contains(&limit), "{v}");
    assert_eq!(
        xlen(&kit.redis, &keys().tasks(&agent_type("bigtask"))).await,
        0
    );
    assert_nothing_left(&kit.redis, &id, "bigtask").await;
    kit.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_redis_refuses_for_good_fails_the_stage() {
    let kit = Kit::start(&[]).await;
    assert_eq!(kit.define(&one_stage("wrong", "wrongtype")).await.0, 201);
    // Someone made the tasks stream's key a string: every XADD is refused.
    let mut c = conn(&kit.redis).await;
    let tasks = keys().tasks(&agent_type("wrongtype"));
    let _: () = redis::cmd("SET")
        .arg(&tasks)
        .arg("not a stream")
        .query_async(&mut c)
        .await
        .unwrap();
    let id = kit.create("wrong", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let s = ended(&kit.redis, &id).await;
    assert_eq!(s.status, WorkflowStatus::Failed);
    let log = log(&kit.redis, &id).await;
    let refused = log.iter().find(|e| e.kind == "dispatch_failed").unwrap();
    let why = refused.event["error"].as_str().unwrap();
    assert!(why.contains("WRONGTYPE"), "{why}");
    // The refused dispatch wrote nothing: no idempotency key claims it.
    let idem: i64 = redis::cmd("EXISTS")
        .arg(
            keys()
                .idempotency(&agent_type("wrongtype"), &format!("{id}:only:1"))
                .unwrap(),
        )
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(idem, 0);
    assert_nothing_left(&kit.redis, &id, "wrongtype").await;
    kit.shutdown().await;
}

/// Redis refusing a dispatch for a while (an ACL: the agent keys
/// read-only) is not a reason to fail the stage: the workflow stays
/// running with its outbox, no `dispatch_failed` is stored, and once the
/// refusal is lifted the sweeper dispatches the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_redis_refuses_for_a_while_is_retried_not_failed() {
    let redis = TestRedis::start();
    let mut admin = conn(&redis).await;
    let set_user = |rules: &'static [&'static str]| {
        let mut cmd = redis::cmd("ACL");
        cmd.arg(&[
            "SETUSER",
            "orch",
            "on",
            ">orch-pass",
            "&*",
            "+@all",
            "resetkeys",
        ])
        .arg(rules);
        cmd
    };
    let () = set_user(&["~*"]).query_async(&mut admin).await.unwrap();
    let url = format!("redis://orch:orch-pass@127.0.0.1:{}", redis.port());
    let o = InProcess::start_as(&redis, &url, &[]).await;
    let http = orchestrator_server::testing::http();
    let r = http
        .post(o.api("/definitions"))
        .json(&one_stage("later", "later"));
    assert_eq!(r.send().await.unwrap().status(), 201);
    // Wait for the type's results group, then make every agent key
    // read-only for the orchestrator.
    wait_until("the results group of `later`", PATIENCE, || async {
        let r = http.get(format!("{}/ready", o.url)).send().await;
        let v: Value = match r {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        v["results_streams"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("later")))
    })
    .await;
    let rules: &[&str] = &[
        "~otest:wf*",
        "~otest:def*",
        "~otest:registry*",
        "%R~otest:agent:*",
    ];
    let () = set_user(rules).query_async(&mut admin).await.unwrap();

    let id = "refused-for-a-while";
    let r = http
        .post(o.api("/workflows"))
        .json(&json!({ "definition": "later", "input": {}, "id": id }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    // Stored: a success (202), not an error a client would retry into a
    // duplicate; the sweeper dispatches it once Redis lets it.
    assert_eq!(status, 202, "{body}");
    assert!(body.contains(id), "{body}");
    // Several sweeps go by: the stage still runs, nothing is failed.
    let tasks = keys().tasks(&agent_type("later"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = summaries(&redis, &[id.to_owned()])
        .await
        .pop()
        .flatten()
        .unwrap();
    assert_eq!(s.status, WorkflowStatus::Running);
    assert!(
        log(&redis, id)
            .await
            .iter()
            .all(|e| e.kind != "dispatch_failed")
    );
    assert_eq!(xlen(&redis, &tasks).await, 0);

    // Lifted: the sweeper carries the outbox out.
    let () = set_user(&["~*"]).query_async(&mut admin).await.unwrap();
    wait_until("the task dispatched by the sweeper", PATIENCE, || async {
        xlen(&redis, &tasks).await == 1
    })
    .await;
    let s = summaries(&redis, &[id.to_owned()])
        .await
        .pop()
        .flatten()
        .unwrap();
    assert_eq!(s.status, WorkflowStatus::Running);
    o.shutdown().await;
}
