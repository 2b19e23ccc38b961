//! `/definitions`: refused with the fault named, versioned by content,
//! listed and read by version; the built-in `sdlc` and an operator's own.

use super::*;
use serde_json::json;

const CYCLE: &str = "name: loop\nstages:\n  - name: a\n    agent: x\n    depends_on: [b]\n  - name: b\n    agent: x\n    depends_on: [a]\n";

/// [`GATED`] changed: its one stage on another agent, with no approval.
fn gated_v2() -> Value {
    json!({ "name": "gated", "stages": [{ "name": "build", "agent": "beta" }] })
}

/// Registers [`GATED`] (version 1) and [`gated_v2`] (version 2).
async fn define_both_versions(api: &Api) {
    api.define_gated().await;
    let v = api.post_json("/definitions", gated_v2(), 201).await;
    assert_eq!(v["version"], 2, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_are_refused_with_the_fault_named() {
    let api = Api::start().await;
    let m = refused(api.define(CYCLE).await, 422, "invalid_definition").await;
    assert!(
        m.contains("cycle") && m.contains('a') && m.contains('b'),
        "{m}"
    );
    let r = api.define("name: [").await;
    refused(r, 400, "malformed_definition").await;
    let ghost = "name: d\nstages:\n  - name: a\n    agent: x\n    depends_on: [ghost]\n";
    let m = refused(api.define(ghost).await, 422, "invalid_definition").await;
    assert!(m.contains("ghost"), "{m}");
    let r = api
        .post_raw("/definitions", Some("text/plain"), GATED)
        .await;
    refused(r, 415, "unsupported_media_type").await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_is_a_new_version_only_when_it_changed() {
    let api = Api::start().await;
    let r = api.define(GATED).await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["location"],
        "/api/v1/definitions/gated?version=1"
    );
    let (s, v) = body(api.define(GATED).await).await;
    assert_eq!(
        (s.as_u16(), v["version"].as_u64()),
        (200, Some(1)),
        "the same definition again is not a new version"
    );
    let (s, v) = body(api.post("/definitions", gated_v2()).await).await;
    assert_eq!((s.as_u16(), v["version"].as_u64()), (201, Some(2)));
    assert_eq!(v["levels"], json!([["build"]]));
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_are_listed_by_name_and_read_by_version() {
    let api = Api::start().await;
    define_both_versions(&api).await;
    let (_, v) = body(api.get("/definitions").await).await;
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["gated", "sdlc"]);
    let (_, v) = body(api.get("/definitions/gated?version=1").await).await;
    assert_eq!(v["stages"][0]["agent"], "alpha");
    let (_, v) = body(api.get("/definitions/sdlc").await).await;
    assert_eq!(v["levels"].as_array().unwrap().len(), 5);
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_an_unknown_definition_or_version_is_404() {
    let api = Api::start().await;
    define_both_versions(&api).await;
    refused(api.get("/definitions/nope").await, 404, "not_found").await;
    let r = api.get("/definitions/Bad%20Name").await;
    refused(r, 404, "not_found").await;
    let r = api.get("/definitions/gated?version=7").await;
    refused(r, 404, "not_found").await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_runs_the_version_it_was_started_on() {
    let api = Api::start().await;
    define_both_versions(&api).await;
    let r = api
        .post("/workflows", json!({ "definition": "gated", "version": 1 }))
        .await;
    let (_, w) = body(r).await;
    assert_eq!(w["definition_version"], 1);
    assert_eq!(w["stage_details"][0]["agent"], "alpha");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_an_operators_own_sdlc() {
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, &[]).await;
    let http = http();
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
