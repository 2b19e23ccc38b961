//! Carrying out: the script calls that dispatch tasks, arm and cancel
//! deadlines, and clear outboxes — for one transition or for a batch, in one
//! pipelined round trip per kind.

use super::{DISPATCH_IDEMPOTENCY_TTL, Engine, Result};
use crate::definition::Definition;
use crate::machine::{Command, Workflow};
use crate::scripts;
use agent_sdk::EnqueueOptions;
use agent_sdk::schemas::{AgentType, TaskId, TaskKind};
use redis::aio::ConnectionLike;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

/// Deadline operations: task id, and the delay to arm it with (`None`: cancel).
type TimerOps = Vec<(String, Option<Duration>)>;

/// The script calls that carry out one transition's commands: dispatches
/// (each arming its deadline) and the remaining deadline operations, one
/// call per agent type.
#[derive(Default)]
pub(super) struct CarryOut {
    dispatches: Vec<redis::ScriptInvocation<'static>>,
    timers: Vec<redis::ScriptInvocation<'static>>,
}

impl Engine {
    /// The script calls that carry `commands` out (see [`Engine::carry_out`]).
    ///
    /// `state` is the workflow as stored with these commands, when known: a
    /// dispatch (and the deadline it arms) of a task it no longer waits for
    /// is left out. Such a dispatch happened already — its task has a result,
    /// or timed out — so it would add nothing, but arming its deadline again
    /// would bring back the deadline its result's acknowledgement cleared.
    /// That happens when outboxes pile up behind transitions that follow
    /// each other faster than their clears (two replicas taking turns on one
    /// workflow).
    pub(super) fn plan(
        &self,
        def: &Definition,
        id: &str,
        commands: &[Command],
        settled: Option<&str>,
        state: Option<&Workflow>,
    ) -> Result<CarryOut> {
        let awaited: Option<HashSet<&str>> = state.map(|w| w.running_tasks().into_iter().collect());
        let done_with = |task: &str| {
            awaited.as_ref().is_some_and(|a| !a.contains(task))
                && TaskId::parse(task).is_some_and(|t| t.kind() != TaskKind::Approval)
        };
        let commands: Vec<&Command> = commands
            .iter()
            .filter(|c| match c {
                Command::Dispatch { task_id, .. } | Command::ArmTimer { task_id, .. } => {
                    !done_with(task_id)
                }
                Command::CancelTimer { .. } => true,
            })
            .collect();
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
        for c in &commands {
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
                    Dispatch {
                        workflow: id,
                        stage,
                        task_id,
                        agent,
                        input,
                        timeout: *timeout,
                        max_attempts: *max_attempts,
                    },
                    deadline_of(task_id),
                )?);
            }
        }
        // The other timer operations, by the agent type whose slot holds them.
        let mut by_agent: Vec<(AgentType, TimerOps)> = Vec::new();
        for c in &commands {
            let (task_id, op) = match c {
                Command::ArmTimer { task_id, after } if !dispatched.contains(task_id.as_str()) => {
                    (task_id, Some(*after))
                }
                Command::CancelTimer { task_id } if settled != Some(task_id.as_str()) => {
                    (task_id, None)
                }
                _ => continue,
            };
            let Some(agent) = super::task_agent(def, task_id).and_then(|a| AgentType::new(a).ok())
            else {
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
            .map(|(agent, ops)| self.store().timers_invocation(agent, ops))
            .collect();
        Ok(plan)
    }

    fn dispatch_invocation(
        &self,
        d: Dispatch<'_>,
        deadline: Option<Duration>,
    ) -> Result<redis::ScriptInvocation<'static>> {
        let agent_type = AgentType::new(d.agent)?;
        self.watch(d.agent);
        let (task_id, fields) = self.client().task_entry(
            d.input,
            &EnqueueOptions {
                task_id: Some(d.task_id.to_owned()),
                workflow_id: Some(d.workflow.to_owned()),
                stage: Some(d.stage.to_owned()),
                trace_id: Some(d.workflow.to_owned()),
                timeout: d.timeout,
                max_attempts: d.max_attempts,
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

    /// Carries out `plans` — dispatches on the client's connection, then the
    /// other deadline operations on `conn` — then clears each outbox of
    /// `(workflow, version, ended)` if its version has not moved on, and
    /// takes ended workflows out of the active index. Returns, per outbox,
    /// whether it was cleared.
    ///
    /// Deadline operations come after the dispatches, not beside them: an
    /// outbox can hold an older dispatch of a task (which arms its deadline)
    /// and a newer cancel of that deadline, and the cancel must land last.
    pub(super) async fn carry_out_all<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        plans: &[CarryOut],
        outboxes: &[(&str, u64, bool)],
    ) -> Result<Vec<bool>> {
        let dispatches: Vec<_> = plans.iter().flat_map(|p| &p.dispatches).collect();
        let timers: Vec<_> = plans.iter().flat_map(|p| &p.timers).collect();
        let mut client_conn = self.client().connection();
        let added: Vec<i64> = invoke_all(&mut client_conn, &scripts::DISPATCH, &dispatches).await?;
        let _: Vec<i64> = invoke_all(conn, &scripts::TIMERS, &timers).await?;
        metrics::counter!("orchestrator_dispatches_total")
            .increment(added.iter().filter(|a| **a == 1).count() as u64);

        let clears = outboxes
            .iter()
            .map(|(id, version, _)| self.store().clear_outbox_invocation(id, *version))
            .collect::<Result<Vec<_>>>()?;
        let ended: Vec<&str> = outboxes
            .iter()
            .filter(|(_, _, ended)| *ended)
            .map(|(id, _, _)| *id)
            .collect();
        if ended.is_empty() {
            let cleared: Vec<i64> = invoke_all(
                conn,
                &scripts::CLEAR_OUTBOX,
                &clears.iter().collect::<Vec<_>>(),
            )
            .await?;
            return Ok(cleared.into_iter().map(|c| c == 1).collect());
        }
        // Ended workflows leave the active index in the same round trip.
        let mut pipe = redis::pipe();
        pipe.load_script(&scripts::CLEAR_OUTBOX).ignore();
        for inv in &clears {
            pipe.invoke_script(inv);
        }
        for id in ended {
            pipe.zrem(self.keys().workflows_active(), id).ignore();
        }
        let cleared: Vec<i64> = pipe.query_async(conn).await?;
        Ok(cleared.into_iter().map(|c| c == 1).collect())
    }
}

/// Runs `calls` of `script` in one round trip: a single call as `EVALSHA`
/// (which loads the script when Redis does not have it), several in one
/// pipeline that loads it first (a pipelined `EVALSHA` cannot). One reply
/// per call.
pub(super) async fn invoke_all<C: ConnectionLike + Send, T: redis::FromRedisValue>(
    conn: &mut C,
    script: &redis::Script,
    calls: &[&redis::ScriptInvocation<'_>],
) -> redis::RedisResult<Vec<T>> {
    match calls {
        [] => Ok(Vec::new()),
        [one] => Ok(vec![one.invoke_async(conn).await?]),
        many => {
            let mut pipe = redis::pipe();
            pipe.load_script(script).ignore();
            for inv in many {
                pipe.invoke_script(inv);
            }
            pipe.query_async(conn).await
        }
    }
}

/// One dispatch command's parts.
struct Dispatch<'a> {
    workflow: &'a str,
    stage: &'a str,
    task_id: &'a str,
    agent: &'a str,
    input: &'a Value,
    timeout: Option<Duration>,
    max_attempts: Option<u32>,
}
