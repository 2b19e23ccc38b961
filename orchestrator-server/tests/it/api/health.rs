//! `/health`, `/ready` and `/metrics`, outside `/api/v1`.

use super::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probes_answer_ok_and_ready_names_the_results_streams() {
    let api = Api::start().await;
    let probe = |p: &str| api.http.get(format!("{}{p}", api.o.url)).send();
    let (s, v) = body(probe("/health").await.unwrap()).await;
    assert_eq!((s.as_u16(), v["status"].as_str()), (200, Some("ok")));
    let (s, v) = body(probe("/ready").await.unwrap()).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["results_streams"]
            .as_array()
            .unwrap()
            .contains(&json!("scaffold"))
    );
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_workflows_and_each_watched_types_queues() {
    let api = Api::start().await;
    // Watches `alpha`; its one workflow awaits its approval.
    api.define_gated().await;
    api.create("gated", json!({})).await;
    let r = api.http.get(format!("{}/metrics", api.o.url)).send();
    let m = r.await.unwrap().text().await.unwrap();
    for needle in [
        "orchestrator_workflows{status=\"awaiting_approval\"} 1",
        "agentic_backlog{agent_type=\"scaffold\"}",
        "agentic_dlq_size{agent_type=\"alpha\"} 0",
        "orchestrator_workflows_stored 1",
    ] {
        assert!(m.contains(needle), "{needle} missing from:\n{m}");
    }
    api.shutdown().await;
}
