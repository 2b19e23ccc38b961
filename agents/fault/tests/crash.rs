//! Crash recovery with real processes: `fault-agent` daemons are killed with
//! SIGKILL, paused with SIGSTOP, stopped with SIGTERM, and Redis itself is
//! killed and restarted. Every test ends by accounting for every task.

#![allow(clippy::unwrap_used)]

mod common;

use agent_sdk::DeadLetterFilter;
use agent_sdk::schemas::DeadLetterReason;
use agent_sdk::testing::TestRedis;
use common::*;
use fault_agent::FaultInput;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

async fn wait_pending_by(redis: &TestRedis, owner: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    wait_until(WAIT, &format!("{n} entries pending on {owner}"), || {
        ids = pending(redis)
            .into_iter()
            .filter(|(_, o, _)| o == owner)
            .map(|(id, _, _)| id)
            .collect();
        let ok = ids.len() >= n;
        async move { ok }
    })
    .await;
    ids
}

async fn result_worker(client: &agent_sdk::Client, id: &str) -> String {
    client
        .result(&fault_type(), id)
        .await
        .unwrap()
        .expect("result")
        .worker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_tasks_are_completed_by_another() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let mut cfg = config(&redis);
    cfg.concurrency = 4;
    let ids = enqueue_n(&client, 12, &sleep_input(400)).await;
    let mut a = daemon(&cfg, "worker-a");
    let held = wait_pending_by(&redis, "worker-a", 4).await;
    assert!(
        client
            .agents()
            .await
            .unwrap()
            .iter()
            .any(|r| r.instance_id == "worker-a")
    );
    a.kill9();
    // Killed mid-task: its entries stay pending under its name, and its
    // registry record expires by itself (three heartbeats).
    for id in &held {
        assert_eq!(owner_of(&redis, id).as_deref(), Some("worker-a"));
    }
    wait_until(WAIT, "worker-a's registry record expires", || async {
        client
            .agents()
            .await
            .unwrap()
            .iter()
            .all(|r| r.instance_id != "worker-a")
    })
    .await;
    let _b = daemon(&cfg, "worker-b");
    let ledger = settle(&redis, ids.len()).await;
    ledger.assert_exact(&ids, &[]);
    let mut by_b = 0;
    for id in &ids {
        by_b += usize::from(result_worker(&client, id).await == "worker-b");
    }
    assert!(
        by_b >= 8,
        "worker-b finished what worker-a held and the rest ({by_b} of 12)"
    );
}

/// worker-a takes the only task and is paused (SIGSTOP) until worker-b has
/// reclaimed it, then resumes. Whatever worker-a does next, only worker-b's
/// result may be published; worker-a must log `expect`.
async fn paused_worker_loses_its_task(zombie_lease: Option<Duration>, task_ms: u64, expect: &str) {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let mut cfg = config(&redis);
    cfg.concurrency = 1;
    let mut zombie = cfg.clone();
    if let Some(renew) = zombie_lease {
        zombie.lease_renew = renew;
        zombie.claim_idle = renew * 3;
    }
    let ids = enqueue_n(&client, 1, &sleep_input(task_ms)).await;
    let a = daemon(&zombie, "worker-a");
    let held = wait_pending_by(&redis, "worker-a", 1).await;
    a.signal("STOP");
    let _b = daemon(&cfg, "worker-b");
    wait_until(WAIT, "worker-b reclaims the task", || async {
        owner_of(&redis, &held[0]).as_deref() == Some("worker-b")
    })
    .await;
    a.signal("CONT");
    wait_until(WAIT, &format!("worker-a logs {expect:?}"), || async {
        a.log_text().contains(expect)
    })
    .await;
    let ledger = settle(&redis, 1).await;
    ledger.assert_exact(&ids, &[]);
    assert_eq!(
        result_worker(&client, &ids[0]).await,
        "worker-b",
        "only the owner's result is published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_worker_stops_its_handler_once_the_task_is_reclaimed() {
    // On waking, worker-a's lease loop finds the task is no longer its own
    // while the handler still has a second to run.
    paused_worker_loses_its_task(
        None,
        3_000,
        "taken over by another worker; stopping its handler",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_worker_publishes_nothing_for_a_reclaimed_task() {
    // worker-a renews so rarely that only the commit's fencing can stop it:
    // its handler is past its sleep on waking and commits at once, while
    // worker-b still runs the task.
    paused_worker_loses_its_task(
        Some(Duration::from_secs(20)),
        1_000,
        "before its commit; result discarded",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_is_dead_lettered_after_max_deliveries() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let mut cfg = config(&redis);
    cfg.max_deliveries = 3;
    let poison = enqueue_n(
        &client,
        1,
        &FaultInput {
            exit: true,
            ..FaultInput::default()
        },
    )
    .await;
    let good = enqueue_n(&client, 5, &sleep_input(50)).await;
    // A supervisor keeps two workers alive, as systemd or Kubernetes would.
    let mut procs: Vec<Proc> = Vec::new();
    let mut started = 0;
    let mut crashes = 0;
    let t = fault_type();
    let deadline = std::time::Instant::now() + WAIT;
    while ledger(&redis).settled() < 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "not settled: {:#?}",
            ledger(&redis)
        );
        for p in &mut procs {
            if p.exited() {
                assert_eq!(
                    p.child.wait().unwrap().code(),
                    Some(3),
                    "only the poison task ends a worker"
                );
                crashes += 1;
            }
        }
        procs.retain_mut(|p| !p.exited());
        while procs.len() < 2 {
            started += 1;
            procs.push(daemon(&cfg, &format!("worker-{started}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ledger = settle(&redis, 6).await;
    ledger.assert_exact(&good, &poison);
    assert_eq!(
        crashes, 3,
        "the poison task ran exactly max_deliveries times"
    );
    let d = &client
        .dead_letters()
        .list(&t, &DeadLetterFilter::default())
        .await
        .unwrap()
        .items[0];
    assert_eq!(d.reason, DeadLetterReason::MaxDeliveries);
    assert!(d.error.contains("delivered 3 times"), "{}", d.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_reconnects_after_redis_restarts() {
    let mut redis = TestRedis::start_with_aof();
    let client = client(&redis).await;
    let cfg = config(&redis);
    let ids = enqueue_n(&client, 300, &sleep_input(30)).await;
    let a = daemon(&cfg, "worker-a");
    wait_until(WAIT, "a third of the tasks done", || async {
        ledger(&redis).settled() >= 100
    })
    .await;
    redis.restart();
    let ledger = settle(&redis, ids.len()).await;
    ledger.assert_exact(&ids, &[]);
    assert!(
        a.log_text().contains("reconnected to redis"),
        "{}",
        a.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_tasks() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let mut cfg = config(&redis);
    cfg.concurrency = 4;
    let ids = enqueue_n(&client, 8, &sleep_input(2_000)).await;
    let mut a = daemon(&cfg, "worker-a");
    wait_until(WAIT, "worker-a registered", || async {
        client.agents().await.unwrap().len() == 1
    })
    .await;
    wait_pending_by(&redis, "worker-a", 4).await;
    a.signal("TERM");
    assert_eq!(
        a.wait_exit(Duration::from_secs(10)).await,
        Some(0),
        "clean exit"
    );
    let l = ledger(&redis);
    assert_eq!(
        (l.succeeded.len(), l.pending, l.stream_len),
        (4, 0, 4),
        "in-flight finished and acked; the rest untouched"
    );
    assert!(client.agents().await.unwrap().is_empty(), "deregistered");
    let _b = daemon(&cfg, "worker-b");
    settle(&redis, 8).await.assert_exact(&ids, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_grace_leaves_tasks_pending_for_another_worker() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let mut cfg = config(&redis);
    cfg.concurrency = 2;
    let mut hasty = cfg.clone();
    hasty.shutdown_grace = Duration::from_millis(300);
    let ids = enqueue_n(&client, 2, &sleep_input(4_000)).await;
    let mut a = daemon(&hasty, "worker-a");
    let held = wait_pending_by(&redis, "worker-a", 2).await;
    a.signal("TERM");
    assert_eq!(a.wait_exit(Duration::from_secs(10)).await, Some(0));
    for id in &held {
        assert_eq!(
            owner_of(&redis, id).as_deref(),
            Some("worker-a"),
            "unfinished work is never acked"
        );
    }
    assert_eq!(ledger(&redis).settled(), 0);
    let _b = daemon(&cfg, "worker-b");
    let ledger = settle(&redis, 2).await;
    ledger.assert_exact(&ids, &[]);
    for id in &ids {
        assert_eq!(result_worker(&client, id).await, "worker-b");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_started_before_redis_waits_for_it() {
    let mut redis = TestRedis::start();
    let cfg = config(&redis);
    redis.kill();
    let a = daemon(&cfg, "worker-a");
    wait_until(WAIT, "worker-a says it cannot connect", || async {
        a.log_text().contains("cannot connect to redis; retrying")
    })
    .await;
    redis.restart();
    let client = client(&redis).await;
    let ids = enqueue_n(&client, 5, &FaultInput::default()).await;
    settle(&redis, 5).await.assert_exact(&ids, &[]);
    assert!(
        !a.log_text().contains("127.0.0.1:0"),
        "sanity: the log names the real URL"
    );
}
