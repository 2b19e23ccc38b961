//! The heartbeat: this instance's record in the registry.
//!
//! The hash `N:registry:agent:<id>` expires three beats after the last one, so
//! a killed process disappears by itself; a clean shutdown deletes it at once.

use super::{Inflight, Settings};
use crate::clock::now_ms;
use crate::connection::{Conn, Connector};
use schemas::{AgentRecord, AgentStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Ready or draining, shared with the worker.
#[derive(Debug, Clone, Default)]
pub(crate) struct Status {
    draining: Arc<AtomicBool>,
    changed: Arc<tokio::sync::Notify>,
}

impl Status {
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.changed.notify_one();
    }
}

pub(crate) async fn run(
    s: Arc<Settings>,
    inflight: Arc<Inflight>,
    status: Status,
    mut conn: Conn,
    stop: CancellationToken,
) {
    let started_at_ms = now_ms();
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let Ok(key) = s.keys.registry_agent(&s.consumer) else {
        return;
    };
    let ttl = s.cfg.heartbeat * 3;
    loop {
        let record = AgentRecord {
            instance_id: s.consumer.to_string(),
            agent_type: s.agent_type.to_string(),
            version: s.version.clone(),
            host: host.clone(),
            pid: std::process::id(),
            started_at_ms,
            last_seen_ms: now_ms(),
            status: if status.draining.load(Ordering::Relaxed) {
                AgentStatus::Draining
            } else {
                AgentStatus::Ready
            },
            concurrency: s.cfg.concurrency as u32,
            in_flight: inflight.len() as u32,
            processed: inflight.processed.load(Ordering::Relaxed),
            failed: inflight.failed.load(Ordering::Relaxed),
        };
        let Some(mut c) = conn.get(&stop).await else {
            return;
        };
        let mut pipe = redis::pipe();
        pipe.hset_multiple(&key, &record.to_fields())
            .ignore()
            .pexpire(&key, ttl.as_millis() as i64)
            .ignore()
            .zadd(s.keys.registry_agents(), &*s.consumer, record.last_seen_ms)
            .ignore();
        match pipe.query_async::<()>(&mut c).await {
            Ok(()) => conn.succeeded(),
            Err(e) => {
                if !conn.failed(&e, &stop).await {
                    return;
                }
                continue;
            }
        }
        tokio::select! {
            // Stop first: a ready timer must not start another round after it.
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(s.cfg.heartbeat) => {}
            _ = status.changed.notified() => {}
        }
    }
}

/// Removes this instance from the registry, and its consumer from the group
/// when it holds nothing (a consumer with pending entries must stay, or they
/// could never be claimed).
pub(crate) async fn deregister(s: &Settings, connector: &Connector) {
    let Ok(mut c) = connector.connect(Duration::from_secs(2)).await else {
        tracing::warn!("cannot reach redis to deregister; the registry record expires by itself");
        return;
    };
    let Ok(key) = s.keys.registry_agent(&s.consumer) else {
        return;
    };
    let mut pipe = redis::pipe();
    pipe.del(&key)
        .ignore()
        .zrem(s.keys.registry_agents(), &*s.consumer)
        .ignore();
    if let Err(e) = pipe.query_async::<()>(&mut c).await {
        tracing::warn!(error = %e, "cannot deregister; the registry record expires by itself");
    }
    let _ =
        crate::stream::leave_group(&mut c, &s.tasks_key, schemas::WORKERS_GROUP, &s.consumer).await;
}
