//! The dlq-index (task id → entry id of its newest dead letter) is kept by
//! every operation that adds, replays or deletes dead letters: a real
//! worker dead-letters tasks (commit.lua), then replay, purge by id, purge
//! by age, purge of all and import each leave the index exactly matching
//! the DLQ; a dead letter written before the index existed is still found.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agent_sdk::schemas::DeadLetter;
use agent_sdk::testing::TestRedis;
use common::*;
use fault_agent::FailMode;
use std::collections::BTreeMap;

/// The index as a map, and whether each entry names a dead letter of its
/// task that exists.
async fn index(redis: &TestRedis) -> BTreeMap<String, String> {
    let mut c = async_conn(redis).await;
    redis::cmd("HGETALL")
        .arg(keys().dlq_index(&fault_type()))
        .query_async(&mut c)
        .await
        .unwrap()
}

/// Every dead letter, oldest first.
async fn all(redis: &TestRedis) -> Vec<DeadLetter> {
    let dlq = client(redis).await.dead_letters();
    dlq.list(
        &fault_type(),
        &agent_sdk::DeadLetterFilter {
            limit: 1000,
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .items
}

/// The index names exactly the dead letters there are, each by its task.
async fn assert_index_matches(redis: &TestRedis) {
    let by_task: BTreeMap<String, String> = all(redis)
        .await
        .into_iter()
        .map(|d| (d.task_id.unwrap(), d.id))
        .collect();
    assert_eq!(index(redis).await, by_task);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dead_letter_operation_keeps_the_index() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let w = start_fault(config(&redis));
    let tasks = enqueue_n(&client, 6, &failing(FailMode::Permanent)).await;
    let ledger = settle(&redis, 6).await;
    ledger.assert_exact(&[], &tasks);
    w.shutdown().await;
    assert_index_matches(&redis).await;
    assert_eq!(index(&redis).await.len(), 6);

    let t = fault_type();
    let dlq = client.dead_letters();
    // Found by task id, and the same entry a list gives.
    let first = dlq.find_by_task(&t, &tasks[0]).await.unwrap().unwrap();
    assert_eq!(first.task_id.as_deref(), Some(tasks[0].as_str()));
    assert!(
        dlq.find_by_task(&t, "no-such-task")
            .await
            .unwrap()
            .is_none()
    );

    // Replay: its index entry goes with it.
    assert!(dlq.replay(&t, &first.id).await.unwrap().is_some());
    assert!(dlq.find_by_task(&t, &tasks[0]).await.unwrap().is_none());
    assert_index_matches(&redis).await;
    let replay_many: Vec<String> = all(&redis)
        .await
        .iter()
        .take(1)
        .map(|d| d.id.clone())
        .collect();
    dlq.replay_many(&t, &replay_many).await.unwrap();
    assert_index_matches(&redis).await;
    assert_eq!(index(&redis).await.len(), 4);

    // Purge by id.
    let one = all(&redis).await[0].clone();
    assert_eq!(
        dlq.purge(&t, std::slice::from_ref(&one.id)).await.unwrap(),
        1
    );
    assert_index_matches(&redis).await;

    // Import: indexed under its task.
    let new_id = dlq.import(&t, &one).await.unwrap();
    assert_eq!(
        index(&redis).await.get(one.task_id.as_ref().unwrap()),
        Some(&new_id)
    );
    assert_index_matches(&redis).await;
    assert_eq!(index(&redis).await.len(), 4);

    // Purge by age: everything dead-lettered before the import.
    let cutoff = agent_sdk::schemas::EntryId::ms_of(&new_id).unwrap();
    let purged = dlq.purge_older_than(&t, cutoff).await.unwrap();
    assert_eq!(purged, 3);
    assert_index_matches(&redis).await;
    assert_eq!(index(&redis).await.len(), 1);

    // A dead letter written before the index existed: found by a scan.
    let mut c = async_conn(&redis).await;
    let () = redis::cmd("HDEL")
        .arg(keys().dlq_index(&t))
        .arg(one.task_id.as_ref().unwrap())
        .query_async(&mut c)
        .await
        .unwrap();
    let found = dlq
        .find_by_task(&t, one.task_id.as_ref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, new_id);

    // Purge of all: the index goes too.
    assert_eq!(dlq.purge_all(&t).await.unwrap(), 1);
    assert!(index(&redis).await.is_empty());
    // Two replayed tasks are back in the stream, not lost: 6 = 2 replayed
    // + 1 purged by id + 3 purged by age (the import was the copy of one).
    let mut c = redis.connection();
    let back: u64 = redis::cmd("XLEN")
        .arg(keys().tasks(&t))
        .query(&mut c)
        .unwrap();
    assert_eq!(back, 2);
}
