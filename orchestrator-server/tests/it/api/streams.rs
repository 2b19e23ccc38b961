//! `/streams` (each agent type's queues) and `/overview` (workflows by
//! status), counted exactly.

use super::*;
use serde_json::json;

/// A dead letter of type `x`, numbered `n`.
fn dead(n: u32) -> agent_sdk::schemas::DeadLetter {
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
}

/// `st1`: three waiting (one of them read and not acknowledged), two
/// delayed, four dead. `st2`: one dead letter, nothing else.
async fn fill_st1_and_st2(redis: &TestRedis) {
    let client = sdk_client(redis).await;
    let st1 = agent_type("st1");
    let mut c = conn(redis).await;
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
        let opts = agent_sdk::EnqueueOptions::default();
        client
            .enqueue(&st1, &json!({ "i": i }), opts)
            .await
            .unwrap();
    }
    for i in 0..2 {
        let opts = agent_sdk::EnqueueOptions {
            delay: Some(Duration::from_secs(3600)),
            ..agent_sdk::EnqueueOptions::default()
        };
        let later = json!({ "later": i });
        client.enqueue(&st1, &later, opts).await.unwrap();
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
    let dlq = client.dead_letters();
    for n in 0..4 {
        dlq.import(&st1, &dead(n)).await.unwrap();
    }
    dlq.import(&agent_type("st2"), &dead(9)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_count_each_types_queues_exactly() {
    let api = Api::start().await;
    fill_st1_and_st2(&api.redis).await;
    let v = api.get_json("/streams", 200).await;
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
    // Two of the three wait undelivered: the backlog head's age is there,
    // no older than the pending one's (it was enqueued after it).
    let waiting = s1["oldest_waiting_age_ms"].as_u64().unwrap();
    assert!(waiting <= age, "{s1}");
    s1["oldest_waiting_age_ms"] = json!("checked");
    assert_eq!(
        s1,
        json!({ "agent_type": "st1", "backlog": 3, "pending": 1,
                "oldest_pending_age_ms": "checked", "oldest_waiting_age_ms": "checked",
                "consumers": 1, "live_instances": 0,
                "delayed": 2, "dlq": 4, "lag": 2 })
    );
    assert_eq!(
        by_type("st2"),
        json!({ "agent_type": "st2", "backlog": 0, "pending": 0,
                "oldest_pending_age_ms": null, "oldest_waiting_age_ms": null,
                "consumers": 0, "live_instances": 0,
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
    // `/dlq` counts the same dead letters.
    let v = api.get_json("/dlq", 200).await;
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
    let expected = std::collections::BTreeMap::from([("st1", 4), ("st2", 1)]);
    assert_eq!(counts, expected);
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_counts_workflows_by_status() {
    let api = Api::start().await;
    // Nothing yet.
    let v = api.get_json("/overview", 200).await;
    assert_eq!(
        v,
        json!({ "workflows": {
            "active": { "pending": 0, "running": 0, "awaiting_approval": 0, "blocked": 0, "compensating": 0 },
            "recent_ended": { "completed": 0, "failed": 0, "cancelled": 0 },
            "recent_window": 1000 } })
    );
    api.define_gated().await;
    let status = |v: &Value| v["status"].as_str().unwrap().to_owned();
    let act = |path: &'static str| api.post_json(path, json!({}), 200);
    let wait = api.create_as("gated", "g-wait").await;
    assert_eq!(status(&wait), "awaiting_approval");
    api.create_as("gated", "g-cancel").await;
    let v = act("/workflows/g-cancel/cancel").await;
    assert_eq!(status(&v), "cancelled");
    api.create_as("gated", "g-reject").await;
    let v = act("/workflows/g-reject/stages/build/reject").await;
    assert_eq!(status(&v), "failed");
    // No scaffold agent runs: its stage stays running, and a cancelled one
    // waits for it while compensating.
    assert_eq!(status(&api.create_as("sdlc", "s-run").await), "running");
    api.create_as("sdlc", "s-cancel").await;
    let v = act("/workflows/s-cancel/cancel").await;
    assert_eq!(status(&v), "compensating");
    let v = api.get_json("/overview", 200).await;
    assert_eq!(
        v,
        json!({ "workflows": {
            "active": { "pending": 0, "running": 1, "awaiting_approval": 1, "blocked": 0, "compensating": 1 },
            "recent_ended": { "completed": 0, "failed": 1, "cancelled": 1 },
            "recent_window": 1000 } })
    );
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tasks_of_workflows_wait_in_their_agents_stream() {
    let api = Api::start().await;
    // No scaffold agent runs: one running, one cancelled and compensating.
    api.create_as("sdlc", "s-run").await;
    api.create_as("sdlc", "s-cancel").await;
    api.post_json("/workflows/s-cancel/cancel", json!({}), 200)
        .await;
    let v = api.get_json("/streams", 200).await;
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
    api.shutdown().await;
}
