//! `agentctl workflow delete`, `memory`, `streams` (dead letters),
//! `streams prune-consumers` and `streams trim-results`: the real binary
//! against a real Redis, a stage agent and the orchestrator in-process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agent_sdk::schemas::WORKERS_GROUP;
use agent_sdk::testing::TestRedis;
use orchestrator::machine::WorkflowStatus;
use orchestrator::testing::*;
use orchestrator_server::testing::InProcess;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(60);
const AGENT: &str = "ret";

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} / {}", self.stdout, self.stderr))
    }
}

async fn ctl(redis: &TestRedis, args: &[&str]) -> Ran {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(["--redis-url", &redis.url(), "--namespace", NS])
        .args(args)
        .env_remove("AGENTIC_REDIS_URL")
        .env_remove("AGENTIC_NAMESPACE")
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(PATIENCE, out).await.unwrap().unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn submit(redis: &TestRedis, input: Value, want: WorkflowStatus) -> String {
    let r = ctl(
        redis,
        &[
            "workflow",
            "submit",
            "one",
            "--input",
            &input.to_string(),
            "--json",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    wait_until(&format!("{id} {want:?}"), PATIENCE, || async {
        let s = summaries(redis, std::slice::from_ref(&id)).await;
        let mut c = conn(redis).await;
        let outbox: bool = redis::cmd("HEXISTS")
            .arg(keys().workflow(&id).unwrap())
            .arg("outbox")
            .query_async(&mut c)
            .await
            .unwrap();
        s[0].as_ref().is_some_and(|s| s.status == want) && !outbox
    })
    .await;
    id
}

async fn exists(redis: &TestRedis, key: &str) -> bool {
    let mut c = conn(redis).await;
    redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_memory_dead_letters_prune_and_trim_from_agentctl() {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &[AGENT]);
    let o = InProcess::start(&redis, &[]).await;
    let r = orchestrator_server::testing::http()
        .post(o.api("/definitions"))
        .json(&json!({ "name": "one", "stages": [
            { "name": "only", "agent": AGENT, "max_attempts": 1 }
        ]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let done = submit(&redis, json!({}), WorkflowStatus::Completed).await;
    let blocked = submit(
        &redis,
        json!({ "dead_letter": "only" }),
        WorkflowStatus::Blocked,
    )
    .await;

    // Delete: a blocked workflow is refused (4), an ended one goes, then 3.
    let r = ctl(&redis, &["workflow", "delete", &blocked]).await;
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("blocked"), "{}", r.stderr);
    assert!(exists(&redis, &keys().workflow(&blocked).unwrap()).await);
    let r = ctl(&redis, &["workflow", "delete", &done, "--json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["status"], "completed");
    assert!(r.json()["bytes"].as_u64().unwrap() > 0);
    for key in [
        keys().workflow(&done).unwrap(),
        keys().workflow_events(&done).unwrap(),
    ] {
        assert!(!exists(&redis, &key).await, "{key} left");
    }
    assert_eq!(ctl(&redis, &["workflow", "delete", &done]).await.code, 3);
    assert_eq!(ctl(&redis, &["workflow", "delete", "bad{id"]).await.code, 2);

    // Dead letters: measured, with bytes and age.
    let r = ctl(&redis, &["streams", "--json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    let d = v["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["agent_type"] == AGENT)
        .cloned()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(d["count"], 1);
    assert!(
        d["bytes"].as_u64().unwrap() > 0 && d["oldest_age_ms"].is_u64(),
        "{d}"
    );
    let r = ctl(&redis, &["streams"]).await;
    assert!(r.stdout.contains("DEAD LETTERS"), "{}", r.stdout);

    // Memory by family: every key scanned, so not sampled.
    let r = ctl(&redis, &["memory", "--sample", "100000", "--json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m = r.json();
    assert_eq!(m["sampled"], false);
    assert!(
        m["families"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["family"] == "wf" && f["sampled_keys"] == 1),
        "{m}"
    );
    let r = ctl(&redis, &["memory"]).await;
    assert!(r.stdout.contains("no maxmemory set"), "{}", r.stdout);
    assert_eq!(ctl(&redis, &["memory", "--sample", "0"]).await.code, 2);

    // A dead consumer goes; the live worker stays.
    let tasks = keys().tasks(&agent_type(AGENT));
    let mut c = conn(&redis).await;
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&tasks)
        .arg(WORKERS_GROUP)
        .arg("dead-a")
        .query_async(&mut c)
        .await
        .unwrap();
    wait_until("dead-a idle 1s", PATIENCE, || async {
        let mut c = conn(&redis).await;
        let v: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&tasks)
            .arg(WORKERS_GROUP)
            .query_async(&mut c)
            .await
            .unwrap();
        v.iter().any(|m| {
            redis::from_redis_value::<String>(m["name"].clone()).unwrap() == "dead-a"
                && redis::from_redis_value::<u64>(m["idle"].clone()).unwrap() >= 1000
        })
    })
    .await;
    let r = ctl(
        &redis,
        &["streams", "prune-consumers", "--idle", "1s", "--json"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let removed: Vec<String> = r.json()["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["consumer"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(removed, ["dead-a"]);
    assert!(
        r.json()["kept_registered"].as_u64().unwrap() >= 1,
        "the live worker"
    );

    // A results stream nobody reads is capped.
    let solo = keys().results(&agent_type("solo"));
    for i in 0..20 {
        let _: String = redis::cmd("XADD")
            .arg(&solo)
            .arg("*")
            .arg("n")
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let r = ctl(&redis, &["streams", "trim-results", "--cap", "5", "--json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let t = r.json();
    let solo_row = t["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["agent_type"] == "solo")
        .cloned()
        .unwrap_or_else(|| panic!("{t}"));
    assert_eq!(solo_row["trimmed"], 15);
    assert_eq!(solo_row["reader"], "none");
    assert_eq!(xlen(&redis, &solo).await, 5);

    o.shutdown().await;
    agents.shutdown().await;
}
