//! Start-up of the real binary: without a jail it refuses to run (exit 64,
//! saying why and what to do); with `--unsafe-no-jail` it runs suites on
//! the host, warns, and its results say nothing was jailed.

#![allow(clippy::unwrap_used)]

use agent_sdk::schemas::{AgentType, TaskStatus};
use agent_sdk::testing::{Proc, TestRedis};
use agent_sdk::{Client, EnqueueOptions};
use e2e_agent::Outcome;
use scaffold_agent::{Request, generate};
use serde_json::json;
use std::time::Duration;

fn agent(redis: &TestRedis, extra: &[&str], unsafe_env: bool, log: std::path::PathBuf) -> Proc {
    let mut args = vec![
        "--redis-url".to_owned(),
        redis.url(),
        "--namespace".into(),
        "startup".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::spawn(
        "e2e-agent",
        env!("CARGO_BIN_EXE_e2e-agent"),
        &args,
        &[
            ("PATH", &std::env::var("PATH").unwrap()),
            ("HOME", &std::env::var("HOME").unwrap()),
            ("AGENTIC_UNSAFE_NO_JAIL", if unsafe_env { "1" } else { "0" }),
        ],
        log,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bwrap_the_agent_refuses_to_start_unless_told_it_is_unsafe() {
    let redis = TestRedis::start();
    let logs = tempfile::tempdir().unwrap();
    let mut refused = agent(
        &redis,
        &["--jail-bwrap", "/nonexistent/bwrap"],
        false,
        logs.path().join("refused.log"),
    );
    assert_eq!(refused.wait_exit(Duration::from_secs(60)).await, Some(64));
    let log = refused.log_text();
    assert!(
        log.contains("cannot be made")
            && log.contains("/nonexistent/bwrap")
            && log.contains("--unsafe-no-jail"),
        "{log}"
    );

    let mut unsafe_agent = agent(
        &redis,
        // The operator's explicit word, here from the environment.
        &["--jail-bwrap", "/nonexistent/bwrap"],
        true,
        logs.path().join("unsafe.log"),
    );
    let client = Client::connect(&redis.url(), "startup").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let req = Request {
        name: "demo-app".into(),
        template: "python-package".into(),
        description: None,
        extras: Default::default(),
    };
    generate(&req, dir.path()).unwrap();
    let a = client.artifacts().put_dir(dir.path()).await.unwrap();
    let t = AgentType::new("e2e").unwrap();
    let e = client
        .enqueue(
            &t,
            &json!({ "artifact": a.sha256 }),
            EnqueueOptions::default(),
        )
        .await
        .unwrap();
    let r = client
        .wait_for_result(&t, &e.task_id, Duration::from_secs(120))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r.status,
        TaskStatus::Succeeded,
        "{r:?}\n{}",
        unsafe_agent.log_text()
    );
    let out: Outcome = serde_json::from_value(r.output.unwrap()).unwrap();
    assert_eq!(out.limits.jail, "none");
    assert_eq!(out.limits.cpu, "rlimit");
    assert!(!unsafe_agent.exited());
    assert!(
        unsafe_agent.log_text().contains("WITHOUT the jail"),
        "{}",
        unsafe_agent.log_text()
    );
}
