//! A definition naming agent types never seen is accepted with a warning,
//! by the API and by `orchestrator check --agent-types`.

use super::*;
use std::process::Command;

const MIXED: &str = "name: mixed\nstages:\n  - {name: a, agent: scaffold}\n  - {name: b, agent: ghost, depends_on: [a], compensate: {agent: phantom}}\n";

/// Waits until a worker of `t` has created its group (what "seen" means).
async fn wait_seen(redis: &TestRedis, t: &str) {
    let key = keys().tasks(&agent_type(t));
    wait_until(&format!("{t}'s group"), PATIENCE, || {
        let key = key.clone();
        async move {
            let mut c = conn(redis).await;
            let groups: redis::RedisResult<Vec<redis::Value>> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&key)
                .query_async(&mut c)
                .await;
            groups.is_ok_and(|g| !g.is_empty())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_naming_unseen_agent_types_are_accepted_with_a_warning() {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &["scaffold"]);
    wait_seen(&redis, "scaffold").await;
    let o = InProcess::start(&redis, &[]).await;
    let http = http();
    let r = http
        .post(o.api("/definitions"))
        .header("content-type", "application/yaml")
        .body(MIXED)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let w = v["warnings"].as_array().unwrap_or_else(|| panic!("{v:#}"));
    let named: Vec<(&str, Vec<&str>)> = w
        .iter()
        .map(|w| {
            assert_eq!(w["kind"], "agent_type_never_seen");
            assert!(w["message"].as_str().unwrap().contains("never seen"));
            (
                w["agent_type"].as_str().unwrap(),
                w["stages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        named,
        vec![("ghost", vec!["b"]), ("phantom", vec!["b.undo"])]
    );

    // Every type seen: no warnings at all.
    let r = register(
        &http,
        &o,
        "name: fine\nstages:\n  - {name: a, agent: scaffold}\n",
    )
    .await;
    assert!(r.get("warnings").is_none(), "{r:#}");

    // `orchestrator check --agent-types` says the same, on stderr, exit 0.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mixed.yaml");
    std::fs::write(&file, MIXED).unwrap();
    let url = redis.url();
    let run = |extra: &[&str]| {
        let mut args = vec!["check", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(&args)
            .env_clear()
            .output()
            .unwrap()
    };
    let out = run(&["--agent-types", "--redis-url", &url, "--namespace", NS]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 stages in 2 levels"));
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 2, "{err}");
    assert!(
        warnings[0].contains("\"ghost\"") && warnings[0].contains("never seen"),
        "{err}"
    );
    assert!(warnings[1].contains("\"phantom\""), "{err}");
    // Offline (no --agent-types) it cannot know, and says nothing.
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // In another namespace scaffold was never seen either.
    let out = run(&[
        "--agent-types",
        "--redis-url",
        &url,
        "--namespace",
        "elsewhere",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("warning: ")).count(),
        3,
        "{err}"
    );
    // Redis unreachable: a clear error and a non-zero exit.
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let out = run(&["--agent-types", "--redis-url", &dead]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot check the agent types"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    o.shutdown().await;
    agents.shutdown().await;
}
