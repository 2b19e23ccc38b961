//! Watched agent types: capped, never added by a request alone, read by
//! one reader on one connection however many there are.

use super::*;
use crate::common::*;
use orchestrator::machine::WorkflowStatus;
use serde_json::{Value, json};
use std::time::Duration;

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
    wide_from(name, 0, n)
}

/// A chain of `n` stages on agent types `t<from>` … `t<from + n - 1>`.
fn wide_from(name: &str, from: usize, n: usize) -> Value {
    let stages: Vec<Value> = (from..from + n)
        .map(|i| {
            let mut s = json!({ "name": format!("s{i:04}"), "agent": format!("t{i:04}") });
            if i > from {
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
    let kit = Kit::start(&["--max-agent-types", "100"]).await;
    let before = clients(&kit.redis).await;
    // 2,000 stages: over the stage limit, refused before its types count.
    let (s, v) = kit.define(&wide("wide", 2000)).await;
    assert_eq!(s, 422, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("stage limit of 256") && m.contains("2000"),
        "{m}"
    );
    // Within the stage limit, over the agent-type cap: refused naming it.
    let (s, v) = kit.define(&wide("wider", 200)).await;
    assert_eq!(s, 422, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("--max-agent-types") && m.contains("100"), "{m}");
    assert!(m.contains("200"), "{m}");
    // Nothing stored, nothing watched.
    for name in ["wide", "wider"] {
        let r = kit.http.get(kit.o.api(&format!("/definitions/{name}")));
        assert_eq!(r.send().await.unwrap().status(), 404);
    }
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
    // Eight definitions of 250 stages (the stage limit is 256), each on
    // types of its own.
    for k in 0..8 {
        let (s, v) = kit
            .define(&wide_from(&format!("wide{k}"), k * 250, 250))
            .await;
        assert_eq!(s, 201, "{v}");
    }
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
    let post = || {
        kit.http
            .post(kit.o.api("/tasks/drive-by"))
            .json(&json!({ "input": {} }))
            .send()
    };
    // A type nothing names: refused, nothing enqueued.
    assert_eq!(post().await.unwrap().status(), 404);
    // A type a live agent names (no definition does): taken, not watched.
    let agents = Agents::start(&kit.redis, &["drive-by"]);
    wait_until("the live agent's type taken", PATIENCE, || async {
        post().await.is_ok_and(|r| r.status() == 202)
    })
    .await;
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
    agents.shutdown().await;
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
    let http = orchestrator_server::testing::http();
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
