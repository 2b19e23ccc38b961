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

/// Result alias of this crate.
pub type Result<T, E = DefinitionError> = std::result::Result<T, E>;
