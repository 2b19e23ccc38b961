use thiserror::Error;

/// Errors of the wire protocol: invalid names and undecodable bytes.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A name (namespace, agent type, consumer, task id, …) breaks the rules
    /// in [`crate::names`].
    #[error("invalid {what} {value:?}: {why}")]
    InvalidName {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    /// The body is larger than the configured limit; it was not decoded.
    #[error("body of {size} bytes is over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// The body is neither valid MessagePack nor valid JSON for the type.
    #[error("undecodable {encoding} body: {message}")]
    Decode {
        encoding: crate::Encoding,
        message: String,
    },
    /// The envelope decoded but names a protocol version this build does not speak.
    #[error("unsupported protocol version {found} (this build speaks {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    /// Encoding failed (a type whose `Serialize` impl errors).
    #[error("cannot encode {encoding}: {message}")]
    Encode {
        encoding: crate::Encoding,
        message: String,
    },
    /// A registry hash or stream entry is missing a required field or has a bad one.
    #[error("field {field:?}: {why}")]
    Field { field: &'static str, why: String },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
