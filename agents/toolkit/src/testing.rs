//! Test kit (feature `test-util`): what the jail's tests and the agents'
//! start-up tests share. Panics are the point here: a test that cannot
//! check what it claims must fail.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use agent_sdk::testing::Proc;
use std::time::{Duration, Instant};

/// Pids of host processes (this one excepted) whose command line contains
/// `marker`: what a jailed program started and may have left behind.
pub fn alive(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

/// Waits (up to 20 s) until no process carries `marker`; panics naming
/// those that outlived the jail.
pub async fn wait_all_gone(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = alive(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes {left:?} ({marker}) outlived the jail"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts agent binary `bin` (named `name` in failures) with a bwrap that
/// does not exist and `extra` flags, and asserts that it refuses to start:
/// exit 64, naming the missing jail and `--unsafe-no-jail`.
pub async fn refuses_to_start_without_the_jail(name: &str, bin: &str, extra: &[String]) {
    let logs = tempfile::tempdir().unwrap();
    let mut args = vec!["--jail-bwrap".to_owned(), "/nonexistent/bwrap".to_owned()];
    args.extend_from_slice(extra);
    let mut p = Proc::spawn(
        name,
        bin,
        &args,
        &[("PATH", &std::env::var("PATH").unwrap())],
        logs.path().join("agent.log"),
    );
    assert_eq!(p.wait_exit(Duration::from_secs(60)).await, Some(64));
    let log = p.log_text();
    assert!(
        log.contains("cannot be made")
            && log.contains("/nonexistent/bwrap")
            && log.contains("--unsafe-no-jail"),
        "{log}"
    );
}
