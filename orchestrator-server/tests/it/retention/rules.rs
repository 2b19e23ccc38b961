//! Each retention rule removes exactly the ended workflows it should.

use super::*;
use orchestrator::loops::retention::{ArchiveSettings, RetentionSettings, retain_once};

/// Statuses counted in `N:wfs:counts`.
async fn counts(redis: &TestRedis) -> std::collections::BTreeMap<String, u64> {
    let mut c = conn(redis).await;
    orchestrator::ops::counts::status_counts(&store(), &mut c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_age_rule_expires_ended_workflows_and_keeps_a_blocked_one() {
    const RETENTION_MS: u64 = 3000;
    let k = Kit::start(&["--retention", "3s", "--retention-interval", "200ms"]).await;
    let blocked = k.blocked().await;
    let done = k.completed().await;
    let failed = k.failed().await;
    // Young: all kept, the ended two indexed with their bytes.
    assert_kept(&k.redis, &blocked, false).await;
    assert_kept(&k.redis, &done, true).await;
    assert_kept(&k.redis, &failed, true).await;
    let (ended_at, bytes) = ended_entry(&k.redis, &done).await;
    let (failed_at, _) = ended_entry(&k.redis, &failed).await;
    let mut c = conn(&k.redis).await;
    let before: (Option<u64>, Option<u64>) = redis::pipe()
        .cmd("MEMORY")
        .arg("USAGE")
        .arg(keys().workflow(&done).unwrap())
        .arg("SAMPLES")
        .arg(0)
        .cmd("MEMORY")
        .arg("USAGE")
        .arg(keys().workflow_events(&done).unwrap())
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(bytes > 1000, "an ended workflow measured {bytes} bytes");

    // Gone within the deadline; how long after its retention, by Redis's clock.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let gone_at = loop {
        if remains(&k.redis, &done).await.is_empty() {
            break redis_now(&k.redis).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{done} never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        gone_at >= ended_at + RETENTION_MS,
        "deleted before its retention: ended {ended_at}, gone by {gone_at}"
    );
    wait_gone(&k.redis, &failed).await;
    assert!(redis_now(&k.redis).await >= failed_at + RETENTION_MS);
    let after: (Option<u64>, Option<u64>) = redis::pipe()
        .cmd("MEMORY")
        .arg("USAGE")
        .arg(keys().workflow(&done).unwrap())
        .cmd("MEMORY")
        .arg("USAGE")
        .arg(keys().workflow_events(&done).unwrap())
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(after, (None, None));
    println!(
        "measured: one ended workflow: {bytes} bytes when it ended (MEMORY USAGE now: state {:?} + log {:?}), none after; gone {} ms after its retention (--retention-interval 200ms)",
        before.0,
        before.1,
        gone_at - (ended_at + RETENTION_MS)
    );

    // Several more rounds: the blocked workflow and its dead letter stay.
    let t0 = redis_now(&k.redis).await;
    wait_until("a few more retention rounds", PATIENCE, || async {
        redis_now(&k.redis).await > t0 + 1000
    })
    .await;
    assert_kept(&k.redis, &blocked, false).await;
    assert_eq!(dead_letters_of(&k.redis, &blocked).await, 1);
    let n = counts(&k.redis).await;
    assert_eq!(
        (n["completed"], n["failed"], n["blocked"]),
        (0, 0, 1),
        "{n:?}"
    );
    let mut c = conn(&k.redis).await;
    let totals = store().ended_totals(&mut c).await.unwrap();
    assert_eq!((totals.count, totals.bytes), (0, 0));
    k.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_count_rule_keeps_the_newest_ended_workflows() {
    let k = Kit::start(&[
        "--retention-max-count",
        "2",
        "--retention-interval",
        "200ms",
    ])
    .await;
    let blocked = k.blocked().await;
    let mut ended = Vec::new();
    for i in 0..5 {
        ended.push(if i % 2 == 0 {
            k.completed().await
        } else {
            k.failed().await
        });
    }
    wait_until("2 ended workflows left", PATIENCE, || async {
        let mut c = conn(&k.redis).await;
        store().ended_totals(&mut c).await.unwrap().count == 2
    })
    .await;
    for id in &ended[..3] {
        wait_gone(&k.redis, id).await;
    }
    for id in &ended[3..] {
        assert_kept(&k.redis, id, true).await;
    }
    assert_kept(&k.redis, &blocked, false).await;
    assert_eq!(dead_letters_of(&k.redis, &blocked).await, 1);
    let n = counts(&k.redis).await;
    assert_eq!(n["completed"] + n["failed"], 2, "{n:?}");
    k.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bytes_rule_keeps_the_newest_within_the_cap() {
    // The server keeps everything (7 days); the round is run by hand with a
    // cap computed from the bytes measured when each workflow ended.
    let k = Kit::start(&[]).await;
    let blocked = k.blocked().await;
    let mut ended = Vec::new();
    for _ in 0..4 {
        ended.push(k.completed().await);
    }
    let mut bytes = Vec::new();
    for id in &ended {
        bytes.push(ended_entry(&k.redis, id).await.1);
    }
    let cap = bytes[2] + bytes[3];
    let s = RetentionSettings {
        interval: Duration::from_secs(1),
        max_age: Duration::from_secs(7 * 86_400),
        max_count: None,
        max_bytes: Some(cap),
        archive: ArchiveSettings::default(),
    };
    let mut c = conn(&k.redis).await;
    let r = retain_once(&store(), &mut c, &s).await.unwrap();
    assert_eq!((r.by_bytes, r.by_age, r.by_count), (2, 0, 0), "{r:?}");
    assert_eq!(r.bytes_freed, bytes[0] + bytes[1]);
    for id in &ended[..2] {
        assert!(remains(&k.redis, id).await.is_empty(), "{id}");
    }
    for id in &ended[2..] {
        assert_kept(&k.redis, id, true).await;
    }
    assert_kept(&k.redis, &blocked, false).await;
    let totals = store().ended_totals(&mut c).await.unwrap();
    assert_eq!((totals.count, totals.bytes), (2, cap));
    // A second round finds nothing more to do.
    let r = retain_once(&store(), &mut c, &s).await.unwrap();
    assert_eq!(r.deleted(), 0, "{r:?}");
    k.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delete_route_answers_200_409_404() {
    let k = Kit::start(&[]).await;
    let done = k.completed().await;
    let blocked = k.blocked().await;
    let url = |id: &str| k.o.api(&format!("/workflows/{id}"));
    let viewer = http_as(VIEWER);
    let operator = http_as(OPERATOR);

    let r = viewer.delete(url(&done)).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_kept(&k.redis, &done, true).await;

    let r = operator.delete(url(&blocked)).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("blocked"),
        "{body}"
    );
    assert_kept(&k.redis, &blocked, false).await;

    let (_, bytes) = ended_entry(&k.redis, &done).await;
    let r = operator.delete(url(&done)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({ "id": done, "status": "completed", "bytes": bytes })
    );
    assert!(remains(&k.redis, &done).await.is_empty());
    assert_eq!(counts(&k.redis).await["completed"], 0);

    for id in [done.as_str(), "never-was", "bad%7Bid"] {
        let r = operator.delete(url(id)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{id}");
    }

    // Running: refused, kept, and it still completes afterwards.
    let r = k
        .http
        .post(k.o.api("/workflows"))
        .json(&json!({ "definition": "one", "input": { "sleep_ms": { "only": 1500 } } }))
        .send()
        .await
        .unwrap();
    let running = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = operator.delete(url(&running)).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let ended = wait_ended(&k.redis, std::slice::from_ref(&running), PATIENCE).await;
    assert_eq!(ended[0].status, WorkflowStatus::Completed);
    assert_eq!(dead_letters_of(&k.redis, &blocked).await, 1);
    k.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_ended_before_the_index_existed_are_backfilled_once() {
    let k = Kit::start(&[]).await;
    let old = k.completed().await;
    let blocked = k.blocked().await;
    // As an older version left it: ended, but not in the ended index.
    let (_, bytes) = ended_entry(&k.redis, &old).await;
    let keys = keys();
    let mut c = conn(&k.redis).await;
    let _: () = redis::pipe()
        .zrem(keys.workflows_ended(), &old)
        .ignore()
        .hdel(
            keys.workflows_ended_bytes(),
            &[old.as_str(), ":backfilled"][..],
        )
        .ignore()
        .hincr(keys.workflows_ended_bytes(), ":total", -(bytes as i64))
        .ignore()
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        remains(&k.redis, &old).await,
        ["state", "events", "wfs:all"]
    );
    let before = redis_now(&k.redis).await;
    assert_eq!(store().backfill_ended(&mut c).await.unwrap(), Some(1));
    assert_eq!(store().backfill_ended(&mut c).await.unwrap(), None);
    let (at, measured) = ended_entry(&k.redis, &old).await;
    assert!(
        at >= before,
        "end time from the Redis clock at the backfill"
    );
    assert!(measured > 1000, "{measured}");
    assert_eq!(store().ended_totals(&mut c).await.unwrap().count, 1);
    assert_kept(&k.redis, &blocked, false).await;
    k.shutdown().await;
}
