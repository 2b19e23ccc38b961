//! Exit codes, the same for every binary of the project (`sysexits.h`
//! where one fits), and the mapping of the SDK's errors to them.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the command ran and its outcome is a failure |
//! | 2 | bad command-line arguments (clap's usage errors) |
//! | 64 | bad configuration: settings that parse but do not make sense (`EX_USAGE`) |
//! | 65 | malformed input data (`EX_DATAERR`) |
//! | 66 | an input file cannot be read (`EX_NOINPUT`) |
//! | 69 | a service (Redis, a port to listen on) is unavailable (`EX_UNAVAILABLE`) |
//! | 70 | an internal error (`EX_SOFTWARE`) |
//!
//! `agentctl` adds outcome codes of its own below 64 (not found, conflict,
//! timed out).

use crate::Error;
use crate::connection::is_connection_error;
use std::process::ExitCode;

/// One of the exit codes of the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// 0.
    Success,
    /// 1: the outcome is a failure.
    Failure,
    /// 2: bad command-line arguments.
    Usage,
    /// 64: bad configuration.
    Config,
    /// 65: malformed input data.
    Data,
    /// 66: an input file cannot be read.
    NoInput,
    /// 69: a service is unavailable.
    Unavailable,
    /// 70: an internal error.
    Software,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Failure => 1,
            Self::Usage => 2,
            Self::Config => 64,
            Self::Data => 65,
            Self::NoInput => 66,
            Self::Unavailable => 69,
            Self::Software => 70,
        }
    }

    /// The exit code of an SDK error: bad settings and names are
    /// configuration, an unreachable Redis is unavailable, the rest internal.
    pub fn of(e: &Error) -> Self {
        match e {
            Error::Config(_) | Error::Protocol(_) => Self::Config,
            Error::Redis(r) if is_connection_error(r) => Self::Unavailable,
            _ => Self::Software,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_errors_are_64() {
        assert_eq!(Exit::of(&Error::Config("x".into())), Exit::Config);
        assert_eq!(Exit::Config.code(), 64);
        let refused =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(Exit::of(&Error::Redis(refused)), Exit::Unavailable);
    }
}
