//! The OpenAPI document: served as the code builds it, describing exactly
//! the routes the server answers (both ways), with the token marked where
//! the server asks for it, and valid by `openapi-spec-validator`.

use crate::common::*;
use agent_sdk::testing::TestRedis;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every (method, path) the document describes.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            if METHODS.contains(&method.as_str()) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

fn document() -> Value {
    serde_json::to_value(orchestrator_server::api::openapi()).unwrap()
}

/// A concrete URL path for a templated one.
fn concrete(path: &str) -> String {
    path.replace("{agent_type}", "alpha")
        .replace("{task_id}", "t-1")
        .replace("{id}", "x")
        .replace("{stage}", "build")
        .replace("{name}", "x")
}

/// Every route the server answers, written out: adding, removing or
/// renaming a route without its documentation fails here.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/workflows"),
    ("POST", "/api/v1/workflows"),
    ("GET", "/api/v1/workflows/{id}"),
    ("DELETE", "/api/v1/workflows/{id}"),
    ("GET", "/api/v1/workflows/{id}/log"),
    ("GET", "/api/v1/workflows/{id}/events"),
    ("POST", "/api/v1/workflows/{id}/cancel"),
    ("POST", "/api/v1/workflows/{id}/abort"),
    ("POST", "/api/v1/workflows/{id}/stages/{stage}/approve"),
    ("POST", "/api/v1/workflows/{id}/stages/{stage}/reject"),
    ("POST", "/api/v1/workflows/{id}/stages/{stage}/replay"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/definitions"),
    ("POST", "/api/v1/definitions"),
    ("GET", "/api/v1/definitions/{name}"),
    ("POST", "/api/v1/tasks/{agent_type}"),
    ("GET", "/api/v1/tasks/{agent_type}/{task_id}"),
    ("GET", "/api/v1/agents"),
    ("GET", "/api/v1/overview"),
    ("GET", "/api/v1/streams"),
    ("GET", "/api/v1/memory"),
    ("GET", "/api/v1/dlq"),
    ("GET", "/api/v1/dlq/{agent_type}"),
    ("POST", "/api/v1/dlq/{agent_type}/replay"),
    ("POST", "/api/v1/dlq/{agent_type}/purge"),
    ("GET", "/api/v1/dlq/{agent_type}/{id}"),
    ("GET", "/api/v1/whoami"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
];

/// The only routes that need no token.
const OPEN: &[&str] = &["/api/v1/openapi.json", "/health", "/ready", "/metrics"];

#[test]
fn the_document_lists_exactly_the_routes() {
    let doc = document();
    let want: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(ROUTES.len(), want.len(), "a route is listed twice");
    let have = operations(&doc);
    let missing: Vec<_> = want.difference(&have).collect();
    let extra: Vec<_> = have.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "not in the document: {missing:?}; in the document, not in this list: {extra:?}"
    );
    // Every operation: a unique id, a summary, a tag, and an error body for
    // each error status.
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let what = format!("{method} {path}");
            assert!(
                ids.insert(op["operationId"].as_str().unwrap().to_owned()),
                "{what}: operationId taken"
            );
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{what}: no summary"
            );
            assert_eq!(op["tags"].as_array().unwrap().len(), 1, "{what}: tags");
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{what}: no success answer"
            );
            for (status, r) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ApiErrorBody",
                        "{what} {status}"
                    );
                }
            }
            // Path parameters: exactly the template's.
            let template: BTreeSet<String> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .map(str::to_owned)
                .collect();
            let declared: BTreeSet<String> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(template, declared, "{what}: path parameters");
            // The token: on every /api/v1 operation but the document itself.
            let open = OPEN.contains(&path.as_str());
            assert_eq!(
                op.get("security").is_none(),
                open,
                "{what}: security {:?}",
                op.get("security")
            );
            assert_eq!(responses.contains_key("401"), !open, "{what}: 401");
            if !open {
                assert_eq!(op["security"], json!([{ "bearer": [] }]), "{what}");
                // The role it needs is in its 403.
                let forbidden = responses["403"]["description"].as_str().unwrap();
                assert!(forbidden.contains("role"), "{what}: {forbidden}");
            }
            // What the browser guard answers, on every route.
            assert!(responses.contains_key("403"), "{what}: 403");
            assert!(responses.contains_key("421"), "{what}: 421");
            if method == "post" {
                assert!(responses.contains_key("415"), "{what}: 415");
                // Every POST carries JSON, so the document says its body is
                // required.
                assert_eq!(op["requestBody"]["required"], true, "{what}");
                assert!(
                    op["requestBody"]["content"]["application/json"].is_object(),
                    "{what}"
                );
            }
        }
    }
    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(
        (&bearer["type"], &bearer["scheme"]),
        (&json!("http"), &json!("bearer"))
    );
    // The event streams are documented as such.
    for p in ["/api/v1/events", "/api/v1/workflows/{id}/events"] {
        assert!(
            doc["paths"][p]["get"]["responses"]["200"]["content"]["text/event-stream"].is_object(),
            "{p}"
        );
    }
    // The error body is the one the server sends.
    assert_eq!(
        doc["components"]["schemas"]["ApiErrorBody"]["properties"]["error"]["$ref"],
        "#/components/schemas/ApiErrorDetail"
    );
}

#[test]
fn the_document_is_valid_openapi() {
    // scripts/openapi-check.sh installs openapi-spec-validator into a venv
    // under target/ when it is missing (python3 and PyPI needed), then
    // validates the file it is given; a document it refuses fails here.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, orchestrator_server::api::openapi_json()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/openapi-check.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg(&file)
        .output()
        .expect("run scripts/openapi-check.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("valid OpenAPI 3.1"),
        "unexpected output:\n{stdout}\n{stderr}"
    );
}

#[test]
fn the_cli_prints_the_document_without_redis() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .arg("openapi")
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("\n  \"openapi\": \"3.1.0\""),
        "not pretty JSON"
    );
    let printed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(printed, document());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_the_document_and_every_route_in_it() {
    let redis = TestRedis::start();
    let token = ADMIN;
    let o = InProcess::start(&redis, &[]).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // Served without the token, and the same as the code builds.
    let r = http.get(o.api("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let served: Value = r.json().await.unwrap();
    let doc = document();
    assert_eq!(served, doc);

    // Every operation answers from its handler: never the router's own
    // 404 `no_route` / 405 `method_not_allowed`. Without the token, the
    // operations marked as needing it answer 401 and only those.
    let ops = operations(&doc);
    assert_eq!(ops.len(), ROUTES.len());
    for (method, path) in &ops {
        let url = format!("{}{}", o.url, concrete(path));
        let secured = doc["paths"][path][method.to_lowercase()]
            .get("security")
            .is_some();
        for with_token in [false, true] {
            let mut req = http.request(method.parse().unwrap(), &url);
            if with_token {
                req = req.bearer_auth(token);
            }
            if method == "POST" {
                req = req.json(&json!({}));
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let what = format!("{method} {url} (token: {with_token})");
            assert_ne!(status, 405, "{what}");
            if !with_token {
                assert_eq!(status == 401, secured, "{what}: {status}");
                continue;
            }
            let sse = r
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            if sse {
                // An endless stream: the status line is enough.
                assert_eq!(status, 200, "{what}");
                drop(r);
                continue;
            }
            let text = r.text().await.unwrap();
            if status >= 400 {
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|_| panic!("{what}: {status} not JSON: {text}"));
                let code = v["error"]["code"].as_str().unwrap();
                assert!(
                    !["no_route", "method_not_allowed", "unauthorized"].contains(&code),
                    "{what}: {status} {code}"
                );
                // The status is one the document lists for the operation.
                let documented = &doc["paths"][path][method.to_lowercase()]["responses"];
                assert!(
                    documented.get(status.to_string()).is_some(),
                    "{what}: {status} {code} is not documented"
                );
            }
        }
    }

    // The check above can fail: the router's own answers look like this.
    let r = http
        .get(o.api("/no-such-route"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_route");
    let r = http
        .delete(o.api("/workflows"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "method_not_allowed");

    // The dashboard page is served but is not part of the API document.
    let r = http.get(format!("{}/", o.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(doc["paths"].get("/").is_none());
    o.shutdown().await;
}
