//! Carrying out: the script calls that dispatch tasks, arm and cancel
//! deadlines, and clear outboxes — for one transition or for a batch, in one
//! pipelined round trip per kind.

use super::transition::Item;
use super::{Engine, Outcome, Result};
use crate::definition::Definition;
use crate::machine::{Command, Event, Workflow};
use crate::scripts::{self, invoke_all};
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
    /// Task id and its dispatch script call.
    dispatches: Vec<(String, redis::ScriptInvocation<'static>)>,
    timers: Vec<redis::ScriptInvocation<'static>>,
    /// Dispatches that can never be carried out: task id and why. Their
    /// outbox is not cleared until a `dispatch_failed` transition is stored
    /// ([`Engine::refuse`]), so a crash in between leaves the refusal to be
    /// found again, never a stage waiting for a task on no stream.
    refused: Vec<(String, String)>,
}

/// What carrying out one outbox came to.
#[derive(Debug, Default)]
pub(super) struct Carried {
    /// The outbox was cleared (false: a later transition came in, or a
    /// dispatch was refused).
    pub(super) cleared: bool,
    /// The first dispatch refused for good: task id and why.
    pub(super) refused: Option<(String, String)>,
}

/// Whether Redis refused a dispatch for good: sending the same call again
/// gets the same answer (the tasks stream's key holds another type, the
/// script fails on these arguments). Anything else — the connection, a
/// timeout, `LOADING`, `OOM`, `READONLY`, `BUSY`, `NOPERM` an operator can
/// fix — is worth trying again: the result stays pending, the outbox stays.
pub(super) fn refused_for_good(e: &redis::RedisError) -> bool {
    match e.code() {
        Some("WRONGTYPE") => true,
        // A script's own runtime error (as opposed to the server's state).
        Some("ERR") => e.detail().is_some_and(|d| d.contains("user_script")),
        _ => false,
    }
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
                let d = Dispatch {
                    workflow: id,
                    stage,
                    task_id,
                    agent,
                    input,
                    timeout: *timeout,
                    max_attempts: *max_attempts,
                };
                match self.dispatch_invocation(d, deadline_of(task_id)) {
                    Ok(inv) => plan.dispatches.push((task_id.clone(), inv)),
                    Err(why) => {
                        tracing::warn!(workflow = id, task = %task_id, error = %why, "dispatch refused for good; the stage fails");
                        plan.refused.push((task_id.clone(), why));
                    }
                }
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

    /// The script call of one dispatch, or why it can never be made (a
    /// body over the limit workers accept, an agent type that cannot be
    /// watched): nothing here touches Redis, so every error is permanent.
    fn dispatch_invocation(
        &self,
        d: Dispatch<'_>,
        deadline: Option<Duration>,
    ) -> std::result::Result<redis::ScriptInvocation<'static>, String> {
        let agent_type = AgentType::new(d.agent).map_err(|e| e.to_string())?;
        self.watch(d.agent).map_err(|e| e.to_string())?;
        let (task_id, fields) = self
            .client()
            .task_entry(
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
            )
            .map_err(|e| match e {
                agent_sdk::Error::Protocol(agent_sdk::schemas::Error::TooLarge { size, limit }) => {
                    format!(
                        "cannot dispatch: the task body is {size} bytes, over the limit of \
                         {limit} bytes a worker accepts (max payload, DecodeLimits::max_bytes)"
                    )
                }
                other => format!("cannot dispatch: {other}"),
            })?;
        let keys = self.keys();
        let idempotency = keys
            .idempotency(&agent_type, &task_id)
            .map_err(|e| format!("cannot dispatch: {e}"))?;
        let mut inv = scripts::DISPATCH.prepare_invoke();
        inv.key(keys.tasks(&agent_type))
            .key(idempotency)
            .key(keys.deadlines(&agent_type))
            .arg(&task_id)
            .arg(self.dispatch_key_ttl.as_millis() as u64)
            .arg(deadline.map_or(0, |d| d.as_millis() as u64))
            .arg(&fields);
        Ok(inv)
    }

    /// Runs the dispatches of `plans` in one round trip; returns, per plan,
    /// the first dispatch Redis refused for good (task id, why). When the
    /// round trip fails with such a refusal, the dispatches are sent one by
    /// one to find which: the others still go out.
    async fn dispatch_all<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        plans: &[CarryOut],
    ) -> Result<Vec<Option<(String, String)>>> {
        let mut refused: Vec<Option<(String, String)>> =
            plans.iter().map(|p| p.refused.first().cloned()).collect();
        let calls: Vec<_> = plans
            .iter()
            .flat_map(|p| &p.dispatches)
            .map(|(_, inv)| inv)
            .collect();
        let added: Vec<i64> = match invoke_all(conn, &scripts::DISPATCH, &calls).await {
            Ok(added) => added,
            Err(e) if refused_for_good(&e) => {
                let mut added = Vec::new();
                for (p, plan) in plans.iter().enumerate() {
                    for (task, inv) in &plan.dispatches {
                        match inv.invoke_async::<i64>(conn).await {
                            Ok(a) => added.push(a),
                            Err(e) if refused_for_good(&e) => {
                                tracing::warn!(task = %task, error = %e, "redis refuses the dispatch for good; the stage fails");
                                refused[p].get_or_insert_with(|| {
                                    (
                                        task.clone(),
                                        format!("cannot dispatch: redis refused the task: {e}"),
                                    )
                                });
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                added
            }
            Err(e) => return Err(e.into()),
        };
        metrics::counter!("orchestrator_dispatches_total")
            .increment(added.iter().filter(|a| **a == 1).count() as u64);
        Ok(refused)
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
    ) -> Result<Vec<Carried>> {
        let timers: Vec<_> = plans.iter().flat_map(|p| &p.timers).collect();
        let mut client_conn = self.client().connection();
        let refused = self.dispatch_all(&mut client_conn, plans).await?;
        let _: Vec<i64> = invoke_all(conn, &scripts::TIMERS, &timers).await?;

        // An outbox with a refused dispatch stays until the refusal is
        // stored as a transition (see `CarryOut::refused`).
        let to_clear: Vec<usize> = (0..outboxes.len())
            .filter(|&i| refused.get(i).is_none_or(Option::is_none))
            .collect();
        let clears = to_clear
            .iter()
            .map(|&i| {
                let (id, version, _) = outboxes[i];
                self.store().clear_outbox_invocation(id, version)
            })
            .collect::<Result<Vec<_>>>()?;
        let ended: Vec<&str> = to_clear
            .iter()
            .map(|&i| outboxes[i])
            .filter(|(_, _, ended)| *ended)
            .map(|(id, _, _)| id)
            .collect();
        let cleared: Vec<i64> = if ended.is_empty() {
            invoke_all(
                conn,
                &scripts::CLEAR_OUTBOX,
                &clears.iter().collect::<Vec<_>>(),
            )
            .await?
        } else {
            // Ended workflows leave the active index in the same round trip.
            let mut pipe = redis::pipe();
            pipe.load_script(&scripts::CLEAR_OUTBOX).ignore();
            for inv in &clears {
                pipe.invoke_script(inv);
            }
            for id in ended {
                pipe.zrem(self.keys().workflows_active(), id).ignore();
            }
            pipe.query_async(conn).await?
        };
        let mut out: Vec<Carried> = refused
            .into_iter()
            .map(|refused| Carried {
                cleared: false,
                refused,
            })
            .collect();
        out.resize_with(outboxes.len(), Carried::default);
        for (i, c) in to_clear.into_iter().zip(cleared) {
            out[i].cleared = c == 1;
        }
        Ok(out)
    }

    /// Stores the refusal of `task_id`'s dispatch as a `dispatch_failed`
    /// transition of workflow `id` (the stage fails as a failed stage
    /// does). Its carrying out takes the leftover outbox with it, without
    /// the refused dispatch, which the failed stage no longer waits for; a
    /// further refused dispatch of the same outbox is stored the same way.
    pub(super) async fn refuse<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
        task_id: &str,
        why: &str,
    ) -> Result<Outcome> {
        self.forget(id);
        metrics::counter!("orchestrator_dispatches_refused_total").increment(1);
        let event = Event::DispatchFailed {
            task_id: task_id.to_owned(),
            error: why.to_owned(),
        };
        let mut done = Box::pin(self.transition(conn, &[Item::signal(id, &event)])).await;
        done.pop()
            .unwrap_or(Ok(super::transition::Done::not_found()))
            .map(|d| d.outcome)
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
