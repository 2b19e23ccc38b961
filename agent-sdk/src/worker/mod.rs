//! The worker: consumes one agent type's task stream through the `workers`
//! consumer group and runs each task through an [`Agent`].
//!
//! One process runs these loops, for however many workers it runs, on two
//! Redis connections: one multiplexed connection every loop shares (no call
//! on it blocks: reads do not block either) and the one its readers' doorbell
//! blocks on while they wait for new entries ([`crate::connection::bell`]):
//!
//! | loop | what it does |
//! |---|---|
//! | [`read`] | takes entries through the shared [`GroupReader`], never more than there are free slots |
//! | [`reclaim`] | the reader's policy for tasks abandoned by dead workers: poison triage |
//! | [`execute`] | one tokio task per entry: decode, run the handler, decide |
//! | [`commit`] | batches finished tasks into one fenced `commit.lua` call |
//! | [`lease`] | renews the claim on running tasks so nobody reclaims them |
//! | [`janitor`] | the lease that makes one instance per agent type the promoter and reclaimer |
//! | [`promote`] | (janitor only) moves due retries / delayed tasks into the stream |
//! | [`heartbeat`] | keeps this instance's registry record alive |

mod commit;
mod delivery;
mod execute;
mod health;
mod heartbeat;
mod janitor;
mod lease;
mod metrics;
mod promote;
mod read;
mod reclaim;

use crate::agent::Agent;
use crate::config::RuntimeConfig;
use crate::connection::Connector;
use crate::stream::{GroupReader, consumer_id};
use crate::{Error, Result};
use health::{InLoop, Loop};
use metrics::WorkerMetrics;
use schemas::codec::DecodeLimits;
use schemas::{AgentType, Keys};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Validated settings and the key names derived from them, built once.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) cfg: RuntimeConfig,
    pub(crate) agent_type: AgentType,
    pub(crate) keys: Keys,
    pub(crate) tasks_key: String,
    pub(crate) results_key: String,
    pub(crate) dlq_key: String,
    pub(crate) dlq_index_key: String,
    pub(crate) delayed_key: String,
    pub(crate) result_prefix: String,
    pub(crate) consumer: Arc<str>,
    pub(crate) limits: DecodeLimits,
    pub(crate) version: String,
}

/// Entries this process holds, by stream id, with the token that stops their
/// handler. The lease loop renews exactly these; the reader and the reclaimer
/// consult it so an entry is never run twice in one process.
#[derive(Debug, Default)]
pub(crate) struct Inflight {
    tasks: Mutex<HashMap<String, CancellationToken>>,
    pub(crate) processed: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// What this instance last did (read, commit, progress) and whether its
    /// loops run: written by the heartbeat, served by the health listener.
    pub(crate) activity: Arc<heartbeat::Activity>,
}

impl Inflight {
    /// Registers `id`; `false` if it is already held.
    fn start(&self, id: &str, token: CancellationToken) -> bool {
        let mut map = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(id) {
            return false;
        }
        map.insert(id.to_owned(), token);
        true
    }

    /// Forgets `id` once its commit is settled.
    pub(crate) fn finish(&self, id: &str) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }

    fn ids(&self) -> Vec<String> {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Stops the handler of `id` (its entry now belongs to someone else).
    fn abandon(&self, id: &str) {
        if let Some(t) = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            t.cancel();
        }
    }

    fn len(&self) -> usize {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(crate) fn count(&self, failed: bool) {
        self.activity.committed();
        self.processed.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// State shared by the loops of one worker.
pub(crate) struct Shared<A> {
    pub(crate) agent: A,
    pub(crate) settings: Arc<Settings>,
    pub(crate) inflight: Arc<Inflight>,
    pub(crate) metrics: Arc<WorkerMetrics>,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) tracker: TaskTracker,
    /// Fires when shutdown's grace period is over: handlers still running are
    /// abandoned (their entries stay pending for another worker).
    pub(crate) hard_stop: CancellationToken,
    /// `worker{agent, stream, instance}`: parent of every task span and of
    /// the worker's own log lines.
    pub(crate) span: tracing::Span,
}

/// Builds a [`Worker`].
#[derive(Debug)]
pub struct WorkerBuilder<A> {
    agent: A,
    config: RuntimeConfig,
    agent_type: Option<String>,
    version: String,
    connector: Option<Connector>,
}

impl<A: Agent> WorkerBuilder<A> {
    /// The agent type served when the configuration names none.
    pub fn agent_type(mut self, agent_type: impl Into<String>) -> Self {
        self.agent_type = Some(agent_type.into());
        self
    }

    /// The runtime settings (usually parsed from flags and environment).
    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// The version shown in the registry (defaults to the SDK's).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Shares `connector` (and so its two connections: the multiplexed one
    /// and its doorbell's) with other workers of this process: however many
    /// workers a process runs on one connector, it holds two connections.
    /// By default a worker opens its own from the configuration's Redis URL.
    pub fn connector(mut self, connector: Connector) -> Self {
        self.connector = Some(connector);
        self
    }

    /// Validates everything and builds the worker. No I/O happens here.
    pub fn build(self) -> Result<Worker<A>> {
        let cfg = self.config;
        cfg.validate()?;
        let agent_type = cfg
            .agent_type
            .clone()
            .or(self.agent_type)
            .ok_or_else(|| Error::Config("no agent type: pass --agent-type".into()))?;
        let agent_type = AgentType::new(agent_type)?;
        let keys = cfg.redis.keys()?;
        let consumer: Arc<str> = match &cfg.instance_id {
            Some(id) => id.as_str().into(),
            None => consumer_id(None).into(),
        };
        schemas::names::validate_consumer(&consumer)?;
        let connector = match self.connector {
            Some(c) => c,
            None => cfg.redis.connector()?,
        };
        let settings = Settings {
            tasks_key: keys.tasks(&agent_type),
            results_key: keys.results(&agent_type),
            dlq_key: keys.dlq(&agent_type),
            dlq_index_key: keys.dlq_index(&agent_type),
            delayed_key: keys.delayed(&agent_type),
            result_prefix: keys.result_prefix(&agent_type),
            limits: DecodeLimits {
                max_bytes: cfg.max_payload,
                ..DecodeLimits::default()
            },
            version: self.version,
            consumer,
            keys,
            agent_type,
            cfg,
        };
        let metrics = Arc::new(WorkerMetrics::new(&settings.agent_type));
        let span = tracing::info_span!(
            "worker",
            agent = %settings.agent_type,
            stream = %settings.tasks_key,
            instance = %settings.consumer,
        );
        let slots = Arc::new(Semaphore::new(settings.cfg.concurrency));
        Ok(Worker {
            shared: Arc::new(Shared {
                agent: self.agent,
                settings: Arc::new(settings),
                inflight: Arc::default(),
                metrics,
                slots,
                tracker: TaskTracker::new(),
                hard_stop: CancellationToken::new(),
                span,
            }),
            connector,
        })
    }
}

/// A worker serving one agent type. See the module docs for its loops.
pub struct Worker<A> {
    shared: Arc<Shared<A>>,
    connector: Connector,
}

impl<A> std::fmt::Debug for Worker<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("agent_type", &self.shared.settings.agent_type)
            .field("instance_id", &self.shared.settings.consumer)
            .finish()
    }
}

impl<A: Agent> Worker<A> {
    /// Starts building a worker around `agent`.
    pub fn builder(agent: A) -> WorkerBuilder<A> {
        WorkerBuilder {
            agent,
            config: RuntimeConfig::default(),
            agent_type: None,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            connector: None,
        }
    }

    /// This instance's id: its consumer name and registry id.
    pub fn instance_id(&self) -> &str {
        &self.shared.settings.consumer
    }

    /// The agent type served.
    pub fn agent_type(&self) -> &AgentType {
        &self.shared.settings.agent_type
    }

    /// Runs until `shutdown` fires, then drains: stops reading, lets running
    /// tasks finish within the grace period, commits them, deregisters.
    /// Tasks still running after the grace period are abandoned and stay
    /// pending, so another worker reclaims them; none is acknowledged unfinished.
    pub async fn run_until(self, shutdown: CancellationToken) -> Result<()> {
        let span = self.shared.span.clone();
        self.run(shutdown).instrument(span).await
    }

    async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Self { shared, connector } = self;
        let s = shared.settings.clone();
        // Everything but draining stops when the drain is over.
        let stop_all = CancellationToken::new();
        // However run ends (even before the loops start), the side tasks stop.
        let _stop_side = stop_all.clone().drop_guard();
        // Bound before Redis is reached: a probe reads 503 with the reason
        // while the worker waits for Redis, instead of a refused connection.
        let health = match s.cfg.health_listen {
            Some(addr) => {
                Some(health::start(addr, shared.inflight.activity.clone(), stop_all.clone()).await?)
            }
            None => None,
        };

        // Reads do not block: they share the process's connection, and an
        // empty one waits for the stream's doorbell (or for the janitor's
        // wake-up, or for --read-block at most).
        let janitor_state = Arc::new(janitor::JanitorState::new(&s));
        connector.record_client_id(s.keys.consumers(&s.agent_type), &*s.consumer);
        let mut read_conn = connector.shared("read");
        let mut reader = GroupReader::new(
            s.tasks_key.clone(),
            schemas::WORKERS_GROUP,
            s.consumer.clone(),
            s.cfg.claim_idle,
            s.cfg.read_block,
        )
        .with_doorbell(connector.doorbell(&s.tasks_key), janitor_state.wake.clone());
        // The group first: the other loops have nothing to do without it.
        if !reader.ensure_group(&mut read_conn, &shutdown).await {
            return Ok(());
        }
        // Agent type, stream and instance are on the enclosing worker span.
        tracing::info!(
            url = %connector.redacted_url(),
            concurrency = s.cfg.concurrency,
            "worker started"
        );

        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let activity = shared.inflight.activity.clone();
        let committer = tokio::spawn(
            commit::run(
                s.clone(),
                shared.inflight.clone(),
                shared.metrics.clone(),
                rx,
                connector.shared("commit"),
                shared.hard_stop.clone(),
            )
            .instrument(shared.span.clone())
            .in_loop(activity.clone(), Loop::Committer),
        );
        let status = heartbeat::Status::default();
        let background = TaskTracker::new();
        background.spawn(
            heartbeat::run(
                s.clone(),
                shared.inflight.clone(),
                status.clone(),
                connector.shared("heartbeat"),
                stop_all.clone(),
            )
            .instrument(shared.span.clone()),
        );
        background.spawn(
            lease::run(
                s.clone(),
                shared.inflight.clone(),
                connector.shared("lease"),
                stop_all.clone(),
            )
            .instrument(shared.span.clone()),
        );
        background.spawn(
            janitor::run(
                s.clone(),
                janitor_state.clone(),
                connector.shared("janitor"),
                shutdown.clone(),
            )
            .instrument(shared.span.clone()),
        );
        background.close();
        // Shutdown ends the reader's wait at once (it waits on the token).
        read::run(
            shared.clone(),
            tx,
            reader,
            read_conn,
            &janitor_state,
            shutdown.clone(),
        )
        .in_loop(activity.clone(), Loop::Reader)
        .await;

        // Draining.
        status.set_draining();
        shared.tracker.close();
        tracing::info!(in_flight = shared.inflight.len(), grace = ?s.cfg.shutdown_grace, "draining");
        if tokio::time::timeout(s.cfg.shutdown_grace, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                abandoned = shared.tracker.len(),
                "grace period over; unfinished tasks stay pending for another worker"
            );
            shared.hard_stop.cancel();
            shared.tracker.wait().await;
        }
        // Every sender is gone now, so the committer ends once it has
        // committed what is queued. If Redis is unreachable, give up after a
        // short wait: the entries stay pending and another worker reclaims them.
        let mut committer = committer;
        if tokio::time::timeout(Duration::from_secs(5), &mut committer)
            .await
            .is_err()
        {
            shared.hard_stop.cancel();
            let _ = committer.await;
        }
        stop_all.cancel();
        background.wait().await;
        connector.forget_client_id(&s.keys.consumers(&s.agent_type), &s.consumer);
        heartbeat::deregister(&s, &connector).await;
        let leave = async {
            if let Some(mut c) = connector
                .shared("deregister")
                .get(&CancellationToken::new())
                .await
            {
                janitor::leave(&s, &mut c).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), leave).await;
        if let Some(h) = health {
            let _ = h.await;
        }
        tracing::info!(
            processed = shared.inflight.processed.load(Ordering::Relaxed),
            "worker stopped"
        );
        Ok(())
    }
}
