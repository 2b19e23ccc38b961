//! A hostile test suite through the real `e2e-agent` binary, its Redis URL
//! carrying a password: each attack is performed for real inside the jail
//! and checked from the host — Redis on loopback, the agent's environment
//! and argv through /proc, writes outside the project, a fork bomb, 4 GiB,
//! a `setsid` daemon, 100 MB of output. And a handler the SDK drops (its
//! task timed out) takes the suite's whole process tree with it.

#![allow(clippy::unwrap_used)]

use agent_sdk::schemas::{AgentType, ErrorKind, ResultEnvelope, TaskStatus};
use agent_sdk::testing::{Proc, RunningWorker, TestRedis, worker_config};
use agent_sdk::{Client, EnqueueOptions, RuntimeConfig};
use agent_toolkit::testing::{alive, wait_all_gone};
use agent_toolkit::{Jail, JailArgs};
use e2e_agent::E2eAgent;
use scaffold_agent::{Request, generate};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const SECRET: &str = "s3cret";

fn project(extras: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let req = Request {
        name: "demo-app".into(),
        template: "python-package".into(),
        description: None,
        extras: extras
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    };
    generate(&req, dir.path()).unwrap();
    dir
}

/// A Redis that wants a password, like a production one.
fn redis_with_password() -> (TestRedis, String) {
    let redis = TestRedis::start();
    let mut c = redis.connection();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(SECRET)
        .query(&mut c)
        .unwrap();
    let url = format!("redis://:{SECRET}@127.0.0.1:{}", redis.port());
    (redis, url)
}

async fn submit(client: &Client, dir: &Path, wait: Duration) -> ResultEnvelope {
    let t = AgentType::new("e2e").unwrap();
    let a = client.artifacts().put_dir(dir).await.unwrap();
    let input = json!({ "artifact": a.sha256 });
    let e = client
        .enqueue(&t, &input, EnqueueOptions::default())
        .await
        .unwrap();
    client
        .wait_for_result(&t, &e.task_id, wait)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_suite_is_contained_and_reported() {
    let (redis, url) = redis_with_password();
    let marker = format!("hostile{}", std::process::id());
    let namespace = format!("{marker}ns");
    let cwd = std::env::current_dir().unwrap();
    let home = std::env::var("HOME").unwrap();
    let logs = tempfile::tempdir().unwrap();
    // The real agent: the URL (with its password) in its environment, the
    // namespace on its argv; the suite must see neither.
    let _agent = Proc::spawn(
        "e2e-agent",
        env!("CARGO_BIN_EXE_e2e-agent"),
        &[
            "--namespace".into(),
            namespace.clone(),
            "--test-timeout".into(),
            "300s".into(),
        ],
        &[
            ("AGENTIC_REDIS_URL", url.as_str()),
            ("PATH", &std::env::var("PATH").unwrap()),
            ("HOME", &home),
        ],
        logs.path().join("agent.log"),
    );
    let suite = include_str!("hostile/test_attack.py")
        .replace("@PORT@", &redis.port().to_string())
        .replace("@MARKER@", &marker)
        .replace("@SECRET@", SECRET)
        .replace("@AGENT_CWD@", &cwd.to_string_lossy())
        .replace("@HOST_HOME@", &home);
    let dir = project(&[("tests/test_attack.py", suite)]);
    let client = Client::connect(&url, &namespace).await.unwrap();
    let r = submit(&client, dir.path(), Duration::from_secs(600)).await;

    // The suite failed on purpose, with its report; it ran into the limits.
    assert_eq!(r.status, TaskStatus::DeadLettered, "{r:?}");
    let err = r.error.clone().unwrap();
    assert_eq!(err.kind, ErrorKind::Permanent, "{err:?}");
    let d = err.details.clone().unwrap();
    let tail = d["tail"].as_str().unwrap();
    let limits = &d["limits"];
    assert_eq!(limits["enforced_by"]["jail"], "bwrap", "{limits}");
    // Where the host has cgroups (v1, the agent root) they stop the tree
    // and the result names each limit hit; elsewhere rlimits stop it.
    let by_cgroup = |l: &str| limits["enforced_by"][l] == "cgroup";
    let mut expected = vec!["output"];
    expected.extend(["memory", "pids"].into_iter().filter(|l| by_cgroup(l)));
    for limit in expected {
        assert!(
            err.message.contains(limit),
            "{limit} not reported: {}",
            err.message
        );
    }
    assert_eq!(limits["output_truncated"], true, "{limits}");
    assert!(
        limits["output_bytes"].as_u64().unwrap() > 100 << 20,
        "{limits}"
    );
    // 100 MB printed; the whole result stays small.
    let whole = serde_json::to_string(&r).unwrap();
    assert!(whole.len() < 64 * 1024, "result of {} bytes", whole.len());
    // Nothing the agent knows leaked into what the suite printed.
    assert!(!whole.contains(SECRET), "the password reached the result");
    assert!(
        !whole.contains(&namespace),
        "the agent's argv reached the result"
    );

    // What the suite saw, attack by attack.
    let line = |name: &str| {
        tail.lines()
            .find(|l| l.starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no report of {name} in:\n{tail}"))
            .to_owned()
    };
    assert!(line("flood").contains("printed 100 MiB"));
    assert!(line("redis-loopback").contains("blocked"), "{tail}");
    assert!(line("redis-localhost").contains("blocked"), "{tail}");
    assert_eq!(line("redis-url-in-env"), "redis-url-in-env: absent");
    for what in ["proc-ppid-environ", "proc-ppid-cmdline"] {
        let l = line(what);
        assert!(l.contains("refused") || l.contains("(no secret)"), "{l}");
    }
    assert!(line("proc-all").contains("no agent env or argv"), "{tail}");
    assert!(line("own-env").starts_with("own-env: clean"), "{tail}");
    for d in [home.as_str(), &cwd.to_string_lossy(), "/usr", "/etc"] {
        let l = line(&format!("write {d}"));
        assert!(l.contains("refused"), "{l}");
    }
    assert!(line("fork-bomb").contains("stopped after"), "{tail}");
    if by_cgroup("memory") {
        assert!(line("alloc-4GiB").contains("killed by signal 9"), "{tail}");
    } else {
        assert!(line("alloc-4GiB").contains("MemoryError"), "{tail}");
    }
    assert!(line("daemon").contains("started and beating"), "{tail}");

    // And from the host: nothing written, nothing forged, nothing left.
    for d in [
        Path::new(&home),
        &cwd,
        Path::new("/usr"),
        Path::new("/etc"),
        Path::new("/root"),
        Path::new("/tmp"),
    ] {
        let p = d.join(format!("pwned-{marker}"));
        assert!(!p.exists(), "{} was written", p.display());
    }
    let mut c = redis.connection();
    let _: () = redis::cmd("AUTH").arg(SECRET).query(&mut c).unwrap();
    let pwned: Option<String> = redis::cmd("GET")
        .arg(format!("pwned-{marker}"))
        .query(&mut c)
        .unwrap();
    assert_eq!(pwned, None, "the suite wrote to Redis");
    wait_all_gone(&format!("daemon-{marker}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_handler_kills_the_suite_and_its_daemon() {
    let redis = TestRedis::start();
    let client = Client::connect(&redis.url(), "drop").await.unwrap();
    // The SDK times the handler out long before the suite's own timeout
    // (late enough that a loaded machine has started the suite's daemon).
    let cfg = RuntimeConfig {
        task_timeout: Duration::from_secs(15),
        ..worker_config(&redis, "drop")
    };
    let jail = Jail::new(&JailArgs::default()).await.unwrap();
    let worker = RunningWorker::spawn(
        E2eAgent::new(client.artifacts(), Duration::from_secs(600), jail),
        "e2e",
        cfg,
    );
    let marker = format!("dropped{}", std::process::id());
    let hang = format!(
        "import subprocess, time, unittest\n\nclass T(unittest.TestCase):\n    def test_hang(self):\n        \
         subprocess.Popen(['setsid', 'sh', '-c', 'while :; do sleep 0.1; done', '{marker}'])\n        \
         time.sleep(3600)\n"
    );
    let dir = project(&[("tests/test_hang.py", hang)]);
    let t = AgentType::new("e2e").unwrap();
    let a = client.artifacts().put_dir(dir.path()).await.unwrap();
    let e = client
        .enqueue(
            &t,
            &json!({ "artifact": a.sha256 }),
            EnqueueOptions::default(),
        )
        .await
        .unwrap();
    // While the suite hangs, its daemon is alive on the host.
    let deadline = Instant::now() + Duration::from_secs(60);
    while alive(&marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the suite's daemon never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = client
        .wait_for_result(&t, &e.task_id, Duration::from_secs(120))
        .await
        .unwrap()
        .unwrap();
    let err = r.error.unwrap();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err:?}");
    wait_all_gone(&marker).await;
    worker.shutdown().await;
}
