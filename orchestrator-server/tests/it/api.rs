//! The HTTP API: every route's success and error paths, the token, and
//! server-sent events, against the real server in-process on a free port.

use crate::common::*;
use agent_sdk::testing::TestRedis;
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

// ---- Dead letters, streams and the overview (`/dlq`, `/streams`, `/overview`).

/// The agent type whose DLQ the dead-letter tests fill.
const DLQ_TYPE: &str = "dlqa";
/// Bytes no codec decodes: the worker dead-letters them as malformed.
const GARBAGE: &[u8] = b"\xff\xfe not an envelope \x00";

async fn dlq_len(redis: &TestRedis, t: &str) -> u64 {
    xlen(redis, &keys().dlq(&agent_type(t))).await
}

async fn tasks_len(redis: &TestRedis, t: &str) -> u64 {
    xlen(redis, &keys().tasks(&agent_type(t))).await
}

/// A stream's entries, fields as bytes.
async fn entries(
    redis: &TestRedis,
    key: &str,
) -> Vec<(String, std::collections::BTreeMap<String, Vec<u8>>)> {
    let mut c = conn(redis).await;
    let r: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    r.ids
        .into_iter()
        .map(|e| {
            let fields = e
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<Vec<u8>>(v).unwrap()))
                .collect();
            (e.id, fields)
        })
        .collect()
}

async fn sdk_client(redis: &TestRedis) -> agent_sdk::Client {
    agent_sdk::Client::connect(&redis.url(), NS).await.unwrap()
}

/// The failing tasks: (workflow, stage); each fails permanently at once.
const FAILING: [(&str, &str); 5] = [
    ("wf-a", "build"),
    ("wf-a", "build"),
    ("wf-a", "lint"),
    ("wf-b", "build"),
    ("wf-b", "lint"),
];

/// Runs the five failing tasks and one undecodable entry through a real
/// worker of [`DLQ_TYPE`] until all six are dead letters; the worker is
/// stopped after, so nothing moves on its own. Returns the task ids.
async fn fill_dlq(redis: &TestRedis) -> Vec<String> {
    let agents = Agents::start(redis, &[DLQ_TYPE]);
    let client = sdk_client(redis).await;
    let t = agent_type(DLQ_TYPE);
    let mut ids = Vec::new();
    for (wf, stage) in FAILING {
        let e = client
            .enqueue(
                &t,
                &json!({ "workflow_id": wf, "stage": stage, "input": { "fail": stage } }),
                agent_sdk::EnqueueOptions {
                    workflow_id: Some(wf.to_owned()),
                    stage: Some(stage.to_owned()),
                    ..agent_sdk::EnqueueOptions::default()
                },
            )
            .await
            .unwrap();
        ids.push(e.task_id);
    }
    let mut c = conn(redis).await;
    let _: String = redis::cmd("XADD")
        .arg(keys().tasks(&t))
        .arg("*")
        .arg("body")
        .arg(GARBAGE)
        .query_async(&mut c)
        .await
        .unwrap();
    wait_until("six dead letters", PATIENCE, || async {
        dlq_len(redis, DLQ_TYPE).await == 6
    })
    .await;
    agents.shutdown().await;
    assert_eq!(tasks_len(redis, DLQ_TYPE).await, 0);
    ids
}

/// `GET` → JSON, asserting the status.
async fn get_json(http: &reqwest::Client, url: &str, status: u16) -> Value {
    let (s, v) = body(http.get(url).send().await.unwrap()).await;
    assert_eq!(s.as_u16(), status, "GET {url}: {v}");
    v
}

/// `POST` JSON → JSON, asserting the status.
async fn post_json(http: &reqwest::Client, url: &str, req: Value, status: u16) -> Value {
    let (s, v) = body(http.post(url).json(&req).send().await.unwrap()).await;
    assert_eq!(s.as_u16(), status, "POST {url} {req}: {v}");
    v
}

fn item_ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_replayed_and_purged_exactly() {
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, &[]).await;
    let http = reqwest::Client::new();
    let task_ids = fill_dlq(&redis).await;
    let dlq = |p: &str| o.api(&format!("/dlq/{DLQ_TYPE}{p}"));

    // Every queue: ours has the six, every other type none.
    let v = get_json(&http, &o.api("/dlq"), 200).await;
    let queues = v["queues"].as_array().unwrap();
    let ours: Vec<&Value> = queues
        .iter()
        .filter(|q| q["agent_type"] == DLQ_TYPE)
        .collect();
    assert_eq!(ours.len(), 1, "{v}");
    assert_eq!(ours[0]["count"], 6, "{v}");
    let (oldest, newest) = (
        ours[0]["oldest_ms"].as_u64().unwrap(),
        ours[0]["newest_ms"].as_u64().unwrap(),
    );
    assert!(oldest <= newest, "{v}");
    let total: u64 = queues.iter().map(|q| q["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 6, "{v}");

    // The list: oldest first, all six, no next page.
    let all = get_json(&http, &dlq(""), 200).await;
    let ids = item_ids(&all);
    assert_eq!(ids.len(), 6, "{all}");
    assert!(all["next"].is_null(), "{all}");
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| {
        let (ms, seq) = id.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    });
    assert_eq!(ids, sorted, "oldest first");
    let items = all["items"].as_array().unwrap();
    // The worker runs tasks concurrently: dead letters come in any order.
    // The DLQ id of the dead letter of task `i`:
    let dlq_id_of = |i: usize| {
        items
            .iter()
            .find(|d| d["task_id"] == task_ids[i].as_str())
            .unwrap_or_else(|| panic!("task {} not listed: {all}", task_ids[i]))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for (i, (wf, stage)) in FAILING.iter().enumerate() {
        let d = &items[ids.iter().position(|id| *id == dlq_id_of(i)).unwrap()];
        assert_eq!(
            (&d["workflow_id"], &d["stage"], &d["reason"], &d["attempts"]),
            (&json!(wf), &json!(stage), &json!("permanent"), &json!(1)),
            "{d}"
        );
        assert_eq!(d["error"], format!("stage {stage} fails as asked"), "{d}");
        assert!(
            d.get("raw").is_none(),
            "lists leave the raw fields out: {d}"
        );
    }
    let garbage: Vec<&Value> = items
        .iter()
        .filter(|d| d["reason"] == "malformed")
        .collect();
    assert_eq!(garbage.len(), 1, "{all}");
    assert!(garbage[0].get("task_id").is_none(), "{all}");
    let garbage_id = garbage[0]["id"].as_str().unwrap().to_owned();

    // Each filter.
    let count = |v: &Value| v["items"].as_array().unwrap().len();
    let v = get_json(&http, &dlq("?error_contains=BUILD"), 200).await;
    assert_eq!(count(&v), 3, "case-insensitive: {v}");
    let v = get_json(&http, &dlq("?workflow=wf-a"), 200).await;
    assert_eq!(count(&v), 3, "{v}");
    let v = get_json(&http, &dlq("?workflow=wf-b&error_contains=lint"), 200).await;
    assert_eq!(item_ids(&v), vec![dlq_id_of(4)], "{v}");
    let v = get_json(&http, &dlq("?since=1h"), 200).await;
    assert_eq!(count(&v), 6, "{v}");
    let v = get_json(&http, &dlq("?since=2099-01-01T00:00:00Z"), 200).await;
    assert_eq!(count(&v), 0, "{v}");
    // Paging: limit and after.
    let p1 = get_json(&http, &dlq("?limit=4"), 200).await;
    assert_eq!(item_ids(&p1), ids[..4].to_vec());
    assert_eq!(p1["next"], json!(ids[3]));
    let p2 = get_json(
        &http,
        &dlq(&format!("?limit=4&after={}", p1["next"].as_str().unwrap())),
        200,
    )
    .await;
    assert_eq!(item_ids(&p2), ids[4..].to_vec());
    assert!(p2["next"].is_null(), "{p2}");
    let v = get_json(
        &http,
        &dlq(&format!("?workflow=wf-a&limit=2&after={}", ids[0])),
        200,
    )
    .await;
    let wf_a_after_first: Vec<String> = items[1..]
        .iter()
        .filter(|d| d["workflow_id"] == "wf-a")
        .take(2)
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(item_ids(&v), wf_a_after_first, "{v}");

    // One in full: the envelope decoded, the raw fields byte for byte.
    let d = get_json(&http, &dlq(&format!("/{}", dlq_id_of(2))), 200).await;
    assert_eq!(d["dead_letter"]["id"], json!(dlq_id_of(2)));
    assert_eq!(d["dead_letter"]["task_id"], json!(task_ids[2]));
    assert_eq!(d["envelope"]["id"], json!(task_ids[2]));
    assert_eq!(d["envelope"]["workflow_id"], "wf-a");
    assert_eq!(d["envelope"]["input"]["input"], json!({ "fail": "lint" }));
    assert!(d["decode_error"].is_null(), "{d}");
    let raw = d["raw"].as_array().unwrap();
    let names: Vec<&str> = raw.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["id", "wf", "stage", "body"], "{d}");
    assert_eq!(
        (&raw[1]["text"], &raw[1]["base64"]),
        (&json!("wf-a"), &json!("d2YtYQ=="))
    );
    assert!(
        raw[3]["text"].is_null(),
        "a MessagePack body is not text: {d}"
    );
    let g = get_json(&http, &dlq(&format!("/{garbage_id}")), 200).await;
    assert!(g["envelope"].is_null(), "{g}");
    assert!(
        g["decode_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{g}"
    );
    let body_field = g["raw"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "body")
        .unwrap();
    assert!(body_field["text"].is_null(), "not UTF-8: {g}");
    assert_eq!(
        body_field["base64"],
        json!(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            GARBAGE
        ))
    );
    refused(
        http.get(dlq("/1-0")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;

    // Replay, dry run: reports, moves nothing.
    let r = post_json(
        &http,
        &dlq("/replay"),
        json!({ "ids": [ids[0], ids[1]], "dry_run": true }),
        200,
    )
    .await;
    assert_eq!(
        (&r["dry_run"], &r["matched"], &r["replayed"], &r["gone"]),
        (&json!(true), &json!(2), &json!(0), &json!(0)),
        "{r}"
    );
    assert!(
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["outcome"] == "would_replay" && i["new_entry_id"].is_null()),
        "{r}"
    );
    let r = post_json(
        &http,
        &dlq("/replay"),
        json!({ "all": true, "dry_run": true }),
        200,
    )
    .await;
    assert_eq!(
        (&r["matched"], &r["replayed"]),
        (&json!(6), &json!(0)),
        "{r}"
    );
    assert_eq!(dlq_len(&redis, DLQ_TYPE).await, 6);
    assert_eq!(tasks_len(&redis, DLQ_TYPE).await, 0);

    // By id; the same id again is gone.
    let r = post_json(
        &http,
        &dlq("/replay"),
        json!({ "ids": [dlq_id_of(0)] }),
        200,
    )
    .await;
    assert_eq!(
        (&r["dry_run"], &r["matched"], &r["replayed"], &r["gone"]),
        (&json!(false), &json!(1), &json!(1), &json!(0)),
        "{r}"
    );
    assert_eq!(r["items"][0]["outcome"], "replayed");
    assert_eq!(r["items"][0]["task_id"], json!(task_ids[0]));
    assert_eq!(r["items"][0]["workflow_id"], "wf-a");
    let first_new = r["items"][0]["new_entry_id"].as_str().unwrap().to_owned();
    assert_eq!(dlq_len(&redis, DLQ_TYPE).await, 5);
    assert_eq!(tasks_len(&redis, DLQ_TYPE).await, 1);
    let r = post_json(
        &http,
        &dlq("/replay"),
        json!({ "ids": [dlq_id_of(0)] }),
        200,
    )
    .await;
    assert_eq!(
        (
            &r["matched"],
            &r["replayed"],
            &r["gone"],
            &r["items"][0]["outcome"]
        ),
        (&json!(1), &json!(0), &json!(1), &json!("gone")),
        "{r}"
    );
    // By filter.
    let r = post_json(&http, &dlq("/replay"), json!({ "workflow": "wf-b" }), 200).await;
    assert_eq!(
        (&r["matched"], &r["replayed"]),
        (&json!(2), &json!(2)),
        "{r}"
    );
    assert_eq!(dlq_len(&redis, DLQ_TYPE).await, 3);
    // Everything left.
    let r = post_json(&http, &dlq("/replay"), json!({ "all": true }), 200).await;
    assert_eq!(
        (&r["matched"], &r["replayed"], &r["gone"]),
        (&json!(3), &json!(3), &json!(0)),
        "{r}"
    );
    assert_eq!(dlq_len(&redis, DLQ_TYPE).await, 0);
    let v = get_json(&http, &dlq(""), 200).await;
    assert_eq!(count(&v), 0, "{v}");
    // The task stream got exactly the six back, each at attempt 1, the
    // undecodable one byte for byte.
    let tasks = entries(&redis, &keys().tasks(&agent_type(DLQ_TYPE))).await;
    assert_eq!(tasks.len(), 6);
    assert_eq!(tasks[0].0, first_new);
    for (id, fields) in &tasks {
        assert_eq!(
            fields.get("attempt").map(Vec::as_slice),
            Some(&b"1"[..]),
            "{id}"
        );
    }
    assert_eq!(
        tasks
            .iter()
            .filter(|(_, f)| f.get("body").map(Vec::as_slice) == Some(GARBAGE))
            .count(),
        1
    );

    // A worker runs them again: six dead letters again, each a first attempt.
    let agents = Agents::start(&redis, &[DLQ_TYPE]);
    wait_until("six dead letters again", PATIENCE, || async {
        dlq_len(&redis, DLQ_TYPE).await == 6
    })
    .await;
    agents.shutdown().await;
    assert_eq!(tasks_len(&redis, DLQ_TYPE).await, 0);
    let again = get_json(&http, &dlq(""), 200).await;
    let ids = item_ids(&again);
    assert_eq!(ids.len(), 6);
    let dlq_sdk = sdk_client(&redis).await.dead_letters();
    let snapshot = {
        let page = dlq_sdk
            .list(
                &agent_type(DLQ_TYPE),
                &agent_sdk::DeadLetterFilter::default(),
            )
            .await
            .unwrap();
        page.items
    };
    assert!(snapshot.iter().all(|d| d.attempts == 1), "{snapshot:?}");

    // Purge: by age (none is an hour old), by ids, by filters, all.
    let p = post_json(&http, &dlq("/purge"), json!({ "older_than": "1h" }), 200).await;
    assert_eq!(p, json!({ "purged": 0 }));
    assert_eq!(dlq_len(&redis, DLQ_TYPE).await, 6);
    let wf_a_builds: Vec<String> = again["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["workflow_id"] == "wf-a" && d["stage"] == "build")
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(wf_a_builds.len(), 2);
    let p = post_json(&http, &dlq("/purge"), json!({ "ids": wf_a_builds }), 200).await;
    assert_eq!(p, json!({ "purged": 2 }));
    let p = post_json(&http, &dlq("/purge"), json!({ "ids": wf_a_builds }), 200).await;
    assert_eq!(p, json!({ "purged": 0 }), "already purged");
    assert_eq!(dlq_len(&redis, DLQ_TYPE).await, 4);
    let p = post_json(
        &http,
        &dlq("/purge"),
        json!({ "error_contains": "lint" }),
        200,
    )
    .await;
    assert_eq!(p, json!({ "purged": 2 }));
    let p = post_json(&http, &dlq("/purge"), json!({ "workflow": "wf-b" }), 200).await;
    assert_eq!(p, json!({ "purged": 1 }));
    assert_eq!(dlq_len(&redis, DLQ_TYPE).await, 1);
    let p = post_json(&http, &dlq("/purge"), json!({ "all": true }), 200).await;
    assert_eq!(p, json!({ "purged": 1 }));
    let p = post_json(&http, &dlq("/purge"), json!({ "all": true }), 200).await;
    assert_eq!(p, json!({ "purged": 0 }));
    assert_eq!(dlq_len(&redis, DLQ_TYPE).await, 0);
    // `older_than: 0s` takes every one there is.
    for d in &snapshot[..3] {
        dlq_sdk.import(&agent_type(DLQ_TYPE), d).await.unwrap();
    }
    assert_eq!(dlq_len(&redis, DLQ_TYPE).await, 3);
    let p = post_json(
        &http,
        &dlq("/purge"),
        json!({ "since": "2099-01-01T00:00:00Z" }),
        200,
    )
    .await;
    assert_eq!(p, json!({ "purged": 0 }));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let p = post_json(&http, &dlq("/purge"), json!({ "older_than": "0s" }), 200).await;
    assert_eq!(p, json!({ "purged": 3 }));
    assert_eq!(dlq_len(&redis, DLQ_TYPE).await, 0);
    o.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_everything_takes_only_what_was_there() {
    // A live worker fails every replayed task again at once, so new dead
    // letters arrive while the replay walks the queue: the replay must take
    // the ones that were there when it began, and end.
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, &[]).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let agents = Agents::start(&redis, &[DLQ_TYPE]);
    let client = sdk_client(&redis).await;
    // More than one page of the replay's walk (500).
    const N: u64 = 600;
    for i in 0..N {
        client
            .enqueue(
                &agent_type(DLQ_TYPE),
                &json!({ "workflow_id": "wf-x", "stage": format!("s{i}"), "input": { "fail": format!("s{i}") } }),
                agent_sdk::EnqueueOptions::default(),
            )
            .await
            .unwrap();
    }
    wait_until("all dead", PATIENCE, || async {
        dlq_len(&redis, DLQ_TYPE).await == N
    })
    .await;
    for round in 0..2 {
        let r = post_json(
            &http,
            &o.api(&format!("/dlq/{DLQ_TYPE}/replay")),
            json!({ "all": true }),
            200,
        )
        .await;
        assert_eq!(
            (&r["matched"], &r["replayed"], &r["gone"]),
            (&json!(N), &json!(N), &json!(0)),
            "round {round}: {}",
            r["matched"]
        );
        wait_until("all dead again", PATIENCE, || async {
            dlq_len(&redis, DLQ_TYPE).await == N && tasks_len(&redis, DLQ_TYPE).await == 0
        })
        .await;
    }
    agents.shutdown().await;
    o.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_requests_are_refused_clearly() {
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, &[]).await;
    let http = reqwest::Client::new();
    let replay = o.api(&format!("/dlq/{DLQ_TYPE}/replay"));
    let purge = o.api(&format!("/dlq/{DLQ_TYPE}/purge"));
    let post = |url: &str, body: Value| http.post(url).json(&body).send();
    let bad = |m: &str, needle: &str| assert!(m.contains(needle), "{needle:?} not in {m:?}");

    // Replay: not exactly one selection, bad ids, purge's options.
    for body in [
        json!({}),
        json!({ "dry_run": true }),
        json!({ "all": false }),
        json!({ "ids": ["1-0"], "all": true }),
        json!({ "all": true, "workflow": "wf-a" }),
    ] {
        let m = refused(post(&replay, body).await.unwrap(), 400, "bad_request").await;
        bad(&m, "exactly one");
    }
    let m = refused(
        post(&replay, json!({ "ids": ["junk"] })).await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    bad(&m, "junk");
    let m = refused(
        post(&replay, json!({ "ids": [] })).await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    bad(&m, "ids");
    let m = refused(
        post(&replay, json!({ "older_than": "1h" })).await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    bad(&m, "purge");
    let m = refused(
        post(&replay, json!({ "since": "yesterday" }))
            .await
            .unwrap(),
        400,
        "bad_request",
    )
    .await;
    bad(&m, "since");
    // Purge: not exactly one selection, replay's option, bad age.
    for body in [
        json!({}),
        json!({ "all": true, "older_than": "1h" }),
        json!({ "ids": ["1-0"], "error_contains": "x" }),
    ] {
        let m = refused(post(&purge, body).await.unwrap(), 400, "bad_request").await;
        bad(&m, "older_than");
    }
    let m = refused(
        post(&purge, json!({ "all": true, "dry_run": true }))
            .await
            .unwrap(),
        400,
        "bad_request",
    )
    .await;
    bad(&m, "dry_run");
    let m = refused(
        post(&purge, json!({ "older_than": "soon" })).await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    bad(&m, "older_than");
    // Bodies: unknown fields and wrong shapes are 422 `invalid_body` as on
    // every route (api/error.rs), bad JSON 400, no JSON content type 415.
    for url in [&replay, &purge] {
        let m = refused(
            post(url, json!({ "all": true, "colour": 1 }))
                .await
                .unwrap(),
            422,
            "invalid_body",
        )
        .await;
        bad(&m, "colour");
        refused(
            post(url, json!({ "ids": "1-0" })).await.unwrap(),
            422,
            "invalid_body",
        )
        .await;
        let r = http
            .post(url.as_str())
            .header("content-type", "application/json")
            .body("{\"all\": ")
            .send()
            .await
            .unwrap();
        refused(r, 400, "malformed_json").await;
        let r = http
            .post(url.as_str())
            .body("{\"all\": true}")
            .send()
            .await
            .unwrap();
        refused(r, 415, "unsupported_media_type").await;
    }
    // A bad agent type: 422 `invalid` on every DLQ route.
    let t = "NOT%20A%20TYPE";
    refused(
        http.get(o.api(&format!("/dlq/{t}"))).send().await.unwrap(),
        422,
        "invalid",
    )
    .await;
    refused(
        http.get(o.api(&format!("/dlq/{t}/1-0")))
            .send()
            .await
            .unwrap(),
        422,
        "invalid",
    )
    .await;
    refused(
        post(&o.api(&format!("/dlq/{t}/replay")), json!({ "all": true }))
            .await
            .unwrap(),
        422,
        "invalid",
    )
    .await;
    refused(
        post(&o.api(&format!("/dlq/{t}/purge")), json!({ "all": true }))
            .await
            .unwrap(),
        422,
        "invalid",
    )
    .await;
    // List and show: bad queries and ids.
    let list = o.api(&format!("/dlq/{DLQ_TYPE}"));
    for (q, code) in [
        ("?limit=0", "bad_request"),
        ("?limit=1001", "bad_request"),
        ("?after=junk", "bad_request"),
        ("?since=yesterday", "bad_request"),
        ("?colour=red", "bad_query"),
        ("?limit=many", "bad_query"),
    ] {
        refused(
            http.get(format!("{list}{q}")).send().await.unwrap(),
            400,
            code,
        )
        .await;
    }
    refused(
        http.get(format!("{list}/junk")).send().await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    refused(
        http.get(format!("{list}/1-0")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    // An empty queue is no error.
    let v = get_json(&http, &list, 200).await;
    assert_eq!(v, json!({ "items": [], "next": null }));
    let r = post_json(&http, &replay, json!({ "all": true }), 200).await;
    assert_eq!(
        r,
        json!({
            "dry_run": false, "matched": 0, "replayed": 0, "gone": 0, "skipped": 0,
            "failed": 0, "items": [], "items_left_out": 0
        })
    );
    let r = post_json(&http, &replay, json!({ "ids": ["1-0"] }), 200).await;
    assert_eq!((&r["matched"], &r["gone"]), (&json!(1), &json!(1)), "{r}");
    o.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_overview_count_exactly() {
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, &[]).await;
    let http = reqwest::Client::new();
    let client = sdk_client(&redis).await;
    let dlq = client.dead_letters();
    let dead = |n: u32| {
        agent_sdk::schemas::DeadLetter::from_entry(
            "0-1",
            &[
                ("agent_type".to_owned(), b"x".to_vec()),
                ("reason".to_owned(), b"permanent".to_vec()),
                ("error".to_owned(), format!("boom {n}").into_bytes()),
                ("attempts".to_owned(), b"1".to_vec()),
                ("failed_at_ms".to_owned(), b"1".to_vec()),
                ("raw.body".to_owned(), b"{}".to_vec()),
            ],
        )
        .unwrap()
    };

    // st1: three waiting (one of them read and not acknowledged), two
    // delayed, four dead. st2: one dead letter, nothing else.
    let st1 = agent_type("st1");
    let mut c = conn(&redis).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys().tasks(&st1))
        .arg("workers")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .unwrap();
    for i in 0..3 {
        client
            .enqueue(
                &st1,
                &json!({ "i": i }),
                agent_sdk::EnqueueOptions::default(),
            )
            .await
            .unwrap();
    }
    for i in 0..2 {
        client
            .enqueue(
                &st1,
                &json!({ "later": i }),
                agent_sdk::EnqueueOptions {
                    delay: Some(Duration::from_secs(3600)),
                    ..agent_sdk::EnqueueOptions::default()
                },
            )
            .await
            .unwrap();
    }
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg("c1")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(keys().tasks(&st1))
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    for n in 0..4 {
        dlq.import(&st1, &dead(n)).await.unwrap();
    }
    dlq.import(&agent_type("st2"), &dead(9)).await.unwrap();

    let v = get_json(&http, &o.api("/streams"), 200).await;
    let streams = v["streams"].as_array().unwrap();
    let by_type = |t: &str| {
        streams
            .iter()
            .find(|s| s["agent_type"] == t)
            .unwrap_or_else(|| panic!("{t} missing: {v}"))
            .clone()
    };
    let mut s1 = by_type("st1");
    let age = s1["oldest_pending_age_ms"].as_u64().unwrap();
    assert!(age < 60_000, "{s1}");
    s1["oldest_pending_age_ms"] = json!("checked");
    assert_eq!(
        s1,
        json!({ "agent_type": "st1", "backlog": 3, "pending": 1,
                "oldest_pending_age_ms": "checked", "consumers": 1,
                "delayed": 2, "dlq": 4, "lag": 2 })
    );
    assert_eq!(
        by_type("st2"),
        json!({ "agent_type": "st2", "backlog": 0, "pending": 0,
                "oldest_pending_age_ms": null, "consumers": 0,
                "delayed": 0, "dlq": 1, "lag": null })
    );
    // Sorted by name, and nothing else has anything (the sdlc agents'
    // results streams exist, with nothing in the queues).
    let names: Vec<&str> = streams
        .iter()
        .map(|s| s["agent_type"].as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for s in streams {
        if s["agent_type"] != "st1" && s["agent_type"] != "st2" {
            assert_eq!(
                (&s["backlog"], &s["pending"], &s["delayed"], &s["dlq"]),
                (&json!(0), &json!(0), &json!(0), &json!(0)),
                "{s}"
            );
        }
    }
    let v = get_json(&http, &o.api("/dlq"), 200).await;
    let counts: std::collections::BTreeMap<&str, u64> = v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["agent_type"].as_str().unwrap(),
                q["count"].as_u64().unwrap(),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(
        counts,
        std::collections::BTreeMap::from([("st1", 4), ("st2", 1)])
    );

    // Overview: workflows by status. Nothing yet.
    let v = get_json(&http, &o.api("/overview"), 200).await;
    assert_eq!(
        v,
        json!({ "workflows": {
            "active": { "pending": 0, "running": 0, "awaiting_approval": 0, "blocked": 0, "compensating": 0 },
            "recent_ended": { "completed": 0, "failed": 0, "cancelled": 0 },
            "recent_window": 1000 } })
    );
    let r = http
        .post(o.api("/definitions"))
        .header("content-type", "application/yaml")
        .body(GATED)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let workflows = o.api("/workflows");
    let start = |definition: &str, id: &str| {
        post_json(
            &http,
            &workflows,
            json!({ "definition": definition, "id": id }),
            201,
        )
    };
    let status = |v: &Value| v["status"].as_str().unwrap().to_owned();
    assert_eq!(status(&start("gated", "g-wait").await), "awaiting_approval");
    start("gated", "g-cancel").await;
    let v = post_json(&http, &o.api("/workflows/g-cancel/cancel"), json!({}), 200).await;
    assert_eq!(status(&v), "cancelled");
    start("gated", "g-reject").await;
    let v = post_json(
        &http,
        &o.api("/workflows/g-reject/stages/build/reject"),
        json!({}),
        200,
    )
    .await;
    assert_eq!(status(&v), "failed");
    // No scaffold agent runs: its stage stays running, and a cancelled one
    // waits for it while compensating.
    assert_eq!(status(&start("sdlc", "s-run").await), "running");
    start("sdlc", "s-cancel").await;
    let v = post_json(&http, &o.api("/workflows/s-cancel/cancel"), json!({}), 200).await;
    assert_eq!(status(&v), "compensating");
    let v = get_json(&http, &o.api("/overview"), 200).await;
    assert_eq!(
        v,
        json!({ "workflows": {
            "active": { "pending": 0, "running": 1, "awaiting_approval": 1, "blocked": 0, "compensating": 1 },
            "recent_ended": { "completed": 0, "failed": 1, "cancelled": 1 },
            "recent_window": 1000 } })
    );
    // The two scaffold tasks wait in their stream.
    let v = get_json(&http, &o.api("/streams"), 200).await;
    let scaffold = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["agent_type"] == "scaffold")
        .unwrap()
        .clone();
    assert_eq!(
        (&scaffold["backlog"], &scaffold["pending"], &scaffold["dlq"]),
        (&json!(2), &json!(0), &json!(0)),
        "{scaffold}"
    );
    o.shutdown().await;
}
