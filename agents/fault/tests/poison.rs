//! A poison message that crashes its worker process, at default settings
//! (`--claim-idle 60s`, `--max-deliveries 5`): each crash is seen as soon
//! as the process's connection is gone, not after `--claim-idle`, so the
//! message is dead-lettered within a minute while a supervisor restarts the
//! worker. The other tasks are all accounted for.

#![allow(clippy::unwrap_used)]

mod common;

use agent_sdk::schemas::fields;
use agent_sdk::{RedisArgs, RuntimeConfig};
use common::*;
use fault_agent::FaultInput;
use std::path::Path;
use std::time::{Duration, Instant};

fn spawn(cfg: &RuntimeConfig, n: usize, dir: &Path) -> Proc {
    // No --instance-id: each process names itself (host-pid-random), as by
    // default.
    Proc::spawn(
        &format!("worker-{n}"),
        env!("CARGO_BIN_EXE_fault-agent"),
        &flags(cfg),
        &[("RUST_LOG", "info")],
        dir.join(format!("worker-{n}.log")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_within_a_minute_at_default_settings() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let cfg = RuntimeConfig {
        redis: RedisArgs::new(redis.url(), NS),
        agent_type: Some("fault".into()),
        ..RuntimeConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut started = 1;
    let mut worker = spawn(&cfg, started, dir.path());

    let mut ok = enqueue_n(&client, 10, &sleep_input(50)).await;
    let enqueued = Instant::now();
    let poison = enqueue(
        &client,
        &FaultInput {
            exit: true,
            ..FaultInput::default()
        },
    )
    .await;
    ok.extend(enqueue_n(&client, 10, &sleep_input(50)).await);

    // A supervisor: restart the worker whenever it ends.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut dead_at = None;
    loop {
        let l = ledger(&redis);
        if l.dead_letters.contains_key(&poison) {
            dead_at.get_or_insert_with(|| enqueued.elapsed());
            if l.settled() == 21 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "not settled in 120 s: {l:#?}");
        if worker.exited() {
            started += 1;
            worker = spawn(&cfg, started, dir.path());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = dead_at.unwrap();
    println!(
        "poison message dead-lettered {} ms after it was enqueued, {} worker processes started",
        took.as_millis(),
        started
    );
    assert!(
        took < Duration::from_secs(60),
        "dead-lettered after {took:?} (bound: 60 s)"
    );
    assert!(
        started >= 6,
        "the poison message crashed only {} workers",
        started - 1
    );

    worker.signal("TERM");
    worker.wait_exit(Duration::from_secs(40)).await;
    let l = ledger(&redis);
    l.assert_exact(&ok, std::slice::from_ref(&poison));
    let (_, f) = &l.dlq[0];
    assert_eq!(field(f, fields::REASON), Some("max_deliveries"), "{f:?}");
}
