//! "Why is this stuck?": for every stage of a workflow that has not ended,
//! one reason with its evidence, computed on demand (`GET
//! /workflows/{id}`, `agentctl workflow get`, the dashboard).
//!
//! Cost: per agent type of the workflow's running and dead-lettered
//! stages, one read-only script (`locate.lua`: the dlq-index, the task
//! stream up to [`SCAN_BUDGET`] entries, the delayed set up to as many), all
//! types in one pipelined round trip; then one pipeline of registry reads
//! for the consumers of those types, and one bounded read of the event log
//! when a stage awaits approval. Every time is the Redis server's (`TIME`
//! in the script, entry ids, `idle` of `XINFO`/`XPENDING`).

use crate::Result;
use crate::definition::Definition;
use crate::machine::{StageStatus, Workflow};
use agent_sdk::schemas::{AgentType, EntryId, Keys, WORKERS_GROUP};
use redis::Value;
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most entries of a task stream (and of a delayed set) read to find a
/// stage's task: beyond it a waiting task is reported with "at least" this
/// many ahead.
pub const SCAN_BUDGET: usize = 10_000;

/// Most consumers of a type whose liveness is read.
pub const MAX_CONSUMERS: usize = 1_000;

/// Event-log entries read back to date an approval wait.
const LOG_LOOKBACK: usize = 200;

/// One stage that has not ended, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct StageWhy {
    /// Stage name.
    pub stage: String,
    /// Agent type that runs it.
    pub agent_type: String,
    /// Why it is where it is.
    pub reason: StageReason,
}

/// Progress a running task reported (`TaskContext::progress`, read from
/// the type's progress hash; `None` until it reports).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct TaskProgress {
    /// Done, 0.0 to 1.0.
    pub fraction: f64,
    /// What it said.
    pub message: String,
    /// When (ms, Redis clock).
    pub at_ms: u64,
}

/// Why a stage that has not ended is where it is, with the evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StageReason {
    /// Waits for stages it depends on.
    WaitingForStages {
        /// Those not completed yet.
        stages: Vec<String>,
    },
    /// Waits for a person to approve it.
    AwaitingApproval {
        /// Since when (ms, Redis clock), when the event log still says.
        since_ms: Option<u64>,
        /// For how long (ms).
        for_ms: Option<u64>,
        /// How to approve it from the command line.
        approve_command: String,
    },
    /// Its task waits in its stream behind others; live agents read it.
    Queued {
        /// Undelivered entries ahead of it.
        ahead: u64,
        /// `ahead` is a lower bound: the task was not found within
        /// the 10,000 entries read.
        at_least: bool,
        /// Its entry id in the task stream, when found.
        entry_id: Option<String>,
        /// Live (registered, ready) instances of its type.
        live_instances: u64,
    },
    /// No live instance of its agent type: nothing will run its task.
    NoLiveAgent {
        /// When an instance of the type last read its stream (ms, Redis
        /// clock); `None`: never, as far as the group remembers.
        last_seen_ms: Option<u64>,
        /// How long ago (ms).
        for_ms: Option<u64>,
        /// Undelivered entries ahead of its task, when it waits in the stream.
        ahead: Option<u64>,
        /// `ahead` is a lower bound (the task lies beyond the entries read).
        at_least: bool,
    },
    /// Its task runs on an instance.
    Running {
        /// The instance (consumer) holding it.
        instance: String,
        /// That instance is registered now (else its task is taken over
        /// once idle past the claim time).
        instance_live: bool,
        /// Since it was last delivered or its claim renewed (ms); a live
        /// worker renews it well within its claim time.
        idle_ms: u64,
        /// Deliveries so far.
        deliveries: u64,
        /// Its entry id in the task stream.
        entry_id: String,
        /// Since it entered the stream (ms): an upper bound of its run time.
        for_ms: Option<u64>,
        /// The task's last reported progress.
        progress: Option<TaskProgress>,
    },
    /// Its task is in the dead-letter queue: an operator replays or aborts.
    DeadLettered {
        /// The error it died with.
        error: String,
        /// Its DLQ entry id, when found.
        dead_letter_id: Option<String>,
        /// The command that replays it.
        replay_command: Option<String>,
        /// The route that replays it (operator).
        replay_route: String,
    },
    /// Its task failed and waits for its retry.
    RetryScheduled {
        /// When it is due (ms, Redis clock).
        due_ms: u64,
        /// In how long (ms; 0 once due).
        in_ms: u64,
    },
    /// Its task is in none of its queues: it has finished and its result is
    /// on its way to an orchestrator (or it lies beyond the entries read).
    Finishing {
        /// Task-stream entries read looking for it.
        scanned: u64,
    },
}

/// `ms` in short words: `850ms`, `12s`, `4m`, `3h`, `2d`.
fn span(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{}s", ms / 1000),
        60_000..3_600_000 => format!("{}m", ms / 60_000),
        3_600_000..86_400_000 => format!("{}h", ms / 3_600_000),
        _ => format!("{}d", ms / 86_400_000),
    }
}

impl StageReason {
    /// The reason in one line of words, for `agentctl` and logs.
    pub fn describe(&self) -> String {
        match self {
            Self::WaitingForStages { stages } if stages.is_empty() => {
                "waiting for its dependencies".into()
            }
            Self::WaitingForStages { stages } => {
                format!("waiting for stages {}", stages.join(", "))
            }
            Self::AwaitingApproval {
                for_ms,
                approve_command,
                ..
            } => match for_ms {
                Some(ms) => format!("awaiting approval for {}: {approve_command}", span(*ms)),
                None => format!("awaiting approval: {approve_command}"),
            },
            Self::Queued {
                ahead, at_least, ..
            } => format!(
                "waiting for {}{ahead} tasks ahead in its stream",
                if *at_least { "at least " } else { "" }
            ),
            Self::NoLiveAgent { for_ms, .. } => match for_ms {
                Some(ms) => format!("no live agent of its type (last seen {} ago)", span(*ms)),
                None => "no live agent of its type (never seen)".into(),
            },
            Self::Running {
                instance,
                instance_live,
                idle_ms,
                deliveries,
                for_ms,
                ..
            } => format!(
                "running on instance {instance}{} for at most {} (delivery {deliveries}, \
                 claim renewed {} ago)",
                if *instance_live {
                    ""
                } else {
                    " (not registered: it will be taken over)"
                },
                for_ms.map_or_else(|| "?".into(), span),
                span(*idle_ms)
            ),
            Self::DeadLettered {
                error,
                replay_command,
                replay_route,
                ..
            } => format!(
                "dead-lettered: {error}; replay: {}",
                replay_command.as_deref().unwrap_or(replay_route)
            ),
            Self::RetryScheduled { in_ms, .. } => {
                format!("retry scheduled in {}", span(*in_ms))
            }
            Self::Finishing { .. } => "finished: its result is on its way".into(),
        }
    }
}

/// Where `locate.lua` found one task.
#[derive(Debug, Clone, PartialEq)]
enum Found {
    Dead {
        id: String,
        error: String,
    },
    Pending {
        id: String,
        consumer: String,
        idle_ms: u64,
        deliveries: u64,
    },
    Queued {
        id: String,
        ahead: u64,
    },
    Delayed {
        due_ms: u64,
    },
    Unseen {
        read: u64,
        undelivered: u64,
    },
}

/// One agent type's answer.
#[derive(Debug, Default)]
struct Located {
    now_ms: u64,
    /// Consumer name → idle ms.
    consumers: Vec<(String, u64)>,
    found: Vec<Found>,
}

fn text(v: &Value) -> String {
    redis::from_redis_value_ref::<String>(v).unwrap_or_default()
}

fn num(v: &Value) -> u64 {
    match v {
        Value::Int(n) => u64::try_from(*n).unwrap_or(0),
        other => text(other).parse().unwrap_or(0),
    }
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) => a,
        _ => &[],
    }
}

fn parse_found(v: &Value) -> Found {
    let a = items(v);
    let at = |i: usize| a.get(i).unwrap_or(&Value::Nil);
    match text(at(0)).as_str() {
        "dead" => Found::Dead {
            id: text(at(1)),
            error: text(at(2)),
        },
        "pending" => Found::Pending {
            id: text(at(1)),
            consumer: text(at(2)),
            idle_ms: num(at(3)),
            deliveries: num(at(4)),
        },
        "queued" => Found::Queued {
            id: text(at(1)),
            ahead: num(at(2)),
        },
        "delayed" => Found::Delayed {
            due_ms: text(at(1)).parse::<f64>().map(|f| f as u64).unwrap_or(0),
        },
        _ => Found::Unseen {
            read: num(at(1)),
            undelivered: num(at(2)),
        },
    }
}

fn parse_located(v: &Value) -> Located {
    let a = items(v);
    let at = |i: usize| a.get(i).unwrap_or(&Value::Nil);
    let consumers = items(at(2))
        .chunks(3)
        .map(|c| (text(&c[0]), c.get(1).map_or(0, num)))
        .collect();
    Located {
        now_ms: num(at(0)),
        consumers,
        found: items(at(3)).iter().map(parse_found).collect(),
    }
}

/// The agent type of stage `name` in `def`.
fn agent_of<'a>(def: &'a Definition, name: &str) -> Option<&'a str> {
    def.stage(name).map(|s| s.agent.as_str())
}

/// Why each stage of `wf` that has not ended is where it is (none when the
/// workflow has ended), in stage order.
pub async fn explain<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    wf: &Workflow,
    def: &Definition,
) -> Result<Vec<StageWhy>> {
    if wf.status.is_terminal() {
        return Ok(Vec::new());
    }
    // The tasks to look for, by agent type.
    let mut by_type: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in &wf.stages {
        if matches!(s.status, StageStatus::Running | StageStatus::DeadLettered)
            && let (Some(task), Some(agent)) = (&s.task_id, agent_of(def, &s.name))
            && AgentType::new(agent).is_ok()
        {
            by_type
                .entry(agent.to_owned())
                .or_default()
                .push(task.clone());
        }
    }
    let located = locate(conn, keys, &by_type).await?;
    let live = live_consumers(conn, keys, &located).await?;
    let running: Vec<(&str, &str)> = wf
        .stages
        .iter()
        .filter(|s| s.status == StageStatus::Running)
        .filter_map(|s| Some((agent_of(def, &s.name)?, s.task_id.as_deref()?)))
        .filter(|(agent, _)| AgentType::new(*agent).is_ok())
        .collect();
    let progress = super::fleet::running_progress(conn, keys, &running).await?;
    let approval_since = if wf
        .stages
        .iter()
        .any(|s| s.status == StageStatus::AwaitingApproval)
    {
        approval_times(conn, keys, wf, def).await?
    } else {
        BTreeMap::new()
    };
    let mut out = Vec::new();
    for s in &wf.stages {
        let agent = agent_of(def, &s.name).unwrap_or_default().to_owned();
        let reason = match s.status {
            StageStatus::Completed | StageStatus::Failed | StageStatus::Skipped => continue,
            StageStatus::Pending => StageReason::WaitingForStages {
                stages: def
                    .stage(&s.name)
                    .map(|d| {
                        d.depends_on
                            .iter()
                            .filter(|dep| {
                                wf.stage(dep)
                                    .is_none_or(|x| x.status != StageStatus::Completed)
                            })
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            StageStatus::AwaitingApproval => {
                let since = approval_since.get(&s.name).copied();
                StageReason::AwaitingApproval {
                    since_ms: since,
                    for_ms: since
                        .zip(approval_since.get("").copied())
                        .map(|(a, now)| now.saturating_sub(a)),
                    approve_command: format!("agentctl workflow approve {} {}", wf.id, s.name),
                }
            }
            StageStatus::Running | StageStatus::DeadLettered => {
                let found = s.task_id.as_ref().and_then(|task| {
                    let l = located.get(&agent)?;
                    let i = by_type.get(&agent)?.iter().position(|t| t == task)?;
                    Some((l, l.found.get(i)?.clone()))
                });
                reason_of(
                    wf,
                    s,
                    &agent,
                    found,
                    live.get(&agent),
                    s.task_id.as_ref().and_then(|t| progress.get(t)),
                )
            }
        };
        out.push(StageWhy {
            stage: s.name.clone(),
            agent_type: agent,
            reason,
        });
    }
    Ok(out)
}

/// Liveness of one agent type: live instances, and when one was last seen.
#[derive(Debug, Default, Clone)]
struct Liveness {
    live: u64,
    /// Consumers that are registered now.
    live_names: Vec<String>,
}

fn reason_of(
    wf: &Workflow,
    s: &crate::machine::Stage,
    agent: &str,
    found: Option<(&Located, Found)>,
    live: Option<&Liveness>,
    progress: Option<&schemas::TaskProgress>,
) -> StageReason {
    let replay_route = format!("POST /api/v1/workflows/{}/stages/{}/replay", wf.id, s.name);
    let Some((l, found)) = found else {
        return match s.status {
            StageStatus::DeadLettered => StageReason::DeadLettered {
                error: s.error.clone().unwrap_or_default(),
                dead_letter_id: None,
                replay_command: None,
                replay_route,
            },
            _ => StageReason::Finishing { scanned: 0 },
        };
    };
    let live_n = live.map_or(0, |l| l.live);
    // When an instance of the type last read: the smallest idle of its
    // consumers, by the server's clock.
    let last_seen = l
        .consumers
        .iter()
        .map(|(_, idle)| l.now_ms.saturating_sub(*idle))
        .max();
    let no_agent = |ahead: Option<u64>, at_least: bool| StageReason::NoLiveAgent {
        last_seen_ms: last_seen,
        for_ms: last_seen.map(|t| l.now_ms.saturating_sub(t)),
        ahead,
        at_least,
    };
    match found {
        Found::Dead { id, error } => StageReason::DeadLettered {
            error: s.error.clone().filter(|e| !e.is_empty()).unwrap_or(error),
            replay_command: Some(format!("agentctl dlq replay {agent} {id}")),
            dead_letter_id: Some(id),
            replay_route,
        },
        _ if s.status == StageStatus::DeadLettered => StageReason::DeadLettered {
            error: s.error.clone().unwrap_or_default(),
            dead_letter_id: None,
            replay_command: None,
            replay_route,
        },
        Found::Pending {
            id,
            consumer,
            idle_ms,
            deliveries,
        } => {
            let instance_live = live.is_some_and(|lv| lv.live_names.contains(&consumer));
            if live_n == 0 {
                return no_agent(None, false);
            }
            StageReason::Running {
                instance: consumer,
                instance_live,
                idle_ms,
                deliveries,
                for_ms: EntryId::ms_of(&id).map(|t| l.now_ms.saturating_sub(t)),
                entry_id: id,
                progress: progress.map(|p| TaskProgress {
                    fraction: f64::from(p.fraction),
                    message: p.message.clone(),
                    at_ms: p.at_ms,
                }),
            }
        }
        Found::Queued { id, ahead } => {
            if live_n == 0 {
                return no_agent(Some(ahead), false);
            }
            StageReason::Queued {
                ahead,
                at_least: false,
                entry_id: Some(id),
                live_instances: live_n,
            }
        }
        Found::Delayed { due_ms } => StageReason::RetryScheduled {
            due_ms,
            in_ms: due_ms.saturating_sub(l.now_ms),
        },
        Found::Unseen { read, undelivered } => {
            if read as usize >= SCAN_BUDGET {
                if live_n == 0 {
                    return no_agent(Some(undelivered), true);
                }
                StageReason::Queued {
                    ahead: undelivered,
                    at_least: true,
                    entry_id: None,
                    live_instances: live_n,
                }
            } else {
                StageReason::Finishing { scanned: read }
            }
        }
    }
}

/// Runs `locate.lua` for each type of `by_type`, in one round trip.
async fn locate<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    by_type: &BTreeMap<String, Vec<String>>,
) -> Result<BTreeMap<String, Located>> {
    if by_type.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut pipe = redis::pipe();
    pipe.load_script(&crate::scripts::LOCATE).ignore();
    for (agent, tasks) in by_type {
        let t = AgentType::new(agent.as_str())?;
        let mut inv = crate::scripts::LOCATE.prepare_invoke();
        inv.key(keys.tasks(&t))
            .key(keys.delayed(&t))
            .key(keys.dlq_index(&t))
            .key(keys.dlq(&t))
            .arg(WORKERS_GROUP)
            .arg(SCAN_BUDGET)
            .arg(MAX_CONSUMERS)
            .arg(tasks);
        pipe.invoke_script(&inv);
    }
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    Ok(by_type
        .keys()
        .cloned()
        .zip(replies.iter().map(parse_located))
        .collect())
}

/// Which consumers of each located type are live (heartbeating: their
/// fleet expiry is ahead of the Redis clock) and ready now: one pipeline
/// over the types' fleet records.
async fn live_consumers<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    located: &BTreeMap<String, Located>,
) -> Result<BTreeMap<String, Liveness>> {
    let mut asked: Vec<(&str, &str)> = Vec::new();
    let mut pipe = redis::pipe();
    for (agent, l) in located {
        let t = AgentType::new(agent.as_str())?;
        for (name, _) in &l.consumers {
            pipe.cmd("ZSCORE").arg(keys.fleet_expires(&t)).arg(name);
            pipe.cmd("HGET").arg(keys.fleet(&t)).arg(name);
            asked.push((agent, name));
        }
    }
    let mut out: BTreeMap<String, Liveness> = located
        .keys()
        .map(|a| (a.clone(), Liveness::default()))
        .collect();
    if asked.is_empty() {
        return Ok(out);
    }
    let now = crate::store::server_time_ms(conn).await?;
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    for ((agent, name), pair) in asked.into_iter().zip(replies.chunks(2)) {
        let expires = redis::from_redis_value_ref::<f64>(&pair[0]).ok();
        let record = redis::from_redis_value_ref::<String>(&pair[1]).ok();
        if !expires.is_some_and(|e| e > now as f64) {
            continue;
        }
        let Some(lv) = out.get_mut(agent) else {
            continue;
        };
        // A draining instance takes no new task but still runs its own.
        let ready = record
            .and_then(|r| serde_json::from_str::<schemas::FleetRecord>(&r).ok())
            .is_none_or(|r| r.record.status == schemas::AgentStatus::Ready);
        if ready {
            lv.live += 1;
        }
        lv.live_names.push(name.to_owned());
    }
    Ok(out)
}

/// When each stage of `wf` that awaits approval began to (ms, Redis clock:
/// the id of the event-log entry that completed its last dependency, or
/// started the workflow); the server's time now under the key `""`.
async fn approval_times<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    wf: &Workflow,
    def: &Definition,
) -> Result<BTreeMap<String, u64>> {
    type Entries = Vec<(String, Vec<(String, String)>)>;
    let (entries, (secs, micros)): (Entries, (u64, u64)) = redis::pipe()
        .cmd("XREVRANGE")
        .arg(keys.workflow_events(&wf.id)?)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(LOG_LOOKBACK)
        .cmd("TIME")
        .query_async(conn)
        .await?;
    let mut out = BTreeMap::new();
    out.insert(String::new(), secs * 1000 + micros / 1000);
    for s in &wf.stages {
        if s.status != StageStatus::AwaitingApproval {
            continue;
        }
        let deps = def
            .stage(&s.name)
            .map(|d| d.depends_on.clone())
            .unwrap_or_default();
        let began = entries.iter().find(|(_, f)| {
            let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            match get("type") {
                Some("started") => true,
                Some("task_succeeded") => {
                    get("stage").is_some_and(|st| deps.iter().any(|d| d == st))
                }
                _ => false,
            }
        });
        if let Some(ms) = began.and_then(|(id, _)| EntryId::ms_of(id)) {
            out.insert(s.name.clone(), ms);
        }
    }
    Ok(out)
}

/// The agent types of `def` never seen in this namespace: no worker of the
/// type has ever joined its task stream's group (a worker creates the
/// group before its first read), and none is registered now. `known` are
/// types the operator named (`--watch`), taken as seen. Sorted, each once.
pub async fn unseen_agent_types<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    def: &Definition,
    known: &[String],
) -> Result<Vec<String>> {
    let types: Vec<&str> = crate::Engine::definition_types(def)
        .into_iter()
        .filter(|t| !known.iter().any(|k| k == t))
        .filter(|t| AgentType::new(*t).is_ok())
        .collect();
    if types.is_empty() {
        return Ok(Vec::new());
    }
    // One read-only script per type, pipelined: an empty list of tasks
    // makes `locate.lua` report the group and its consumers only.
    let mut pipe = redis::pipe();
    pipe.load_script(&crate::scripts::LOCATE).ignore();
    for agent in &types {
        let t = AgentType::new(*agent)?;
        let mut inv = crate::scripts::LOCATE.prepare_invoke();
        inv.key(keys.tasks(&t))
            .key(keys.delayed(&t))
            .key(keys.dlq_index(&t))
            .key(keys.dlq(&t))
            .arg(WORKERS_GROUP)
            .arg(0)
            .arg(1);
        pipe.invoke_script(&inv);
    }
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    Ok(types
        .into_iter()
        .zip(replies)
        .filter(|(_, r)| {
            let has_group = items(r).get(1).map_or(0, num);
            has_group == 0
        })
        .map(|(t, _)| t.to_owned())
        .collect())
}

/// Something about a definition that is accepted but likely wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct DefinitionWarning {
    /// What kind: `agent_type_never_seen`.
    pub kind: String,
    /// The agent type concerned.
    pub agent_type: String,
    /// The stages that run on it (`name.undo` for a compensation).
    pub stages: Vec<String>,
    /// In words.
    pub message: String,
}

/// The warnings of `def` in this namespace: each agent type it names that
/// was never seen ([`unseen_agent_types`]).
pub async fn definition_warnings<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    def: &Definition,
    known: &[String],
) -> Result<Vec<DefinitionWarning>> {
    let unseen = unseen_agent_types(conn, keys, def, known).await?;
    Ok(unseen
        .into_iter()
        .map(|t| {
            let mut stages: Vec<String> = Vec::new();
            for s in &def.stages {
                if s.agent == t {
                    stages.push(s.name.clone());
                }
                if s.compensate.as_ref().and_then(|c| c.agent.as_deref()) == Some(t.as_str()) {
                    stages.push(format!("{}.undo", s.name));
                }
            }
            DefinitionWarning {
                kind: "agent_type_never_seen".into(),
                message: format!(
                    "agent type {t:?} (stages {}) was never seen in namespace {}: no worker of \
                     it has read its task stream and none is registered; its tasks will wait \
                     until one starts (a typo?)",
                    stages.join(", "),
                    keys.namespace()
                ),
                agent_type: t,
                stages,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_serialise_with_a_kind_tag() {
        let r = StageReason::RetryScheduled {
            due_ms: 10,
            in_ms: 5,
        };
        let v = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(v["kind"], "retry_scheduled");
        assert_eq!(v["due_ms"], 10);
        let r = StageReason::Running {
            instance: "i".into(),
            instance_live: true,
            idle_ms: 1,
            deliveries: 1,
            entry_id: "1-0".into(),
            for_ms: None,
            progress: None,
        };
        let v = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(v["kind"], "running");
        assert!(v["progress"].is_null());
    }

    #[test]
    fn found_parses_each_shape() {
        let s = |x: &str| Value::BulkString(x.as_bytes().to_vec());
        let v = Value::Array(vec![
            s("pending"),
            s("1-0"),
            s("c"),
            Value::Int(5),
            Value::Int(2),
        ]);
        assert_eq!(
            parse_found(&v),
            Found::Pending {
                id: "1-0".into(),
                consumer: "c".into(),
                idle_ms: 5,
                deliveries: 2
            }
        );
        let v = Value::Array(vec![s("delayed"), s("1700000000123")]);
        assert_eq!(
            parse_found(&v),
            Found::Delayed {
                due_ms: 1_700_000_000_123
            }
        );
    }
}
