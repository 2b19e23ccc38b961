//! `agentctl` end to end: the real binary against a real Redis, real SDK
//! workers (in this process) and the orchestrator. Every test counts dead
//! letters and tasks exactly, before and after.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agent_sdk::schemas::{DeadLetter, DeadLetterReason, Encoding, TaskEnvelope};
use agent_sdk::testing::TestRedis;
use orchestrator::machine::WorkflowStatus;
use orchestrator::testing::*;
use orchestrator_server::testing::InProcess;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const PATIENCE: Duration = Duration::from_secs(60);

/// What one agentctl run printed and how it exited.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:?}"))
    }

    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "agentctl failed: {self:?}");
        self
    }
}

/// Runs agentctl with `args` against `url` in namespace `ns`, feeding
/// `stdin` (nothing when `None`). No AGENTIC_* from the environment leaks in.
async fn ctl_in(url: &str, ns: &str, args: &[&str], stdin: Option<&str>) -> Ran {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentctl"));
    cmd.args(["--redis-url", url, "--namespace", ns])
        .args(args)
        .env_remove("AGENTIC_REDIS_URL")
        .env_remove("AGENTIC_NAMESPACE")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("agentctl runs");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("agentctl did not finish")
        .unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn ctl(redis: &TestRedis, args: &[&str]) -> Ran {
    ctl_in(&redis.url(), NS, args, None).await
}

fn dlq_key(t: &str) -> String {
    keys().dlq(&agent_type(t))
}

fn tasks_key(t: &str) -> String {
    keys().tasks(&agent_type(t))
}

fn ids_of(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A stage-agent input that fails (retryably, until the lab is healed) or
/// succeeds, as a standalone task.
fn task_input(tag: usize, broken: bool) -> String {
    let mut wf_input = json!({ "tag": tag });
    if broken {
        wf_input["dead_letter"] = json!("e2e");
    }
    json!({ "stage": "e2e", "input": wf_input }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_show_purge_export_import_replay_with_exact_counts() {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &["e2e"]);

    // 10 tasks through agentctl: 4 succeed, 6 fail until healed. Plus one
    // entry that is not a task at all.
    let mut task_ids = Vec::new();
    for i in 0..10 {
        let r = ctl(
            &redis,
            &[
                "task",
                "enqueue",
                "e2e",
                "--input",
                &task_input(i, i >= 4),
                "--json",
            ],
        )
        .await
        .ok();
        task_ids.push(r.json()["task_id"].as_str().unwrap().to_owned());
    }
    let mut c = conn(&redis).await;
    let garbage: String = redis::cmd("XADD")
        .arg(tasks_key("e2e"))
        .arg("*")
        .arg("body")
        .arg(&b"\xc1 not a task"[..])
        .query_async(&mut c)
        .await
        .unwrap();
    wait_until("7 dead letters", PATIENCE, || async {
        xlen(&redis, &dlq_key("e2e")).await == 7
    })
    .await;
    // A dead-lettered task's result says so.
    let failed = ctl(
        &redis,
        &["task", "get", &task_ids[9], "--type", "e2e", "--json"],
    )
    .await
    .ok();
    assert_eq!(failed.json()["status"], "dead_lettered");

    // dlq list: per type, then the entries, then each filter.
    let queues = ctl(&redis, &["dlq", "list", "--json"]).await.ok().json();
    let e2e = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["agent_type"] == "e2e")
        .unwrap()
        .clone();
    assert_eq!(e2e["count"], 7);
    assert!(e2e["oldest_ms"].as_u64().unwrap() <= e2e["newest_ms"].as_u64().unwrap());
    let human = ctl(&redis, &["dlq", "list"]).await.ok();
    assert!(
        human.stdout.contains("e2e") && human.stdout.contains("7"),
        "{human:?}"
    );

    let all = ctl(&redis, &["dlq", "list", "e2e", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(all["items"].as_array().unwrap().len(), 7);
    assert!(all["next"].is_null());
    let by_reason = |reason: &str| {
        all["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["reason"] == reason)
            .count()
    };
    assert_eq!(by_reason("attempts_exhausted"), 6);
    assert_eq!(by_reason("malformed"), 1);
    let broken = ctl(
        &redis,
        &[
            "dlq",
            "list",
            "e2e",
            "--error-contains",
            "BROKEN UNTIL",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(
        broken["items"].as_array().unwrap().len(),
        6,
        "case-insensitive"
    );
    for i in broken["items"].as_array().unwrap() {
        assert_eq!(i["attempts"], 3);
        assert!(task_ids.contains(&i["task_id"].as_str().unwrap().to_owned()));
    }
    let page1 = ctl(&redis, &["dlq", "list", "e2e", "--limit", "4", "--json"])
        .await
        .ok()
        .json();
    let next = page1["next"].as_str().unwrap().to_owned();
    let page2 = ctl(
        &redis,
        &[
            "dlq", "list", "e2e", "--limit", "4", "--after", &next, "--json",
        ],
    )
    .await
    .ok()
    .json();
    let mut paged = ids_of(&page1);
    paged.extend(ids_of(&page2));
    assert_eq!(
        paged,
        ids_of(&all),
        "two pages are the whole list, in order"
    );
    let since = ctl(&redis, &["dlq", "list", "e2e", "--since", "1h", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(since["items"].as_array().unwrap().len(), 7);
    let future = ctl(
        &redis,
        &[
            "dlq",
            "list",
            "e2e",
            "--since",
            "2999-01-01T00:00:00Z",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(future["items"].as_array().unwrap().len(), 0);
    let other_wf = ctl(
        &redis,
        &["dlq", "list", "e2e", "--workflow", "nope", "--json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(other_wf["items"].as_array().unwrap().len(), 0);

    // dlq show: the decoded envelope and the raw fields; the malformed one
    // says why it cannot be decoded and keeps its bytes.
    let first_broken = broken["items"][0]["id"].as_str().unwrap().to_owned();
    let shown = ctl(&redis, &["dlq", "show", "e2e", &first_broken, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(shown["dead_letter"]["id"], first_broken.as_str());
    assert_eq!(shown["envelope"]["input"]["input"]["dead_letter"], "e2e");
    assert!(shown["decode_error"].is_null());
    assert!(
        shown["raw"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "body")
    );
    let malformed = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["reason"] == "malformed")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let shown = ctl(&redis, &["dlq", "show", "e2e", &malformed, "--json"])
        .await
        .ok()
        .json();
    assert!(shown["envelope"].is_null());
    assert!(shown["decode_error"].as_str().is_some());
    let body = shown["raw"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "body")
        .unwrap()
        .clone();
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(body["base64"].as_str().unwrap())
            .unwrap(),
        b"\xc1 not a task",
        "the raw bytes, exactly"
    );
    assert_eq!(shown["dead_letter"]["source_id"], garbage.as_str());
    let human = ctl(&redis, &["dlq", "show", "e2e", &first_broken])
        .await
        .ok();
    assert!(human.stdout.contains("attempts_exhausted"), "{human:?}");
    assert!(
        human
            .stdout
            .contains(&format!("agentctl dlq replay e2e {first_broken}"))
    );
    let missing = ctl(&redis, &["dlq", "show", "e2e", "1-0"]).await;
    assert_eq!(missing.code, 3, "{missing:?}");

    // dlq export: all seven, as JSON lines that read back as dead letters.
    let exported = ctl(&redis, &["dlq", "export", "e2e"]).await.ok();
    let lines: Vec<DeadLetter> = exported
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7);
    assert!(exported.stderr.contains("exported 7"));
    let export_file = redis.dir().join("dlq.jsonl");
    std::fs::write(&export_file, &exported.stdout).unwrap();

    // dlq purge: asks first; "n" keeps it, "y" deletes exactly that one.
    let no = ctl_in(
        &redis.url(),
        NS,
        &["dlq", "purge", "e2e", &malformed],
        Some("n\n"),
    )
    .await;
    assert_eq!(no.code, 1, "{no:?}");
    assert_eq!(xlen(&redis, &dlq_key("e2e")).await, 7);
    let yes = ctl_in(
        &redis.url(),
        NS,
        &["dlq", "purge", "e2e", &malformed, "--json"],
        Some("y\n"),
    )
    .await
    .ok();
    assert_eq!(yes.json()["purged"], 1);
    assert_eq!(xlen(&redis, &dlq_key("e2e")).await, 6);
    let young = ctl(
        &redis,
        &[
            "dlq",
            "purge",
            "e2e",
            "--older-than",
            "1h",
            "--yes",
            "--json",
        ],
    )
    .await
    .ok();
    assert_eq!(young.json()["purged"], 0, "none is an hour old");
    assert_eq!(xlen(&redis, &dlq_key("e2e")).await, 6);

    // dlq import into another environment (namespace): all seven arrive,
    // byte for byte; a bad file imports nothing.
    let imported = ctl_in(
        &redis.url(),
        "otherenv",
        &["dlq", "import", export_file.to_str().unwrap(), "--json"],
        None,
    )
    .await
    .ok()
    .json();
    assert_eq!(imported["imported"], 7);
    assert_eq!(imported["by_type"]["e2e"], 7);
    let there = ctl_in(&redis.url(), "otherenv", &["dlq", "export", "e2e"], None)
        .await
        .ok();
    let moved: Vec<DeadLetter> = there
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(moved.len(), 7);
    for (a, b) in lines.iter().zip(&moved) {
        assert_eq!(
            (&a.task_id, &a.error, &a.raw, a.reason),
            (&b.task_id, &b.error, &b.raw, b.reason)
        );
    }
    let bad_file = redis.dir().join("bad.jsonl");
    std::fs::write(
        &bad_file,
        format!("{}\nnot json\n", exported.stdout.lines().next().unwrap()),
    )
    .unwrap();
    let bad = ctl_in(
        &redis.url(),
        "otherenv",
        &["dlq", "import", bad_file.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(bad.code, 65, "{bad:?}");
    assert!(bad.stderr.contains("line 2"), "{bad:?}");
    let still = ctl_in(&redis.url(), "otherenv", &["dlq", "list", "--json"], None)
        .await
        .ok()
        .json();
    assert_eq!(
        still["queues"][0]["count"], 7,
        "the bad file imported nothing"
    );

    // Heal the agent; replay one by id, then a dry run, then the rest.
    agents.lab.healed.store(true, Ordering::SeqCst);
    let one = ctl(&redis, &["dlq", "replay", "e2e", &first_broken, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(
        (one["matched"].as_u64(), one["replayed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(xlen(&redis, &dlq_key("e2e")).await, 5);
    let again = ctl(&redis, &["dlq", "replay", "e2e", &first_broken]).await;
    assert_eq!(again.code, 3, "an id replayed already is gone: {again:?}");
    let dry = ctl(
        &redis,
        &["dlq", "replay", "e2e", "--all", "--dry-run", "--json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(dry["matched"], 5);
    assert_eq!(dry["replayed"], 0);
    assert_eq!(
        xlen(&redis, &dlq_key("e2e")).await,
        5,
        "a dry run moves nothing"
    );
    let rest = ctl(&redis, &["dlq", "replay", "e2e", "--all", "--rate", "500"])
        .await
        .ok();
    assert!(rest.stdout.contains("replayed 5 of 5"), "{rest:?}");
    assert_eq!(xlen(&redis, &dlq_key("e2e")).await, 0);

    // Every task accounted for: 10 enqueued = 10 succeeded (4 at once, 6
    // after their replay), none dead, each applied exactly once.
    wait_until("10 results succeeded", PATIENCE, || {
        let (redis, task_ids) = (&redis, &task_ids);
        async move {
            let mut ok = 0;
            for id in task_ids {
                let r = ctl(redis, &["task", "get", id, "--json"]).await;
                if r.code == 0 && r.json()["status"] == "succeeded" {
                    ok += 1;
                }
            }
            ok == 10
        }
    })
    .await;
    let runs = agents.lab.runs();
    let mut ok_per_task: BTreeMap<String, usize> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.ok) {
        *ok_per_task.entry(r.task_id.clone()).or_default() += 1;
    }
    assert_eq!(ok_per_task.len(), 10);
    assert!(ok_per_task.values().all(|n| *n == 1), "{ok_per_task:?}");
    assert_eq!(
        runs.len(),
        4 + 6 * 3 + 6,
        "3 failed attempts and 1 replay each"
    );
    let streams = ctl(&redis, &["streams", "--json"]).await.ok().json();
    let s = &streams["streams"][0];
    assert_eq!(
        (
            s["agent_type"].as_str(),
            s["backlog"].as_u64(),
            s["pending"].as_u64(),
            s["dlq"].as_u64()
        ),
        (Some("e2e"), Some(0), Some(0), Some(0))
    );
    // The registry shows the one worker, live, with every handler run
    // counted (once its next heartbeat has carried the count).
    wait_until("the registry counts every run", PATIENCE, || {
        let (redis, n) = (&redis, runs.len() as u64);
        async move {
            let live = ctl(redis, &["agents", "--json"]).await.ok().json();
            let live = live["agents"].as_array().unwrap().clone();
            assert_eq!(live.len(), 1);
            assert_eq!(live[0]["agent_type"], "e2e");
            assert_eq!(live[0]["stale"], false);
            live[0]["processed"].as_u64().unwrap() >= n
        }
    })
    .await;

    let gone = ctl_in(
        &redis.url(),
        "otherenv",
        &["dlq", "purge", "e2e", "--all", "--yes", "--json"],
        None,
    )
    .await
    .ok();
    assert_eq!(gone.json()["purged"], 7);
    agents.shutdown().await;
}

/// A dead letter as a worker would have written it, for `dlq import`.
fn dead_letter(i: usize) -> DeadLetter {
    let body = Encoding::Json
        .encode(&TaskEnvelope::new(format!("task-{i}"), json!({ "n": i })))
        .unwrap();
    DeadLetter {
        id: "0-0".into(),
        agent_type: "e2e".into(),
        task_id: Some(format!("task-{i}")),
        workflow_id: None,
        stage: None,
        reason: DeadLetterReason::AttemptsExhausted,
        error: "boom".into(),
        attempts: 3,
        worker: "w".into(),
        failed_at_ms: 1,
        source_id: "1-0".into(),
        raw: vec![("body".into(), body), ("attempt".into(), b"3".to_vec())],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_replays_move_each_dead_letter_exactly_once() {
    const N: usize = 1000;
    let redis = TestRedis::start();
    let file = redis.dir().join("many.jsonl");
    let text: Vec<String> = (0..N)
        .map(|i| serde_json::to_string(&dead_letter(i)).unwrap())
        .collect();
    std::fs::write(&file, text.join("\n")).unwrap();
    ctl(&redis, &["dlq", "import", file.to_str().unwrap()])
        .await
        .ok();
    assert_eq!(xlen(&redis, &dlq_key("e2e")).await, N as u64);

    // No worker runs: every replayed task stays in the task stream to be
    // counted.
    let (a, b) = tokio::join!(
        ctl(&redis, &["dlq", "replay", "e2e", "--all", "--json"]),
        ctl(&redis, &["dlq", "replay", "e2e", "--all", "--json"]),
    );
    let (a, b) = (a.ok().json(), b.ok().json());
    let replayed = |r: &Value| -> Vec<String> {
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["outcome"] == "replayed")
            .map(|i| i["task_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (ra, rb) = (replayed(&a), replayed(&b));
    assert_eq!(a["replayed"].as_u64().unwrap() as usize, ra.len());
    assert_eq!(ra.len() + rb.len(), N, "a={} b={}", ra.len(), rb.len());
    let sa: HashSet<&String> = ra.iter().collect();
    let sb: HashSet<&String> = rb.iter().collect();
    assert!(sa.is_disjoint(&sb), "an entry replayed by both");
    assert_eq!(sa.len() + sb.len(), N);
    assert_eq!(xlen(&redis, &dlq_key("e2e")).await, 0);
    assert_eq!(xlen(&redis, &tasks_key("e2e")).await, N as u64);

    // Each task is in the stream once, with attempts reset.
    let mut c = conn(&redis).await;
    type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;
    let entries: Entries = redis::cmd("XRANGE")
        .arg(tasks_key("e2e"))
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut bodies = HashSet::new();
    for (_, fields) in &entries {
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("attempt").as_deref(), Some(&b"1"[..]));
        assert!(bodies.insert(get("body").unwrap()), "a task twice");
    }
    assert_eq!(bodies.len(), N);
}

/// Submits an `sdlc` workflow whose e2e stage fails until the lab is
/// healed, through agentctl; returns its id once it is blocked.
async fn submit_blocked(redis: &TestRedis) -> String {
    let input = r#"{"dead_letter":"e2e"}"#;
    let submitted = ctl(
        redis,
        &["workflow", "submit", "sdlc", "--input", input, "--json"],
    )
    .await
    .ok()
    .json();
    let id = submitted["id"].as_str().unwrap().to_owned();
    wait_until("workflow blocked", PATIENCE, || {
        let id = id.clone();
        async move {
            summaries(redis, &[id]).await[0]
                .as_ref()
                .is_some_and(|s| s.status == WorkflowStatus::Blocked)
        }
    })
    .await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_dead_letter_resumes_its_blocked_workflow() {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &SDLC);
    let o = InProcess::start(&redis, &[]).await;

    let id = submit_blocked(&redis).await;
    let shown = ctl(&redis, &["workflow", "get", &id]).await.ok();
    assert!(shown.stdout.contains("blocked"), "{shown:?}");
    assert!(shown.stdout.contains("dead_lettered"), "{shown:?}");
    let listed = ctl(
        &redis,
        &["workflow", "list", "--status", "blocked", "--json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(ids_of(&listed), vec![id.clone()]);

    // Find it from the terminal: the workflow's dead letter in e2e's DLQ.
    let dead = ctl(&redis, &["dlq", "list", "e2e", "--workflow", &id, "--json"])
        .await
        .ok()
        .json();
    let items = dead["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["stage"], "e2e");
    let dl = items[0]["id"].as_str().unwrap().to_owned();

    // Nothing to approve, cancel refused after the end: state conflicts
    // are exit 4, unknown stages exit 3.
    let r = ctl(&redis, &["workflow", "approve", &id, "e2e"]).await;
    assert_eq!(r.code, 4, "{r:?}");
    let r = ctl(&redis, &["workflow", "approve", &id, "nope"]).await;
    assert_eq!(r.code, 3, "{r:?}");

    // Watching a blocked workflow with a timeout gives up with exit 5.
    let r = ctl(&redis, &["workflow", "watch", &id, "--timeout", "300ms"]).await;
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stdout.contains("blocked on a dead letter"), "{r:?}");

    // Replayed before the cause is fixed, the task fails again: the
    // workflow is blocked again (not failed), on a new dead letter.
    let again = ctl(&redis, &["dlq", "replay", "e2e", &dl]).await.ok();
    assert!(again.stdout.contains("replayed 1 of 1"), "{again:?}");
    wait_until("dead-lettered again", PATIENCE, || async {
        let dead = ctl(&redis, &["dlq", "list", "e2e", "--workflow", &id, "--json"])
            .await
            .ok()
            .json();
        dead["items"].as_array().unwrap().len() == 1 && dead["items"][0]["id"] != dl.as_str()
    })
    .await;
    // The dead letter is written before the orchestrator applies its
    // result: wait for the workflow to be blocked again.
    wait_until("blocked again", PATIENCE, || async {
        let stuck = summaries(&redis, std::slice::from_ref(&id)).await;
        stuck[0].as_ref().unwrap().status == WorkflowStatus::Blocked
    })
    .await;
    let dl = ctl(&redis, &["dlq", "list", "e2e", "--workflow", &id, "--json"])
        .await
        .ok()
        .json()["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    agents.lab.healed.store(true, Ordering::SeqCst);
    let replayed = ctl(&redis, &["dlq", "replay", "e2e", &dl]).await.ok();
    assert!(replayed.stdout.contains("replayed 1 of 1"), "{replayed:?}");
    let watched = ctl(&redis, &["workflow", "watch", &id, "--timeout", "60s"]).await;
    assert_eq!(watched.code, 0, "{watched:?}");
    assert!(watched.stdout.contains("completed"), "{watched:?}");
    // The log shows both replays: each is recorded before its task moves.
    let kinds: Vec<String> = log(&redis, &id)
        .await
        .iter()
        .filter(|e| e.stage.as_deref() == Some("e2e"))
        .map(|e| e.kind.clone())
        .collect();
    assert_eq!(
        kinds,
        [
            "task_dead_lettered",
            "replayed",
            "task_dead_lettered",
            "replayed",
            "task_succeeded"
        ]
    );
    assert_eq!(xlen(&redis, &dlq_key("e2e")).await, 0);
    let log = log(&redis, &id).await;
    assert_log_completed_once(&id, &log, &SDLC);
    let e2e_runs: Vec<_> = agents
        .lab
        .runs()
        .into_iter()
        .filter(|r| r.workflow == id && r.stage == "e2e")
        .collect();
    assert_eq!(
        e2e_runs.len(),
        3 + 3 + 1,
        "three failed attempts, three more after the first replay, one after the second"
    );
    assert_eq!(e2e_runs.iter().filter(|r| r.ok).count(), 1);
    let r = ctl(&redis, &["workflow", "cancel", &id]).await;
    assert_eq!(r.code, 4, "nothing to cancel once completed: {r:?}");

    // submit --watch follows a workflow to its end, exit 0.
    let watched = ctl(&redis, &["workflow", "submit", "sdlc", "--watch"]).await;
    assert_eq!(watched.code, 0, "{watched:?}");
    assert!(watched.stdout.contains("✓ completed"), "{watched:?}");
    // ... and a failing one to exit 1.
    let failed = ctl(
        &redis,
        &[
            "workflow",
            "submit",
            "sdlc",
            "--input",
            r#"{"fail":"validation"}"#,
            "--watch",
            "--json",
        ],
    )
    .await;
    assert_eq!(failed.code, 1, "{failed:?}");
    assert_eq!(failed.json()["status"], "failed");
    o.shutdown().await;
    agents.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_get_a_clear_message_and_a_non_zero_exit() {
    let redis = TestRedis::start();
    let cases: &[(&[&str], i32, &str)] = &[
        (&[], 2, "Usage"),
        (&["dlq", "frob"], 2, "unrecognized subcommand"),
        (&["dlq", "replay", "e2e"], 2, "say which dead letters"),
        (
            &["dlq", "replay", "e2e", "1-0", "--all"],
            2,
            "say which dead letters",
        ),
        (
            &["dlq", "replay", "e2e", "not-an-id"],
            2,
            "not a dead-letter id",
        ),
        (
            &["dlq", "replay", "e2e", "--all", "--rate", "0"],
            2,
            "positive number",
        ),
        (
            &["dlq", "purge", "e2e", "--all", "--older-than", "1h"],
            2,
            "say which dead letters",
        ),
        (
            &["dlq", "purge", "e2e", "--older-than", "soon"],
            2,
            "invalid value",
        ),
        (&["dlq", "list", "e2e", "--limit", "0"], 2, "--limit"),
        (
            &["dlq", "list", "--error-contains", "x"],
            2,
            "need an agent type",
        ),
        (
            &["dlq", "list", "e2e", "--since", "yesterday"],
            2,
            "--since",
        ),
        (&["dlq", "list", "bad type!"], 2, "agent type"),
        (
            &["task", "enqueue", "e2e", "--input", "{"],
            2,
            "not valid JSON",
        ),
        (&["task", "enqueue", "e2e"], 2, "--input"),
        (
            &["workflow", "list", "--status", "nope"],
            2,
            "unknown status",
        ),
        (&["workflow", "get", "no/such"], 2, "workflow id"),
        (&["workflow", "get", "nope"], 3, "no workflow nope"),
        (&["workflow", "submit", "nope"], 3, "not found"),
        (
            &["dlq", "import", "/nonexistent/file.jsonl"],
            3,
            "no such file",
        ),
    ];
    for (args, code, says) in cases {
        let r = ctl(&redis, args).await;
        assert_eq!(r.code, *code, "agentctl {args:?}: {r:?}");
        assert!(
            r.stderr.to_lowercase().contains(&says.to_lowercase()),
            "agentctl {args:?} should say {says:?}: {r:?}"
        );
    }
    // --json errors are one JSON document too.
    let r = ctl(&redis, &["workflow", "get", "nope", "--json"]).await;
    assert_eq!(r.code, 3);
    assert_eq!(r.json()["error"]["exit_code"], 3);
    // Bad configuration: exit 64, as for every binary, the password never printed.
    for (url, ns, says) in [
        ("http://:hunter2@127.0.0.1:1", NS, "--redis-url"),
        (&redis.url()[..], "Bad NS", "namespace"),
    ] {
        let r = ctl_in(url, ns, &["streams"], None).await;
        assert_eq!(r.code, 64, "{r:?}");
        assert!(r.stderr.contains(says), "{r:?}");
        assert!(!r.stderr.contains("hunter2"), "{r:?}");
    }
    // Redis down: exit 69, and a password in the URL is never printed.
    let port = agent_sdk::testing::free_port();
    let url = format!("redis://:hunter2@127.0.0.1:{port}");
    let r = ctl_in(&url, NS, &["streams"], None).await;
    assert_eq!(r.code, 69, "{r:?}");
    assert!(r.stderr.contains("cannot reach Redis"), "{r:?}");
    assert!(
        !r.stderr.contains("hunter2") && !r.stdout.contains("hunter2"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_does_not_meet_the_dead_letters_it_causes() {
    // A replayed task that fails again is dead-lettered anew at the end of
    // the stream while the replay walks it; replaying those too would loop
    // for as long as the task keeps failing.
    let redis = TestRedis::start();
    let client = agent_sdk::Client::connect(&redis.url(), NS).await.unwrap();
    let (engine, _) = orchestrator::Engine::new(client.clone());
    let dlq = client.dead_letters();
    let e2e = agent_type("e2e");
    // More than one page of the walk (500), so it reads on after the
    // first dead letters came back.
    const N: u64 = 501;
    for i in 0..N as usize {
        dlq.import(&e2e, &dead_letter(i)).await.unwrap();
    }
    let mut sync = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut n = 1_000_000;
    let mut conn = conn(&redis).await;
    let report = orchestrator::ops::dlq::replay(
        &engine,
        &mut conn,
        &e2e,
        &orchestrator::ops::dlq::Selection::Matching(Default::default()),
        &Default::default(),
        |_| {
            // The replayed task "fails again" at once.
            assert!(n < 1_000_000 + 2 * N as usize, "the replay is looping");
            let mut cmd = redis::cmd("XADD");
            cmd.arg(dlq_key("e2e")).arg("*");
            for (k, v) in dead_letter(n).to_fields() {
                cmd.arg(k).arg(v);
            }
            let _: String = cmd.query(&mut sync).unwrap();
            n += 1;
        },
    )
    .await
    .unwrap();
    assert_eq!((report.matched, report.replayed, report.gone), (N, N, 0));
    assert_eq!(xlen(&redis, &tasks_key("e2e")).await, N);
    assert_eq!(
        xlen(&redis, &dlq_key("e2e")).await,
        N,
        "the new dead letters wait for the next replay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_ended_workflows_stay_unless_forced() {
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &SDLC);
    // An ended workflow's dead letters are deleted unless kept explicitly:
    // this orchestrator keeps them, and the abort goes through it.
    let o = InProcess::start(&redis, &["--keep-dead-letters"]).await;
    let id = submit_blocked(&redis).await;
    let r = orchestrator_server::testing::http()
        .post(o.api(&format!("/workflows/{id}/abort")))
        .json(&json!({ "reason": "given up" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    wait_ended(&redis, std::slice::from_ref(&id), PATIENCE).await;
    assert_eq!(xlen(&redis, &dlq_key("e2e")).await, 1);

    // Its task would run again for nothing: left in the DLQ, and said so.
    let dry = ctl(
        &redis,
        &["dlq", "replay", "e2e", "--all", "--dry-run", "--json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(dry["items"][0]["outcome"], "workflow_ended");
    let kept = ctl(&redis, &["dlq", "replay", "e2e", "--all", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(
        (
            kept["matched"].as_u64(),
            kept["replayed"].as_u64(),
            kept["skipped"].as_u64()
        ),
        (Some(1), Some(0), Some(1))
    );
    assert_eq!(xlen(&redis, &dlq_key("e2e")).await, 1);
    let before = agents.lab.runs().len();
    agents.lab.healed.store(true, Ordering::SeqCst);
    let forced = ctl(
        &redis,
        &["dlq", "replay", "e2e", "--all", "--force", "--json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(forced["replayed"], 1);
    assert_eq!(xlen(&redis, &dlq_key("e2e")).await, 0);
    wait_until("the forced task ran", PATIENCE, || async {
        agents.lab.runs().len() == before + 1
    })
    .await;
    // Its result changes nothing: the workflow stays failed.
    let ended = summaries(&redis, std::slice::from_ref(&id)).await;
    assert_eq!(ended[0].as_ref().unwrap().status, WorkflowStatus::Failed);
    o.shutdown().await;
    agents.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_cannot_be_replayed_does_not_stop_the_others() {
    let redis = TestRedis::start();
    let client = agent_sdk::Client::connect(&redis.url(), NS).await.unwrap();
    let e2e = agent_type("e2e");
    client
        .dead_letters()
        .import(&e2e, &dead_letter(0))
        .await
        .unwrap();
    // A dead letter without the original entry (written by hand, say):
    // nothing to rebuild the task from.
    let mut c = conn(&redis).await;
    let _: String = redis::cmd("XADD")
        .arg(dlq_key("e2e"))
        .arg("*")
        .arg("agent_type")
        .arg("e2e")
        .arg("reason")
        .arg("permanent")
        .arg("attempts")
        .arg(1)
        .arg("failed_at_ms")
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    client
        .dead_letters()
        .import(&e2e, &dead_letter(1))
        .await
        .unwrap();

    let r = ctl(&redis, &["dlq", "replay", "e2e", "--all", "--json"]).await;
    assert_eq!(r.code, 70, "{r:?}");
    let report = r.json();
    assert_eq!(
        (
            report["matched"].as_u64(),
            report["replayed"].as_u64(),
            report["failed"].as_u64()
        ),
        (Some(3), Some(2), Some(1))
    );
    let failed = &report["items"][1];
    assert_eq!(failed["outcome"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("no raw fields"),
        "{failed}"
    );
    assert_eq!(
        xlen(&redis, &dlq_key("e2e")).await,
        1,
        "only the bad one is left"
    );
    assert_eq!(xlen(&redis, &tasks_key("e2e")).await, 2);
    // And `dlq import` refuses such a dead letter in the first place.
    let file = redis.dir().join("rawless.jsonl");
    let mut bad = dead_letter(2);
    bad.raw.clear();
    std::fs::write(&file, serde_json::to_string(&bad).unwrap()).unwrap();
    let r = ctl(&redis, &["dlq", "import", file.to_str().unwrap()]).await;
    assert_eq!(r.code, 65, "{r:?}");
    assert!(r.stderr.contains("no raw fields"), "{r:?}");
    assert_eq!(xlen(&redis, &dlq_key("e2e")).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_reads_a_long_dlq_a_bounded_slice_at_a_time() {
    // 10,500 dead letters; only the last matches. A list call reads at most
    // 10,000 entries, so the first page is empty with a cursor, and a walk
    // (replay) still finds the one.
    const N: usize = 10_500;
    let redis = TestRedis::start();
    let mut c = conn(&redis).await;
    for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let mut d = dead_letter(*i);
            if *i == N - 1 {
                d.error = "the needle".into();
            }
            let cmd = pipe.cmd("XADD").arg(dlq_key("e2e")).arg("*");
            for (k, v) in d.to_fields() {
                cmd.arg(k).arg(v);
            }
            cmd.ignore();
        }
        let () = pipe.query_async(&mut c).await.unwrap();
    }
    let client = agent_sdk::Client::connect(&redis.url(), NS).await.unwrap();
    let filter = agent_sdk::DeadLetterFilter {
        error_contains: Some("needle".into()),
        limit: 10,
        ..Default::default()
    };
    let first = client
        .dead_letters()
        .list(&agent_type("e2e"), &filter)
        .await
        .unwrap();
    assert!(first.items.is_empty());
    let next = first.next.expect("a cursor to go on from");
    let second = client
        .dead_letters()
        .list(
            &agent_type("e2e"),
            &agent_sdk::DeadLetterFilter {
                after: Some(next),
                ..filter.clone()
            },
        )
        .await
        .unwrap();
    assert_eq!(second.items.len(), 1);
    assert_eq!(second.items[0].error, "the needle");

    let r = ctl(
        &redis,
        &[
            "dlq",
            "replay",
            "e2e",
            "--error-contains",
            "needle",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(
        (r["matched"].as_u64(), r["replayed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(xlen(&redis, &dlq_key("e2e")).await, (N - 1) as u64);
    assert_eq!(xlen(&redis, &tasks_key("e2e")).await, 1);
}
