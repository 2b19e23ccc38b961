//! Housekeeping of the streams, for the orchestrator's loop and `agentctl
//! streams prune-consumers` / `trim-results` alike:
//!
//! - dead consumers leave the `workers` and `orchestrator` groups once they
//!   hold nothing, are not registered and have been idle long enough;
//! - results streams nobody reads are capped;
//! - dead letters are never deleted here, only measured ([`dlq_stats`]).
//!
//! Every age is by the Redis server's clock (`TIME`, the stream ids it
//! generated, the idle times it keeps).

use crate::Result;
use crate::scripts;
use agent_sdk::schemas::{AgentType, EntryId, Keys, ORCHESTRATOR_GROUP, WORKERS_GROUP};
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub use crate::store::server_time_ms;

/// A lease on a namespace-wide chore (`N:lease:<name>`), so one replica
/// does it per round. Its time runs on the Redis server's clock (`PX`).
#[derive(Debug, Clone)]
pub struct ChoreLease {
    key: String,
    holder: String,
    ttl: Duration,
}

impl ChoreLease {
    /// A lease on `key` for `holder`, for rounds every `interval`: it lasts
    /// three rounds, so a holder that dies is replaced within three.
    pub fn new(key: String, holder: String, interval: Duration) -> Self {
        Self {
            key,
            holder,
            ttl: (interval * 3).max(Duration::from_secs(1)),
        }
    }

    /// Takes or renews it; `true` when this holder has it.
    pub async fn take<C: ConnectionLike + Send>(&self, conn: &mut C) -> Result<bool> {
        let held: i64 = scripts::CHORE_LEASE
            .key(&self.key)
            .arg(&self.holder)
            .arg(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(conn)
            .await?;
        Ok(held == 1)
    }
}

/// One consumer removed from a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct PrunedConsumer {
    /// Agent type.
    pub agent_type: String,
    /// `tasks` or `results`.
    pub stream: String,
    /// Group it was in.
    pub group: String,
    /// Consumer name.
    pub consumer: String,
    /// Idle time when looked at (ms, Redis's).
    pub idle_ms: u64,
}

/// What [`prune_consumers`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct PruneReport {
    /// Removed.
    pub removed: Vec<PrunedConsumer>,
    /// Kept: entries pending at them.
    pub kept_busy: u64,
    /// Kept: a live registry record names them.
    pub kept_registered: u64,
    /// Kept: active more recently than the idle threshold.
    pub kept_recent: u64,
}

struct ConsumerInfo {
    name: String,
    pending: u64,
    idle_ms: u64,
}

/// Each `(field, value)` map of an `XINFO` reply (RESP2 flat arrays or RESP3 maps).
fn info_maps(v: &redis::Value) -> Vec<std::collections::HashMap<String, redis::Value>> {
    let redis::Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| {
            let pairs: Vec<(redis::Value, redis::Value)> = match item {
                redis::Value::Map(m) => m.clone(),
                redis::Value::Array(a) => a
                    .chunks(2)
                    .filter_map(|c| Some((c.first()?.clone(), c.get(1)?.clone())))
                    .collect(),
                _ => Vec::new(),
            };
            pairs
                .into_iter()
                .filter_map(|(k, v)| Some((redis::from_redis_value::<String>(k).ok()?, v)))
                .collect()
        })
        .collect()
}

fn field<T: redis::FromRedisValue>(
    m: &std::collections::HashMap<String, redis::Value>,
    k: &str,
) -> Option<T> {
    m.get(k)
        .and_then(|v| redis::from_redis_value::<T>(v.clone()).ok())
}

/// The consumers of `group` on `stream` (none if either is missing).
async fn consumers<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> Result<Vec<ConsumerInfo>> {
    let reply: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await;
    let v = match reply {
        Ok(v) => v,
        // No such stream or group: nothing to prune.
        Err(e)
            if e.code() == Some("NOGROUP")
                || e.to_string().to_ascii_lowercase().contains("no such key") =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e.into()),
    };
    Ok(info_maps(&v)
        .iter()
        .filter_map(|m| {
            Some(ConsumerInfo {
                name: field(m, "name")?,
                pending: field(m, "pending").unwrap_or(0),
                idle_ms: field(m, "idle").unwrap_or(0),
            })
        })
        .collect())
}

/// Removes from the `workers` group of each type's task stream and the
/// `orchestrator` group of its results stream every consumer that holds
/// nothing, has no live registry record (an agent's, or an orchestrator
/// replica's presence key) and has been idle at least `idle`.
/// The pending and idle checks are repeated atomically at the deletion.
pub async fn prune_consumers<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    types: &[AgentType],
    idle: Duration,
) -> Result<PruneReport> {
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let mut report = PruneReport::default();
    let now = crate::store::server_time_ms(conn).await?;
    for t in types {
        for (kind, stream, group) in [
            ("tasks", keys.tasks(t), WORKERS_GROUP),
            ("results", keys.results(t), ORCHESTRATOR_GROUP),
        ] {
            for c in consumers(conn, &stream, group).await? {
                if c.pending > 0 {
                    report.kept_busy += 1;
                    continue;
                }
                if c.idle_ms < idle_ms {
                    report.kept_recent += 1;
                    continue;
                }
                // Registered: an agent instance whose fleet record has not
                // expired (Redis clock), or an orchestrator replica's
                // presence key. A name that is not a valid consumer name
                // has neither.
                let (expires, present): (Option<f64>, u64) =
                    match keys.orchestrator_presence(&c.name) {
                        Ok(orch) => {
                            redis::pipe()
                                .cmd("ZSCORE")
                                .arg(keys.fleet_expires(t))
                                .arg(&c.name)
                                .cmd("EXISTS")
                                .arg(orch)
                                .query_async(conn)
                                .await?
                        }
                        Err(_) => (None, 0),
                    };
                if present > 0 || expires.is_some_and(|e| e > now as f64) {
                    report.kept_registered += 1;
                    continue;
                }
                let removed: i64 = scripts::PRUNE_CONSUMER
                    .key(&stream)
                    .arg(group)
                    .arg(&c.name)
                    .arg(idle_ms)
                    .invoke_async(conn)
                    .await?;
                if removed == 1 {
                    metrics::counter!("orchestrator_consumers_pruned_total", "stream" => kind)
                        .increment(1);
                    report.removed.push(PrunedConsumer {
                        agent_type: t.to_string(),
                        stream: kind.to_owned(),
                        group: group.to_owned(),
                        consumer: c.name,
                        idle_ms: c.idle_ms,
                    });
                } else {
                    report.kept_busy += 1;
                }
            }
        }
    }
    Ok(report)
}

/// One results stream looked at by [`trim_results`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct TrimmedStream {
    /// Agent type.
    pub agent_type: String,
    /// `none`: no `orchestrator` group; `idle`: a group with no consumer
    /// active within the idle threshold (only entries it has read and
    /// acknowledged are trimmed).
    pub reader: String,
    /// Entries before.
    pub length_before: u64,
    /// Entries removed.
    pub trimmed: u64,
}

/// Caps the results streams nobody reads at `cap` entries: a stream with
/// no `orchestrator` group is trimmed to its newest `cap`; one whose group
/// has no consumer active within `idle` loses only entries below both its
/// oldest pending entry and its last-delivered id (never a result the
/// group has not applied). Streams with an active reader are left alone
/// (it deletes what it applies). Dead-letter streams are never touched.
pub async fn trim_results<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    types: &[AgentType],
    cap: u64,
    idle: Duration,
) -> Result<Vec<TrimmedStream>> {
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let mut out = Vec::new();
    for t in types {
        let stream = keys.results(t);
        let len: u64 = redis::cmd("XLEN").arg(&stream).query_async(conn).await?;
        if len <= cap {
            continue;
        }
        let groups: redis::Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(conn)
            .await?;
        let group = info_maps(&groups)
            .into_iter()
            .find(|g| field::<String>(g, "name").as_deref() == Some(ORCHESTRATOR_GROUP));
        let (reader, trimmed): (&str, u64) = match group {
            None => {
                let n: u64 = redis::cmd("XTRIM")
                    .arg(&stream)
                    .arg("MAXLEN")
                    .arg(cap)
                    .query_async(conn)
                    .await?;
                ("none", n)
            }
            Some(g) => {
                let active = consumers(conn, &stream, ORCHESTRATOR_GROUP)
                    .await?
                    .iter()
                    .any(|c| c.idle_ms < idle_ms);
                if active {
                    continue;
                }
                let last: String =
                    field(&g, "last-delivered-id").unwrap_or_else(|| "0-0".to_owned());
                let summary: redis::Value = redis::cmd("XPENDING")
                    .arg(&stream)
                    .arg(ORCHESTRATOR_GROUP)
                    .query_async(conn)
                    .await?;
                let oldest_pending = match &summary {
                    redis::Value::Array(parts) => parts
                        .get(1)
                        .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok()),
                    _ => None,
                };
                // Keep everything from the oldest pending entry, and
                // everything after the last delivered one.
                let next_after_last = next_id(&last);
                let min_id = match oldest_pending {
                    Some(p) if id_lt(&p, &next_after_last) => p,
                    _ => next_after_last,
                };
                let n: u64 = redis::cmd("XTRIM")
                    .arg(&stream)
                    .arg("MINID")
                    .arg(&min_id)
                    .query_async(conn)
                    .await?;
                ("idle", n)
            }
        };
        metrics::counter!("orchestrator_results_trimmed_total").increment(trimmed);
        out.push(TrimmedStream {
            agent_type: t.to_string(),
            reader: reader.to_owned(),
            length_before: len,
            trimmed,
        });
    }
    Ok(out)
}

fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

fn id_lt(a: &str, b: &str) -> bool {
    parse_id(a) < parse_id(b)
}

/// The smallest id after `id`.
fn next_id(id: &str) -> String {
    let (ms, seq) = parse_id(id);
    match seq.checked_add(1) {
        Some(s) => format!("{ms}-{s}"),
        None => format!("{}-0", ms.saturating_add(1)),
    }
}

/// One agent type's dead letters, measured (never deleted here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct DlqStats {
    /// Agent type.
    pub agent_type: String,
    /// Dead letters.
    pub count: u64,
    /// Redis bytes of the DLQ stream (`MEMORY USAGE`, which samples).
    pub bytes: u64,
    /// Age of the oldest dead letter (ms, Redis clock), if any.
    pub oldest_age_ms: Option<u64>,
}

/// Count, bytes and oldest age of each type's dead letters.
pub async fn dlq_stats<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    types: &[AgentType],
) -> Result<Vec<DlqStats>> {
    if types.is_empty() {
        return Ok(Vec::new());
    }
    let now = server_time_ms(conn).await?;
    let mut pipe = redis::pipe();
    for t in types {
        let dlq = keys.dlq(t);
        pipe.cmd("XLEN").arg(&dlq);
        pipe.cmd("MEMORY").arg("USAGE").arg(&dlq);
        pipe.cmd("XRANGE")
            .arg(&dlq)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
    }
    type Row = (u64, Option<u64>, redis::streams::StreamRangeReply);
    let rows: Vec<redis::Value> = pipe.query_async(conn).await?;
    let mut out = Vec::with_capacity(types.len());
    for (t, chunk) in types.iter().zip(rows.chunks(3)) {
        let row: Row = redis::from_redis_value(redis::Value::Array(chunk.to_vec()))
            .map_err(redis::RedisError::from)?;
        let oldest = row.2.ids.first().and_then(|e| EntryId::ms_of(&e.id));
        out.push(DlqStats {
            agent_type: t.to_string(),
            count: row.0,
            bytes: row.1.unwrap_or(0),
            oldest_age_ms: oldest.map(|ms| now.saturating_sub(ms)),
        });
    }
    Ok(out)
}

/// Marks `consumer` (an orchestrator replica) alive for `ttl` (Redis's
/// clock, `PX`), so housekeeping keeps its consumers.
pub async fn mark_present<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    consumer: &str,
    ttl: Duration,
) -> Result<()> {
    let _: () = redis::cmd("SET")
        .arg(keys.orchestrator_presence(consumer)?)
        .arg(1)
        .arg("PX")
        .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
        .query_async(conn)
        .await?;
    Ok(())
}

/// Settings of the housekeeping loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HousekeepingSettings {
    /// Time between rounds.
    pub interval: Duration,
    /// Consumers idle this long (and holding nothing, unregistered) leave.
    pub consumer_prune_idle: Duration,
    /// Results streams without a reader are capped at this many entries.
    pub results_cap: u64,
}

/// What one housekeeping round did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HousekeepingReport {
    /// Consumers pruned.
    pub consumers: PruneReport,
    /// Results streams trimmed.
    pub results: Vec<TrimmedStream>,
    /// Dead letters, measured.
    pub dlq: Vec<DlqStats>,
}

/// One round over `types`: prune consumers, cap unread results, measure
/// the dead letters.
pub async fn housekeep_once<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    types: &[AgentType],
    s: &HousekeepingSettings,
) -> Result<HousekeepingReport> {
    let consumers = prune_consumers(conn, keys, types, s.consumer_prune_idle).await?;
    let results = trim_results(conn, keys, types, s.results_cap, s.consumer_prune_idle).await?;
    let dlq = dlq_stats(conn, keys, types).await?;
    Ok(HousekeepingReport {
        consumers,
        results,
        dlq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_and_follow() {
        assert!(id_lt("1-5", "2-0"));
        assert!(id_lt("2-0", "2-1"));
        assert!(!id_lt("2-1", "2-1"));
        assert_eq!(next_id("7-3"), "7-4");
        assert_eq!(next_id("0-0"), "0-1");
    }
}
