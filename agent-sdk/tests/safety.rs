//! Safety mechanisms of the worker, each caught in the act against a real
//! redis-server: the retry delay and the delayed set (measured on the Redis
//! server's clock), the commit's fencing (after a reply lost on the wire, and
//! against an entry another consumer took), the lease loop stopping a handler
//! whose entry was taken over, and the reclaimer's poison triage.
//!
//! Nothing here waits on a log line: handlers record what they saw, and a
//! worker is stopped (which settles everything it holds) before the final
//! state is read. Every test ends by accounting for every task it enqueued.

#![allow(clippy::unwrap_used)]

mod common;

use agent_sdk::schemas::{DeadLetterReason, TaskStatus, fields};
use agent_sdk::testing::TestRedis;
use agent_sdk::{
    Agent, AgentError, CancellationToken, DeadLetterFilter, EnqueueOptions, RedisArgs, RetryPolicy,
    RuntimeConfig, TaskContext,
};
use common::*;
use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// A few milliseconds of slack for the millisecond rounding of the scores.
const SLACK_US: u64 = 5_000;

/// One run of a handler, as the handler saw it.
#[derive(Debug, Clone)]
struct Run {
    task_id: String,
    attempt: u32,
    worker: String,
    /// Redis `TIME` when the handler started, in µs.
    started_us: u64,
    /// Redis `TIME` just before the handler returned, in µs.
    ended_us: Option<u64>,
    /// The task's cancellation token, to see later whether it fired.
    cancel: CancellationToken,
    /// The task stream's pending list when the handler started: (id, owner, deliveries).
    pending_at_start: Vec<(String, String, usize)>,
}

/// What the probe does with a task.
#[derive(Debug, Clone)]
enum Behaviour {
    /// Succeeds at once.
    Succeed,
    /// Fails retryably on attempts `1..=n`, then succeeds.
    FailFirst(u32),
    /// On `worker`, waits until `release` fires, then succeeds (returns an
    /// error if cancelled first); elsewhere succeeds at once.
    HoldOn {
        worker: String,
        release: CancellationToken,
    },
    /// On `worker`, waits until the task is cancelled; elsewhere succeeds.
    UntilCancelledOn { worker: String },
}

/// An agent that records every run (on the Redis clock) and behaves as told.
#[derive(Debug, Clone)]
struct Probe {
    runs: Arc<Mutex<Vec<Run>>>,
    /// Straight to the test Redis, never through a proxy.
    redis: MultiplexedConnection,
    behaviour: Behaviour,
}

impl Probe {
    async fn new(redis: &TestRedis, behaviour: Behaviour) -> Self {
        Self {
            runs: Arc::default(),
            redis: async_conn(redis).await,
            behaviour,
        }
    }

    fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap().clone()
    }

    /// Runs per task id.
    fn run_counts(&self) -> BTreeMap<String, usize> {
        let mut n = BTreeMap::new();
        for r in self.runs() {
            *n.entry(r.task_id).or_default() += 1;
        }
        n
    }

    fn runs_of(&self, task_id: &str) -> Vec<Run> {
        self.runs()
            .into_iter()
            .filter(|r| r.task_id == task_id)
            .collect()
    }
}

impl Agent for Probe {
    type Input = serde_json::Value;
    type Output = String;

    async fn handle(
        &self,
        ctx: &TaskContext,
        _input: serde_json::Value,
    ) -> Result<String, AgentError> {
        let mut c = self.redis.clone();
        let started_us = redis_time_us(&mut c).await;
        let pending: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(keys().tasks(&fault_type()))
            .arg("workers")
            .arg("-")
            .arg("+")
            .arg(10_000)
            .query_async(&mut c)
            .await
            .unwrap();
        let index = {
            let mut runs = self.runs.lock().unwrap();
            runs.push(Run {
                task_id: ctx.task_id().to_owned(),
                attempt: ctx.attempt(),
                worker: ctx.worker().to_owned(),
                started_us,
                ended_us: None,
                cancel: ctx.cancelled().clone(),
                pending_at_start: pending
                    .ids
                    .into_iter()
                    .map(|p| (p.id, p.consumer, p.times_delivered))
                    .collect(),
            });
            runs.len() - 1
        };
        let outcome = match &self.behaviour {
            Behaviour::Succeed => Ok("done".to_owned()),
            Behaviour::FailFirst(n) if ctx.attempt() <= *n => Err(AgentError::retryable(format!(
                "failing attempt {}",
                ctx.attempt()
            ))),
            Behaviour::FailFirst(_) => Ok("done".to_owned()),
            Behaviour::HoldOn { worker, release } if ctx.worker() == worker => {
                tokio::select! {
                    _ = release.cancelled() => Ok("done".to_owned()),
                    _ = ctx.cancelled().cancelled() => Err(AgentError::retryable("cancelled")),
                }
            }
            Behaviour::UntilCancelledOn { worker } if ctx.worker() == worker => {
                ctx.cancelled().cancelled().await;
                Err(AgentError::retryable("cancelled"))
            }
            Behaviour::HoldOn { .. } | Behaviour::UntilCancelledOn { .. } => Ok("done".to_owned()),
        };
        let ended_us = redis_time_us(&mut c).await;
        self.runs.lock().unwrap()[index].ended_us = Some(ended_us);
        outcome
    }
}

/// The common test settings, for the worker named `instance`.
fn named(redis: &TestRedis, instance: &str) -> RuntimeConfig {
    RuntimeConfig {
        instance_id: Some(instance.into()),
        ..config(redis)
    }
}

/// Waits until a handler run of `task_id` on `worker` has started.
async fn wait_started(probe: &Probe, task_id: &str, worker: &str) -> Run {
    wait_until(
        WAIT,
        &format!("the handler of task {task_id} starts on {worker}"),
        || async { probe.runs_of(task_id).iter().any(|r| r.worker == worker) },
    )
    .await;
    probe
        .runs_of(task_id)
        .into_iter()
        .find(|r| r.worker == worker)
        .unwrap()
}

/// The only pending entry of the task stream, with its owner.
fn only_pending(redis: &TestRedis) -> (String, String) {
    let p = pending(redis);
    assert_eq!(p.len(), 1, "exactly one pending entry expected: {p:?}");
    (p[0].0.clone(), p[0].1.clone())
}

/// `XCLAIM`s pending entry `id` for `consumer`, as another worker reclaiming it would.
fn steal(redis: &TestRedis, id: &str, consumer: &str) {
    let mut conn = redis.connection();
    let claimed: Vec<String> = redis::cmd("XCLAIM")
        .arg(keys().tasks(&fault_type()))
        .arg("workers")
        .arg(consumer)
        .arg(0)
        .arg(id)
        .arg("JUSTID")
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        claimed,
        vec![id.to_owned()],
        "XCLAIM of {id} for {consumer}"
    );
    assert_eq!(owner_of(redis, id).as_deref(), Some(consumer));
}

/// Number of entries of the fault agent's results stream.
fn results_len(redis: &TestRedis) -> usize {
    let mut conn = redis.connection();
    redis::cmd("XLEN")
        .arg(keys().results(&fault_type()))
        .query(&mut conn)
        .unwrap()
}

/// The stored result of `task_id`, if any.
fn result_key(redis: &TestRedis, task_id: &str) -> Option<Vec<u8>> {
    let mut conn = redis.connection();
    redis::cmd("GET")
        .arg(keys().result(&fault_type(), task_id).unwrap())
        .query(&mut conn)
        .unwrap()
}

/// Asserts that nothing at all was published or scheduled for the tasks so far.
fn assert_nothing_published(redis: &TestRedis, task_id: &str, why: &str) {
    let l = ledger(redis);
    assert_eq!(
        results_len(redis),
        0,
        "{why}: a result was published: {l:#?}"
    );
    assert_eq!(
        result_key(redis, task_id),
        None,
        "{why}: a result key was stored"
    );
    assert!(l.dlq.is_empty(), "{why}: a dead letter was written: {l:#?}");
    assert_eq!(l.delayed, 0, "{why}: a retry was scheduled: {l:#?}");
}

async fn enqueue_one(client: &agent_sdk::Client, opts: EnqueueOptions) -> String {
    client
        .enqueue(&fault_type(), &serde_json::json!({}), opts)
        .await
        .unwrap()
        .task_id
}

// ---------------------------------------------------------------------------
// (a) The retry delay.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_their_backoff_delay_on_the_redis_clock() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let probe = Probe::new(&redis, Behaviour::FailFirst(2)).await;
    let cfg = RuntimeConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            backoff_multiplier: 2.0,
            backoff_jitter: 0.0,
        },
        ..named(&redis, "worker-a")
    };
    let worker = start(probe.clone(), cfg);
    let id = enqueue_one(&client, EnqueueOptions::default()).await;
    wait_settled(&redis, 1).await;
    worker.shutdown().await;

    let mut runs = probe.runs_of(&id);
    runs.sort_by_key(|r| r.attempt);
    assert_eq!(
        runs.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "two retryable failures, then a success: {runs:#?}"
    );
    // Attempt n failed; attempt n + 1 may not start before the delay after
    // attempt n ended (its commit, which schedules the retry, comes later).
    for (failed, delay_ms) in [(0usize, 1_000u64), (1, 2_000)] {
        let ended = runs[failed].ended_us.unwrap();
        let next = runs[failed + 1].started_us;
        let waited_us = next.saturating_sub(ended);
        assert!(
            waited_us + SLACK_US >= delay_ms * 1_000,
            "attempt {} started {} ms after attempt {} ended (Redis clock); the backoff is {delay_ms} ms",
            runs[failed + 1].attempt,
            waited_us / 1_000,
            runs[failed].attempt,
        );
    }
    let r = client.result(&fault_type(), &id).await.unwrap().unwrap();
    assert_eq!((r.status, r.attempt), (TaskStatus::Succeeded, 3));
    ledger(&redis).assert_exact(&[id], &[]);
}

// ---------------------------------------------------------------------------
// (b) Delayed tasks are not promoted before they are due.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_task_does_not_start_before_its_delay() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let probe = Probe::new(&redis, Behaviour::Succeed).await;
    let worker = start(probe.clone(), named(&redis, "worker-a"));
    // The promoter runs (every 20 ms) for the whole delay.
    wait_until(WAIT, "worker-a registered", || async {
        client
            .agents()
            .await
            .unwrap()
            .iter()
            .any(|a| a.instance_id == "worker-a")
    })
    .await;
    let delay = Duration::from_millis(1_500);
    let mut time = async_conn(&redis).await;
    let enqueued_us = redis_time_us(&mut time).await;
    let id = enqueue_one(
        &client,
        EnqueueOptions {
            delay: Some(delay),
            ..EnqueueOptions::default()
        },
    )
    .await;
    let run = wait_started(&probe, &id, "worker-a").await;
    wait_settled(&redis, 1).await;
    worker.shutdown().await;

    let waited_us = run.started_us.saturating_sub(enqueued_us);
    assert!(
        waited_us + SLACK_US >= delay.as_micros() as u64,
        "the handler started {} ms after the enqueue (Redis clock); the delay is {} ms",
        waited_us / 1_000,
        delay.as_millis()
    );
    assert_eq!(probe.run_counts().get(&id), Some(&1));
    ledger(&redis).assert_exact(&[id], &[]);
}

// ---------------------------------------------------------------------------
// (c) A commit retried after its reply was lost publishes nothing twice.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_retried_after_a_lost_reply_publishes_each_result_once() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let proxy = LostReplyProxy::start(redis.port(), keys().results(&fault_type())).await;
    let probe = Probe::new(&redis, Behaviour::Succeed).await;
    let cfg = RuntimeConfig {
        redis: RedisArgs::new(proxy.url(), NS),
        // One task per commit call: every task's commit loses its reply.
        concurrency: 1,
        ..named(&redis, "worker-a")
    };
    let worker = start(probe.clone(), cfg);
    let n = 3;
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(enqueue_one(&client, EnqueueOptions::default()).await);
    }
    wait_until(
        WAIT,
        &format!("{n} commit replies lost and the {n} retried commit calls answered"),
        || async { proxy.dropped() >= n && proxy.retries_answered() >= n },
    )
    .await;
    // Stopping settles everything the worker still holds.
    worker.shutdown().await;

    assert_eq!(
        proxy.dropped(),
        n,
        "each of the {n} commit calls lost its reply once"
    );
    assert_eq!(
        results_len(&redis),
        n,
        "exactly one result per task: {:#?}",
        ledger(&redis)
    );
    for id in &ids {
        assert!(result_key(&redis, id).is_some(), "result key of {id}");
        let r = client.result(&fault_type(), id).await.unwrap().unwrap();
        assert_eq!((r.status, r.attempt), (TaskStatus::Succeeded, 1));
    }
    let runs = probe.run_counts();
    for id in &ids {
        assert_eq!(runs.get(id), Some(&1), "handler runs of {id}: {runs:?}");
    }
    ledger(&redis).assert_exact(&ids, &[]);
}

// ---------------------------------------------------------------------------
// Fencing: the commit discards the result of an entry another consumer owns.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_discards_the_result_of_an_entry_another_consumer_took() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let release = CancellationToken::new();
    let probe = Probe::new(
        &redis,
        Behaviour::HoldOn {
            worker: "worker-a".into(),
            release: release.clone(),
        },
    )
    .await;
    // Renewals so rare that the lease loop (whose first round runs at start,
    // before any task) cannot notice the takeover: only the commit can.
    let cfg = RuntimeConfig {
        lease_renew: Duration::from_secs(30),
        claim_idle: Duration::from_secs(120),
        ..named(&redis, "worker-a")
    };
    let a = start(probe.clone(), cfg.clone());
    let id = enqueue_one(&client, EnqueueOptions::default()).await;
    let run = wait_started(&probe, &id, "worker-a").await;
    let (entry, owner) = only_pending(&redis);
    assert_eq!(owner, "worker-a");
    steal(&redis, &entry, "worker-b");
    release.cancel();
    // Stopping worker-a waits for the handler and commits what it returned.
    a.shutdown().await;

    assert!(
        !run.cancel.is_cancelled(),
        "worker-a's handler was cancelled: the commit's fencing was not what stopped the result"
    );
    assert!(
        probe.runs_of(&id)[0].ended_us.is_some(),
        "worker-a's handler returned its output"
    );
    assert_nothing_published(
        &redis,
        &id,
        "worker-a committed an entry that worker-b owns",
    );
    assert_eq!(
        owner_of(&redis, &entry).as_deref(),
        Some("worker-b"),
        "the entry is still pending, owned by worker-b"
    );

    // worker-b, the owner, finishes the task.
    let b = start(
        probe.clone(),
        RuntimeConfig {
            instance_id: Some("worker-b".into()),
            ..cfg
        },
    );
    wait_settled(&redis, 1).await;
    b.shutdown().await;
    let r = client.result(&fault_type(), &id).await.unwrap().unwrap();
    assert_eq!(r.worker, "worker-b", "only the owner's result is published");
    let workers: Vec<String> = probe.runs_of(&id).into_iter().map(|r| r.worker).collect();
    assert_eq!(workers, ["worker-a", "worker-b"]);
    ledger(&redis).assert_exact(&[id], &[]);
}

// ---------------------------------------------------------------------------
// Lease ownership: the lease loop stops a handler whose entry was taken over.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_loop_cancels_the_handler_of_an_entry_taken_over() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let probe = Probe::new(
        &redis,
        Behaviour::UntilCancelledOn {
            worker: "worker-a".into(),
        },
    )
    .await;
    // Frequent renewals; an idle window so long that no reclaim pass can
    // take the entry back during the test.
    let cfg = RuntimeConfig {
        lease_renew: Duration::from_millis(200),
        claim_idle: Duration::from_secs(120),
        ..named(&redis, "worker-a")
    };
    let a = start(probe.clone(), cfg.clone());
    let id = enqueue_one(&client, EnqueueOptions::default()).await;
    let run = wait_started(&probe, &id, "worker-a").await;
    let (entry, owner) = only_pending(&redis);
    assert_eq!(owner, "worker-a");
    steal(&redis, &entry, "worker-b");
    wait_until(
        Duration::from_secs(10),
        "worker-a's handler cancelled once its entry belongs to worker-b (lease renews every 200 ms)",
        || async { run.cancel.is_cancelled() },
    )
    .await;
    a.shutdown().await;

    assert_nothing_published(&redis, &id, "worker-a settled an entry that worker-b owns");
    assert_eq!(
        owner_of(&redis, &entry).as_deref(),
        Some("worker-b"),
        "the entry is still pending, owned by worker-b"
    );

    // worker-b, the owner, finishes the task.
    let b = start(
        probe.clone(),
        RuntimeConfig {
            instance_id: Some("worker-b".into()),
            ..cfg
        },
    );
    wait_settled(&redis, 1).await;
    b.shutdown().await;
    let r = client.result(&fault_type(), &id).await.unwrap().unwrap();
    assert_eq!(r.worker, "worker-b");
    let workers: Vec<String> = probe.runs_of(&id).into_iter().map(|r| r.worker).collect();
    assert_eq!(workers, ["worker-a", "worker-b"]);
    ledger(&redis).assert_exact(&[id], &[]);
}

// ---------------------------------------------------------------------------
// Poison triage in the reclaimer.

/// Sets the delivery count of pending entry `id` (owned by `consumer`) to
/// `deliveries` by claiming it again, as workers dying one after the other would.
fn redeliver(conn: &mut redis::Connection, id: &str, consumer: &str, deliveries: usize) {
    for _ in 1..deliveries {
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(keys().tasks(&fault_type()))
            .arg("workers")
            .arg(consumer)
            .arg(0)
            .arg(id)
            .query(conn)
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_dead_letters_poison_unrun_and_runs_abandoned_entries() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let cfg = RuntimeConfig {
        max_deliveries: 3,
        // A reclaim pass every second: the first one, a second after start,
        // is over long before the next.
        claim_idle: Duration::from_secs(4),
        lease_renew: Duration::from_millis(300),
        ..named(&redis, "worker-a")
    };
    create_group(&redis);
    // In stream order: a poison entry, a suspect (delivered twice), a normal
    // entry (delivered once), another poison entry.
    let poison1 = enqueue_one(&client, EnqueueOptions::default()).await;
    let suspect = enqueue_one(&client, EnqueueOptions::default()).await;
    let normal = enqueue_one(&client, EnqueueOptions::default()).await;
    let poison2 = enqueue_one(&client, EnqueueOptions::default()).await;
    // A dead worker read them all...
    deliver_unseen(&redis, "dead");
    let mut conn = redis.connection();
    let entries: Vec<String> = pending(&redis).into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(entries.len(), 4);
    // ...and the poison entries were delivered max_deliveries times, the
    // suspect twice, the normal entry once.
    redeliver(&mut conn, &entries[0], "dead", 3);
    redeliver(&mut conn, &entries[1], "dead", 2);
    redeliver(&mut conn, &entries[3], "dead", 3);
    // Idle for ten minutes: abandoned, as far as any worker can tell.
    let _: Vec<String> = redis::cmd("XCLAIM")
        .arg(keys().tasks(&fault_type()))
        .arg("workers")
        .arg("dead")
        .arg(0)
        .arg(&entries)
        .arg("IDLE")
        .arg(600_000)
        .arg("JUSTID")
        .query(&mut conn)
        .unwrap();
    let counts: Vec<usize> = pending(&redis).into_iter().map(|(_, _, n)| n).collect();
    assert_eq!(counts, [3, 2, 1, 3], "delivery counts set up");

    let probe = Probe::new(&redis, Behaviour::Succeed).await;
    let worker = start(probe.clone(), cfg);
    wait_settled(&redis, 4).await;
    worker.shutdown().await;

    let runs = probe.run_counts();
    for p in [&poison1, &poison2] {
        assert_eq!(
            runs.get(p),
            None,
            "poison task {p} ran; it must be dead-lettered without running"
        );
    }
    assert_eq!(
        runs.get(&suspect),
        Some(&1),
        "the suspect runs once: {runs:?}"
    );
    assert_eq!(
        runs.get(&normal),
        Some(&1),
        "the normal entry runs once: {runs:?}"
    );
    // One pass takes every poison entry and one suspect along with the
    // entries delivered once: when the normal entry ran, nothing was left
    // with the dead consumer.
    let seen = &probe.runs_of(&normal)[0].pending_at_start;
    let left: Vec<_> = seen
        .iter()
        .filter(|(_, owner, _)| owner == "dead")
        .collect();
    assert!(
        left.is_empty(),
        "when the normal entry started, still pending on the dead consumer: {left:?} \
         (the reclaim pass that took it should have taken the poison entries and the one suspect too)"
    );

    let ledger = ledger(&redis);
    ledger.assert_exact(
        &[suspect.clone(), normal.clone()],
        &[poison1.clone(), poison2.clone()],
    );
    for (_, f) in &ledger.dlq {
        assert_eq!(field(f, fields::REASON), Some("max_deliveries"), "{f:?}");
    }
    let page = client
        .dead_letters()
        .list(&fault_type(), &DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
    for d in &page.items {
        assert_eq!(d.reason, DeadLetterReason::MaxDeliveries);
        assert!(d.error.contains("delivered 3 times"), "{}", d.error);
    }
}
