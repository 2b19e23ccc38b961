//! The fleet of agent instances, per agent type, as the dashboard, `GET
//! /agents`, `agentctl agents` and `/metrics` show it — read from the
//! per-type fleet keys the workers' heartbeat script writes, never one
//! command per instance:
//!
//! - [`summary`]: counts (live, wedged, gone), oldest and newest heartbeat,
//!   and the age of the oldest waiting task, in one script call per type;
//! - [`page`]: one page of instances with their status, by `HSCAN` cursor;
//! - [`progress`]: the latest progress of running tasks, by task id.
//!
//! Every age is by the Redis server's clock.

use crate::Result;
use agent_sdk::schemas::{AgentStatus, AgentType, FleetRecord, Keys, TaskProgress, WORKERS_GROUP};
use redis::Script;
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

static SUMMARY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/fleet_summary.lua")));
static PAGE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/fleet_page.lua")));

/// Most instances in one page.
pub const MAX_PAGE: usize = 1000;

/// How the fleet is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetSettings {
    /// A live instance with work waiting and no read, commit or progress for
    /// this long is `wedged`.
    pub wedged_after: Duration,
    /// A vanished instance stays listed as `gone` this long after its last
    /// heartbeat, then is forgotten.
    pub keep_gone: Duration,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            wedged_after: Duration::from_secs(300),
            keep_gone: Duration::from_secs(3600),
        }
    }
}

/// What an instance is doing, as far as the fleet keys tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// Heartbeating and working (or idle with nothing to do).
    Ready,
    /// Shutting down.
    Draining,
    /// Heartbeating, work waiting for it, but no read, commit or progress
    /// for `--wedged-after`: its handler or loop is stuck.
    Wedged,
    /// No heartbeat for three of its beats: the process is dead or cut off.
    Gone,
}

impl InstanceStatus {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Draining => "draining",
            Self::Wedged => "wedged",
            Self::Gone => "gone",
        }
    }

    /// The status of an instance whose record says `record`, that counts as
    /// gone from `expires_ms`, last worked at `active_ms`, at Redis time
    /// `now_ms`, with backlog waiting or not.
    pub fn judge(
        record: &FleetRecord,
        expires_ms: u64,
        active_ms: u64,
        now_ms: u64,
        backlog_waiting: bool,
        wedged_after: Duration,
    ) -> Self {
        if expires_ms <= now_ms {
            return Self::Gone;
        }
        let idle = now_ms.saturating_sub(active_ms);
        if idle > wedged_after.as_millis() as u64
            && (backlog_waiting || record.record.in_flight > 0)
        {
            return Self::Wedged;
        }
        match record.record.status {
            AgentStatus::Draining => Self::Draining,
            AgentStatus::Ready => Self::Ready,
        }
    }
}

/// One agent type's fleet at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct FleetSummary {
    /// The agent type.
    pub agent_type: String,
    /// Instances listed (live or gone within `--keep-gone`).
    pub total: u64,
    /// Instances heartbeating (ready, draining or wedged).
    pub live: u64,
    /// Live instances reported wedged.
    pub wedged: u64,
    /// Instances gone (no heartbeat), kept for `--keep-gone`.
    pub gone: u64,
    /// Age of the oldest heartbeat among live instances (ms, Redis clock).
    pub oldest_heartbeat_age_ms: Option<u64>,
    /// Age of the newest heartbeat of any instance (ms, Redis clock): with
    /// no live instance, how long the type has had none.
    pub newest_heartbeat_age_ms: Option<u64>,
    /// Age of the oldest task waiting to be delivered (the backlog head;
    /// ms, Redis clock). None when nothing waits.
    pub oldest_waiting_age_ms: Option<u64>,
    /// Ids of the wedged instances (the first 1000).
    pub wedged_instances: Vec<String>,
}

/// One instance, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct InstanceView {
    /// Its record: registry fields plus last read / commit / progress.
    #[serde(flatten)]
    pub record: FleetRecord,
    /// Ready, draining, wedged or gone.
    pub state: InstanceStatus,
    /// Since its last heartbeat (ms, Redis clock).
    pub heartbeat_age_ms: u64,
    /// Since its last read, commit or progress (ms, Redis clock).
    pub idle_ms: u64,
}

/// One page of a type's instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct InstancePage {
    /// The agent type.
    pub agent_type: String,
    /// The instances of this page (HSCAN order; sort for display).
    pub instances: Vec<InstanceView>,
    /// Pass as `cursor` for the next page; None after the last page.
    pub next_cursor: Option<String>,
}

fn ms(v: i64) -> Option<u64> {
    u64::try_from(v).ok()
}

/// Agent types that ever registered an instance (`N:registry:types`), sorted.
pub async fn types<C: ConnectionLike + Send>(conn: &mut C, keys: &Keys) -> Result<Vec<AgentType>> {
    let names: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.registry_types())
        .query_async(conn)
        .await?;
    let mut types: Vec<AgentType> = names
        .into_iter()
        .filter_map(|n| AgentType::new(n).ok())
        .collect();
    types.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(types)
}

/// The summary of `t`'s fleet: one script call, O(log n) in its instances.
/// Also prunes instances gone for longer than `keep_gone`.
pub async fn summary<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    t: &AgentType,
    settings: &FleetSettings,
) -> Result<FleetSummary> {
    let (now, total, live, wedged, oldest, newest, head, ids): (
        i64,
        u64,
        u64,
        u64,
        i64,
        i64,
        i64,
        Vec<String>,
    ) = SUMMARY
        .key(keys.fleet(t))
        .key(keys.fleet_seen(t))
        .key(keys.fleet_expires(t))
        .key(keys.fleet_active(t))
        .key(keys.tasks(t))
        .key(keys.progress(t))
        .arg(WORKERS_GROUP)
        .arg(settings.wedged_after.as_millis() as u64)
        .arg(settings.keep_gone.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    let age = |at: i64| ms(at).map(|at| ms(now).unwrap_or(0).saturating_sub(at));
    Ok(FleetSummary {
        agent_type: t.to_string(),
        total,
        live,
        wedged,
        gone: total.saturating_sub(live),
        oldest_heartbeat_age_ms: age(oldest),
        newest_heartbeat_age_ms: age(newest),
        oldest_waiting_age_ms: age(head),
        wedged_instances: ids,
    })
}

/// Summaries of `types`, one script call each.
pub async fn summaries<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    types: &[AgentType],
    settings: &FleetSettings,
) -> Result<Vec<FleetSummary>> {
    let mut out = Vec::with_capacity(types.len());
    for t in types {
        out.push(summary(conn, keys, t, settings).await?);
    }
    Ok(out)
}

/// One page of `t`'s instances from `cursor` ("0" for the first), about
/// `limit` of them (1..=[`MAX_PAGE`]). A record that cannot be read is
/// skipped (written by a newer or broken worker), never an error.
pub async fn page<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    t: &AgentType,
    cursor: &str,
    limit: usize,
    settings: &FleetSettings,
) -> Result<InstancePage> {
    let cursor: u64 = cursor
        .parse()
        .map_err(|_| crate::Error::Invalid(format!("cursor {cursor:?} is not a page cursor")))?;
    let limit = limit.clamp(1, MAX_PAGE);
    let reply: Vec<redis::Value> = PAGE
        .key(keys.fleet(t))
        .key(keys.fleet_expires(t))
        .key(keys.fleet_active(t))
        .key(keys.tasks(t))
        .key(keys.fleet_seen(t))
        .arg(WORKERS_GROUP)
        .arg(cursor)
        .arg(limit)
        .invoke_async(conn)
        .await?;
    let num = |v: Option<&redis::Value>| -> u64 {
        v.and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .and_then(|s| s.parse::<f64>().ok())
            .map_or(0, |f| f as u64)
    };
    let int = |v: Option<&redis::Value>| -> u64 {
        v.and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
            .unwrap_or(0)
    };
    let now = int(reply.first());
    let next = reply
        .get(1)
        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
        .unwrap_or_else(|| "0".into());
    let waiting = int(reply.get(2)) == 1;
    let mut instances = Vec::new();
    for chunk in reply.get(3..).unwrap_or_default().chunks(5) {
        let Some(raw) = chunk
            .get(1)
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
        else {
            continue;
        };
        let Ok(mut record) = serde_json::from_str::<FleetRecord>(&raw) else {
            continue;
        };
        let expires = num(chunk.get(2));
        let active = num(chunk.get(3));
        // The sorted sets' times are the current ones (the record is
        // rewritten only when it changes).
        record.expires_at_ms = record.expires_at_ms.max(expires);
        record.record.last_seen_ms = record.record.last_seen_ms.max(num(chunk.get(4)));
        let state = InstanceStatus::judge(
            &record,
            expires,
            active,
            now,
            waiting,
            settings.wedged_after,
        );
        instances.push(InstanceView {
            heartbeat_age_ms: now.saturating_sub(record.record.last_seen_ms),
            idle_ms: now.saturating_sub(active),
            state,
            record,
        });
    }
    Ok(InstancePage {
        agent_type: t.to_string(),
        instances,
        next_cursor: (next != "0").then_some(next),
    })
}

/// Every instance of `t` (all pages): for small fleets and tests; views of
/// large fleets page with [`page`].
pub async fn instances<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    t: &AgentType,
    settings: &FleetSettings,
) -> Result<Vec<InstanceView>> {
    let mut out = Vec::new();
    let mut cursor = "0".to_owned();
    loop {
        let p = page(conn, keys, t, &cursor, MAX_PAGE, settings).await?;
        out.extend(p.instances);
        match p.next_cursor {
            Some(c) => cursor = c,
            None => break,
        }
    }
    Ok(out)
}

/// The latest progress of `task_ids` (tasks of type `t`), by task id: one
/// `HMGET`. Tasks without a report (or with an unreadable one) are absent.
pub async fn progress<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    t: &AgentType,
    task_ids: &[&str],
) -> Result<HashMap<String, TaskProgress>> {
    if task_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let raw: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(keys.progress(t))
        .arg(task_ids)
        .query_async(conn)
        .await?;
    Ok(task_ids
        .iter()
        .zip(raw)
        .filter_map(|(id, r)| {
            let p: TaskProgress = serde_json::from_str(&r?).ok()?;
            Some(((*id).to_owned(), p))
        })
        .collect())
}

/// The latest progress of running tasks given as (agent type, task id):
/// one `HMGET` per agent type. By task id; tasks without a report are absent.
pub async fn running_progress<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    running: &[(&str, &str)],
) -> Result<HashMap<String, TaskProgress>> {
    let mut by_type: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (agent, task) in running {
        by_type.entry(agent).or_default().push(task);
    }
    let mut out = HashMap::new();
    for (agent, tasks) in by_type {
        if let Ok(t) = AgentType::new(agent) {
            out.extend(progress(conn, keys, &t, &tasks).await?);
        }
    }
    Ok(out)
}

/// `message` fit for a terminal: control characters (which a report read
/// back from Redis could still hold, whoever wrote it) shown as `?`.
pub fn printable(message: &str) -> String {
    message
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_sdk::schemas::AgentRecord;

    fn record(in_flight: u32, status: AgentStatus) -> FleetRecord {
        FleetRecord {
            record: AgentRecord {
                instance_id: "i".into(),
                agent_type: "t".into(),
                version: "0".into(),
                host: "h".into(),
                pid: 1,
                started_at_ms: 0,
                last_seen_ms: 0,
                status,
                concurrency: 1,
                in_flight,
                processed: 0,
                failed: 0,
            },
            last_read_ms: None,
            last_commit_ms: None,
            last_progress_ms: None,
            expires_at_ms: 0,
        }
    }

    #[test]
    fn judge_each_status() {
        let w = Duration::from_secs(60);
        let idle = record(0, AgentStatus::Ready);
        let busy = record(1, AgentStatus::Ready);
        // Past its expiry: gone, whatever else.
        assert_eq!(
            InstanceStatus::judge(&busy, 100, 0, 100, true, w),
            InstanceStatus::Gone
        );
        // Quiet for long, but nothing waits and it holds nothing: ready.
        assert_eq!(
            InstanceStatus::judge(&idle, 200_000, 0, 100_000, false, w),
            InstanceStatus::Ready
        );
        // Quiet for long with backlog waiting, or holding a task: wedged.
        assert_eq!(
            InstanceStatus::judge(&idle, 200_000, 0, 100_000, true, w),
            InstanceStatus::Wedged
        );
        assert_eq!(
            InstanceStatus::judge(&busy, 200_000, 0, 100_000, false, w),
            InstanceStatus::Wedged
        );
        // Recently active: not wedged.
        assert_eq!(
            InstanceStatus::judge(&busy, 200_000, 99_000, 100_000, true, w),
            InstanceStatus::Ready
        );
        let draining = record(0, AgentStatus::Draining);
        assert_eq!(
            InstanceStatus::judge(&draining, 200_000, 99_000, 100_000, false, w),
            InstanceStatus::Draining
        );
    }
}
