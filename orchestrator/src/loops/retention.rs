//! Retention: ended workflows (completed, failed, cancelled) expire, oldest
//! first, once they are older than `max_age`, or beyond `max_count`, or
//! beyond `max_bytes` (the bytes each had when it ended). A workflow that
//! has not ended — running, awaiting approval, `blocked` on a dead letter —
//! is never in the ended index and never expires.
//!
//! Every rule removes a prefix of the same order (oldest end first), so one
//! pass over the oldest entries decides all three. Ages are by the Redis
//! server's clock: the end time was written by `TIME` in the transition
//! script, and "now" is read with `TIME`.
//!
//! Optionally each expired workflow is archived first as one JSON line (an
//! [`ArchiveRecord`]) to a file and/or to the stream `N:wfs:archive`; if an
//! archive write fails, nothing is deleted in that round. Archiving is at
//! least once: a replica that dies between the archive write and the
//! deletion archives the workflow again next round (readers dedupe by id).
//!
//! Several replicas can run this loop: a lease (`N:lease:retention`) lets
//! one work per round, and the deletion itself is idempotent.

use crate::Result;
use crate::error::Error;
use crate::ops::housekeeping::{
    ChoreLease, HousekeepingSettings, housekeep_once, mark_present, server_time_ms,
};
use crate::store::{ArchiveRecord, Deletion, WorkflowStore};
use agent_sdk::shutdown::pause;
use redis::aio::ConnectionManager;
use serde::Serialize;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Workflows looked at per batch.
const BATCH: usize = 200;
/// Most workflows expired in one round (the rest wait for the next).
const ROUND_MAX: u64 = 20_000;

/// Where expired workflows are archived before deletion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveSettings {
    /// Append one JSON line per workflow to this file (synced before the
    /// workflow is deleted).
    pub file: Option<PathBuf>,
    /// Add one entry per workflow to `N:wfs:archive`, capped at about
    /// this many entries.
    pub stream_max_len: Option<usize>,
}

/// The retention rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Time between rounds.
    pub interval: Duration,
    /// An ended workflow older than this (since it ended) expires.
    pub max_age: Duration,
    /// At most this many ended workflows are kept (oldest expire first).
    pub max_count: Option<u64>,
    /// At most this many bytes of ended workflows are kept.
    pub max_bytes: Option<u64>,
    /// Archive before deletion.
    pub archive: ArchiveSettings,
}

/// Why a workflow expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Older than `max_age`.
    Age,
    /// Beyond `max_count`.
    Count,
    /// Beyond `max_bytes`.
    Bytes,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Age => "age",
            Self::Count => "count",
            Self::Bytes => "bytes",
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    /// Deleted because of age.
    pub by_age: u64,
    /// Deleted because of the count cap.
    pub by_count: u64,
    /// Deleted because of the bytes cap.
    pub by_bytes: u64,
    /// Bytes released (as measured when they ended).
    pub bytes_freed: u64,
    /// Archive lines written.
    pub archived: u64,
    /// Due, but kept this round (last commands not carried out yet).
    pub deferred: u64,
}

impl RetentionReport {
    /// Workflows deleted.
    pub fn deleted(&self) -> u64 {
        self.by_age + self.by_count + self.by_bytes
    }
}

/// The oldest ended workflows that are due, with why, in the order to
/// delete them. No I/O: `oldest` are `(end ms, bytes)` oldest first, `count`
/// and `bytes` the index's totals, `now_ms` the Redis clock.
pub fn due(
    s: &RetentionSettings,
    now_ms: u64,
    count: u64,
    bytes: u64,
    oldest: &[(u64, u64)],
) -> Vec<Reason> {
    let cutoff = now_ms.saturating_sub(u64::try_from(s.max_age.as_millis()).unwrap_or(u64::MAX));
    let (mut count, mut bytes) = (count, bytes);
    let mut out = Vec::new();
    for &(ended, b) in oldest {
        let reason = if ended <= cutoff {
            Reason::Age
        } else if s.max_count.is_some_and(|m| count > m) {
            Reason::Count
        } else if s.max_bytes.is_some_and(|m| bytes > m) {
            Reason::Bytes
        } else {
            break;
        };
        out.push(reason);
        count = count.saturating_sub(1);
        bytes = bytes.saturating_sub(b);
    }
    out
}

/// One round: expires every due workflow (at most [`ROUND_MAX`]).
pub async fn retain_once<C: redis::aio::ConnectionLike + Send>(
    store: &WorkflowStore,
    conn: &mut C,
    s: &RetentionSettings,
) -> Result<RetentionReport> {
    let mut report = RetentionReport::default();
    // Deferred ones stay at the head of the index: look past them.
    let mut skip: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        let now = server_time_ms(conn).await?;
        let totals = store.ended_totals(conn).await?;
        let entries = store.ended_oldest(conn, None, BATCH + skip.len()).await?;
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let bytes = store.ended_bytes(conn, &ids).await?;
        let oldest: Vec<(u64, u64)> = entries
            .iter()
            .zip(&bytes)
            .map(|(e, b)| (e.ended_at_ms, *b))
            .collect();
        let reasons = due(s, now, totals.count, totals.bytes, &oldest);
        let picked: Vec<(&str, Reason)> = ids
            .iter()
            .zip(reasons)
            .filter(|(id, _)| !skip.contains(**id))
            .map(|(id, r)| (*id, r))
            .collect();
        if picked.is_empty() {
            return Ok(report);
        }
        // Those whose last commands are still being carried out wait.
        let mut pipe = redis::pipe();
        for (id, _) in &picked {
            pipe.hexists(store.keys().workflow(id)?, "outbox");
        }
        let busy: Vec<bool> = pipe.query_async(conn).await?;
        let mut ready = Vec::new();
        for ((id, r), busy) in picked.into_iter().zip(busy) {
            if busy {
                skip.insert(id.to_owned());
                report.deferred += 1;
            } else {
                ready.push((id, r));
            }
        }
        archive(store, conn, &s.archive, &ready, &mut report).await?;
        for (id, reason) in ready {
            match store.delete_ended(conn, id).await? {
                Deletion::Deleted { bytes, .. } => {
                    match reason {
                        Reason::Age => report.by_age += 1,
                        Reason::Count => report.by_count += 1,
                        Reason::Bytes => report.by_bytes += 1,
                    }
                    report.bytes_freed += bytes;
                    metrics::counter!("orchestrator_workflows_expired_total", "reason" => reason.as_str())
                        .increment(1);
                }
                // Cleaned already (another replica, an operator).
                Deletion::Gone => {}
                Deletion::OutboxPending(_) | Deletion::NotEnded(_) => {
                    skip.insert(id.to_owned());
                    report.deferred += 1;
                }
            }
        }
        if report.deleted() >= ROUND_MAX {
            return Ok(report);
        }
    }
}

/// Archives `ready` where the settings say; an error means nothing of this
/// batch may be deleted.
async fn archive<C: redis::aio::ConnectionLike + Send>(
    store: &WorkflowStore,
    conn: &mut C,
    a: &ArchiveSettings,
    ready: &[(&str, Reason)],
    report: &mut RetentionReport,
) -> Result<()> {
    if (a.file.is_none() && a.stream_max_len.is_none()) || ready.is_empty() {
        return Ok(());
    }
    let mut lines = Vec::with_capacity(ready.len());
    for (id, _) in ready {
        if let Some(rec) = store.archive_record(conn, id).await? {
            lines.push(archive_line(&rec)?);
        }
    }
    if let Some(path) = &a.file {
        let path = path.clone();
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(text.as_bytes())?;
            // On disk before the workflow leaves Redis.
            f.sync_data()
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
        .map_err(|e| {
            metrics::counter!("orchestrator_archive_failures_total", "to" => "file").increment(1);
            Error::Io(e)
        })?;
    }
    if let Some(max_len) = a.stream_max_len {
        let mut pipe = redis::pipe();
        for l in &lines {
            pipe.cmd("XADD")
                .arg(store.keys().workflow_archive())
                .arg("MAXLEN")
                .arg("~")
                .arg(max_len)
                .arg("*")
                .arg("workflow")
                .arg(l)
                .ignore();
        }
        pipe.query_async::<()>(conn).await.inspect_err(|_| {
            metrics::counter!("orchestrator_archive_failures_total", "to" => "stream").increment(1);
        })?;
    }
    report.archived += lines.len() as u64;
    Ok(())
}

/// The JSON line of one archived workflow.
pub fn archive_line(rec: &ArchiveRecord) -> Result<String> {
    serde_json::to_string(rec).map_err(|e| Error::Corrupt {
        what: "workflow",
        id: rec.id.clone(),
        why: e.to_string(),
    })
}

/// Runs a round every `interval` (when this replica holds the lease),
/// until `stop`.
pub async fn run_retention(
    store: WorkflowStore,
    mut conn: ConnectionManager,
    holder: String,
    s: RetentionSettings,
    stop: CancellationToken,
) {
    let lease = ChoreLease::new(store.keys().chore_lease("retention"), holder, s.interval);
    // Workflows that ended under a version without the ended index.
    let mut backfilled = false;
    loop {
        if !backfilled {
            match store.backfill_ended(&mut conn).await {
                Ok(Some(n)) => {
                    backfilled = true;
                    tracing::info!(
                        workflows = n,
                        "ended workflows stored before retention indexed"
                    );
                }
                Ok(None) => backfilled = true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot index older ended workflows yet; trying again")
                }
            }
        }
        match lease.take(&mut conn).await {
            Ok(true) => match retain_once(&store, &mut conn, &s).await {
                Ok(r) if r.deleted() > 0 || r.deferred > 0 => tracing::info!(
                    by_age = r.by_age,
                    by_count = r.by_count,
                    by_bytes = r.by_bytes,
                    bytes_freed = r.bytes_freed,
                    archived = r.archived,
                    deferred = r.deferred,
                    "retention expired ended workflows"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "retention round failed; nothing unarchived was deleted, trying again next round")
                }
            },
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot take the retention lease; trying again"),
        }
        if pause(&stop, s.interval).await {
            return;
        }
    }
}

/// The streams' housekeeping ([`crate::ops::housekeeping`]) every
/// `interval` while this replica holds its lease, until `stop`.
pub async fn run_housekeeping(
    keys: agent_sdk::schemas::Keys,
    mut conn: ConnectionManager,
    holder: String,
    s: HousekeepingSettings,
    stop: CancellationToken,
) {
    let lease = ChoreLease::new(keys.chore_lease("housekeeping"), holder.clone(), s.interval);
    loop {
        let round = async {
            // Every replica, leaseholder or not: its consumers are live.
            mark_present(&mut conn, &keys, &holder, s.interval * 3).await?;
            if !lease.take(&mut conn).await? {
                return Ok(None);
            }
            let types = crate::ops::streams::agent_types(&mut conn, &keys).await?;
            housekeep_once(&mut conn, &keys, &types, &s).await.map(Some)
        };
        match round.await {
            Ok(Some(r))
                if !r.consumers.removed.is_empty() || r.results.iter().any(|t| t.trimmed > 0) =>
            {
                tracing::info!(
                    consumers_pruned = r.consumers.removed.len(),
                    results_trimmed = r.results.iter().map(|t| t.trimmed).sum::<u64>(),
                    "housekeeping pruned dead consumers and unread results"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "housekeeping round failed; trying again next round")
            }
        }
        if pause(&stop, s.interval).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(age_s: u64, count: Option<u64>, bytes: Option<u64>) -> RetentionSettings {
        RetentionSettings {
            interval: Duration::from_secs(1),
            max_age: Duration::from_secs(age_s),
            max_count: count,
            max_bytes: bytes,
            archive: ArchiveSettings::default(),
        }
    }

    #[test]
    fn each_rule_takes_the_oldest_prefix() {
        let oldest = [(1_000, 10), (2_000, 10), (3_000, 10), (9_000, 10)];
        // Age: ended at or before now - 7 s.
        assert_eq!(
            due(&settings(7, None, None), 10_000, 4, 40, &oldest),
            vec![Reason::Age, Reason::Age, Reason::Age]
        );
        // Count: keep 1.
        assert_eq!(
            due(&settings(100, Some(1), None), 10_000, 4, 40, &oldest),
            vec![Reason::Count; 3]
        );
        // Bytes: keep at most 25.
        assert_eq!(
            due(&settings(100, None, Some(25)), 10_000, 4, 40, &oldest),
            vec![Reason::Bytes; 2]
        );
        // Nothing due.
        assert!(due(&settings(100, Some(4), Some(40)), 10_000, 4, 40, &oldest).is_empty());
        // Age first, then the count on what is left.
        assert_eq!(
            due(&settings(8, Some(1), None), 10_000, 4, 40, &oldest),
            vec![Reason::Age, Reason::Age, Reason::Count]
        );
    }
}
