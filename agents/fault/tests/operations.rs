//! What an operator sees: exit codes and usage for bad flags, Prometheus
//! metrics, JSON logs, and tasks that vanished from the stream before they ran.

#![allow(clippy::unwrap_used)]

mod common;

use agent_sdk::testing::TestRedis;
use common::*;
use fault_agent::{FailMode, FaultInput};
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn run_agent(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fault-agent"))
        .args(args)
        .env_clear()
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_get_usage_and_a_nonzero_exit() {
    let (code, err) = run_agent(&["--no-such-flag"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("Usage: fault-agent"), "{err}");

    let (code, err) = run_agent(&["--claim-idle", "1s", "--lease-renew", "1s"]);
    assert_eq!(code, Some(64), "inconsistent settings exit 64 (EX_USAGE)");
    assert!(
        err.contains("--claim-idle") && err.contains("--lease-renew"),
        "{err}"
    );

    let (code, err) = run_agent(&["--redis-url", "http://:hunter2@example.invalid"]);
    assert_eq!(code, Some(64));
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_json_logs_and_vanished_tasks() {
    let redis = TestRedis::start();
    let client = client(&redis).await;
    let cfg = config(&redis);
    let t = fault_type();

    // A task that vanished: read by a worker that then died, and trimmed from
    // the stream by someone else before anyone could run it.
    create_group(&redis);
    let ghost = enqueue(&client, &FaultInput::default()).await;
    deliver_unseen(&redis, "dead-worker");
    let _: i64 = redis::cmd("XTRIM")
        .arg(keys().tasks(&t))
        .arg("MAXLEN")
        .arg(0)
        .query(&mut redis.connection())
        .unwrap();

    let ok = enqueue_n(&client, 4, &FaultInput::default()).await;
    let bad = enqueue_n(&client, 1, &failing(FailMode::Permanent)).await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut args = flags(&cfg);
    args.extend([
        "--metrics-listen".into(),
        format!("127.0.0.1:{port}"),
        "--log-format".into(),
        "json".into(),
    ]);
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fault-agent"))
        .args(&args)
        .args(["--instance-id", "worker-m"])
        .env_clear()
        .env("RUST_LOG", "info")
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();

    wait_until(
        WAIT,
        "5 tasks settled and the ghost's pending entry cleared",
        || async {
            let l = ledger(&redis);
            l.settled() == 5 && l.pending == 0
        },
    )
    .await;
    let ledger = ledger(&redis);
    ledger.assert_exact(&ok, &bad);
    assert!(!ledger.succeeded.contains_key(&ghost) && !ledger.dead_letters.contains_key(&ghost));

    let mut text = String::new();
    wait_until(WAIT, "metrics show every outcome", || {
        text = http_get(port, "/metrics");
        let done = metric(&text, "agentic_tasks_total", &[r#"outcome="succeeded""#]) == Some(4.0)
            && metric(&text, "agentic_tasks_vanished_total", &[]) == Some(1.0);
        async move { done }
    })
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(
        metric(
            &text,
            "agentic_tasks_total",
            &[r#"outcome="dead_lettered""#, r#"reason="permanent""#]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "agentic_tasks_reclaimed_total", &[]),
        Some(0.0),
        "{text}"
    );
    assert!(text.contains("agentic_task_duration_seconds"), "{text}");
    assert!(!text.contains(&ok[0]), "a task id must never be a label");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let logs = std::fs::read_to_string(log.path()).unwrap();
    let mut messages = Vec::new();
    let mut dead_letter_lines = 0;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        messages.push(v["message"].as_str().unwrap_or_default().to_owned());
        if v["message"] == "task dead-lettered" {
            assert_eq!(
                v["span"]["task_id"],
                bad[0].as_str(),
                "the task span is in the line: {line}"
            );
            dead_letter_lines += 1;
        }
    }
    assert_eq!(dead_letter_lines, 1, "{messages:?}");
    assert!(
        messages.iter().any(|m| m == "worker started"),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("vanished")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m == "worker stopped"),
        "{messages:?}"
    );
}
