//! `/dlq`: dead letters listed, shown, replayed and purged, each count
//! exact; and every way a request to them is refused.

use super::*;
use serde_json::json;

/// The agent type whose DLQ these tests fill.
const DLQ_TYPE: &str = "dlqa";
/// Bytes no codec decodes: the worker dead-letters them as malformed.
const GARBAGE: &[u8] = b"\xff\xfe not an envelope \x00";

/// The failing tasks: (workflow, stage); each fails permanently at once.
const FAILING: [(&str, &str); 5] = [
    ("wf-a", "build"),
    ("wf-a", "build"),
    ("wf-a", "lint"),
    ("wf-b", "build"),
    ("wf-b", "lint"),
];

/// The API path of [`DLQ_TYPE`]'s queue plus `p`.
fn dlq(p: &str) -> String {
    format!("/dlq/{DLQ_TYPE}{p}")
}

async fn dlq_len(redis: &TestRedis, t: &str) -> u64 {
    xlen(redis, &keys().dlq(&agent_type(t))).await
}

async fn tasks_len(redis: &TestRedis, t: &str) -> u64 {
    xlen(redis, &keys().tasks(&agent_type(t))).await
}

/// A stream's entries, fields as bytes.
async fn entries(
    redis: &TestRedis,
    key: &str,
) -> Vec<(String, std::collections::BTreeMap<String, Vec<u8>>)> {
    let mut c = conn(redis).await;
    let r: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    r.ids
        .into_iter()
        .map(|e| {
            let fields = e
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<Vec<u8>>(v).unwrap()))
                .collect();
            (e.id, fields)
        })
        .collect()
}

/// Runs the five failing tasks and one undecodable entry through a real
/// worker of [`DLQ_TYPE`] until all six are dead letters; the worker is
/// stopped after, so nothing moves on its own. Returns the task ids.
async fn fill_dlq(redis: &TestRedis) -> Vec<String> {
    let agents = Agents::start(redis, &[DLQ_TYPE]);
    let client = sdk_client(redis).await;
    let t = agent_type(DLQ_TYPE);
    let mut ids = Vec::new();
    for (wf, stage) in FAILING {
        let e = client
            .enqueue(
                &t,
                &json!({ "workflow_id": wf, "stage": stage, "input": { "fail": stage } }),
                agent_sdk::EnqueueOptions {
                    workflow_id: Some(wf.to_owned()),
                    stage: Some(stage.to_owned()),
                    ..agent_sdk::EnqueueOptions::default()
                },
            )
            .await
            .unwrap();
        ids.push(e.task_id);
    }
    let mut c = conn(redis).await;
    let _: String = redis::cmd("XADD")
        .arg(keys().tasks(&t))
        .arg("*")
        .arg("body")
        .arg(GARBAGE)
        .query_async(&mut c)
        .await
        .unwrap();
    wait_until("six dead letters", PATIENCE, || async {
        dlq_len(redis, DLQ_TYPE).await == 6
    })
    .await;
    agents.shutdown().await;
    assert_eq!(tasks_len(redis, DLQ_TYPE).await, 0);
    ids
}

fn item_ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

fn count(page: &Value) -> usize {
    page["items"].as_array().unwrap().len()
}

/// The queue after [`fill_dlq`], as the API lists it.
struct Filled {
    /// The ids of the failing tasks, in the order of [`FAILING`].
    task_ids: Vec<String>,
    /// The whole list.
    all: Value,
}

impl Filled {
    async fn new(api: &Api) -> Self {
        let task_ids = fill_dlq(&api.redis).await;
        let all = api.get_json(&dlq(""), 200).await;
        Self { task_ids, all }
    }

    fn items(&self) -> &[Value] {
        self.all["items"].as_array().unwrap()
    }

    /// The DLQ id of the dead letter of task `i`: the worker runs tasks
    /// concurrently, so dead letters come in any order.
    fn dlq_id_of(&self, i: usize) -> String {
        let all = &self.all;
        self.items()
            .iter()
            .find(|d| d["task_id"] == self.task_ids[i].as_str())
            .unwrap_or_else(|| panic!("task {} not listed: {all}", self.task_ids[i]))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The DLQ id of the undecodable entry.
    fn garbage_id(&self) -> String {
        let g = self.items().iter().find(|d| d["reason"] == "malformed");
        g.unwrap()["id"].as_str().unwrap().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queues_count_every_dead_letter_by_type() {
    let api = Api::start().await;
    fill_dlq(&api.redis).await;
    // Ours has the six, every other type none.
    let v = api.get_json("/dlq", 200).await;
    let queues = v["queues"].as_array().unwrap();
    let ours: Vec<&Value> = queues
        .iter()
        .filter(|q| q["agent_type"] == DLQ_TYPE)
        .collect();
    assert_eq!(ours.len(), 1, "{v}");
    assert_eq!(ours[0]["count"], 6, "{v}");
    let (oldest, newest) = (
        ours[0]["oldest_ms"].as_u64().unwrap(),
        ours[0]["newest_ms"].as_u64().unwrap(),
    );
    assert!(oldest <= newest, "{v}");
    let total: u64 = queues.iter().map(|q| q["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 6, "{v}");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_is_oldest_first_each_with_its_origin_and_no_raw_fields() {
    let api = Api::start().await;
    let f = Filled::new(&api).await;
    let all = &f.all;
    // All six, no next page.
    let ids = item_ids(all);
    assert_eq!(ids.len(), 6, "{all}");
    assert!(all["next"].is_null(), "{all}");
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| {
        let (ms, seq) = id.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    });
    assert_eq!(ids, sorted, "oldest first");
    let items = f.items();
    for (i, (wf, stage)) in FAILING.iter().enumerate() {
        let d = &items[ids.iter().position(|id| *id == f.dlq_id_of(i)).unwrap()];
        assert_eq!(
            (&d["workflow_id"], &d["stage"], &d["reason"], &d["attempts"]),
            (&json!(wf), &json!(stage), &json!("permanent"), &json!(1)),
            "{d}"
        );
        assert_eq!(d["error"], format!("stage {stage} fails as asked"), "{d}");
        assert!(
            d.get("raw").is_none(),
            "lists leave the raw fields out: {d}"
        );
    }
    let garbage: Vec<&Value> = items
        .iter()
        .filter(|d| d["reason"] == "malformed")
        .collect();
    assert_eq!(garbage.len(), 1, "{all}");
    assert!(garbage[0].get("task_id").is_none(), "{all}");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_filters_by_error_workflow_and_age() {
    let api = Api::start().await;
    let f = Filled::new(&api).await;
    let v = api.get_json(&dlq("?error_contains=BUILD"), 200).await;
    assert_eq!(count(&v), 3, "case-insensitive: {v}");
    let v = api.get_json(&dlq("?workflow=wf-a"), 200).await;
    assert_eq!(count(&v), 3, "{v}");
    let v = api
        .get_json(&dlq("?workflow=wf-b&error_contains=lint"), 200)
        .await;
    assert_eq!(item_ids(&v), vec![f.dlq_id_of(4)], "{v}");
    let v = api.get_json(&dlq("?since=1h"), 200).await;
    assert_eq!(count(&v), 6, "{v}");
    let v = api.get_json(&dlq("?since=2099-01-01T00:00:00Z"), 200).await;
    assert_eq!(count(&v), 0, "{v}");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_pages_with_limit_and_after_filtered_or_not() {
    let api = Api::start().await;
    let f = Filled::new(&api).await;
    let ids = item_ids(&f.all);
    let p1 = api.get_json(&dlq("?limit=4"), 200).await;
    assert_eq!(item_ids(&p1), ids[..4].to_vec());
    assert_eq!(p1["next"], json!(ids[3]));
    let next = p1["next"].as_str().unwrap();
    let p2 = api
        .get_json(&dlq(&format!("?limit=4&after={next}")), 200)
        .await;
    assert_eq!(item_ids(&p2), ids[4..].to_vec());
    assert!(p2["next"].is_null(), "{p2}");
    let v = api
        .get_json(
            &dlq(&format!("?workflow=wf-a&limit=2&after={}", ids[0])),
            200,
        )
        .await;
    let wf_a_after_first: Vec<String> = f.items()[1..]
        .iter()
        .filter(|d| d["workflow_id"] == "wf-a")
        .take(2)
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(item_ids(&v), wf_a_after_first, "{v}");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_shown_in_full_with_its_raw_fields_byte_for_byte() {
    let api = Api::start().await;
    let f = Filled::new(&api).await;
    // Decoded: the envelope, and the raw fields as text where they are.
    let d = api
        .get_json(&dlq(&format!("/{}", f.dlq_id_of(2))), 200)
        .await;
    assert_eq!(d["dead_letter"]["id"], json!(f.dlq_id_of(2)));
    assert_eq!(d["dead_letter"]["task_id"], json!(f.task_ids[2]));
    assert_eq!(d["envelope"]["id"], json!(f.task_ids[2]));
    assert_eq!(d["envelope"]["workflow_id"], "wf-a");
    assert_eq!(d["envelope"]["input"]["input"], json!({ "fail": "lint" }));
    assert!(d["decode_error"].is_null(), "{d}");
    let raw = d["raw"].as_array().unwrap();
    let names: Vec<&str> = raw.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["id", "wf", "stage", "body"], "{d}");
    assert_eq!(
        (&raw[1]["text"], &raw[1]["base64"]),
        (&json!("wf-a"), &json!("d2YtYQ=="))
    );
    assert!(
        raw[3]["text"].is_null(),
        "a MessagePack body is not text: {d}"
    );
    // Undecodable: why, and the bytes as they were.
    let g = api
        .get_json(&dlq(&format!("/{}", f.garbage_id())), 200)
        .await;
    assert!(g["envelope"].is_null(), "{g}");
    assert!(
        g["decode_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{g}"
    );
    let body_field = g["raw"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "body")
        .unwrap();
    assert!(body_field["text"].is_null(), "not UTF-8: {g}");
    assert_eq!(
        body_field["base64"],
        json!(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            GARBAGE
        ))
    );
    refused(api.get(&dlq("/1-0")).await, 404, "not_found").await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_replay_reports_and_moves_nothing() {
    let api = Api::start().await;
    let f = Filled::new(&api).await;
    let ids = item_ids(&f.all);
    let r = api
        .post_json(
            &dlq("/replay"),
            json!({ "ids": [ids[0], ids[1]], "dry_run": true }),
            200,
        )
        .await;
    assert_eq!(
        (&r["dry_run"], &r["matched"], &r["replayed"], &r["gone"]),
        (&json!(true), &json!(2), &json!(0), &json!(0)),
        "{r}"
    );
    assert!(
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["outcome"] == "would_replay" && i["new_entry_id"].is_null()),
        "{r}"
    );
    let all = json!({ "all": true, "dry_run": true });
    let r = api.post_json(&dlq("/replay"), all, 200).await;
    assert_eq!(
        (&r["matched"], &r["replayed"]),
        (&json!(6), &json!(0)),
        "{r}"
    );
    assert_eq!(dlq_len(&api.redis, DLQ_TYPE).await, 6);
    assert_eq!(tasks_len(&api.redis, DLQ_TYPE).await, 0);
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_by_id_moves_it_back_once_then_it_is_gone() {
    let api = Api::start().await;
    let f = Filled::new(&api).await;
    let by_id = json!({ "ids": [f.dlq_id_of(0)] });
    let r = api.post_json(&dlq("/replay"), by_id.clone(), 200).await;
    assert_eq!(
        (&r["dry_run"], &r["matched"], &r["replayed"], &r["gone"]),
        (&json!(false), &json!(1), &json!(1), &json!(0)),
        "{r}"
    );
    assert_eq!(r["items"][0]["outcome"], "replayed");
    assert_eq!(r["items"][0]["task_id"], json!(f.task_ids[0]));
    assert_eq!(r["items"][0]["workflow_id"], "wf-a");
    assert_eq!(dlq_len(&api.redis, DLQ_TYPE).await, 5);
    assert_eq!(tasks_len(&api.redis, DLQ_TYPE).await, 1);
    // The same id again is gone.
    let r = api.post_json(&dlq("/replay"), by_id, 200).await;
    assert_eq!(
        (
            &r["matched"],
            &r["replayed"],
            &r["gone"],
            &r["items"][0]["outcome"]
        ),
        (&json!(1), &json!(0), &json!(1), &json!("gone")),
        "{r}"
    );
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_by_id_filter_and_all_returns_each_dead_letter_exactly_once() {
    let api = Api::start().await;
    let f = Filled::new(&api).await;
    let replay = dlq("/replay");
    let r = api
        .post_json(&replay, json!({ "ids": [f.dlq_id_of(0)] }), 200)
        .await;
    let first_new = r["items"][0]["new_entry_id"].as_str().unwrap().to_owned();
    // By filter.
    let r = api
        .post_json(&replay, json!({ "workflow": "wf-b" }), 200)
        .await;
    assert_eq!(
        (&r["matched"], &r["replayed"]),
        (&json!(2), &json!(2)),
        "{r}"
    );
    assert_eq!(dlq_len(&api.redis, DLQ_TYPE).await, 3);
    // Everything left.
    let r = api.post_json(&replay, json!({ "all": true }), 200).await;
    assert_eq!(
        (&r["matched"], &r["replayed"], &r["gone"]),
        (&json!(3), &json!(3), &json!(0)),
        "{r}"
    );
    assert_eq!(dlq_len(&api.redis, DLQ_TYPE).await, 0);
    let v = api.get_json(&dlq(""), 200).await;
    assert_eq!(count(&v), 0, "{v}");
    // The task stream got exactly the six back, each at attempt 1, the
    // undecodable one byte for byte.
    let tasks = entries(&api.redis, &keys().tasks(&agent_type(DLQ_TYPE))).await;
    assert_eq!(tasks.len(), 6);
    assert_eq!(tasks[0].0, first_new);
    for (id, fields) in &tasks {
        assert_eq!(
            fields.get("attempt").map(Vec::as_slice),
            Some(&b"1"[..]),
            "{id}"
        );
    }
    assert_eq!(
        tasks
            .iter()
            .filter(|(_, f)| f.get("body").map(Vec::as_slice) == Some(GARBAGE))
            .count(),
        1
    );
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_dead_letters_fail_again_as_first_attempts() {
    let api = Api::start().await;
    fill_dlq(&api.redis).await;
    api.post_json(&dlq("/replay"), json!({ "all": true }), 200)
        .await;
    // A worker runs them again: six dead letters again, each a first attempt.
    let agents = Agents::start(&api.redis, &[DLQ_TYPE]);
    wait_until("six dead letters again", PATIENCE, || async {
        dlq_len(&api.redis, DLQ_TYPE).await == 6
    })
    .await;
    agents.shutdown().await;
    assert_eq!(tasks_len(&api.redis, DLQ_TYPE).await, 0);
    let again = api.get_json(&dlq(""), 200).await;
    assert_eq!(item_ids(&again).len(), 6);
    let page = sdk_client(&api.redis)
        .await
        .dead_letters()
        .list(
            &agent_type(DLQ_TYPE),
            &agent_sdk::DeadLetterFilter::default(),
        )
        .await
        .unwrap();
    assert!(
        page.items.iter().all(|d| d.attempts == 1),
        "{:?}",
        page.items
    );
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_by_age_ids_filters_and_all_accounts_for_every_dead_letter() {
    let api = Api::start().await;
    let f = Filled::new(&api).await;
    let path = dlq("/purge");
    let purge = |req: Value| api.post_json(&path, req, 200);
    let left = || dlq_len(&api.redis, DLQ_TYPE);
    // By age: none is an hour old.
    assert_eq!(
        purge(json!({ "older_than": "1h" })).await,
        json!({ "purged": 0 })
    );
    assert_eq!(left().await, 6);
    // By ids.
    let wf_a_builds: Vec<String> = f
        .items()
        .iter()
        .filter(|d| d["workflow_id"] == "wf-a" && d["stage"] == "build")
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(wf_a_builds.len(), 2);
    let p = purge(json!({ "ids": wf_a_builds })).await;
    assert_eq!(p, json!({ "purged": 2 }));
    let p = purge(json!({ "ids": wf_a_builds })).await;
    assert_eq!(p, json!({ "purged": 0 }), "already purged");
    assert_eq!(left().await, 4);
    // By filters, then all.
    let p = purge(json!({ "error_contains": "lint" })).await;
    assert_eq!(p, json!({ "purged": 2 }));
    let p = purge(json!({ "workflow": "wf-b" })).await;
    assert_eq!(p, json!({ "purged": 1 }));
    assert_eq!(left().await, 1);
    let p = purge(json!({ "all": true })).await;
    assert_eq!(p, json!({ "purged": 1 }));
    let p = purge(json!({ "all": true })).await;
    assert_eq!(p, json!({ "purged": 0 }));
    assert_eq!(left().await, 0);
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_older_than_zero_takes_every_one_there_is() {
    let api = Api::start().await;
    fill_dlq(&api.redis).await;
    let dlq_sdk = sdk_client(&api.redis).await.dead_letters();
    let t = agent_type(DLQ_TYPE);
    let page = dlq_sdk
        .list(&t, &agent_sdk::DeadLetterFilter::default())
        .await
        .unwrap();
    api.post_json(&dlq("/purge"), json!({ "all": true }), 200)
        .await;
    // Three of them back, as new entries.
    for d in &page.items[..3] {
        dlq_sdk.import(&t, d).await.unwrap();
    }
    assert_eq!(dlq_len(&api.redis, DLQ_TYPE).await, 3);
    let since = json!({ "since": "2099-01-01T00:00:00Z" });
    let p = api.post_json(&dlq("/purge"), since, 200).await;
    assert_eq!(p, json!({ "purged": 0 }));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let p = api
        .post_json(&dlq("/purge"), json!({ "older_than": "0s" }), 200)
        .await;
    assert_eq!(p, json!({ "purged": 3 }));
    assert_eq!(dlq_len(&api.redis, DLQ_TYPE).await, 0);
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_everything_takes_only_what_was_there() {
    // A live worker fails every replayed task again at once, so new dead
    // letters arrive while the replay walks the queue: the replay must take
    // the ones that were there when it began, and end.
    let api = Api {
        http: http_builder_as(ADMIN)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        ..Api::start().await
    };
    let agents = Agents::start(&api.redis, &[DLQ_TYPE]);
    let client = sdk_client(&api.redis).await;
    // More than one page of the replay's walk (500).
    const N: u64 = 600;
    for i in 0..N {
        client
            .enqueue(
                &agent_type(DLQ_TYPE),
                &json!({ "workflow_id": "wf-x", "stage": format!("s{i}"), "input": { "fail": format!("s{i}") } }),
                agent_sdk::EnqueueOptions::default(),
            )
            .await
            .unwrap();
    }
    wait_until("all dead", PATIENCE, || async {
        dlq_len(&api.redis, DLQ_TYPE).await == N
    })
    .await;
    for round in 0..2 {
        let r = api
            .post_json(&dlq("/replay"), json!({ "all": true }), 200)
            .await;
        assert_eq!(
            (&r["matched"], &r["replayed"], &r["gone"]),
            (&json!(N), &json!(N), &json!(0)),
            "round {round}: {}",
            r["matched"]
        );
        wait_until("all dead again", PATIENCE, || async {
            dlq_len(&api.redis, DLQ_TYPE).await == N && tasks_len(&api.redis, DLQ_TYPE).await == 0
        })
        .await;
    }
    agents.shutdown().await;
    api.shutdown().await;
}

/// Asserts that `needle` is in message `m`.
fn names(m: &str, needle: &str) {
    assert!(m.contains(needle), "{needle:?} not in {m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_purge_each_take_exactly_one_valid_selection() {
    let api = Api::start().await;
    let (replay, purge) = (dlq("/replay"), dlq("/purge"));
    // Replay: not exactly one selection, bad ids, purge's option.
    for body in [
        json!({}),
        json!({ "dry_run": true }),
        json!({ "all": false }),
        json!({ "ids": ["1-0"], "all": true }),
        json!({ "all": true, "workflow": "wf-a" }),
    ] {
        let m = refused(api.post(&replay, body).await, 400, "bad_request").await;
        names(&m, "exactly one");
    }
    let r = api.post(&replay, json!({ "ids": ["junk"] })).await;
    names(&refused(r, 400, "bad_request").await, "junk");
    let r = api.post(&replay, json!({ "ids": [] })).await;
    names(&refused(r, 400, "bad_request").await, "ids");
    // Purge's option is not a field of a replay (as the document says).
    let r = api.post(&replay, json!({ "older_than": "1h" })).await;
    names(&refused(r, 422, "invalid_body").await, "older_than");
    let r = api.post(&replay, json!({ "since": "yesterday" })).await;
    names(&refused(r, 400, "bad_request").await, "since");
    // Purge: not exactly one selection, replay's option, bad age.
    for body in [
        json!({}),
        json!({ "all": true, "older_than": "1h" }),
        json!({ "ids": ["1-0"], "error_contains": "x" }),
    ] {
        let m = refused(api.post(&purge, body).await, 400, "bad_request").await;
        names(&m, "older_than");
    }
    let r = api
        .post(&purge, json!({ "all": true, "dry_run": true }))
        .await;
    names(&refused(r, 422, "invalid_body").await, "dry_run");
    let r = api.post(&purge, json!({ "older_than": "soon" })).await;
    names(&refused(r, 400, "bad_request").await, "older_than");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_bodies_are_refused_as_on_every_route() {
    // Unknown fields and wrong shapes are 422 `invalid_body` as on every
    // route (api/error.rs), bad JSON 400, no JSON content type 415.
    let api = Api::start().await;
    for path in [dlq("/replay"), dlq("/purge")] {
        let r = api.post(&path, json!({ "all": true, "colour": 1 })).await;
        let m = refused(r, 422, "invalid_body").await;
        names(&m, "colour");
        let r = api.post(&path, json!({ "ids": "1-0" })).await;
        refused(r, 422, "invalid_body").await;
        let r = api
            .post_raw(&path, Some("application/json"), "{\"all\": ")
            .await;
        refused(r, 400, "malformed_json").await;
        let r = api.post_raw(&path, None, "{\"all\": true}").await;
        refused(r, 415, "unsupported_media_type").await;
    }
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_agent_type_is_422_on_every_dlq_route() {
    let api = Api::start().await;
    let t = "NOT%20A%20TYPE";
    let r = api.get(&format!("/dlq/{t}")).await;
    refused(r, 422, "invalid").await;
    let r = api.get(&format!("/dlq/{t}/1-0")).await;
    refused(r, 422, "invalid").await;
    let r = api
        .post(&format!("/dlq/{t}/replay"), json!({ "all": true }))
        .await;
    refused(r, 422, "invalid").await;
    let r = api
        .post(&format!("/dlq/{t}/purge"), json!({ "all": true }))
        .await;
    refused(r, 422, "invalid").await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_list_queries_and_dead_letter_ids_are_refused() {
    let api = Api::start().await;
    for (q, code) in [
        ("?limit=0", "bad_request"),
        ("?limit=1001", "bad_request"),
        ("?after=junk", "bad_request"),
        ("?since=yesterday", "bad_request"),
        ("?colour=red", "bad_query"),
        ("?limit=many", "bad_query"),
    ] {
        refused(api.get(&dlq(q)).await, 400, code).await;
    }
    refused(api.get(&dlq("/junk")).await, 400, "bad_request").await;
    refused(api.get(&dlq("/1-0")).await, 404, "not_found").await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_queue_lists_and_replays_nothing() {
    let api = Api::start().await;
    let v = api.get_json(&dlq(""), 200).await;
    assert_eq!(v, json!({ "items": [], "next": null }));
    let r = api
        .post_json(&dlq("/replay"), json!({ "all": true }), 200)
        .await;
    assert_eq!(
        r,
        json!({
            "dry_run": false, "matched": 0, "replayed": 0, "gone": 0, "skipped": 0,
            "failed": 0, "items": [], "items_left_out": 0
        })
    );
    // An id it never had: matched, and gone.
    let r = api
        .post_json(&dlq("/replay"), json!({ "ids": ["1-0"] }), 200)
        .await;
    assert_eq!((&r["matched"], &r["gone"]), (&json!(1), &json!(1)), "{r}");
    api.shutdown().await;
}
