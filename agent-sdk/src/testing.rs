//! Test support (feature `test-util`), shared by the test trees of every
//! crate of the workspace: a real `redis-server` per test ([`TestRedis`]),
//! waits with timeouts ([`wait_until`]), worker settings with short timings
//! ([`worker_config`]), in-process workers ([`RunningWorker`]), real child
//! processes that tests signal and kill ([`Proc`]), and the exact accounting
//! of an agent type's tasks that every reliability test ends with
//! ([`Ledger`]).
//!
//! No mock: every behaviour test talks to a real server that it starts on a
//! free port and that stops when the guard drops. A missing `redis-server`
//! fails the test, with the command that installs it.

use crate::RedisArgs;
use schemas::{AgentType, Keys, fields};
use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on a free loopback port.
#[derive(Debug)]
pub struct TestRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    aof: bool,
}

/// A TCP port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot find a free port on 127.0.0.1")
}

fn server_binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER").map_or_else(|| PathBuf::from("redis-server"), PathBuf::from)
}

impl TestRedis {
    /// Starts a server without persistence.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a server with AOF (`appendfsync always`), so a restart loses
    /// nothing that was acknowledged.
    pub fn start_with_aof() -> Self {
        Self::start_with(true)
    }

    fn start_with(aof: bool) -> Self {
        let mut dir = tempfile::Builder::new()
            .prefix("agentic-redis-")
            .tempdir()
            .expect("cannot create a temporary directory");
        // A port found free can be taken before redis binds it; try a few.
        for _ in 0..5 {
            let mut r = Self {
                child: None,
                port: free_port(),
                dir,
                aof,
            };
            if r.spawn() {
                return r;
            }
            dir = std::mem::replace(&mut r.dir, tempfile::tempdir().expect("tempdir"));
        }
        panic!(
            "redis-server did not start after 5 tries; see its log in a temporary agentic-redis-* directory"
        );
    }

    fn spawn(&mut self) -> bool {
        let log = self.dir.path().join("redis.log");
        let mut cmd = Command::new(server_binary());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .args(["--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(["--appendonly", if self.aof { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server not found on PATH: install it (Debian: `apt-get install -y redis-server`; \
                 scripts/test.sh does this) or set REDIS_SERVER to its path"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                self.child = None;
                return false;
            }
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        // While loading the AOF the server answers LOADING, not PONG.
        redis::cmd("PING").query::<String>(&mut c).is_ok()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's data directory (AOF, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A synchronous connection, for test set-up and assertions.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .expect("cannot connect to the test redis")
    }

    /// Kills the server with SIGKILL, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server and starts it again on the same port and directory;
    /// with AOF it comes back with its data.
    pub fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            // The port may linger for a moment after the kill.
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after
/// `timeout`. Every wait of a test has a timeout: a hang is a failure that
/// says what it waited for.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Settings for a test's worker of `namespace` on `redis`: short reads, one
/// attempt per task (a failure is dead-lettered at once, so a test sees it
/// without waiting for backoff).
pub fn worker_config(redis: &TestRedis, namespace: &str) -> crate::RuntimeConfig {
    crate::RuntimeConfig {
        redis: RedisArgs::new(redis.url(), namespace),
        read_block: Duration::from_millis(200),
        retry: crate::RetryPolicy {
            max_attempts: 1,
            ..crate::RetryPolicy::default()
        },
        ..crate::RuntimeConfig::default()
    }
}

/// Settings of a test's worker of `agent_type` in `namespace` on `redis`,
/// with timings short enough that crash recovery happens within a test's
/// patience: reads of 200 ms, three attempts with 20–100 ms backoff, tasks
/// abandoned after 1.5 s (renewed every 300 ms), heartbeats every 200 ms.
pub fn short_timings(redis: &TestRedis, namespace: &str, agent_type: &str) -> crate::RuntimeConfig {
    crate::RuntimeConfig {
        redis: RedisArgs::new(redis.url(), namespace),
        agent_type: Some(agent_type.into()),
        read_block: Duration::from_millis(200),
        retry: crate::RetryPolicy {
            max_attempts: 3,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
            ..crate::RetryPolicy::default()
        },
        claim_idle: Duration::from_millis(1500),
        lease_renew: Duration::from_millis(300),
        heartbeat: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(5),
        promote_interval: Duration::from_millis(20),
        ..crate::RuntimeConfig::default()
    }
}

/// A worker running inside the test process.
#[derive(Debug)]
pub struct RunningWorker {
    stop: tokio_util::sync::CancellationToken,
    handle: tokio::task::JoinHandle<crate::Result<()>>,
    /// Its instance id (consumer name).
    pub instance_id: String,
}

impl RunningWorker {
    /// Builds a worker of `agent` for `agent_type` and runs it on the
    /// current tokio runtime. Panics on a bad configuration.
    pub fn spawn<A: crate::Agent>(
        agent: A,
        agent_type: &str,
        config: crate::RuntimeConfig,
    ) -> Self {
        let worker = crate::Worker::builder(agent)
            .agent_type(agent_type)
            .config(config)
            .build()
            .expect("worker configuration");
        let instance_id = worker.instance_id().to_owned();
        let stop = tokio_util::sync::CancellationToken::new();
        let handle = tokio::spawn(worker.run_until(stop.clone()));
        Self {
            stop,
            handle,
            instance_id,
        }
    }

    /// Stops it and waits for it; panics if it failed or did not stop in 30 s.
    pub async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("worker did not stop within 30 s")
            .expect("worker task panicked")
            .expect("worker failed");
    }
}

/// A real child process of a test: its stderr goes to a log file the test
/// can read; it is killed (`SIGKILL`) when dropped, and its log is printed
/// when the test fails.
#[derive(Debug)]
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Its stderr.
    pub log: PathBuf,
    /// What the test calls it (in messages).
    pub name: String,
}

impl Proc {
    /// Runs `program args` with a clean environment but for `env`, its
    /// stderr written to `log`.
    pub fn spawn(
        name: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[String],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Self {
        let out = std::fs::File::create(&log).expect("create the log file");
        let mut cmd = Command::new(program);
        cmd.args(args).env_clear();
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            child,
            log,
            name: name.to_owned(),
        }
    }

    /// `kill -<sig>` (`STOP`, `CONT`, `TERM`, …).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} {} failed", self.name);
    }

    /// `kill -9`, like a crash, and waits for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to end by itself; its exit
    /// code. Panics, with its log, if it is still running then.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether it has ended.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Its stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log_text());
        }
    }
}

/// A stream entry: its id and its fields, sorted by name.
pub type RawEntry = (String, Vec<(String, Vec<u8>)>);

/// Every entry of stream `key`.
pub fn entries(conn: &mut redis::Connection, key: &str) -> Vec<RawEntry> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(conn)
        .expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|e| {
            let mut f: Vec<(String, Vec<u8>)> = e
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<Vec<u8>>(v).unwrap_or_default()))
                .collect();
            f.sort();
            (e.id, f)
        })
        .collect()
}

/// The text of field `name` of an entry's fields.
pub fn field<'a>(f: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    f.iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
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
    /// Entries in the task stream.
    pub stream_len: usize,
    /// Entries pending in the `workers` group.
    pub pending: usize,
    /// Members of the delayed set.
    pub delayed: usize,
}

impl Ledger {
    /// Reads the ledger of agent type `t` of `keys`' namespace.
    pub fn read(redis: &TestRedis, keys: &Keys, t: &AgentType) -> Self {
        let mut conn = redis.connection();
        let mut l = Ledger::default();
        for (_, f) in entries(&mut conn, &keys.results(t)) {
            let id = field(&f, fields::TASK_ID).unwrap_or("-").to_owned();
            match field(&f, fields::STATUS) {
                Some("succeeded") => *l.succeeded.entry(id).or_default() += 1,
                Some("dead_lettered") => *l.dead_results.entry(id).or_default() += 1,
                other => panic!("unknown result status {other:?}"),
            }
        }
        l.dlq = entries(&mut conn, &keys.dlq(t));
        for (_, f) in &l.dlq {
            let id = field(f, fields::TASK_ID).unwrap_or("-").to_owned();
            *l.dead_letters.entry(id).or_default() += 1;
        }
        l.stream_len = redis::cmd("XLEN")
            .arg(keys.tasks(t))
            .query(&mut conn)
            .expect("XLEN");
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(keys.tasks(t))
            .arg(schemas::WORKERS_GROUP)
            .query(&mut conn)
            .unwrap_or(redis::Value::Nil);
        l.pending = match summary {
            redis::Value::Array(v) => v.first().map_or(0, |n| {
                redis::from_redis_value::<usize>(n.clone()).unwrap_or(0)
            }),
            _ => 0,
        };
        l.delayed = redis::cmd("ZCARD")
            .arg(keys.delayed(t))
            .query(&mut conn)
            .expect("ZCARD");
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
