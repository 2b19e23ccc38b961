//! The HTTP API: every route's success and error paths, the token, and
//! server-sent events, against the real server in-process on a free port.

#![allow(clippy::unwrap_used)]

mod common;

use agent_sdk::testing::TestRedis;
use common::*;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(60);

async fn body(r: reqwest::Response) -> (StatusCode, Value) {
    let s = r.status();
    let text = r.text().await.unwrap();
    (
        s,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({s}): {text}")),
    )
}

/// Asserts an error answer: status and code.
async fn refused(r: reqwest::Response, status: u16, code: &str) -> String {
    let (s, v) = body(r).await;
    assert_eq!(s.as_u16(), status, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    v["error"]["message"].as_str().unwrap().to_owned()
}

const GATED: &str = "name: gated\nstages:\n  - name: build\n    agent: alpha\n    approval: true\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_routes_answer_and_refuse_clearly() {
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, &["--max-body", "4096"]).await;
    let http = reqwest::Client::new();
    let wf = o.api("/workflows");

    // Malformed, mis-shaped, unknown fields, wrong content type, oversized.
    let r = http
        .post(&wf)
        .header("content-type", "application/json")
        .body("{\"definition\": ")
        .send()
        .await
        .unwrap();
    refused(r, 400, "malformed_json").await;
    let r = http
        .post(&wf)
        .json(&json!({ "definition": 5 }))
        .send()
        .await
        .unwrap();
    refused(r, 422, "invalid_body").await;
    let r = http
        .post(&wf)
        .json(&json!({ "definition": "sdlc", "colour": "red" }))
        .send()
        .await
        .unwrap();
    let m = refused(r, 422, "invalid_body").await;
    assert!(m.contains("colour"), "{m}");
    let r = http
        .post(&wf)
        .body("{\"definition\": \"sdlc\"}")
        .send()
        .await
        .unwrap();
    refused(r, 415, "unsupported_media_type").await;
    let big = json!({ "definition": "sdlc", "input": { "blob": "x".repeat(8192) } });
    let r = http.post(&wf).json(&big).send().await.unwrap();
    refused(r, 413, "body_too_large").await;

    // Unknown definition, bad and taken ids.
    let r = http
        .post(&wf)
        .json(&json!({ "definition": "nope" }))
        .send()
        .await
        .unwrap();
    refused(r, 404, "not_found").await;
    let r = http
        .post(&wf)
        .json(&json!({ "definition": "sdlc", "version": 9 }))
        .send()
        .await
        .unwrap();
    refused(r, 404, "not_found").await;
    let r = http
        .post(&wf)
        .json(&json!({ "definition": "sdlc", "id": "a:b" }))
        .send()
        .await
        .unwrap();
    let m = refused(r, 422, "invalid").await;
    assert!(m.contains("workflow id"), "{m}");

    // Create: 201, Location, the whole workflow.
    let r = http
        .post(&wf)
        .json(&json!({ "definition": "sdlc", "id": "wf-1", "input": { "k": 1 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["location"], "/api/v1/workflows/wf-1");
    let (_, v) = body(r).await;
    assert_eq!(v["id"], "wf-1");
    assert_eq!(v["status"], "running");
    assert_eq!(v["progress"], 0);
    assert_eq!(v["definition_version"], 1);
    assert_eq!(v["stages"][0]["status"], "running");
    assert_eq!(v["stage_details"][0]["agent"], "scaffold");
    let r = http
        .post(&wf)
        .json(&json!({ "definition": "sdlc", "id": "wf-1" }))
        .send()
        .await
        .unwrap();
    refused(r, 409, "conflict").await;

    // Get, log, unknown ids.
    let (s, v) = body(http.get(o.api("/workflows/wf-1")).send().await.unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(v["input"], json!({ "k": 1 }));
    let r = http.get(o.api("/workflows/nope")).send().await.unwrap();
    refused(r, 404, "not_found").await;
    let r = http
        .get(o.api("/workflows/bad%7Bid%7D"))
        .send()
        .await
        .unwrap();
    refused(r, 404, "not_found").await;
    let (_, v) = body(http.get(o.api("/workflows/wf-1/log")).send().await.unwrap()).await;
    assert_eq!(v["items"][0]["type"], "started");
    assert_eq!(v["items"][0]["dispatched"], json!(["scaffold"]));
    let r = http
        .get(o.api("/workflows/wf-1/log?after=yesterday"))
        .send()
        .await
        .unwrap();
    refused(r, 400, "bad_request").await;
    let r = http.get(o.api("/workflows/nope/log")).send().await.unwrap();
    refused(r, 404, "not_found").await;
    let r = http
        .get(o.api("/workflows/wf-1/log?colour=red"))
        .send()
        .await
        .unwrap();
    refused(r, 400, "bad_query").await;

    // Operator actions on the wrong things.
    let r = http
        .post(o.api("/workflows/nope/cancel"))
        .send()
        .await
        .unwrap();
    refused(r, 404, "not_found").await;
    let r = http
        .post(o.api("/workflows/wf-1/stages/scaffold/approve"))
        .send()
        .await
        .unwrap();
    refused(r, 409, "conflict").await;
    let r = http
        .post(o.api("/workflows/wf-1/stages/nope/reject"))
        .send()
        .await
        .unwrap();
    refused(r, 404, "not_found").await;
    let r = http
        .post(o.api("/workflows/wf-1/cancel"))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    refused(r, 400, "malformed_json").await;
    let r = http
        .post(o.api("/workflows/wf-1/cancel"))
        .json(&json!({ "reason": "x".repeat(2000) }))
        .send()
        .await
        .unwrap();
    refused(r, 422, "invalid").await;
    let (s, v) = body(
        http.post(o.api("/workflows/wf-1/cancel"))
            .json(&json!({ "reason": "test" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["ending"],
        json!({ "kind": "cancelled", "reason": "test" })
    );
    let r = http
        .post(o.api("/workflows/wf-1/cancel"))
        .send()
        .await
        .unwrap();
    refused(r, 409, "conflict").await;

    // Listing: filters and pages.
    let r = http
        .post(o.api("/definitions"))
        .header("content-type", "application/yaml")
        .body(GATED)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut gated = Vec::new();
    for _ in 0..5 {
        gated.push(create(&http, &o.url, "gated", json!({})).await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = o.api("/workflows?definition=gated&limit=2");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (s, v) = body(http.get(url).send().await.unwrap()).await;
        assert_eq!(s, 200, "{v}");
        pages += 1;
        for it in v["items"].as_array().unwrap() {
            assert_eq!(it["definition"], "gated");
            seen.push(it["id"].as_str().unwrap().to_owned());
        }
        match v["next"].as_str() {
            Some(n) => cursor = Some(n.to_owned()),
            None => break,
        }
    }
    assert!(pages >= 3, "{pages}");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 5, "{seen:?}");
    let mut expect = gated.clone();
    expect.reverse();
    assert_eq!(seen, expect, "newest first");
    // Cancelled while scaffold runs (no agent here): it waits for it, compensating.
    let (_, v) = body(
        http.get(o.api("/workflows?status=compensating"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert_eq!(v["items"][0]["id"], "wf-1");
    let (_, v) = body(
        http.get(o.api("/workflows?status=awaiting_approval"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 5);
    let r = http
        .get(o.api("/workflows?status=nope"))
        .send()
        .await
        .unwrap();
    refused(r, 400, "bad_request").await;
    let r = http.get(o.api("/workflows?limit=0")).send().await.unwrap();
    refused(r, 400, "bad_request").await;
    let r = http
        .get(o.api("/workflows?limit=many"))
        .send()
        .await
        .unwrap();
    refused(r, 400, "bad_query").await;
    let r = http
        .get(o.api("/workflows?cursor=garbage"))
        .send()
        .await
        .unwrap();
    refused(r, 422, "invalid").await;

    // Routes and methods that do not exist.
    let r = http.get(o.api("/nope")).send().await.unwrap();
    refused(r, 404, "no_route").await;
    let r = http.delete(o.api("/workflows")).send().await.unwrap();
    refused(r, 405, "method_not_allowed").await;
    o.shutdown().await;
}

const CYCLE: &str = "name: loop\nstages:\n  - name: a\n    agent: x\n    depends_on: [b]\n  - name: b\n    agent: x\n    depends_on: [a]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_tasks_agents_and_probes() {
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, &[]).await;
    let http = reqwest::Client::new();
    let defs = o.api("/definitions");
    let yaml = |b: &str| {
        http.post(&defs)
            .header("content-type", "application/yaml")
            .body(b.to_owned())
    };

    // Definitions: refused with the stage named, versioned, listed.
    let m = refused(yaml(CYCLE).send().await.unwrap(), 422, "invalid_definition").await;
    assert!(
        m.contains("cycle") && m.contains('a') && m.contains('b'),
        "{m}"
    );
    refused(
        yaml("name: [").send().await.unwrap(),
        400,
        "malformed_definition",
    )
    .await;
    let m = refused(
        yaml("name: d\nstages:\n  - name: a\n    agent: x\n    depends_on: [ghost]\n")
            .send()
            .await
            .unwrap(),
        422,
        "invalid_definition",
    )
    .await;
    assert!(m.contains("ghost"), "{m}");
    let r = http
        .post(&defs)
        .header("content-type", "text/plain")
        .body(GATED)
        .send()
        .await
        .unwrap();
    refused(r, 415, "unsupported_media_type").await;
    let r = yaml(GATED).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["location"],
        "/api/v1/definitions/gated?version=1"
    );
    let (s, v) = body(yaml(GATED).send().await.unwrap()).await;
    assert_eq!(
        (s.as_u16(), v["version"].as_u64()),
        (200, Some(1)),
        "the same definition again is not a new version"
    );
    let v2 = json!({ "name": "gated", "stages": [{ "name": "build", "agent": "beta" }] });
    let (s, v) = body(http.post(&defs).json(&v2).send().await.unwrap()).await;
    assert_eq!((s.as_u16(), v["version"].as_u64()), (201, Some(2)));
    assert_eq!(v["levels"], json!([["build"]]));
    let (_, v) = body(http.get(&defs).send().await.unwrap()).await;
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["gated", "sdlc"]);
    let (_, v) = body(
        http.get(o.api("/definitions/gated?version=1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["stages"][0]["agent"], "alpha");
    let (_, v) = body(http.get(o.api("/definitions/sdlc")).send().await.unwrap()).await;
    assert_eq!(v["levels"].as_array().unwrap().len(), 5);
    refused(
        http.get(o.api("/definitions/nope")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    refused(
        http.get(o.api("/definitions/Bad%20Name"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    refused(
        http.get(o.api("/definitions/gated?version=7"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    // A running workflow keeps its version.
    let (_, w) = body(
        http.post(o.api("/workflows"))
            .json(&json!({ "definition": "gated", "version": 1 }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(w["definition_version"], 1);
    assert_eq!(w["stage_details"][0]["agent"], "alpha");

    // Standalone tasks: refused, submitted, answered.
    let tasks = o.api("/tasks/alpha");
    refused(
        http.post(o.api("/tasks/NOT%20A%20TYPE"))
            .json(&json!({ "input": 1 }))
            .send()
            .await
            .unwrap(),
        422,
        "invalid",
    )
    .await;
    refused(
        http.post(&tasks)
            .json(&json!({ "nothing": 1 }))
            .send()
            .await
            .unwrap(),
        422,
        "invalid_body",
    )
    .await;
    refused(
        http.post(&tasks)
            .json(&json!({ "input": 1, "delay": "soon" }))
            .send()
            .await
            .unwrap(),
        422,
        "invalid",
    )
    .await;
    let r = http
        .post(&tasks)
        .json(&json!({ "input": { "stage": "solo" }, "idempotency_key": "k-1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let (_, v) = body(r).await;
    let task_id = v["task_id"].as_str().unwrap().to_owned();
    assert_eq!(loc, format!("/api/v1/tasks/alpha/{task_id}"));
    let (_, again) = body(
        http.post(&tasks)
            .json(&json!({ "input": {}, "idempotency_key": "k-1" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (again["task_id"].as_str(), again["duplicate"].as_bool()),
        (Some(task_id.as_str()), Some(true))
    );
    refused(
        http.get(format!("{}{loc}", o.url)).send().await.unwrap(),
        404,
        "no_result",
    )
    .await;
    refused(
        http.get(format!("{}{loc}?wait=1h", o.url))
            .send()
            .await
            .unwrap(),
        422,
        "invalid",
    )
    .await;
    let agents = Agents::start(&redis, &["alpha"]);
    let (s, v) = body(
        http.get(format!("{}{loc}?wait=20s", o.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["output"]["stage"], "solo");

    // Agents: the live one, and a warning for types sdlc needs.
    wait_until("agent registered", PATIENCE, || {
        let http = http.clone();
        let url = o.api("/agents");
        async move {
            let v: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            let types = v["types"].as_array().unwrap();
            let alpha = types.iter().find(|t| t["agent_type"] == "alpha");
            let scaffold = types.iter().find(|t| t["agent_type"] == "scaffold");
            alpha.is_some_and(|a| a["live"] == 1 && a["warning"] == false)
                && scaffold.is_some_and(|s| {
                    s["live"] == 0 && s["warning"] == true && s["needed_by"] == json!(["sdlc"])
                })
                && v["agents"][0]["agent_type"] == "alpha"
        }
    })
    .await;

    // Probes.
    let (s, v) = body(http.get(format!("{}/health", o.url)).send().await.unwrap()).await;
    assert_eq!((s.as_u16(), v["status"].as_str()), (200, Some("ok")));
    let (s, v) = body(http.get(format!("{}/ready", o.url)).send().await.unwrap()).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["results_streams"]
            .as_array()
            .unwrap()
            .contains(&json!("scaffold"))
    );
    let m = http
        .get(format!("{}/metrics", o.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "orchestrator_workflows{status=\"awaiting_approval\"} 1",
        "agentic_backlog{agent_type=\"scaffold\"}",
        "agentic_dlq_size{agent_type=\"alpha\"} 0",
        "orchestrator_workflows_stored 1",
    ] {
        assert!(m.contains(needle), "{needle} missing from:\n{m}");
    }
    o.shutdown().await;
    agents.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_guards_every_api_call() {
    let redis = TestRedis::start();
    let token = "s3cret-token-0123456789";
    let o = InProcess::start(&redis, &["--api-token", token]).await;
    let http = reqwest::Client::new();
    for (method, path) in [
        ("GET", "/workflows"),
        ("POST", "/workflows"),
        ("GET", "/definitions"),
        ("GET", "/agents"),
        ("GET", "/events"),
        ("GET", "/workflows/x/events"),
    ] {
        let req = |auth: Option<&str>| {
            let mut r = http.request(method.parse().unwrap(), o.api(path));
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r
        };
        let r = req(None).send().await.unwrap();
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let m = refused(r, 401, "unauthorized").await;
        assert!(m.contains("missing"), "{m}");
        let r = req(Some("Bearer wrong-token-0123456789"))
            .send()
            .await
            .unwrap();
        refused(r, 401, "unauthorized").await;
        let r = req(Some(token)).send().await.unwrap();
        refused(r, 401, "unauthorized").await;
    }
    let r = http
        .get(o.api("/workflows"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Probes stay open for load balancers.
    assert_eq!(
        http.get(format!("{}/health", o.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    o.shutdown().await;
}

/// Reads SSE events (`event`, `id`, `data`) until `until` says stop.
async fn read_sse(
    resp: reqwest::Response,
    mut until: impl FnMut(&str, &Value) -> bool,
) -> Vec<(String, Option<String>, Value)> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut stream = resp.bytes_stream();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("SSE stream stalled")
            .expect("SSE stream ended")
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut event, mut id, mut data) = (String::from("message"), None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if data.is_empty() {
                continue; // keep-alive comment
            }
            let v: Value = serde_json::from_str(&data).unwrap();
            let stop = until(&event, &v);
            out.push((event, id, v));
            if stop {
                return out;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_deliver_transitions_in_order() {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &SDLC);
    let o = InProcess::start(&redis, &[]).await;
    let http = reqwest::Client::new();
    // The firehose, opened before the workflow exists.
    let all = http.get(o.api("/events")).send().await.unwrap();
    assert_eq!(all.headers()["content-type"], "text/event-stream");
    let id = create(&http, &o.url, "sdlc", json!({ "sleep_ms": { "e2e": 300 } })).await;
    let wid = id.clone();
    let changes = read_sse(all, |_, v| {
        v["workflow_id"] == wid.as_str() && v["status"] == "completed"
    })
    .await;
    let versions: Vec<u64> = changes
        .iter()
        .filter(|(e, _, v)| e == "change" && v["workflow_id"] == id.as_str())
        .map(|(_, _, v)| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6]);

    // The workflow's own stream: the whole log in order, then `end`.
    let r = http
        .get(o.api(&format!("/workflows/{id}/events")))
        .send()
        .await
        .unwrap();
    let events = read_sse(r, |e, _| e == "end").await;
    let transitions: Vec<_> = events
        .iter()
        .filter(|(e, _, _)| e == "transition")
        .collect();
    let versions: Vec<u64> = transitions
        .iter()
        .map(|(_, _, v)| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(transitions[5].2["status"], "completed");
    assert_eq!(transitions[2].2["stage"], "validation");
    // Resume after the third event: the rest only.
    let third = transitions[2].1.clone().unwrap();
    let r = http
        .get(o.api(&format!("/workflows/{id}/events")))
        .header("last-event-id", &third)
        .send()
        .await
        .unwrap();
    let rest = read_sse(r, |e, _| e == "end").await;
    let versions: Vec<u64> = rest
        .iter()
        .filter(|(e, _, _)| e == "transition")
        .map(|(_, _, v)| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![4, 5, 6]);

    // Live: a stream opened on a running workflow gets its later transitions as they happen.
    let id2 = create(
        &http,
        &o.url,
        "sdlc",
        json!({ "sleep_ms": { "validation": 500, "e2e": 500 } }),
    )
    .await;
    let r = http
        .get(o.api(&format!("/workflows/{id2}/events")))
        .send()
        .await
        .unwrap();
    let events = read_sse(r, |e, _| e == "end").await;
    let versions: Vec<u64> = events
        .iter()
        .filter(|(e, _, _)| e == "transition")
        .map(|(_, _, v)| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6]);

    refused(
        http.get(o.api("/workflows/nope/events"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    let r = http
        .get(o.api(&format!("/workflows/{id}/events")))
        .header("last-event-id", "junk")
        .send()
        .await
        .unwrap();
    refused(r, 400, "bad_request").await;
    o.shutdown().await;
    agents.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_an_operators_own_sdlc() {
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, &[]).await;
    let http = reqwest::Client::new();
    let (_, v) = body(http.get(o.api("/definitions/sdlc")).send().await.unwrap()).await;
    assert_eq!(v["version"], 1);
    let mine = json!({ "name": "sdlc", "stages": [{ "name": "only", "agent": "alpha" }] });
    let (s, v) = body(
        http.post(o.api("/definitions"))
            .json(&mine)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s.as_u16(), v["version"].as_u64()), (201, Some(2)));
    o.shutdown().await;
    let o = InProcess::start(&redis, &[]).await;
    let (_, v) = body(http.get(o.api("/definitions/sdlc")).send().await.unwrap()).await;
    assert_eq!(
        v["version"], 2,
        "the restart re-registered the built-in sdlc"
    );
    assert_eq!(v["stages"][0]["name"], "only");
    o.shutdown().await;
}
