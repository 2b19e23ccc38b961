use thiserror::Error;

/// Why the server could not start or stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Settings are inconsistent; the message names the setting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The engine or a loop failed.
    #[error(transparent)]
    Orchestrator(#[from] orchestrator::Error),
    /// The SDK failed (connecting, the dispatch client).
    #[error(transparent)]
    Sdk(#[from] agent_sdk::Error),
    /// A name broke the wire protocol's rules.
    #[error(transparent)]
    Protocol(#[from] agent_sdk::schemas::Error),
    /// Redis refused a command or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Listening or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The process exit code (see `agent_sdk::exit`).
    pub fn exit(&self) -> agent_sdk::exit::Exit {
        use agent_sdk::exit::Exit;
        match self {
            Self::Config(_) | Self::Protocol(_) => Exit::Config,
            Self::Orchestrator(orchestrator::Error::Config(_)) => Exit::Config,
            Self::Orchestrator(orchestrator::Error::Definition(_)) => Exit::Config,
            Self::Sdk(e) => Exit::of(e),
            _ => Exit::Software,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
