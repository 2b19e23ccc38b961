//! The scaffold agent end to end: real Redis, a real worker, real
//! toolchains running each generated project's own tests.

#![allow(clippy::unwrap_used)]

use agent_sdk::schemas::{AgentType, ErrorKind, TaskStatus};
use agent_sdk::testing::{RunningWorker, TestRedis, worker_config};
use agent_sdk::{Client, EnqueueOptions};
use scaffold_agent::{Output, Request, ScaffoldAgent, generate, templates};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

fn request(template: &str) -> Request {
    Request {
        name: "hello-svc".into(),
        template: template.into(),
        description: Some("Says hello".into()),
        extras: BTreeMap::new(),
    }
}

/// Runs `cmd` in `dir` with only PATH and HOME (and the toolchain's homes),
/// under a timeout.
fn run_tests(dir: &std::path::Path, cmd: &[&str]) -> std::process::Output {
    let mut c = Command::new(cmd[0]);
    c.args(&cmd[1..]).current_dir(dir).env_clear();
    for k in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
    ] {
        if let Some(v) = std::env::var_os(k) {
            c.env(k, v);
        }
    }
    c.env("CARGO_TARGET_DIR", dir.join("target"));
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "{cmd:?} ran over 300 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn every_template_generates_a_project_whose_own_tests_pass() {
    for (template, cmd) in [
        (
            "python-package",
            &["python3", "-m", "unittest", "discover", "-s", "tests"][..],
        ),
        ("node-service", &["node", "--test", "test/"][..]),
        ("rust-lib", &["cargo", "test", "--offline", "--quiet"][..]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(&request(template), dir.path()).unwrap();
        assert!(files.contains(&"README.md".to_string()), "{files:?}");
        let out = run_tests(dir.path(), cmd);
        assert!(
            out.status.success(),
            "{template}: {cmd:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(templates::TEMPLATES.len(), 3);
}

async fn submit(client: &Client, input: Value) -> agent_sdk::schemas::ResultEnvelope {
    let t = AgentType::new("scaffold").unwrap();
    let e = client
        .enqueue(&t, &input, EnqueueOptions::default())
        .await
        .unwrap();
    client
        .wait_for_result(&t, &e.task_id, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("a result within 30 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_gives_the_same_artifact_and_bad_ones_say_why() {
    let redis = TestRedis::start();
    let client = Client::connect(&redis.url(), "scaf").await.unwrap();
    let worker = RunningWorker::spawn(
        ScaffoldAgent::new(client.artifacts()),
        "scaffold",
        worker_config(&redis, "scaf"),
    );

    let req = json!({ "name": "hello-svc", "template": "node-service", "extras": { "docs/NOTES.md": "notes" } });
    let a = submit(&client, req.clone()).await;
    let b = submit(&client, req).await;
    assert_eq!(a.status, TaskStatus::Succeeded, "{a:?}");
    let (oa, ob): (Output, Output) = (
        serde_json::from_value(a.output.unwrap()).unwrap(),
        serde_json::from_value(b.output.unwrap()).unwrap(),
    );
    assert_eq!(oa.artifact.sha256, ob.artifact.sha256, "not deterministic");
    assert!(oa.files.contains(&"docs/NOTES.md".to_string()));
    assert!(oa.files.contains(&"package.json".to_string()));
    // The artifact holds exactly the listed files.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("p");
    let u = client
        .artifacts()
        .unpack(&oa.artifact.sha256, &target)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u.files as usize, oa.files.len());
    assert_eq!(
        std::fs::read_to_string(target.join("docs/NOTES.md")).unwrap(),
        "notes"
    );

    // As a workflow stage: the request is the workflow input.
    let staged = submit(
        &client,
        json!({ "workflow_id": "w1", "stage": "scaffold", "deps": {},
                "input": { "name": "hello-svc", "template": "node-service", "extras": { "docs/NOTES.md": "notes" }, "faults": {} } }),
    )
    .await;
    let os: Output = serde_json::from_value(staged.output.unwrap()).unwrap();
    assert_eq!(os.artifact.sha256, oa.artifact.sha256);

    for (input, needle) in [
        (
            json!({ "name": "x", "template": "cobol-app" }),
            "unknown template \"cobol-app\"",
        ),
        (
            json!({ "name": "Bad_Name", "template": "rust-lib" }),
            "invalid project name \"Bad_Name\"",
        ),
        (
            json!({ "name": "ok", "template": "rust-lib", "extras": { "../escape": "x" } }),
            "\"../escape\"",
        ),
        (
            json!({ "name": "ok", "template": "rust-lib", "extras": { "/etc/x": "x" } }),
            "\"/etc/x\"",
        ),
        (
            json!({ "name": "ok", "template": "rust-lib", "extras": { "Cargo.toml": "x" } }),
            "would replace",
        ),
        (json!({ "name": "ok" }), "template"),
    ] {
        let r = submit(&client, input).await;
        assert_eq!(r.status, TaskStatus::DeadLettered, "{r:?}");
        let err = r.error.unwrap();
        assert_eq!(err.kind, ErrorKind::InvalidInput, "{err:?}");
        assert!(
            err.message.contains(needle),
            "{needle:?} not in {:?}",
            err.message
        );
    }
    worker.shutdown().await;
}

/// The attack on the integration agent started here: a `.gitconfig` and a
/// `.gitattributes` among a scaffold's extra files (a filter git would run
/// on `git add`), and file names that a toolchain would read as options.
/// Each is refused as invalid input naming the file, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_shaped_and_option_shaped_extra_files_are_refused_naming_the_file() {
    let redis = TestRedis::start();
    let client = Client::connect(&redis.url(), "scaf-names").await.unwrap();
    let worker = RunningWorker::spawn(
        ScaffoldAgent::new(client.artifacts()),
        "scaffold",
        worker_config(&redis, "scaf-names"),
    );
    let filter = "[filter \"x\"]\n\tclean = touch /tmp/pwned && cat\n";
    for (path, body, rule) in [
        (".gitconfig", filter, "git's own"),
        (".gitattributes", "* filter=x\n", "git's own"),
        ("sub/.gitattributes", "* filter=x\n", "git's own"),
        (".git/config", filter, "git's own"),
        ("vendor/x/.git", "gitdir: /tmp/elsewhere\n", "git's own"),
        (".gitmodules", "[submodule \"s\"]\n", "git's own"),
        ("hooks/pre-commit", "#!/bin/sh\n", "git hook"),
        ("--require=evil.js", "1", "starting with '-'"),
        ("src/-m.py", "1", "starting with '-'"),
    ] {
        let r = submit(
            &client,
            json!({ "name": "ok", "template": "node-service", "extras": { path: body } }),
        )
        .await;
        assert_eq!(r.status, TaskStatus::DeadLettered, "{path}: {r:?}");
        let err = r.error.unwrap();
        assert_eq!(err.kind, ErrorKind::InvalidInput, "{err:?}");
        assert!(
            err.message.contains(&format!("{path:?}")) && err.message.contains(rule),
            "{path}: {}",
            err.message
        );
    }
    // Nothing was stored for any of them.
    let stored = || -> Vec<String> {
        redis::cmd("KEYS")
            .arg("scaf-names:artifact:*")
            .query(&mut redis.connection())
            .unwrap()
    };
    assert!(stored().is_empty(), "{:?}", stored());
    // An ordinary dot-file still passes.
    let ok = submit(
        &client,
        json!({ "name": "ok", "template": "node-service", "extras": { ".editorconfig": "root = true\n" } }),
    )
    .await;
    assert_eq!(ok.status, TaskStatus::Succeeded, "{ok:?}");
    assert_eq!(stored().len(), 1, "the pattern finds a stored artifact");
    worker.shutdown().await;
}

/// The binary exits 64 on bad configuration, like every binary of the
/// project, naming the flag and never printing a password.
#[test]
fn bad_configuration_exits_64() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_scaffold-agent"))
            .args(args)
            .env_clear()
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--claim-idle", "1s", "--lease-renew", "1s"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--claim-idle"), "{err}");
    let (code, err) = run(&["--redis-url", "http://:hunter2@example.invalid"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("--redis-url") && !err.contains("hunter2"),
        "{err}"
    );
    let (code, err) = run(&["--no-such-flag"]);
    assert_eq!(code, Some(2), "{err}");
}
