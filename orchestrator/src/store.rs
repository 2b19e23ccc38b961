//! Workflow state in Redis: what the durable shell reads and writes.
//!
//! - `N:wf:{<id>}` (hash): `state` (the [`Workflow`] as JSON), `version`,
//!   `status`, `definition`, `created_at_ms`, `updated_at_ms`, and the
//!   outbox (`outbox`, `outbox_at_ms`): commands decided by a stored
//!   transition and not yet carried out, as JSON lines.
//! - `N:wf:{<id>}:events` (stream): the event log, one entry per stored
//!   transition, written by the same script as the state.
//! - `N:wfs:all` / `N:wfs:active` (sorted sets): every workflow / those not
//!   ended, by creation time. Written outside the transition (another slot);
//!   an id whose hash is missing is skipped and pruned.
//! - `N:agent:{T}:deadlines` (sorted set): stage deadlines of type `T`'s
//!   tasks, by the server's clock, in `T`'s slot (armed by the dispatch).
//!
//! Every function takes the connection to use, so HTTP handlers pass a pooled
//! one and the loops their own long-lived ones.

use crate::error::Error;
use crate::machine::{Command, Workflow, WorkflowStatus};
use crate::scripts;
use agent_sdk::schemas::{AgentType, Keys};
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;

type Result<T, E = Error> = std::result::Result<T, E>;

/// Event-log entries kept per workflow (approximately; oldest dropped first).
pub const EVENT_LOG_CAP: usize = 10_000;

/// A workflow as stored: state, version, and what its outbox still holds.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The state.
    pub workflow: Workflow,
    /// Transitions stored so far; the next one must expect this.
    pub version: u64,
    /// Commands decided and not yet carried out (oldest first).
    pub outbox: Vec<Command>,
    /// When the oldest of them was decided (ms, orchestrator clock).
    pub outbox_at_ms: Option<u64>,
}

/// One entry of a workflow's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogEntry {
    /// Stream entry id (SSE clients resume after it).
    pub id: String,
    /// The workflow version this transition produced.
    pub version: u64,
    /// Event type (`started`, `task_succeeded`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// The stage the event concerned, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Workflow status after the transition.
    pub status: WorkflowStatus,
    /// Progress after the transition, in percent.
    pub progress: u8,
    /// When (ms, the orchestrator's clock).
    pub at_ms: u64,
    /// The event (task outputs left out: they are in the workflow state).
    pub event: Value,
    /// Stages dispatched by this transition (`name` or `name.undo`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dispatched: Vec<String>,
}

/// What the transition script writes into the event log (the version is
/// added by the script).
#[derive(Debug, Clone)]
pub struct NewLogEntry {
    /// See [`LogEntry::kind`].
    pub kind: String,
    /// See [`LogEntry::stage`].
    pub stage: Option<String>,
    /// See [`LogEntry::event`].
    pub event: Value,
    /// See [`LogEntry::dispatched`].
    pub dispatched: Vec<String>,
}

/// The pub/sub message of one stored transition (`N:wfs:changes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = WorkflowChange)]
pub struct Change {
    /// Workflow id.
    pub workflow_id: String,
    /// Definition name.
    pub definition: String,
    /// Version after the transition.
    pub version: u64,
    /// Status after it.
    pub status: WorkflowStatus,
    /// Progress after it.
    pub progress: u8,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The stage concerned, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// When (ms, orchestrator clock).
    pub at_ms: u64,
}

/// A workflow's headline fields, read without decoding its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = WorkflowSummary)]
pub struct Summary {
    /// Workflow id.
    pub id: String,
    /// Definition name.
    pub definition: String,
    /// Where it stands.
    pub status: WorkflowStatus,
    /// Transitions stored.
    pub version: u64,
    /// Created (ms).
    pub created_at_ms: u64,
    /// Last transition (ms).
    pub updated_at_ms: u64,
}

/// Filters and paging of [`WorkflowStore::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only workflows with this status.
    pub status: Option<WorkflowStatus>,
    /// Only workflows of this definition.
    pub definition: Option<String>,
    /// Newest first; start after this cursor (from the previous page).
    pub cursor: Option<String>,
    /// Page size.
    pub limit: usize,
}

/// One page of [`WorkflowStore::list`].
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = WorkflowPage)]
pub struct Page {
    /// The workflows, newest first.
    pub items: Vec<Summary>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Reads and writes workflows of one namespace.
#[derive(Debug, Clone)]
pub struct WorkflowStore {
    keys: Keys,
}

fn corrupt(id: &str, why: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        what: "workflow",
        id: id.to_owned(),
        why: why.to_string(),
    }
}

/// Task ids are `<workflow>:<stage>:<n>`; timers are keyed by task id.
pub fn workflow_of_task(task_id: &str) -> Option<&str> {
    task_id.split_once(':').map(|(wf, _)| wf)
}

impl WorkflowStore {
    /// A store for `keys`' namespace.
    pub fn new(keys: Keys) -> Self {
        Self { keys }
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The stored workflow `id`, if it exists.
    pub async fn load<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
    ) -> Result<Option<Stored>> {
        let key = self.keys.workflow(id)?;
        let row: (Option<String>, Option<u64>, Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(&key)
            .arg(&["state", "version", "outbox", "outbox_at_ms"])
            .query_async(conn)
            .await?;
        parse_stored(id, row)
    }

    /// Stores `next` as the version after `expected`, appending `commands`
    /// to the outbox and `entry` to the event log, and publishes the change.
    /// `false`: the workflow moved on (or, for `expected` 0, exists already).
    pub async fn save<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        expected: u64,
        next: &Workflow,
        commands: &[Command],
        entry: &NewLogEntry,
    ) -> Result<bool> {
        let inv = self.save_invocation(expected, next, commands, entry)?;
        let stored: i64 = inv.invoke_async(conn).await?;
        Ok(stored == 1)
    }

    /// The script call of [`WorkflowStore::save`], for pipelining many
    /// (its reply is 1 when stored, 0 when the version moved on).
    pub fn save_invocation(
        &self,
        expected: u64,
        next: &Workflow,
        commands: &[Command],
        entry: &NewLogEntry,
    ) -> Result<redis::ScriptInvocation<'static>> {
        let id = &next.id;
        let state = serde_json::to_string(next).map_err(|e| corrupt(id, e))?;
        let mut outbox = String::new();
        for c in commands {
            if !outbox.is_empty() {
                outbox.push('\n');
            }
            outbox.push_str(&serde_json::to_string(c).map_err(|e| corrupt(id, e))?);
        }
        let change = Change {
            workflow_id: id.clone(),
            definition: next.definition.clone(),
            version: expected + 1,
            status: next.status,
            progress: next.progress(),
            kind: entry.kind.clone(),
            stage: entry.stage.clone(),
            at_ms: next.updated_at_ms,
        };
        let change = serde_json::to_string(&change).map_err(|e| corrupt(id, e))?;
        let event = serde_json::to_string(&entry.event).map_err(|e| corrupt(id, e))?;
        let dispatched = serde_json::to_string(&entry.dispatched).map_err(|e| corrupt(id, e))?;
        let mut inv = scripts::TRANSITION.prepare_invoke();
        inv.key(self.keys.workflow(id)?)
            .key(self.keys.workflow_events(id)?)
            .arg(expected)
            .arg(state)
            .arg(status_str(next.status))
            .arg(&next.definition)
            .arg(next.updated_at_ms)
            .arg(outbox)
            .arg(EVENT_LOG_CAP)
            .arg(self.keys.workflow_changes())
            .arg(change)
            .arg("type")
            .arg(&entry.kind)
            .arg("status")
            .arg(status_str(next.status))
            .arg("progress")
            .arg(next.progress())
            .arg("at_ms")
            .arg(next.updated_at_ms)
            .arg("event")
            .arg(event);
        if let Some(stage) = &entry.stage {
            inv.arg("stage").arg(stage);
        }
        if !entry.dispatched.is_empty() {
            inv.arg("dispatched").arg(dispatched);
        }
        Ok(inv)
    }

    /// [`WorkflowStore::load`] of many workflows in one round trip.
    pub async fn load_many<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        ids: &[&str],
    ) -> Result<Vec<Result<Option<Stored>>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET").arg(self.keys.workflow(id)?).arg(&[
                "state",
                "version",
                "outbox",
                "outbox_at_ms",
            ]);
        }
        type Row = (Option<String>, Option<u64>, Option<String>, Option<u64>);
        let rows: Vec<Row> = pipe.query_async(conn).await?;
        Ok(ids
            .iter()
            .zip(rows)
            .map(|(id, row)| parse_stored(id, row))
            .collect())
    }

    /// Empties the outbox of `id` if it is still at `version`.
    pub async fn clear_outbox<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
        version: u64,
    ) -> Result<bool> {
        let cleared: i64 = self
            .clear_outbox_invocation(id, version)?
            .invoke_async(conn)
            .await?;
        Ok(cleared == 1)
    }

    /// The script call of [`WorkflowStore::clear_outbox`] (reply 1 / 0).
    pub fn clear_outbox_invocation(
        &self,
        id: &str,
        version: u64,
    ) -> Result<redis::ScriptInvocation<'static>> {
        let mut inv = scripts::CLEAR_OUTBOX.prepare_invoke();
        inv.key(self.keys.workflow(id)?).arg(version);
        Ok(inv)
    }

    /// Adds `id` to the listing and the active index. Runs before the
    /// workflow is first stored: a crash in between leaves an index entry
    /// without a workflow, which readers skip and the sweeper prunes, never a
    /// workflow nobody can find.
    pub async fn index<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
        created_ms: u64,
    ) -> Result<()> {
        let mut pipe = redis::pipe();
        self.add_index_commands(&mut pipe, id, created_ms);
        pipe.query_async::<()>(conn).await?;
        Ok(())
    }

    /// The commands of [`WorkflowStore::index`], added to `pipe` (replies
    /// ignored). `NX`: an id that exists keeps its place.
    pub fn add_index_commands(&self, pipe: &mut redis::Pipeline, id: &str, created_ms: u64) {
        for key in [self.keys.workflows_all(), self.keys.workflows_active()] {
            pipe.cmd("ZADD")
                .arg(key)
                .arg("NX")
                .arg(created_ms)
                .arg(id)
                .ignore();
        }
    }

    /// Drops `id` from the active index (it ended).
    pub async fn deactivate<C: ConnectionLike + Send>(&self, conn: &mut C, id: &str) -> Result<()> {
        let _: i64 = redis::cmd("ZREM")
            .arg(self.keys.workflows_active())
            .arg(id)
            .query_async(conn)
            .await?;
        Ok(())
    }

    /// Drops `id` from both indexes (its hash is gone).
    pub async fn unindex<C: ConnectionLike + Send>(&self, conn: &mut C, id: &str) -> Result<()> {
        redis::pipe()
            .zrem(self.keys.workflows_all(), id)
            .ignore()
            .zrem(self.keys.workflows_active(), id)
            .ignore()
            .query_async::<()>(conn)
            .await?;
        Ok(())
    }

    /// Active workflow ids after `after` (by creation time, then id), at
    /// most `count`, with their creation time.
    pub async fn active_page<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        offset: usize,
        count: usize,
    ) -> Result<Vec<(String, u64)>> {
        let v: Vec<(String, u64)> = redis::cmd("ZRANGE")
            .arg(self.keys.workflows_active())
            .arg(offset)
            .arg(offset + count.max(1) - 1)
            .arg("WITHSCORES")
            .query_async(conn)
            .await?;
        Ok(v)
    }

    /// Headline fields of `ids` (one round trip); `None` where the workflow
    /// does not exist.
    pub async fn summaries<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        ids: &[String],
    ) -> Result<Vec<Option<Summary>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET").arg(self.keys.workflow(id)?).arg(&[
                "definition",
                "status",
                "version",
                "created_at_ms",
                "updated_at_ms",
            ]);
        }
        type Row = (
            Option<String>,
            Option<String>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
        );
        let rows: Vec<Row> = pipe.query_async(conn).await?;
        Ok(ids
            .iter()
            .zip(rows)
            .map(|(id, (def, status, version, created, updated))| {
                Some(Summary {
                    id: id.clone(),
                    definition: def?,
                    status: parse_status(&status?)?,
                    version: version?,
                    created_at_ms: created.unwrap_or(0),
                    updated_at_ms: updated.unwrap_or(0),
                })
            })
            .collect())
    }

    /// Workflows newest first, filtered, one page at a time. The cursor is
    /// `<created ms>:<id>` of the last workflow looked at; filters are
    /// applied while scanning, at most a bounded number of ids per call (a
    /// page may then come back short, with a cursor to go on).
    pub async fn list<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        filter: &ListFilter,
    ) -> Result<Page> {
        const BATCH: usize = 200;
        let limit = filter.limit.clamp(1, 1000);
        let scan_budget = (limit * 20).max(2000);
        let cursor: Option<(u64, String)> = match &filter.cursor {
            Some(c) => {
                let bad = || Error::Invalid(format!("bad cursor {c:?}"));
                let (ms, id) = c.split_once(':').ok_or_else(bad)?;
                Some((ms.parse().map_err(|_| bad())?, id.to_owned()))
            }
            None => None,
        };
        let max = cursor
            .as_ref()
            .map_or_else(|| "+inf".to_owned(), |(ms, _)| ms.to_string());
        let mut items = Vec::new();
        let mut scanned = 0;
        let mut offset = 0;
        loop {
            let page: Vec<(String, u64)> = redis::cmd("ZRANGE")
                .arg(self.keys.workflows_all())
                .arg(&max)
                .arg("-inf")
                .arg("BYSCORE")
                .arg("REV")
                .arg("LIMIT")
                .arg(offset)
                .arg(BATCH)
                .arg("WITHSCORES")
                .query_async(conn)
                .await?;
            let done = page.len() < BATCH;
            offset += page.len();
            let last = page.last().cloned();
            // Ids of the cursor's millisecond come in reverse lexical order:
            // those not below the cursor's id were on earlier pages.
            let fresh: Vec<(String, u64)> = page
                .into_iter()
                .filter(|(id, score)| {
                    cursor
                        .as_ref()
                        .is_none_or(|(cs, cid)| *score != *cs || id.as_str() < cid.as_str())
                })
                .collect();
            scanned += fresh.len();
            let ids: Vec<String> = fresh.iter().map(|(i, _)| i.clone()).collect();
            for ((id, score), s) in fresh.iter().zip(self.summaries(conn, &ids).await?) {
                let Some(s) = s else { continue };
                if filter.status.is_some_and(|st| st != s.status)
                    || filter
                        .definition
                        .as_ref()
                        .is_some_and(|d| *d != s.definition)
                {
                    continue;
                }
                items.push(s);
                if items.len() == limit {
                    return Ok(Page {
                        items,
                        next: Some(format!("{score}:{id}")),
                    });
                }
            }
            if done {
                return Ok(Page { items, next: None });
            }
            if scanned >= scan_budget {
                return Ok(Page {
                    items,
                    next: last.map(|(id, score)| format!("{score}:{id}")),
                });
            }
        }
    }

    /// The event log of `id` after stream id `after` (from the start when
    /// `None`), at most `count` entries.
    pub async fn log<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<LogEntry>> {
        let start = match after {
            Some(a) => format!("({a}"),
            None => "-".to_owned(),
        };
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.workflow_events(id)?)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(conn)
            .await?;
        reply
            .ids
            .into_iter()
            .map(|e| parse_log_entry(id, e))
            .collect()
    }

    /// The script call that arms and cancels deadlines of `agent`'s tasks
    /// (`(task id, Some(delay))` arms, `None` cancels).
    pub fn timers_invocation(
        &self,
        agent: &AgentType,
        ops: &[(String, Option<std::time::Duration>)],
    ) -> redis::ScriptInvocation<'static> {
        let mut inv = scripts::TIMERS.prepare_invoke();
        inv.key(self.keys.deadlines(agent));
        for (member, delay) in ops {
            match delay {
                Some(d) => inv.arg("A").arg(member).arg(d.as_millis() as u64),
                None => inv.arg("C").arg(member).arg(0),
            };
        }
        inv
    }

    /// Takes up to `max` due deadlines of `agent`'s tasks for `lease`.
    pub async fn claim_due_timers<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        agent: &AgentType,
        max: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<String>> {
        Ok(scripts::CLAIM_TIMERS
            .key(self.keys.deadlines(agent))
            .arg(max)
            .arg(lease.as_millis() as u64)
            .invoke_async(conn)
            .await?)
    }

    /// Removes a fired deadline.
    pub async fn remove_timer<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        agent: &AgentType,
        member: &str,
    ) -> Result<()> {
        let _: i64 = redis::cmd("ZREM")
            .arg(self.keys.deadlines(agent))
            .arg(member)
            .query_async(conn)
            .await?;
        Ok(())
    }
}

fn parse_stored(
    id: &str,
    (state, version, outbox, outbox_at): (Option<String>, Option<u64>, Option<String>, Option<u64>),
) -> Result<Option<Stored>> {
    let (Some(state), Some(version)) = (state, version) else {
        return Ok(None);
    };
    let workflow: Workflow = serde_json::from_str(&state).map_err(|e| corrupt(id, e))?;
    let outbox = match outbox {
        Some(text) => text
            .lines()
            .filter(|l| !l.is_empty())
            .map(serde_json::from_str)
            .collect::<std::result::Result<Vec<Command>, _>>()
            .map_err(|e| corrupt(id, format!("outbox: {e}")))?,
        None => Vec::new(),
    };
    Ok(Some(Stored {
        workflow,
        version,
        outbox,
        outbox_at_ms: outbox_at,
    }))
}

fn parse_log_entry(wf: &str, e: redis::streams::StreamId) -> Result<LogEntry> {
    let get = |k: &str| -> Option<String> {
        e.map
            .get(k)
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
    };
    let bad = |what: &str| corrupt(wf, format!("event-log entry {} lacks {what}", e.id));
    let status = get("status")
        .and_then(|s| parse_status(&s))
        .ok_or_else(|| bad("status"))?;
    Ok(LogEntry {
        id: e.id.clone(),
        version: get("version")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("version"))?,
        kind: get("type").ok_or_else(|| bad("type"))?,
        stage: get("stage"),
        status,
        progress: get("progress").and_then(|v| v.parse().ok()).unwrap_or(0),
        at_ms: get("at_ms").and_then(|v| v.parse().ok()).unwrap_or(0),
        event: get("event")
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or(Value::Null),
        dispatched: get("dispatched")
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default(),
    })
}

/// The stored spelling of a status (`awaiting_approval`, …).
pub fn status_str(s: WorkflowStatus) -> &'static str {
    match s {
        WorkflowStatus::Pending => "pending",
        WorkflowStatus::Running => "running",
        WorkflowStatus::AwaitingApproval => "awaiting_approval",
        WorkflowStatus::Blocked => "blocked",
        WorkflowStatus::Compensating => "compensating",
        WorkflowStatus::Completed => "completed",
        WorkflowStatus::Failed => "failed",
        WorkflowStatus::Cancelled => "cancelled",
    }
}

/// Every status, in lifecycle order.
pub const ALL_STATUSES: [WorkflowStatus; 8] = [
    WorkflowStatus::Pending,
    WorkflowStatus::Running,
    WorkflowStatus::AwaitingApproval,
    WorkflowStatus::Blocked,
    WorkflowStatus::Compensating,
    WorkflowStatus::Completed,
    WorkflowStatus::Failed,
    WorkflowStatus::Cancelled,
];

/// Parses [`status_str`]'s spelling.
pub fn parse_status(s: &str) -> Option<WorkflowStatus> {
    ALL_STATUSES.into_iter().find(|st| status_str(*st) == s)
}

/// Groups ids by workflow, keeping order within each.
pub fn group_by_workflow<T>(items: Vec<(String, T)>) -> Vec<(String, Vec<T>)> {
    let mut order: Vec<String> = Vec::new();
    let mut map: HashMap<String, Vec<T>> = HashMap::new();
    for (wf, item) in items {
        if !map.contains_key(&wf) {
            order.push(wf.clone());
        }
        map.entry(wf).or_default().push(item);
    }
    order
        .into_iter()
        .filter_map(|wf| map.remove(&wf).map(|v| (wf, v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in ALL_STATUSES {
            assert_eq!(parse_status(status_str(s)), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                Value::String(status_str(s).into())
            );
        }
        assert_eq!(parse_status("nope"), None);
    }

    #[test]
    fn task_ids_name_their_workflow() {
        assert_eq!(workflow_of_task("w1:build:2"), Some("w1"));
        assert_eq!(workflow_of_task("w1:build:undo"), Some("w1"));
        assert_eq!(workflow_of_task("standalone"), None);
    }

    #[test]
    fn grouping_keeps_order() {
        let g = group_by_workflow(vec![
            ("b".to_string(), 1),
            ("a".to_string(), 2),
            ("b".to_string(), 3),
        ]);
        assert_eq!(g, vec![("b".into(), vec![1, 3]), ("a".into(), vec![2])]);
    }
}
