//! Per agent type: its queues at a glance (`agentctl streams`, `GET
//! /streams`, the dashboard), and which agent types there are.

use crate::Result;
use agent_sdk::schemas::{AgentType, EntryId, Keys, WORKERS_GROUP};
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Every agent type with a task, result or DLQ stream in the namespace,
/// sorted. Found with `SCAN ... TYPE stream`, so it costs a walk of the
/// keyspace: for operators, not for a hot path.
pub async fn agent_types<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
) -> Result<Vec<AgentType>> {
    let pattern = keys.agent_keys_pattern();
    let mut found = BTreeSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .arg("TYPE")
            .arg("stream")
            .query_async(conn)
            .await?;
        found.extend(batch.iter().filter_map(|k| keys.agent_type_of(k)));
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut types: Vec<AgentType> = found.into_iter().collect();
    types.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(types)
}

/// One agent type's queues, as `agentctl streams` and `GET /streams` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct StreamStats {
    /// The agent type.
    pub agent_type: String,
    /// Entries in the task stream (read or not; acknowledged ones are deleted).
    pub backlog: u64,
    /// Delivered to a worker and not yet acknowledged.
    pub pending: u64,
    /// Age of the oldest pending task since it was enqueued (ms, Redis clock).
    pub oldest_pending_age_ms: Option<u64>,
    /// Age of the oldest task waiting to be delivered: the backlog head,
    /// the first entry after the group's last-delivered id, by its id's
    /// time against the Redis clock (ms). None when nothing waits.
    pub oldest_waiting_age_ms: Option<u64>,
    /// Consumers of the workers' group: the group's own count, or the live
    /// registered instances of the type when more (Redis 7.0 adds a consumer
    /// to the group only once a read returned entries, so idle live workers
    /// are not in it yet).
    pub consumers: u64,
    /// Live registered instances of the type (heartbeating).
    pub live_instances: u64,
    /// Retries and delayed tasks waiting for their time.
    pub delayed: u64,
    /// Dead letters.
    pub dlq: u64,
    /// Entries not yet delivered to any worker (`None` when Redis cannot tell).
    pub lag: Option<u64>,
}

fn map_of(v: &redis::Value) -> BTreeMap<String, redis::Value> {
    let mut out = BTreeMap::new();
    let items: Vec<(redis::Value, redis::Value)> = match v {
        redis::Value::Map(m) => m.clone(),
        redis::Value::Array(a) => a
            .chunks(2)
            .filter_map(|c| Some((c.first()?.clone(), c.get(1)?.clone())))
            .collect(),
        _ => Vec::new(),
    };
    for (k, v) in items {
        if let Ok(k) = redis::from_redis_value::<String>(k) {
            out.insert(k, v);
        }
    }
    out
}

fn u64_of(v: Option<&redis::Value>) -> Option<u64> {
    v.and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok())
}

/// Queue statistics of `types`: a few commands per type, pipelined.
pub async fn stream_stats<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    types: &[AgentType],
) -> Result<Vec<StreamStats>> {
    let mut out = Vec::with_capacity(types.len());
    for t in types {
        let tasks = keys.tasks(t);
        let ((secs, micros), backlog, delayed, dlq, exists): ((u64, u64), u64, u64, u64, bool) =
            redis::pipe()
                .cmd("TIME")
                .cmd("XLEN")
                .arg(&tasks)
                .cmd("ZCARD")
                .arg(keys.delayed(t))
                .cmd("XLEN")
                .arg(keys.dlq(t))
                .cmd("EXISTS")
                .arg(&tasks)
                .query_async(conn)
                .await?;
        let now_ms = secs * 1000 + micros / 1000;
        let live: u64 = redis::cmd("ZCOUNT")
            .arg(keys.fleet_expires(t))
            .arg(format!("({now_ms}"))
            .arg("+inf")
            .query_async(conn)
            .await?;
        let mut s = StreamStats {
            agent_type: t.to_string(),
            backlog,
            pending: 0,
            oldest_pending_age_ms: None,
            oldest_waiting_age_ms: None,
            consumers: live,
            live_instances: live,
            delayed,
            dlq,
            lag: None,
        };
        if exists {
            // XINFO GROUPS fails on a missing key, hence the EXISTS first.
            let groups: Vec<redis::Value> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&tasks)
                .query_async(conn)
                .await?;
            let group = groups.iter().map(map_of).find(|g| {
                g.get("name")
                    .and_then(|n| redis::from_redis_value::<String>(n.clone()).ok())
                    .as_deref()
                    == Some(WORKERS_GROUP)
            });
            // Without the group every entry waits: the head is the first.
            let mut from = "-".to_owned();
            if let Some(g) = &group {
                s.pending = u64_of(g.get("pending")).unwrap_or(0);
                s.consumers = u64_of(g.get("consumers")).unwrap_or(0).max(live);
                s.lag = u64_of(g.get("lag"));
                if let Some(last) = g
                    .get("last-delivered-id")
                    .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                {
                    from = format!("({last}");
                }
            }
            let head: Vec<(String, Vec<(String, redis::Value)>)> = redis::cmd("XRANGE")
                .arg(&tasks)
                .arg(&from)
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(conn)
                .await?;
            s.oldest_waiting_age_ms = head
                .first()
                .and_then(|(id, _)| EntryId::ms_of(id))
                .map(|ms| now_ms.saturating_sub(ms));
            if group.is_some() && s.pending > 0 {
                let summary: redis::Value = redis::cmd("XPENDING")
                    .arg(&tasks)
                    .arg(WORKERS_GROUP)
                    .query_async(conn)
                    .await?;
                if let redis::Value::Array(parts) = summary
                    && let Some(min) = parts.get(1)
                    && let Ok(min) = redis::from_redis_value::<String>(min.clone())
                {
                    s.oldest_pending_age_ms =
                        EntryId::ms_of(&min).map(|ms| now_ms.saturating_sub(ms));
                }
            }
        }
        out.push(s);
    }
    Ok(out)
}
