//! Ended workflows: the index retention reads (`N:wfs:{ended}`, scored by
//! the Redis clock when the transition script ended them), their measured
//! bytes, the archive record of one, and its deletion.

use super::{LogEntry, Result, WorkflowStore, corrupt, server_time_ms};
use crate::error::Error;
use crate::machine::WorkflowStatus;
use crate::scripts;
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};

/// The field of `N:wfs:{ended}:bytes` holding the sum (ids hold no `:`).
const TOTAL_FIELD: &str = ":total";

/// The field of `N:wfs:{ended}:bytes` saying the workflows that ended
/// before the index existed have been added to it.
const BACKFILLED_FIELD: &str = ":backfilled";

/// Workflows read per round trip by the backfill.
const BACKFILL_PAGE: isize = 500;

/// Event-log entries read per round trip when archiving.
const LOG_PAGE: usize = 1000;

/// One ended workflow in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedEntry {
    /// Workflow id.
    pub id: String,
    /// When it ended (ms, Redis clock).
    pub ended_at_ms: u64,
}

/// What the ended index holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct EndedTotals {
    /// Ended workflows kept.
    pub count: u64,
    /// Their bytes (state + event log, measured when each ended).
    pub bytes: u64,
    /// When the oldest of them ended (ms, Redis clock).
    pub oldest_ended_at_ms: Option<u64>,
}

/// An expired workflow as archived: one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchiveRecord {
    /// Workflow id.
    pub id: String,
    /// Definition name.
    pub definition: String,
    /// Completed, failed or cancelled.
    pub status: WorkflowStatus,
    /// When it ended (ms, Redis clock), if indexed.
    pub ended_at_ms: Option<u64>,
    /// Its Redis bytes when it ended, if measured.
    pub bytes: Option<u64>,
    /// The stored state (as the API's `GET /workflows/{id}` reads it).
    pub workflow: serde_json::Value,
    /// The whole event log, oldest first.
    pub events: Vec<LogEntry>,
}

/// What [`WorkflowStore::delete_ended`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    /// Deleted now; the bytes it had when it ended (0 if not measured).
    Deleted {
        /// Its status.
        status: WorkflowStatus,
        /// Bytes released from the ended total.
        bytes: u64,
    },
    /// No such workflow (its leftover index entries were cleaned).
    Gone,
    /// Not ended (running, blocked, …): kept.
    NotEnded(WorkflowStatus),
    /// Ended, but its last commands are not carried out yet: kept this time.
    OutboxPending(WorkflowStatus),
}

impl WorkflowStore {
    /// The oldest ended workflows, at most `count`, ended at or before
    /// `until_ms` (Redis clock; `None`: any).
    pub async fn ended_oldest<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        until_ms: Option<u64>,
        count: usize,
    ) -> Result<Vec<EndedEntry>> {
        let max = until_ms.map_or_else(|| "+inf".to_owned(), |m| m.to_string());
        let v: Vec<(String, u64)> = redis::cmd("ZRANGE")
            .arg(self.keys.workflows_ended())
            .arg("-inf")
            .arg(max)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(count.max(1))
            .arg("WITHSCORES")
            .query_async(conn)
            .await?;
        Ok(v.into_iter()
            .map(|(id, ended_at_ms)| EndedEntry { id, ended_at_ms })
            .collect())
    }

    /// Count, bytes and oldest end of the ended workflows kept.
    pub async fn ended_totals<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> Result<EndedTotals> {
        let (count, bytes, oldest): (u64, Option<i64>, Vec<(String, u64)>) = redis::pipe()
            .zcard(self.keys.workflows_ended())
            .hget(self.keys.workflows_ended_bytes(), TOTAL_FIELD)
            .cmd("ZRANGE")
            .arg(self.keys.workflows_ended())
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(conn)
            .await?;
        Ok(EndedTotals {
            count,
            bytes: bytes.unwrap_or(0).max(0) as u64,
            oldest_ended_at_ms: oldest.first().map(|(_, s)| *s),
        })
    }

    /// The bytes measured for each of `ids` when it ended (0 if none).
    pub async fn ended_bytes<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        ids: &[&str],
    ) -> Result<Vec<u64>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let v: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(self.keys.workflows_ended_bytes())
            .arg(ids)
            .query_async(conn)
            .await?;
        Ok(v.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// The archive record of `id` (state and whole event log), or `None`
    /// when it does not exist.
    pub async fn archive_record<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
    ) -> Result<Option<ArchiveRecord>> {
        type Row = (
            (Option<String>, Option<String>, Option<String>),
            Option<u64>,
            Option<u64>,
        );
        let ((state, status, definition), ended, bytes): Row = redis::pipe()
            .cmd("HMGET")
            .arg(self.keys.workflow(id)?)
            .arg(&["state", "status", "definition"])
            .zscore(self.keys.workflows_ended(), id)
            .hget(self.keys.workflows_ended_bytes(), id)
            .query_async(conn)
            .await?;
        let (Some(state), Some(status)) = (state, status) else {
            return Ok(None);
        };
        let workflow: serde_json::Value =
            serde_json::from_str(&state).map_err(|e| corrupt(id, e))?;
        let status = WorkflowStatus::parse(&status)
            .ok_or_else(|| corrupt(id, format!("unknown status {status:?}")))?;
        let mut events = Vec::new();
        loop {
            let after = events.last().map(|e: &LogEntry| e.id.clone());
            let page = self.log(conn, id, after.as_deref(), LOG_PAGE).await?;
            let done = page.len() < LOG_PAGE;
            events.extend(page);
            if done {
                break;
            }
        }
        Ok(Some(ArchiveRecord {
            id: id.to_owned(),
            definition: definition.unwrap_or_default(),
            status,
            ended_at_ms: ended,
            bytes,
            workflow,
            events,
        }))
    }

    /// Adds the workflows that ended before the ended index existed (stored
    /// by an older version) to it, once per Redis: their end time is now by
    /// the Redis clock (their own end was stamped by some orchestrator's
    /// clock, not to be compared), so they expire one retention after the
    /// upgrade. Idempotent (`NX`, `HSETNX`), safe beside other replicas.
    /// Returns how many it added, or `None` when done before.
    pub async fn backfill_ended<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> Result<Option<u64>> {
        let bytes_key = self.keys.workflows_ended_bytes();
        let done: bool = redis::cmd("HEXISTS")
            .arg(&bytes_key)
            .arg(BACKFILLED_FIELD)
            .query_async(conn)
            .await?;
        if done {
            return Ok(None);
        }
        let mut added = 0;
        let mut start: isize = 0;
        loop {
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(self.keys.workflows_all())
                .arg(start)
                .arg(start + BACKFILL_PAGE - 1)
                .query_async(conn)
                .await?;
            if ids.is_empty() {
                break;
            }
            start += ids.len() as isize;
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.hget(self.keys.workflow(id)?, "status")
                    .zscore(self.keys.workflows_ended(), id);
            }
            let rows: Vec<(Option<String>, Option<f64>)> = {
                let flat: Vec<redis::Value> = pipe.query_async(conn).await?;
                flat.chunks(2)
                    .map(|c| {
                        (
                            redis::from_redis_value_ref(&c[0]).ok().flatten(),
                            redis::from_redis_value_ref(&c[1]).ok().flatten(),
                        )
                    })
                    .collect()
            };
            let now = server_time_ms(conn).await?;
            for (id, (status, indexed)) in ids.iter().zip(rows) {
                let ended = status
                    .as_deref()
                    .and_then(WorkflowStatus::parse)
                    .is_some_and(WorkflowStatus::is_terminal);
                if !ended || indexed.is_some() {
                    continue;
                }
                let (a, b): (Option<u64>, Option<u64>) = redis::pipe()
                    .cmd("MEMORY")
                    .arg("USAGE")
                    .arg(self.keys.workflow(id)?)
                    .arg("SAMPLES")
                    .arg(0)
                    .cmd("MEMORY")
                    .arg("USAGE")
                    .arg(self.keys.workflow_events(id)?)
                    .arg("SAMPLES")
                    .arg(0)
                    .query_async(conn)
                    .await?;
                let bytes = a.unwrap_or(0) + b.unwrap_or(0);
                let (_, set): ((), bool) = redis::pipe()
                    .cmd("ZADD")
                    .arg(self.keys.workflows_ended())
                    .arg("NX")
                    .arg(now)
                    .arg(id)
                    .ignore()
                    .cmd("HSETNX")
                    .arg(&bytes_key)
                    .arg(id)
                    .arg(bytes)
                    .query_async::<(bool,)>(conn)
                    .await
                    .map(|(s,)| ((), s))?;
                if set {
                    let _: i64 = redis::cmd("HINCRBY")
                        .arg(&bytes_key)
                        .arg(TOTAL_FIELD)
                        .arg(bytes)
                        .query_async(conn)
                        .await?;
                    added += 1;
                }
            }
        }
        let _: () = redis::cmd("HSET")
            .arg(&bytes_key)
            .arg(BACKFILLED_FIELD)
            .arg(1)
            .query_async(conn)
            .await?;
        Ok(Some(added))
    }

    /// Deletes `id` if it has ended: its state, its event log and every
    /// index entry (`N:wfs:all`, `N:wfs:active`, `N:wfs:{ended}` and its
    /// bytes), and moves the counts by status. Idempotent; safe beside other
    /// replicas doing the same.
    pub async fn delete_ended<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
    ) -> Result<Deletion> {
        let (outcome, status): (String, String) = scripts::DELETE_WORKFLOW
            .key(self.keys.workflow(id)?)
            .key(self.keys.workflow_events(id)?)
            .key(self.keys.workflow_counts())
            .invoke_async(conn)
            .await?;
        let parse = || {
            WorkflowStatus::parse(&status)
                .ok_or_else(|| corrupt(id, format!("unknown status {status:?}")))
        };
        let kept = match outcome.as_str() {
            "active" => return Ok(Deletion::NotEnded(parse()?)),
            "outbox" => return Ok(Deletion::OutboxPending(parse()?)),
            "deleted" => Some(parse()?),
            "gone" => None,
            other => return Err(Error::Invalid(format!("unexpected reply {other:?}"))),
        };
        let mut inv = scripts::FORGET_ENDED.prepare_invoke();
        inv.key(self.keys.workflows_ended())
            .key(self.keys.workflows_ended_bytes())
            .arg(id);
        let bytes: u64 = inv.invoke_async(conn).await?;
        self.unindex(conn, id).await?;
        Ok(match kept {
            Some(status) => Deletion::Deleted { status, bytes },
            None => Deletion::Gone,
        })
    }
}
