//! What operators look at and do, in one place so that `agentctl` and the
//! HTTP API (and so the dashboard) behave the same: dead-letter summaries,
//! selection, replay and purge; stream statistics; workflow counts.
//!
//! Replay is atomic per entry (`replay.lua` in the SDK: the entry is either
//! still dead or back in its task stream, and of two operators replaying the
//! same entry at once exactly one moves it). A replayed task of a workflow
//! is also recorded in that workflow (a `replayed` event, which re-arms the
//! stage's deadline); the workflow resumes when the task's result comes.

use crate::Result;
use crate::engine::{Engine, Outcome};
use crate::machine::{Event, StageStatus};
use crate::store::{ALL_STATUSES, WorkflowStore, parse_status, status_str};
use agent_sdk::schemas::{
    AgentType, DeadLetter, DecodeLimits, Keys, TaskEnvelope, WORKERS_GROUP, codec::decode_any,
    fields, names,
};
use agent_sdk::{DeadLetterFilter, DeadLetters};
use base64::Engine as _;
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

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

/// A stream entry id (`ms-seq`, both decimal digits only) as numbers, for
/// checking ids operators give and for ordering; `None` when it is not one.
pub fn parse_entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms) || !digits(seq) {
        return None;
    }
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The millisecond part of a stream entry id (`ms-seq`).
pub fn entry_id_ms(id: &str) -> Option<u64> {
    parse_entry_id(id).map(|(ms, _)| ms)
}

/// One agent type's queues, as `agentctl streams` and `GET /streams` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamStats {
    /// The agent type.
    pub agent_type: String,
    /// Entries in the task stream (read or not; acknowledged ones are deleted).
    pub backlog: u64,
    /// Delivered to a worker and not yet acknowledged.
    pub pending: u64,
    /// Age of the oldest pending task since it was enqueued (ms, Redis clock).
    pub oldest_pending_age_ms: Option<u64>,
    /// Consumers in the workers' group (live or not).
    pub consumers: u64,
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
        let mut s = StreamStats {
            agent_type: t.to_string(),
            backlog,
            pending: 0,
            oldest_pending_age_ms: None,
            consumers: 0,
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
            if let Some(g) = group {
                s.pending = u64_of(g.get("pending")).unwrap_or(0);
                s.consumers = u64_of(g.get("consumers")).unwrap_or(0);
                s.lag = u64_of(g.get("lag"));
                if s.pending > 0 {
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
                            entry_id_ms(&min).map(|ms| now_ms.saturating_sub(ms));
                    }
                }
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// One agent type's dead-letter queue at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
            oldest_ms: first.first().and_then(|(id, _)| entry_id_ms(id)),
            newest_ms: last.first().and_then(|(id, _)| entry_id_ms(id)),
        });
    }
    Ok(out)
}

/// A dead letter without its raw fields: what lists show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetterSummary {
    /// DLQ entry id: the handle for show, replay and purge.
    pub id: String,
    /// Agent type whose task it was.
    pub agent_type: String,
    /// Task id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Workflow, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// Stage, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Why: `permanent`, `attempts_exhausted`, `malformed`, `max_deliveries`.
    pub reason: String,
    /// The last error message.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// Worker instance that dead-lettered it.
    pub worker: String,
    /// When (ms since the Unix epoch, that worker's clock).
    pub failed_at_ms: u64,
    /// Entry id the task had in its task stream.
    pub source_id: String,
}

impl From<&DeadLetter> for DeadLetterSummary {
    fn from(d: &DeadLetter) -> Self {
        Self {
            id: d.id.clone(),
            agent_type: d.agent_type.clone(),
            task_id: d.task_id.clone(),
            workflow_id: d.workflow_id.clone(),
            stage: d.stage.clone(),
            reason: d.reason.as_str().to_owned(),
            error: d.error.clone(),
            attempts: d.attempts,
            worker: d.worker.clone(),
            failed_at_ms: d.failed_at_ms,
            source_id: d.source_id.clone(),
        }
    }
}

/// One raw field of the original task entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RawField {
    /// Field name.
    pub name: String,
    /// The value as text, when it is UTF-8.
    pub text: Option<String>,
    /// The value's bytes, base64 (standard alphabet, padded).
    pub base64: String,
}

/// A dead letter in full: the entry, the task envelope decoded from its raw
/// body (or why it cannot be), and the raw fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetterDetail {
    /// The entry.
    pub dead_letter: DeadLetterSummary,
    /// The task envelope, decoded from the raw `body`.
    pub envelope: Option<TaskEnvelope>,
    /// Why the body could not be decoded, when it could not.
    pub decode_error: Option<String>,
    /// The original entry's fields, byte for byte.
    pub raw: Vec<RawField>,
}

/// Largest body decoded for display (bodies over the task limit were
/// dead-lettered as malformed and are shown raw).
const SHOW_MAX_BODY: usize = 16 * 1024 * 1024;

impl From<&DeadLetter> for DeadLetterDetail {
    fn from(d: &DeadLetter) -> Self {
        let (envelope, decode_error) = match d.raw_field(fields::BODY) {
            None => (None, Some("the entry has no body field".to_owned())),
            Some(body) => match decode_any::<TaskEnvelope>(
                body,
                DecodeLimits {
                    max_bytes: SHOW_MAX_BODY,
                    ..DecodeLimits::default()
                },
            ) {
                Ok((env, _)) => (Some(env), None),
                Err(e) => (None, Some(e.to_string())),
            },
        };
        Self {
            dead_letter: d.into(),
            envelope,
            decode_error,
            raw: d
                .raw
                .iter()
                .map(|(name, v)| RawField {
                    name: name.clone(),
                    text: std::str::from_utf8(v).ok().map(str::to_owned),
                    base64: base64::engine::general_purpose::STANDARD.encode(v),
                })
                .collect(),
        }
    }
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    until: Option<Option<(u64, u64)>>,
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
                    .and_then(parse_entry_id);
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
            if parse_entry_id(&d.id).is_none_or(|id| id > until) {
                self.done = true;
                break;
            }
            items.push(Ok(d));
        }
        Ok(Some(items))
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
        // What each found entry will be: left (and why), or moved.
        let mut plan: Vec<(Result<DeadLetter, String>, Option<ReplayOutcome>)> = page
            .into_iter()
            .map(|found| {
                let verdict = match &found {
                    Err(_) => Some(ReplayOutcome::Gone),
                    Ok(d)
                        if !opts.force
                            && d.workflow_id.as_ref().is_some_and(|w| ended.contains(w)) =>
                    {
                        Some(ReplayOutcome::WorkflowEnded)
                    }
                    Ok(_) if opts.dry_run => Some(ReplayOutcome::WouldReplay),
                    Ok(_) => None,
                };
                (found, verdict)
            })
            .collect();
        // Unpaced, the page moves in one round trip (each entry still on
        // its own, atomically); paced, one entry per tick.
        let mut moves = Vec::new();
        if pace.is_none() {
            let mut ids = Vec::new();
            for (found, verdict) in &plan {
                if let (Ok(d), None) = (found, verdict) {
                    record_in_workflow(engine, conn, d).await;
                    ids.push(d.id.clone());
                }
            }
            moves = dlq.replay_many(agent_type, &ids).await?;
        }
        let mut moves = moves.into_iter();
        for (found, verdict) in plan.drain(..) {
            report.matched += 1;
            let (d, outcome, new_entry_id, error) = match (found, verdict) {
                (Err(id), _) => {
                    let item = ReplayItem {
                        id,
                        task_id: None,
                        workflow_id: None,
                        outcome: ReplayOutcome::Gone,
                        new_entry_id: None,
                        error: None,
                    };
                    report.gone += 1;
                    progress(&item);
                    report.items.push(item);
                    continue;
                }
                (Ok(d), Some(verdict)) => (d, verdict, None, None),
                (Ok(d), None) => {
                    let moved = match pace.as_mut() {
                        Some(p) => {
                            p.tick().await;
                            record_in_workflow(engine, conn, &d).await;
                            dlq.replay_many(agent_type, std::slice::from_ref(&d.id))
                                .await?
                                .pop()
                                .unwrap_or(Ok(None))
                        }
                        None => moves.next().unwrap_or(Ok(None)),
                    };
                    match moved {
                        Ok(Some(new_id)) => (d, ReplayOutcome::Replayed, Some(new_id), None),
                        Ok(None) => (d, ReplayOutcome::Gone, None, None),
                        Err(e) => (d, ReplayOutcome::Failed, None, Some(e)),
                    }
                }
            };
            match outcome {
                ReplayOutcome::Replayed => report.replayed += 1,
                ReplayOutcome::Gone => report.gone += 1,
                ReplayOutcome::WorkflowEnded => report.skipped += 1,
                ReplayOutcome::Failed => report.failed += 1,
                ReplayOutcome::WouldReplay => {}
            }
            let item = ReplayItem {
                id: d.id,
                task_id: d.task_id,
                workflow_id: d.workflow_id,
                outcome,
                new_entry_id,
                error,
            };
            progress(&item);
            report.items.push(item);
        }
    }
    Ok(report)
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
    match engine.signal(conn, wf_id, &event).await {
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

/// Workflows by status: exact for the ones not ended (from the active
/// index), over the newest `recent_window` for the ended ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowCounts {
    /// Not ended, by status.
    pub active: BTreeMap<String, u64>,
    /// Ended, by status, among the newest `recent_window` workflows.
    pub recent_ended: BTreeMap<String, u64>,
    /// How many of the newest workflows `recent_ended` looked at.
    pub recent_window: usize,
}

/// How many of the newest workflows the ended counts look at.
pub const RECENT_WINDOW: usize = 1000;
/// At most this many active workflows are counted.
const ACTIVE_MAX: usize = 100_000;
/// Active workflows read per round trip when counting.
const ACTIVE_PAGE: usize = 1000;

/// Workflows that have not ended, by status (every such status present,
/// 0 included), from the active index, a page of statuses per round trip,
/// at most the first 100,000. `/metrics` and `/overview` both use it.
pub async fn active_counts<C: ConnectionLike + Send>(
    store: &WorkflowStore,
    conn: &mut C,
) -> Result<BTreeMap<String, u64>> {
    let mut by_status: BTreeMap<String, u64> = ALL_STATUSES
        .iter()
        .filter(|s| !s.is_terminal())
        .map(|s| (status_str(*s).to_owned(), 0))
        .collect();
    let mut offset = 0;
    while offset < ACTIVE_MAX {
        let page = store.active_page(conn, offset, ACTIVE_PAGE).await?;
        if page.is_empty() {
            break;
        }
        offset += page.len();
        let mut pipe = redis::pipe();
        for (id, _) in &page {
            pipe.cmd("HGET")
                .arg(store.keys().workflow(id)?)
                .arg("status");
        }
        let statuses: Vec<Option<String>> = pipe.query_async(conn).await?;
        for s in statuses.into_iter().flatten() {
            if let Some(s) = parse_status(&s)
                && !s.is_terminal()
            {
                *by_status.entry(status_str(s).to_owned()).or_default() += 1;
            }
        }
    }
    Ok(by_status)
}

/// Counts workflows by status.
pub async fn workflow_counts<C: ConnectionLike + Send>(
    store: &WorkflowStore,
    conn: &mut C,
) -> Result<WorkflowCounts> {
    let active = active_counts(store, conn).await?;
    let mut recent_ended: BTreeMap<String, u64> = ALL_STATUSES
        .iter()
        .filter(|s| s.is_terminal())
        .map(|s| (status_str(*s).to_owned(), 0))
        .collect();
    let newest: Vec<String> = redis::cmd("ZREVRANGE")
        .arg(store.keys().workflows_all())
        .arg(0)
        .arg(RECENT_WINDOW - 1)
        .query_async(conn)
        .await?;
    for s in store.summaries(conn, &newest).await?.into_iter().flatten() {
        if s.status.is_terminal() {
            *recent_ended
                .entry(status_str(s.status).to_owned())
                .or_default() += 1;
        }
    }
    Ok(WorkflowCounts {
        active,
        recent_ended,
        recent_window: RECENT_WINDOW,
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
        since_ms: since
            .map(|s| parse_since(s, crate::engine::now_ms()))
            .transpose()?,
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

    #[test]
    fn entry_ids_give_their_time() {
        assert_eq!(entry_id_ms("1763900000000-3"), Some(1_763_900_000_000));
        assert_eq!(entry_id_ms("x-1"), None);
        assert_eq!(parse_entry_id("12-3"), Some((12, 3)));
        for bad in [
            "12",
            "12-",
            "-3",
            "+1-0",
            "1-x",
            "1-0-0",
            "99999999999999999999999-0",
        ] {
            assert_eq!(parse_entry_id(bad), None, "{bad}");
        }
    }
}
