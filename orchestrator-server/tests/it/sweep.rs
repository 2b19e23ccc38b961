//! The sweeper reads the outbox index only, by the Redis server's clock:
//! orphan index entries (a create that died between indexing and storing)
//! are pruned once a minute old by that clock and not before, and an
//! outbox no index names (left before the index existed) is indexed at
//! start and carried out.

use crate::common::*;
use agent_sdk::schemas::TaskId;
use orchestrator::engine::Engine;
use orchestrator::loops::sweep::{index_outboxes, sweep_once};
use orchestrator::machine::WorkflowStatus;
use redis::aio::ConnectionManager;
use serde_json::json;
use std::time::Duration;

async fn manager(redis: &TestRedis) -> ConnectionManager {
    redis::Client::open(redis.url())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap()
}

async fn engine(redis: &TestRedis) -> Engine {
    let client = agent_sdk::Client::connect(&redis.url(), NS).await.unwrap();
    Engine::new(client).0
}

async fn server_ms(c: &mut ConnectionManager) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(c).await.unwrap();
    s * 1000 + us / 1000
}

async fn indexed(c: &mut ConnectionManager, key: &str, id: &str) -> bool {
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(key)
        .arg(id)
        .query_async(c)
        .await
        .unwrap();
    score.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_index_entries_are_pruned_by_the_redis_clock_only_once_old() {
    let redis = TestRedis::start();
    let engine = engine(&redis).await;
    let mut c = manager(&redis).await;
    let now = server_ms(&mut c).await;
    let k = keys();
    // Indexed as a create does first, never stored: one a minute and a
    // second old by Redis's clock, one just now.
    for (id, at) in [("orphan-old", now - 61_000), ("orphan-new", now)] {
        for key in [
            k.workflows_all(),
            k.workflows_active(),
            k.workflows_outbox(),
        ] {
            let _: i64 = redis::cmd("ZADD")
                .arg(&key)
                .arg(at)
                .arg(id)
                .query_async(&mut c)
                .await
                .unwrap();
        }
    }
    assert_eq!(
        sweep_once(&engine, &mut c, Duration::ZERO).await.unwrap(),
        0
    );
    for key in [
        k.workflows_all(),
        k.workflows_active(),
        k.workflows_outbox(),
    ] {
        assert!(!indexed(&mut c, &key, "orphan-old").await, "{key}");
        assert!(indexed(&mut c, &key, "orphan-new").await, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_no_index_names_is_indexed_at_start_and_carried_out() {
    let redis = TestRedis::start();
    let engine = engine(&redis).await;
    let mut c = manager(&redis).await;
    let k = keys();
    let def = orchestrator::Definition::parse(
        "name: one\nstages:\n  - { name: scaffold, agent: scaffold }\n",
    )
    .unwrap();
    orchestrator::catalog::Catalog::new(k.clone())
        .register(&mut c, &def)
        .await
        .unwrap();
    let created = engine
        .create(
            &mut c,
            orchestrator::engine::NewWorkflow {
                definition: "one".into(),
                version: None,
                input: json!({}),
                id: Some("legacy-1".into()),
            },
        )
        .await
        .unwrap();
    let task = created.workflow.stages[0].task_id.clone().unwrap();
    let scaffold = agent_type("scaffold");
    // Undo its dispatch and give it back its outbox, out of the outbox
    // index: as an orchestrator before the index would have left it.
    let outbox = format!(
        "{}\n{}",
        serde_json::to_string(&orchestrator::machine::Command::Dispatch {
            stage: "scaffold".into(),
            task_id: task.clone(),
            agent: "scaffold".into(),
            input: json!({}),
            timeout: None,
            max_attempts: None,
            compensation: false,
        })
        .unwrap(),
        serde_json::to_string(&orchestrator::machine::Command::ArmTimer {
            task_id: task.clone(),
            after: Duration::from_secs(3600),
        })
        .unwrap()
    );
    let _: () = redis::pipe()
        .del(k.tasks(&scaffold))
        .ignore()
        .del(k.idempotency(&scaffold, &task).unwrap())
        .ignore()
        .del(k.deadlines(&scaffold))
        .ignore()
        .hset(k.workflow("legacy-1").unwrap(), "outbox", outbox)
        .ignore()
        .zrem(k.workflows_outbox(), "legacy-1")
        .ignore()
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        sweep_once(&engine, &mut c, Duration::ZERO).await.unwrap(),
        0,
        "no index names it"
    );
    assert_eq!(index_outboxes(&engine, &mut c).await.unwrap(), 1);
    assert_eq!(
        sweep_once(&engine, &mut c, Duration::ZERO).await.unwrap(),
        1
    );
    assert_eq!(xlen(&redis, &k.tasks(&scaffold)).await, 1);
    assert_eq!(deadlines(&redis, &["scaffold"]).await, 1);
    assert!(!indexed(&mut c, &k.workflows_outbox(), "legacy-1").await);
    assert_eq!(TaskId::workflow_of(&task), Some("legacy-1"));
    let s = summaries(&redis, &["legacy-1".to_owned()]).await;
    assert_eq!(s[0].as_ref().unwrap().status, WorkflowStatus::Running);
}
