//! Applying a batch of results in a few round trips.
//!
//! [`Engine::signal`] takes three round trips per transition (store,
//! dispatch, clear the outbox). Under load the orchestrator spent most of
//! its time on those calls rather than on deciding anything, so results
//! read together are applied together: every state stored in one pipeline,
//! every dispatch in another, every outbox cleared in a third. The
//! guarantees are the same script for script (each transition still stores
//! with its own version check, each dispatch is still idempotent); whatever
//! does not fit the fast path — a conflict, an outbox left by a crash, a
//! copy of a state that turns out stale, an error — goes through
//! [`Engine::signal_result`] one by one.

use crate::engine::{Engine, Outcome, event_kind, log_entry, now_ms, settled_task};
use crate::error::Error;
use crate::machine::{self, Event, Workflow};
use crate::scripts;
use crate::store::status_str;
use redis::aio::ConnectionLike;

type Result<T, E = Error> = std::result::Result<T, E>;

/// One transition of the batch on its way.
struct Pending {
    /// Index in the caller's items.
    at: usize,
    next: Workflow,
    version: u64,
}

impl Engine {
    /// Applies result events to distinct workflows (`items`: workflow id,
    /// event); returns one outcome per item, in order. The caller
    /// acknowledges the results whose outcome is `Ok`.
    pub async fn signal_results<C: ConnectionLike + Send + Clone>(
        &self,
        conn: &mut C,
        items: &[(String, Event)],
    ) -> Vec<Result<Outcome>> {
        let mut out: Vec<Option<Result<Outcome>>> = (0..items.len()).map(|_| None).collect();
        let mut slow: Vec<usize> = Vec::new();
        if let Err(e) = self.fast_path(conn, items, &mut out, &mut slow).await {
            // Nothing is known of the items not settled yet: the slow path
            // re-reads each one (a transition stored before the error is then
            // seen, and its outbox carried out).
            tracing::debug!(error = %e, "batched transitions failed; applying one by one");
            for (i, o) in out.iter_mut().enumerate() {
                if o.is_none() && !slow.contains(&i) {
                    slow.push(i);
                }
            }
        }
        let slow_results = futures::future::join_all(slow.iter().map(|&i| {
            let mut c = conn.clone();
            let (id, event) = &items[i];
            async move { (i, self.signal_result(&mut c, id, event).await) }
        }))
        .await;
        for (i, r) in slow_results {
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Error::Conflict("not applied".into()))))
            .collect()
    }

    async fn fast_path<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        items: &[(String, Event)],
        out: &mut [Option<Result<Outcome>>],
        slow: &mut Vec<usize>,
    ) -> Result<()> {
        // 1. States: this process's copies, the rest in one read.
        let mut states: Vec<Option<(Workflow, u64, bool)>> = items
            .iter()
            .map(|(id, _)| self.cached(id).map(|(w, v)| (w, v, true)))
            .collect();
        let misses: Vec<usize> = (0..items.len()).filter(|&i| states[i].is_none()).collect();
        let ids: Vec<&str> = misses.iter().map(|&i| items[i].0.as_str()).collect();
        for (&i, loaded) in misses.iter().zip(self.store().load_many(conn, &ids).await?) {
            match loaded {
                Ok(None) => out[i] = Some(Ok(Outcome::NotFound)),
                // An outbox left by an interrupted transition: one by one.
                Ok(Some(s)) if !s.outbox.is_empty() => slow.push(i),
                Ok(Some(s)) => states[i] = Some((s.workflow, s.version, false)),
                Err(e) => out[i] = Some(Err(e)),
            }
        }

        // 2. Decide, in memory.
        let mut pending: Vec<Pending> = Vec::new();
        let mut saves = redis::pipe();
        saves.load_script(&scripts::TRANSITION).ignore();
        let mut plans = Vec::new();
        for (i, state) in states.into_iter().enumerate() {
            let Some((wf, version, from_cache)) = state else {
                continue;
            };
            let (id, event) = &items[i];
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
            let Some((next, commands)) = machine::apply(&wf, &def, event, now_ms()) else {
                if from_cache {
                    // Only a fresh read may conclude that nothing changes.
                    slow.push(i);
                } else {
                    out[i] = Some(Ok(Outcome::Unchanged {
                        workflow: wf,
                        version,
                    }));
                }
                continue;
            };
            let entry = log_entry(&wf, event, &commands);
            let plan = match self
                .store()
                .save_invocation(version, &next, &commands, &entry)
                .and_then(|inv| {
                    saves.invoke_script(&inv);
                    self.plan(&def, id, &commands, settled_task(event))
                }) {
                Ok(p) => p,
                Err(e) => return Err(e),
            };
            plans.push(plan);
            pending.push(Pending {
                at: i,
                next,
                version: version + 1,
            });
        }
        if pending.is_empty() {
            return Ok(());
        }

        // 3. Store every transition (each with its own version check).
        let stored: Vec<i64> = saves.query_async(conn).await?;
        let mut kept = Vec::new();
        let mut kept_plans = Vec::new();
        for ((p, plan), ok) in pending.into_iter().zip(plans).zip(stored) {
            let event = &items[p.at].1;
            if ok == 1 {
                metrics::counter!("orchestrator_transitions_total", "event" => event_kind(event))
                    .increment(1);
                kept.push(p);
                kept_plans.push(plan);
            } else {
                self.forget(&items[p.at].0);
                metrics::counter!("orchestrator_transition_conflicts_total").increment(1);
                slow.push(p.at);
            }
        }
        if kept.is_empty() {
            return Ok(());
        }

        // 4. Carry out: dispatches on the dispatch connection, deadlines on ours.
        let mut dispatches = redis::pipe();
        dispatches.load_script(&scripts::DISPATCH).ignore();
        let mut timers = redis::pipe();
        timers.load_script(&scripts::TIMERS).ignore();
        let (mut n_dispatch, mut n_timers) = (0, 0);
        for plan in &kept_plans {
            for inv in &plan.dispatches {
                dispatches.invoke_script(inv);
                n_dispatch += 1;
            }
            for inv in &plan.timers {
                timers.invoke_script(inv).ignore();
                n_timers += 1;
            }
        }
        let mut client_conn = self.client().connection();
        let run_dispatches = async {
            if n_dispatch == 0 {
                return Ok(Vec::new());
            }
            dispatches.query_async::<Vec<i64>>(&mut client_conn).await
        };
        let run_timers = async {
            if n_timers == 0 {
                return Ok(());
            }
            timers.query_async::<()>(conn).await
        };
        let (added, timed) = tokio::join!(run_dispatches, run_timers);
        let added = added?;
        timed?;
        metrics::counter!("orchestrator_dispatches_total")
            .increment(added.iter().filter(|a| **a == 1).count() as u64);

        // 5. Clear the outboxes; workflows that ended leave the active index.
        let mut clears = redis::pipe();
        clears.load_script(&scripts::CLEAR_OUTBOX).ignore();
        for p in &kept {
            clears.invoke_script(
                &self
                    .store()
                    .clear_outbox_invocation(&items[p.at].0, p.version)?,
            );
        }
        for p in kept.iter().filter(|p| p.next.status.is_terminal()) {
            clears
                .zrem(self.keys().workflows_active(), &items[p.at].0)
                .ignore();
        }
        let cleared: Vec<i64> = clears.query_async(conn).await?;
        for (p, cleared) in kept.into_iter().zip(cleared) {
            let id = &items[p.at].0;
            if p.next.status.is_terminal() {
                self.forget(id);
                metrics::counter!("orchestrator_workflows_ended_total", "status" => status_str(p.next.status)).increment(1);
            } else if cleared == 1 {
                self.remember(&p.next, p.version);
            } else {
                self.forget(id);
            }
            out[p.at] = Some(Ok(Outcome::Applied {
                workflow: p.next,
                version: p.version,
            }));
        }
        Ok(())
    }
}
