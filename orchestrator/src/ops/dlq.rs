//! Dead letters, for operators: queue summaries, selection (ids or a
//! filter), the walk over a selection, replay, purge, and the filter an
//! operator's words make — the same for `agentctl` and the HTTP API.
//!
//! Replay is atomic per entry (`replay.lua` in the SDK: the entry is either
//! still dead or back in its task stream, and of two operators replaying the
//! same entry at once exactly one moves it). It is done a page at a time in
//! two steps: [`decide`] says, without I/O, what becomes of each entry found
//! (left, and why, or moved), then the page's moves are made. A replayed
//! task of a workflow is also recorded in that workflow (a `replayed` event,
//! which re-arms the stage's deadline) before it moves; the workflow resumes
//! when the task's result comes.

use crate::Result;
use crate::engine::{Engine, Outcome};
use crate::machine::{Event, StageStatus};
use agent_sdk::clock::now_ms;
use agent_sdk::schemas::{AgentType, DeadLetter, EntryId, Keys, names};
use agent_sdk::{DeadLetterFilter, DeadLetters};
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;

/// One agent type's dead-letter queue at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct DlqSummary {
    /// The agent type.
    pub agent_type: String,
    /// Dead letters.
    pub count: u64,
    /// When the oldest was dead-lettered (ms, Redis clock), if any.
    pub oldest_ms: Option<u64>,
    /// When the newest was dead-lettered (ms, Redis clock), if any.
    pub newest_ms: Option<u64>,
}

/// Dead-letter counts of `types` (one pipeline per type).
pub async fn dlq_summaries<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    types: &[AgentType],
) -> Result<Vec<DlqSummary>> {
    let mut out = Vec::with_capacity(types.len());
    for t in types {
        let key = keys.dlq(t);
        type Ends = Vec<(String, redis::Value)>;
        let (count, first, last): (u64, Ends, Ends) = redis::pipe()
            .cmd("XLEN")
            .arg(&key)
            .cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await?;
        out.push(DlqSummary {
            agent_type: t.to_string(),
            count,
            oldest_ms: first.first().and_then(|(id, _)| EntryId::ms_of(id)),
            newest_ms: last.first().and_then(|(id, _)| EntryId::ms_of(id)),
        });
    }
    Ok(out)
}

/// Which dead letters of one agent type an operation takes.
#[derive(Debug, Clone)]
pub enum Selection {
    /// These entry ids.
    Ids(Vec<String>),
    /// Every entry matching the filter (all of them with the default one).
    Matching(DeadLetterFilter),
}

/// What happened to one selected dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReplayOutcome {
    /// Moved back to the task stream.
    Replayed,
    /// Not there any more (replayed or purged by someone else, or never was).
    Gone,
    /// A dry run: would be moved.
    WouldReplay,
    /// Left in the DLQ: its workflow has ended, so its result would change
    /// nothing while its side effects would still happen (replay with
    /// `force` to run it anyway).
    WorkflowEnded,
    /// Left in the DLQ: Redis refused to move this entry (`error` says
    /// why); the others went on.
    Failed,
}

/// One selected dead letter and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ReplayItem {
    /// DLQ entry id.
    pub id: String,
    /// Task id, when known.
    pub task_id: Option<String>,
    /// Workflow, when known.
    pub workflow_id: Option<String>,
    /// What happened.
    pub outcome: ReplayOutcome,
    /// The task's new entry id in the task stream, when replayed.
    pub new_entry_id: Option<String>,
    /// Why it could not be moved, when `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The whole of one replay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ReplayReport {
    /// Nothing was moved.
    pub dry_run: bool,
    /// Dead letters selected.
    pub matched: u64,
    /// Moved back to the task stream.
    pub replayed: u64,
    /// Selected but gone by the time of the move.
    pub gone: u64,
    /// Left in the DLQ because their workflow has ended.
    pub skipped: u64,
    /// Left in the DLQ because Redis refused to move them.
    pub failed: u64,
    /// Each selected dead letter, in order (the first ones only when
    /// `items_left_out` is not 0).
    pub items: Vec<ReplayItem>,
    /// Items not listed (the counts above include them).
    #[serde(default)]
    pub items_left_out: u64,
}

impl ReplayReport {
    /// The report listing at most `max` items.
    pub fn capped(mut self, max: usize) -> Self {
        if self.items.len() > max {
            self.items_left_out += (self.items.len() - max) as u64;
            self.items.truncate(max);
        }
        self
    }
}

/// How to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Move nothing; report what would move.
    pub dry_run: bool,
    /// At most this many per second.
    pub rate: Option<f64>,
    /// Replay tasks of workflows that have ended too.
    pub force: bool,
    /// Who replays (an API token's name), recorded in each workflow's
    /// `replayed` log entry.
    pub by: Option<String>,
}

/// The slowest and fastest pace a replay takes (entries per second).
pub const RATE_RANGE: std::ops::RangeInclusive<f64> = 0.001..=1_000_000.0;

/// Page size when walking a selection.
const WALK_PAGE: usize = 500;

/// Walks the dead letters of `selection` a page at a time: oldest first
/// for a filter, in the given order for ids (an id that is not there comes
/// as `Err(id)`). A filter is walked with a cursor, so entries moved
/// meanwhile (by the caller or by anyone) are neither skipped nor met twice.
///
/// A filter walk stops at the newest entry there was when it started: a
/// replayed task that fails again is dead-lettered anew, at the end of the
/// stream, and must not be met (and replayed) again by the same walk.
#[derive(Debug)]
pub struct Walk {
    ids: Option<std::vec::IntoIter<String>>,
    filter: DeadLetterFilter,
    /// The newest entry id when the walk started (`None`: not read yet).
    until: Option<Option<EntryId>>,
    done: bool,
}

impl Walk {
    /// A walk over `selection`.
    pub fn new(selection: &Selection) -> Self {
        match selection {
            Selection::Ids(ids) => Self {
                ids: Some(ids.clone().into_iter()),
                filter: DeadLetterFilter::default(),
                until: None,
                done: false,
            },
            Selection::Matching(filter) => Self {
                ids: None,
                filter: DeadLetterFilter {
                    limit: WALK_PAGE,
                    ..filter.clone()
                },
                until: None,
                done: false,
            },
        }
    }

    /// The next page; `None` at the end.
    pub async fn next(
        &mut self,
        dlq: &DeadLetters,
        agent_type: &AgentType,
    ) -> Result<Option<Vec<Result<DeadLetter, String>>>> {
        if self.done {
            return Ok(None);
        }
        if let Some(ids) = &mut self.ids {
            let Some(id) = ids.next() else {
                self.done = true;
                return Ok(None);
            };
            return Ok(Some(vec![dlq.get(agent_type, &id).await?.ok_or(id)]));
        }
        let until = match self.until {
            Some(u) => u,
            None => {
                let u = dlq
                    .newest_id(agent_type)
                    .await?
                    .as_deref()
                    .and_then(EntryId::parse);
                self.until = Some(u);
                u
            }
        };
        let Some(until) = until else {
            // The DLQ was empty when the walk started.
            self.done = true;
            return Ok(None);
        };
        let page = dlq.list(agent_type, &self.filter).await?;
        match page.next {
            Some(next) => self.filter.after = Some(next),
            None => self.done = true,
        }
        let mut items = Vec::with_capacity(page.items.len());
        for d in page.items {
            if EntryId::parse(&d.id).is_none_or(|id| id > until) {
                self.done = true;
                break;
            }
            items.push(Ok(d));
        }
        Ok(Some(items))
    }
}

/// What becomes of one entry a replay found: left where it is (and why),
/// or `None`: moved. No I/O: `ended` are the page's workflows that have
/// ended.
pub fn decide(
    found: &Result<DeadLetter, String>,
    ended: &BTreeSet<String>,
    opts: &ReplayOptions,
) -> Option<ReplayOutcome> {
    match found {
        Err(_) => Some(ReplayOutcome::Gone),
        Ok(d) if !opts.force && d.workflow_id.as_ref().is_some_and(|w| ended.contains(w)) => {
            Some(ReplayOutcome::WorkflowEnded)
        }
        Ok(_) if opts.dry_run => Some(ReplayOutcome::WouldReplay),
        Ok(_) => None,
    }
}

/// How the move of one entry went: its new entry id, `None` when it was
/// gone by then, or why Redis refused it.
type Moved = std::result::Result<Option<String>, String>;

impl ReplayReport {
    /// Counts `item` and keeps it.
    fn add(&mut self, item: ReplayItem) {
        self.matched += 1;
        match item.outcome {
            ReplayOutcome::Replayed => self.replayed += 1,
            ReplayOutcome::Gone => self.gone += 1,
            ReplayOutcome::WorkflowEnded => self.skipped += 1,
            ReplayOutcome::Failed => self.failed += 1,
            ReplayOutcome::WouldReplay => {}
        }
        self.items.push(item);
    }
}

/// Replays the dead letters of `selection`; `progress` is called after
/// each one (for a progress bar). Each move is atomic on its own; a replay
/// stopped halfway leaves every entry either replayed or still dead.
///
/// A dead letter of a workflow is recorded in that workflow *before* it
/// moves (a `replayed` event: the stage runs again, its deadline armed):
/// recorded after, a replayed task that failed again at once would be
/// dead-lettered first and the late `replayed` would set the stage running
/// with nothing to run it, until its deadline failed the workflow. In this
/// order a task that fails again blocks the workflow again. Dead letters
/// of ended workflows are left where they are unless `force`.
pub async fn replay<C, P>(
    engine: &Engine,
    conn: &mut C,
    agent_type: &AgentType,
    selection: &Selection,
    opts: &ReplayOptions,
    mut progress: P,
) -> Result<ReplayReport>
where
    C: ConnectionLike + Send,
    P: FnMut(&ReplayItem),
{
    let dlq = engine.client().dead_letters();
    let mut report = ReplayReport {
        dry_run: opts.dry_run,
        ..ReplayReport::default()
    };
    let mut pace = opts
        .rate
        .map(|r| r.clamp(*RATE_RANGE.start(), *RATE_RANGE.end()))
        .map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r)));
    let mut walk = Walk::new(selection);
    while let Some(page) = walk.next(&dlq, agent_type).await? {
        let ended = ended_workflows(engine, conn, &page).await?;
        let verdicts: Vec<Option<ReplayOutcome>> =
            page.iter().map(|f| decide(f, &ended, opts)).collect();
        let to_move: Vec<&DeadLetter> = page
            .iter()
            .zip(&verdicts)
            .filter_map(|(f, v)| match (f, v) {
                (Ok(d), None) => Some(d),
                _ => None,
            })
            .collect();
        let mut moved = move_page(
            engine,
            conn,
            &dlq,
            agent_type,
            &to_move,
            pace.as_mut(),
            opts.by.as_deref(),
        )
        .await?
        .into_iter();
        for (found, verdict) in page.into_iter().zip(verdicts) {
            let item = match found {
                Err(id) => ReplayItem {
                    id,
                    task_id: None,
                    workflow_id: None,
                    outcome: ReplayOutcome::Gone,
                    new_entry_id: None,
                    error: None,
                },
                Ok(d) => {
                    let (outcome, new_entry_id, error) = match verdict {
                        Some(v) => (v, None, None),
                        None => match moved.next().unwrap_or(Ok(None)) {
                            Ok(Some(new_id)) => (ReplayOutcome::Replayed, Some(new_id), None),
                            Ok(None) => (ReplayOutcome::Gone, None, None),
                            Err(e) => (ReplayOutcome::Failed, None, Some(e)),
                        },
                    };
                    ReplayItem {
                        id: d.id,
                        task_id: d.task_id,
                        workflow_id: d.workflow_id,
                        outcome,
                        new_entry_id,
                        error,
                    }
                }
            };
            progress(&item);
            report.add(item);
        }
    }
    Ok(report)
}

/// Moves `page` back to its task stream, each entry recorded in its
/// workflow first. Unpaced, the page moves in one round trip (each entry
/// still on its own, atomically); paced, one entry per tick. One result per
/// entry, in order.
async fn move_page<C: ConnectionLike + Send>(
    engine: &Engine,
    conn: &mut C,
    dlq: &DeadLetters,
    agent_type: &AgentType,
    page: &[&DeadLetter],
    pace: Option<&mut tokio::time::Interval>,
    by: Option<&str>,
) -> Result<Vec<Moved>> {
    let Some(pace) = pace else {
        for d in page {
            record_in_workflow(engine, conn, d, by).await;
        }
        let ids: Vec<String> = page.iter().map(|d| d.id.clone()).collect();
        return Ok(dlq.replay_many(agent_type, &ids).await?);
    };
    let mut out = Vec::with_capacity(page.len());
    for d in page {
        pace.tick().await;
        record_in_workflow(engine, conn, d, by).await;
        let moved = dlq
            .replay_many(agent_type, std::slice::from_ref(&d.id))
            .await?
            .pop()
            .unwrap_or(Ok(None));
        out.push(moved);
    }
    Ok(out)
}

/// The workflows of `page` that have ended (one pipelined read).
async fn ended_workflows<C: ConnectionLike + Send>(
    engine: &Engine,
    conn: &mut C,
    page: &[Result<DeadLetter, String>],
) -> Result<BTreeSet<String>> {
    let ids: BTreeSet<String> = page
        .iter()
        .filter_map(|f| f.as_ref().ok()?.workflow_id.clone())
        .filter(|w| names::validate_workflow_id(w).is_ok())
        .collect();
    let ids: Vec<String> = ids.into_iter().collect();
    Ok(engine
        .store()
        .summaries(conn, &ids)
        .await?
        .into_iter()
        .flatten()
        .filter(|s| s.status.is_terminal())
        .map(|s| s.id)
        .collect())
}

/// Records the replay of `d` in its workflow when `d` is its stage's
/// current task and the stage is dead-lettered (see [`replay`] for why
/// before the move). Best effort: the workflow resumes on the task's
/// result either way.
async fn record_in_workflow<C: ConnectionLike + Send>(
    engine: &Engine,
    conn: &mut C,
    d: &DeadLetter,
    by: Option<&str>,
) {
    let (Some(wf_id), Some(stage), Some(task_id)) = (&d.workflow_id, &d.stage, &d.task_id) else {
        return;
    };
    if names::validate_workflow_id(wf_id).is_err() {
        return;
    }
    let current = match engine.store().load(conn, wf_id).await {
        Ok(Some(stored)) => stored.workflow.stage(stage).is_some_and(|s| {
            s.status == StageStatus::DeadLettered && s.task_id.as_ref() == Some(task_id)
        }),
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(workflow = %wf_id, error = %e, "cannot read the workflow of a replayed dead letter");
            false
        }
    };
    if !current {
        return;
    }
    let event = Event::Replayed {
        stage: stage.clone(),
    };
    match engine.signal_by(conn, wf_id, &event, by).await {
        Ok(Outcome::Applied { .. } | Outcome::Unchanged { .. } | Outcome::NotFound) => {}
        Err(e) => {
            tracing::warn!(workflow = %wf_id, error = %e, "cannot record a replay in its workflow");
        }
    }
}

/// Which dead letters a purge deletes.
#[derive(Debug, Clone)]
pub enum PurgeSelection {
    /// These entry ids.
    Ids(Vec<String>),
    /// All of them.
    All,
    /// Those dead-lettered more than this long ago (Redis clock).
    OlderThan(Duration),
    /// Those matching a filter.
    Matching(DeadLetterFilter),
}

/// Deletes the dead letters of `selection`; returns how many were deleted.
pub async fn purge<C: ConnectionLike + Send>(
    dlq: &DeadLetters,
    conn: &mut C,
    agent_type: &AgentType,
    selection: &PurgeSelection,
) -> Result<u64> {
    Ok(match selection {
        PurgeSelection::Ids(ids) => dlq.purge(agent_type, ids).await?,
        PurgeSelection::All => dlq.purge_all(agent_type).await?,
        PurgeSelection::OlderThan(age) => {
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
            let now_ms = secs * 1000 + micros / 1000;
            let cutoff = now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
            dlq.purge_older_than(agent_type, cutoff).await?
        }
        PurgeSelection::Matching(filter) => {
            let mut ids = Vec::new();
            let mut walk = Walk::new(&Selection::Matching(filter.clone()));
            while let Some(page) = walk.next(dlq, agent_type).await? {
                ids.extend(page.into_iter().flatten().map(|d| d.id));
            }
            let mut n = 0;
            for chunk in ids.chunks(WALK_PAGE) {
                n += dlq.purge(agent_type, chunk).await?;
            }
            n
        }
    })
}

/// The filter an operator's words make (the API's query and `agentctl`'s
/// flags): errors containing a text, one workflow's, failed since (see
/// [`parse_since`]). The error names what is wrong with `since`.
pub fn dead_letter_filter(
    error_contains: Option<String>,
    workflow: Option<String>,
    since: Option<&str>,
) -> std::result::Result<DeadLetterFilter, String> {
    Ok(DeadLetterFilter {
        error_contains,
        workflow_id: workflow,
        since_ms: since.map(|s| parse_since(s, now_ms())).transpose()?,
        ..DeadLetterFilter::default()
    })
}

/// Parses a "since" given by an operator: a duration ago (`90m`, `2h`,
/// `7d`) or an RFC 3339 time (`2026-11-23T10:00:00Z`); returns ms since the
/// Unix epoch.
pub fn parse_since(s: &str, now_ms: u64) -> std::result::Result<u64, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_ms.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
    }
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .ok_or_else(|| {
            format!("{s:?} is neither a duration (90m, 2h, 7d) nor a time (2026-11-23T10:00:00Z)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        assert_eq!(parse_since("90m", 10_000_000), Ok(10_000_000 - 90 * 60_000));
        assert_eq!(parse_since("1970-01-01T00:00:10Z", 0), Ok(10_000));
        assert!(parse_since("yesterday", 0).is_err());
    }
}
