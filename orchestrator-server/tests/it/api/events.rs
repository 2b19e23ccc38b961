//! Server-sent events: `/events` (every change) and `/workflows/{id}/events`
//! (one workflow's log, then live, then `end`), run by the sdlc agents.

use super::*;
use futures::StreamExt;
use serde_json::json;

/// One event: its `event`, `id` and `data`.
type Event = (String, Option<String>, Value);

/// Reads SSE events until `until` says stop; fails after [`PATIENCE`].
async fn read_sse(
    resp: reqwest::Response,
    mut until: impl FnMut(&str, &Value) -> bool,
) -> Vec<Event> {
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

/// The `transition` events of `events`.
fn transitions(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(|(e, _, _)| e == "transition")
        .collect()
}

/// The versions of `events`.
fn versions(events: &[&Event]) -> Vec<u64> {
    events
        .iter()
        .map(|(_, _, v)| v["version"].as_u64().unwrap())
        .collect()
}

/// Workflow `id`'s stream, from the start or after `last` (`Last-Event-ID`),
/// read until `end`.
async fn workflow_events(api: &Api, id: &str, last: Option<&str>) -> Vec<Event> {
    let mut r = api.http.get(api.url(&format!("/workflows/{id}/events")));
    if let Some(l) = last {
        r = r.header("last-event-id", l);
    }
    read_sse(r.send().await.unwrap(), |e, _| e == "end").await
}

/// A workflow of `sdlc` run to its end by the agents; its id.
async fn completed(api: &Api) -> String {
    let id = api.create("sdlc", json!({})).await;
    wait_ended(&api.redis, std::slice::from_ref(&id), PATIENCE).await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_firehose_sends_every_change_of_a_workflow_in_order() {
    let api = Api::start().await;
    let agents = Agents::start(&api.redis, &SDLC);
    // Opened before the workflow exists.
    let all = api.get("/events").await;
    assert_eq!(all.headers()["content-type"], "text/event-stream");
    let id = api
        .create("sdlc", json!({ "sleep_ms": { "e2e": 300 } }))
        .await;
    let changes = read_sse(all, |_, v| {
        v["workflow_id"] == id.as_str() && v["status"] == "completed"
    })
    .await;
    let versions: Vec<u64> = changes
        .iter()
        .filter(|(e, _, v)| e == "change" && v["workflow_id"] == id.as_str())
        .map(|(_, _, v)| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6]);
    api.shutdown().await;
    agents.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflows_stream_sends_its_whole_log_in_order_then_ends() {
    let api = Api::start().await;
    let agents = Agents::start(&api.redis, &SDLC);
    let id = completed(&api).await;
    let events = workflow_events(&api, &id, None).await;
    let transitions = transitions(&events);
    assert_eq!(versions(&transitions), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(transitions[5].2["status"], "completed");
    assert_eq!(transitions[2].2["stage"], "validation");
    api.shutdown().await;
    agents.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflows_stream_resumes_after_the_last_event_id() {
    let api = Api::start().await;
    let agents = Agents::start(&api.redis, &SDLC);
    let id = completed(&api).await;
    let events = workflow_events(&api, &id, None).await;
    let third = transitions(&events)[2].1.clone().unwrap();
    // After the third event: the rest only.
    let rest = workflow_events(&api, &id, Some(&third)).await;
    assert_eq!(versions(&transitions(&rest)), vec![4, 5, 6]);
    api.shutdown().await;
    agents.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_on_a_running_workflow_gets_its_later_transitions_live() {
    let api = Api::start().await;
    let agents = Agents::start(&api.redis, &SDLC);
    let input = json!({ "sleep_ms": { "validation": 500, "e2e": 500 } });
    let id = api.create("sdlc", input).await;
    let events = workflow_events(&api, &id, None).await;
    assert_eq!(versions(&transitions(&events)), vec![1, 2, 3, 4, 5, 6]);
    api.shutdown().await;
    agents.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_of_an_unknown_workflow_or_after_a_junk_id_are_refused() {
    let api = Api::start().await;
    let id = api.create("sdlc", json!({})).await;
    let r = api.get("/workflows/nope/events").await;
    refused(r, 404, "not_found").await;
    let r = api
        .http
        .get(api.url(&format!("/workflows/{id}/events")))
        .header("last-event-id", "junk")
        .send()
        .await
        .unwrap();
    refused(r, 400, "bad_request").await;
    api.shutdown().await;
}
