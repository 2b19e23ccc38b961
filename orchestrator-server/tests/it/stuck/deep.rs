//! A stage whose task waits behind more entries than one question reads:
//! reported as at least that many ahead, in bounded time.

use super::*;
use agent_sdk::testing::RunningWorker;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_behind_10500_others_is_at_least_10000_behind() {
    const AHEAD: usize = 10_500;
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, &[]).await;
    let http = http();
    register(
        &http,
        &o,
        "name: deep\nstages:\n  - {name: s, agent: deep}\n",
    )
    .await;
    // One live worker with one slot, busy with a long task: it reads no more.
    let lab = Arc::new(Lab::default());
    let mut cfg = worker_config(&redis, "deep");
    cfg.concurrency = 1;
    cfg.batch_size = 1;
    cfg.shutdown_grace = Duration::from_millis(200);
    let w = RunningWorker::spawn(
        StageAgent {
            agent: "deep".into(),
            lab: lab.clone(),
        },
        "deep",
        cfg,
    );
    let busy = create(
        &http,
        &o.url,
        "deep",
        json!({ "sleep_ms": { "s": 30_000 } }),
    )
    .await;
    wait_until("the worker is busy", PATIENCE, || {
        let (http, url) = (&http, o.api(&format!("/workflows/{busy}")));
        async move {
            let v: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            v["why"][0]["reason"]["kind"] == "running"
        }
    })
    .await;
    // Other producers' tasks ahead of ours.
    let mut c = conn(&redis).await;
    let key = keys().tasks(&agent_type("deep"));
    for chunk in (0..AHEAD).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("id")
                .arg(format!("other-{i}"))
                .arg("body")
                .arg("{}")
                .ignore();
        }
        let () = pipe.query_async(&mut c).await.unwrap();
    }
    let id = create(&http, &o.url, "deep", json!({})).await;
    let started = Instant::now();
    let v: Value = http
        .get(o.api(&format!("/workflows/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let took = started.elapsed();
    let r = &v["why"][0]["reason"];
    assert_eq!(r["kind"], "queued", "{v:#}");
    assert_eq!(r["at_least"], true, "{r:#}");
    // The read stops at its budget: 10,000 entries, the running one among them.
    assert_eq!(r["ahead"], 9_999, "{r:#}");
    assert!(r["entry_id"].is_null());
    println!(
        "GET /workflows/{{id}} with its task behind {AHEAD} others: {:.1} ms",
        took.as_secs_f64() * 1000.0
    );
    assert!(lab.runs().is_empty());
    w.shutdown().await;
    o.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_another_type_do_not_break_the_answer() {
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, &[]).await;
    let http = http();
    register(&http, &o, "name: odd\nstages:\n  - {name: s, agent: odd}\n").await;
    let t = agent_type("odd");
    let mut c = conn(&redis).await;
    // Written by hand where a set, a hash and a stream belong.
    for key in [keys().delayed(&t), keys().dlq_index(&t), keys().dlq(&t)] {
        let () = redis::cmd("SET")
            .arg(key)
            .arg("x")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let id = create(&http, &o.url, "odd", json!({})).await;
    let r = http
        .get(o.api(&format!("/workflows/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let reason = &v["why"][0]["reason"];
    assert_eq!(reason["kind"], "no_live_agent", "{v:#}");
    assert_eq!(reason["ahead"], 0);
    assert!(reason["last_seen_ms"].is_null());
    o.shutdown().await;
}
