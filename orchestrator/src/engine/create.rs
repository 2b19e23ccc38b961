//! Creating a workflow: idempotent by id, and a success once stored.

use super::{Engine, NewWorkflow, Result};
use crate::definition::Definition;
use crate::error::Error;
use crate::machine::log::log_entry;
use crate::machine::{self, Event, Workflow};
use crate::scripts;
use agent_sdk::schemas::names;
use redis::aio::ConnectionLike;
use serde_json::Value;
use std::sync::Arc;

/// What [`Engine::create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// Created and started now.
    Created,
    /// The same request came before: this is the workflow it created.
    Existing,
    /// Stored, but its first commands could not be carried out yet: they
    /// wait in its outbox, and the sweeper of any replica carries them out.
    Stored,
}

/// A workflow [`Engine::create`] answers with.
#[derive(Debug, Clone)]
pub struct Created {
    /// The workflow as stored.
    pub workflow: Workflow,
    /// Its version.
    pub version: u64,
    /// What happened.
    pub creation: Creation,
    /// Its definition (so an answer needs no further read).
    pub definition: Arc<Definition>,
}

impl Created {
    fn new(
        workflow: Workflow,
        version: u64,
        creation: Creation,
        definition: Arc<Definition>,
    ) -> Self {
        Self {
            workflow,
            version,
            creation,
            definition,
        }
    }
}

impl Engine {
    /// A fresh workflow id (UUIDv7), for callers that must know the id
    /// before they create (to name it in an answer whatever happens).
    pub fn new_workflow_id() -> String {
        uuid::Uuid::now_v7().to_string()
    }

    /// Creates and starts a workflow; returns it as stored, and whether it
    /// was created now, found (the same request again) or stored with its
    /// dispatch left to the sweeper.
    ///
    /// Idempotent by id: a workflow `id` that exists with the same
    /// definition (and version, when `req` names one) and the same input is
    /// that workflow ([`Creation::Existing`]); with anything else it is
    /// [`Error::Conflict`]. Once the workflow is stored the create succeeds:
    /// if carrying out its first commands fails (Redis out of memory, a
    /// dropped connection), they stay in its outbox for the sweeper and the
    /// answer is [`Creation::Stored`], never an error a client would retry
    /// into a duplicate.
    pub async fn create<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        req: NewWorkflow,
    ) -> Result<Created> {
        let id = match req.id {
            Some(id) => {
                names::validate_workflow_id(&id).map_err(|e| Error::Invalid(e.to_string()))?;
                id
            }
            None => Self::new_workflow_id(),
        };
        let def = self.catalog.get(conn, &req.definition, req.version).await?;
        // A workflow whose results nobody would read is refused up front.
        self.watch_definition(&def)?;
        // The Redis server's clock: the index scores and every time in the
        // state are on the one clock all replicas share.
        let now = crate::store::server_time_ms(conn).await?;
        self.note_time(now);
        let fresh = Workflow::new(id.clone(), &def, req.input.clone(), now);
        let Some((started, commands)) = machine::apply(&fresh, &def, &Event::Started, now) else {
            return Err(Error::Invalid(format!(
                "definition {} v{} cannot start",
                def.name, def.version
            )));
        };
        let entry = log_entry(&fresh, &Event::Started, &commands);
        // One round trip: indexed first (a crash in between leaves index
        // entries without a workflow; the outbox index's makes the sweeper
        // prune them), then stored if the id is free.
        let save = self.store.save_invocation(0, &started, &commands, &entry)?;
        let mut pipe = redis::pipe();
        pipe.load_script(&scripts::TRANSITION).ignore();
        self.store.add_index_commands(&mut pipe, &id, now);
        pipe.cmd("ZADD")
            .arg(self.keys().workflows_outbox())
            .arg("NX")
            .arg(now)
            .arg(&id)
            .ignore();
        pipe.invoke_script(&save);
        let stored = match pipe.query_async::<(i64,)>(conn).await {
            Ok((n,)) => n,
            // Refused (out of memory, read-only) or the connection failed:
            // whether the store ran is read back, never guessed.
            Err(e) => match self.store.load(conn, &id).await {
                Ok(None) => return Err(e.into()),
                Ok(Some(s)) if s.version == 1 && s.workflow == started => 1,
                Ok(Some(_)) => 0,
                Err(_) => return Err(Error::Unconfirmed { id, source: e }),
            },
        };
        if stored != 1 {
            return self.existing(conn, &id, def, req.version, &req.input).await;
        }
        metrics::counter!("orchestrator_transitions_total", "event" => "started").increment(1);
        metrics::counter!("orchestrator_workflows_created_total").increment(1);
        match self.carry_out(conn, &def, &id, 1, &commands, None).await {
            Ok(true) => {
                self.remember(&started, 1);
                return Ok(Created::new(started, 1, Creation::Created, def));
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(workflow = %id, error = %e, "workflow stored; its first dispatch is left to the sweeper");
                metrics::counter!("orchestrator_creates_dispatch_deferred_total").increment(1);
                return Ok(Created::new(started, 1, Creation::Stored, def));
            }
        }
        // Something moved it on already (a refused dispatch failed it, an
        // operator, a fast result): answer with what is stored now.
        match self.store.load(conn, &id).await {
            Ok(Some(s)) => Ok(Created::new(s.workflow, s.version, Creation::Created, def)),
            _ => Ok(Created::new(started, 1, Creation::Created, def)),
        }
    }

    /// The answer to a create whose id is taken: that workflow when the
    /// request is the same, else a conflict.
    async fn existing<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
        def: Arc<Definition>,
        version: Option<u32>,
        input: &Value,
    ) -> Result<Created> {
        let taken = || Error::Conflict(format!("workflow {id:?} exists already"));
        let Some(s) = self.store.load(conn, id).await? else {
            return Err(taken());
        };
        let w = &s.workflow;
        let same_version = version.is_none_or(|v| v == w.definition_version);
        if w.definition != def.name || !same_version || w.input != *input {
            return Err(Error::Conflict(format!(
                "workflow {id:?} exists already with another definition or input (creates are \
                 idempotent by id: the same request returns the workflow, a different one is \
                 refused)"
            )));
        }
        Ok(Created::new(s.workflow, s.version, Creation::Existing, def))
    }
}
