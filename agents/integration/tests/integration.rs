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

/// Enqueues an integration stage of workflow `wf` for a `python-package`
/// project `shop` with `notes` as its NOTES.md; its result.
async fn integrate_stage(client: &Client, wf: &str, notes: &str) -> ResultEnvelope {
    let t = AgentType::new("integration").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let req = Request {
        name: "shop".into(),
        template: "python-package".into(),
        description: None,
        extras: [("NOTES.md".to_owned(), notes.to_owned())].into(),
    };
    generate(&req, dir.path()).unwrap();
    let a = client.artifacts().put_dir(dir.path()).await.unwrap();
    let input = json!({ "workflow_id": wf, "stage": "integration", "input": { "name": "shop" },
                        "deps": { "e2e": { "artifact": a } } });
    let opts = EnqueueOptions {
        workflow_id: Some(wf.to_owned()),
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

fn markers(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The demonstrated attack: a `.gitconfig` and a `.gitattributes` in the
/// work tree (git used to run with `HOME` = the work tree, so that file was
/// its global config) define and select a filter that git runs on `git add`
/// and checkout. Here they are written straight into an existing repository
/// and committed to main (scaffold and unpacking now refuse them), with more
/// filters, hooks and an fsmonitor in the repository's own `.git` for good
/// measure. Each would create a marker file; the agent's git runs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_gitattributes_and_config_in_the_repository_run_nothing() {
    let redis = TestRedis::start();
    let client = Client::connect(&redis.url(), "int-hostile").await.unwrap();
    let repos = tempfile::tempdir().unwrap();
    let agent = IntegrationAgent::new(client.artifacts(), repos.path().to_owned(), "main");
    let worker = RunningWorker::spawn(agent, "integration", worker_config(&redis, "int-hostile"));
    let first = integrate_stage(&client, "wf-1", "one\n").await;
    assert_eq!(first.status, TaskStatus::Succeeded, "{first:?}");
    let repo = repos.path().join("shop");

    let marks = tempfile::tempdir().unwrap();
    let m = |name: &str| marks.path().join(name).display().to_string();
    let touch = |name: &str| format!("touch '{}'; cat", m(name));
    std::fs::write(
        repo.join(".gitconfig"),
        format!(
            "[filter \"x\"]\n\tclean = {}\n\tsmudge = {}\n",
            touch("clean-from-home-gitconfig"),
            touch("smudge-from-home-gitconfig")
        ),
    )
    .unwrap();
    std::fs::write(repo.join(".gitattributes"), "* filter=x\n*.py filter=y\n").unwrap();
    // Committed to main by hand, so every later workflow checks it out.
    git(&repo, &["add", ".gitconfig", ".gitattributes"]);
    git(&repo, &["commit", "-qm", "poison"]);
    git(
        &repo,
        &["config", "filter.y.clean", &touch("clean-from-git-config")],
    );
    git(
        &repo,
        &[
            "config",
            "filter.y.smudge",
            &touch("smudge-from-git-config"),
        ],
    );
    let script = |name: &str| {
        let p = repo.join(".git/hooks").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("#!/bin/sh\ntouch '{}'\n", m(name))).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    };
    for hook in [
        "pre-commit",
        "post-commit",
        "post-checkout",
        "post-merge",
        "reference-transaction",
    ] {
        script(hook);
    }
    let fsmonitor = script("fsmonitor");
    git(
        &repo,
        &["config", "core.fsmonitor", fsmonitor.to_str().unwrap()],
    );

    // The control: git as the agent used to run it (HOME = the work tree)
    // does run both filters, so the repository is as hostile as it looks.
    let old_way = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("HOME", &repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    old_way(&["hash-object", "NOTES.md", "src/shop/__init__.py"]);
    let seen = markers(marks.path());
    assert!(
        seen.contains(&"clean-from-home-gitconfig".to_owned())
            && seen.contains(&"clean-from-git-config".to_owned()),
        "the control ran no filter: {seen:?}"
    );
    for f in seen {
        std::fs::remove_file(marks.path().join(f)).unwrap();
    }

    // The agent checks main out, branches, commits, merges: nothing runs.
    let second = integrate_stage(&client, "wf-2", "two\n").await;
    assert_eq!(second.status, TaskStatus::Succeeded, "{second:?}");
    let out: Integrated = serde_json::from_value(second.output.unwrap()).unwrap();
    assert_eq!(
        markers(marks.path()),
        Vec::<String>::new(),
        "git ran something"
    );
    assert_eq!(git(&repo, &["rev-parse", "main"]), out.commit);
    assert_eq!(git(&repo, &["show", "main:NOTES.md"]), "two");
    // The artifact's tree replaced main's: the planted files are gone from it.
    let tree = git(&repo, &["ls-tree", "--name-only", "main"]);
    assert!(
        !tree
            .lines()
            .any(|l| l.starts_with(".gitattributes") || l == ".gitconfig"),
        "{tree}"
    );
    worker.shutdown().await;
}
