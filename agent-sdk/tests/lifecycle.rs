//! The task lifecycle against a real redis-server, workers in-process.
//! Every test ends by accounting for every task it enqueued.

#![allow(clippy::unwrap_used)]

mod common;

use agent_sdk::schemas::{DeadLetterReason, TaskStatus};
use agent_sdk::testing::TestRedis;
use agent_sdk::{Agent, AgentError, DeadLetterFilter, EnqueueOptions, TaskContext};
use common::*;
use fault_agent::{FailMode, FaultInput, FaultOutput};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_json_and_msgpack() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let worker = start_fault(config(&redis));
    let mut ids = Vec::new();
    for i in 0..40 {
        let input = FaultInput {
            echo: Some(serde_json::json!({ "i": i })),
            ..FaultInput::default()
        };
        let opts = EnqueueOptions {
            encoding: if i % 2 == 0 {
                agent_sdk::schemas::Encoding::Json
            } else {
                agent_sdk::schemas::Encoding::MsgPack
            },
            ..EnqueueOptions::default()
        };
        ids.push(
            client
                .enqueue(&fault_type(), &input, opts)
                .await
                .unwrap()
                .task_id,
        );
    }
    let ledger = settle(&redis, ids.len()).await;
    worker.shutdown().await;
    ledger.assert_exact(&ids, &[]);
    for (i, id) in ids.iter().enumerate() {
        let r = client
            .result(&fault_type(), id)
            .await
            .unwrap()
            .expect("result stored by task id");
        assert_eq!(r.status, TaskStatus::Succeeded);
        let out: FaultOutput = serde_json::from_value(r.output.unwrap()).unwrap();
        assert_eq!(out.echo, Some(serde_json::json!({ "i": i })));
        assert_eq!(out.attempt, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_then_success() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let worker = start_fault(config(&redis));
    let input = FaultInput {
        fail: Some(FailMode::Retryable),
        fail_attempts: Some(2),
        ..FaultInput::default()
    };
    let ids = enqueue_n(&client, 10, &input).await;
    let ledger = settle(&redis, ids.len()).await;
    worker.shutdown().await;
    ledger.assert_exact(&ids, &[]);
    for id in &ids {
        let r = client.result(&fault_type(), id).await.unwrap().unwrap();
        assert_eq!(r.attempt, 3, "succeeded on the third attempt");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_goes_to_the_dlq_at_once() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let worker = start_fault(config(&redis));
    let ok = enqueue_n(&client, 5, &FaultInput::default()).await;
    let bad = enqueue_n(&client, 5, &failing(FailMode::Permanent)).await;
    let ledger = settle(&redis, 10).await;
    worker.shutdown().await;
    ledger.assert_exact(&ok, &bad);
    let page = client
        .dead_letters()
        .list(&fault_type(), &DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 5);
    for d in &page.items {
        assert_eq!(d.reason, DeadLetterReason::Permanent);
        assert_eq!(d.attempts, 1, "a permanent failure is never retried");
        assert!(d.error.contains("failing attempt 1"), "{}", d.error);
        assert!(d.raw_field("body").is_some(), "original body kept");
        let r = client
            .result(&fault_type(), d.task_id.as_ref().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.status, TaskStatus::DeadLettered);
        assert!(r.error.unwrap().message.contains("failing attempt 1"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_exhausted_panics_and_timeouts() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let mut cfg = config(&redis);
    cfg.task_timeout = Duration::from_millis(150);
    let worker = start_fault(cfg);
    let failing = enqueue_n(&client, 3, &failing(FailMode::Retryable)).await;
    let panicking = enqueue_n(
        &client,
        3,
        &FaultInput {
            panic: true,
            ..FaultInput::default()
        },
    )
    .await;
    let slow = enqueue_n(&client, 2, &sleep_input(2_000)).await;
    let dead: Vec<String> = failing
        .iter()
        .chain(&panicking)
        .chain(&slow)
        .cloned()
        .collect();
    let ledger = settle(&redis, dead.len()).await;
    worker.shutdown().await;
    ledger.assert_exact(&[], &dead);
    let dl = client.dead_letters();
    for (ids, needle) in [
        (&failing, "failing attempt 3"),
        (&panicking, "panicked"),
        (&slow, "timed out"),
    ] {
        for id in ids {
            let filter = DeadLetterFilter {
                task_id: Some(id.clone()),
                ..DeadLetterFilter::default()
            };
            let page = dl.list(&fault_type(), &filter).await.unwrap();
            let d = &page.items[0];
            assert_eq!(d.reason, DeadLetterReason::AttemptsExhausted);
            assert_eq!(d.attempts, 3);
            assert!(d.error.contains(needle), "{} lacks {needle}", d.error);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_go_to_the_dlq_with_their_raw_bytes() {
    let redis = TestRedis::start();
    let mut cfg = config(&redis);
    cfg.max_payload = 4096;
    let worker = start_fault(cfg);
    let key = keys().tasks(&fault_type());
    let mut conn = redis.connection();
    let garbage: &[u8] = b"\xc1\x00\xffnot msgpack";
    let big = format!(
        r#"{{"v":1,"id":"big","input":{{"echo":"{}"}}}}"#,
        "x".repeat(10_000)
    );
    // (task id the dead letter should name, fields as sent)
    type Case<'a> = (&'a str, Vec<(&'a str, Vec<u8>)>);
    let cases: Vec<Case<'_>> = vec![
        (
            "garbage",
            vec![("id", b"garbage".to_vec()), ("body", garbage.to_vec())],
        ),
        (
            "future",
            vec![("body", br#"{"v":9,"id":"future","input":{}}"#.to_vec())],
        ),
        (
            "big",
            vec![("id", b"big".to_vec()), ("body", big.into_bytes())],
        ),
        (
            "wrong-input",
            vec![(
                "body",
                br#"{"v":1,"id":"wrong-input","input":{"nope":1}}"#.to_vec(),
            )],
        ),
        ("-", vec![("payload", b"no body field".to_vec())]),
        (
            "bad-attempt",
            vec![
                ("id", b"bad-attempt".to_vec()),
                ("attempt", b"0".to_vec()),
                ("body", br#"{"v":1,"id":"bad-attempt","input":{}}"#.to_vec()),
            ],
        ),
    ];
    for (_, f) in &cases {
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg(f)
            .query(&mut conn)
            .unwrap();
    }
    // JSON typed in by hand, the way PROTOCOL.md shows: accepted and run.
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("body")
        .arg(r#"{"v":1,"id":"typed-by-hand","input":{"echo":"hi"}}"#)
        .query(&mut conn)
        .unwrap();
    let ledger = settle(&redis, cases.len() + 1).await;
    worker.shutdown().await;
    let dead: Vec<String> = cases.iter().map(|(id, _)| id.to_string()).collect();
    ledger.assert_exact(&["typed-by-hand".to_owned()], &dead);
    for (id, sent) in &cases {
        let (_, f) = ledger
            .dlq
            .iter()
            .find(|(_, f)| field(f, "task_id").unwrap_or("-") == *id)
            .unwrap_or_else(|| panic!("no dead letter for {id}"));
        assert_eq!(field(f, "reason"), Some("malformed"), "{id}");
        for (k, v) in sent {
            let raw = f
                .iter()
                .find(|(n, _)| *n == format!("raw.{k}"))
                .map(|(_, v)| v);
            assert_eq!(raw, Some(v), "{id}: raw.{k} must be kept byte for byte");
        }
    }
    let err = |id: &str| {
        field(
            &ledger
                .dlq
                .iter()
                .find(|(_, f)| field(f, "task_id") == Some(id))
                .unwrap()
                .1,
            "error",
        )
        .unwrap()
        .to_owned()
    };
    assert!(err("future").contains("unsupported protocol version 9"));
    assert!(err("big").contains("over the limit"));
    assert!(err("wrong-input").contains("input does not match"));
    // The hand-typed JSON task gets a JSON result back.
    let body: Vec<u8> = redis::cmd("GET")
        .arg(keys().result(&fault_type(), "typed-by-hand").unwrap())
        .query(&mut conn)
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&body).expect("result of a JSON task is JSON");
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["output"]["echo"], "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_enqueues_once() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let opts = || EnqueueOptions {
        idempotency_key: Some("order-42".into()),
        ..EnqueueOptions::default()
    };
    let first = client
        .enqueue(&fault_type(), &FaultInput::default(), opts())
        .await
        .unwrap();
    assert!(!first.duplicate);
    let mut dups = Vec::new();
    for _ in 0..5 {
        dups.push(
            client
                .enqueue(&fault_type(), &FaultInput::default(), opts())
                .await
                .unwrap(),
        );
    }
    for d in &dups {
        assert!(d.duplicate);
        assert_eq!(d.task_id, first.task_id);
    }
    let other = client
        .enqueue(
            &fault_type(),
            &FaultInput::default(),
            EnqueueOptions {
                idempotency_key: Some("order-43".into()),
                ..EnqueueOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(!other.duplicate);
    let worker = start_fault(config(&redis));
    let ledger = settle(&redis, 2).await;
    worker.shutdown().await;
    ledger.assert_exact(&[first.task_id, other.task_id], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_tasks_wait_in_the_delayed_set() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let worker = start_fault(config(&redis));
    let opts = EnqueueOptions {
        delay: Some(Duration::from_secs(2)),
        ..EnqueueOptions::default()
    };
    let id = client
        .enqueue(&fault_type(), &FaultInput::default(), opts)
        .await
        .unwrap()
        .task_id;
    let l = ledger(&redis);
    assert_eq!(
        (l.delayed, l.settled()),
        (1, 0),
        "waits in the delayed set first"
    );
    let ledger = settle(&redis, 1).await;
    worker.shutdown().await;
    ledger.assert_exact(&[id], &[]);
}

/// Fails permanently until switched, to test replay.
struct Switch(Arc<AtomicBool>, Arc<AtomicUsize>);

impl Agent for Switch {
    type Input = serde_json::Value;
    type Output = String;
    async fn handle(
        &self,
        _ctx: &TaskContext,
        _input: serde_json::Value,
    ) -> Result<String, AgentError> {
        self.1.fetch_add(1, Ordering::SeqCst);
        if self.0.load(Ordering::SeqCst) {
            Ok("fixed".into())
        } else {
            Err(AgentError::permanent("not yet"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_replay_once_and_purge() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let fixed = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicUsize::new(0));
    let worker = start(Switch(fixed.clone(), runs.clone()), config(&redis));
    let t = fault_type();
    let ids = enqueue_n(&client, 6, &FaultInput::default()).await;
    settle(&redis, 6).await;
    let dl = client.dead_letters();
    assert_eq!(dl.count(&t).await.unwrap(), 6);

    // Paging and filters.
    let page1 = dl
        .list(
            &t,
            &DeadLetterFilter {
                limit: 4,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page1.items.len(), 4);
    let page2 = dl
        .list(
            &t,
            &DeadLetterFilter {
                limit: 4,
                after: page1.next.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page2.items.len(), 2);
    assert_eq!(page2.next, None);
    let by_reason = dl
        .list(
            &t,
            &DeadLetterFilter {
                reason: Some(DeadLetterReason::Malformed),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(by_reason.items.is_empty());
    let one = dl.get(&t, &page1.items[0].id).await.unwrap().unwrap();
    assert_eq!(one, page1.items[0]);

    // Replay: many concurrent callers on each entry, exactly one wins.
    fixed.store(true, Ordering::SeqCst);
    let to_replay: Vec<_> = page1.items.iter().take(3).map(|d| d.id.clone()).collect();
    let mut calls = Vec::new();
    for id in &to_replay {
        for _ in 0..4 {
            let dl = dl.clone();
            let id = id.clone();
            let t = t.clone();
            calls.push(tokio::spawn(
                async move { dl.replay(&t, &id).await.unwrap() },
            ));
        }
    }
    let mut won = 0;
    for c in calls {
        won += usize::from(c.await.unwrap().is_some());
    }
    assert_eq!(won, 3, "each dead letter is replayed exactly once");
    let replayed: Vec<String> = page1
        .items
        .iter()
        .take(3)
        .map(|d| d.task_id.clone().unwrap())
        .collect();
    wait_until(WAIT, "replayed tasks succeed", || async {
        ledger(&redis).succeeded.len() == 3
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 9, "6 first runs + 3 replays");
    for id in &replayed {
        let r = client.result(&t, id).await.unwrap().unwrap();
        assert_eq!(
            (r.status, r.attempt),
            (TaskStatus::Succeeded, 1),
            "replay resets attempts"
        );
    }

    // Purge one by id, then the rest.
    let left = dl.list(&t, &DeadLetterFilter::default()).await.unwrap();
    assert_eq!(left.items.len(), 3);
    assert_eq!(dl.purge(&t, &[left.items[0].id.clone()]).await.unwrap(), 1);
    assert_eq!(dl.purge_all(&t).await.unwrap(), 2);
    assert_eq!(dl.count(&t).await.unwrap(), 0);
    assert_eq!(
        dl.replay(&t, &left.items[1].id).await.unwrap(),
        None,
        "a purged entry cannot be replayed"
    );
    worker.shutdown().await;

    let l = ledger(&redis);
    let replayed_set: std::collections::BTreeSet<_> = replayed.iter().collect();
    assert_eq!(
        l.succeeded
            .keys()
            .collect::<std::collections::BTreeSet<_>>(),
        replayed_set
    );
    assert!(l.succeeded.values().all(|n| *n == 1));
    assert_eq!(
        l.dead_results.len(),
        6,
        "every first run published its dead_lettered result once"
    );
    assert!(l.dead_results.values().all(|n| *n == 1));
    assert_eq!(ids.len(), 6);
    assert_eq!((l.stream_len, l.pending, l.delayed), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_heartbeat_and_clean_deregistration() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let worker = start_fault(config(&redis));
    let id = worker.instance_id.clone();
    wait_until(WAIT, "registered", || async {
        client
            .agents()
            .await
            .unwrap()
            .iter()
            .any(|a| a.instance_id == id)
    })
    .await;
    let a = client
        .agents()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.instance_id == id)
        .unwrap();
    assert_eq!(a.agent_type, "fault");
    assert_eq!(a.pid, std::process::id());
    assert_eq!(a.concurrency, 8);
    assert_eq!(a.status, agent_sdk::schemas::AgentStatus::Ready);
    let ids = enqueue_n(&client, 3, &FaultInput::default()).await;
    settle(&redis, 3).await;
    wait_until(WAIT, "processed count heartbeated", || async {
        client
            .agents()
            .await
            .unwrap()
            .iter()
            .any(|a| a.instance_id == id && a.processed == 3)
    })
    .await;
    let mut conn = redis.connection();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut conn).unwrap();
    let expires: f64 = redis::cmd("ZSCORE")
        .arg(keys().fleet_expires(&fault_type()))
        .arg(&id)
        .query(&mut conn)
        .unwrap();
    let ttl = expires as i64 - (secs * 1000 + micros / 1000) as i64;
    assert!(
        ttl > 0 && ttl <= 600,
        "counts as gone three beats after the last ({ttl} ms)"
    );
    worker.shutdown().await;
    assert!(
        client.agents().await.unwrap().is_empty(),
        "removed on clean shutdown"
    );
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(keys().tasks(&fault_type()))
        .arg("workers")
        .query(&mut conn)
        .unwrap();
    assert!(
        consumers.is_empty(),
        "a consumer with nothing pending leaves the group"
    );
    ledger(&redis).assert_exact(&ids, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_is_recreated_after_a_flush() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let worker = start_fault(config(&redis));
    let first = enqueue_n(&client, 3, &FaultInput::default()).await;
    settle(&redis, 3).await;
    let mut conn = redis.connection();
    let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
    let again = enqueue_n(&client, 3, &FaultInput::default()).await;
    let ledger = settle(&redis, 3).await;
    worker.shutdown().await;
    ledger.assert_exact(&again, &[]);
    assert_eq!(first.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_enqueued_before_any_worker_are_not_skipped() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let ids = enqueue_n(&client, 5, &FaultInput::default()).await;
    let worker = start_fault(config(&redis));
    let ledger = settle(&redis, 5).await;
    worker.shutdown().await;
    ledger.assert_exact(&ids, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_commits_wait_and_publish_once() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let mut cfg = config(&redis);
    cfg.concurrency = 10;
    let worker = start_fault(cfg);
    let ids = enqueue_n(&client, 10, &sleep_input(1_000)).await;
    wait_until(WAIT, "all ten running", || async {
        ledger(&redis).pending == 10
    })
    .await;
    // Full Redis: every write that may grow memory is refused from now on.
    let mut conn = redis.connection();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query(&mut conn)
        .unwrap();
    // The handlers finish meanwhile; their commits are refused and retried.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let stuck = ledger(&redis);
    assert_eq!(
        (stuck.settled(), stuck.pending),
        (0, 10),
        "nothing committed, nothing lost while Redis is full"
    );
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query(&mut conn)
        .unwrap();
    let ledger = settle(&redis, 10).await;
    worker.shutdown().await;
    ledger.assert_exact(&ids, &[]);
}

/// Sleeps, counting how many times each task ran, across workers.
struct CountingSleeper(Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>);

impl Agent for CountingSleeper {
    type Input = FaultInput;
    type Output = ();
    async fn handle(&self, ctx: &TaskContext, input: FaultInput) -> Result<(), AgentError> {
        *self
            .0
            .lock()
            .unwrap()
            .entry(ctx.task_id().to_owned())
            .or_default() += 1;
        tokio::time::sleep(Duration::from_millis(input.sleep_ms)).await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_tasks_keep_their_claim_while_they_run() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let runs = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let cfg = config(&redis);
    // Each task runs for more than twice claim_idle, next to an idle worker
    // that would reclaim anything that looked abandoned.
    let ids = enqueue_n(
        &client,
        3,
        &sleep_input(cfg.claim_idle.as_millis() as u64 * 2 + 500),
    )
    .await;
    let a = start(CountingSleeper(runs.clone()), cfg.clone());
    wait_until(WAIT, "all three running", || async {
        ledger(&redis).pending == 3
    })
    .await;
    let b = start(CountingSleeper(runs.clone()), cfg);
    let ledger = settle(&redis, 3).await;
    a.shutdown().await;
    b.shutdown().await;
    ledger.assert_exact(&ids, &[]);
    let runs = runs.lock().unwrap();
    for id in &ids {
        assert_eq!(
            runs.get(id),
            Some(&1),
            "task {id} ran {:?} times",
            runs.get(id)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_task_limits_override_the_worker_defaults() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let worker = start_fault(config(&redis));
    let t = fault_type();
    let once = client
        .enqueue(
            &t,
            &failing(FailMode::Retryable),
            EnqueueOptions {
                max_attempts: Some(1),
                ..EnqueueOptions::default()
            },
        )
        .await
        .unwrap()
        .task_id;
    let quick = client
        .enqueue(
            &t,
            &sleep_input(5_000),
            EnqueueOptions {
                timeout: Some(Duration::from_millis(100)),
                max_attempts: Some(2),
                ..EnqueueOptions::default()
            },
        )
        .await
        .unwrap()
        .task_id;
    // Out-of-range values from a hand-written envelope do not break anything.
    let mut conn = redis.connection();
    let _: String = redis::cmd("XADD")
        .arg(keys().tasks(&t))
        .arg("*")
        .arg("body")
        .arg(r#"{"v":1,"id":"huge-timeout","timeout_ms":18446744073709551615,"max_attempts":4294967295,"input":{}}"#)
        .query(&mut conn)
        .unwrap();
    // The producer refuses a body over its limit: nothing is added.
    let small = client.clone().with_max_payload(256);
    let big = FaultInput {
        echo: Some(serde_json::json!("x".repeat(1000))),
        ..FaultInput::default()
    };
    let err = small
        .enqueue(&t, &big, EnqueueOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");

    let ledger = settle(&redis, 3).await;
    worker.shutdown().await;
    ledger.assert_exact(&["huge-timeout".to_owned()], &[once.clone(), quick.clone()]);
    let dl = client.dead_letters();
    let get = |id: String| {
        let dl = dl.clone();
        let t = t.clone();
        async move {
            let f = DeadLetterFilter {
                task_id: Some(id),
                ..DeadLetterFilter::default()
            };
            dl.list(&t, &f).await.unwrap().items.remove(0)
        }
    };
    let d = get(once).await;
    assert_eq!(
        (d.reason, d.attempts),
        (DeadLetterReason::AttemptsExhausted, 1)
    );
    let d = get(quick).await;
    assert_eq!(
        (d.reason, d.attempts),
        (DeadLetterReason::AttemptsExhausted, 2)
    );
    assert!(d.error.contains("timed out after 100ms"), "{}", d.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_delivered_to_this_consumer_but_never_seen_are_picked_up() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    create_group(&redis);
    let ids = enqueue_n(&client, 3, &FaultInput::default()).await;
    // A read whose reply never reached the worker: the entries sit in its
    // pending list, unseen.
    deliver_unseen(&redis, "worker-x");
    let mut cfg = config(&redis);
    cfg.instance_id = Some("worker-x".into());
    // Long enough that reclaiming cannot be what picks them up.
    cfg.claim_idle = Duration::from_secs(600);
    cfg.lease_renew = Duration::from_secs(60);
    let worker = start_fault(cfg);
    let ledger = settle(&redis, 3).await;
    worker.shutdown().await;
    ledger.assert_exact(&ids, &[]);
}

/// Counts each handler call by task input `i`.
#[derive(Clone, Default)]
struct Counting(Arc<std::sync::Mutex<std::collections::BTreeMap<u64, usize>>>);

impl Agent for Counting {
    type Input = serde_json::Value;
    type Output = serde_json::Value;

    async fn handle(
        &self,
        _ctx: &TaskContext,
        input: serde_json::Value,
    ) -> Result<serde_json::Value, AgentError> {
        let i = input["i"].as_u64().unwrap_or(u64::MAX);
        *self.0.lock().unwrap().entry(i).or_default() += 1;
        Ok(input)
    }
}

/// `connected_clients` of the test Redis.
async fn connected_clients(c: &mut redis::aio::MultiplexedConnection) -> usize {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Six workers of three types in one process, on one connector: the process
/// holds two connections (the shared one and its doorbell's) however many
/// workers it runs, and a task enqueued while every reader waits is taken
/// by the doorbell, not at the end of a read period: the read period here
/// is 60 s (reclaim passes 150 s) and the test's patience 40 s. Tasks go one at a time to each
/// type in turn, so the doorbell keeps starting and stopping its watch of
/// each stream while it blocks on the others. Every task succeeds once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_of_many_workers_holds_two_connections() {
    let redis = TestRedis::start();
    let mut admin = async_conn(&redis).await;
    let client = client(&redis).await;
    let base = connected_clients(&mut admin).await;
    let connector = agent_sdk::connection::Connector::new(&redis.url()).unwrap();
    let types = ["alpha", "beta", "gamma"];
    let agent = Counting::default();
    let stop = agent_sdk::CancellationToken::new();
    let mut handles = Vec::new();
    for t in types.iter().flat_map(|t| [t, t]) {
        // No pass of the reclaimer (every claim_idle / 4) within the test
        // either: its reads would find the tasks without the bell.
        let cfg = agent_sdk::RuntimeConfig {
            read_block: Duration::from_secs(60),
            claim_idle: Duration::from_secs(600),
            ..short_timings(&redis, NS, t)
        };
        let w = agent_sdk::Worker::builder(agent.clone())
            .config(cfg)
            .connector(connector.clone())
            .build()
            .unwrap();
        handles.push(tokio::spawn(w.run_until(stop.clone())));
    }
    // Every reader waits on the doorbell once its connection is up.
    wait_until(WAIT, "the workers' two connections", || {
        let url = redis.url();
        async move {
            let mut c = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            // This probe's own connection is one more.
            connected_clients(&mut c).await == base + 3
        }
    })
    .await;
    // Let the readers' first reads pass: they now wait for the bell.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut ids = Vec::new();
    for i in 0..30u64 {
        let t = agent_sdk::schemas::AgentType::new(types[i as usize % 3]).unwrap();
        let id = client
            .enqueue(
                &t,
                &serde_json::json!({ "i": i }),
                EnqueueOptions::default(),
            )
            .await
            .unwrap()
            .task_id;
        let wait = tokio::time::timeout(Duration::from_secs(40), async {
            loop {
                if client.result(&t, &id).await.unwrap().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert!(
            wait.await.is_ok(),
            "task {i} of {t} was not taken within 40 s (read period 60 s): the doorbell did not ring"
        );
        ids.push((t, id));
        // Now and then, long enough for the doorbell to stop watching it.
        if i % 7 == 6 {
            tokio::time::sleep(agent_sdk::connection::bell::LINGER * 2).await;
        }
    }
    assert_eq!(
        connected_clients(&mut admin).await,
        base + 2,
        "one process of six workers holds exactly two connections"
    );
    stop.cancel();
    for h in handles {
        h.await.unwrap().unwrap();
    }
    let calls = agent.0.lock().unwrap().clone();
    assert_eq!(calls.len(), 30, "every task ran: {calls:?}");
    assert!(calls.values().all(|n| *n == 1), "each ran once: {calls:?}");
    for t in types {
        let t = agent_sdk::schemas::AgentType::new(t).unwrap();
        let mine: Vec<String> = ids
            .iter()
            .filter(|(ty, _)| *ty == t)
            .map(|(_, id)| id.clone())
            .collect();
        agent_sdk::testing::Ledger::read(&redis, &keys(), &t).assert_exact(&mine, &[]);
    }
}
