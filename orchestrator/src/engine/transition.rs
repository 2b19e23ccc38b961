//! The one transition pipeline: read → apply → store → carry out → clear,
//! for one event or for a batch of events to distinct workflows.
//!
//! A batch costs a few round trips whatever its size: the states not cached
//! in one read, every transition stored in one pipeline (each with its own
//! version check), every dispatch in another, every deadline operation in a
//! third, every outbox cleared in a fourth. Under load the orchestrator spent
//! most of its time on round trips rather than on deciding anything; a
//! single event is a batch of one.
//!
//! What does not go straight through is handled here too, item by item:
//! a transition that loses its version check, or an event that changes
//! nothing on a cached copy, is tried again on a fresh read (up to
//! [`MAX_ROUNDS`] times); an outbox left by an interrupted transition is
//! carried out with the new commands; and when a round trip fails for a
//! batch, each of its items not settled yet is run again as a batch of one,
//! so one bad item cannot fail its neighbours and every item gets its own
//! error.

use super::dispatch::CarryOut;
use super::{Engine, Outcome, Result};
use crate::definition::Definition;
use crate::error::Error;
use crate::machine::log::log_entry;
use crate::machine::{self, Command, Event, StageStatus, Workflow};
use crate::scripts::{self, invoke_all};
use agent_sdk::schemas::AgentType;
use redis::aio::ConnectionLike;
use std::sync::Arc;

/// Most rounds one item is tried in under contention before giving up (the
/// event stays pending and is tried again later).
const MAX_ROUNDS: usize = 64;

/// One thing to do to one workflow.
#[derive(Debug, Clone, Copy)]
pub(super) struct Item<'a> {
    id: &'a str,
    /// The event to apply; `None`: only carry out a leftover outbox.
    event: Option<&'a Event>,
    /// The task whose result the caller acknowledges afterwards (that
    /// acknowledgement clears its deadline).
    settled: Option<&'a str>,
    /// Who caused the event (an API token's name), recorded in the log
    /// entry as the event's `by`.
    by: Option<&'a str>,
}

impl<'a> Item<'a> {
    /// An event the caller does not acknowledge anywhere.
    pub(super) fn signal(id: &'a str, event: &'a Event) -> Self {
        Self {
            id,
            event: Some(event),
            settled: None,
            by: None,
        }
    }

    /// An event caused by `by` (an operator's action), recorded as such.
    pub(super) fn signal_by(id: &'a str, event: &'a Event, by: Option<&'a str>) -> Self {
        Self {
            by,
            ..Self::signal(id, event)
        }
    }

    /// A result read from a results stream.
    pub(super) fn result(id: &'a str, event: &'a Event) -> Self {
        Self {
            id,
            event: Some(event),
            settled: event.settled_task(),
            by: None,
        }
    }

    /// Carry out what an interrupted transition left.
    pub(super) fn resume(id: &'a str) -> Self {
        Self {
            id,
            event: None,
            settled: None,
            by: None,
        }
    }
}

/// What one item came to.
#[derive(Debug)]
pub(super) struct Done {
    pub(super) outcome: Outcome,
    /// A leftover outbox was carried out.
    pub(super) carried_out: bool,
}

impl Done {
    pub(super) fn not_found() -> Self {
        Self {
            outcome: Outcome::NotFound,
            carried_out: false,
        }
    }
}

/// A transition decided and on its way.
struct Job {
    /// Index in the caller's items.
    at: usize,
    def: Arc<Definition>,
    /// The version whose outbox this job carries out and clears.
    version: u64,
    /// The outbox left by an interrupted transition, then the new commands.
    commands: Vec<Command>,
    state: JobState,
    /// A leftover outbox is among the commands.
    carried_out: bool,
}

enum JobState {
    /// A transition to store: the new state and its script call.
    Applied {
        next: Workflow,
        save: redis::ScriptInvocation<'static>,
    },
    /// Nothing to store; only a leftover outbox to carry out.
    Leftover { workflow: Workflow },
}

impl Job {
    fn stored_state(&self) -> Option<&Workflow> {
        match &self.state {
            JobState::Applied { next, .. } => Some(next),
            JobState::Leftover { .. } => None,
        }
    }
}

/// Where an item's state comes from this round.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Read {
    /// This process's copy, if it has one.
    Cached,
    /// Redis.
    Fresh,
}

impl Engine {
    /// Runs `items` (distinct workflows) through the pipeline; one result
    /// per item, in order.
    pub(super) async fn transition<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        items: &[Item<'_>],
    ) -> Vec<Result<Done>> {
        let mut out: Vec<Option<Result<Done>>> = items.iter().map(|_| None).collect();
        let mut todo: Vec<(usize, Read)> = (0..items.len()).map(|i| (i, Read::Cached)).collect();
        for _ in 0..MAX_ROUNDS {
            if todo.is_empty() {
                break;
            }
            match self.round(conn, items, &todo, &mut out).await {
                Ok(again) => todo = again,
                Err(e) if todo.len() == 1 => {
                    let i = todo[0].0;
                    out[i].get_or_insert(Err(e));
                    todo.clear();
                }
                Err(e) => {
                    // Nothing is known of the items not settled yet: each is
                    // run again on its own, on a fresh read (a transition
                    // stored before the error is then seen, and its outbox
                    // carried out), side by side.
                    tracing::debug!(error = %e, "batched transitions failed; applying one by one");
                    let unsettled = todo.iter().filter(|(i, _)| out[*i].is_none());
                    let singles = unsettled.map(|&(i, _)| {
                        let mut c = self.client().connection();
                        let item = items[i];
                        async move { (i, Box::pin(self.transition(&mut c, &[item])).await) }
                    });
                    for (i, mut r) in futures::future::join_all(singles).await {
                        out[i] = r.pop();
                    }
                    todo.clear();
                }
            }
        }
        for (i, _) in todo {
            self.forget(items[i].id);
            out[i] = Some(Err(Error::Conflict(format!(
                "workflow {:?} changed {MAX_ROUNDS} times while applying one event; try again",
                items[i].id
            ))));
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Error::Conflict("not applied".into()))))
            .collect()
    }

    /// One round over `todo`: settles what it can into `out`, returns what
    /// must be tried again on a fresh read. An `Err` is a failed round trip
    /// of the round: nothing of what it settled is lost (it is in `out`).
    async fn round<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        items: &[Item<'_>],
        todo: &[(usize, Read)],
        out: &mut [Option<Result<Done>>],
    ) -> Result<Vec<(usize, Read)>> {
        let mut again = Vec::new();
        let jobs = self.decide(conn, items, todo, out, &mut again).await?;
        let jobs = self.store_all(conn, items, jobs, &mut again).await?;
        if jobs.is_empty() {
            return Ok(again);
        }
        self.carry_out_jobs(conn, items, jobs, out).await?;
        Ok(again)
    }

    /// Reads (cached copies, the rest in one round trip) and applies.
    async fn decide<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        items: &[Item<'_>],
        todo: &[(usize, Read)],
        out: &mut [Option<Result<Done>>],
        again: &mut Vec<(usize, Read)>,
    ) -> Result<Vec<Job>> {
        // (at, state, version, leftover outbox, from the cache)
        let mut states: Vec<(usize, Workflow, u64, Vec<Command>, bool)> = Vec::new();
        let mut misses: Vec<usize> = Vec::new();
        for &(i, read) in todo {
            // Resuming is about the stored outbox, which a copy never has.
            let cached = (read == Read::Cached && items[i].event.is_some())
                .then(|| self.cached(items[i].id))
                .flatten();
            match cached {
                Some((wf, v)) => states.push((i, wf, v, Vec::new(), true)),
                None => misses.push(i),
            }
        }
        let ids: Vec<&str> = misses.iter().map(|&i| items[i].id).collect();
        // The transitions' `now` is the Redis server's, read with the
        // states: every replica decides by the same clock (stage deadlines,
        // times recorded in the state).
        let (now, loaded) = if ids.is_empty() {
            (self.server_now(conn).await?, Vec::new())
        } else {
            let (now, loaded) = self.store().load_many_at(conn, &ids).await?;
            self.note_time(now);
            (now, loaded)
        };
        for (&i, loaded) in misses.iter().zip(loaded) {
            match loaded {
                Ok(None) => out[i] = Some(Ok(Done::not_found())),
                Ok(Some(s)) => states.push((i, s.workflow, s.version, s.outbox, false)),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        let mut jobs = Vec::new();
        for (i, wf, version, outbox, from_cache) in states {
            let item = items[i];
            let def = match self
                .catalog()
                .get(conn, &wf.definition, Some(wf.definition_version))
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    out[i] = Some(Err(e));
                    continue;
                }
            };
            let applied = item
                .event
                .and_then(|e| machine::apply(&wf, &def, e, now).map(|a| (e, a)));
            match applied {
                // Only a fresh read may conclude that nothing changes.
                None if from_cache => again.push((i, Read::Fresh)),
                None if outbox.is_empty() => {
                    out[i] = Some(Ok(Done {
                        outcome: Outcome::Unchanged {
                            workflow: wf,
                            version,
                        },
                        carried_out: false,
                    }));
                }
                None => {
                    // Nothing to store. An earlier transition's commands are
                    // still waiting (its orchestrator died): this is the
                    // moment to carry them out; it is typically a result
                    // read again after that crash.
                    self.forget(item.id);
                    jobs.push(Job {
                        at: i,
                        def,
                        version,
                        commands: outbox,
                        state: JobState::Leftover { workflow: wf },
                        carried_out: true,
                    });
                }
                Some((event, (next, commands))) => {
                    let mut entry = log_entry(&wf, event, &commands);
                    if let (Some(by), serde_json::Value::Object(m)) = (item.by, &mut entry.event) {
                        m.insert("by".to_owned(), by.into());
                    }
                    let save = match self
                        .store()
                        .save_invocation(version, &next, &commands, &entry)
                    {
                        Ok(s) => s,
                        Err(e) => {
                            out[i] = Some(Err(e));
                            continue;
                        }
                    };
                    let carried_out = !outbox.is_empty();
                    let mut all = outbox;
                    all.extend(commands);
                    jobs.push(Job {
                        at: i,
                        def,
                        version: version + 1,
                        commands: all,
                        state: JobState::Applied { next, save },
                        carried_out,
                    });
                }
            }
        }
        Ok(jobs)
    }

    /// Stores every decided transition in one pipeline; a transition that
    /// lost its version check goes back to `again`.
    async fn store_all<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        items: &[Item<'_>],
        jobs: Vec<Job>,
        again: &mut Vec<(usize, Read)>,
    ) -> Result<Vec<Job>> {
        let saves: Vec<&redis::ScriptInvocation<'static>> = jobs
            .iter()
            .filter_map(|j| match &j.state {
                JobState::Applied { save, .. } => Some(save),
                JobState::Leftover { .. } => None,
            })
            .collect();
        let stored: Vec<i64> = invoke_all(conn, &scripts::TRANSITION, &saves).await?;
        let mut stored = stored.into_iter();
        let mut kept = Vec::with_capacity(jobs.len());
        for j in jobs {
            let Some(event) = items[j.at].event.filter(|_| j.stored_state().is_some()) else {
                kept.push(j);
                continue;
            };
            if stored.next() == Some(1) {
                metrics::counter!("orchestrator_transitions_total", "event" => event.kind())
                    .increment(1);
                kept.push(j);
            } else {
                self.forget(items[j.at].id);
                metrics::counter!("orchestrator_transition_conflicts_total").increment(1);
                again.push((j.at, Read::Fresh));
            }
        }
        Ok(kept)
    }

    /// Deletes the dead letters of the dead-lettered stages of workflows
    /// these jobs ended (an operator aborted or cancelled a blocked one): an
    /// ended workflow leaves none behind (unless the engine keeps them).
    /// Best effort: one left behind by an error is an operator's to purge.
    async fn forget_ended_dead_letters<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        jobs: &[Job],
    ) {
        if self.keeps_dead_letters() {
            return;
        }
        let mut calls = Vec::new();
        for j in jobs {
            let Some(next) = j.stored_state().filter(|n| n.status.is_terminal()) else {
                continue;
            };
            for st in &next.stages {
                let (StageStatus::DeadLettered, Some(task)) = (st.status, &st.task_id) else {
                    continue;
                };
                let Some(agent) =
                    super::task_agent(&j.def, task).and_then(|a| AgentType::new(a).ok())
                else {
                    continue;
                };
                let newest = st.finished_at_ms.map(|ms| ms + 1);
                calls.push(self.forget_dead_letter_invocation(&agent, task, newest));
            }
        }
        let calls: Vec<_> = calls.iter().collect();
        if let Err(e) =
            invoke_all::<_, Option<String>>(conn, &scripts::FORGET_DEAD_LETTER, &calls).await
        {
            tracing::warn!(error = %e, "cannot delete the dead letters of ended workflows");
        }
    }

    /// Carries out the stored jobs' commands and clears their outboxes.
    async fn carry_out_jobs<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        items: &[Item<'_>],
        jobs: Vec<Job>,
        out: &mut [Option<Result<Done>>],
    ) -> Result<()> {
        let mut plans: Vec<CarryOut> = Vec::with_capacity(jobs.len());
        let mut ready = Vec::with_capacity(jobs.len());
        for j in jobs {
            let item = items[j.at];
            let state = match &j.state {
                JobState::Applied { next, .. } => next,
                JobState::Leftover { workflow } => workflow,
            };
            match self.plan(&j.def, item.id, &j.commands, item.settled, Some(state)) {
                Ok(p) => {
                    plans.push(p);
                    ready.push(j);
                }
                // Stored but not carried out: the outbox stays for the next
                // reader or the sweeper.
                Err(e) => out[j.at] = Some(Err(e)),
            }
        }
        let outboxes: Vec<(&str, u64, bool)> = ready
            .iter()
            .map(|j| {
                // A leftover outbox of an ended workflow (its orchestrator
                // died before clearing it) takes it out of the active index
                // as well.
                let ended = match &j.state {
                    JobState::Applied { next, .. } => next.status.is_terminal(),
                    JobState::Leftover { workflow } => workflow.status.is_terminal(),
                };
                (items[j.at].id, j.version, ended)
            })
            .collect();
        let carried = self.carry_out_all(conn, &plans, &outboxes).await?;
        self.forget_ended_dead_letters(conn, &ready).await;
        for (j, carried) in ready.into_iter().zip(carried) {
            let id = items[j.at].id;
            let cleared = carried.cleared;
            let mut outcome = match j.state {
                JobState::Applied { next, .. } => {
                    if next.status.is_terminal() {
                        self.forget(id);
                        metrics::counter!("orchestrator_workflows_ended_total", "status" => next.status.as_str())
                            .increment(1);
                    } else if cleared {
                        self.remember(&next, j.version);
                    } else {
                        self.forget(id);
                    }
                    Outcome::Applied {
                        workflow: next,
                        version: j.version,
                    }
                }
                JobState::Leftover { workflow } => Outcome::Unchanged {
                    workflow,
                    version: j.version,
                },
            };
            if let Some((task, why)) = carried.refused {
                // This item's own transition is stored whatever comes of
                // the refusal: if storing it fails, the outbox still holds
                // the refused dispatch, and the sweeper finds it again.
                match self.refuse(conn, id, &task, &why).await {
                    Ok(o @ Outcome::Applied { .. }) => outcome = o,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(workflow = id, task = %task, error = %e, "cannot store a refused dispatch yet; the sweeper tries again");
                    }
                }
            }
            out[j.at] = Some(Ok(Done {
                outcome,
                carried_out: j.carried_out,
            }));
        }
        Ok(())
    }
}
