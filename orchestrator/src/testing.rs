//! Test kit of the orchestrator (feature `test-util`), for this crate's
//! tests and those of `orchestrator-server` and `agentctl`: stage agents
//! on the SDK that record every task they run, and reads and waits on
//! workflows in Redis, each with a timeout.

use crate::machine::WorkflowStatus;
use crate::store::{LogEntry, Summary, WorkflowStore};
use agent_sdk::schemas::{AgentType, Keys, Namespace, StageInput, TaskId, TaskInput};
use agent_sdk::testing::{RunningWorker, TestRedis, short_timings};
use agent_sdk::{Agent, AgentError, RuntimeConfig, TaskContext};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The namespace of these tests.
pub const NS: &str = "otest";
/// The stages (and agent types) of the built-in `sdlc` definition.
pub const SDLC: [&str; 5] = ["scaffold", "validation", "e2e", "integration", "deployment"];

/// Key names of [`NS`].
pub fn keys() -> Keys {
    Keys::new(Namespace::new(NS).expect("namespace"))
}

/// An agent type, checked.
pub fn agent_type(s: &str) -> AgentType {
    AgentType::new(s).expect("agent type")
}

/// One task a stage agent ran.
#[derive(Debug, Clone)]
pub struct Run {
    /// Its task id.
    pub task_id: String,
    /// The agent type that ran it.
    pub agent: String,
    /// Its workflow.
    pub workflow: String,
    /// Its stage.
    pub stage: String,
    /// A compensation.
    pub undo: bool,
    /// When the handler started.
    pub started: Instant,
    /// When it returned.
    pub finished: Instant,
    /// It succeeded.
    pub ok: bool,
}

/// Behaviour and records shared by the stage agents of a test.
#[derive(Debug, Default)]
pub struct Lab {
    /// Every task run, in order of completion.
    pub runs: Mutex<Vec<Run>>,
    /// While false, stages named in a workflow's `dead_letter` input fail
    /// retryably (with `max_attempts: 1` they are dead-lettered).
    pub healed: AtomicBool,
}

impl Lab {
    /// Every run so far.
    pub fn runs(&self) -> Vec<Run> {
        self.runs.lock().map(|r| r.clone()).unwrap_or_default()
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

/// A stage agent: reads the orchestrator's stage input and behaves as the
/// workflow input says:
/// - `"fail": "<stage>"` — that stage fails permanently;
/// - `"dead_letter": "<stage>"` — that stage fails retryably until the lab is healed;
/// - `"sleep_ms": {"<stage>": ms}` — that stage sleeps first.
///
/// Output: `{"stage", "agent", "deps": [names], "task_id"}`; a compensation
/// outputs `{"undone": stage}`.
#[derive(Debug, Clone)]
pub struct StageAgent {
    /// The agent type it serves.
    pub agent: String,
    /// Where it records its runs.
    pub lab: Arc<Lab>,
}

impl Agent for StageAgent {
    /// A stage's input; a direct task (`POST /tasks/{type}`) may name its
    /// `stage` itself and runs for no workflow.
    type Input = TaskInput<Value>;
    type Output = Value;

    async fn handle(
        &self,
        ctx: &TaskContext,
        input: TaskInput<Value>,
    ) -> Result<Value, AgentError> {
        let started = Instant::now();
        let undo = TaskId::parse(ctx.task_id()).is_some_and(|t| t.is_undo());
        let StageInput {
            workflow_id: workflow,
            stage,
            input: wf_input,
            deps,
            ..
        } = match input {
            TaskInput::Stage(s) => s,
            // A standalone task shaped like a stage's, for tests that send
            // one by hand: `{"stage": …, "input": {…}}`.
            TaskInput::Direct(v) => StageInput {
                workflow_id: String::new(),
                stage: v["stage"].as_str().unwrap_or_default().to_owned(),
                input: v["input"].clone(),
                deps: Default::default(),
                output: None,
                extra: Default::default(),
            },
        };
        if let Some(ms) = wf_input["sleep_ms"][&stage].as_u64()
            && !undo
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let mut result = Ok(if undo {
            json!({ "undone": stage })
        } else {
            let deps: Vec<&String> = deps.keys().collect();
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
        if let Ok(mut runs) = self.lab.runs.lock() {
            runs.push(Run {
                task_id: ctx.task_id().to_owned(),
                agent: self.agent.clone(),
                workflow,
                stage,
                undo,
                started,
                finished: Instant::now(),
                ok: result.is_ok(),
            });
        }
        result
    }
}

/// Worker settings for the stage agents: short timings, 32 slots.
pub fn worker_config(redis: &TestRedis, agent: &str) -> RuntimeConfig {
    RuntimeConfig {
        concurrency: 32,
        batch_size: 32,
        ..short_timings(redis, NS, agent)
    }
}

/// Stage agents for `agents`, in-process, sharing one lab.
#[derive(Debug)]
pub struct Agents {
    /// Their records.
    pub lab: Arc<Lab>,
    workers: Vec<RunningWorker>,
}

impl Agents {
    /// Starts one worker per agent type of `agents`.
    pub fn start(redis: &TestRedis, agents: &[&str]) -> Self {
        let lab = Arc::new(Lab::default());
        let workers = agents
            .iter()
            .map(|a| {
                let agent = StageAgent {
                    agent: a.to_string(),
                    lab: lab.clone(),
                };
                RunningWorker::spawn(agent, a, worker_config(redis, a))
            })
            .collect();
        Self { lab, workers }
    }

    /// Stops them all and waits for them.
    pub async fn shutdown(self) {
        futures::future::join_all(self.workers.into_iter().map(RunningWorker::shutdown)).await;
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

/// An async connection to the test Redis.
pub async fn conn(redis: &TestRedis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test redis")
}

/// `XLEN key`.
pub async fn xlen(redis: &TestRedis, key: &str) -> u64 {
    let mut c = conn(redis).await;
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut c)
        .await
        .expect("XLEN")
}

/// The workflow store of [`NS`].
pub fn store() -> WorkflowStore {
    WorkflowStore::new(keys())
}

/// Headline fields of workflows `ids`.
pub async fn summaries(redis: &TestRedis, ids: &[String]) -> Vec<Option<Summary>> {
    let mut c = conn(redis).await;
    store().summaries(&mut c, ids).await.expect("summaries")
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

/// The event log of workflow `id`.
pub async fn log(redis: &TestRedis, id: &str) -> Vec<LogEntry> {
    let mut c = conn(redis).await;
    store().log(&mut c, id, None, 100_000).await.expect("log")
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
        Some(WorkflowStatus::Completed),
        "{id}"
    );
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
            .expect("ZCARD");
        n += k;
    }
    n
}
