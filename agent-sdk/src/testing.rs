//! Test support: a real `redis-server` per test (feature `test-util`).
//!
//! No mock: every behaviour test talks to a real server that it starts on a
//! free port and that stops when the guard drops. A missing `redis-server`
//! fails the test, with the command that installs it.

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

fn free_port() -> u16 {
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
        redis_url: redis.url(),
        namespace: namespace.to_owned(),
        read_block: Duration::from_millis(200),
        max_attempts: 1,
        ..crate::RuntimeConfig::default()
    }
}

/// A worker running inside the test process.
#[derive(Debug)]
pub struct RunningWorker {
    stop: tokio_util::sync::CancellationToken,
    handle: tokio::task::JoinHandle<crate::Result<()>>,
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
        let stop = tokio_util::sync::CancellationToken::new();
        let handle = tokio::spawn(worker.run_until(stop.clone()));
        Self { stop, handle }
    }

    /// Stops it and waits for it; panics if it failed or did not stop in 30 s.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("worker did not stop within 30 s")
            .expect("worker task panicked")
            .expect("worker failed");
    }
}
