//! The steady load: workflows over the HTTP API and standalone tasks through
//! the SDK's client, each at its own rate, while a process is killed every
//! `--kill-every`.

use crate::Args;
use crate::fleet::{Fleet, NS, STAGES, TASK_TYPE};
use agent_sdk::{Client, EnqueueOptions};
use anyhow::Context;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the load did, for the accounting.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Ids of the workflows the API accepted (or said existed on a retry).
    pub(crate) workflows: Vec<String>,
    /// Submissions that needed more than one try (an orchestrator was down).
    pub(crate) workflow_retries: usize,
    /// Submissions no orchestrator accepted within the patience.
    pub(crate) workflow_refused: Vec<String>,
    /// Standalone task id → whether it was meant to be dead-lettered.
    pub(crate) tasks: BTreeMap<String, bool>,
    /// How long the load ran.
    pub(crate) ran: Duration,
    /// Redis bytes by key family (sampled, `GET /memory`) half-way through
    /// the load and at its end: what grew, if memory did.
    pub(crate) families_mid: BTreeMap<String, u64>,
    pub(crate) families_end: BTreeMap<String, u64>,
}

type Shared = Arc<Mutex<Outcome>>;

pub(crate) async fn run(args: &Args, fleet: &mut Fleet) -> anyhow::Result<Outcome> {
    let client = Client::connect(&fleet.redis_url(), NS)
        .await
        .context("connect the soak's client")?;
    let task_type = TASK_TYPE.parse().context("the task type")?;
    let http = orchestrator_server::testing::http();
    let apis = fleet.apis();
    let shared = Shared::default();
    let started = Instant::now();
    let mut submissions = tokio::task::JoinSet::new();
    let wf_every = Duration::from_secs_f64(1.0 / args.workflows_per_s);
    let task_every = Duration::from_secs_f64(1.0 / args.tasks_per_s);
    let (mut next_wf, mut next_task, mut next_kill) = (started, started, started + args.kill_every);
    let mut n_wf = 0usize;
    let mut families_mid = None;
    while started.elapsed() < args.duration {
        if families_mid.is_none() && started.elapsed() >= args.duration / 2 {
            families_mid = Some(families(&http, &apis).await);
        }
        let now = Instant::now();
        if now >= next_wf {
            next_wf += wf_every;
            let id = format!("soak-{n_wf}");
            n_wf += 1;
            submissions.spawn(submit(http.clone(), apis.clone(), id, shared.clone()));
        }
        if now >= next_task {
            next_task += task_every;
            let (input, dead) = task_input();
            let done = client
                .enqueue(&task_type, &input, EnqueueOptions::default())
                .await
                .context("enqueue a standalone task")?;
            shared
                .lock()
                .expect("outcome")
                .tasks
                .insert(done.task_id, dead);
        }
        if now >= next_kill {
            next_kill += args.kill_every;
            fleet.kill_one().await;
        }
        let crashed = fleet.crashed();
        anyhow::ensure!(
            crashed.is_empty(),
            "processes died without being killed: {crashed:?}"
        );
        let next = next_wf.min(next_task).min(next_kill);
        tokio::time::sleep_until(next.into()).await;
    }
    while let Some(r) = submissions.join_next().await {
        r.context("a submission panicked")?;
    }
    let mut out = std::mem::take(&mut *shared.lock().expect("outcome"));
    out.ran = started.elapsed();
    out.families_mid = families_mid.unwrap_or_default();
    out.families_end = families(&http, &apis).await;
    Ok(out)
}

/// Redis bytes by key family, from the first replica that answers
/// `GET /memory` (estimated from a sample; empty if none answers).
async fn families(http: &reqwest::Client, apis: &[String]) -> BTreeMap<String, u64> {
    for api in apis {
        let Ok(r) = http
            .get(format!("{api}/api/v1/memory?sample=100000"))
            .send()
            .await
        else {
            continue;
        };
        let Ok(v) = r.json::<Value>().await else {
            continue;
        };
        return v["families"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| {
                Some((
                    f["family"].as_str()?.to_owned(),
                    f["estimated_bytes"].as_u64()?,
                ))
            })
            .collect();
    }
    BTreeMap::new()
}

/// A workflow input: each stage sleeps a little (so kills land mid-task),
/// and one in ten stages fails its first attempt (a retry).
fn workflow_input() -> Value {
    let faults: serde_json::Map<String, Value> = STAGES
        .iter()
        .map(|s| {
            let mut f = json!({ "sleep_ms": fastrand::u64(0..80) });
            if fastrand::u8(..10) == 0 {
                f["fail"] = json!("retryable");
                f["fail_attempts"] = json!(1);
            }
            (s.to_string(), f)
        })
        .collect();
    json!({ "project": "soak", "faults": faults })
}

/// A standalone task's input and whether it is meant to be dead-lettered:
/// one in twenty fails its first attempt, one in five hundred fails for
/// good (dead letters are kept until an operator acts: they are the one
/// thing meant to grow).
fn task_input() -> (Value, bool) {
    let mut f = json!({ "sleep_ms": fastrand::u64(0..50) });
    match fastrand::u16(..500) {
        0 => {
            f["fail"] = json!("permanent");
            return (f, true);
        }
        1..=25 => {
            f["fail"] = json!("retryable");
            f["fail_attempts"] = json!(1);
        }
        _ => {}
    }
    (f, false)
}

/// Submits workflow `id`, trying the replicas in turn while they are down:
/// creates are idempotent by id, so a retry after a lost answer is safe.
async fn submit(http: reqwest::Client, apis: Vec<String>, id: String, out: Shared) {
    let body = json!({ "id": id, "definition": "sdlc", "input": workflow_input() });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tries = 0usize;
    let first = fastrand::usize(..apis.len());
    loop {
        let api = &apis[(first + tries) % apis.len()];
        tries += 1;
        let sent = http
            .post(format!("{api}/api/v1/workflows"))
            .json(&body)
            .send()
            .await;
        let status = sent.as_ref().map(|r| r.status().as_u16()).ok();
        // 200: the same create was stored by an earlier try (idempotent by id).
        if matches!(status, Some(200..=202)) {
            let mut o = out.lock().expect("outcome");
            o.workflows.push(id);
            o.workflow_retries += usize::from(tries > 1);
            return;
        }
        if Instant::now() > deadline {
            eprintln!("soak: workflow {id} refused: last answer {status:?}");
            out.lock().expect("outcome").workflow_refused.push(id);
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
