//! `/agents`: live agent instances, and the agent types definitions need.

use super::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_list_shows_live_ones_and_warns_of_needed_types_none_serves() {
    let api = Api::start().await;
    let agents = Agents::start(&api.redis, &["alpha"]);
    // `alpha` live and needed by nothing; `scaffold` needed by sdlc, none live.
    wait_until("agent registered", PATIENCE, || async {
        let v: Value = api.get("/agents").await.json().await.unwrap();
        let types = v["types"].as_array().unwrap();
        let alpha = types.iter().find(|t| t["agent_type"] == "alpha");
        let scaffold = types.iter().find(|t| t["agent_type"] == "scaffold");
        alpha.is_some_and(|a| a["live"] == 1 && a["warning"] == false)
            && scaffold.is_some_and(|s| {
                s["live"] == 0 && s["warning"] == true && s["needed_by"] == json!(["sdlc"])
            })
            && v["agents"][0]["agent_type"] == "alpha"
    })
    .await;
    api.shutdown().await;
    agents.shutdown().await;
}

/// Reports progress once, then holds its task until released.
struct Slowpoke {
    release: std::sync::Arc<std::sync::atomic::AtomicBool>,
    runs: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl agent_sdk::Agent for Slowpoke {
    type Input = Value;
    type Output = Value;

    async fn handle(
        &self,
        ctx: &agent_sdk::TaskContext,
        _input: Value,
    ) -> Result<Value, agent_sdk::AgentError> {
        use std::sync::atomic::Ordering;
        self.runs.fetch_add(1, Ordering::SeqCst);
        ctx.progress(0.42, "<script>alert(1)</script> half way");
        while !self.release.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(json!({ "done": true }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_stage_shows_its_progress_and_a_stuck_agent_is_wedged_everywhere() {
    use futures::StreamExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let api = Api::start_with(&["--wedged-after", "1s"]).await;
    let r = api
        .define("name: slow\nstages:\n  - name: work\n    agent: slowpoke\n")
        .await;
    assert_eq!(r.status(), 201);
    let release = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU32::new(0));
    let worker = agent_sdk::testing::RunningWorker::spawn(
        Slowpoke {
            release: release.clone(),
            runs: runs.clone(),
        },
        "slowpoke",
        // One slot: while its task is held it cannot read, so it goes quiet
        // (with free slots its empty reads would say it is alive and well).
        agent_sdk::RuntimeConfig {
            concurrency: 1,
            ..agent_sdk::testing::short_timings(&api.redis, NS, "slowpoke")
        },
    );
    let id = api.create("slow", json!({})).await;
    // The API: a progress object on the running stage.
    let path = format!("/workflows/{id}");
    wait_until("progress on the running stage", PATIENCE, || async {
        let v = api.get_json(&path, 200).await;
        v["stage_details"][0]["progress"]["fraction"].as_f64() == Some(0.42)
    })
    .await;
    let v = api.get_json(&path, 200).await;
    let p = &v["stage_details"][0]["progress"];
    assert_eq!(p["message"], "<script>alert(1)</script> half way", "{v}");
    assert_eq!(p["instance"], worker.instance_id.as_str(), "{v}");
    assert!(p["at_ms"].as_u64().is_some(), "{v}");
    // The stage's reason says where it runs, with the same progress.
    let why = &v["why"][0]["reason"];
    assert_eq!(why["kind"], "running", "{v}");
    assert_eq!(why["instance"], worker.instance_id.as_str(), "{v}");
    assert_eq!(
        why["progress"]["fraction"]
            .as_f64()
            .map(|f| (f * 100.0).round()),
        Some(42.0),
        "{v}"
    );
    assert_eq!(why["progress"]["message"], p["message"], "{v}");
    // Its event stream: a `progress` event.
    let resp = api
        .http
        .get(api.url(&format!("/workflows/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    // Until the whole `progress` event has arrived.
    while !seen
        .split_once("event: progress")
        .is_some_and(|(_, rest)| rest.contains("\n\n"))
    {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("no progress event")
            .expect("stream ended")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        seen.contains("half way") && seen.contains("\"fraction\":0.42"),
        "{seen}"
    );
    drop(stream);

    // No read, commit or progress for over 1 s while it holds a task: wedged,
    // in /agents and in /metrics.
    wait_until("slowpoke wedged", PATIENCE, || async {
        let v = api.get_json("/agents?type=slowpoke", 200).await;
        v["agents"][0]["state"] == "wedged"
    })
    .await;
    let v = api.get_json("/agents", 200).await;
    let t = v["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["agent_type"] == "slowpoke")
        .unwrap()
        .clone();
    assert_eq!(t["summary"]["wedged"], 1, "{v}");
    assert_eq!(t["summary"]["live"], 1, "{v}");
    let m = api
        .http
        .get(format!("{}/metrics", api.o.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "agentic_agents{agent_type=\"slowpoke\",state=\"wedged\"} 1",
        "agentic_agents{agent_type=\"slowpoke\",state=\"gone\"} 0",
        "agentic_oldest_waiting_age_seconds{agent_type=\"slowpoke\"} 0",
        "agentic_oldest_pending_age_seconds{agent_type=\"slowpoke\"}",
    ] {
        assert!(m.contains(needle), "{needle} missing from:\n{m}");
    }
    let v = api.get_json("/streams", 200).await;
    let s = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["agent_type"] == "slowpoke")
        .unwrap()
        .clone();
    assert!(s["oldest_pending_age_ms"].as_u64().is_some(), "{s}");
    assert!(s["oldest_waiting_age_ms"].is_null(), "{s}");
    assert_eq!(s["consumers"], 1, "{s}");
    // A cursor names its type and wins over `type`.
    let v = api
        .get_json("/agents?type=other&cursor=slowpoke:0&limit=1", 200)
        .await;
    let listed: Vec<&str> = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_type"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["slowpoke"], "{v}");
    // Bad paging input is a 400.
    let r = api.get("/agents?cursor=5").await;
    assert_eq!(r.status(), 400);
    let r = api.get("/agents?type=slowpoke&cursor=slowpoke:x1").await;
    assert_eq!(r.status(), 400);
    let r = api.get("/agents?limit=0").await;
    assert_eq!(r.status(), 400);

    // Released: the workflow completes, its stage ran once, and the
    // progress is gone with the task.
    release.store(true, Ordering::SeqCst);
    wait_until("workflow completed", PATIENCE, || async {
        api.get_json(&path, 200).await["status"] == "completed"
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let v = api.get_json(&path, 200).await;
    assert!(v["stage_details"][0]["progress"].is_null(), "{v}");
    worker.shutdown().await;
    api.shutdown().await;
}
