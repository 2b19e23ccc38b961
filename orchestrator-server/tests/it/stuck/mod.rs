//! "Why is this stuck?": each reason a non-terminal stage can give, made to
//! happen for real and read from `GET /workflows/{id}`; the definition
//! warning for agent types never seen; the stage-replay route behind a long
//! dead-letter queue.

mod deep;
mod replay;
mod warnings;

use crate::common::*;
use serde_json::Value;
use std::time::Duration;

pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

pub(crate) async fn register(http: &reqwest::Client, o: &InProcess, yaml: &str) -> Value {
    let r = http
        .post(o.api("/definitions"))
        .header("content-type", "application/yaml")
        .body(yaml.to_owned())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    r.json().await.unwrap()
}

/// Waits until workflow `id` has `status`.
pub(crate) async fn wait_status(
    redis: &TestRedis,
    id: &str,
    status: orchestrator::machine::WorkflowStatus,
) {
    wait_until(&format!("workflow {id} {status:?}"), PATIENCE, || {
        let id = id.to_owned();
        async move {
            summaries(redis, &[id]).await[0]
                .as_ref()
                .is_some_and(|s| s.status == status)
        }
    })
    .await;
}
