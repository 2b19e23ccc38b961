//! The engine under hostile definitions and inputs (issue 11, items 7 and
//! 8), each attack performed for real against the server in-process on its
//! own `redis-server`:
//!
//! - an input that makes the first task body exceed the 1 MiB a worker
//!   accepts fails its workflow, naming the limit, with nothing left behind;
//! - a dispatch Redis refuses for good (the tasks stream's key holds a
//!   string) fails the stage the same way;
//! - a 2,000-stage definition with 2,000 agent types is refused over the
//!   cap, and, allowed by a raised cap, adds no connection per type, before
//!   or after a restart;
//! - a raw task does not make the orchestrator watch its type;
//! - 24 concurrent `/metrics` scrapes at 100,000 active workflows all
//!   answer, with the counts a full count finds;
//! - `--metrics-token-required` makes `/metrics` ask for the token.

use crate::common::*;
use agent_sdk::schemas::codec::DecodeLimits;
use orchestrator::machine::log::log_entry;
use orchestrator::machine::{Event, Workflow, WorkflowStatus, apply};
use orchestrator::ops::counts;
use serde_json::{Value, json};
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(60);

/// A test's Redis, the server in-process on it, and an HTTP client.
struct Kit {
    http: reqwest::Client,
    o: InProcess,
    redis: TestRedis,
}

impl Kit {
    async fn start(extra: &[&str]) -> Self {
        let redis = TestRedis::start();
        let o = InProcess::start(&redis, extra).await;
        Self {
            http: reqwest::Client::new(),
            o,
            redis,
        }
    }

    async fn define(&self, def: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.o.api("/definitions"))
            .json(def)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn create(&self, definition: &str, input: Value) -> Value {
        let r = self
            .http
            .post(self.o.api("/workflows"))
            .json(&json!({ "definition": definition, "input": input }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        r.json().await.unwrap()
    }

    async fn shutdown(self) {
        self.o.shutdown().await;
    }
}

/// A one-stage definition on `agent`.
fn one_stage(name: &str, agent: &str) -> Value {
    json!({ "name": name, "stages": [{ "name": "only", "agent": agent }] })
}

/// Waits until workflow `id` has ended; its summary.
async fn ended(redis: &TestRedis, id: &str) -> orchestrator::store::Summary {
    wait_ended(redis, &[id.to_owned()], PATIENCE)
        .await
        .pop()
        .unwrap()
}

/// Asserts nothing of workflow `id` is left waiting: no outbox, not in the
/// active index, no deadline armed for `agent`.
async fn assert_nothing_left(redis: &TestRedis, id: &str, agent: &str) {
    let mut c = conn(redis).await;
    let k = keys();
    let outbox: Option<String> = redis::cmd("HGET")
        .arg(k.workflow(id).unwrap())
        .arg("outbox")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(outbox, None, "{id}: outbox left");
    let active: Option<f64> = redis::cmd("ZSCORE")
        .arg(k.workflows_active())
        .arg(id)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(active, None, "{id}: still in the active index");
    assert_eq!(deadlines(redis, &[agent]).await, 0, "{id}: deadline left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_over_the_task_limit_fails_the_workflow_naming_the_limit() {
    let kit = Kit::start(&[]).await;
    assert_eq!(kit.define(&one_stage("big", "bigtask")).await.0, 201);
    // JSON `0.1,` is 4 bytes, the same number in MessagePack 9: an input
    // the API takes (about 800 KB) becomes a task body of about 1.8 MB.
    let floats: Vec<f64> = vec![0.1; 200_000];
    let input = json!({ "numbers": floats });
    assert!(serde_json::to_vec(&input).unwrap().len() < 1024 * 1024);
    let created = kit.create("big", input).await;
    let id = created["id"].as_str().unwrap().to_owned();

    let s = ended(&kit.redis, &id).await;
    assert_eq!(s.status, WorkflowStatus::Failed, "{s:?}");
    let limit = DecodeLimits::default().max_bytes.to_string();
    let log = log(&kit.redis, &id).await;
    let refused = log
        .iter()
        .find(|e| e.kind == "dispatch_failed")
        .unwrap_or_else(|| panic!("no dispatch_failed in {log:#?}"));
    let why = refused.event["error"].as_str().unwrap();
    assert!(why.contains(&limit), "the limit is not named: {why}");
    assert!(why.contains("bytes"), "{why}");
    assert_eq!(refused.stage.as_deref(), Some("only"));
    // The stage says why too, and nothing went to the stream.
    let r = kit.http.get(kit.o.api(&format!("/workflows/{id}")));
    let v: Value = r.send().await.unwrap().json().await.unwrap();
    let stage_error = v["stages"][0]["error"].as_str().unwrap_or_default();
    assert!(stage_error.contains(&limit), "{v}");
    assert_eq!(
        xlen(&kit.redis, &keys().tasks(&agent_type("bigtask"))).await,
        0
    );
    assert_nothing_left(&kit.redis, &id, "bigtask").await;
    kit.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_redis_refuses_for_good_fails_the_stage() {
    let kit = Kit::start(&[]).await;
    assert_eq!(kit.define(&one_stage("wrong", "wrongtype")).await.0, 201);
    // Someone made the tasks stream's key a string: every XADD is refused.
    let mut c = conn(&kit.redis).await;
    let tasks = keys().tasks(&agent_type("wrongtype"));
    let _: () = redis::cmd("SET")
        .arg(&tasks)
        .arg("not a stream")
        .query_async(&mut c)
        .await
        .unwrap();
    let id = kit.create("wrong", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let s = ended(&kit.redis, &id).await;
    assert_eq!(s.status, WorkflowStatus::Failed);
    let log = log(&kit.redis, &id).await;
    let refused = log.iter().find(|e| e.kind == "dispatch_failed").unwrap();
    let why = refused.event["error"].as_str().unwrap();
    assert!(why.contains("WRONGTYPE"), "{why}");
    // The refused dispatch wrote nothing: no idempotency key claims it.
    let idem: i64 = redis::cmd("EXISTS")
        .arg(
            keys()
                .idempotency(&agent_type("wrongtype"), &format!("{id}:only:1"))
                .unwrap(),
        )
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(idem, 0);
    assert_nothing_left(&kit.redis, &id, "wrongtype").await;
    kit.shutdown().await;
}

/// Connections to `redis` right now (`CLIENT LIST`, this call's own
/// connection included).
async fn clients(redis: &TestRedis) -> usize {
    let mut c = conn(redis).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut c)
        .await
        .unwrap();
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

/// A chain of `n` stages, each on an agent type of its own.
fn wide(name: &str, n: usize) -> Value {
    let stages: Vec<Value> = (0..n)
        .map(|i| {
            let mut s = json!({ "name": format!("s{i:04}"), "agent": format!("t{i:04}") });
            if i > 0 {
                s["depends_on"] = json!([format!("s{:04}", i - 1)]);
            }
            s
        })
        .collect();
    json!({ "name": name, "stages": stages })
}

/// Waits until `/ready` lists at least `n` results streams (each with its
/// group: the one reader has taken them all in).
async fn wait_streams(kit: &Kit, n: usize) {
    let http = &kit.http;
    let url = format!("{}/ready", kit.o.url);
    wait_until("every watched type read", PATIENCE, || async {
        let Ok(r) = http.get(&url).send().await else {
            return false;
        };
        let v: Value = r.json().await.unwrap_or(Value::Null);
        v["results_streams"]
            .as_array()
            .is_some_and(|a| a.len() >= n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2000_stage_definition_is_refused_over_the_cap_and_adds_no_connections() {
    let kit = Kit::start(&[]).await;
    let before = clients(&kit.redis).await;
    let (s, v) = kit.define(&wide("wide", 2000)).await;
    assert_eq!(s, 422, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("--max-agent-types") && m.contains("256"), "{m}");
    assert!(m.contains("2000"), "{m}");
    // Nothing stored, nothing watched.
    let r = kit.http.get(kit.o.api("/definitions/wide")).send().await;
    assert_eq!(r.unwrap().status(), 404);
    let ready: Value = kit
        .http
        .get(format!("{}/ready", kit.o.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ready["results_streams"].as_array().unwrap().len() < 10);
    assert!(clients(&kit.redis).await <= before + 2);
    kit.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_2000_types_shares_one_reader_across_restarts() {
    // Allowed by a raised cap, 2,000 types are 2,000 streams in one
    // reader's set, not 2,000 connections.
    let flags = ["--max-agent-types", "2100", "--timer-tick", "1s"];
    let kit = Kit::start(&flags).await;
    wait_streams(&kit, 1).await;
    let before = clients(&kit.redis).await;
    let (s, v) = kit.define(&wide("wide", 2000)).await;
    assert_eq!(s, 201, "{v}");
    wait_streams(&kit, 2000).await;
    let after = clients(&kit.redis).await;
    assert!(
        after <= before + 4,
        "2,000 watched types took {} connections more ({before} -> {after})",
        after - before
    );
    // A restart watches them again (the definition is registered), on
    // one reader again.
    let Kit { http, o, redis } = kit;
    o.shutdown().await;
    let o = InProcess::start(&redis, &flags).await;
    let kit = Kit { http, o, redis };
    wait_streams(&kit, 2000).await;
    let restarted = clients(&kit.redis).await;
    assert!(
        restarted <= before + 4,
        "after a restart: {before} -> {restarted} connections"
    );
    // And the results of those types are read: a stage on the last type
    // runs and its workflow completes.
    let agents = Agents::start(&kit.redis, &["t1999"]);
    kit.define(&one_stage("last", "t1999")).await;
    let id = kit.create("last", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        ended(&kit.redis, &id).await.status,
        WorkflowStatus::Completed
    );
    agents.shutdown().await;
    kit.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_task_does_not_make_its_type_watched() {
    let kit = Kit::start(&[]).await;
    let r = kit
        .http
        .post(kit.o.api("/tasks/drive-by"))
        .json(&json!({ "input": {} }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let ready: Value = kit
        .http
        .get(format!("{}/ready", kit.o.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let streams = ready["results_streams"].as_array().unwrap();
    assert!(!streams.contains(&json!("drive-by")), "{ready}");
    kit.shutdown().await;
}

/// Stores `n` workflows of `def` (whose first stage waits for an approval,
/// so starting dispatches nothing) straight into Redis through the
/// library's transition script, a pipeline of 1,000 at a time: what 100,000
/// HTTP calls would leave, in seconds.
async fn seed_waiting(redis: &TestRedis, def: &orchestrator::Definition, n: usize) {
    let store = store();
    let mut c = conn(redis).await;
    let now = agent_sdk::clock::now_ms();
    for chunk in 0..n.div_ceil(1000) {
        let mut pipe = redis::pipe();
        pipe.load_script(&redis::Script::new(include_str!(
            "../../../orchestrator/src/scripts/transition.lua"
        )))
        .ignore();
        for i in chunk * 1000..((chunk + 1) * 1000).min(n) {
            let id = format!("seed-{i:06}");
            let fresh = Workflow::new(id.clone(), def, json!({}), now);
            let (started, commands) = apply(&fresh, def, &Event::Started, now).unwrap();
            assert!(commands.is_empty(), "seeded workflows dispatch nothing");
            let entry = log_entry(&fresh, &Event::Started, &commands);
            let save = store
                .save_invocation(0, &started, &commands, &entry)
                .unwrap();
            store.add_index_commands(&mut pipe, &id, now);
            pipe.invoke_script(&save).ignore();
        }
        let () = pipe.query_async(&mut c).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answer_24_concurrent_scrapes_at_100k_active_workflows() {
    // The sweeper would walk 100,000 outboxes; not what this test is about.
    let kit = Kit::start(&["--sweep-interval", "1h"]).await;
    let gated = "name: gated\nstages:\n  - name: build\n    agent: alpha\n    approval: true\n";
    let def = orchestrator::Definition::parse(gated).unwrap();
    let r = kit
        .http
        .post(kit.o.api("/definitions"))
        .header("content-type", "application/yaml")
        .body(gated)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut c = conn(&kit.redis).await;
    let def = orchestrator::catalog::Catalog::new(keys())
        .get(&mut c, &def.name, None)
        .await
        .unwrap();
    seed_waiting(&kit.redis, &def, 100_000).await;
    // A few through the API too, moved on by operators.
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            kit.create("gated", json!({})).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let act = |path: String, body: Value| kit.http.post(kit.o.api(&path)).json(&body).send();
    let r = act(
        format!("/workflows/{}/cancel", ids[0]),
        json!({"reason": "t"}),
    )
    .await;
    assert_eq!(r.unwrap().status(), 200);
    let r = act(
        format!("/workflows/{}/stages/build/reject", ids[1]),
        json!({"reason": "t"}),
    )
    .await;
    assert_eq!(r.unwrap().status(), 200);

    let scrapes = (0..24).map(|_| {
        let http = kit.http.clone();
        let url = format!("{}/metrics", kit.o.url);
        async move {
            let r = tokio::time::timeout(PATIENCE, http.get(url).send())
                .await
                .expect("a scrape took over a minute")
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    });
    for (status, text) in futures::future::join_all(scrapes).await {
        assert_eq!(status, 200, "{text}");
        for needle in [
            "orchestrator_workflows{status=\"awaiting_approval\"} 100001",
            "orchestrator_workflows{status=\"running\"} 0",
            "orchestrator_workflows_ended{status=\"cancelled\"} 1",
            "orchestrator_workflows_ended{status=\"failed\"} 1",
            "orchestrator_workflows_stored 100003",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
    // The counters agree with a full count of the states.
    let store = store();
    let counted = counts::active_counts(&store, &mut c).await.unwrap();
    let scanned = counts::count_active_by_scan(&store, &mut c).await.unwrap();
    assert_eq!(counted, scanned);
    assert_eq!(counted["awaiting_approval"], 100_001);
    kit.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_the_token() {
    let token = "0123456789abcdef-metrics";
    let kit = Kit::start(&["--api-token", token, "--metrics-token-required"]).await;
    let url = format!("{}/metrics", kit.o.url);
    let r = kit.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bearer token"),
        "{v}"
    );
    let r = kit.http.get(&url).bearer_auth("wrong-token-wrong").send();
    assert_eq!(r.await.unwrap().status(), 401);
    let r = kit.http.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("orchestrator_workflows"));
    kit.shutdown().await;
    // Without the flag it stays open (for scrapers inside the boundary).
    let kit = Kit::start(&["--api-token", token]).await;
    let r = kit.http.get(format!("{}/metrics", kit.o.url)).send();
    assert_eq!(r.await.unwrap().status(), 200);
    kit.shutdown().await;
}

/// The engine refuses to create a workflow whose types cannot be watched
/// (a definition registered before the cap, found over it at start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_over_the_cap_found_at_start_gets_no_workflows() {
    let redis = TestRedis::start();
    // Registered directly, as an older orchestrator would have.
    let mut c = conn(&redis).await;
    let def: orchestrator::Definition =
        orchestrator::Definition::from_json(&wide("old", 40).to_string()).unwrap();
    orchestrator::catalog::Catalog::new(keys())
        .register(&mut c, &def)
        .await
        .unwrap();
    let o = InProcess::start(&redis, &["--max-agent-types", "20"]).await;
    let http = reqwest::Client::new();
    let r = http
        .post(o.api("/workflows"))
        .json(&json!({ "definition": "old", "input": {} }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-agent-types"),
        "{v}"
    );
    o.shutdown().await;
}

/// The shared reader itself: new entries of every stream come through one
/// reader, and entries a dead consumer took on each stream are taken over
/// after `claim_idle` — reclaim covers every stream of the set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reader_over_many_streams_reads_and_reclaims_each() {
    use agent_sdk::stream::{ManyReader, TakeAll};
    use std::collections::BTreeSet;
    let redis = TestRedis::start();
    let mut c = conn(&redis).await;
    let streams = ["many:a", "many:b", "many:c"];
    for s in streams {
        let () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(s)
            .arg("g")
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await
            .unwrap();
        let _: String = redis::cmd("XADD")
            .arg(s)
            .arg("*")
            .arg("k")
            .arg("old")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    // A consumer takes the first entry of each stream and dies.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("dead")
        .arg("STREAMS")
        .arg(&streams[..])
        .arg(&[">", ">", ">"][..])
        .query_async(&mut c)
        .await
        .unwrap();
    for s in streams {
        let _: String = redis::cmd("XADD")
            .arg(s)
            .arg("*")
            .arg("k")
            .arg("new")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let connector = agent_sdk::connection::Connector::new(&redis.url()).unwrap();
    let mut rc = connector.conn("test", Duration::from_secs(5));
    let mut reader = ManyReader::new(
        "g",
        "live",
        Duration::from_millis(200),
        Duration::from_millis(100),
    );
    for s in streams {
        assert!(reader.add(s));
    }
    assert!(!reader.add(streams[0]), "a stream joins once");
    let stop = agent_sdk::CancellationToken::new();
    let mut seen = BTreeSet::new();
    let want: BTreeSet<(String, String)> = streams
        .iter()
        .flat_map(|s| [(s.to_string(), "old".into()), (s.to_string(), "new".into())])
        .collect();
    tokio::time::timeout(PATIENCE, async {
        while seen != want {
            for (stream, taken) in reader.next(&mut rc, &stop, 10, &TakeAll).await.unwrap() {
                for d in taken.entries {
                    let k = d.entry.text("k").unwrap().to_owned();
                    seen.insert((stream.clone(), k));
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not every entry came through: {seen:?}"));
    // Every entry is now pending at the live consumer alone.
    for s in streams {
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(s)
            .arg("g")
            .arg("-")
            .arg("+")
            .arg(10)
            .arg("dead")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(pending, redis::Value::Array(vec![]), "{s}");
    }
}

/// Workflows stored before the counters existed are counted into them at
/// the first start, and only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_stored_before_the_counters_are_counted_at_start() {
    let redis = TestRedis::start();
    let gated = "name: gated\nstages:\n  - name: build\n    agent: alpha\n    approval: true\n";
    let def = orchestrator::Definition::parse(gated).unwrap();
    let mut c = conn(&redis).await;
    let (def, _) = orchestrator::catalog::Catalog::new(keys())
        .register(&mut c, &def)
        .await
        .unwrap();
    seed_waiting(&redis, &def, 30).await;
    // As an older version would have left them: no counters.
    let () = redis::cmd("DEL")
        .arg(keys().workflow_counts())
        .query_async(&mut c)
        .await
        .unwrap();
    let o = InProcess::start(&redis, &[]).await;
    let http = reqwest::Client::new();
    let metrics = |o: &InProcess| http.get(format!("{}/metrics", o.url)).send();
    let m = metrics(&o).await.unwrap().text().await.unwrap();
    assert!(
        m.contains("orchestrator_workflows{status=\"awaiting_approval\"} 30"),
        "{m}"
    );
    // One more through the API; a restart does not count again.
    let r = http
        .post(o.api("/workflows"))
        .json(&json!({ "definition": "gated", "input": {} }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    o.shutdown().await;
    let o = InProcess::start(&redis, &[]).await;
    let m = metrics(&o).await.unwrap().text().await.unwrap();
    assert!(
        m.contains("orchestrator_workflows{status=\"awaiting_approval\"} 31"),
        "{m}"
    );
    let store = store();
    assert_eq!(
        counts::active_counts(&store, &mut c).await.unwrap(),
        counts::count_active_by_scan(&store, &mut c).await.unwrap()
    );
    o.shutdown().await;
}
