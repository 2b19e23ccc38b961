//! Dead consumers pruned, unread results capped, dead letters measured,
//! memory by family.

use super::*;
use agent_sdk::schemas::{ORCHESTRATOR_GROUP, WORKERS_GROUP};

async fn consumer_names(redis: &TestRedis, stream: &str, group: &str) -> Vec<(String, u64)> {
    let mut c = conn(redis).await;
    let v: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(&mut c)
        .await
        .unwrap();
    v.iter()
        .map(|m| {
            (
                redis::from_redis_value::<String>(m["name"].clone()).unwrap(),
                redis::from_redis_value::<u64>(m["pending"].clone()).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_consumers_are_pruned_and_live_busy_and_registered_ones_kept() {
    let k = Kit::start(&[
        "--housekeeping-interval",
        "200ms",
        "--consumer-prune-idle",
        "1s",
    ])
    .await;
    let keys = keys();
    let ret = agent_type(AGENT);
    let idle = agent_type("quiet");
    let (ret_tasks, ret_results) = (keys.tasks(&ret), keys.results(&ret));
    let idle_tasks = keys.tasks(&idle);
    // The live worker and the server's results consumer exist once a
    // workflow has run.
    k.completed().await;
    let live_workers = consumer_names(&k.redis, &ret_tasks, WORKERS_GROUP).await;
    let live_orch = consumer_names(&k.redis, &ret_results, ORCHESTRATOR_GROUP).await;
    assert!(!live_workers.is_empty() && !live_orch.is_empty());

    let mut c = conn(&k.redis).await;
    let _: () = redis::pipe()
        .cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&ret_tasks)
        .arg(WORKERS_GROUP)
        .arg("dead-a")
        .ignore()
        .cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&ret_results)
        .arg(ORCHESTRATOR_GROUP)
        .arg("orch-dead")
        .ignore()
        .cmd("XGROUP")
        .arg("CREATE")
        .arg(&idle_tasks)
        .arg(WORKERS_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .ignore()
        .cmd("XADD")
        .arg(&idle_tasks)
        .arg("*")
        .arg("body")
        .arg("held")
        .ignore()
        .cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&idle_tasks)
        .arg(WORKERS_GROUP)
        .arg("dead-c")
        .ignore()
        .cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&idle_tasks)
        .arg(WORKERS_GROUP)
        .arg("reg-d")
        .ignore()
        // Registered: its fleet record expires far ahead of the Redis clock.
        .cmd("ZADD")
        .arg(keys.fleet_expires(&idle))
        .arg(u64::MAX / 4)
        .arg("reg-d")
        .ignore()
        .query_async(&mut c)
        .await
        .unwrap();
    // busy-b holds the entry (pending, never acknowledged).
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(WORKERS_GROUP)
        .arg("busy-b")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&idle_tasks)
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();

    wait_until("dead consumers pruned", PATIENCE, || async {
        let all = [
            consumer_names(&k.redis, &ret_tasks, WORKERS_GROUP).await,
            consumer_names(&k.redis, &ret_results, ORCHESTRATOR_GROUP).await,
            consumer_names(&k.redis, &idle_tasks, WORKERS_GROUP).await,
        ]
        .concat();
        !all.iter()
            .any(|(n, _)| ["dead-a", "orch-dead", "dead-c"].contains(&n.as_str()))
    })
    .await;
    let idle_now = consumer_names(&k.redis, &idle_tasks, WORKERS_GROUP).await;
    assert!(idle_now.contains(&("busy-b".to_owned(), 1)), "{idle_now:?}");
    assert!(idle_now.iter().any(|(n, _)| n == "reg-d"), "{idle_now:?}");
    // The live worker and the live orchestrator stay, and still work.
    let workers_now = consumer_names(&k.redis, &ret_tasks, WORKERS_GROUP).await;
    for (n, _) in &live_workers {
        assert!(
            workers_now.iter().any(|(m, _)| m == n),
            "{n}: {workers_now:?}"
        );
    }
    let orch_now = consumer_names(&k.redis, &ret_results, ORCHESTRATOR_GROUP).await;
    for (n, _) in &live_orch {
        assert!(orch_now.iter().any(|(m, _)| m == n), "{n}: {orch_now:?}");
    }
    k.completed().await;
    assert_eq!(
        xlen(&k.redis, &idle_tasks).await,
        1,
        "the held entry is kept"
    );
    k.shutdown().await;
}

fn ids(reply: &redis::streams::StreamRangeReply) -> Vec<String> {
    reply.ids.iter().map(|e| e.id.clone()).collect()
}

async fn range(redis: &TestRedis, key: &str) -> Vec<String> {
    let mut c = conn(redis).await;
    let r: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    ids(&r)
}

async fn add(redis: &TestRedis, key: &str, n: usize) -> Vec<String> {
    let mut c = conn(redis).await;
    let mut out = Vec::new();
    for i in 0..n {
        let id: String = redis::cmd("XADD")
            .arg(key)
            .arg("*")
            .arg("n")
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
        out.push(id);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_without_a_reader_are_capped_and_unapplied_ones_kept() {
    let k = Kit::start(&[
        "--housekeeping-interval",
        "200ms",
        "--consumer-prune-idle",
        "1s",
        "--results-cap",
        "10",
    ])
    .await;
    let keys = keys();
    let solo = keys.results(&agent_type("solo"));
    let unread = keys.results(&agent_type("unread"));
    // `unread`: a group that read 20 of 30, applied (acknowledged) 10.
    let mut c = conn(&k.redis).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&unread)
        .arg(ORCHESTRATOR_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .unwrap();
    let unread_ids = add(&k.redis, &unread, 30).await;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(ORCHESTRATOR_GROUP)
        .arg("gone-x")
        .arg("COUNT")
        .arg(20)
        .arg("STREAMS")
        .arg(&unread)
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: u64 = redis::cmd("XACK")
        .arg(&unread)
        .arg(ORCHESTRATOR_GROUP)
        .arg(&unread_ids[..10])
        .query_async(&mut c)
        .await
        .unwrap();

    // `solo`: no group at all (standalone tasks' results).
    let solo_ids = add(&k.redis, &solo, 50).await;
    wait_until("solo capped at 10", PATIENCE, || async {
        xlen(&k.redis, &solo).await == 10
    })
    .await;
    assert_eq!(range(&k.redis, &solo).await, solo_ids[40..].to_vec());
    wait_until("unread trimmed of what it applied", PATIENCE, || async {
        xlen(&k.redis, &unread).await == 20
    })
    .await;
    // Two more full rounds (solo capped again twice): nothing more goes.
    for _ in 0..2 {
        add(&k.redis, &solo, 5).await;
        wait_until("solo capped again", PATIENCE, || async {
            xlen(&k.redis, &solo).await == 10
        })
        .await;
    }
    assert_eq!(range(&k.redis, &unread).await, unread_ids[10..].to_vec());
    k.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_measured_and_memory_is_reported_by_family() {
    let k = Kit::start(&[
        "--retention-interval",
        "200ms",
        "--housekeeping-interval",
        "200ms",
    ])
    .await;
    let blocked = k.blocked().await;
    k.completed().await;
    let viewer = http_as(VIEWER);
    let v: Value = viewer
        .get(k.o.api("/streams"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let d = v["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["agent_type"] == AGENT)
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(d["count"], 1, "{d}");
    assert!(d["bytes"].as_u64().unwrap() > 0, "{d}");
    assert!(d["oldest_age_ms"].as_u64().is_some(), "{d}");

    let metrics = viewer
        .get(format!("{}/metrics", k.o.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for want in [
        format!("agentic_dlq_bytes{{agent_type=\"{AGENT}\"}} "),
        format!("agentic_dlq_oldest_age_seconds{{agent_type=\"{AGENT}\"}} "),
        "orchestrator_retained_workflows 1".to_owned(),
    ] {
        assert!(metrics.contains(&want), "{want} missing");
    }

    let m: Value = viewer
        .get(k.o.api("/memory?sample=100000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(m["used_memory"].as_u64().unwrap() > 0, "{m}");
    assert_eq!(m["maxmemory"], Value::Null, "{m}");
    assert_eq!(m["sampled"], false, "every key was scanned: {m}");
    let fam = |name: &str| {
        m["families"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["family"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no family {name}: {m}"))
    };
    assert_eq!(fam("wf")["sampled_keys"], 2);
    assert_eq!(fam("wf:events")["sampled_keys"], 2);
    assert_eq!(fam("agent:dlq")["sampled_keys"], 1);
    let r = viewer
        .get(k.o.api("/memory?sample=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    // Rounds of retention and housekeeping later, the dead letter is there.
    let t0 = redis_now(&k.redis).await;
    wait_until("a few more rounds", PATIENCE, || async {
        redis_now(&k.redis).await > t0 + 1000
    })
    .await;
    assert_eq!(dead_letters_of(&k.redis, &blocked).await, 1);
    assert_kept(&k.redis, &blocked, false).await;
    k.shutdown().await;
}
