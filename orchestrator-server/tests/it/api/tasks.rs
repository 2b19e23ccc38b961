//! `/tasks/{type}`: standalone tasks, submitted and answered.

use super::*;
use serde_json::json;

/// Submits a task for `alpha` that its stage agent answers as stage `solo`;
/// the location of its result (`/api/v1/tasks/alpha/<id>`).
async fn submit_solo(api: &Api) -> String {
    let r = api
        .post("/tasks/alpha", json!({ "input": { "stage": "solo" } }))
        .await;
    assert_eq!(r.status(), 202);
    r.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_task_submissions_are_refused() {
    let api = Api::start().await;
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
