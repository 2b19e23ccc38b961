//! `/workflows`: create, read, log, operator actions and the list. No stage
//! agent runs here: a workflow of `sdlc` stays at its running `scaffold`.

use super::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_workflow_refuses_bad_bodies_by_kind() {
    let api = Api::start_with(&["--max-body", "4096"]).await;
    // Malformed, mis-shaped, unknown fields, wrong content type, oversized.
    let r = api
        .post_raw("/workflows", Some("application/json"), "{\"definition\": ")
        .await;
    refused(r, 400, "malformed_json").await;
    let r = api.post("/workflows", json!({ "definition": 5 })).await;
    refused(r, 422, "invalid_body").await;
    let r = api
        .post(
            "/workflows",
            json!({ "definition": "sdlc", "colour": "red" }),
        )
        .await;
    let m = refused(r, 422, "invalid_body").await;
    assert!(m.contains("colour"), "{m}");
    let r = api
        .post_raw("/workflows", None, "{\"definition\": \"sdlc\"}")
        .await;
    refused(r, 415, "unsupported_media_type").await;
    let big = json!({ "definition": "sdlc", "input": { "blob": "x".repeat(8192) } });
    refused(api.post("/workflows", big).await, 413, "body_too_large").await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_workflow_of_an_unknown_definition_is_404() {
    let api = Api::start().await;
    let r = api
        .post("/workflows", json!({ "definition": "nope" }))
        .await;
    refused(r, 404, "not_found").await;
    let r = api
        .post("/workflows", json!({ "definition": "sdlc", "version": 9 }))
        .await;
    refused(r, 404, "not_found").await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_workflow_with_a_bad_or_taken_id_is_refused() {
    let api = Api::start().await;
    let r = api
        .post("/workflows", json!({ "definition": "sdlc", "id": "a:b" }))
        .await;
    let m = refused(r, 422, "invalid").await;
    assert!(m.contains("workflow id"), "{m}");
    api.create_as("sdlc", "wf-1").await;
    // The same request again is the same workflow (creates are idempotent
    // by id); another body under a taken id is refused.
    api.post_json(
        "/workflows",
        json!({ "definition": "sdlc", "id": "wf-1" }),
        200,
    )
    .await;
    let r = api
        .post(
            "/workflows",
            json!({ "definition": "sdlc", "id": "wf-1", "input": { "other": 1 } }),
        )
        .await;
    refused(r, 409, "conflict").await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_workflow_is_201_with_its_location_and_the_whole_workflow() {
    let api = Api::start().await;
    let r = api
        .post(
            "/workflows",
            json!({ "definition": "sdlc", "id": "wf-1", "input": { "k": 1 } }),
        )
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["location"], "/api/v1/workflows/wf-1");
    let (_, v) = body(r).await;
    assert_eq!(v["id"], "wf-1");
    assert_eq!(v["status"], "running");
    assert_eq!(v["progress"], 0);
    assert_eq!(v["definition_version"], 1);
    assert_eq!(v["stages"][0]["status"], "running");
    assert_eq!(v["stage_details"][0]["agent"], "scaffold");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_is_read_back_with_its_input_and_unknown_ids_are_404() {
    let api = Api::start().await;
    let id = api.create("sdlc", json!({ "k": 1 })).await;
    let (s, v) = body(api.get(&format!("/workflows/{id}")).await).await;
    assert_eq!(s, 200);
    assert_eq!(v["input"], json!({ "k": 1 }));
    refused(api.get("/workflows/nope").await, 404, "not_found").await;
    let r = api.get("/workflows/bad%7Bid%7D").await;
    refused(r, 404, "not_found").await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_log_begins_with_its_start_and_first_dispatch() {
    let api = Api::start().await;
    let id = api.create("sdlc", json!({})).await;
    let (_, v) = body(api.get(&format!("/workflows/{id}/log")).await).await;
    assert_eq!(v["items"][0]["type"], "started");
    assert_eq!(v["items"][0]["dispatched"], json!(["scaffold"]));
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_log_refuses_bad_queries_and_unknown_workflows() {
    let api = Api::start().await;
    let id = api.create("sdlc", json!({})).await;
    let r = api
        .get(&format!("/workflows/{id}/log?after=yesterday"))
        .await;
    refused(r, 400, "bad_request").await;
    refused(api.get("/workflows/nope/log").await, 404, "not_found").await;
    let r = api.get(&format!("/workflows/{id}/log?colour=red")).await;
    refused(r, 400, "bad_query").await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_on_the_wrong_things_are_refused() {
    let api = Api::start().await;
    let id = api.create("sdlc", json!({})).await;
    let r = api.post_empty("/workflows/nope/cancel").await;
    refused(r, 404, "not_found").await;
    // `scaffold` awaits no approval.
    let r = api
        .post_empty(&format!("/workflows/{id}/stages/scaffold/approve"))
        .await;
    refused(r, 409, "conflict").await;
    let r = api
        .post_empty(&format!("/workflows/{id}/stages/nope/reject"))
        .await;
    refused(r, 404, "not_found").await;
    let cancel = format!("/workflows/{id}/cancel");
    let r = api
        .post_raw(&cancel, Some("application/json"), "{oops")
        .await;
    refused(r, 400, "malformed_json").await;
    let r = api
        .post(&cancel, json!({ "reason": "x".repeat(2000) }))
        .await;
    refused(r, 422, "invalid").await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_is_cancelled_once_with_its_reason() {
    let api = Api::start().await;
    let id = api.create("sdlc", json!({})).await;
    let cancel = format!("/workflows/{id}/cancel");
    let (s, v) = body(api.post(&cancel, json!({ "reason": "test" })).await).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["ending"],
        json!({ "kind": "cancelled", "reason": "test" })
    );
    // Without a body too: the ended workflow refuses.
    refused(api.post_empty(&cancel).await, 409, "conflict").await;
    api.shutdown().await;
}

/// Registers [`GATED`] and starts `n` workflows of it, each then awaiting
/// its approval; their ids, oldest first.
async fn start_gated(api: &Api, n: usize) -> Vec<String> {
    api.define_gated().await;
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(api.create("gated", json!({})).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_are_listed_by_definition_newest_first_in_pages() {
    let api = Api::start().await;
    // One of another definition, left out by the filter.
    api.create("sdlc", json!({})).await;
    let gated = start_gated(&api, 5).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/workflows?definition=gated&limit=2".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (s, v) = body(api.get(&path).await).await;
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
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_are_listed_by_status() {
    let api = Api::start().await;
    api.create_as("sdlc", "wf-1").await;
    // Cancelled while scaffold runs (no agent here): it waits for it, compensating.
    api.post_json("/workflows/wf-1/cancel", json!({}), 200)
        .await;
    start_gated(&api, 5).await;
    let (_, v) = body(api.get("/workflows?status=compensating").await).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert_eq!(v["items"][0]["id"], "wf-1");
    let (_, v) = body(api.get("/workflows?status=awaiting_approval").await).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 5);
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_workflow_list_queries_are_refused() {
    let api = Api::start().await;
    let r = api.get("/workflows?status=nope").await;
    refused(r, 400, "bad_request").await;
    refused(api.get("/workflows?limit=0").await, 400, "bad_request").await;
    refused(api.get("/workflows?limit=many").await, 400, "bad_query").await;
    // A query value the document's pattern refuses: 400 like the others.
    let r = api.get("/workflows?cursor=garbage").await;
    refused(r, 400, "bad_request").await;
    api.shutdown().await;
}
