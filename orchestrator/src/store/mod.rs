//! Workflow state in Redis: what the durable shell reads and writes.
//!
//! - `N:wf:{<id>}` (hash): `state` (the [`Workflow`] as JSON), `version`,
//!   `status`, `definition`, `created_at_ms`, `updated_at_ms`, and the
//!   outbox (`outbox`, `outbox_at_ms`): commands decided by a stored
//!   transition and not yet carried out, as JSON lines.
//! - `N:wfs:outbox` (sorted set): the workflows that have an outbox, by
//!   when it was started (Redis clock): all the sweeper reads.
//! - `N:wf:{<id>}:events` (stream): the event log, one entry per stored
//!   transition, written by the same script as the state.
//! - `N:wfs:all` / `N:wfs:active` (sorted sets): every workflow / those not
//!   ended, by creation time. Written outside the transition (another slot);
//!   an id whose hash is missing is skipped and pruned.
//! - `N:wfs:{ended}` (sorted set) / `N:wfs:{ended}:bytes` (hash): ended
//!   workflows by end time (Redis clock) and their bytes, written by the
//!   transition that ends one; what retention expires ([`ended`]).
//! - `N:agent:{T}:deadlines` (sorted set): stage deadlines of type `T`'s
//!   tasks, by the server's clock, in `T`'s slot (armed by the dispatch).
//!
//! Every function takes the connection to use, so HTTP handlers pass a pooled
//! one and the loops their own long-lived ones.
//!
//! This module reads and writes the state and outbox; [`index`] the
//! listings, [`log`] the event log, [`timers`] the stage deadlines.

mod ended;
mod index;
mod log;
mod timers;

pub use ended::{ArchiveRecord, Deletion, EndedEntry, EndedTotals};
pub use index::{ListFilter, Page, Summary};
pub use log::{Change, EVENT_LOG_CAP, LogEntry};

use crate::error::Error;
use crate::machine::log::NewLogEntry;
use crate::machine::{Command, Workflow};
use crate::scripts;
use agent_sdk::schemas::Keys;
use redis::aio::ConnectionLike;

type Result<T, E = Error> = std::result::Result<T, E>;

/// A workflow as stored: state, version, and what its outbox still holds.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The state.
    pub workflow: Workflow,
    /// Transitions stored so far; the next one must expect this.
    pub version: u64,
    /// Commands decided and not yet carried out (oldest first).
    pub outbox: Vec<Command>,
    /// When the oldest of them was decided (ms, Redis clock).
    pub outbox_at_ms: Option<u64>,
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
            .key(self.keys.workflow_counts())
            .key(self.keys.workflows_outbox())
            .key(self.keys.workflows_ended())
            .key(self.keys.workflows_ended_bytes())
            .arg(expected)
            .arg(state)
            .arg(next.status.as_str())
            .arg(&next.definition)
            .arg(next.updated_at_ms)
            .arg(outbox)
            .arg(EVENT_LOG_CAP)
            .arg(self.keys.workflow_changes())
            .arg(change)
            .arg(id)
            .arg("type")
            .arg(&entry.kind)
            .arg("status")
            .arg(next.status.as_str())
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
        inv.key(self.keys.workflow(id)?)
            .key(self.keys.workflows_outbox())
            .arg(version)
            .arg(id);
        Ok(inv)
    }

    /// [`WorkflowStore::load_many`] with the Redis server's time (ms) read
    /// in the same round trip: the `now` of the transitions decided on
    /// these states, the one clock every replica shares.
    pub async fn load_many_at<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        ids: &[&str],
    ) -> Result<(u64, Vec<Result<Option<Stored>>>)> {
        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        for id in ids {
            pipe.cmd("HMGET").arg(self.keys.workflow(id)?).arg(&[
                "state",
                "version",
                "outbox",
                "outbox_at_ms",
            ]);
        }
        type Row = (Option<String>, Option<u64>, Option<String>, Option<u64>);
        let (time, rows): ((u64, u64), Vec<Row>) = {
            let mut v: Vec<redis::Value> = pipe.query_async(conn).await?;
            let rows = v.split_off(1.min(v.len()));
            let parse = |e: redis::ParsingError| Error::Redis(e.into());
            let time = v
                .pop()
                .map(redis::from_redis_value::<(u64, u64)>)
                .transpose()
                .map_err(parse)?
                .unwrap_or_default();
            let rows = rows
                .into_iter()
                .map(redis::from_redis_value::<Row>)
                .collect::<Result<Vec<Row>, _>>()
                .map_err(parse)?;
            (time, rows)
        };
        Ok((
            time_ms(time),
            ids.iter()
                .zip(rows)
                .map(|(id, row)| parse_stored(id, row))
                .collect(),
        ))
    }

    /// Takes `id` out of the outbox index when its hash holds no outbox
    /// (the sweeper found nothing to carry out), and out of the active index
    /// when it has ended; an id never stored (its creation died between
    /// indexing and storing) leaves every index once it is `orphan_after`
    /// old by the Redis server's clock. Returns what was found: 0 an outbox
    /// after all (or an orphan too young), 1 none, 2 an orphan removed.
    pub async fn forget_outbox<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
        orphan_after: std::time::Duration,
    ) -> Result<i64> {
        Ok(scripts::FORGET_OUTBOX
            .key(self.keys.workflow(id)?)
            .key(self.keys.workflows_outbox())
            .key(self.keys.workflows_all())
            .key(self.keys.workflows_active())
            .arg(id)
            .arg(orphan_after.as_millis() as u64)
            .invoke_async(conn)
            .await?)
    }
}

/// The Redis server's time (`TIME`) in ms.
pub async fn server_time_ms<C: ConnectionLike + Send>(conn: &mut C) -> Result<u64> {
    let t: (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(time_ms(t))
}

fn time_ms((secs, micros): (u64, u64)) -> u64 {
    secs * 1000 + micros / 1000
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
