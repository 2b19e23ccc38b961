//! Probes that tell the truth about Redis: `/health` answers from the first
//! moment and whatever Redis does; `/ready` is 503 with the reason while
//! Redis is unreachable. Against the real `orchestrator` binary.

use crate::common::*;
use std::time::{Duration, Instant};

/// GET `url`: status, body and how long the answer took. Each request has
/// a timeout of its own, so a server that hangs fails the test, not stalls it.
async fn probe(http: &reqwest::Client, url: &str) -> (u16, String, Duration) {
    let t = Instant::now();
    let r = http
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    (status, body, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_a_running_orchestrator_health_200_and_ready_503_within_a_second() {
    let mut redis = TestRedis::start();
    let o = Proc::spawn(&redis, "orch-live", &[]).await;
    let http = reqwest::Client::new();
    let (s, _, _) = probe(&http, &format!("{}/ready", o.url)).await;
    assert_eq!(s, 200);

    redis.kill();
    let killed = Instant::now();
    let (s, body, health_took) = probe(&http, &format!("{}/health", o.url)).await;
    assert_eq!(s, 200, "{body}");
    let (s, body, ready_took) = probe(&http, &format!("{}/ready", o.url)).await;
    let since_kill = killed.elapsed();
    assert_eq!(s, 503, "{body}");
    assert!(
        body.contains("not_ready") && body.contains("redis"),
        "{body}"
    );
    println!(
        "redis killed: /health 200 in {} ms, /ready 503 in {} ms ({} ms after the kill): {body}",
        health_took.as_millis(),
        ready_took.as_millis(),
        since_kill.as_millis()
    );
    assert!(
        health_took < Duration::from_secs(1),
        "/health took {health_took:?}"
    );
    assert!(
        ready_took < Duration::from_secs(1),
        "/ready took {ready_took:?}"
    );
    // Every later probe too, not only the first.
    for _ in 0..5 {
        let (s, _, took) = probe(&http, &format!("{}/ready", o.url)).await;
        assert_eq!(s, 503);
        assert!(took < Duration::from_secs(1), "/ready took {took:?}");
        let (s, _, took) = probe(&http, &format!("{}/health", o.url)).await;
        assert_eq!(s, 200);
        assert!(took < Duration::from_secs(1), "/health took {took:?}");
    }
    // Redis back: ready again.
    redis.restart();
    wait_ready(&o.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_started_with_redis_down_answers_health_200_and_ready_503() {
    let mut redis = TestRedis::start();
    redis.kill();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["serve".to_string()];
    args.extend(serve_flags(&redis, &listen, &[]));
    let _o = agent_sdk::testing::Proc::spawn(
        "orchestrator (redis down)",
        env!("CARGO_BIN_EXE_orchestrator"),
        &args,
        &[("RUST_LOG", "info")],
        redis.dir().join("orchestrator-down.log"),
    );
    let url = format!("http://{listen}");
    let http = reqwest::Client::new();
    // Wait only for the process to listen; then each probe must answer.
    wait_until("the orchestrator listens", Duration::from_secs(30), || {
        let ok = std::net::TcpStream::connect(&listen).is_ok();
        async move { ok }
    })
    .await;
    let (s, body, took) = probe(&http, &format!("{url}/health")).await;
    assert_eq!(s, 200, "{body}");
    let (rs, rbody, rtook) = probe(&http, &format!("{url}/ready")).await;
    assert_eq!(rs, 503, "{rbody}");
    assert!(rbody.contains("redis"), "{rbody}");
    println!(
        "redis down at start: /health 200 in {} ms, /ready 503 in {} ms: {rbody}",
        took.as_millis(),
        rtook.as_millis()
    );
    assert!(took < Duration::from_secs(1) && rtook < Duration::from_secs(1));
    // The API is not served half-built: a route answers 503, not 404/500.
    let (s, _, _) = probe(&http, &format!("{url}/api/v1/workflows")).await;
    assert_eq!(s, 503);
    // Redis comes up: the full server takes over the port.
    redis.restart();
    wait_ready(&url).await;
    let (s, _, _) = probe(&http, &format!("{url}/health")).await;
    assert_eq!(s, 200);
}
