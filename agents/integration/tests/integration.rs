//! The integration agent with real git and real Redis: a new repository per
//! project, a branch per workflow merged into main, the committed tree
//! published as an artifact, and a conflict refused naming its files.

#![allow(clippy::unwrap_used)]

use agent_sdk::schemas::{AgentType, ErrorKind, ResultEnvelope, TaskStatus};
use agent_sdk::testing::{RunningWorker, TestRedis, worker_config};
use agent_sdk::{Client, EnqueueOptions};
use integration_agent::{Integrated, IntegrationAgent};
use scaffold_agent::{Request, generate};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(repo)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_committed_merged_and_republished() {
    let redis = TestRedis::start();
    let client = Client::connect(&redis.url(), "int").await.unwrap();
    let repos = tempfile::tempdir().unwrap();
    let agent = IntegrationAgent::new(client.artifacts(), repos.path().to_owned(), "main");
    let worker = RunningWorker::spawn(agent, "integration", worker_config(&redis, "int"));
    let t = AgentType::new("integration").unwrap();
    let run = |wf: &str, extras: Vec<(&str, &str)>| {
        let (client, t, wf) = (client.clone(), t.clone(), wf.to_owned());
        let extras: std::collections::BTreeMap<String, String> = extras
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let req = Request {
                name: "shop".into(),
                template: "python-package".into(),
                description: None,
                extras,
            };
            generate(&req, dir.path()).unwrap();
            let a = client.artifacts().put_dir(dir.path()).await.unwrap();
            let input = json!({ "workflow_id": wf, "stage": "integration", "input": { "name": "shop" },
                                "deps": { "e2e": { "artifact": a } } });
            let opts = EnqueueOptions {
                workflow_id: Some(wf.clone()),
                stage: Some("integration".into()),
                ..EnqueueOptions::default()
            };
            let e = client.enqueue(&t, &input, opts).await.unwrap();
            client
                .wait_for_result(&t, &e.task_id, Duration::from_secs(60))
                .await
                .unwrap()
                .unwrap()
        }
    };
    let ok = |r: ResultEnvelope| -> Integrated {
        assert_eq!(r.status, TaskStatus::Succeeded, "{r:?}");
        serde_json::from_value(r.output.unwrap()).unwrap()
    };

    let first = ok(run("wf-1", vec![("NOTES.md", "one\n")]).await);
    let repo = repos.path().join("shop");
    assert_eq!(first.project, "shop");
    assert_eq!(first.branch, "wf/wf-1");
    assert_eq!(git(&repo, &["rev-parse", "main"]), first.commit);
    assert_eq!(git(&repo, &["show", "main:NOTES.md"]), "one");
    assert!(git(&repo, &["branch", "--list"]).contains("wf/wf-1"));
    // The committed tree came back as an artifact: it holds the project, not .git.
    let out = tempfile::tempdir().unwrap();
    client
        .artifacts()
        .unpack(&first.artifact.sha256, &out.path().join("t"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(out.path().join("t/NOTES.md")).unwrap(),
        "one\n"
    );
    assert!(!out.path().join("t/.git").exists());

    // A second workflow of the same project: its own branch, merged on top.
    let second = ok(run("wf-2", vec![("NOTES.md", "two\n")]).await);
    assert_ne!(second.commit, first.commit);
    assert_eq!(git(&repo, &["show", "main:NOTES.md"]), "two");
    let parents = git(&repo, &["rev-list", "--parents", "-n", "1", "main"]);
    assert_eq!(parents.split(' ').count(), 3, "a merge commit: {parents}");

    // A branch that diverged from main and changes the same file: conflict.
    git(&repo, &["branch", "wf/wf-3", &first.commit]);
    git(&repo, &["checkout", "-q", "wf/wf-3"]);
    std::fs::write(repo.join("NOTES.md"), "three, from elsewhere\n").unwrap();
    git(&repo, &["commit", "-qam", "diverge"]);
    git(&repo, &["checkout", "-q", "main"]);
    let r = run("wf-3", vec![("NOTES.md", "three\n")]).await;
    assert_eq!(r.status, TaskStatus::DeadLettered);
    let err = r.error.unwrap();
    assert_eq!(err.kind, ErrorKind::Permanent, "{err:?}");
    assert!(
        err.message.contains("conflicts in: NOTES.md"),
        "{}",
        err.message
    );
    assert_eq!(
        git(&repo, &["rev-parse", "main"]),
        second.commit,
        "main unchanged"
    );
    assert_eq!(
        git(&repo, &["status", "--porcelain"]),
        "",
        "no half-done merge left"
    );

    // Task input never chooses a path.
    let e = client
        .enqueue(
            &t,
            &json!({ "artifact": first.artifact.sha256, "project": "../../etc" }),
            EnqueueOptions::default(),
        )
        .await
        .unwrap();
    let r = client
        .wait_for_result(&t, &e.task_id, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let err = r.error.unwrap();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert!(
        err.message.contains("invalid project name"),
        "{}",
        err.message
    );
    worker.shutdown().await;
}
