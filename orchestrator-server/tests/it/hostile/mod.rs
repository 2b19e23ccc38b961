//! The engine under hostile definitions and inputs (issue 11, items 7 and
//! 8), each attack performed for real against the server in-process on its
//! own `redis-server`:
//!
//! - an input that makes the first task body exceed the 1 MiB a worker
//!   accepts fails its workflow, naming the limit, with nothing left behind;
//! - a dispatch Redis refuses for good (the tasks stream's key holds a
//!   string) fails the stage the same way;
//! - a 2,000-stage definition is refused (the stage limit), one within it
//!   but over the agent-type cap too; 2,000 agent types allowed by a raised
//!   cap add no connection per type, before or after a restart;
//! - a raw task does not make the orchestrator watch its type (a type
//!   nothing names is refused; one a live agent names is taken, unwatched);
//! - 24 concurrent `/metrics` scrapes at 100,000 active workflows all
//!   answer, with the counts a full count finds;
//! - `--metrics-token-required` makes `/metrics` ask for the token.

mod dispatch;
mod metrics;
mod watch;

use crate::common::*;
use orchestrator::machine::log::log_entry;
use orchestrator::machine::{Event, Workflow, apply};
use serde_json::{Value, json};
use std::time::Duration;

pub(super) const PATIENCE: Duration = Duration::from_secs(60);

/// A test's Redis, the server in-process on it, and an HTTP client.
pub(super) struct Kit {
    pub(super) http: reqwest::Client,
    pub(super) o: InProcess,
    pub(super) redis: TestRedis,
}

impl Kit {
    pub(super) async fn start(extra: &[&str]) -> Self {
        let redis = TestRedis::start();
        let o = InProcess::start(&redis, extra).await;
        Self {
            http: orchestrator_server::testing::http(),
            o,
            redis,
        }
    }

    pub(super) async fn define(&self, def: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.o.api("/definitions"))
            .json(def)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub(super) async fn create(&self, definition: &str, input: Value) -> Value {
        let r = self
            .http
            .post(self.o.api("/workflows"))
            .json(&json!({ "definition": definition, "input": input }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        r.json().await.unwrap()
    }

    pub(super) async fn shutdown(self) {
        self.o.shutdown().await;
    }
}

/// A one-stage definition on `agent`.
pub(super) fn one_stage(name: &str, agent: &str) -> Value {
    json!({ "name": name, "stages": [{ "name": "only", "agent": agent }] })
}

/// Waits until workflow `id` has ended; its summary.
pub(super) async fn ended(redis: &TestRedis, id: &str) -> orchestrator::store::Summary {
    wait_ended(redis, &[id.to_owned()], PATIENCE)
        .await
        .pop()
        .unwrap()
}

/// Asserts nothing of workflow `id` is left waiting: no outbox, not in the
/// active index, no deadline armed for `agent`.
pub(super) async fn assert_nothing_left(redis: &TestRedis, id: &str, agent: &str) {
    let mut c = conn(redis).await;
    let k = keys();
    let outbox: Option<String> = redis::cmd("HGET")
        .arg(k.workflow(id).unwrap())
        .arg("outbox")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(outbox, None, "{id}: outbox left");
    let active: Option<f64> = redis::cmd("ZSCORE")
        .arg(k.workflows_active())
        .arg(id)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(active, None, "{id}: still in the active index");
    assert_eq!(deadlines(redis, &[agent]).await, 0, "{id}: deadline left");
}

/// Stores `n` workflows of `def` (whose first stage waits for an approval,
/// so starting dispatches nothing) straight into Redis through the
/// library's transition script, a pipeline of 1,000 at a time: what 100,000
/// HTTP calls would leave, in seconds.
pub(super) async fn seed_waiting(redis: &TestRedis, def: &orchestrator::Definition, n: usize) {
    let store = store();
    let mut c = conn(redis).await;
    let now = agent_sdk::clock::now_ms();
    for chunk in 0..n.div_ceil(1000) {
        let mut pipe = redis::pipe();
        pipe.load_script(&redis::Script::new(include_str!(
            "../../../../orchestrator/src/scripts/transition.lua"
        )))
        .ignore();
        for i in chunk * 1000..((chunk + 1) * 1000).min(n) {
            let id = format!("seed-{i:06}");
            let fresh = Workflow::new(id.clone(), def, json!({}), now);
            let (started, commands) = apply(&fresh, def, &Event::Started, now).unwrap();
            assert!(commands.is_empty(), "seeded workflows dispatch nothing");
            let entry = log_entry(&fresh, &Event::Started, &commands);
            let save = store
                .save_invocation(0, &started, &commands, &entry)
                .unwrap();
            store.add_index_commands(&mut pipe, &id, now);
            pipe.invoke_script(&save).ignore();
        }
        let () = pipe.query_async(&mut c).await.unwrap();
    }
}
