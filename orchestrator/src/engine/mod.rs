//! The durable shell around [`machine::apply`](crate::machine::apply).
//!
//! One transition: read the workflow (state, version, outbox), apply the
//! event, store the new state with its event-log entry and the new commands
//! appended to the outbox, in one script that checks the version (a
//! concurrent transition makes it retry from a fresh read). Then carry out
//! the outbox — dispatch tasks with the task id as idempotency key, each
//! arming its stage deadline, and cancel deadlines — and clear it if no
//! transition came in meanwhile. [`transition`] is the one place that does
//! this, for one event or for a batch of them.
//!
//! A crash anywhere leaves a consistent state: before the store, nothing
//! happened (the result is still pending and is read again); after it, the
//! outbox says what remains to be done, and whoever next touches the
//! workflow, or the sweeper, carries it out. Carrying a command out twice is
//! harmless, so the outbox is at-least-once and its effects exactly-once.

mod create;
mod dispatch;
mod transition;

pub use create::{Created, Creation};

use crate::catalog::Catalog;
use crate::definition::Definition;
use crate::error::Error;
use crate::machine::{Command, Event, Workflow};
use crate::scripts;
use crate::store::WorkflowStore;
use agent_sdk::Client;
use agent_sdk::schemas::{AgentType, Keys, TaskId, TaskKind};
use redis::aio::ConnectionLike;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use transition::Item;

type Result<T, E = Error> = std::result::Result<T, E>;

/// How long a dispatched task's idempotency key is kept. An outbox is
/// normally cleared milliseconds after its dispatches, and one left by a
/// crash is carried out again within a sweep interval by any live replica,
/// so this only has to outlast every orchestrator being down at once. Each
/// key costs Redis about 100 bytes for this long, one per dispatch: at a
/// steady rate they plateau after one TTL ([`Engine::set_dispatch_key_ttl`]
/// shortens it).
pub const DISPATCH_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Most workflow states kept in memory (see [`Engine::signal`]).
const STATE_CACHE_CAP: usize = 100_000;

/// Most agent types one orchestrator watches unless told otherwise
/// ([`Engine::set_max_agent_types`]). Each is a results stream in the
/// shared reader's set, a deadline set polled every timer tick and a
/// stream scanned at every reclaim: bounded work, but work.
pub const DEFAULT_MAX_AGENT_TYPES: usize = 256;

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
    max_agent_types: usize,
    watch_tx: mpsc::UnboundedSender<AgentType>,
    /// States this process stored last, with their version (outbox empty).
    cache: Mutex<HashMap<String, (Workflow, u64)>>,
    /// Dead letters of tasks no workflow waits for are kept (not deleted).
    keep_dead_letters: bool,
    /// How long a dispatch's idempotency key is kept.
    dispatch_key_ttl: Duration,
    /// The last reading of the Redis server's clock (ms) and when it was
    /// taken (this process's monotonic clock): see [`Engine::server_now`].
    clock: Mutex<Option<(u64, std::time::Instant)>>,
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
                max_agent_types: DEFAULT_MAX_AGENT_TYPES,
                watch_tx,
                cache: Mutex::default(),
                keep_dead_letters: false,
                dispatch_key_ttl: DISPATCH_IDEMPOTENCY_TTL,
                clock: Mutex::default(),
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

    /// How long each dispatch's idempotency key is kept (at least 1 s;
    /// [`DISPATCH_IDEMPOTENCY_TTL`] by default): it must outlast the longest
    /// time every orchestrator can be down while an outbox waits.
    pub fn set_dispatch_key_ttl(&mut self, ttl: Duration) {
        self.dispatch_key_ttl = ttl.max(Duration::from_secs(1));
    }

    /// Caps the agent types this engine watches (at least 1).
    pub fn set_max_agent_types(&mut self, max: usize) {
        self.max_agent_types = max.max(1);
    }

    /// Keeps the dead letters of workflow tasks that no workflow waits for
    /// any more (by default they are deleted: the stage timed out or
    /// failed, or the workflow ended, and the stage's error and the event
    /// log keep what they said).
    pub fn set_keep_dead_letters(&mut self, keep: bool) {
        self.keep_dead_letters = keep;
    }

    /// Whether such dead letters are kept ([`Engine::set_keep_dead_letters`]).
    pub fn keeps_dead_letters(&self) -> bool {
        self.keep_dead_letters
    }

    /// The script call that deletes the dead letter of `task` (agent type
    /// `agent`), looked for by the dead-letter index, else walking back
    /// from `newest_ms` (Redis clock; the newest it can be).
    pub fn forget_dead_letter_invocation(
        &self,
        agent: &AgentType,
        task: &str,
        newest_ms: Option<u64>,
    ) -> redis::ScriptInvocation<'static> {
        /// Most dead letters walked to find one that is not indexed.
        const WALK: u64 = 10_000;
        let keys = self.keys();
        let mut inv = scripts::FORGET_DEAD_LETTER.prepare_invoke();
        inv.key(keys.dlq(agent))
            .key(keys.dlq_index(agent))
            .arg(task)
            .arg(newest_ms.map_or_else(|| "+".to_owned(), |ms| ms.to_string()))
            .arg(WALK)
            .arg(agent_sdk::schemas::fields::TASK_ID);
        inv
    }

    /// The most agent types this engine watches.
    pub fn max_agent_types(&self) -> usize {
        self.max_agent_types
    }

    /// Makes sure the results of `agent` are consumed: the type joins the
    /// shared reader's set (announced on the channel [`Engine::new`]
    /// returned). Refused once [`Engine::max_agent_types`] types are
    /// watched. Only a registered definition or the operator's `--watch`
    /// should bring a type here, never a request alone.
    pub fn watch(&self, agent: &str) -> Result<()> {
        let t = AgentType::new(agent)?;
        let Ok(mut w) = self.watched.write() else {
            return Err(Error::Config(
                "the watched agent types are unreadable".into(),
            ));
        };
        if w.contains(agent) {
            return Ok(());
        }
        if w.len() >= self.max_agent_types {
            return Err(Error::Invalid(format!(
                "agent type {agent:?} cannot be watched: this orchestrator watches {} agent \
                 types already, the most --max-agent-types allows",
                w.len()
            )));
        }
        w.insert(agent.to_owned());
        let _ = self.watch_tx.send(t);
        Ok(())
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

    /// Every agent type `def` dispatches to (stages and compensations),
    /// sorted, once each.
    pub fn definition_types(def: &Definition) -> Vec<&str> {
        let mut v: Vec<&str> = def
            .stages
            .iter()
            .flat_map(|s| {
                std::iter::once(s.agent.as_str())
                    .chain(s.compensate.as_ref().and_then(|c| c.agent.as_deref()))
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Refuses `def` if watching its agent types would take this engine
    /// over [`Engine::max_agent_types`]; the message names the definition,
    /// how many types it adds and the cap.
    pub fn check_watchable(&self, def: &Definition) -> Result<()> {
        let watched = self.watched.read().map(|w| w.clone()).unwrap_or_default();
        let new = Self::definition_types(def)
            .into_iter()
            .filter(|t| !watched.contains(*t))
            .count();
        if watched.len() + new > self.max_agent_types {
            return Err(Error::Invalid(format!(
                "definition {:?} names {new} agent types not watched yet; with the {} watched \
                 already that is over the limit of {} (--max-agent-types)",
                def.name,
                watched.len(),
                self.max_agent_types
            )));
        }
        Ok(())
    }

    /// Watches every agent type `def` dispatches to, or none of them when
    /// that would go over the cap ([`Engine::check_watchable`]).
    pub fn watch_definition(&self, def: &Definition) -> Result<()> {
        self.check_watchable(def)?;
        for t in Self::definition_types(def) {
            self.watch(t)?;
        }
        Ok(())
    }

    /// Registers `def` as its next version and watches its agent types;
    /// refused before anything is stored when they would take this engine
    /// over its cap. Returns the stored definition and whether it is new.
    pub async fn register_definition<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        def: &Definition,
    ) -> Result<(std::sync::Arc<Definition>, bool)> {
        self.check_watchable(def)?;
        let (stored, created) = self.catalog.register(conn, def).await?;
        self.watch_definition(&stored)?;
        Ok((stored, created))
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
        self.act_by(conn, id, action, None).await
    }

    /// [`Engine::act`] recording who did it (`by`, an API token's name) in
    /// the event log entry of the action.
    pub async fn act_by<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
        action: &OperatorAction,
        by: Option<&str>,
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
        let event = action.event();
        match self.one(conn, Item::signal_by(id, &event, by)).await? {
            Outcome::Applied { workflow, version } => Ok((workflow, version)),
            Outcome::Unchanged { workflow, .. } => Err(Error::Conflict(format!(
                "{} (workflow {id} is {})",
                action.refused(),
                workflow.status.as_str()
            ))),
            Outcome::NotFound => Err(not_found("workflow", id)),
        }
    }

    /// Applies `event` to workflow `id`, stores the transition and carries
    /// out its commands. Retries from a fresh read when another transition
    /// wins the race.
    ///
    /// The state this process stored last is tried first (no read, no
    /// parse): the version check of the store catches a copy another
    /// replica made stale. A copy is only trusted for storing, never to
    /// conclude that an event changes nothing: that is decided on a fresh
    /// read.
    pub async fn signal<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
        event: &Event,
    ) -> Result<Outcome> {
        self.one(conn, Item::signal(id, event)).await
    }

    /// [`Engine::signal`] recording who caused `event` (`by`) in its log
    /// entry.
    pub async fn signal_by<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
        event: &Event,
        by: Option<&str>,
    ) -> Result<Outcome> {
        self.one(conn, Item::signal_by(id, event, by)).await
    }

    /// [`Engine::signal`] for a result read from a results stream, which
    /// the caller acknowledges afterwards (clearing its task's deadline).
    pub async fn signal_result<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
        event: &Event,
    ) -> Result<Outcome> {
        self.one(conn, Item::result(id, event)).await
    }

    /// Applies result events to distinct workflows (`items`: workflow id,
    /// event) in a few round trips for all of them; returns one outcome per
    /// item, in order. The caller acknowledges the results whose outcome is
    /// `Ok`.
    pub async fn signal_results<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        items: &[(String, Event)],
    ) -> Vec<Result<Outcome>> {
        let items: Vec<Item<'_>> = items.iter().map(|(id, e)| Item::result(id, e)).collect();
        self.transition(conn, &items)
            .await
            .into_iter()
            .map(|r| r.map(|done| done.outcome))
            .collect()
    }

    /// Carries out the outbox of workflow `id` if it has one (the sweeper
    /// calls this for workflows whose orchestrator died mid-way). Returns
    /// whether there was one.
    pub async fn resume<C: ConnectionLike + Send>(&self, conn: &mut C, id: &str) -> Result<bool> {
        let mut done = self.transition(conn, &[Item::resume(id)]).await;
        Ok(done
            .pop()
            .unwrap_or(Ok(transition::Done::not_found()))?
            .carried_out)
    }

    async fn one<C: ConnectionLike + Send>(&self, conn: &mut C, item: Item<'_>) -> Result<Outcome> {
        let mut done = self.transition(conn, &[item]).await;
        done.pop()
            .unwrap_or(Ok(transition::Done::not_found()))
            .map(|d| d.outcome)
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
        let plan = self.plan(def, id, commands, settled, None)?;
        let carried = self
            .carry_out_all(conn, &[plan], &[(id, version, false)])
            .await?;
        let Some(carried) = carried.into_iter().next() else {
            return Ok(false);
        };
        if let Some((task, why)) = carried.refused {
            self.refuse(conn, id, &task, &why).await?;
        }
        Ok(carried.cleared)
    }

    /// Records a reading of the Redis server's clock.
    fn note_time(&self, ms: u64) {
        if let Ok(mut c) = self.clock.lock() {
            *c = Some((ms, std::time::Instant::now()));
        }
    }

    /// The Redis server's time (ms): the last reading plus the time since
    /// by this process's monotonic clock while that reading is under a
    /// second old (a round trip saved on transitions of cached states),
    /// else a fresh `TIME`. No wall clock of this host takes part.
    async fn server_now<C: ConnectionLike + Send>(&self, conn: &mut C) -> Result<u64> {
        let last = self.clock.lock().ok().and_then(|c| *c);
        if let Some((ms, at)) = last
            && at.elapsed() < Duration::from_secs(1)
        {
            return Ok(ms + at.elapsed().as_millis() as u64);
        }
        let ms = crate::store::server_time_ms(conn).await?;
        self.note_time(ms);
        Ok(ms)
    }

    fn cached(&self, id: &str) -> Option<(Workflow, u64)> {
        self.cache.lock().ok()?.get(id).cloned()
    }

    /// Keeps a copy of a state stored by this process whose outbox is empty.
    fn remember(&self, wf: &Workflow, version: u64) {
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= STATE_CACHE_CAP && !c.contains_key(&wf.id) {
                // Crude but bounded: start over rather than track recency.
                c.clear();
            }
            c.insert(wf.id.clone(), (wf.clone(), version));
        }
    }

    fn forget(&self, id: &str) {
        if let Ok(mut c) = self.cache.lock() {
            c.remove(id);
        }
    }
}

/// The agent type that runs `task_id` (a stage's task or its compensation)
/// in `def`.
pub fn task_agent<'d>(def: &'d Definition, task_id: &str) -> Option<&'d str> {
    let t = TaskId::parse(task_id)?;
    let sd = def.stage(t.stage())?;
    match t.kind() {
        TaskKind::Undo => {
            let c = sd.compensate.as_ref()?;
            Some(c.agent.as_deref().unwrap_or(&sd.agent))
        }
        // An approval timer lives with the stage's agent type, like its task.
        TaskKind::Run(_) | TaskKind::Approval => Some(&sd.agent),
    }
}
