//! The formats the OpenAPI document states are the ones the server takes:
//! each case is one that schemathesis found taken or refused against the
//! document (scripts/conformance.sh runs it on the whole API).

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_must_be_a_json_object_not_an_array_of_its_fields() {
    // serde fills a struct from an array in field order: `[null, null]`
    // was a task with input null.
    let api = Api::start().await;
    // `alpha` is a type a definition names: raw tasks may go to it.
    api.define_gated().await;
    let r = api
        .post_raw("/tasks/alpha", Some("application/json"), "[null, null]")
        .await;
    let m = refused(r, 422, "invalid_body").await;
    assert!(m.contains("JSON object"), "{m}");
    let r = api
        .post_raw(
            "/workflows/wf-1/cancel",
            Some("application/json"),
            "[\"why\"]",
        )
        .await;
    refused(r, 422, "invalid_body").await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_number_written_with_a_fraction_is_an_integer() {
    // JSON Schema's `integer` admits 3.0; 3.5 stays refused.
    let api = Api::start().await;
    // `alpha` is a type a definition names: raw tasks may go to it.
    api.define_gated().await;
    let r = api
        .post("/tasks/alpha", json!({ "input": 1, "max_attempts": 3.0 }))
        .await;
    assert_eq!(r.status(), 202);
    let r = api
        .post("/tasks/alpha", json!({ "input": 1, "max_attempts": 3.5 }))
        .await;
    refused(r, 422, "invalid_body").await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_are_digits_and_one_unit_as_documented() {
    let api = Api::start().await;
    // `alpha` is a type a definition names: raw tasks may go to it.
    api.define_gated().await;
    for ok in ["90m", "0s", "250ms"] {
        let r = api
            .post("/tasks/alpha", json!({ "input": 1, "delay": ok }))
            .await;
        assert_eq!(r.status(), 202, "{ok}");
    }
    for bad in ["1h 30m", "5min", "0.5s", "1234567890s", "5"] {
        let r = api
            .post("/tasks/alpha", json!({ "input": 1, "timeout": bad }))
            .await;
        let m = refused(r, 422, "invalid").await;
        assert!(m.contains("1–9 digits"), "{bad}: {m}");
    }
    let r = api.post("/tasks/alpha", json!({ "input": 1 })).await;
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    for bad in ["?wait=05s", "?wait=31s", "?wait=1m", "?wait=1h"] {
        let r = api
            .http
            .get(format!("{}{loc}{bad}", api.o.url))
            .send()
            .await
            .unwrap();
        let m = refused(r, 422, "invalid").await;
        assert!(m.contains("whole seconds"), "{bad}: {m}");
    }
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_since_before_1970_or_not_utc_is_refused_as_documented() {
    let api = Api::start().await;
    for bad in [
        "0000-01-01T00:00:00.00000000Z",
        "2026-11-23T10:00:00+01:00",
        "2026-02-30T00:00:00Z",
    ] {
        let q = format!("/dlq/alpha?since={}", bad.replace('+', "%2B"));
        let r = api.http.get(api.url(&q)).send().await.unwrap();
        let m = refused(r, 400, "bad_request").await;
        assert!(m.contains("since"), "{bad}: {m}");
    }
    api.get_json("/dlq/alpha?since=2026-02-28T23:59:59.5Z", 200)
        .await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cursor_or_event_id_header_is_refused_not_ignored() {
    let api = Api::start().await;
    let r = api
        .http
        .get(api.url("/workflows?cursor="))
        .send()
        .await
        .unwrap();
    refused(r, 400, "bad_request").await;
    let r = api
        .http
        .get(api.url("/workflows?cursor=%2B5:x"))
        .send()
        .await
        .unwrap();
    refused(r, 400, "bad_request").await;
    api.get_json("/workflows?cursor=5:x", 200).await;
    // A Last-Event-ID that is not text would have restarted the stream
    // from the beginning.
    let r = api
        .http
        .get(api.url("/workflows/wf-1/events"))
        .header(
            "last-event-id",
            reqwest::header::HeaderValue::from_bytes(b"\xff1-0").unwrap(),
        )
        .send()
        .await
        .unwrap();
    refused(r, 400, "bad_request").await;
    // A bad ?after= is refused even when the header, which wins, is good.
    let r = api
        .http
        .get(api.url("/workflows/wf-1/events?after="))
        .header("last-event-id", "1700000000000-0")
        .send()
        .await
        .unwrap();
    refused(r, 400, "bad_request").await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_states_the_name_rules_and_reserved_words() {
    let api = Api::start().await;
    let doc = api.get_json("/openapi.json", 200).await;
    let schemas = &doc["components"]["schemas"];
    let agent = schemas["AgentTypeName"]["pattern"].as_str().unwrap();
    for word in agent_sdk::schemas::names::RESERVED {
        assert!(
            agent.contains(&word.to_ascii_lowercase()),
            "{word} in {agent}"
        );
    }
    // The definition's own field says the same as the path parameter.
    let stage_agent = &schemas["StageDef"]["properties"]["agent"]["pattern"];
    assert_eq!(stage_agent.as_str(), Some(agent));
    assert_eq!(schemas["WorkflowId"]["maxLength"], 48);
    assert_eq!(
        schemas["DeadLetterReplay"]["allOf"][1]["oneOf"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    assert_eq!(
        schemas["DeadLetterPurge"]["allOf"][1]["oneOf"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
    api.shutdown().await;
}
