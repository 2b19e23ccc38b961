//! No two hosts' clocks are compared: a replica whose clock runs 10 minutes
//! fast (libfaketime) is killed with `kill -9` while many creates are under
//! way, and the other replica sweeps every workflow it left half-created
//! (stored, nothing dispatched) at once, because the outbox's age is the
//! Redis server's, read against the Redis server's clock.

use crate::common::*;
use orchestrator::machine::WorkflowStatus;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(120);

/// The sweeper's grace and interval in these tests (`serve_flags`) are 1 s
/// and 500 ms: an outbox left by a dead replica is swept within their sum,
/// plus a transition's time. This bounds it with room for a loaded machine.
const SWEPT_WITHIN: Duration = Duration::from_secs(5);

/// libfaketime's preload library (Debian's `faketime` package;
/// `scripts/lib.sh` `ensure_faketime` installs it).
fn libfaketime() -> String {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ];
    candidates
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|p| p.to_string())
        .unwrap_or_else(|| {
            panic!(
                "libfaketime is missing (looked for {candidates:?}): install it with \
                 `apt-get install faketime` (scripts/lib.sh ensure_faketime)"
            )
        })
}

/// `s` without its ANSI colour sequences (`ESC [ … m`).
fn without_colours(s: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for ch in s.chars() {
        match (skipping, ch) {
            (false, '\u{1b}') => skipping = true,
            (true, 'm') => skipping = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// Workflows stored at version 1 with their outbox still there: created
/// and never carried out.
async fn half_created(redis: &TestRedis) -> Vec<String> {
    let mut c = conn(redis).await;
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys().workflows_outbox())
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    let mut out = Vec::new();
    for id in ids {
        let (version, outbox): (Option<u64>, Option<String>) = redis::cmd("HMGET")
            .arg(keys().workflow(&id).unwrap())
            .arg(&["version", "outbox"])
            .query_async(&mut c)
            .await
            .unwrap();
        if version == Some(1) && outbox.is_some() {
            out.push(id);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_ten_minutes_fast_killed_mid_create_is_swept_by_the_other() {
    let preload = libfaketime();
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &SDLC);
    let steady = Proc::spawn(&redis, "orch-steady", &[]).await;
    // A kill can land when no create is between its store and its
    // dispatch; then the skewed replica is started again and killed again
    // (each round's workflows are accounted for below all the same).
    let mut round = 0;
    let (left, killed) = loop {
        round += 1;
        let (left, killed) = create_and_kill(&redis, &preload, round).await;
        if !left.is_empty() {
            break (left, killed);
        }
        assert!(
            round < 5,
            "{round} kills left no workflow half-created: nothing to sweep"
        );
    };
    // Each is carried out by the steady replica's sweeper, soon.
    let mut pending = left.clone();
    let mut slowest = Duration::ZERO;
    while !pending.is_empty() {
        assert!(
            killed.elapsed() < SWEPT_WITHIN,
            "{} of {} half-created workflows not swept {:?} after the kill: {pending:?}",
            pending.len(),
            left.len(),
            killed.elapsed()
        );
        let still = half_created(&redis).await;
        let before = pending.len();
        pending.retain(|id| still.contains(id));
        if pending.len() < before {
            slowest = killed.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "every half-created workflow swept {:.2} s after the kill (bound {SWEPT_WITHIN:?})",
        slowest.as_secs_f64()
    );
    // Exact accounting: every stored workflow completes, each stage once.
    let mut c = conn(&redis).await;
    let all: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys().workflows_all())
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    let stored: Vec<String> = all
        .iter()
        .zip(summaries(&redis, &all).await)
        .filter_map(|(id, s)| s.map(|_| id.clone()))
        .collect();
    assert!(stored.len() >= 300, "{} stored", stored.len());
    let ended = wait_ended(&redis, &stored, PATIENCE).await;
    assert!(ended.iter().all(|s| s.status == WorkflowStatus::Completed));
    let counts = agents.lab.ok_counts();
    for id in &stored {
        for stage in SDLC {
            assert_eq!(
                counts.get(&(id.clone(), stage.to_string())),
                Some(&1),
                "{id} {stage}"
            );
        }
    }
    assert_eq!(
        counts.len(),
        stored.len() * SDLC.len(),
        "a stage ran outside the stored workflows"
    );
    // Not asserted: a workflow whose first dispatch went out before the kill
    // (only its outbox clear was lost) is carried on by its result's
    // transition at the steady replica, not by the sweep; under load that
    // can be every one of them.
    eprintln!(
        "swept by the steady replica's sweeper: {}",
        steady
            .log_text()
            .contains("carried out commands left by an interrupted transition")
    );
    agents.shutdown().await;
}

/// Starts a replica 10 minutes fast, sends it creates from 32 clients at
/// once until 300 are answered, kills it with `kill -9`; the workflows it
/// left half-created, and when it was killed.
async fn create_and_kill(redis: &TestRedis, preload: &str, round: u32) -> (Vec<String>, Instant) {
    let mut fast = Proc::spawn_with_env(
        redis,
        "orch-fast",
        &[],
        &[
            ("LD_PRELOAD", preload),
            ("FAKETIME", "+10m"),
            // Only the wall clock is skewed; timers run at normal speed.
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
    .await;
    // Sanity: the fast replica's clock really is ahead (its log's times).
    let first = fast.log_text();
    let stamp: String = without_colours(first.split_whitespace().next().unwrap_or_default());
    let theirs = humantime::parse_rfc3339_weak(stamp.trim_end_matches('Z')).unwrap_or_else(|e| {
        panic!("no time at the start of the fast replica's log ({e}): {first}")
    });
    let ahead = theirs
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        ahead >= Duration::from_secs(9 * 60),
        "the skewed replica is only {ahead:?} ahead"
    );

    // Creates keep coming to the fast replica from 32 clients at once until
    // it dies, so some of them are between their store and their dispatch.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for k in 0..32 {
        let (stop, answered, url) = (stop.clone(), answered.clone(), fast.url.clone());
        clients.push(tokio::spawn(async move {
            let http = http();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let body = json!({
                    "definition": "sdlc",
                    "id": format!("skew-{round}-{k}-{i}"),
                    "input": { "sleep_ms": { "validation": 20 } },
                });
                i += 1;
                match http
                    .post(format!("{url}/api/v1/workflows"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => break,
                }
            }
        }));
    }
    wait_until("300 creates answered", PATIENCE, || {
        let n = answered.load(Ordering::SeqCst);
        async move { n >= 300 }
    })
    .await;
    fast.kill9();
    let killed = Instant::now();
    stop.store(true, Ordering::SeqCst);
    let left = half_created(redis).await;
    eprintln!(
        "{} creates answered; {} workflows left half-created by the kill",
        answered.load(Ordering::SeqCst),
        left.len()
    );
    for c in clients {
        let _ = c.await;
    }
    (left, killed)
}
