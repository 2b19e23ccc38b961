//! `/metrics` from counters: O(1) per scrape at 100,000 workflows, exact,
//! seeded once for workflows stored before them, and behind the token on
//! request.

use super::*;
use crate::common::*;
use orchestrator::ops::counts;
use serde_json::{Value, json};

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
    // Any role's token opens it: the viewer's here.
    let token = orchestrator_server::testing::VIEWER;
    let kit = Kit::start(&["--metrics-token-required"]).await;
    let url = format!("{}/metrics", kit.o.url);
    // A client without the kit's default (admin) token.
    let anonymous = reqwest::Client::new();
    let r = anonymous.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bearer token"),
        "{v}"
    );
    let r = anonymous.get(&url).bearer_auth("wrong-token-wrong").send();
    assert_eq!(r.await.unwrap().status(), 401);
    let r = anonymous.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("orchestrator_workflows"));
    kit.shutdown().await;
    // Without the flag it stays open (for scrapers inside the boundary).
    let kit = Kit::start(&[]).await;
    let r = reqwest::Client::new()
        .get(format!("{}/metrics", kit.o.url))
        .send();
    assert_eq!(r.await.unwrap().status(), 200);
    kit.shutdown().await;
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
    let http = orchestrator_server::testing::http();
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
