//! The deployment agent with real files and real Redis: releases, the
//! atomic `current` link, keeping five, rollback, a failing smoke check.

#![allow(clippy::unwrap_used)]

use agent_sdk::schemas::{AgentType, ErrorKind, ResultEnvelope, TaskStatus};
use agent_sdk::testing::{RunningWorker, TestRedis, worker_config};
use agent_sdk::{Client, EnqueueOptions};
use agent_toolkit::{Jail, JailArgs};
use deployment_agent::{App, Deployed, DeploymentAgent};
use scaffold_agent::{Request, generate};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_switch_prune_and_roll_back() {
    let redis = TestRedis::start();
    let client = Client::connect(&redis.url(), "dep").await.unwrap();
    let releases = tempfile::tempdir().unwrap();
    let worker = RunningWorker::spawn(
        DeploymentAgent::new(
            client.artifacts(),
            releases.path().to_owned(),
            Jail::new(&JailArgs::default()).await.unwrap(),
        ),
        "deployment",
        worker_config(&redis, "dep"),
    );
    let t = AgentType::new("deployment").unwrap();
    let send = |input: Value| {
        let (client, t) = (client.clone(), t.clone());
        async move {
            let e = client
                .enqueue(&t, &input, EnqueueOptions::default())
                .await
                .unwrap();
            client
                .wait_for_result(&t, &e.task_id, Duration::from_secs(60))
                .await
                .unwrap()
                .unwrap()
        }
    };
    let artifact = |n: usize, template: &'static str| {
        let client = client.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let mut extras = std::collections::BTreeMap::new();
            extras.insert("VERSION".to_string(), format!("{n}\n"));
            let req = Request {
                name: "shop".into(),
                template: template.into(),
                description: None,
                extras,
            };
            generate(&req, dir.path()).unwrap();
            client.artifacts().put_dir(dir.path()).await.unwrap()
        }
    };
    let ok = |r: ResultEnvelope| -> Deployed {
        assert_eq!(r.status, TaskStatus::Succeeded, "{r:?}");
        serde_json::from_value(r.output.unwrap()).unwrap()
    };
    let app = App::new(releases.path(), "shop");
    let current_version =
        || std::fs::read_to_string(releases.path().join("shop/current/VERSION")).unwrap();

    // As the sdlc's last stage: the integration's output gives artifact and commit.
    let a1 = artifact(1, "node-service").await;
    let d1 = ok(send(json!({ "workflow_id": "w1", "stage": "deployment", "input": { "name": "shop" },
                             "deps": { "integration": { "artifact": a1, "commit": "aaaaaaaaaaaaaaaa1111", "project": "shop" } } })).await);
    assert_eq!(
        (d1.release.as_str(), d1.previous.as_deref()),
        ("aaaaaaaaaaaa", None)
    );
    assert_eq!(current_version(), "1\n");
    // The deployed project's own tests pass where it was deployed.
    let out = std::process::Command::new("node")
        .args(["--test", "test/"])
        .current_dir(releases.path().join("shop/current"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut ids = vec![d1.release.clone()];
    for n in 2..=7 {
        let a = artifact(n, "node-service").await;
        let d = ok(send(json!({ "artifact": a.sha256, "app": "shop" })).await);
        assert_eq!(d.previous.as_deref(), ids.last().map(String::as_str));
        ids.push(d.release);
        assert_eq!(current_version(), format!("{n}\n"));
    }
    // Five kept, the newest.
    let mut on_disk: Vec<String> = std::fs::read_dir(releases.path().join("shop/releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut newest: Vec<String> = ids[ids.len() - 5..].to_vec();
    newest.sort();
    assert_eq!(on_disk, newest);
    assert_eq!(app.history(), ids[ids.len() - 5..].to_vec());

    // Rollback, as the sdlc's compensation sends it.
    let r = ok(send(json!({ "workflow_id": "w7", "stage": "deployment", "action": "rollback",
                            "input": { "name": "shop" }, "deps": { "integration": { "project": "shop" } },
                            "output": { "action": "deploy", "app": "shop", "release": ids[6] } })).await);
    assert_eq!(
        (r.release.as_str(), r.previous.as_deref()),
        (ids[5].as_str(), Some(ids[6].as_str()))
    );
    assert_eq!(current_version(), "6\n");
    assert_eq!(app.current().as_deref(), Some(ids[5].as_str()));

    // A release whose smoke check fails is not installed, and current stays.
    let bad_dir = tempfile::tempdir().unwrap();
    std::fs::write(bad_dir.path().join("package.json"), "{\"name\": \"shop\"}").unwrap();
    std::fs::create_dir_all(bad_dir.path().join("src")).unwrap();
    std::fs::write(
        bad_dir.path().join("src/index.js"),
        "throw new Error('boom at start')\n",
    )
    .unwrap();
    let bad = client.artifacts().put_dir(bad_dir.path()).await.unwrap();
    let r = send(json!({ "artifact": bad.sha256, "app": "shop" })).await;
    let err = r.error.unwrap();
    assert_eq!(err.kind, ErrorKind::Permanent, "{err:?}");
    assert!(
        err.message.contains("smoke check failed") && err.message.contains("boom at start"),
        "{}",
        err.message
    );
    assert_eq!(current_version(), "6\n");

    // Names never choose a path.
    let r = send(json!({ "artifact": bad.sha256, "app": "../../etc" })).await;
    assert_eq!(r.error.unwrap().kind, ErrorKind::InvalidInput);
    let r = send(json!({ "action": "rollback", "app": "../../etc" })).await;
    assert_eq!(r.error.unwrap().kind, ErrorKind::InvalidInput);
    worker.shutdown().await;
}

/// What a test of trusted fields needs: a worker, a releases directory and
/// a way to send one task and wait for its result.
struct Kit {
    client: Client,
    releases: tempfile::TempDir,
    worker: RunningWorker,
}

impl Kit {
    async fn start(redis: &TestRedis, ns: &str) -> Self {
        let client = Client::connect(&redis.url(), ns).await.unwrap();
        let releases = tempfile::tempdir().unwrap();
        let worker = RunningWorker::spawn(
            DeploymentAgent::new(
                client.artifacts(),
                releases.path().to_owned(),
                Jail::new(&JailArgs::default()).await.unwrap(),
            ),
            "deployment",
            worker_config(redis, ns),
        );
        Self {
            client,
            releases,
            worker,
        }
    }

    async fn send(&self, input: Value) -> ResultEnvelope {
        let t = AgentType::new("deployment").unwrap();
        let e = self
            .client
            .enqueue(&t, &input, EnqueueOptions::default())
            .await
            .unwrap();
        self.client
            .wait_for_result(&t, &e.task_id, Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap()
    }

    /// A generated project `shop` of `template`, stored.
    async fn shop(&self, template: &str) -> agent_sdk::ArtifactRef {
        let dir = tempfile::tempdir().unwrap();
        let req = Request {
            name: "shop".into(),
            template: template.into(),
            description: None,
            extras: Default::default(),
        };
        generate(&req, dir.path()).unwrap();
        self.client.artifacts().put_dir(dir.path()).await.unwrap()
    }

    fn apps(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.releases.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn refused(r: ResultEnvelope, needle: &str) {
    assert_eq!(r.status, TaskStatus::DeadLettered, "{r:?}");
    let err = r.error.unwrap();
    assert_eq!(err.kind, ErrorKind::InvalidInput, "{err:?}");
    assert!(
        err.message.contains(needle),
        "{needle:?} not in {}",
        err.message
    );
}

/// The submitter's fields do not steer a deployment: a workflow-input
/// `commit` does not override the integration's, an `app` other than the
/// project is refused (the workflow input's and a direct input's alike),
/// and an empty or hostile label is refused instead of becoming a release
/// id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_decides_from_trusted_fields_only() {
    let redis = TestRedis::start();
    let kit = Kit::start(&redis, "dep-trust").await;
    let a = kit.shop("python-package").await;
    let stage = |input: Value, integration: Value| {
        json!({ "workflow_id": "w1", "stage": "deployment", "input": input,
                "deps": { "integration": integration } })
    };

    // The workflow input's commit and action are not read; the
    // integration's commit labels the release. (A Python project: its
    // smoke check imports the package named by argument.)
    let r = kit
        .send(stage(
            json!({ "name": "shop", "commit": "0000000bad", "action": "rollback" }),
            json!({ "artifact": a, "commit": "aaaaaaaaaaaaaaaa1111", "project": "shop" }),
        ))
        .await;
    assert_eq!(r.status, TaskStatus::Succeeded, "{r:?}");
    let d: Deployed = serde_json::from_value(r.output.unwrap()).unwrap();
    assert_eq!(
        (d.action.as_str(), d.app.as_str(), d.release.as_str()),
        ("deploy", "shop", "aaaaaaaaaaaa")
    );

    // Another app than the project: refused, nothing installed for it.
    refused(
        kit.send(stage(
            json!({ "name": "shop", "app": "victim" }),
            json!({ "artifact": a, "commit": "bbbbbbbbbbbbbbbb", "project": "shop" }),
        ))
        .await,
        "app \"victim\" differs from the project \"shop\"",
    );
    refused(
        kit.send(json!({ "artifact": a.sha256, "app": "victim" }))
            .await,
        "app \"victim\" differs from the project \"shop\"",
    );
    // Without an integration, the artifact's manifest names the app.
    let r = kit
        .send(
            json!({ "workflow_id": "w2", "stage": "deployment", "input": {},
                      "deps": { "e2e": { "artifact": a } } }),
        )
        .await;
    assert_eq!(r.status, TaskStatus::Succeeded, "{r:?}");
    assert_eq!(kit.apps(), ["shop"]);

    // Labels: empty, hostile, not a commit id.
    for label in ["", " ", "../../x", "release 1", "ABCDEF0123"] {
        refused(
            kit.send(json!({ "artifact": a.sha256, "commit": label }))
                .await,
            "invalid release label",
        );
        refused(
            kit.send(stage(
                json!({}),
                json!({ "artifact": a, "commit": label, "project": "shop" }),
            ))
            .await,
            "invalid release label",
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(kit.releases.path().join("shop/releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, ["aaaaaaaaaaaa", &a.sha256[..12]]);
    kit.worker.shutdown().await;
}

/// The demonstrated attack: the Python smoke check wrote the package's
/// directory name into `python3 -c` code. A package directory named
/// `os; os.system(...)` then ran a command. Now the name is an argument:
/// the import fails, the release is not installed, nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_name_shaped_like_code_is_never_run() {
    let redis = TestRedis::start();
    let kit = Kit::start(&redis, "dep-smoke").await;
    let marks = tempfile::tempdir().unwrap();
    let marker = marks.path().join("ran");
    // No '/' may appear in a file name: the command is hex-encoded.
    let command: String = format!("touch {}", marker.display())
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    let package = format!("os; os.system(bytes.fromhex('{command}').decode())");
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(
        tree.path().join("pyproject.toml"),
        "[project]\nname = \"shop\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(tree.path().join("src").join(&package)).unwrap();
    std::fs::write(
        tree.path().join("src").join(&package).join("__init__.py"),
        "",
    )
    .unwrap();
    let a = kit.client.artifacts().put_dir(tree.path()).await.unwrap();

    let r = kit.send(json!({ "artifact": a.sha256 })).await;
    assert_eq!(r.status, TaskStatus::DeadLettered, "{r:?}");
    let err = r.error.unwrap();
    assert_eq!(err.kind, ErrorKind::Permanent, "{err:?}");
    assert!(
        err.message.contains("smoke check failed") && err.message.contains("ModuleNotFoundError"),
        "{}",
        err.message
    );
    assert!(!marker.exists(), "the directory name ran as code");
    assert!(
        !kit.releases.path().join("shop/current").exists(),
        "a release whose smoke check failed is current"
    );

    // The control: the old check, the name written into the code, runs it.
    std::process::Command::new("python3")
        .args([
            "-c",
            &format!("import sys; sys.path.insert(0, 'src'); import {package}"),
        ])
        .current_dir(tree.path())
        .output()
        .unwrap();
    assert!(marker.exists(), "the control ran nothing");
    kit.worker.shutdown().await;
}

/// Without a jail the agent refuses to start: exit 64, saying why.
#[tokio::test]
async fn without_the_jail_the_agent_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    agent_toolkit::testing::refuses_to_start_without_the_jail(
        "deployment-agent",
        env!("CARGO_BIN_EXE_deployment-agent"),
        &[
            "--releases-dir".into(),
            dir.path().to_string_lossy().into_owned(),
        ],
    )
    .await;
}

/// A smoke check runs the project's code: jailed, the release read-only,
/// no network. A hostile `src/index.js` can neither change the release it
/// is loaded from nor reach Redis.
#[tokio::test]
async fn a_hostile_smoke_check_is_jailed_with_its_release_read_only() {
    let redis = TestRedis::start();
    let releases = tempfile::tempdir().unwrap();
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(tree.path().join("package.json"), "{\"name\": \"shop\"}").unwrap();
    std::fs::create_dir_all(tree.path().join("src")).unwrap();
    let hostile = "const fs = require('fs');\nconst net = require('net');\n\
        try { fs.writeFileSync(__dirname + '/pwned', 'x'); console.log('WROTE'); }\n\
        catch (e) { console.log('write refused: ' + e.code); }\n\
        const s = net.connect(@PORT@, '127.0.0.1');\n\
        s.on('connect', () => { console.log('CONNECTED'); process.exit(0); });\n\
        s.on('error', (e) => { console.log('connect refused: ' + e.code); process.exit(3); });\n"
        .replace("@PORT@", &redis.port().to_string());
    std::fs::write(tree.path().join("src/index.js"), hostile).unwrap();
    let jail = Jail::new(&JailArgs::default()).await.unwrap();
    let app = App::new(releases.path(), "shop");
    let err = deployment_agent::deploy(&jail, &app, tree.path(), "r1")
        .await
        .unwrap_err();
    let m = err.message();
    assert!(m.contains("smoke check failed"), "{m}");
    assert!(m.contains("write refused: EROFS"), "{m}");
    assert!(m.contains("connect refused: ECONNREFUSED"), "{m}");
    assert!(!m.contains("WROTE") && !m.contains("CONNECTED"), "{m}");
    assert_eq!(app.current(), None);
    let pwned: Vec<_> = walk(releases.path())
        .into_iter()
        .chain(walk(tree.path()))
        .filter(|p| p.ends_with("pwned"))
        .collect();
    assert!(pwned.is_empty(), "{pwned:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
