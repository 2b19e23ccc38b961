//! Helpers shared by the behaviour tests: worker configs with short timings,
//! in-process and out-of-process workers, and the ledger that accounts for
//! every task at the end of a test.
#![allow(dead_code, clippy::unwrap_used)]

/// A stream entry: its id and its fields.
pub type RawEntry = (String, Vec<(String, Vec<u8>)>);

use agent_sdk::fault::{FaultAgent, FaultInput};
use agent_sdk::schemas::{AgentType, Keys, Namespace, fields};
use agent_sdk::testing::TestRedis;
use agent_sdk::{Agent, CancellationToken, Client, EnqueueOptions, RuntimeConfig, Worker};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const NS: &str = "test";

pub fn fault_type() -> AgentType {
    AgentType::new("fault").unwrap()
}

pub fn keys() -> Keys {
    Keys::new(Namespace::new(NS).unwrap())
}

/// Short timings so crash recovery happens within a test's patience.
pub fn config(redis: &TestRedis) -> RuntimeConfig {
    RuntimeConfig {
        redis_url: redis.url(),
        namespace: NS.into(),
        agent_type: Some("fault".into()),
        concurrency: 8,
        read_block: Duration::from_millis(200),
        max_attempts: 3,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        claim_idle: Duration::from_millis(1500),
        lease_renew: Duration::from_millis(300),
        max_deliveries: 3,
        heartbeat: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(5),
        promote_interval: Duration::from_millis(20),
        ..RuntimeConfig::default()
    }
}

/// The same settings as command-line flags for `fault-agent`.
pub fn flags(cfg: &RuntimeConfig) -> Vec<String> {
    let d = |d: Duration| format!("{}ms", d.as_millis());
    vec![
        "--redis-url".into(),
        cfg.redis_url.clone(),
        "--namespace".into(),
        cfg.namespace.clone(),
        "--concurrency".into(),
        cfg.concurrency.to_string(),
        "--read-block".into(),
        d(cfg.read_block),
        "--max-attempts".into(),
        cfg.max_attempts.to_string(),
        "--backoff-initial".into(),
        d(cfg.backoff_initial),
        "--backoff-max".into(),
        d(cfg.backoff_max),
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

/// A worker running inside the test process.
pub struct InProcess {
    pub stop: CancellationToken,
    pub handle: tokio::task::JoinHandle<agent_sdk::Result<()>>,
    pub instance_id: String,
}

impl InProcess {
    pub async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("worker did not stop within 30s")
            .expect("worker task panicked")
            .expect("worker failed");
    }
}

pub fn start<A: Agent>(agent: A, cfg: RuntimeConfig) -> InProcess {
    let worker = Worker::builder(agent)
        .config(cfg)
        .build()
        .expect("worker config");
    let instance_id = worker.instance_id().to_owned();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(worker.run_until(stop.clone()));
    InProcess {
        stop,
        handle,
        instance_id,
    }
}

pub fn start_fault(cfg: RuntimeConfig) -> InProcess {
    start(FaultAgent, cfg)
}

pub async fn client(redis: &TestRedis) -> Client {
    Client::connect(&redis.url(), NS).await.expect("client")
}

pub async fn enqueue(client: &Client, input: &FaultInput) -> String {
    client
        .enqueue(&fault_type(), input, EnqueueOptions::default())
        .await
        .expect("enqueue")
        .task_id
}

pub async fn enqueue_n(client: &Client, n: usize, input: &FaultInput) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(enqueue(client, input).await);
    }
    ids
}

pub use agent_sdk::testing::wait_until;

/// Waits until `n` tasks of the fault agent type are settled, then a little
/// longer so that anything that would wrongly follow (a second result) shows
/// up, and returns the ledger. On timeout, the ledger is in the message.
pub async fn settle(redis: &TestRedis, n: usize) -> Ledger {
    let t = fault_type();
    let wait = Duration::from_secs(60);
    let ok = tokio::time::timeout(wait, async {
        while Ledger::read(redis, &t).settled() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        ok.is_ok(),
        "{n} tasks not settled within {wait:?}: {:#?}",
        Ledger::read(redis, &t)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ledger::read(redis, &t)
}

/// Input of a task that sleeps `ms` and succeeds.
pub fn sleep_input(ms: u64) -> FaultInput {
    FaultInput {
        sleep_ms: ms,
        ..FaultInput::default()
    }
}

/// Input of a task that fails with `mode` on every attempt.
pub fn failing(mode: agent_sdk::fault::FailMode) -> FaultInput {
    FaultInput {
        fail: Some(mode),
        ..FaultInput::default()
    }
}

/// Everything the system says happened to the tasks of one agent type.
#[derive(Debug, Default)]
pub struct Ledger {
    /// task id → number of `succeeded` results published.
    pub succeeded: BTreeMap<String, usize>,
    /// task id → number of `dead_lettered` results published.
    pub dead_results: BTreeMap<String, usize>,
    /// task id (or "-" when unknown) → number of DLQ entries.
    pub dead_letters: BTreeMap<String, usize>,
    /// DLQ entries with their fields.
    pub dlq: Vec<RawEntry>,
    pub stream_len: usize,
    pub pending: usize,
    pub delayed: usize,
}

fn entries(conn: &mut redis::Connection, key: &str) -> Vec<RawEntry> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap();
    reply
        .ids
        .into_iter()
        .map(|e| {
            let mut f: Vec<(String, Vec<u8>)> = e
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<Vec<u8>>(v).unwrap()))
                .collect();
            f.sort();
            (e.id, f)
        })
        .collect()
}

pub fn field<'a>(f: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    f.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| std::str::from_utf8(v).unwrap())
}

impl Ledger {
    pub fn read(redis: &TestRedis, t: &AgentType) -> Self {
        let k = keys();
        let mut conn = redis.connection();
        let mut l = Ledger::default();
        for (_, f) in entries(&mut conn, &k.results(t)) {
            let id = field(&f, fields::TASK_ID).unwrap().to_owned();
            match field(&f, fields::STATUS).unwrap() {
                "succeeded" => *l.succeeded.entry(id).or_default() += 1,
                "dead_lettered" => *l.dead_results.entry(id).or_default() += 1,
                other => panic!("unknown status {other}"),
            }
        }
        l.dlq = entries(&mut conn, &k.dlq(t));
        for (_, f) in &l.dlq {
            let id = field(f, fields::TASK_ID).unwrap_or("-").to_owned();
            *l.dead_letters.entry(id).or_default() += 1;
        }
        l.stream_len = redis::cmd("XLEN").arg(k.tasks(t)).query(&mut conn).unwrap();
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(k.tasks(t))
            .arg("workers")
            .query(&mut conn)
            .unwrap_or(redis::Value::Nil);
        l.pending = match summary {
            redis::Value::Array(v) => v.first().map_or(0, |n| {
                redis::from_redis_value::<usize>(n.clone()).unwrap_or(0)
            }),
            _ => 0,
        };
        l.delayed = redis::cmd("ZCARD")
            .arg(k.delayed(t))
            .query(&mut conn)
            .unwrap();
        l
    }

    /// Tasks with a final outcome (a success or a dead letter).
    pub fn settled(&self) -> usize {
        self.succeeded.len() + self.dead_letters.len()
    }

    /// The exact accounting every reliability test ends with: each enqueued
    /// task has exactly one outcome — one `succeeded` result, or one DLQ
    /// entry plus one `dead_lettered` result — and nothing else is left.
    pub fn assert_exact(&self, succeeded: &[String], dead: &[String]) {
        let want_ok: BTreeSet<&String> = succeeded.iter().collect();
        let want_dead: BTreeSet<&String> = dead.iter().collect();
        assert_eq!(
            want_ok.len() + want_dead.len(),
            succeeded.len() + dead.len(),
            "duplicate ids in the expectation"
        );
        let got_ok: BTreeSet<&String> = self.succeeded.keys().collect();
        assert_eq!(got_ok, want_ok, "succeeded tasks differ");
        for (id, n) in &self.succeeded {
            assert_eq!(*n, 1, "task {id} has {n} success results");
        }
        let got_dead: BTreeSet<&String> = self.dead_letters.keys().collect();
        assert_eq!(got_dead, want_dead, "dead-lettered tasks differ");
        for (id, n) in &self.dead_letters {
            assert_eq!(*n, 1, "task {id} has {n} dead letters");
            // An entry too broken to name its task ("-") cannot be answered.
            if id != "-" {
                assert_eq!(
                    self.dead_results.get(id),
                    Some(&1),
                    "task {id} needs exactly one dead_lettered result"
                );
            }
        }
        let named = self.dead_letters.keys().filter(|id| *id != "-").count();
        assert_eq!(
            self.dead_results.len(),
            named,
            "dead_lettered results without dead letters"
        );
        assert_eq!(self.stream_len, 0, "task stream still holds entries");
        assert_eq!(self.pending, 0, "entries still pending");
        assert_eq!(self.delayed, 0, "entries still delayed");
    }
}

/// A `fault-agent` process.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub instance_id: String,
}

static LOG_DIR: std::sync::LazyLock<tempfile::TempDir> =
    std::sync::LazyLock::new(|| tempfile::tempdir().expect("log dir"));

impl Proc {
    pub fn spawn(cfg: &RuntimeConfig, instance_id: &str) -> Self {
        let log = LOG_DIR.path().join(format!("{instance_id}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fault-agent"))
            .args(flags(cfg))
            .args(["--instance-id", instance_id])
            .env_clear()
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawn fault-agent");
        Self {
            child,
            log,
            instance_id: instance_id.to_owned(),
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the process to end by itself; returns its exit code.
    pub async fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}\n{}",
                self.instance_id,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.instance_id, self.log_text());
        }
    }
}

/// Creates the `workers` group on the fault agent's task stream, as a worker would.
pub fn create_group(redis: &TestRedis) {
    let mut conn = redis.connection();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys().tasks(&fault_type()))
        .arg("workers")
        .arg("0")
        .arg("MKSTREAM")
        .query(&mut conn)
        .unwrap();
}

/// Delivers every new task to `consumer` as a worker that never gets to see
/// them would (it died, or the reply was lost): they sit in its pending list.
pub fn deliver_unseen(redis: &TestRedis, consumer: &str) {
    let mut conn = redis.connection();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg(consumer)
        .arg("STREAMS")
        .arg(keys().tasks(&fault_type()))
        .arg(">")
        .query(&mut conn)
        .unwrap();
}

/// The consumer owning pending entry `id`, if it is pending.
pub fn owner_of(redis: &TestRedis, id: &str) -> Option<String> {
    let mut conn = redis.connection();
    let r: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(keys().tasks(&fault_type()))
        .arg("workers")
        .arg(id)
        .arg(id)
        .arg(1)
        .query(&mut conn)
        .unwrap();
    r.ids.first().map(|p| p.consumer.clone())
}

/// Pending entries of the task stream: (entry id, owner, deliveries).
pub fn pending(redis: &TestRedis) -> Vec<(String, String, usize)> {
    let mut conn = redis.connection();
    let r: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(keys().tasks(&fault_type()))
        .arg("workers")
        .arg("-")
        .arg("+")
        .arg(10_000)
        .query(&mut conn)
        .unwrap_or_default();
    r.ids
        .into_iter()
        .map(|p| (p.id, p.consumer, p.times_delivered))
        .collect()
}
