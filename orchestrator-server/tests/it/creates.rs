//! Creates are idempotent by the client's workflow `id`, and a create whose
//! workflow was stored answers success — also when Redis, out of memory,
//! refuses the dispatch that follows (202: the sweeper dispatches later).
//! A plain 503 means nothing was stored.

use crate::common::*;
use orchestrator::machine::WorkflowStatus;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(120);

/// `POST /workflows` with `body`: status, and the body (workflow or error).
async fn post(http: &reqwest::Client, base: &str, body: &Value) -> (u16, Value) {
    let r = http
        .post(format!("{base}/api/v1/workflows"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_create_twice_is_one_workflow_and_a_different_one_is_refused() {
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, &[]).await;
    let http = http();
    let body = json!({ "definition": "sdlc", "id": "same-1", "input": { "project": "a" } });
    let (s, first) = post(&http, &o.url, &body).await;
    assert_eq!(s, 201, "{first}");
    // Again, as a client retrying after a lost answer: the same workflow.
    let (s, again) = post(&http, &o.url, &body).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["id"], "same-1");
    assert_eq!(again["created_at_ms"], first["created_at_ms"]);
    // Naming the version it runs is the same request too.
    let with_version = json!({ "definition": "sdlc", "version": first["definition_version"],
        "id": "same-1", "input": { "project": "a" } });
    assert_eq!(post(&http, &o.url, &with_version).await.0, 200);
    // Another input, or another version, under the same id: refused.
    let other = json!({ "definition": "sdlc", "id": "same-1", "input": { "project": "b" } });
    let (s, refused) = post(&http, &o.url, &other).await;
    assert_eq!(s, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "conflict");
    let other_version = json!({ "definition": "sdlc", "version": 99, "id": "same-1",
        "input": { "project": "a" } });
    assert_eq!(post(&http, &o.url, &other_version).await.0, 404);
    // One workflow, one start in its log.
    let mut c = conn(&redis).await;
    let all: u64 = redis::cmd("ZCARD")
        .arg(keys().workflows_all())
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(all, 1);
    let started = log(&redis, "same-1")
        .await
        .iter()
        .filter(|e| e.kind == "started")
        .count();
    assert_eq!(started, 1);
    o.shutdown().await;
}

async fn info_memory(c: &mut redis::aio::MultiplexedConnection, field: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_under_redis_oom_answer_the_truth_and_each_stored_workflow_runs_once() {
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, &[]).await;
    let http = http();
    let mut c = conn(&redis).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query_async(&mut c)
        .await
        .unwrap();
    let used = info_memory(&mut c, "used_memory").await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used + 4 * 1024 * 1024)
        .query_async(&mut c)
        .await
        .unwrap();
    // Fill Redis until it refuses writes.
    let chunk = "x".repeat(8 * 1024);
    let mut fillers = 0u32;
    loop {
        let r: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("filler:{fillers}"))
            .arg(&chunk)
            .query_async(&mut c)
            .await;
        match r {
            Ok(()) => fillers += 1,
            Err(e) => {
                assert_eq!(e.code(), Some("OOM"), "{e}");
                break;
            }
        }
    }
    // Rounds of a little room and a few creates at once: some are stored
    // and dispatched, some stored with the dispatch refused, some refused.
    let mut answers: Vec<(Value, u16, Value)> = Vec::new();
    for r in 0..40u32 {
        let _: u64 = redis::cmd("DEL")
            .arg(format!("filler:{r}"))
            .query_async(&mut c)
            .await
            .unwrap();
        let creates = (0..4).map(|k| {
            let http = http.clone();
            let url = o.url.clone();
            async move {
                let body = json!({ "definition": "sdlc", "id": format!("oom-{r}-{k}"),
                    "input": { "round": r } });
                let (s, v) = post(&http, &url, &body).await;
                (body, s, v)
            }
        });
        answers.extend(futures::future::join_all(creates).await);
    }
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for (body, status, answer) in &answers {
        let id = body["id"].as_str().unwrap().to_owned();
        let stored = summaries(&redis, std::slice::from_ref(&id)).await[0].is_some();
        let code = answer["error"]["code"].as_str().unwrap_or_default();
        *by.entry(format!("{status} {code}")).or_default() += 1;
        match status {
            201 | 202 => assert!(stored, "{id} answered {status} but is not stored"),
            // A plain 503 is only for what was not stored.
            503 if code == "unavailable" => {
                assert!(
                    !stored,
                    "{id} answered a plain 503 but was stored: {answer}"
                )
            }
            503 => assert_eq!(code, "unconfirmed", "{answer}"),
            _ => panic!("{id}: unexpected answer {status} {answer}"),
        }
    }
    eprintln!("answers under OOM: {by:?}");
    assert!(
        by.keys().any(|k| k.starts_with("202")),
        "no create was stored with its dispatch refused: {by:?}"
    );
    assert!(
        by.keys().any(|k| k.starts_with("503")),
        "Redis never refused a whole create: {by:?}"
    );

    // Room again: every create retried with its id succeeds, once.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    let agents = Agents::start(&redis, &SDLC);
    let mut ids = Vec::new();
    for (body, status, _) in &answers {
        let (again, v) = post(&http, &o.url, body).await;
        let expected: &[u16] = match status {
            201 | 202 => &[200],
            _ => &[200, 201],
        };
        assert!(
            expected.contains(&again),
            "{body} after {status}: {again} {v}"
        );
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let ended = wait_ended(&redis, &ids, PATIENCE).await;
    assert!(ended.iter().all(|s| s.status == WorkflowStatus::Completed));
    let counts = agents.lab.ok_counts();
    assert_eq!(counts.len(), ids.len() * SDLC.len(), "a stage never ran");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "stages run more than once: {twice:?}");
    agents.shutdown().await;
    o.shutdown().await;
}
