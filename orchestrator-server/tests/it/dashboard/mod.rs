//! The dashboard at `/`, driven in a real headless chromium through
//! chromedriver: the token form, the overview following a running workflow
//! live (fetch-based SSE with the bearer token), a dead-lettered task in the
//! DLQ view, and its replay from the page resuming the blocked workflow to
//! completion — with exact counts in Redis and in the agents afterwards;
//! and a token of each role signing in, shown only what its role may do.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/test.sh`
//! installs them); without them the test fails, it never skips. A
//! screenshot of every view is saved under `target/dashboard-screenshots/`.

mod roles;

use crate::common::{
    ADMIN, Agents, InProcess, agent_type, free_port, http, keys, wait_ended, xlen,
};
use agent_sdk::schemas::{DeadLetter, DeadLetterReason};
use agent_sdk::testing::TestRedis;
use fantoccini::{Client, ClientBuilder, Locator};
use orchestrator::machine::WorkflowStatus;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The token the main test signs in with (the test kit's admin).
const TOKEN: &str = ADMIN;
/// How long any one thing may take to show on the page.
const PATIENCE: Duration = Duration::from_secs(30);

/// A small DAG, so the page has a real graph to draw: `validation` and `e2e`
/// run in parallel after `scaffold`; `e2e` is dead-lettered at its first
/// failure.
const PIPELINE: &str = r#"
name: pipeline
description: dashboard test pipeline
stages:
  - name: scaffold
    agent: scaffold
  - name: validation
    agent: validation
    depends_on: [scaffold]
  - name: e2e
    agent: e2e
    depends_on: [scaffold]
    max_attempts: 1
  - name: deployment
    agent: deployment
    depends_on: [validation, e2e]
"#;
const AGENTS: [&str; 4] = ["scaffold", "validation", "e2e", "deployment"];

/// chromedriver as a child in a process group of its own: dropping it (also
/// on a panic) kills chromedriver and the browser it started, by group id.
struct Driver {
    child: Child,
    url: String,
    profile: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Self {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: run scripts/test.sh, which installs Debian's chromium and \
                 chromium-driver (or: apt-get install chromium chromium-driver)"
            );
        }
        let profile = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = profile.path().join("chromedriver.log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn chromedriver");
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profile,
        };
        let http = reqwest::Client::new();
        crate::common::wait_until("chromedriver /status", PATIENCE, || {
            let (http, url) = (&http, &driver.url);
            async move {
                match http.get(format!("{url}/status")).send().await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .is_ok_and(|v| v["value"]["ready"] == true),
                    Err(_) => false,
                }
            }
        })
        .await;
        driver
    }

    /// A browser session: headless chromium at 1366 px wide, fresh profile.
    async fn browser(&self) -> Client {
        let profile = self.profile.path().join("profile");
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1366,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("start a chromium session through chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the chromium it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `target/dashboard-screenshots/`.
fn screenshot_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if Path::new(&t).is_absolute() => PathBuf::from(t),
        Some(t) => root.join(t),
        None => root.join("target"),
    };
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Page {
    c: Client,
    shots: Vec<PathBuf>,
}

impl Page {
    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.c.execute(script, args).await.expect("run a script")
    }

    /// Polls `script` until `ok` holds for its value; on timeout saves a
    /// screenshot and fails with the page's text.
    async fn wait_js(
        &mut self,
        what: &str,
        script: &str,
        args: Vec<Value>,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let v = self.js(script, args.clone()).await;
            if ok(&v) {
                return v;
            }
            if Instant::now() > deadline {
                self.shot("failure").await;
                let text = self.js("return document.body.innerText", vec![]).await;
                panic!(
                    "timed out after {PATIENCE:?} waiting for {what}; last value {v}; page:\n{}",
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `selector` matches an element.
    async fn wait_for(&mut self, what: &str, selector: &str) {
        self.wait_js(
            what,
            "return document.querySelector(arguments[0]) !== null",
            vec![json!(selector)],
            |v| v == &json!(true),
        )
        .await;
    }

    /// The text of the first element matching `selector`, or null.
    async fn text(&self, selector: &str) -> Value {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null",
            vec![json!(selector)],
        )
        .await
    }

    /// Clicks `selector` like a person (through WebDriver), retrying while
    /// the view re-renders under it.
    async fn click(&mut self, selector: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let r = match self.c.find(Locator::Css(selector)).await {
                Ok(e) => e.click().await.map(|_| ()),
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    self.shot("failure").await;
                    panic!("cannot click {selector}: {e}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn shot(&mut self, name: &str) {
        let png = self.c.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        println!("screenshot {name}: {}", path.display());
        self.shots.push(path);
    }
}

/// Status and progress of a workflow's row on the overview.
const OVERVIEW_ROW: &str = r#"
const row = document.querySelector('[data-testid="ov-wf-' + arguments[0] + '"]');
if (!row) return null;
const s = row.querySelector('[data-testid="wf-status"]');
const p = row.querySelector('[data-testid="wf-progress"]');
const n = row.querySelector('[data-testid="wf-now"]');
return [s && s.getAttribute('data-status'), p && Number(p.getAttribute('data-progress')), n && n.textContent];
"#;

async fn xlen_dlq(redis: &TestRedis, agent: &str) -> u64 {
    xlen(redis, &keys().dlq(&agent_type(agent))).await
}

async fn create(http: &reqwest::Client, o: &InProcess, input: Value) -> String {
    let r = http
        .post(o.api("/workflows"))
        .json(&json!({ "definition": "pipeline", "input": input }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_page_shows_api_text_as_text_only() {
    // Dead-letter errors and payloads are attacker-controlled: the page never
    // turns API data into markup.
    let page = include_str!("../../../src/api/dashboard.html");
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
    ] {
        assert!(!page.contains(sink), "the dashboard uses {sink}");
    }
    assert!(
        !page.contains("src=\"http"),
        "the dashboard loads nothing from elsewhere"
    );
    assert!(
        !page.contains("href=\"http"),
        "the dashboard links nothing from elsewhere"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_follows_a_workflow_live_and_replays_a_dead_letter() {
    let started = Instant::now();
    let driver = Driver::start().await;
    let redis = TestRedis::start();
    let agents = Agents::start(&redis, &AGENTS);
    let o = InProcess::start(&redis, &[]).await;
    let http = http();
    let r = http
        .post(o.api("/definitions"))
        .header("content-type", "application/yaml")
        .body(PIPELINE)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    // The page itself is public; the API behind it is not.
    let r = reqwest::get(format!("{}/", o.url)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let r = reqwest::get(o.api("/overview")).await.unwrap();
    assert_eq!(r.status(), 401);

    let mut page = Page {
        c: driver.browser().await,
        shots: Vec::new(),
    };
    page.c.goto(&format!("{}/#/", o.url)).await.unwrap();

    // 1. The token form, then the overview with the live stream connected
    //    (fetch-based SSE carrying the token).
    page.wait_for("the token form", "[data-testid=token-form]")
        .await;
    page.shot("token").await;
    page.c
        .find(Locator::Css("[data-testid=token-input]"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    page.click("[data-testid=token-submit]").await;
    page.wait_for(
        "the overview",
        "[data-testid=view-overview] [data-testid=ov-count-running]",
    )
    .await;
    page.wait_js(
        "the live indicator",
        "return document.querySelector('[data-testid=live]').textContent",
        vec![],
        |v| {
            v.as_str()
                .is_some_and(|s| s.contains("live") && !s.contains("reconnecting"))
        },
    )
    .await;
    // The memory panel: used_memory, and that the test Redis has no maxmemory.
    page.wait_js(
        "the memory panel",
        "const e = document.querySelector('[data-testid=ov-memory-used]'); return e ? e.textContent : ''",
        vec![],
        |v| v.as_str().is_some_and(|s| s.starts_with("used ") && s.contains("no maxmemory set")),
    )
    .await;
    assert_eq!(
        page.js("return sessionStorage.getItem('agentic.api-token')", vec![])
            .await,
        json!(TOKEN)
    );
    // Gone after a reload: everything below happens in this one page.
    page.js("window.__sameDocument = 'yes'; return null", vec![])
        .await;

    // Two quick workflows first, so the overview has some history.
    let mut quick = Vec::new();
    for _ in 0..2 {
        quick.push(create(&http, &o, json!({})).await);
    }
    wait_ended(&redis, &quick, PATIENCE).await;

    // 2. A workflow started now shows up on the overview and advances there
    //    live: every stage sleeps, so each step is seen on its own.
    let sleep = json!({ "scaffold": 1200, "validation": 1200, "e2e": 1200, "deployment": 1200 });
    let live_id = create(&http, &o, json!({ "sleep_ms": sleep })).await;
    let mut seen: Vec<(String, u64)> = Vec::new();
    let mut shot_running = false;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let v = page.js(OVERVIEW_ROW, vec![json!(live_id)]).await;
        if let (Some(status), Some(progress)) = (v[0].as_str(), v[1].as_u64()) {
            let now = (status.to_owned(), progress);
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            // The screenshot once the row agrees with itself (the stages
            // running now are past scaffold).
            let now_cell = v[2].as_str().unwrap_or_default();
            if !shot_running
                && status == "running"
                && progress > 0
                && !now_cell.contains("scaffold")
                && now_cell.contains('▶')
            {
                shot_running = true;
                page.shot("overview").await;
            }
            if status == "completed" {
                if !shot_running {
                    // A very slow machine: the screenshot shows it ended.
                    page.shot("overview").await;
                }
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the overview did not follow workflow {live_id} to completion; saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let progresses: Vec<u64> = seen.iter().map(|(_, p)| *p).collect();
    assert!(
        progresses.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {seen:?}"
    );
    let between = seen
        .iter()
        .filter(|(s, p)| s == "running" && *p > 0 && *p < 100)
        .count();
    assert!(
        between >= 2,
        "expected the overview to show at least two steps in between, saw {seen:?}"
    );
    assert_eq!(seen.last(), Some(&("completed".to_owned(), 100)));

    // 3. A workflow whose e2e stage is dead-lettered: blocked.
    let blocked_id = create(&http, &o, json!({ "dead_letter": "e2e" })).await;
    page.wait_js(
        "the blocked workflow on the overview",
        OVERVIEW_ROW,
        vec![json!(blocked_id)],
        |v| v[0] == "blocked",
    )
    .await;
    page.wait_js(
        "the blocked count",
        "const e = document.querySelector('[data-testid=ov-count-blocked]'); return e && e.getAttribute('data-count')",
        vec![],
        |v| v == "1",
    )
    .await;

    // The workflow list.
    page.click("[data-testid=nav-workflows]").await;
    for (id, status) in [(&live_id, "completed"), (&blocked_id, "blocked")] {
        page.wait_js(
            "the workflow list",
            "const r = document.querySelector('[data-testid=\"wf-row-' + arguments[0] + '\"] [data-testid=wf-status]'); return r && r.getAttribute('data-status')",
            vec![json!(id)],
            |v| v == status,
        )
        .await;
    }
    page.shot("workflows").await;

    // The blocked workflow's detail: the graph, the dead-lettered stage with
    // its error, the event log from the stream.
    page.click(&format!("[data-testid=\"wf-row-{blocked_id}\"] a"))
        .await;
    page.wait_js(
        "the blocked workflow's detail",
        "const s = document.querySelector('[data-testid=view-workflow] [data-testid=wf-status]'); \
         const e = document.querySelector('[data-testid=stage-e2e]'); \
         const g = document.querySelector('[data-testid=\"graph-stage-e2e\"]'); \
         return [s && s.getAttribute('data-status'), e && e.getAttribute('data-status'), g && g.getAttribute('data-status'), \
                 document.querySelectorAll('[data-testid=wf-log] tr[data-testid^=log-]').length]",
        vec![],
        |v| v[0] == "blocked" && v[1] == "dead_lettered" && v[2] == "dead_lettered" && v[3].as_u64() >= Some(3),
    )
    .await;
    let error = page
        .text("[data-testid=stage-e2e] [data-testid=stage-error]")
        .await;
    assert!(
        error
            .as_str()
            .is_some_and(|e| e.contains("broken until healed")),
        "{error}"
    );
    // Why it is stuck, with the command that replays it.
    let why = page
        .text("[data-testid=stage-e2e] [data-testid=stage-why]")
        .await;
    assert!(
        why.as_str()
            .is_some_and(|w| w.contains("dead-lettered") && w.contains("agentctl dlq replay e2e ")),
        "{why}"
    );
    page.shot("workflow-detail").await;

    // Agents.
    page.click("[data-testid=nav-agents]").await;
    page.wait_js(
        "four ready agents",
        "return [...document.querySelectorAll('[data-testid=ag-instances] [data-testid=ag-status]')].map(e => e.getAttribute('data-status'))",
        vec![],
        |v| v.as_array().is_some_and(|a| a.len() == AGENTS.len() && a.iter().all(|s| s == "ready")),
    )
    .await;
    page.shot("agents").await;

    // 4. The DLQ view: exactly one dead letter, of e2e.
    assert_eq!(xlen_dlq(&redis, "e2e").await, 1);
    page.click("[data-testid=nav-dlq]").await;
    let counts = page
        .wait_js(
            "the DLQ queues",
            "return Object.fromEntries([...document.querySelectorAll('[data-testid^=dlq-queue-]')].map(r => [r.getAttribute('data-testid').slice(10), Number(r.getAttribute('data-count'))]))",
            vec![],
            |v| v["e2e"] == 1,
        )
        .await;
    let counts: BTreeMap<String, u64> = serde_json::from_value(counts).unwrap();
    assert_eq!(counts.values().sum::<u64>(), 1, "{counts:?}");
    page.shot("dlq").await;
    page.click("[data-testid=dlq-queue-e2e] [data-testid=dlq-open]")
        .await;
    let rows = page
        .wait_js(
            "the e2e dead letters",
            "return [...document.querySelectorAll('[data-testid=dlq-items] tr[data-testid^=dlq-row-]')].map(r => r.getAttribute('data-task-id'))",
            vec![],
            |v| v.as_array().is_some_and(|a| !a.is_empty()),
        )
        .await;
    assert_eq!(rows, json!([format!("{blocked_id}:e2e:1")]));
    page.shot("dlq-list").await;
    page.click("[data-testid=dlq-items] [data-testid=dlq-show]")
        .await;
    page.wait_for("the dead letter in full", "[data-testid=dlq-envelope]")
        .await;
    let shown = page.text("[data-testid=dlq-entry-error]").await;
    assert!(
        shown
            .as_str()
            .is_some_and(|e| e.contains("broken until healed")),
        "{shown}"
    );
    let envelope = page.text("[data-testid=dlq-envelope]").await;
    assert!(
        envelope.as_str().is_some_and(|e| e.contains(&blocked_id)),
        "{envelope}"
    );
    page.shot("dlq-entry").await;

    // 5. Fix the cause, press replay: the dead letter is gone, the workflow
    //    resumes and completes.
    agents.lab.healed.store(true, Ordering::SeqCst);
    page.click("[data-testid=view-dlq-entry] [data-testid=dlq-replay]")
        .await;
    page.wait_for(
        "the emptied e2e queue",
        "[data-testid=view-dlq-type] [data-testid=dlq-empty]",
    )
    .await;
    let flash = page
        .wait_js(
            "the replay report",
            "return [...document.querySelectorAll('[data-testid=flash-msg]')].map(e => e.textContent).join(' | ')",
            vec![],
            |v| v.as_str().is_some_and(|s| s.contains("Replayed")),
        )
        .await;
    assert!(
        flash.as_str().unwrap().contains("Replayed 1 of 1"),
        "{flash}"
    );
    assert_eq!(xlen_dlq(&redis, "e2e").await, 0);
    page.click("[data-testid=nav-dlq]").await;
    page.wait_js(
        "the e2e queue at 0",
        "const r = document.querySelector('[data-testid=dlq-queue-e2e]'); return r && Number(r.getAttribute('data-count'))",
        vec![],
        |v| v == 0,
    )
    .await;
    page.js(
        "location.hash = '#/workflows/' + arguments[0]; return null",
        vec![json!(blocked_id)],
    )
    .await;
    page.wait_js(
        "the replayed workflow completed",
        "const s = document.querySelector('[data-testid=view-workflow] [data-testid=wf-status]'); \
         const p = document.querySelector('[data-testid=view-workflow] [data-testid=wf-progress]'); \
         return [s && s.getAttribute('data-status'), p && Number(p.getAttribute('data-progress'))]",
        vec![],
        |v| v[0] == "completed" && v[1] == 100,
    )
    .await;
    page.wait_js(
        "the end of the event stream",
        "return document.querySelector('[data-testid=wf-stream]').textContent",
        vec![],
        |v| v.as_str().is_some_and(|s| s.contains("ended")),
    )
    .await;
    page.shot("workflow-completed").await;
    let ended = wait_ended(&redis, std::slice::from_ref(&blocked_id), PATIENCE).await;
    assert_eq!(ended[0].status, WorkflowStatus::Completed);

    // Never reloaded: the same document all along.
    assert_eq!(
        page.js("return window.__sameDocument || null", vec![])
            .await,
        json!("yes")
    );

    // Exact counts: the live workflow ran each stage once; the replayed one
    // ran e2e twice (failed, then replayed, with the same task id) and every
    // other stage once; nothing is left dead-lettered.
    let runs = agents.lab.runs();
    let mut by: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    for r in &runs {
        let e = by.entry((r.workflow.clone(), r.stage.clone())).or_default();
        e.0 += 1;
        e.1 += usize::from(r.ok);
    }
    for stage in AGENTS {
        for id in quick.iter().chain([&live_id]) {
            assert_eq!(by[&(id.clone(), stage.to_owned())], (1, 1), "{id} {stage}");
        }
        let want = if stage == "e2e" { (2, 1) } else { (1, 1) };
        assert_eq!(
            by[&(blocked_id.clone(), stage.to_owned())],
            want,
            "{blocked_id} {stage}"
        );
    }
    assert_eq!(runs.len(), 17, "{runs:#?}");
    let e2e: Vec<_> = runs
        .iter()
        .filter(|r| r.workflow == blocked_id && r.stage == "e2e")
        .collect();
    assert_eq!(e2e[0].task_id, e2e[1].task_id);
    assert_eq!(xlen_dlq(&redis, "e2e").await, 0);
    for a in AGENTS {
        assert_eq!(xlen_dlq(&redis, a).await, 0, "{a}");
    }

    // A dead letter's text is shown as text: markup in it is never parsed
    // (and the page's policy runs only its own script, by hash).
    let hostile = r#"<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>"#;
    let client = agent_sdk::Client::connect(&redis.url(), crate::common::NS)
        .await
        .unwrap();
    client
        .dead_letters()
        .import(
            &agent_type("hostile"),
            &DeadLetter {
                id: "0-0".into(),
                agent_type: "hostile".into(),
                task_id: Some("t-hostile".into()),
                workflow_id: None,
                stage: None,
                reason: DeadLetterReason::Permanent,
                error: hostile.into(),
                attempts: 1,
                worker: hostile.into(),
                failed_at_ms: 1,
                source_id: "1-0".into(),
                raw: vec![("body".into(), hostile.as_bytes().to_vec())],
            },
        )
        .await
        .unwrap();
    page.c
        .goto(&format!("{}/#/dlq/hostile", o.url))
        .await
        .unwrap();
    page.wait_js(
        "the hostile dead letter, as text",
        "return document.body.innerText.includes(arguments[0])",
        vec![json!(hostile)],
        |v| v == &json!(true),
    )
    .await;
    let parsed = page
        .js(
            "return [document.querySelectorAll('img').length, \
             document.querySelectorAll('script').length, typeof window.__pwned]",
            vec![],
        )
        .await;
    assert_eq!(
        parsed,
        json!([0, 1, "undefined"]),
        "markup in a dead letter ran"
    );

    assert_eq!(page.shots.len(), 9);
    page.c.close().await.unwrap();
    o.shutdown().await;
    agents.shutdown().await;
    drop(driver);
    println!("dashboard test took {:?}", started.elapsed());
}
