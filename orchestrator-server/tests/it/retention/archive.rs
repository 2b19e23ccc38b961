//! An expired workflow is archived before it goes, and kept if it cannot be.

use super::*;
use orchestrator::loops::retention::{ArchiveSettings, RetentionSettings, retain_once};
use orchestrator::store::ArchiveRecord;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_workflows_are_archived_to_a_file_and_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("archive.jsonl");
    let k = Kit::start(&[
        "--retention",
        "3s",
        "--retention-interval",
        "200ms",
        "--archive-file",
        file.to_str().unwrap(),
        "--archive-stream",
        "--archive-stream-max-len",
        "100",
    ])
    .await;
    let blocked = k.blocked().await;
    let done = k.completed().await;
    let failed = k.failed().await;
    // What each holds while young, to compare with its archive line.
    let mut c = conn(&k.redis).await;
    let mut expected = Vec::new();
    for id in [&done, &failed] {
        let rec = store().archive_record(&mut c, id).await.unwrap().unwrap();
        expected.push(rec);
    }
    wait_gone(&k.redis, &done).await;
    wait_gone(&k.redis, &failed).await;

    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let read: Vec<ArchiveRecord> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (got, want) in read.iter().zip(&expected) {
        assert_eq!(got, want);
        assert!(got.ended_at_ms.is_some() && got.bytes.is_some_and(|b| b > 0));
        assert_eq!(got.workflow["id"], json!(got.id));
        let kinds: Vec<&str> = got.events.iter().map(|e| e.kind.as_str()).collect();
        assert!(kinds.len() >= 2 && kinds[0] == "started", "{kinds:?}");
        assert_eq!(
            got.events.last().unwrap().status,
            got.status,
            "the log ends with the end"
        );
    }
    assert_eq!(read[0].status, WorkflowStatus::Completed);
    assert_eq!(read[1].status, WorkflowStatus::Failed);

    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys().workflow_archive())
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    let from_stream: Vec<String> = entries
        .ids
        .iter()
        .map(|e| e.get::<String>("workflow").unwrap())
        .collect();
    assert_eq!(from_stream, lines);
    // The blocked workflow is neither archived nor deleted.
    assert!(!text.contains(&blocked));
    assert_kept(&k.redis, &blocked, false).await;
    k.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_archive_write_keeps_the_workflow() {
    let k = Kit::start(&[]).await;
    let done = k.completed().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = RetentionSettings {
        interval: Duration::from_secs(1),
        max_age: Duration::from_millis(1),
        max_count: None,
        max_bytes: None,
        // A directory cannot be opened for appending.
        archive: ArchiveSettings {
            file: Some(dir.path().to_owned()),
            stream_max_len: None,
        },
    };
    wait_until("older than 1 ms", PATIENCE, || async {
        redis_now(&k.redis).await > ended_entry(&k.redis, &done).await.0 + 1
    })
    .await;
    let mut c = conn(&k.redis).await;
    let e = retain_once(&store(), &mut c, &s).await.unwrap_err();
    assert!(matches!(e, orchestrator::Error::Io(_)), "{e}");
    assert_kept(&k.redis, &done, true).await;

    let file = dir.path().join("a.jsonl");
    s.archive.file = Some(file.clone());
    let r = retain_once(&store(), &mut c, &s).await.unwrap();
    assert_eq!((r.by_age, r.archived), (1, 1), "{r:?}");
    assert!(remains(&k.redis, &done).await.is_empty());
    let rec: ArchiveRecord =
        serde_json::from_str(std::fs::read_to_string(&file).unwrap().trim()).unwrap();
    assert_eq!(rec.id, done);
    k.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_archive_and_delete_each_workflow_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("archive.jsonl");
    let flags = [
        "--retention",
        "2s",
        "--retention-interval",
        "100ms",
        "--archive-file",
        file.to_str().unwrap(),
    ];
    let k = Kit::start(&flags).await;
    let second = InProcess::start(&k.redis, &flags).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(if i % 2 == 0 {
            k.completed().await
        } else {
            k.failed().await
        });
    }
    for id in &ids {
        wait_gone(&k.redis, id).await;
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let mut archived: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<ArchiveRecord>(l).unwrap().id)
        .collect();
    archived.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(
        archived, want,
        "each expired workflow archived exactly once"
    );
    let n = orchestrator::ops::counts::status_counts(&store(), &mut conn(&k.redis).await)
        .await
        .unwrap();
    assert_eq!((n["completed"], n["failed"]), (0, 0), "{n:?}");
    second.shutdown().await;
    k.shutdown().await;
}
