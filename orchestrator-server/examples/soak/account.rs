//! The soak's exact accounting: every submitted workflow ended (read from the
//! API, or from the archive once retention removed it) with each of its
//! stages applied once; every standalone task has exactly one outcome (one
//! `succeeded` result, or one dead letter); and the memory figures.

use crate::fleet::{Fleet, Kills, NS, STAGES, TASK_TYPE};
use crate::load::Outcome;
use crate::results::Seen;
use crate::sample::Series;
use agent_sdk::schemas::{Keys, fields};
use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long the drain waits for the last workflows and tasks to end after
/// the load stops (a killed agent's tasks wait for `--claim-idle`).
const DRAIN: Duration = Duration::from_secs(180);

/// A workflow's final status and its `task_succeeded` events per stage.
type Ended = (String, BTreeMap<String, usize>);

/// What happened to each workflow and task, once everything ended (or the
/// drain gave up).
#[derive(Debug, Default)]
pub(crate) struct Drained {
    /// Workflow id → (final status, `task_succeeded` events per stage).
    workflows: BTreeMap<String, Ended>,
    /// Workflows found in the archive (removed by retention).
    archived: usize,
    /// Task id → statuses of its published results, in order.
    results: BTreeMap<String, Vec<String>>,
    /// Task id → its dead letters.
    dead_letters: BTreeMap<String, usize>,
    /// How long the drain took.
    took: Duration,
}

/// The one JSON object the soak prints.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    seed: u64,
    duration_s: f64,
    kills: Kills,
    workflows_submitted: usize,
    workflow_submissions_retried: usize,
    workflows_refused: usize,
    workflows_by_status: BTreeMap<String, usize>,
    workflows_archived: usize,
    workflows_lost: usize,
    stages_applied_twice: usize,
    tasks_enqueued: usize,
    tasks_succeeded: usize,
    tasks_dead_lettered: usize,
    tasks_lost: usize,
    tasks_published_twice: usize,
    /// Tasks whose one outcome is not the one their input asked for (a task
    /// in flight on five killed workers is dead-lettered as a poison
    /// message: reported, not lost).
    tasks_unexpected_outcome: usize,
    drain_s: f64,
    redis_used_memory_plateau_bytes: u64,
    redis_used_memory_end_bytes: u64,
    redis_memory_end_over_plateau: f64,
    redis_connections_max: u64,
    rss_max_kb: BTreeMap<String, u64>,
    samples: usize,
    /// Redis bytes by key family half-way through the load and at its end.
    memory_by_family_mid: BTreeMap<String, u64>,
    memory_by_family_end: BTreeMap<String, u64>,
}

/// Waits until every workflow ended and every task settled (or [`DRAIN`]
/// passed), then reads what happened to each.
pub(crate) async fn drain(
    fleet: &Fleet,
    outcome: &anyhow::Result<Outcome>,
    seen: &Seen,
) -> anyhow::Result<Drained> {
    let Ok(outcome) = outcome else {
        return Ok(Drained::default());
    };
    let started = Instant::now();
    let http = orchestrator_server::testing::http();
    let api = fleet.apis()[0].clone();
    let mut redis = redis::Client::open(fleet.redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    let keys = Keys::new(agent_sdk::schemas::Namespace::new(NS)?);
    let t = TASK_TYPE.parse()?;
    let mut d = Drained::default();
    loop {
        let archive = read_archive(&fleet.archive())?;
        d.workflows.clear();
        d.archived = 0;
        for id in &outcome.workflows {
            if let Some(found) = archive.get(id) {
                d.archived += 1;
                d.workflows.insert(id.clone(), found.clone());
            } else if let Some(found) = from_api(&http, &api, id).await? {
                d.workflows.insert(id.clone(), found);
            }
        }
        d.results = seen.lock().expect("seen").clone();
        d.dead_letters = dead_letters(&mut redis, &keys.dlq(&t)).await?;
        let ended = d.workflows.values().filter(|(s, _)| terminal(s)).count();
        let settled = outcome
            .tasks
            .keys()
            .filter(|id| d.results.contains_key(*id) || d.dead_letters.contains_key(*id))
            .count();
        if (ended == outcome.workflows.len() && settled == outcome.tasks.len())
            || started.elapsed() > DRAIN
        {
            d.took = started.elapsed();
            return Ok(d);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

/// The workflow's status and `task_succeeded` events per stage, over the
/// API; `None` when it is not (or no longer) stored.
async fn from_api(http: &reqwest::Client, api: &str, id: &str) -> anyhow::Result<Option<Ended>> {
    let got = http
        .get(format!("{api}/api/v1/workflows/{id}"))
        .send()
        .await?;
    if got.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let wf: Value = got.error_for_status()?.json().await?;
    let status = wf["status"]
        .as_str()
        .context("a workflow's status")?
        .to_owned();
    let mut events = Vec::new();
    let mut after = None::<String>;
    loop {
        let mut url = format!("{api}/api/v1/workflows/{id}/log?limit=1000");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let got = http.get(url).send().await?;
        if got.status() == reqwest::StatusCode::NOT_FOUND {
            // Removed by retention between the two reads: the archive has it.
            return Ok(None);
        }
        let page: Value = got.error_for_status()?.json().await?;
        events.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    Ok(Some((status, successes(&events))))
}

/// `task_succeeded` events per stage.
fn successes(events: &[Value]) -> BTreeMap<String, usize> {
    let mut per_stage = BTreeMap::new();
    for e in events {
        if e["type"] == "task_succeeded"
            && let Some(stage) = e["stage"].as_str()
        {
            *per_stage.entry(stage.to_owned()).or_default() += 1;
        }
    }
    per_stage
}

/// The archive's workflows: id → (status, successes per stage).
fn read_archive(path: &std::path::Path) -> anyhow::Result<BTreeMap<String, Ended>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).context("read the archive"),
    };
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).context("an archive line is not JSON")?;
        // One line per expired workflow (`store::ArchiveRecord`); a replica
        // killed between its archive write and its delete writes it again.
        let id = v["id"].as_str().context("an archive line without id")?;
        let status = v["status"]
            .as_str()
            .context("an archive line without status")?;
        let events = v["events"]
            .as_array()
            .context("an archive line without events")?;
        out.insert(id.to_owned(), (status.to_owned(), successes(events)));
    }
    Ok(out)
}

async fn dead_letters(
    redis: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for (_, f) in xrange(redis, key).await? {
        *out.entry(f.get(fields::TASK_ID).cloned().unwrap_or_default())
            .or_default() += 1;
    }
    Ok(out)
}

/// Every entry of a stream, in pages, with its text fields.
async fn xrange(
    redis: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> anyhow::Result<Vec<(String, BTreeMap<String, String>)>> {
    let mut out = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query_async(redis)
            .await?;
        let n = page.ids.len();
        for e in page.ids {
            start = format!("({}", e.id);
            let f = e
                .map
                .into_iter()
                .filter_map(|(k, v)| redis::from_redis_value::<String>(v).ok().map(|v| (k, v)))
                .collect();
            out.push((e.id, f));
        }
        if n < 1000 {
            return Ok(out);
        }
    }
}

impl Report {
    pub(crate) fn build(
        seed: u64,
        outcome: &anyhow::Result<Outcome>,
        drained: anyhow::Result<Drained>,
        series: &Series,
        fleet: &Fleet,
    ) -> anyhow::Result<Self> {
        let outcome = outcome
            .as_ref()
            .map_err(|e| anyhow::anyhow!("the load failed: {e:#}"))?;
        let d = drained.context("the drain failed")?;
        let mut by_status = BTreeMap::new();
        let mut stages_twice = 0;
        for (status, per_stage) in d.workflows.values() {
            *by_status.entry(status.clone()).or_default() += 1;
            stages_twice += per_stage.values().filter(|n| **n > 1).count();
            // A completed workflow ran each stage: exactly once each.
            if status == "completed" {
                stages_twice += STAGES
                    .iter()
                    .filter(|s| !per_stage.contains_key(**s))
                    .count();
            }
        }
        let lost_wf = outcome
            .workflows
            .iter()
            .filter(|id| !d.workflows.get(*id).is_some_and(|(s, _)| terminal(s)))
            .count()
            + outcome.workflow_refused.len();
        let (mut ok, mut dead, mut lost, mut twice, mut unexpected) = (0, 0, 0, 0, 0);
        for (id, meant_dead) in &outcome.tasks {
            let published = d.results.get(id).map_or(0, Vec::len);
            let letters = d.dead_letters.get(id).copied().unwrap_or(0);
            twice += usize::from(published > 1 || letters > 1);
            let succeeded = d
                .results
                .get(id)
                .is_some_and(|r| r.iter().any(|s| s == "succeeded"));
            match (succeeded, letters > 0) {
                (true, false) => ok += 1,
                (false, true) => dead += 1,
                (false, false) => lost += 1,
                // Both a success and a dead letter: two outcomes.
                (true, true) => twice += 1,
            }
            unexpected += usize::from(letters > 0 && !meant_dead || succeeded && *meant_dead);
        }
        let (plateau, end) = series.plateau_and_end();
        Ok(Self {
            seed,
            duration_s: outcome.ran.as_secs_f64(),
            kills: fleet.kills,
            workflows_submitted: outcome.workflows.len() + outcome.workflow_refused.len(),
            workflow_submissions_retried: outcome.workflow_retries,
            workflows_refused: outcome.workflow_refused.len(),
            workflows_by_status: by_status,
            workflows_archived: d.archived,
            workflows_lost: lost_wf,
            stages_applied_twice: stages_twice,
            tasks_enqueued: outcome.tasks.len(),
            tasks_succeeded: ok,
            tasks_dead_lettered: dead,
            tasks_lost: lost,
            tasks_published_twice: twice,
            tasks_unexpected_outcome: unexpected,
            drain_s: d.took.as_secs_f64(),
            redis_used_memory_plateau_bytes: plateau,
            redis_used_memory_end_bytes: end,
            redis_memory_end_over_plateau: if plateau == 0 {
                f64::INFINITY
            } else {
                end as f64 / plateau as f64
            },
            redis_connections_max: series.connections_max(),
            rss_max_kb: series.rss_max_kb(),
            samples: series.len(),
            memory_by_family_mid: outcome.families_mid.clone(),
            memory_by_family_end: outcome.families_end.clone(),
        })
    }

    /// Why the soak failed, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.workflows_lost > 0 {
            why.push(format!(
                "{} workflows lost or not ended",
                self.workflows_lost
            ));
        }
        if self.stages_applied_twice > 0 {
            why.push(format!(
                "{} stages applied twice or not at all",
                self.stages_applied_twice
            ));
        }
        if self.tasks_lost > 0 {
            why.push(format!("{} tasks lost", self.tasks_lost));
        }
        if self.tasks_published_twice > 0 {
            why.push(format!(
                "{} tasks with two outcomes",
                self.tasks_published_twice
            ));
        }
        if self.tasks_succeeded + self.tasks_dead_lettered != self.tasks_enqueued {
            why.push("enqueued != succeeded + dead-lettered".to_owned());
        }
        if self.redis_memory_end_over_plateau > 1.10 {
            why.push(format!(
                "Redis memory at the end is {:.2} x its plateau (more than 1.10)",
                self.redis_memory_end_over_plateau
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}
