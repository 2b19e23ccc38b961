use thiserror::Error;

/// Errors of the runtime and the producer client.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is inconsistent or incomplete; the message says which setting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A name or body broke the wire protocol's rules.
    #[error(transparent)]
    Protocol(#[from] schemas::Error),
    /// Redis refused a command or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A Redis reply had an unexpected shape.
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
    /// An artifact was refused: too large, unsafe to unpack, corrupt.
    #[error("artifact: {0}")]
    Artifact(String),
    /// An I/O error outside Redis (metrics listener, …).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
