//! Shared by the orchestrator's behaviour tests: a real Redis, the
//! orchestrator in-process or as a real process, stage agents on the SDK
//! that record every task they run, and waits with timeouts.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use agent_sdk::schemas::{AgentType, Keys, Namespace};
use agent_sdk::testing::TestRedis;
use agent_sdk::{Agent, AgentError, CancellationToken, RuntimeConfig, TaskContext, Worker};
use clap::Parser;
use orchestrator::ServeConfig;
use orchestrator::store::{LogEntry, Summary, WorkflowStore};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const NS: &str = "otest";
pub const SDLC: [&str; 5] = ["scaffold", "validation", "e2e", "integration", "deployment"];

pub fn keys() -> Keys {
    Keys::new(Namespace::new(NS).unwrap())
}

#[derive(Parser, Debug)]
struct ServeCli {
    #[command(flatten)]
    serve: ServeConfig,
}

/// Flags of a test orchestrator: short timings so recovery happens within a
/// test's patience.
pub fn serve_flags(redis: &TestRedis, listen: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--redis-url",
        &redis.url(),
        "--namespace",
        NS,
        "--listen",
        listen,
        "--claim-idle",
        "1s",
        "--sweep-interval",
        "500ms",
        "--sweep-grace",
        "1s",
        "--timer-tick",
        "50ms",
        "--shutdown-grace",
        "5s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

pub fn serve_config(args: &[String]) -> ServeConfig {
    ServeCli::try_parse_from(
        std::iter::once("orchestrator".to_string()).chain(args.iter().cloned()),
    )
    .expect("serve flags")
    .serve
}

/// The orchestrator running inside the test process on a free port.
pub struct InProcess {
    pub url: String,
    pub stop: CancellationToken,
    pub handle: tokio::task::JoinHandle<orchestrator::Result<()>>,
}

impl InProcess {
    pub async fn start(redis: &TestRedis, extra: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = serve_config(&serve_flags(redis, &addr.to_string(), extra));
        let stop = CancellationToken::new();
        let handle = tokio::spawn(orchestrator::server::serve(cfg, listener, stop.clone()));
        let url = format!("http://{addr}");
        wait_healthy(&url).await;
        Self { url, stop, handle }
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("orchestrator did not stop within 30s")
            .expect("orchestrator task panicked")
            .expect("orchestrator failed");
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }
}

pub async fn wait_healthy(url: &str) {
    let http = reqwest::Client::new();
    wait_until("orchestrator /ready", Duration::from_secs(30), || async {
        http.get(format!("{url}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The orchestrator binary as a child process.
pub struct Proc {
    pub child: Child,
    pub url: String,
    pub log: std::path::PathBuf,
}

impl Proc {
    pub async fn spawn(redis: &TestRedis, consumer: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["serve".to_string()];
        args.extend(serve_flags(redis, &listen, extra));
        args.extend(["--consumer".to_string(), consumer.to_string()]);
        let log = redis
            .dir()
            .join(format!("orchestrator-{consumer}-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(&args)
            .env_clear()
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn orchestrator");
        let url = format!("http://{listen}");
        let p = Self { child, url, log };
        wait_healthy(&p.url).await;
        p
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// `kill -<sig>`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits up to `timeout` for the process to exit; its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "still running after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One task a stage agent ran.
#[derive(Debug, Clone)]
pub struct Run {
    pub task_id: String,
    pub agent: String,
    pub workflow: String,
    pub stage: String,
    pub undo: bool,
    pub started: Instant,
    pub finished: Instant,
    pub ok: bool,
}

/// Behaviour shared by the stage agents of a test.
#[derive(Debug, Default)]
pub struct Lab {
    pub runs: Mutex<Vec<Run>>,
    /// While false, stages named in a workflow's `dead_letter` input fail
    /// retryably (with `max_attempts: 1` they are dead-lettered).
    pub healed: AtomicBool,
}

impl Lab {
    pub fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap().clone()
    }

    /// Successful runs per (workflow, stage or stage.undo).
    pub fn ok_counts(&self) -> BTreeMap<(String, String), usize> {
        let mut m = BTreeMap::new();
        for r in self.runs() {
            if r.ok {
                let s = if r.undo {
                    format!("{}.undo", r.stage)
                } else {
                    r.stage.clone()
                };
                *m.entry((r.workflow.clone(), s)).or_default() += 1;
            }
        }
        m
    }
}

/// A stage agent: reads the orchestrator's stage input
/// (`{"workflow_id", "stage", "input", "deps"}`) and behaves as the workflow
/// input says:
/// - `"fail": "<stage>"` — that stage fails permanently;
/// - `"dead_letter": "<stage>"` — that stage fails retryably until the lab is healed;
/// - `"sleep_ms": {"<stage>": ms}` — that stage sleeps first.
///
/// Output: `{"stage", "agent", "deps": [names], "task_id"}`; a compensation
/// (input has `"action": "rollback"` or the task id ends in `:undo`) outputs
/// `{"undone": stage}`.
#[derive(Debug, Clone)]
pub struct StageAgent {
    pub agent: String,
    pub lab: Arc<Lab>,
}

impl Agent for StageAgent {
    type Input = Value;
    type Output = Value;

    async fn handle(&self, ctx: &TaskContext, input: Value) -> Result<Value, AgentError> {
        let started = Instant::now();
        let stage = input["stage"].as_str().unwrap_or("").to_owned();
        let workflow = input["workflow_id"].as_str().unwrap_or("").to_owned();
        let undo = ctx.task_id().ends_with(":undo");
        let wf_input = &input["input"];
        if let Some(ms) = wf_input["sleep_ms"][&stage].as_u64()
            && !undo
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let mut result = Ok(if undo {
            json!({ "undone": stage })
        } else {
            let deps: Vec<String> = input["deps"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            json!({ "stage": stage, "agent": self.agent, "deps": deps, "task_id": ctx.task_id() })
        });
        if !undo && wf_input["fail"].as_str() == Some(stage.as_str()) {
            result = Err(AgentError::permanent(format!(
                "stage {stage} fails as asked"
            )));
        }
        if !undo
            && wf_input["dead_letter"].as_str() == Some(stage.as_str())
            && !self.lab.healed.load(Ordering::SeqCst)
        {
            result = Err(AgentError::retryable(format!(
                "stage {stage} is broken until healed"
            )));
        }
        self.lab.runs.lock().unwrap().push(Run {
            task_id: ctx.task_id().to_owned(),
            agent: self.agent.clone(),
            workflow,
            stage,
            undo,
            started,
            finished: Instant::now(),
            ok: result.is_ok(),
        });
        result
    }
}

/// Worker settings for the stage agents.
pub fn worker_config(redis: &TestRedis, agent: &str) -> RuntimeConfig {
    RuntimeConfig {
        redis_url: redis.url(),
        namespace: NS.into(),
        agent_type: Some(agent.into()),
        concurrency: 32,
        batch_size: 32,
        read_block: Duration::from_millis(200),
        max_attempts: 3,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        claim_idle: Duration::from_millis(1500),
        lease_renew: Duration::from_millis(300),
        heartbeat: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(5),
        promote_interval: Duration::from_millis(20),
        ..RuntimeConfig::default()
    }
}

/// Stage agents for `agents`, in-process, sharing one lab.
pub struct Agents {
    pub lab: Arc<Lab>,
    stops: Vec<(
        CancellationToken,
        tokio::task::JoinHandle<agent_sdk::Result<()>>,
    )>,
}

impl Agents {
    pub fn start(redis: &TestRedis, agents: &[&str]) -> Self {
        let lab = Arc::new(Lab::default());
        let mut stops = Vec::new();
        for a in agents {
            let worker = Worker::builder(StageAgent {
                agent: a.to_string(),
                lab: lab.clone(),
            })
            .config(worker_config(redis, a))
            .build()
            .expect("worker config");
            let stop = CancellationToken::new();
            stops.push((stop.clone(), tokio::spawn(worker.run_until(stop))));
        }
        Self { lab, stops }
    }

    pub async fn shutdown(self) {
        for (stop, _) in &self.stops {
            stop.cancel();
        }
        for (_, h) in self.stops {
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("worker did not stop")
                .expect("worker panicked")
                .expect("worker failed");
        }
    }
}

/// [`agent_sdk::testing::wait_until`], what first.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    agent_sdk::testing::wait_until(timeout, what, check).await
}

pub async fn conn(redis: &TestRedis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `XLEN key`.
pub async fn xlen(redis: &TestRedis, key: &str) -> u64 {
    let mut c = conn(redis).await;
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}

pub fn store() -> WorkflowStore {
    WorkflowStore::new(keys())
}

pub async fn summaries(redis: &TestRedis, ids: &[String]) -> Vec<Option<Summary>> {
    let mut c = conn(redis).await;
    store().summaries(&mut c, ids).await.unwrap()
}

/// Waits until every workflow of `ids` has ended; returns their summaries.
pub async fn wait_ended(redis: &TestRedis, ids: &[String], timeout: Duration) -> Vec<Summary> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = summaries(redis, ids).await;
        let ended = s
            .iter()
            .flatten()
            .filter(|s| s.status.is_terminal())
            .count();
        if ended == ids.len() {
            return s.into_iter().flatten().collect();
        }
        if Instant::now() > deadline {
            let mut by: HashMap<String, usize> = HashMap::new();
            for s in s.iter().flatten() {
                *by.entry(format!("{:?}", s.status)).or_default() += 1;
            }
            panic!(
                "timed out after {timeout:?}: {ended}/{} ended; by status {by:?}",
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn log(redis: &TestRedis, id: &str) -> Vec<LogEntry> {
    let mut c = conn(redis).await;
    store().log(&mut c, id, None, 100_000).await.unwrap()
}

/// Asserts the event log of a completed workflow: versions 1..=n in order,
/// every stage of `stages` completed exactly once.
pub fn assert_log_completed_once(id: &str, log: &[LogEntry], stages: &[&str]) {
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e.version, i as u64 + 1, "{id}: log out of order: {log:#?}");
    }
    for s in stages {
        let n = log
            .iter()
            .filter(|e| e.kind == "task_succeeded" && e.stage.as_deref() == Some(s))
            .count();
        assert_eq!(n, 1, "{id}: stage {s} completed {n} times: {log:#?}");
    }
    assert_eq!(
        log.last().map(|e| e.status),
        Some(orchestrator::machine::WorkflowStatus::Completed),
        "{id}"
    );
}

pub async fn create(http: &reqwest::Client, base: &str, definition: &str, input: Value) -> String {
    let r = http
        .post(format!("{base}/api/v1/workflows"))
        .json(&json!({ "definition": definition, "input": input }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// Stage deadlines armed for tasks of `agents`.
pub async fn deadlines(redis: &TestRedis, agents: &[&str]) -> u64 {
    let mut c = conn(redis).await;
    let mut n = 0;
    for a in agents {
        let k: u64 = redis::cmd("ZCARD")
            .arg(keys().deadlines(&agent_type(a)))
            .query_async(&mut c)
            .await
            .unwrap();
        n += k;
    }
    n
}

pub fn agent_type(s: &str) -> AgentType {
    AgentType::new(s).unwrap()
}
