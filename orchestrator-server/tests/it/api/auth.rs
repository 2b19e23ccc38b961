//! Tokens and roles: every `/api/v1` call but the document needs a known
//! bearer token (in any case of `Bearer`) whose role allows the call; the
//! probes need none; with no token configured, one is generated into a
//! private file and only its path is logged; the audit trail names the
//! token behind each action.

use super::*;

/// A path of the document with every `{param}` as `x1`.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').unwrap() + open;
        out.push_str(&rest[..open]);
        out.push_str("x1");
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Every (method, path) the document marks with the bearer scheme.
fn bearer_operations() -> Vec<(String, String)> {
    let doc: Value = serde_json::from_str(&orchestrator_server::api::openapi_json()).unwrap();
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op.get("security").is_some() {
                out.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bearer_route_refuses_a_missing_or_unknown_token_with_401() {
    let api = Api::start().await;
    let ops = bearer_operations();
    assert!(ops.len() >= 20, "{ops:?}");
    let plain = reqwest::Client::new();
    for (method, path) in &ops {
        let url = format!("{}{}", api.o.url, concrete(path));
        for auth in [
            None,
            Some(format!("Bearer {}", ADMIN.replace('a', "b"))),
            Some(format!("Basic {ADMIN}")),
            Some(ADMIN.to_owned()),
        ] {
            let mut req = plain
                .request(method.parse().unwrap(), &url)
                .header("content-type", "application/json");
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.unwrap();
            let what = format!("{method} {path} with {auth:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer", "{what}");
            let m = refused(r, 401, "unauthorized").await;
            assert!(
                m.contains(if auth.is_none() { "missing" } else { "token" }),
                "{what}: {m}"
            );
        }
    }
    // The document and the probes need none.
    for open in ["/api/v1/openapi.json", "/health", "/ready"] {
        let r = plain.get(format!("{}{open}", api.o.url)).send().await;
        assert_eq!(r.unwrap().status(), 200, "{open}");
    }
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_matched_in_any_case_and_whoami_names_the_token() {
    let api = Api::start().await;
    let plain = reqwest::Client::new();
    for (scheme, token, name, role) in [
        ("bearer", VIEWER, "test-viewer", "viewer"),
        ("BEARER", OPERATOR, "test-operator", "operator"),
        ("Bearer", ADMIN, "test-admin", "admin"),
    ] {
        let r = plain
            .get(api.url("/whoami"))
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        let (s, v) = body(r).await;
        assert_eq!(s, 200, "{scheme}: {v}");
        assert_eq!(v, json!({ "name": name, "role": role }));
    }
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reads_but_cannot_act_on_workflows_or_dead_letters() {
    let api = Api::start().await;
    api.define_gated().await;
    let id = api.create("gated", json!({})).await;
    let viewer = http_as(VIEWER);
    let r = viewer.get(api.url(&format!("/workflows/{id}"))).send();
    assert_eq!(r.await.unwrap().status(), 200);
    for (path, body) in [
        (format!("/workflows/{id}/cancel"), json!({})),
        (format!("/workflows/{id}/stages/build/approve"), json!({})),
        (format!("/workflows/{id}/stages/build/reject"), json!({})),
        ("/dlq/alpha/replay".to_owned(), json!({ "all": true })),
        ("/dlq/alpha/purge".to_owned(), json!({ "all": true })),
        ("/workflows".to_owned(), json!({ "definition": "gated" })),
    ] {
        let r = viewer
            .post(api.url(&path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let m = refused(r, 403, "forbidden").await;
        assert!(
            m.contains("operator role") && m.contains("test-viewer"),
            "{path}: {m}"
        );
    }
    // Nothing happened: still waiting for its approval, one workflow.
    let v = api.get_json(&format!("/workflows/{id}"), 200).await;
    assert_eq!(v["stages"][0]["status"], "awaiting_approval", "{v}");
    let list = api.get_json("/workflows", 200).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cannot_send_raw_tasks_or_register_definitions() {
    let api = Api::start().await;
    let operator = http_as(OPERATOR);
    // The rollback that would skip the deployment stage's approval.
    let r = operator
        .post(api.url("/tasks/deployment"))
        .json(&json!({ "input": { "action": "rollback" } }))
        .send()
        .await
        .unwrap();
    let m = refused(r, 403, "forbidden").await;
    assert!(m.contains("admin role"), "{m}");
    let tasks = keys().tasks(&agent_type("deployment"));
    assert_eq!(xlen(&api.redis, &tasks).await, 0);
    let r = operator
        .post(api.url("/definitions"))
        .header("content-type", "application/yaml")
        .body(GATED)
        .send()
        .await
        .unwrap();
    refused(r, 403, "forbidden").await;
    refused(api.get("/definitions/gated").await, 404, "not_found").await;
    // What an operator may do, it does.
    let r = operator
        .post(api.url("/workflows"))
        .json(&json!({ "definition": "sdlc" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workflow_log_names_the_token_behind_each_action() {
    let api = Api::start().await;
    api.define_gated().await;
    let approved = api.create("gated", json!({})).await;
    let rejected = api.create("gated", json!({})).await;
    let cancelled = api.create("gated", json!({})).await;
    let operator = http_as(OPERATOR);
    for (path, body) in [
        (
            format!("/workflows/{approved}/stages/build/approve"),
            json!({}),
        ),
        (
            format!("/workflows/{rejected}/stages/build/reject"),
            json!({ "reason": "no" }),
        ),
        (format!("/workflows/{cancelled}/cancel"), json!({})),
    ] {
        let r = operator
            .post(api.url(&path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let abort = api
        .post_empty(&format!("/workflows/{approved}/abort"))
        .await;
    assert_eq!(abort.status(), 200);
    for (id, kind, by) in [
        (&approved, "approved", "test-operator"),
        (&approved, "aborted", "test-admin"),
        (&rejected, "rejected", "test-operator"),
        (&cancelled, "cancelled", "test-operator"),
    ] {
        let entries = log(&api.redis, id).await;
        let e = entries
            .iter()
            .find(|e| e.kind == kind)
            .unwrap_or_else(|| panic!("{id}: no {kind} in {entries:?}"));
        assert_eq!(e.event["by"], by, "{id} {kind}: {:?}", e.event);
    }
    // Events nobody caused carry no name.
    let started = log(&api.redis, &approved).await;
    assert!(started[0].event.get("by").is_none(), "{:?}", started[0]);
    api.shutdown().await;
}

/// The real binary with no token configured: it generates one into a
/// private file, logs the file's path and never the token; the token is
/// an admin's, and the audit lines name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_token_goes_to_a_private_file_and_never_into_the_log() {
    let redis = TestRedis::start();
    let out = redis.dir().join("state/orchestrator.token");
    let out_arg = out.display().to_string();
    let p = Proc::spawn(&redis, "orch-gen", &["--token-out", &out_arg]).await;
    let token = std::fs::read_to_string(&out).unwrap().trim().to_owned();
    assert!(token.len() >= 64, "{token}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    let plain = reqwest::Client::new();
    let r = plain.get(p.api("/whoami")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let admin = http_as(&token);
    let v: Value = admin
        .get(p.api("/whoami"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({ "name": "generated", "role": "admin" }));
    // Actions of each audited kind.
    let r = admin
        .post(p.api("/definitions"))
        .header("content-type", "application/yaml")
        .body(GATED)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = admin
        .post(p.api("/tasks/alpha"))
        .json(&json!({ "input": {} }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = admin
        .post(p.api("/dlq/alpha/purge"))
        .json(&json!({ "all": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let text = p.log_text();
    assert!(
        text.contains(&out_arg),
        "the log does not say where: {text}"
    );
    assert!(!text.contains(&token), "the token is in the log");
    for action in ["define", "raw_task", "dlq_purge"] {
        assert!(
            text.lines()
                .any(|l| l.contains("audit") && l.contains("generated") && l.contains(action)),
            "no audit line for {action}: {text}"
        );
    }
}

/// `orchestrator token new` prints a token once and appends only its hash;
/// a server on that tokens file knows the token by its name and role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_made_by_token_new_opens_the_api_with_its_role() {
    let redis = TestRedis::start();
    let file = redis.dir().join("made-tokens");
    let file_arg = file.display().to_string();
    let new = |name: &str, role: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(["token", "new", "--name", name, "--role", role])
            .args(["--tokens-file", &file_arg])
            .env_clear()
            .output()
            .unwrap()
    };
    let o = new("ci-bot", "operator");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let token = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    let o = new("reader", "viewer");
    assert!(o.status.success());
    // A name is used once; a bad role is refused.
    assert_eq!(new("reader", "viewer").status.code(), Some(64));
    assert_eq!(new("x", "root").status.code(), Some(2));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&token), "{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    let p = Proc::spawn(&redis, "orch-made", &["--tokens-file", &file_arg]).await;
    let v: Value = http_as(&token)
        .get(p.api("/whoami"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({ "name": "ci-bot", "role": "operator" }));
    assert!(!p.log_text().contains(&token));
}
