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
