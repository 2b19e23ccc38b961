//! Fans the `N:wfs:changes` pub/sub channel out to this process's live views
//! (SSE). Every orchestrator replica publishes its transitions there, so a
//! client connected to any replica sees every workflow move. A message lost
//! while reconnecting costs a view a refresh, never state: views re-read the
//! event log, which is the source of truth.

use crate::store::Change;
use agent_sdk::connection::redis_backoff;
use agent_sdk::shutdown::pause;
use futures::StreamExt;
use std::sync::Arc;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Subscribes and forwards until `stop`, reconnecting with backoff.
pub async fn run(
    client: redis::Client,
    channel: String,
    tx: broadcast::Sender<Arc<Change>>,
    stop: CancellationToken,
) {
    let mut backoff = redis_backoff();
    while !stop.is_cancelled() {
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to workflow changes; retrying");
                if pause(&stop, backoff.next().unwrap_or_default()).await {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = pubsub.subscribe(&channel).await {
            tracing::warn!(error = %e, "cannot subscribe to workflow changes; retrying");
            if pause(&stop, backoff.next().unwrap_or_default()).await {
                return;
            }
            continue;
        }
        backoff = redis_backoff();
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                m = messages.next() => match m {
                    Some(m) => {
                        let payload: Vec<u8> = m.get_payload_bytes().to_vec();
                        match serde_json::from_slice::<Change>(&payload) {
                            // No receivers is fine: nobody is watching.
                            Ok(c) => { let _ = tx.send(Arc::new(c)); }
                            Err(e) => tracing::debug!(error = %e, "ignoring an unreadable change message"),
                        }
                    }
                    None => {
                        tracing::warn!("workflow change subscription dropped; resubscribing");
                        break;
                    }
                },
            }
        }
    }
}
