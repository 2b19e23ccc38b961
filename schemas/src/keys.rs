//! Every Redis key name of protocol v1. No other code formats a key.
//!
//! Keys an atomic step touches together share the hash tag `{T}` (the agent
//! type), so each script and `MULTI` stays in one slot and the same code runs
//! on Redis Cluster. Scripts receive every key they touch in `KEYS`.

use crate::Result;
use crate::names::{self, AgentType, Namespace};

/// Builds key names for one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    ns: Namespace,
}

impl Keys {
    /// Key builder for `ns`.
    pub fn new(ns: Namespace) -> Self {
        Self { ns }
    }

    /// The namespace these keys live in.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    fn agent(&self, t: &AgentType, suffix: &str) -> String {
        format!("{}:agent:{{{}}}:{}", self.ns, t, suffix)
    }

    /// `N:agent:{T}:tasks` — stream of tasks for agent type `T`, group `workers`.
    pub fn tasks(&self, t: &AgentType) -> String {
        self.agent(t, "tasks")
    }

    /// `N:agent:{T}:results` — stream of results published by agents of type `T`,
    /// group `orchestrator`.
    pub fn results(&self, t: &AgentType) -> String {
        self.agent(t, "results")
    }

    /// `N:agent:{T}:dlq` — stream of dead letters, kept until replayed or purged.
    pub fn dlq(&self, t: &AgentType) -> String {
        self.agent(t, "dlq")
    }

    /// `N:agent:{T}:dlq-index` — hash: task id → the entry id of its newest
    /// dead letter in `N:agent:{T}:dlq`. Kept by the scripts that add, replay
    /// and purge dead letters, so a task's dead letter is found in O(1)
    /// whatever the DLQ's length.
    pub fn dlq_index(&self, t: &AgentType) -> String {
        self.agent(t, "dlq-index")
    }

    /// `N:agent:{T}:janitor` — hash: the lease of the one worker instance of
    /// type `T` that runs the promoter and the reclaim scan (`holder`
    /// instance id, `expires` and `tick` — its last renewal — in ms by the
    /// Redis server's clock, `hold_until`: no claim before then, after the
    /// server's clock jumped as in a freeze). Taken when free, expired, or
    /// held by an instance whose connection is gone.
    pub fn janitor(&self, t: &AgentType) -> String {
        self.agent(t, "janitor")
    }

    /// `N:agent:{T}:consumers` — hash: worker instance id → the Redis client
    /// id of its reader's connection, written at each connect. The janitor
    /// asks `CLIENT LIST ID` whether a consumer holding entries still has its
    /// connection: a crashed process's entries are taken at once, not after
    /// `claim_idle`.
    pub fn consumers(&self, t: &AgentType) -> String {
        self.agent(t, "consumers")
    }

    /// `N:agent:{T}:delayed` — sorted set of retries and delayed tasks, score = due
    /// time in ms by the Redis server's clock.
    pub fn delayed(&self, t: &AgentType) -> String {
        self.agent(t, "delayed")
    }

    /// `N:agent:{T}:deadlines` — sorted set of workflow stage deadlines of
    /// tasks of type `T`: member = task id, score = due time in ms by the
    /// Redis server's clock. In `T`'s slot, so a dispatch arms its deadline
    /// and a result's acknowledgement clears it in the same script.
    pub fn deadlines(&self, t: &AgentType) -> String {
        self.agent(t, "deadlines")
    }

    /// `N:agent:{T}:idem:<key>` — string with TTL: idempotency key → task id.
    pub fn idempotency(&self, t: &AgentType, key: &str) -> Result<String> {
        names::validate_idempotency_key(key)?;
        Ok(self.agent(t, &format!("idem:{key}")))
    }

    /// `N:agent:{T}:result:<task id>` — string with TTL: the encoded result
    /// envelope of one task, for lookups by task id.
    pub fn result(&self, t: &AgentType, task_id: &str) -> Result<String> {
        names::validate_task_id(task_id)?;
        Ok(self.agent(t, &format!("result:{task_id}")))
    }

    /// The prefix of [`Keys::result`] keys; the commit script is given whole
    /// keys, this exists so the worker can build them without re-validating an
    /// id that was validated when its envelope was decoded.
    pub fn result_prefix(&self, t: &AgentType) -> String {
        self.agent(t, "result:")
    }

    /// `N:artifact:<sha256>` — string with TTL: a compressed directory tree,
    /// content-addressed by the SHA-256 of its bytes (64 lowercase hex).
    pub fn artifact(&self, sha256: &str) -> Result<String> {
        names::validate_sha256(sha256)?;
        Ok(format!("{}:artifact:{sha256}", self.ns))
    }

    /// `N:registry:agents` — legacy: the sorted set of instance ids that
    /// workers wrote before the per-type fleet keys ([`Keys::fleet`]); no
    /// worker writes it any more.
    pub fn registry_agents(&self) -> String {
        format!("{}:registry:agents", self.ns)
    }

    /// `N:registry:agent:<instance id>` — legacy: the per-instance hash with
    /// TTL that workers wrote before [`Keys::fleet`]; no worker writes it any
    /// more.
    pub fn registry_agent(&self, instance_id: &str) -> Result<String> {
        names::validate_consumer(instance_id)?;
        Ok(format!("{}:registry:agent:{instance_id}", self.ns))
    }

    /// `N:registry:types` — set of every agent type that ever registered an
    /// instance (added once per worker start): where fleet views find the
    /// per-type keys below without a keyspace scan.
    pub fn registry_types(&self) -> String {
        format!("{}:registry:types", self.ns)
    }

    /// `N:agent:{T}:fleet` — hash: instance id → its [`crate::FleetRecord`]
    /// (JSON), written by the heartbeat script with Redis times. Kept after
    /// the instance vanishes (listed `gone`) until the orchestrator prunes
    /// it, `--keep-gone` after its last heartbeat.
    pub fn fleet(&self, t: &AgentType) -> String {
        self.agent(t, "fleet")
    }

    /// `N:agent:{T}:fleet-seen` — sorted set: instance id → last heartbeat
    /// (ms, Redis clock). Oldest/newest heartbeat and the prune of gone ones.
    pub fn fleet_seen(&self, t: &AgentType) -> String {
        self.agent(t, "fleet-seen")
    }

    /// `N:agent:{T}:fleet-expires` — sorted set: instance id → when it counts
    /// as gone (ms, Redis clock: last heartbeat + 3 of its heartbeats). Live
    /// instances are `ZCOUNT (now +inf`.
    pub fn fleet_expires(&self, t: &AgentType) -> String {
        self.agent(t, "fleet-expires")
    }

    /// `N:agent:{T}:fleet-active` — sorted set: instance id → its last sign
    /// of work (the newest of last read, last commit, last progress; ms,
    /// Redis clock). Wedged candidates are its low end.
    pub fn fleet_active(&self, t: &AgentType) -> String {
        self.agent(t, "fleet-active")
    }

    /// `N:agent:{T}:progress` — hash: task id → its latest
    /// [`crate::TaskProgress`] (JSON), written at most once per heartbeat
    /// by the instance running it, removed when the task settles.
    pub fn progress(&self, t: &AgentType) -> String {
        self.agent(t, "progress")
    }

    /// `N:registry:orchestrator:<consumer>` — string with a TTL: an
    /// orchestrator replica is alive under this consumer name (refreshed by
    /// its housekeeping loop). Housekeeping keeps the consumers that this or
    /// [`Keys::fleet_expires`] lists as live: on Redis 7.0 a consumer's idle time
    /// grows while its blocking reads find nothing, so idle alone cannot
    /// tell a live reader from a dead one.
    pub fn orchestrator_presence(&self, consumer: &str) -> Result<String> {
        names::validate_consumer(consumer)?;
        Ok(format!("{}:registry:orchestrator:{consumer}", self.ns))
    }

    /// `N:wf:{<id>}` — hash: one workflow's state (`state` JSON, `version`,
    /// `status`, `definition`, times) and its outbox of commands decided but
    /// not yet carried out. The id is the hash tag: a transition touches this
    /// key and [`Keys::workflow_events`] only.
    pub fn workflow(&self, id: &str) -> Result<String> {
        names::validate_workflow_id(id)?;
        Ok(format!("{}:wf:{{{id}}}", self.ns))
    }

    /// `N:wf:{<id>}:events` — stream: the workflow's event log, one entry per
    /// stored transition, in version order.
    pub fn workflow_events(&self, id: &str) -> Result<String> {
        names::validate_workflow_id(id)?;
        Ok(format!("{}:wf:{{{id}}}:events", self.ns))
    }

    /// `N:wfs:all` — sorted set of every workflow id, score = creation time
    /// (ms): listing and pagination.
    pub fn workflows_all(&self) -> String {
        format!("{}:wfs:all", self.ns)
    }

    /// `N:wfs:active` — sorted set of workflows that have not ended, score =
    /// creation time (ms): what the orchestrator sweeps for unfinished
    /// outboxes after a crash.
    pub fn workflows_active(&self) -> String {
        format!("{}:wfs:active", self.ns)
    }

    /// `N:wfs:{ended}` — sorted set of workflows that have ended (completed,
    /// failed, cancelled), score = when they ended, in ms by the Redis
    /// server's clock: what retention expires, oldest first. A `blocked`
    /// workflow has not ended and is never in it. Written by the transition
    /// script that ends the workflow; shares its hash tag with
    /// [`Keys::workflows_ended_bytes`] so retention's bookkeeping of the two
    /// is one single-slot script.
    pub fn workflows_ended(&self) -> String {
        format!("{}:wfs:{{ended}}", self.ns)
    }

    /// `N:wfs:{ended}:bytes` — hash: ended workflow id → the Redis bytes of
    /// its state and event log (`MEMORY USAGE`, measured once when it
    /// ended), and the field `:total` (no workflow id holds a `:`) → their
    /// sum: what `--retention-max-bytes` bounds.
    pub fn workflows_ended_bytes(&self) -> String {
        format!("{}:wfs:{{ended}}:bytes", self.ns)
    }

    /// `N:wfs:archive` — stream: one entry per expired workflow (field
    /// `workflow`: the archive JSON line) when the orchestrator runs with
    /// `--archive-stream`; capped by `--archive-stream-max-len`.
    pub fn workflow_archive(&self) -> String {
        format!("{}:wfs:archive", self.ns)
    }

    /// `N:lease:<name>` — string with a TTL: which orchestrator replica runs
    /// a namespace-wide chore (`retention`, `housekeeping`) this round, so
    /// replicas do not all do it at once. Losing it costs a round, never data.
    pub fn chore_lease(&self, name: &str) -> String {
        format!("{}:lease:{name}", self.ns)
    }

    /// `N:wfs:outbox` — sorted set of workflows whose outbox holds commands
    /// not carried out yet, score = when the oldest of them was decided (ms,
    /// the Redis server's clock). Written by the transition script, emptied
    /// by the script that clears an outbox: the sweeper reads only this
    /// (entries older than its grace), never every active workflow, and no
    /// replica's own clock takes part.
    pub fn workflows_outbox(&self) -> String {
        format!("{}:wfs:outbox", self.ns)
    }

    /// `N:wfs:counts` — hash: workflows by status (`running` → n, …),
    /// moved by the transition script in the same step as the status, so
    /// `/metrics` reads them in one call and every replica agrees.
    pub fn workflow_counts(&self) -> String {
        format!("{}:wfs:counts", self.ns)
    }

    /// `N:wfs:changes` — pub/sub channel: one message per stored transition,
    /// for live views (SSE). Losing one costs a view a refresh, never state.
    pub fn workflow_changes(&self) -> String {
        format!("{}:wfs:changes", self.ns)
    }

    /// `N:def:{<name>}` — hash: a workflow definition's versions (`1`, `2`, …
    /// → JSON) and `latest`.
    pub fn definition(&self, name: &str) -> Result<String> {
        names::validate_definition_name(name)?;
        Ok(format!("{}:def:{{{name}}}", self.ns))
    }

    /// `N:defs` — set of registered definition names.
    pub fn definitions(&self) -> String {
        format!("{}:defs", self.ns)
    }

    /// Pattern matching every task stream of the namespace (for `SCAN`).
    pub fn tasks_pattern(&self) -> String {
        format!("{}:agent:{{*}}:tasks", self.ns)
    }

    /// `SCAN MATCH` pattern of every per-agent-type key of this namespace
    /// (pair it with `TYPE stream` to find the task, result and DLQ streams).
    pub fn agent_keys_pattern(&self) -> String {
        format!("{}:agent:{{*}}:*", self.ns)
    }

    /// The agent type a per-agent-type key of this namespace belongs to
    /// (the inverse of the builders above), or `None` for any other key.
    pub fn agent_type_of(&self, key: &str) -> Option<AgentType> {
        let rest = key
            .strip_prefix(self.ns.as_str())?
            .strip_prefix(":agent:{")?;
        let (t, _) = rest.split_once("}:")?;
        AgentType::new(t).ok()
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(Namespace::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_type_of_inverts_the_builders() {
        let k = Keys::new(Namespace::new("n1").unwrap());
        let t = AgentType::new("e2e").unwrap();
        for key in [k.tasks(&t), k.dlq(&t), k.results(&t), k.delayed(&t)] {
            assert_eq!(k.agent_type_of(&key), Some(t.clone()), "{key}");
        }
        assert_eq!(k.agent_type_of("n2:agent:{e2e}:tasks"), None);
        assert_eq!(k.agent_type_of("n1:wf:{x}"), None);
    }

    #[test]
    fn names_share_the_agent_hash_tag() {
        let k = Keys::new(Namespace::new("prod").unwrap());
        let t = AgentType::new("scaffold").unwrap();
        assert_eq!(k.tasks(&t), "prod:agent:{scaffold}:tasks");
        assert_eq!(k.results(&t), "prod:agent:{scaffold}:results");
        assert_eq!(k.dlq(&t), "prod:agent:{scaffold}:dlq");
        assert_eq!(k.delayed(&t), "prod:agent:{scaffold}:delayed");
        assert_eq!(k.deadlines(&t), "prod:agent:{scaffold}:deadlines");
        assert_eq!(
            k.idempotency(&t, "k1").unwrap(),
            "prod:agent:{scaffold}:idem:k1"
        );
        assert_eq!(
            k.result(&t, "t-1").unwrap(),
            "prod:agent:{scaffold}:result:t-1"
        );
        assert_eq!(
            k.result(&t, "t-1").unwrap(),
            format!("{}t-1", k.result_prefix(&t))
        );
        assert_eq!(k.registry_agents(), "prod:registry:agents");
        assert_eq!(k.registry_types(), "prod:registry:types");
        assert_eq!(k.fleet(&t), "prod:agent:{scaffold}:fleet");
        assert_eq!(k.fleet_seen(&t), "prod:agent:{scaffold}:fleet-seen");
        assert_eq!(k.fleet_expires(&t), "prod:agent:{scaffold}:fleet-expires");
        assert_eq!(k.fleet_active(&t), "prod:agent:{scaffold}:fleet-active");
        assert_eq!(k.progress(&t), "prod:agent:{scaffold}:progress");
        assert_eq!(
            k.registry_agent("host-1-ab").unwrap(),
            "prod:registry:agent:host-1-ab"
        );
        assert!(k.result(&t, "a{b}").is_err());
        assert_eq!(k.workflow("w-1").unwrap(), "prod:wf:{w-1}");
        assert_eq!(k.workflow_events("w-1").unwrap(), "prod:wf:{w-1}:events");
        assert!(k.workflow("a:b").is_err());
        assert!(k.workflow("a{b}").is_err());
        assert_eq!(k.definition("sdlc").unwrap(), "prod:def:{sdlc}");
        assert_eq!(k.workflows_ended(), "prod:wfs:{ended}");
        assert_eq!(k.workflows_ended_bytes(), "prod:wfs:{ended}:bytes");
        assert_eq!(k.workflow_archive(), "prod:wfs:archive");
        assert_eq!(k.chore_lease("retention"), "prod:lease:retention");
        assert_eq!(
            k.orchestrator_presence("o-1").unwrap(),
            "prod:registry:orchestrator:o-1"
        );
        assert!(k.definition("Bad Name").is_err());
        assert!(k.idempotency(&t, "").is_err());
    }
}
