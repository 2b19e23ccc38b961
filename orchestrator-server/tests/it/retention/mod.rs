//! Retention and housekeeping (issue 12, point 1), against real
//! `redis-server`s, the orchestrator in-process with its real loops, and
//! stage agents on the SDK:
//!
//! - each retention rule (age, count, bytes) removes exactly the ended
//!   workflows it should, oldest first, and nothing else: a workflow
//!   blocked on a dead letter is kept, and so is its dead letter;
//! - an expired workflow is archived first (file and stream) and read back;
//!   a failed archive write keeps it;
//! - `DELETE /workflows/{id}`: 200 / 409 / 404, operator role;
//! - dead consumers are pruned, busy, registered and live ones kept; a
//!   results stream without a reader is capped, one with an unread group
//!   is not; dead letters are measured in `/streams` and `/metrics`;
//! - `GET /memory` by key family.

mod archive;
mod housekeeping;
mod rules;

use crate::common::*;
use orchestrator::machine::WorkflowStatus;
use serde_json::{Value, json};
use std::time::Duration;

pub(super) const PATIENCE: Duration = Duration::from_secs(60);
pub(super) const AGENT: &str = "ret";

/// A test's Redis, its stage agent, the server in-process, an HTTP client.
pub(super) struct Kit {
    pub(super) http: reqwest::Client,
    pub(super) o: InProcess,
    pub(super) agents: Agents,
    pub(super) redis: TestRedis,
}

impl Kit {
    pub(super) async fn start(extra: &[&str]) -> Self {
        let redis = TestRedis::start();
        let agents = Agents::start(&redis, &[AGENT]);
        let o = InProcess::start(&redis, extra).await;
        let http = orchestrator_server::testing::http();
        let def = json!({ "name": "one", "stages": [
            { "name": "only", "agent": AGENT, "max_attempts": 1 }
        ]});
        let r = http
            .post(o.api("/definitions"))
            .json(&def)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{:?}", r.text().await);
        Self {
            http,
            o,
            agents,
            redis,
        }
    }

    /// Creates a workflow with `input` and waits until it is `want`.
    pub(super) async fn run(&self, input: Value, want: WorkflowStatus) -> String {
        let r = self
            .http
            .post(self.o.api("/workflows"))
            .json(&json!({ "definition": "one", "input": input }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        let id = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        wait_until(&format!("{id} {want:?}"), PATIENCE, || async {
            summaries(&self.redis, std::slice::from_ref(&id)).await[0]
                .as_ref()
                .is_some_and(|s| s.status == want)
        })
        .await;
        // Its ending transition's commands carried out (the outbox emptied).
        wait_until(&format!("{id} outbox empty"), PATIENCE, || async {
            let mut c = conn(&self.redis).await;
            !redis::cmd("HEXISTS")
                .arg(keys().workflow(&id).unwrap())
                .arg("outbox")
                .query_async::<bool>(&mut c)
                .await
                .unwrap()
        })
        .await;
        id
    }

    pub(super) async fn completed(&self) -> String {
        self.run(json!({}), WorkflowStatus::Completed).await
    }

    pub(super) async fn failed(&self) -> String {
        self.run(json!({ "fail": "only" }), WorkflowStatus::Failed)
            .await
    }

    pub(super) async fn blocked(&self) -> String {
        self.run(json!({ "dead_letter": "only" }), WorkflowStatus::Blocked)
            .await
    }

    pub(super) async fn shutdown(self) {
        self.o.shutdown().await;
        self.agents.shutdown().await;
    }
}

/// What is left of workflow `id` in Redis: the names of the keys and index
/// entries that still hold it (empty: nothing remains).
pub(super) async fn remains(redis: &TestRedis, id: &str) -> Vec<&'static str> {
    let k = keys();
    let mut c = conn(redis).await;
    let (hash, events, all, active, ended, bytes): (
        bool,
        bool,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<u64>,
    ) = redis::pipe()
        .exists(k.workflow(id).unwrap())
        .exists(k.workflow_events(id).unwrap())
        .zscore(k.workflows_all(), id)
        .zscore(k.workflows_active(), id)
        .zscore(k.workflows_ended(), id)
        .hget(k.workflows_ended_bytes(), id)
        .query_async(&mut c)
        .await
        .unwrap();
    let mut out = Vec::new();
    for (present, name) in [
        (hash, "state"),
        (events, "events"),
        (all.is_some(), "wfs:all"),
        (active.is_some(), "wfs:active"),
        (ended.is_some(), "wfs:ended"),
        (bytes.is_some(), "ended bytes"),
    ] {
        if present {
            out.push(name);
        }
    }
    out
}

/// Asserts workflow `id` is kept whole: state, log, listing; and in the
/// ended index if and only if it has ended.
pub(super) async fn assert_kept(redis: &TestRedis, id: &str, ended: bool) {
    let r = remains(redis, id).await;
    for want in ["state", "events", "wfs:all"] {
        assert!(r.contains(&want), "{id} lost its {want}: {r:?}");
    }
    assert_eq!(r.contains(&"wfs:ended"), ended, "{id}: {r:?}");
}

/// Waits until nothing of `id` remains.
pub(super) async fn wait_gone(redis: &TestRedis, id: &str) {
    wait_until(&format!("{id} gone"), PATIENCE, || async {
        remains(redis, id).await.is_empty()
    })
    .await;
}

/// The Redis server's clock (ms).
pub(super) async fn redis_now(redis: &TestRedis) -> u64 {
    let mut c = conn(redis).await;
    orchestrator::ops::housekeeping::server_time_ms(&mut c)
        .await
        .unwrap()
}

/// `(end ms, bytes)` of an ended workflow, from the index.
pub(super) async fn ended_entry(redis: &TestRedis, id: &str) -> (u64, u64) {
    let mut c = conn(redis).await;
    let k = keys();
    let (ms, bytes): (Option<u64>, Option<u64>) = redis::pipe()
        .zscore(k.workflows_ended(), id)
        .hget(k.workflows_ended_bytes(), id)
        .query_async(&mut c)
        .await
        .unwrap();
    (
        ms.expect("in the ended index"),
        bytes.expect("bytes measured"),
    )
}

/// Dead letters of workflow `id` in the test's agent type's DLQ.
pub(super) async fn dead_letters_of(redis: &TestRedis, id: &str) -> usize {
    let mut c = conn(redis).await;
    let r: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys().dlq(&agent_type(AGENT)))
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    r.ids
        .iter()
        .filter(|e| e.get::<String>("wf").as_deref() == Some(id))
        .count()
}
