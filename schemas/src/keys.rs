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

    /// `N:registry:agents` — sorted set of live instance ids, score = last seen (ms).
    pub fn registry_agents(&self) -> String {
        format!("{}:registry:agents", self.ns)
    }

    /// `N:registry:agent:<instance id>` — hash with TTL: one instance's record.
    pub fn registry_agent(&self, instance_id: &str) -> Result<String> {
        names::validate_consumer(instance_id)?;
        Ok(format!("{}:registry:agent:{instance_id}", self.ns))
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
        assert!(k.definition("Bad Name").is_err());
        assert!(k.idempotency(&t, "").is_err());
    }
}
