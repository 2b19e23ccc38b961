//! Stage deadlines: `N:agent:{T}:deadlines`, one sorted set per agent type
//! in that type's slot, scored by the Redis server's clock.

use super::{Result, WorkflowStore};
use crate::scripts;
use agent_sdk::schemas::AgentType;
use redis::aio::ConnectionLike;

impl WorkflowStore {
    /// The script call that arms and cancels deadlines of `agent`'s tasks
    /// (`(task id, Some(delay))` arms, `None` cancels).
    pub fn timers_invocation(
        &self,
        agent: &AgentType,
        ops: &[(String, Option<std::time::Duration>)],
    ) -> redis::ScriptInvocation<'static> {
        let mut inv = scripts::TIMERS.prepare_invoke();
        inv.key(self.keys.deadlines(agent));
        for (member, delay) in ops {
            match delay {
                Some(d) => inv.arg("A").arg(member).arg(d.as_millis() as u64),
                None => inv.arg("C").arg(member).arg(0),
            };
        }
        inv
    }

    /// Takes up to `max` due deadlines of `agent`'s tasks for `lease`.
    pub async fn claim_due_timers<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        agent: &AgentType,
        max: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<String>> {
        Ok(scripts::CLAIM_TIMERS
            .key(self.keys.deadlines(agent))
            .arg(max)
            .arg(lease.as_millis() as u64)
            .invoke_async(conn)
            .await?)
    }

    /// [`WorkflowStore::claim_due_timers`] for many agent types in one
    /// round trip (a pipeline of the same script, each call in its type's
    /// slot): the due deadlines of each, in order.
    pub async fn claim_due_timers_many<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        agents: &[AgentType],
        max: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<Vec<String>>> {
        let calls: Vec<redis::ScriptInvocation<'static>> = agents
            .iter()
            .map(|a| {
                let mut inv = scripts::CLAIM_TIMERS.prepare_invoke();
                inv.key(self.keys.deadlines(a))
                    .arg(max)
                    .arg(lease.as_millis() as u64);
                inv
            })
            .collect();
        let calls: Vec<&redis::ScriptInvocation<'static>> = calls.iter().collect();
        Ok(crate::scripts::invoke_all(conn, &scripts::CLAIM_TIMERS, &calls).await?)
    }

    /// Removes a fired deadline.
    pub async fn remove_timer<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        agent: &AgentType,
        member: &str,
    ) -> Result<()> {
        let _: i64 = redis::cmd("ZREM")
            .arg(self.keys.deadlines(agent))
            .arg(member)
            .query_async(conn)
            .await?;
        Ok(())
    }
}
