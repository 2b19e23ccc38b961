//! The server's bounds, attacked for real over TCP: a head or a body sent
//! byte by byte (slowloris), connections past the cap, JSON deeper than a
//! worker decodes, definitions past the stage and byte limits. And the other
//! side of the one set of limits: an input exactly at the limit is accepted
//! and runs on a real worker (SDK), never dead-lettered as malformed.

use crate::common::*;
use agent_sdk::schemas::limits;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound of every wait here; none asserts a speed.
const PATIENCE: Duration = Duration::from_secs(30);

/// A fresh Redis and the server in-process with `extra` flags.
async fn start(extra: &[&str]) -> (TestRedis, InProcess) {
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, extra).await;
    (redis, o)
}

/// A raw TCP connection to the server.
async fn connect(o: &InProcess) -> TcpStream {
    let addr = o.url.trim_start_matches("http://");
    TcpStream::connect(addr).await.expect("connect")
}

/// Reads until the server closes the connection (EOF or reset); what it
/// sent. Panics if it is still open after [`PATIENCE`].
async fn read_until_closed(read: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept the connection open for {PATIENCE:?}; it sent: {}",
        String::from_utf8_lossy(&got)
    );
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads one whole answer of `GET /health` (its head and its short body).
async fn read_health_answer(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// JSON text of `levels` nested arrays around `1`.
fn nested_text(levels: usize) -> String {
    format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
}

fn nested(levels: usize) -> Value {
    serde_json::from_str(&nested_text(levels)).unwrap()
}

/// `POST` a JSON text as is; status and JSON answer.
async fn post_text(http: &reqwest::Client, url: &str, text: String) -> (StatusCode, Value) {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(text)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    let v = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON ({status}): {body}"));
    (status, v)
}

async fn define(
    http: &reqwest::Client,
    o: &InProcess,
    content_type: &str,
    text: String,
) -> (StatusCode, Value) {
    let r = http
        .post(o.api("/definitions"))
        .header("content-type", content_type)
        .body(text)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    let v = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON ({status}): {body}"));
    (status, v)
}

/// Registers a one-stage definition on agent type `alpha`, so raw tasks
/// may go to it (a raw task goes only to a type something names).
async fn name_alpha(http: &reqwest::Client, o: &InProcess) {
    let def = json!({ "name": "alpha-only", "stages": [{ "name": "a", "agent": "alpha" }] });
    let (status, v) = define(http, o, "application/json", def.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn a_head_sent_byte_by_byte_is_cut_at_the_header_timeout() {
    let (_redis, o) = start(&["--header-timeout", "1s"]).await;
    let s = connect(&o).await;
    let (mut read, mut write) = s.into_split();
    // Slowloris: a request line, then a header that never ends, one byte
    // every 200 ms for as long as the server takes it.
    let trickle = tokio::spawn(async move {
        if write
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            .await
            .is_err()
        {
            return;
        }
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let sent = read_until_closed(&mut read).await;
    assert!(
        !sent.contains("200 OK"),
        "answered a request whose head never ended: {sent}"
    );
    trickle.abort();
    // The server still serves everyone else.
    let mut ok = connect(&o).await;
    ok.write_all(HEALTH).await.unwrap();
    assert!(
        read_health_answer(&mut ok)
            .await
            .starts_with("HTTP/1.1 200")
    );
    o.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let (_redis, o) = start(&["--header-timeout", "1s"]).await;
    let mut s = connect(&o).await;
    let sent = read_until_closed(&mut s).await;
    assert!(!sent.contains("200 OK"), "{sent}");
    o.shutdown().await;
}

#[tokio::test]
async fn a_connection_nothing_moves_on_is_closed_at_the_idle_timeout() {
    // The header timeout out of the way: only the idle clock can close it.
    let (_redis, o) = start(&[
        "--header-timeout",
        "1h",
        "--request-timeout",
        "1s",
        "--idle-timeout",
        "16s",
    ])
    .await;
    let mut s = connect(&o).await;
    s.write_all(HEALTH).await.unwrap();
    let answer = read_health_answer(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Kept alive, then silent both ways: closed once idle.
    read_until_closed(&mut s).await;
    o.shutdown().await;
}

#[tokio::test]
async fn a_body_sent_byte_by_byte_is_cut_at_the_body_timeout() {
    let (_redis, o) = start(&["--body-timeout", "1s"]).await;
    let s = connect(&o).await;
    let (mut read, mut write) = s.into_split();
    let trickle = tokio::spawn(async move {
        let head = format!(
            "POST /api/v1/workflows HTTP/1.1\r\nHost: localhost\r\n\
             Authorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"input\": \"",
            orchestrator_server::testing::ADMIN
        );
        if write.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let sent = read_until_closed(&mut read).await;
    trickle.abort();
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    assert!(
        sent.contains("body_timeout") && sent.contains("body timeout of 1s"),
        "{sent}"
    );
    assert!(
        sent.to_ascii_lowercase().contains("connection: close"),
        "{sent}"
    );
    o.shutdown().await;
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let (_redis, o) = start(&["--max-connections", "2", "--header-timeout", "60s"]).await;
    // Two kept-alive connections, each served once: they hold the two slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect(&o).await;
        s.write_all(HEALTH).await.unwrap();
        let answer = tokio::time::timeout(PATIENCE, read_health_answer(&mut s))
            .await
            .expect("a connection within the cap is served");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(s);
    }
    // A third connects (the kernel queues it) but is not served while the
    // two are open.
    let mut third = connect(&o).await;
    third.write_all(HEALTH).await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_secs(1), third.read(&mut buf)).await;
    assert!(early.is_err(), "served past the cap: {early:?}");
    // One closes: the third is served.
    drop(held.remove(0));
    let answer = tokio::time::timeout(PATIENCE, read_health_answer(&mut third))
        .await
        .expect("served once a slot is free");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(held);
    o.shutdown().await;
}

#[tokio::test]
async fn a_slow_handler_is_answered_503_at_the_request_timeout_but_event_streams_live_on() {
    let (_redis, o) = start(&["--request-timeout", "1s"]).await;
    let http = orchestrator_server::testing::http();
    // Waiting 20 s for a result that never comes outlasts the request timeout.
    let r = http
        .get(o.api("/tasks/alpha/never?wait=20s"))
        .timeout(PATIENCE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_timeout", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("1s"),
        "{v}"
    );

    // An event stream answers at once, then streams past the request timeout.
    let mut events = http.get(o.api("/events")).send().await.unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let def = "name: one\nstages:\n  - name: build\n    agent: alpha\n";
    let (status, _) = define(&http, &o, "application/yaml", def.into()).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = create(&http, &o.url, "one", json!({})).await;
    // Its event comes through the stream opened before the request timeout.
    let mut seen = String::new();
    tokio::time::timeout(PATIENCE, async {
        while !seen.contains(&id) {
            let chunk = events.chunk().await.expect("read the stream");
            let chunk = chunk.expect("the stream is still open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no event of {id} on the stream; it sent: {seen}"));
    drop(events);
    o.shutdown().await;
}

#[tokio::test]
async fn json_deeper_than_a_worker_decodes_is_refused_naming_the_limit() {
    let (_redis, o) = start(&[]).await;
    let http = orchestrator_server::testing::http();
    name_alpha(&http, &o).await;
    // The body: {"definition": …, "input": <63 levels>} is 64 deep, one past.
    for (path, body) in [
        (
            "/workflows",
            format!(
                r#"{{"definition": "sdlc", "input": {}}}"#,
                nested_text(limits::MAX_DEPTH)
            ),
        ),
        (
            "/tasks/alpha",
            format!(r#"{{"input": {}}}"#, nested_text(limits::MAX_DEPTH)),
        ),
        (
            "/workflows/x/cancel",
            format!(r#"{{"reason": {}}}"#, nested_text(limits::MAX_DEPTH)),
        ),
    ] {
        let (status, v) = post_text(&http, &o.api(path), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {v}");
        assert_eq!(v["error"]["code"], "too_deep", "{path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("depth limit of 64"),
            "{path}: {v}"
        );
    }
    // Within the body's depth, an input its task could not carry: 63
    // levels, plus the envelope and the stage input, would be 65.
    let input = nested(limits::MAX_INPUT_DEPTH + 1);
    for (path, body) in [
        (
            "/workflows",
            json!({ "definition": "sdlc", "input": input }),
        ),
        ("/tasks/alpha", json!({ "input": input })),
    ] {
        let (status, v) = post_text(&http, &o.api(path), body.to_string()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("depth limit of 62"),
            "{path}: {v}"
        );
    }
    o.shutdown().await;
}

#[tokio::test]
async fn an_input_over_the_size_limit_is_refused_naming_it() {
    let (_redis, o) = start(&[]).await;
    let http = orchestrator_server::testing::http();
    name_alpha(&http, &o).await;
    // Under the 1 MiB body limit as JSON, over the 256 KiB its task may carry.
    let input = json!({ "blob": "x".repeat(limits::MAX_INPUT_BYTES + 1) });
    for (path, body) in [
        (
            "/workflows",
            json!({ "definition": "sdlc", "input": input }),
        ),
        ("/tasks/alpha", json!({ "input": input })),
    ] {
        let (status, v) = post_text(&http, &o.api(path), body.to_string()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("over the limit of 262144 bytes"),
            "{path}: {v}"
        );
    }
    // Over the body limit: 413 before anything is parsed.
    let huge = json!({ "input": "x".repeat(limits::MAX_BODY_BYTES) });
    let (status, v) = post_text(&http, &o.api("/tasks/alpha"), huge.to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"]["code"], "body_too_large", "{v}");
    o.shutdown().await;
}

#[tokio::test]
async fn an_input_at_the_depth_limit_runs_on_a_real_worker() {
    let (redis, o) = start(&[]).await;
    let agents = Agents::start(&redis, &["alpha"]);
    let http = orchestrator_server::testing::http();
    let def = "name: deep\nstages:\n  - name: build\n    agent: alpha\n    max_attempts: 1\n";
    let (status, v) = define(&http, &o, "application/yaml", def.into()).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");

    // The deepest input accepted: its stage task (envelope, stage input,
    // input) is exactly as deep as a worker decodes.
    let input = nested(limits::MAX_INPUT_DEPTH);
    let id = create(&http, &o.url, "deep", input.clone()).await;
    let url = o.api(&format!("/workflows/{id}"));
    let status = tokio::time::timeout(PATIENCE, async {
        loop {
            let v: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
            let status = v["status"].as_str().unwrap_or_default().to_owned();
            if matches!(status.as_str(), "completed" | "failed" | "blocked") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the deep workflow ends or stops within the patience");
    assert_eq!(
        status, "completed",
        "the worker refused what the API accepted"
    );

    // A task of the same input, straight to the agent type.
    let r = http
        .post(o.api("/tasks/alpha"))
        .json(&json!({ "input": input, "max_attempts": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let task: Value = r.json().await.unwrap();
    let task_id = task["task_id"].as_str().unwrap();
    let r = http
        .get(o.api(&format!("/tasks/alpha/{task_id}?wait=20s")))
        .timeout(PATIENCE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let result: Value = r.json().await.unwrap();
    assert_eq!(result["status"], "succeeded", "{result}");

    // And nothing of it was dead-lettered.
    let dlq = keys().dlq(&agent_type("alpha"));
    assert_eq!(xlen(&redis, &dlq).await, 0, "dead letters in {dlq}");
    assert_eq!(agents.lab.runs().iter().filter(|r| r.ok).count(), 2);
    agents.shutdown().await;
    o.shutdown().await;
}

#[tokio::test]
async fn a_definition_of_2000_stages_is_refused_naming_the_stage_limit() {
    let (_redis, o) = start(&[]).await;
    let http = orchestrator_server::testing::http();
    let stages: Vec<Value> = (0..2000)
        .map(|i| json!({ "name": format!("s{i}"), "agent": format!("a{i}") }))
        .collect();
    let def = json!({ "name": "wide", "stages": stages });
    let mut yaml = String::from("name: wide\nstages:\n");
    for i in 0..2000 {
        yaml.push_str(&format!("  - name: s{i}\n    agent: a{i}\n"));
    }
    for (content_type, text) in [
        ("application/json", def.to_string()),
        ("application/yaml", yaml),
    ] {
        let (status, v) = define(&http, &o, content_type, text).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{content_type}: {v}"
        );
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("2000 stages, over the stage limit of 256"),
            "{content_type}: {msg}"
        );
    }
    let r = http.get(o.api("/definitions/wide")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // None of its 2,000 agent types is watched.
    let agents: Value = http
        .get(o.api("/agents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!agents.to_string().contains("\"a1999\""), "{agents}");
    o.shutdown().await;
}

#[tokio::test]
async fn a_definition_over_the_byte_limit_is_refused_naming_it() {
    let (_redis, o) = start(&[]).await;
    let http = orchestrator_server::testing::http();
    let text = format!(
        "name: big\ndescription: {}\nstages:\n  - name: build\n    agent: alpha\n",
        "x".repeat(limits::MAX_DEFINITION_BYTES)
    );
    let (status, v) = define(&http, &o, "application/yaml", text).await;
    assert!(status.is_client_error(), "{status}: {v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("over the limit of 262144 bytes"), "{msg}");
    let r = http.get(o.api("/definitions/big")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    o.shutdown().await;
}

#[test]
fn the_openapi_document_carries_the_definition_limits() {
    let doc = serde_json::to_value(orchestrator_server::api::openapi()).unwrap();
    let def = &doc["components"]["schemas"]["Definition"]["properties"];
    assert_eq!(def["stages"]["maxItems"], limits::MAX_STAGES, "{def}");
    assert_eq!(def["stages"]["minItems"], 1, "{def}");
    assert_eq!(def["name"]["maxLength"], 64, "{def}");
    let stage = &doc["components"]["schemas"]["StageDef"]["properties"];
    assert_eq!(stage["name"]["pattern"], "^[a-z0-9_-]{1,64}$", "{stage}");
}
