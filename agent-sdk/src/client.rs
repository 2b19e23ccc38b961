//! The producer client: enqueue tasks, read results, list live agents.

use crate::clock::now_ms;
use crate::connection::{parse_url, redact_url};
use crate::dlq::DeadLetters;
use crate::{Error, Result, scripts};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use schemas::codec::{DecodeLimits, decode_any};
use schemas::{
    AgentRecord, AgentType, Encoding, FleetRecord, Keys, Namespace, ResultEnvelope, TaskEnvelope,
    fields, names,
};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;

/// Stream fields with protocol-defined names.
pub type PlainFields = Vec<(&'static str, Vec<u8>)>;

/// How long an idempotency key remembers its task by default.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Options of one enqueue. `EnqueueOptions::default()` enqueues now, with a
/// fresh time-ordered task id, in MessagePack.
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// Task id; a UUIDv7 when not given.
    pub task_id: Option<String>,
    /// Enqueue at most once per key: a second enqueue with the same key adds
    /// nothing and returns the first task's id.
    pub idempotency_key: Option<String>,
    /// How long the key is remembered ([`DEFAULT_IDEMPOTENCY_TTL`] when not given).
    pub idempotency_ttl: Option<Duration>,
    /// Run no sooner than this from now (by the Redis server's clock).
    pub delay: Option<Duration>,
    /// Workflow the task belongs to.
    pub workflow_id: Option<String>,
    /// Stage of that workflow.
    pub stage: Option<String>,
    /// Trace id for logs.
    pub trace_id: Option<String>,
    /// Handler timeout for this task.
    pub timeout: Option<Duration>,
    /// Attempts allowed for this task.
    pub max_attempts: Option<u32>,
    /// Body encoding (MessagePack by default). The result comes back in the same one.
    pub encoding: Encoding,
}

/// What an enqueue did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The task id: the new task's, or for a duplicate, the first task's.
    pub task_id: String,
    /// True when the idempotency key was already used and nothing was added.
    pub duplicate: bool,
}

/// Enqueues tasks and reads results. Cheap to clone; reconnects by itself.
#[derive(Clone)]
pub struct Client {
    conn: ConnectionManager,
    keys: Keys,
    max_payload: usize,
    url: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url)
            .field("namespace", self.keys.namespace())
            .finish()
    }
}

impl Client {
    /// Connects to `url` for namespace `namespace`.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self> {
        let client = parse_url(url)?;
        let keys = Keys::new(Namespace::new(namespace)?);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_pipeline_buffer_size(4096);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            conn,
            keys,
            max_payload: DecodeLimits::default().max_bytes,
            url: redact_url(url),
        })
    }

    /// Refuses bodies larger than `bytes` at enqueue (default 1 MiB, the
    /// workers' default `--max-payload`).
    pub fn with_max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// The key names of this client's namespace.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A connection for calls this client does not wrap.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The artifact store (directory trees passed between agents).
    pub fn artifacts(&self) -> crate::Artifacts {
        crate::Artifacts::new(self.conn.clone(), self.keys.clone())
    }

    /// The dead-letter operations.
    pub fn dead_letters(&self) -> DeadLetters {
        DeadLetters::new(self.conn.clone(), self.keys.clone())
    }

    fn envelope<I: Serialize>(
        &self,
        input: &I,
        opts: &EnqueueOptions,
    ) -> Result<(String, PlainFields)> {
        let task_id = match &opts.task_id {
            Some(id) => {
                names::validate_task_id(id)?;
                id.clone()
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        let envelope = TaskEnvelope {
            workflow_id: opts.workflow_id.clone(),
            stage: opts.stage.clone(),
            trace_id: opts.trace_id.clone(),
            created_at_ms: Some(now_ms()),
            timeout_ms: opts.timeout.map(|d| d.as_millis() as u64),
            max_attempts: opts.max_attempts,
            ..TaskEnvelope::new(task_id.clone(), input)
        };
        let body = opts.encoding.encode(&envelope)?;
        if body.len() > self.max_payload {
            return Err(schemas::Error::TooLarge {
                size: body.len(),
                limit: self.max_payload,
            }
            .into());
        }
        let mut f: PlainFields = vec![(fields::ID, task_id.clone().into_bytes())];
        if let Some(wf) = &opts.workflow_id {
            f.push((fields::WORKFLOW, wf.clone().into_bytes()));
        }
        if let Some(st) = &opts.stage {
            f.push((fields::STAGE, st.clone().into_bytes()));
        }
        f.push((fields::BODY, body));
        Ok((task_id, f))
    }

    /// The stream fields of a task entry (`id`, `wf`, `stage`, `body`) and
    /// its task id, checked against the size limit, for callers that add the
    /// entry with a script of their own (the orchestrator's dispatch).
    pub fn task_entry<I: Serialize>(
        &self,
        input: &I,
        opts: &EnqueueOptions,
    ) -> Result<(String, PlainFields)> {
        self.envelope(input, opts)
    }

    /// Enqueues one task for `agent_type`.
    pub async fn enqueue<I: Serialize>(
        &self,
        agent_type: &AgentType,
        input: &I,
        opts: EnqueueOptions,
    ) -> Result<Enqueued> {
        let (task_id, f) = self.envelope(input, &opts)?;
        let mut conn = self.conn.clone();
        let delay = opts.delay.unwrap_or_default();
        if opts.idempotency_key.is_none() && delay.is_zero() {
            let _: String = redis::cmd("XADD")
                .arg(self.keys.tasks(agent_type))
                .arg("*")
                .arg(&f)
                .query_async(&mut conn)
                .await?;
            return Ok(Enqueued {
                task_id,
                duplicate: false,
            });
        }
        let mut inv = scripts::SCHEDULE.prepare_invoke();
        inv.key(self.keys.tasks(agent_type))
            .key(self.keys.delayed(agent_type));
        if let Some(k) = &opts.idempotency_key {
            inv.key(self.keys.idempotency(agent_type, k)?);
        }
        let ttl = opts
            .idempotency_ttl
            .unwrap_or(DEFAULT_IDEMPOTENCY_TTL)
            .as_millis()
            .max(1) as u64;
        inv.arg(&task_id)
            .arg(delay.as_millis() as u64)
            .arg(ttl)
            .arg(scripts::delayed_member(
                f.iter().map(|(k, v)| (*k, v.as_slice())),
            ))
            .arg(&f);
        let (added, id): (i64, String) = inv.invoke_async(&mut conn).await?;
        Ok(Enqueued {
            task_id: id,
            duplicate: added == 0,
        })
    }

    /// Enqueues many tasks now, in pipelined batches; returns their task ids
    /// in order. The fast path for bulk loads (no idempotency, no delay).
    pub async fn enqueue_many<'a, I: Serialize + 'a>(
        &self,
        agent_type: &AgentType,
        inputs: impl IntoIterator<Item = &'a I>,
        encoding: Encoding,
    ) -> Result<Vec<String>> {
        let key = self.keys.tasks(agent_type);
        let opts = EnqueueOptions {
            encoding,
            ..EnqueueOptions::default()
        };
        let mut ids = Vec::new();
        let mut pipe = redis::pipe();
        let mut n = 0;
        let mut conn = self.conn.clone();
        for input in inputs {
            let (id, f) = self.envelope(input, &opts)?;
            pipe.cmd("XADD").arg(&key).arg("*").arg(&f).ignore();
            ids.push(id);
            n += 1;
            if n == 1000 {
                pipe.query_async::<()>(&mut conn).await?;
                pipe.clear();
                n = 0;
            }
        }
        if n > 0 {
            pipe.query_async::<()>(&mut conn).await?;
        }
        Ok(ids)
    }

    /// The result of `task_id`, if it has one (and its TTL has not run out).
    pub async fn result(
        &self,
        agent_type: &AgentType,
        task_id: &str,
    ) -> Result<Option<ResultEnvelope>> {
        let key = self.keys.result(agent_type, task_id)?;
        let mut conn = self.conn.clone();
        let body: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
        body.map(|b| {
            decode_any::<ResultEnvelope>(
                &b,
                DecodeLimits {
                    max_bytes: usize::MAX,
                    ..DecodeLimits::default()
                },
            )
            .map(|(r, _)| r)
            .map_err(Error::from)
        })
        .transpose()
    }

    /// Waits up to `timeout` for the result of `task_id`.
    pub async fn wait_for_result(
        &self,
        agent_type: &AgentType,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<ResultEnvelope>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(r) = self.result(agent_type, task_id).await? {
                return Ok(Some(r));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Live agent instances: every registered type's fleet records
    /// (`N:registry:types`, then per type its fleet hash), those not yet
    /// past their expiry by the Redis clock. For tools and small
    /// fleets: views of large fleets page through `orchestrator::ops::fleet`.
    pub async fn agents(&self) -> Result<Vec<AgentRecord>> {
        let mut conn = self.conn.clone();
        let types: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.registry_types())
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::new();
        for t in types {
            let Ok(t) = AgentType::new(t) else {
                continue;
            };
            type Scores = HashMap<String, f64>;
            let ((secs, micros), records, expires, seen): (
                (u64, u64),
                HashMap<String, String>,
                Scores,
                Scores,
            ) = redis::pipe()
                .cmd("TIME")
                .hgetall(self.keys.fleet(&t))
                .cmd("ZRANGE")
                .arg(self.keys.fleet_expires(&t))
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .cmd("ZRANGE")
                .arg(self.keys.fleet_seen(&t))
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await?;
            // Live: not past the expiry the last heartbeat set (both times
            // by the Redis clock; the sorted sets move at every beat, the
            // record only when it changes).
            let now = (secs * 1000 + micros / 1000) as f64;
            for (id, raw) in records {
                match serde_json::from_str::<FleetRecord>(&raw) {
                    Ok(mut r) if expires.get(&id).is_some_and(|e| *e > now) => {
                        if let Some(s) = seen.get(&id) {
                            r.record.last_seen_ms = r.record.last_seen_ms.max(*s as u64);
                        }
                        out.push(r.record)
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(instance = %id, error = %e, "leaving out an unreadable fleet record");
                    }
                }
            }
        }
        Ok(out)
    }
}
