//! `/tasks/{type}`: standalone tasks, submitted and answered.

use super::*;
use serde_json::json;

/// Submits a task for `alpha` (a type [`GATED`] names, registered here)
/// that its stage agent answers as stage `solo`; the location of its result
/// (`/api/v1/tasks/alpha/<id>`).
async fn submit_solo(api: &Api) -> String {
    api.define_gated().await;
    let r = api
        .post("/tasks/alpha", json!({ "input": { "stage": "solo" } }))
        .await;
    assert_eq!(r.status(), 202);
    r.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_task_submissions_are_refused() {
    let api = Api::start().await;
    api.define_gated().await;
    let r = api
        .post("/tasks/NOT%20A%20TYPE", json!({ "input": 1 }))
        .await;
    refused(r, 422, "invalid").await;
    let r = api.post("/tasks/alpha", json!({ "nothing": 1 })).await;
    refused(r, 422, "invalid_body").await;
    let r = api
        .post("/tasks/alpha", json!({ "input": 1, "delay": "soon" }))
        .await;
    refused(r, 422, "invalid").await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_accepted_once_per_idempotency_key() {
    let api = Api::start().await;
    api.define_gated().await;
    let r = api
        .post(
            "/tasks/alpha",
            json!({ "input": { "stage": "solo" }, "idempotency_key": "k-1" }),
        )
        .await;
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let (_, v) = body(r).await;
    let task_id = v["task_id"].as_str().unwrap().to_owned();
    assert_eq!(loc, format!("/api/v1/tasks/alpha/{task_id}"));
    let r = api
        .post(
            "/tasks/alpha",
            json!({ "input": {}, "idempotency_key": "k-1" }),
        )
        .await;
    let (_, again) = body(r).await;
    assert_eq!(
        (again["task_id"].as_str(), again["duplicate"].as_bool()),
        (Some(task_id.as_str()), Some(true))
    );
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_not_there_yet_is_404_and_a_wait_over_the_limit_is_422() {
    let api = Api::start().await;
    let loc = submit_solo(&api).await;
    let result = |q: &str| api.http.get(format!("{}{loc}{q}", api.o.url)).send();
    refused(result("").await.unwrap(), 404, "no_result").await;
    refused(result("?wait=1h").await.unwrap(), 422, "invalid").await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_result_can_be_waited_for() {
    let api = Api::start().await;
    let loc = submit_solo(&api).await;
    let agents = Agents::start(&api.redis, &["alpha"]);
    let r = api
        .http
        .get(format!("{}{loc}?wait=20s", api.o.url))
        .send()
        .await
        .unwrap();
    let (s, v) = body(r).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["output"]["stage"], "solo");
    api.shutdown().await;
    agents.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_task_for_a_type_nothing_names_is_refused_and_nothing_is_enqueued() {
    let api = Api::start().await;
    let r = api
        .post("/tasks/made-up", json!({ "input": { "x": 1 } }))
        .await;
    let m = refused(r, 404, "unknown_agent_type").await;
    assert!(m.contains("made-up"), "{m}");
    assert_eq!(
        xlen(&api.redis, &keys().tasks(&agent_type("made-up"))).await,
        0
    );
    // Nor does the orchestrator start consuming its results.
    let streams = api.get_json("/streams", 200).await.to_string();
    assert!(!streams.contains("made-up"), "{streams}");

    // A live agent makes the type known.
    let agents = Agents::start(&api.redis, &["solo-type"]);
    wait_until("solo-type registered", PATIENCE, || async {
        api.get_json("/agents", 200).await["agents"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["agent_type"] == "solo-type"))
    })
    .await;
    let r = api
        .post("/tasks/solo-type", json!({ "input": { "stage": "solo" } }))
        .await;
    assert_eq!(r.status(), 202);
    api.shutdown().await;
    agents.shutdown().await;
}
