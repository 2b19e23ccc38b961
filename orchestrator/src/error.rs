use thiserror::Error;

/// Why a workflow definition was refused. Every message names the stage or
/// field at fault.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DefinitionError {
    /// Not valid YAML / JSON, or a field of the wrong type.
    #[error("cannot parse the definition: {0}")]
    Parse(String),
    /// A field breaks a rule (names, limits, durations).
    #[error("{0}")]
    Invalid(String),
    /// Two stages share a name.
    #[error("duplicate stage {0:?}")]
    DuplicateStage(String),
    /// `depends_on` names a stage that does not exist.
    #[error("stage {stage:?} depends on unknown stage {missing:?}")]
    UnknownDependency { stage: String, missing: String },
    /// The stages' dependencies form a cycle; `cycle` lists stages on it.
    #[error("stages form a cycle: {}", cycle.join(" -> "))]
    Cycle { cycle: Vec<String> },
}

/// Result alias of the definition module.
pub type Result<T, E = DefinitionError> = std::result::Result<T, E>;

/// Errors of the durable shell, the loops and the operators' library.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A definition was refused.
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// No such workflow, definition, stage or task.
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    /// The request contradicts the current state (id taken, stage not
    /// waiting for approval, workflow already ended).
    #[error("{0}")]
    Conflict(String),
    /// A request field breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// A stored workflow or definition cannot be read back: written by a
    /// newer or broken version. Nothing is changed.
    #[error("stored {what} {id:?} is unreadable: {why}")]
    Corrupt {
        what: &'static str,
        id: String,
        why: String,
    },
    /// Settings are inconsistent; the message names the setting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A create's store was sent but its answer did not come back: the
    /// workflow `id` may or may not be stored. Creating it again with the
    /// same id says which (creates are idempotent by id).
    #[error(
        "the workflow may have been stored as {id:?} (redis: {source}); create it again with this id to find out"
    )]
    Unconfirmed {
        id: String,
        #[source]
        source: redis::RedisError,
    },
    /// Redis refused a command or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The SDK client failed (dispatch, results, dead letters).
    #[error(transparent)]
    Sdk(#[from] agent_sdk::Error),
    /// A name broke the wire protocol's rules.
    #[error(transparent)]
    Protocol(#[from] agent_sdk::schemas::Error),
    /// Reading a file (definitions) failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether trying again later may help: Redis, the SDK client's Redis
    /// calls, a transition that kept losing its version check. Not: an
    /// unreadable state, an unknown definition, a refused request.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Redis(_) | Self::Sdk(_) | Self::Conflict(_) | Self::Unconfirmed { .. }
        )
    }
}
