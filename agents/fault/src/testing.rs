//! The fault agent's test kit (feature `test-util`), shared by the SDK's
//! behaviour tests and this crate's process-level tests: a worker of the
//! `fault` type with short timings, in-process or as the real `fault-agent`
//! daemon, tasks that sleep or fail, and the ledger of what became of them.

use crate::{FailMode, FaultAgent, FaultInput};
use agent_sdk::schemas::{AgentType, Keys, Namespace, WORKERS_GROUP};
use agent_sdk::testing::{Ledger, Proc, RunningWorker, TestRedis, short_timings};
use agent_sdk::{Agent, Client, EnqueueOptions, RuntimeConfig};
use std::path::Path;
use std::time::Duration;

/// The namespace of these tests.
pub const NS: &str = "test";

/// The agent type the fault agent serves.
pub fn fault_type() -> AgentType {
    AgentType::new("fault").expect("agent type")
}

/// Key names of [`NS`].
pub fn keys() -> Keys {
    Keys::new(Namespace::new(NS).expect("namespace"))
}

/// Short timings (see [`short_timings`]), 8 slots, poison after 3 deliveries.
pub fn config(redis: &TestRedis) -> RuntimeConfig {
    RuntimeConfig {
        concurrency: 8,
        max_deliveries: 3,
        ..short_timings(redis, NS, "fault")
    }
}

/// The same settings as command-line flags for `fault-agent`.
pub fn flags(cfg: &RuntimeConfig) -> Vec<String> {
    let d = |d: Duration| format!("{}ms", d.as_millis());
    vec![
        "--redis-url".into(),
        cfg.redis.url.clone(),
        "--namespace".into(),
        cfg.redis.namespace.clone(),
        "--concurrency".into(),
        cfg.concurrency.to_string(),
        "--read-block".into(),
        d(cfg.read_block),
        "--max-attempts".into(),
        cfg.retry.max_attempts.to_string(),
        "--backoff-initial".into(),
        d(cfg.retry.backoff_initial),
        "--backoff-max".into(),
        d(cfg.retry.backoff_max),
        "--claim-idle".into(),
        d(cfg.claim_idle),
        "--lease-renew".into(),
        d(cfg.lease_renew),
        "--max-deliveries".into(),
        cfg.max_deliveries.to_string(),
        "--heartbeat".into(),
        d(cfg.heartbeat),
        "--shutdown-grace".into(),
        d(cfg.shutdown_grace),
        "--promote-interval".into(),
        d(cfg.promote_interval),
    ]
}

/// The `fault-agent` binary at `program` (a test's
/// `env!("CARGO_BIN_EXE_fault-agent")`) as instance `instance_id`.
pub fn spawn_daemon(
    program: &Path,
    cfg: &RuntimeConfig,
    instance_id: &str,
    log_dir: &Path,
) -> Proc {
    let mut args = flags(cfg);
    args.extend(["--instance-id".into(), instance_id.into()]);
    Proc::spawn(
        instance_id,
        program,
        &args,
        &[("RUST_LOG", "info")],
        log_dir.join(format!("{instance_id}.log")),
    )
}

/// `agent` as a worker of the configured type, in-process.
pub fn start<A: Agent>(agent: A, cfg: RuntimeConfig) -> RunningWorker {
    let t = cfg.agent_type.clone().unwrap_or_else(|| "fault".into());
    RunningWorker::spawn(agent, &t, cfg)
}

/// The fault agent as a worker, in-process.
pub fn start_fault(cfg: RuntimeConfig) -> RunningWorker {
    start(FaultAgent, cfg)
}

/// A producer client of [`NS`].
pub async fn client(redis: &TestRedis) -> Client {
    Client::connect(&redis.url(), NS).await.expect("client")
}

/// Enqueues one fault task; its id.
pub async fn enqueue(client: &Client, input: &FaultInput) -> String {
    client
        .enqueue(&fault_type(), input, EnqueueOptions::default())
        .await
        .expect("enqueue")
        .task_id
}

/// Enqueues `n` fault tasks; their ids.
pub async fn enqueue_n(client: &Client, n: usize, input: &FaultInput) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(enqueue(client, input).await);
    }
    ids
}

/// The ledger of the fault type.
pub fn ledger(redis: &TestRedis) -> Ledger {
    Ledger::read(redis, &keys(), &fault_type())
}

/// Waits until `n` tasks of the fault agent type are settled, then a little
/// longer so that anything that would wrongly follow (a second result) shows
/// up, and returns the ledger. On timeout, the ledger is in the message.
pub async fn settle(redis: &TestRedis, n: usize) -> Ledger {
    wait_settled(redis, n).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ledger(redis)
}

/// Waits until `n` tasks of the fault agent type are settled (a success or a
/// dead letter each); on timeout the ledger is in the message. Unlike
/// [`settle`] it does not linger: callers that stop their workers next,
/// which settles everything in flight, read the ledger after that.
pub async fn wait_settled(redis: &TestRedis, n: usize) {
    let wait = Duration::from_secs(60);
    let ok = tokio::time::timeout(wait, async {
        while ledger(redis).settled() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        ok.is_ok(),
        "{n} tasks not settled within {wait:?}: {:#?}",
        ledger(redis)
    );
}

/// Input of a task that sleeps `ms` and succeeds.
pub fn sleep_input(ms: u64) -> FaultInput {
    FaultInput {
        sleep_ms: ms,
        ..FaultInput::default()
    }
}

/// Input of a task that fails with `mode` on every attempt.
pub fn failing(mode: FailMode) -> FaultInput {
    FaultInput {
        fail: Some(mode),
        ..FaultInput::default()
    }
}

/// Creates the `workers` group on the fault agent's task stream, as a worker would.
pub fn create_group(redis: &TestRedis) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys().tasks(&fault_type()))
        .arg(WORKERS_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query(&mut redis.connection())
        .expect("XGROUP CREATE");
}

/// Delivers every new task to `consumer` as a worker that never gets to see
/// them would (it died, or the reply was lost): they sit in its pending list.
pub fn deliver_unseen(redis: &TestRedis, consumer: &str) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(WORKERS_GROUP)
        .arg(consumer)
        .arg("STREAMS")
        .arg(keys().tasks(&fault_type()))
        .arg(">")
        .query(&mut redis.connection())
        .expect("XREADGROUP");
}

/// The consumer owning pending entry `id`, if it is pending.
pub fn owner_of(redis: &TestRedis, id: &str) -> Option<String> {
    let r: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(keys().tasks(&fault_type()))
        .arg(WORKERS_GROUP)
        .arg(id)
        .arg(id)
        .arg(1)
        .query(&mut redis.connection())
        .expect("XPENDING");
    r.ids.first().map(|p| p.consumer.clone())
}

/// Pending entries of the task stream: (entry id, owner, deliveries).
pub fn pending(redis: &TestRedis) -> Vec<(String, String, usize)> {
    let r: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(keys().tasks(&fault_type()))
        .arg(WORKERS_GROUP)
        .arg("-")
        .arg("+")
        .arg(10_000)
        .query(&mut redis.connection())
        .unwrap_or_default();
    r.ids
        .into_iter()
        .map(|p| (p.id, p.consumer, p.times_delivered))
        .collect()
}
