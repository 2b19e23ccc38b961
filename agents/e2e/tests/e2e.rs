//! The e2e agent on scaffolded projects: real toolchains, real Redis, a
//! real worker; passing suites, a planted failing test, a hanging one.

#![allow(clippy::unwrap_used)]

use agent_sdk::schemas::{AgentType, ErrorKind, ResultEnvelope, TaskStatus};
use agent_sdk::testing::{RunningWorker, TestRedis, worker_config};
use agent_sdk::{Client, EnqueueOptions, RuntimeConfig};
use agent_toolkit::{Jail, JailArgs};
use e2e_agent::{E2eAgent, Outcome};
use scaffold_agent::{Request, generate};
use serde_json::json;
use std::time::Duration;

fn project(template: &str, extras: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let req = Request {
        name: "demo-app".into(),
        template: template.into(),
        description: None,
        extras: extras
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    generate(&req, dir.path()).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suites_pass_fail_and_time_out_as_they_should() {
    let redis = TestRedis::start();
    let client = Client::connect(&redis.url(), "e2e").await.unwrap();
    let cfg = RuntimeConfig {
        concurrency: 4,
        task_timeout: Duration::from_secs(600),
        ..worker_config(&redis, "e2e")
    };
    let worker = RunningWorker::spawn(
        E2eAgent::new(
            client.artifacts(),
            Duration::from_secs(60),
            Jail::new(&JailArgs::default()).await.unwrap(),
        ),
        "e2e",
        cfg.clone(),
    );
    let t = AgentType::new("e2e").unwrap();
    let run = |dir: tempfile::TempDir| {
        let (client, t) = (client.clone(), t.clone());
        async move {
            let a = client.artifacts().put_dir(dir.path()).await.unwrap();
            let input = json!({ "workflow_id": "w", "stage": "e2e", "input": {}, "deps": { "scaffold": { "artifact": a } } });
            let e = client
                .enqueue(&t, &input, EnqueueOptions::default())
                .await
                .unwrap();
            client
                .wait_for_result(&t, &e.task_id, Duration::from_secs(300))
                .await
                .unwrap()
                .unwrap()
        }
    };
    let ok = |r: ResultEnvelope| -> Outcome {
        assert_eq!(r.status, TaskStatus::Succeeded, "{r:?}");
        serde_json::from_value(r.output.unwrap()).unwrap()
    };

    let py = ok(run(project("python-package", &[])).await);
    assert_eq!((py.passed, py.failed), (2, 0));
    let node = ok(run(project("node-service", &[])).await);
    assert_eq!((node.passed, node.failed), (2, 0));
    let rust = ok(run(project("rust-lib", &[])).await);
    assert_eq!((rust.passed, rust.failed), (3, 0));

    // A planted failing test: permanent, with the counts and the output's tail.
    let failing = "import unittest\n\nclass T(unittest.TestCase):\n    def test_broken(self):\n        self.assertEqual(1, 2)\n";
    let r = run(project(
        "python-package",
        &[("tests/test_broken.py", failing)],
    ))
    .await;
    assert_eq!(r.status, TaskStatus::DeadLettered);
    let err = r.error.unwrap();
    assert_eq!(err.kind, ErrorKind::Permanent, "{err:?}");
    assert!(
        err.message.contains("2 passed, 1 failed"),
        "{}",
        err.message
    );
    let d = err.details.unwrap();
    assert_eq!(
        (d["passed"].as_u64(), d["failed"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(d["tail"].as_str().unwrap().contains("test_broken"), "{d}");
    worker.shutdown().await;

    // A suite that hangs: killed at the timeout, a retryable failure.
    let worker = RunningWorker::spawn(
        E2eAgent::new(
            client.artifacts(),
            Duration::from_secs(2),
            Jail::new(&JailArgs::default()).await.unwrap(),
        ),
        "e2e",
        cfg,
    );
    let hang = "const test = require('node:test');\ntest('hangs', () => new Promise(() => setInterval(() => {}, 1000)));\n";
    let r = run(project("node-service", &[("test/hang.test.js", hang)])).await;
    let err = r.error.unwrap();
    assert_eq!(err.kind, ErrorKind::Retryable, "{err:?}");
    assert!(err.message.contains("timed out"), "{}", err.message);
    worker.shutdown().await;
}
