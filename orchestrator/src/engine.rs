//! The durable shell around [`machine::apply`](crate::machine::apply).
//!
//! One transition: read the workflow (state, version, outbox), apply the
//! event, store the new state with its event-log entry and the new commands
//! appended to the outbox, in one script that checks the version (a
//! concurrent transition makes it retry from a fresh read). Then carry out
//! the outbox — dispatch tasks with the task id as idempotency key, each
//! arming its stage deadline, and cancel deadlines — and clear it if no
//! transition came in meanwhile.
//!
//! A crash anywhere leaves a consistent state: before the store, nothing
//! happened (the result is still pending and is read again); after it, the
//! outbox says what remains to be done, and whoever next touches the
//! workflow, or the sweeper, carries it out. Carrying a command out twice is
//! harmless, so the outbox is at-least-once and its effects exactly-once.

use crate::catalog::Catalog;
use crate::definition::Definition;
use crate::error::Error;
use crate::machine::{self, Command, Event, Workflow};
use crate::scripts;
use crate::store::{NewLogEntry, WorkflowStore};
use agent_sdk::schemas::{AgentType, Keys, names};
use agent_sdk::{Client, EnqueueOptions};
use redis::aio::ConnectionLike;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

type Result<T, E = Error> = std::result::Result<T, E>;

/// How long a dispatched task's idempotency key is kept. An outbox is
/// normally cleared milliseconds after its dispatches, and one left by a
/// crash is carried out again within a sweep interval by any live replica,
/// so this only has to outlast every orchestrator being down at once. Each
/// key costs Redis about 100 bytes for this long, one per dispatch.
pub const DISPATCH_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Most attempts at one transition under contention before giving up (the
/// event stays pending and is tried again later).
const MAX_CONFLICT_RETRIES: usize = 64;

/// Most workflow states kept in memory (see [`Engine::signal`]).
const STATE_CACHE_CAP: usize = 100_000;

/// What an event did to a workflow.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A transition was stored; the workflow after it.
    Applied {
        /// The new state.
        workflow: Workflow,
        /// Its version.
        version: u64,
    },
    /// The event changed nothing (duplicate, stale, or after the end).
    Unchanged {
        /// The current state.
        workflow: Workflow,
        /// Its version.
        version: u64,
    },
    /// No such workflow.
    NotFound,
}

/// What an operator does to a workflow (the API's and `agentctl`'s
/// cancel, abort, approve and reject).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorAction {
    /// Stop dispatching, compensate, end `cancelled`.
    Cancel {
        /// Why.
        reason: String,
    },
    /// Compensate, end `failed`.
    Abort {
        /// Why.
        reason: String,
    },
    /// Let a stage that waits for approval run.
    Approve {
        /// The stage.
        stage: String,
    },
    /// Refuse a stage that waits for approval.
    Reject {
        /// The stage.
        stage: String,
        /// Why.
        reason: String,
    },
}

impl OperatorAction {
    fn stage(&self) -> Option<&str> {
        match self {
            Self::Approve { stage } | Self::Reject { stage, .. } => Some(stage),
            Self::Cancel { .. } | Self::Abort { .. } => None,
        }
    }

    fn event(&self) -> Event {
        match self.clone() {
            Self::Cancel { reason } => Event::Cancelled { reason },
            Self::Abort { reason } => Event::Aborted { reason },
            Self::Approve { stage } => Event::Approved { stage },
            Self::Reject { stage, reason } => Event::Rejected { stage, reason },
        }
    }

    /// What an action that changes nothing is told.
    fn refused(&self) -> String {
        match self {
            Self::Cancel { .. } => "nothing to cancel: it has ended or is ending".into(),
            Self::Abort { .. } => "nothing to abort: it has ended or is ending".into(),
            Self::Approve { stage } | Self::Reject { stage, .. } => {
                format!("stage {stage} is not waiting for approval")
            }
        }
    }
}

/// Where to create a workflow from.
#[derive(Debug, Clone)]
pub struct NewWorkflow {
    /// Definition name.
    pub definition: String,
    /// Definition version (the latest when `None`).
    pub version: Option<u32>,
    /// Workflow input.
    pub input: Value,
    /// Workflow id (a fresh UUIDv7 when `None`).
    pub id: Option<String>,
}

/// The shell: shared by the result consumers, the timer loop, the sweeper and
/// the HTTP handlers.
#[derive(Debug)]
pub struct Engine {
    store: WorkflowStore,
    catalog: Catalog,
    client: Client,
    watched: RwLock<HashSet<String>>,
    watch_tx: mpsc::UnboundedSender<AgentType>,
    /// States this process stored last, with their version (outbox empty).
    cache: Mutex<HashMap<String, (Workflow, u64)>>,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The event's `type` tag.
pub(crate) fn event_kind(e: &Event) -> &'static str {
    match e {
        Event::Started => "started",
        Event::TaskSucceeded { .. } => "task_succeeded",
        Event::TaskFailed { .. } => "task_failed",
        Event::TaskDeadLettered { .. } => "task_dead_lettered",
        Event::TaskTimedOut { .. } => "task_timed_out",
        Event::Approved { .. } => "approved",
        Event::Rejected { .. } => "rejected",
        Event::Replayed { .. } => "replayed",
        Event::Aborted { .. } => "aborted",
        Event::Cancelled { .. } => "cancelled",
    }
}

/// The stage an event concerns, found in the state before it.
fn event_stage(wf: &Workflow, e: &Event) -> Option<String> {
    match e {
        Event::TaskSucceeded { task_id, .. }
        | Event::TaskFailed { task_id, .. }
        | Event::TaskDeadLettered { task_id, .. }
        | Event::TaskTimedOut { task_id } => wf
            .stages
            .iter()
            .find(|s| {
                s.task_id.as_deref() == Some(task_id)
                    || matches!(&s.compensation, Some(machine::CompensationState::Running { task_id: t }) if t == task_id)
            })
            .map(|s| {
                if task_id.ends_with(":undo") {
                    format!("{}.undo", s.name)
                } else {
                    s.name.clone()
                }
            }),
        Event::Approved { stage } | Event::Rejected { stage, .. } | Event::Replayed { stage } => {
            Some(stage.clone())
        }
        Event::Started | Event::Aborted { .. } | Event::Cancelled { .. } => None,
    }
}

/// The event as logged: task outputs are left out (they are in the state).
fn logged_event(e: &Event) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.remove("output");
    }
    v
}

pub(crate) fn log_entry(before: &Workflow, event: &Event, commands: &[Command]) -> NewLogEntry {
    NewLogEntry {
        kind: event_kind(event).to_owned(),
        stage: event_stage(before, event),
        event: logged_event(event),
        dispatched: commands
            .iter()
            .filter_map(|c| match c {
                Command::Dispatch {
                    stage,
                    compensation,
                    ..
                } => Some(if *compensation {
                    format!("{stage}.undo")
                } else {
                    stage.clone()
                }),
                _ => None,
            })
            .collect(),
    }
}

impl Engine {
    /// An engine over `client`'s Redis and namespace. Agent types it starts
    /// dispatching to are announced on the returned channel, so their result
    /// streams get a consumer.
    pub fn new(client: Client) -> (Self, mpsc::UnboundedReceiver<AgentType>) {
        let keys = client.keys().clone();
        let (watch_tx, watch_rx) = mpsc::unbounded_channel();
        (
            Self {
                store: WorkflowStore::new(keys.clone()),
                catalog: Catalog::new(keys),
                client,
                watched: RwLock::default(),
                watch_tx,
                cache: Mutex::default(),
            },
            watch_rx,
        )
    }

    /// The workflow store.
    pub fn store(&self) -> &WorkflowStore {
        &self.store
    }

    /// The definition catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The SDK client (dispatch, results, dead letters).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Key names.
    pub fn keys(&self) -> &Keys {
        self.store.keys()
    }

    /// Makes sure the results of `agent` are consumed.
    pub fn watch(&self, agent: &str) {
        let known = self.watched.read().is_ok_and(|w| w.contains(agent));
        if known {
            return;
        }
        if let Ok(t) = AgentType::new(agent)
            && let Ok(mut w) = self.watched.write()
            && w.insert(agent.to_owned())
        {
            let _ = self.watch_tx.send(t);
        }
    }

    /// Agent types whose results are consumed, sorted.
    pub fn watched_types(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .watched
            .read()
            .map(|w| w.iter().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Watches every agent type `def` dispatches to.
    pub fn watch_definition(&self, def: &Definition) {
        for s in &def.stages {
            self.watch(&s.agent);
            if let Some(c) = &s.compensate
                && let Some(a) = &c.agent
            {
                self.watch(a);
            }
        }
    }

    /// Creates and starts a workflow; returns it as stored.
    pub async fn create<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        req: NewWorkflow,
    ) -> Result<(Workflow, u64)> {
        let id = match req.id {
            Some(id) => {
                names::validate_workflow_id(&id).map_err(|e| Error::Invalid(e.to_string()))?;
                id
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        let def = self.catalog.get(conn, &req.definition, req.version).await?;
        let now = now_ms();
        let fresh = Workflow::new(id.clone(), &def, req.input, now);
        let Some((started, commands)) = machine::apply(&fresh, &def, &Event::Started, now) else {
            return Err(Error::Invalid(format!(
                "definition {} v{} cannot start",
                def.name, def.version
            )));
        };
        self.watch_definition(&def);
        let entry = log_entry(&fresh, &Event::Started, &commands);
        // One round trip: indexed first (a crash in between leaves an index
        // entry without a workflow, which is skipped and pruned, never a
        // workflow nobody can find), then stored if the id is free.
        let save = self.store.save_invocation(0, &started, &commands, &entry)?;
        let mut pipe = redis::pipe();
        pipe.load_script(&scripts::TRANSITION).ignore();
        self.store.add_index_commands(&mut pipe, &id, now);
        pipe.invoke_script(&save);
        let (stored,): (i64,) = pipe.query_async(conn).await?;
        if stored != 1 {
            return Err(Error::Conflict(format!("workflow {id:?} exists already")));
        }
        metrics::counter!("orchestrator_transitions_total", "event" => "started").increment(1);
        metrics::counter!("orchestrator_workflows_created_total").increment(1);
        if self.carry_out(conn, &def, &id, 1, &commands, None).await? {
            self.remember(&started, 1);
        }
        Ok((started, 1))
    }

    /// Carries out an operator's `action` on workflow `id`; returns the
    /// workflow after it. [`Error::NotFound`] for an unknown workflow or
    /// stage, [`Error::Conflict`] (saying why) when it would change nothing.
    pub async fn act<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
        action: &OperatorAction,
    ) -> Result<(Workflow, u64)> {
        let not_found = |what: &'static str, id: &str| Error::NotFound {
            what,
            id: id.to_owned(),
        };
        let stored = self
            .store
            .load(conn, id)
            .await?
            .ok_or_else(|| not_found("workflow", id))?;
        if let Some(stage) = action.stage()
            && stored.workflow.stage(stage).is_none()
        {
            return Err(not_found("stage", stage));
        }
        match self.signal(conn, id, &action.event()).await? {
            Outcome::Applied { workflow, version } => Ok((workflow, version)),
            Outcome::Unchanged { workflow, .. } => Err(Error::Conflict(format!(
                "{} (workflow {id} is {})",
                action.refused(),
                crate::store::status_str(workflow.status)
            ))),
            Outcome::NotFound => Err(not_found("workflow", id)),
        }
    }

    /// Applies `event` to workflow `id`, stores the transition and carries
    /// out its commands. Retries from a fresh read when another transition
    /// wins the race.
    pub async fn signal<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
        event: &Event,
    ) -> Result<Outcome> {
        self.apply_event(conn, id, event, None).await
    }

    /// [`Engine::signal`] for a result read from a results stream, which
    /// the caller acknowledges afterwards (clearing its task's deadline).
    pub async fn signal_result<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
        event: &Event,
    ) -> Result<Outcome> {
        self.apply_event(conn, id, event, settled_task(event)).await
    }

    async fn apply_event<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
        event: &Event,
        settled: Option<&str>,
    ) -> Result<Outcome> {
        // First try this process's copy of the state (no read, no parse):
        // the version check of the store catches a copy another replica made
        // stale. A copy is only trusted for storing, never to conclude that
        // an event changes nothing: that is decided on a fresh read.
        let mut cached = self.cached(id);
        for _ in 0..MAX_CONFLICT_RETRIES {
            let from_cache = cached.is_some();
            let (workflow, version, outbox) = match cached.take() {
                Some((w, v)) => (w, v, Vec::new()),
                None => {
                    let Some(stored) = self.store.load(conn, id).await? else {
                        return Ok(Outcome::NotFound);
                    };
                    (stored.workflow, stored.version, stored.outbox)
                }
            };
            let def = self
                .catalog
                .get(
                    conn,
                    &workflow.definition,
                    Some(workflow.definition_version),
                )
                .await?;
            let Some((next, commands)) = machine::apply(&workflow, &def, event, now_ms()) else {
                if from_cache {
                    continue;
                }
                // Nothing to store. If an earlier transition's commands are
                // still waiting (its orchestrator died), this is the moment
                // to carry them out: it is typically a result read again
                // after that crash.
                if !outbox.is_empty() {
                    self.forget(id);
                    self.carry_out(conn, &def, id, version, &outbox, settled)
                        .await?;
                }
                return Ok(Outcome::Unchanged { workflow, version });
            };
            let entry = log_entry(&workflow, event, &commands);
            if !self
                .store
                .save(conn, version, &next, &commands, &entry)
                .await?
            {
                self.forget(id);
                metrics::counter!("orchestrator_transition_conflicts_total").increment(1);
                continue;
            }
            metrics::counter!("orchestrator_transitions_total", "event" => event_kind(event))
                .increment(1);
            let version = version + 1;
            let mut all = outbox;
            all.extend(commands);
            let cleared = self.carry_out(conn, &def, id, version, &all, settled).await;
            if next.status.is_terminal() {
                self.forget(id);
                cleared?;
                self.store.deactivate(conn, id).await?;
                metrics::counter!("orchestrator_workflows_ended_total", "status" => crate::store::status_str(next.status)).increment(1);
            } else if matches!(cleared, Ok(true)) {
                self.remember(&next, version);
            } else {
                self.forget(id);
                cleared?;
            }
            return Ok(Outcome::Applied {
                workflow: next,
                version,
            });
        }
        self.forget(id);
        Err(Error::Conflict(format!(
            "workflow {id:?} changed {MAX_CONFLICT_RETRIES} times while applying one event; try again"
        )))
    }

    pub(crate) fn cached(&self, id: &str) -> Option<(Workflow, u64)> {
        self.cache.lock().ok()?.get(id).cloned()
    }

    /// Keeps a copy of a state stored by this process whose outbox is empty.
    pub(crate) fn remember(&self, wf: &Workflow, version: u64) {
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= STATE_CACHE_CAP && !c.contains_key(&wf.id) {
                // Crude but bounded: start over rather than track recency.
                c.clear();
            }
            c.insert(wf.id.clone(), (wf.clone(), version));
        }
    }

    pub(crate) fn forget(&self, id: &str) {
        if let Ok(mut c) = self.cache.lock() {
            c.remove(id);
        }
    }

    /// Carries out the outbox of workflow `id` if it has one (the sweeper
    /// calls this for workflows whose orchestrator died mid-way).
    pub async fn resume<C: ConnectionLike + Send>(&self, conn: &mut C, id: &str) -> Result<bool> {
        let Some(stored) = self.store.load(conn, id).await? else {
            return Ok(false);
        };
        if stored.outbox.is_empty() {
            return Ok(false);
        }
        self.forget(id);
        let def = self
            .catalog
            .get(
                conn,
                &stored.workflow.definition,
                Some(stored.workflow.definition_version),
            )
            .await?;
        self.carry_out(conn, &def, id, stored.version, &stored.outbox, None)
            .await?;
        Ok(true)
    }

    /// Dispatches, arms and cancels what `commands` say, then clears the
    /// outbox of version `version`. Returns whether it was cleared (false: a
    /// later transition came in, and its orchestrator clears it).
    ///
    /// A dispatch arms its task's deadline in the same script. `settled`
    /// names a task whose result the caller is about to acknowledge: the
    /// acknowledgement clears its deadline, so its `CancelTimer` is skipped
    /// here (if the caller dies first, the result is read again and
    /// acknowledged then).
    pub async fn carry_out<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        def: &Definition,
        id: &str,
        version: u64,
        commands: &[Command],
        settled: Option<&str>,
    ) -> Result<bool> {
        let plan = self.plan(def, id, commands, settled)?;
        let dispatches = plan.dispatches.iter().map(|inv| async move {
            let mut c = self.client.connection();
            let added: i64 = inv.invoke_async(&mut c).await?;
            if added == 1 {
                metrics::counter!("orchestrator_dispatches_total").increment(1);
            }
            Ok::<_, Error>(())
        });
        let timers = async {
            for inv in &plan.timers {
                let _: i64 = inv.invoke_async(conn).await?;
            }
            Ok::<_, Error>(())
        };
        // Timers go on the caller's connection, side by side with the
        // dispatches on the client's: order between the two does not matter.
        let (dispatched, timed) = tokio::join!(futures::future::try_join_all(dispatches), timers);
        dispatched?;
        timed?;
        self.store.clear_outbox(conn, id, version).await
    }

    /// The script calls that carry `commands` out (see [`Engine::carry_out`]).
    pub(crate) fn plan(
        &self,
        def: &Definition,
        id: &str,
        commands: &[Command],
        settled: Option<&str>,
    ) -> Result<CarryOut> {
        let dispatched: HashSet<&str> = commands
            .iter()
            .filter_map(|c| match c {
                Command::Dispatch { task_id, .. } => Some(task_id.as_str()),
                _ => None,
            })
            .collect();
        let deadline_of = |task: &str| {
            commands.iter().find_map(|c| match c {
                Command::ArmTimer { task_id, after } if task_id == task => Some(*after),
                _ => None,
            })
        };
        let mut plan = CarryOut::default();
        for c in commands {
            if let Command::Dispatch {
                stage,
                task_id,
                agent,
                input,
                timeout,
                max_attempts,
                ..
            } = c
            {
                plan.dispatches.push(self.dispatch_invocation(
                    id,
                    stage,
                    task_id,
                    agent,
                    input,
                    *timeout,
                    *max_attempts,
                    deadline_of(task_id),
                )?);
            }
        }
        // The other timer operations, by the agent type whose slot holds them.
        let mut by_agent: Vec<(AgentType, TimerOps)> = Vec::new();
        for c in commands {
            let (task_id, op) = match c {
                Command::ArmTimer { task_id, after } if !dispatched.contains(task_id.as_str()) => {
                    (task_id, Some(*after))
                }
                Command::CancelTimer { task_id } if settled != Some(task_id.as_str()) => {
                    (task_id, None)
                }
                _ => continue,
            };
            let Some(agent) = task_agent(def, task_id).and_then(|a| AgentType::new(a).ok()) else {
                tracing::warn!(workflow = id, task = %task_id, "no agent type for a deadline; skipped");
                continue;
            };
            match by_agent.iter_mut().find(|(a, _)| *a == agent) {
                Some((_, ops)) => ops.push((task_id.clone(), op)),
                None => by_agent.push((agent, vec![(task_id.clone(), op)])),
            }
        }
        plan.timers = by_agent
            .iter()
            .map(|(agent, ops)| self.store.timers_invocation(agent, ops))
            .collect();
        Ok(plan)
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch_invocation(
        &self,
        workflow: &str,
        stage: &str,
        task_id: &str,
        agent: &str,
        input: &Value,
        timeout: Option<Duration>,
        max_attempts: Option<u32>,
        deadline: Option<Duration>,
    ) -> Result<redis::ScriptInvocation<'static>> {
        let agent_type = AgentType::new(agent)?;
        self.watch(agent);
        let (task_id, fields) = self.client.task_entry(
            input,
            &EnqueueOptions {
                task_id: Some(task_id.to_owned()),
                workflow_id: Some(workflow.to_owned()),
                stage: Some(stage.to_owned()),
                trace_id: Some(workflow.to_owned()),
                timeout,
                max_attempts,
                ..EnqueueOptions::default()
            },
        )?;
        let keys = self.keys();
        let mut inv = scripts::DISPATCH.prepare_invoke();
        inv.key(keys.tasks(&agent_type))
            .key(keys.idempotency(&agent_type, &task_id)?)
            .key(keys.deadlines(&agent_type))
            .arg(&task_id)
            .arg(DISPATCH_IDEMPOTENCY_TTL.as_millis() as u64)
            .arg(deadline.map_or(0, |d| d.as_millis() as u64))
            .arg(&fields);
        Ok(inv)
    }
}

/// Deadline operations: task id, and the delay to arm it with (`None`: cancel).
type TimerOps = Vec<(String, Option<Duration>)>;

/// The script calls that carry out a transition's commands: dispatches (on
/// the dispatch connection, each arming its deadline) and the remaining
/// deadline operations, one call per agent type.
#[derive(Default)]
pub(crate) struct CarryOut {
    pub(crate) dispatches: Vec<redis::ScriptInvocation<'static>>,
    pub(crate) timers: Vec<redis::ScriptInvocation<'static>>,
}

/// The task a result event settles (its deadline goes with the result's
/// acknowledgement).
pub(crate) fn settled_task(event: &Event) -> Option<&str> {
    match event {
        Event::TaskSucceeded { task_id, .. }
        | Event::TaskFailed { task_id, .. }
        | Event::TaskDeadLettered { task_id, .. } => Some(task_id.as_str()),
        _ => None,
    }
}

/// The agent type that runs `task_id` (`<workflow>:<stage>:<n>`, or
/// `<workflow>:<stage>:undo` for a compensation) in `def`.
pub fn task_agent<'d>(def: &'d Definition, task_id: &str) -> Option<&'d str> {
    let (_, rest) = task_id.split_once(':')?;
    let (stage, suffix) = rest.rsplit_once(':')?;
    let sd = def.stage(stage)?;
    if suffix == "undo" {
        let c = sd.compensate.as_ref()?;
        Some(c.agent.as_deref().unwrap_or(&sd.agent))
    } else {
        Some(&sd.agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn logged_events_leave_outputs_out() {
        let e = Event::TaskSucceeded {
            task_id: "w:a:1".into(),
            output: json!({"big": "x"}),
        };
        assert_eq!(
            logged_event(&e),
            json!({"type": "task_succeeded", "task_id": "w:a:1"})
        );
        assert_eq!(event_kind(&e), "task_succeeded");
        for e in [
            Event::Started,
            Event::Approved { stage: "s".into() },
            Event::Aborted { reason: "r".into() },
        ] {
            assert_eq!(
                serde_json::to_value(&e).unwrap()["type"],
                json!(event_kind(&e))
            );
        }
    }
}
