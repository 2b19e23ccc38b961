//! Validation of every name that ends up in a key or a command argument.
//!
//! Names are checked once, where they enter the system, and then carried in
//! newtypes so the key builders in [`crate::keys`] cannot be handed an
//! unchecked string. The rules keep keys readable in `redis-cli`, keep the
//! hash tag `{T}` intact (no braces), keep the `:` separator unambiguous, and
//! refuse words that a careless command builder could mistake for syntax
//! (`XREADGROUP GROUP g c COUNT 1 STREAMS …` with a consumer named `STREAMS`).

use crate::{Error, Result};
use std::fmt;

/// Longest namespace, agent type or group name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest consumer (instance) name: host + pid + random suffix must fit.
pub const MAX_CONSUMER_LEN: usize = 128;
/// Longest task id or idempotency key.
pub const MAX_ID_LEN: usize = 128;

/// Words of the stream commands' syntax. Compared case-insensitively.
/// Public so the HTTP API's document can state the same exclusion.
pub const RESERVED: &[&str] = &[
    "STREAMS",
    "GROUP",
    "COUNT",
    "BLOCK",
    "NOACK",
    "ID",
    "MKSTREAM",
    "JUSTID",
    "FORCE",
    "IDLE",
    "TIME",
    "RETRYCOUNT",
    "LASTID",
    "MAXLEN",
    "MINID",
    "LIMIT",
    "ENTRIESREAD",
    "NOMKSTREAM",
    "CREATE",
    "DESTROY",
    "SETID",
    "DELCONSUMER",
    "CREATECONSUMER",
];

fn check(
    what: &'static str,
    value: &str,
    max: usize,
    allowed: impl Fn(u8) -> bool,
    charset: &'static str,
) -> Result<()> {
    let err = |why| {
        Err(Error::InvalidName {
            what,
            value: value.chars().take(80).collect(),
            why,
        })
    };
    if value.is_empty() {
        return err("must not be empty");
    }
    if value.len() > max {
        return err("is too long");
    }
    if !value.bytes().all(allowed) {
        return err(charset);
    }
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(value)) {
        return err("is a reserved word of the stream commands");
    }
    Ok(())
}

fn lower_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
}

fn id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@' | b'/' | b'+' | b'=')
}

/// A namespace: lets several deployments share one Redis (`agentic`, `staging`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

impl Namespace {
    /// Checks `value`: 1–64 of `a-z 0-9 - _`.
    pub fn new(value: impl Into<String>) -> Result<Self> {
        let value = value.into();
        check(
            "namespace",
            &value,
            MAX_NAME_LEN,
            lower_name_byte,
            "may hold only a-z, 0-9, '-' and '_'",
        )?;
        Ok(Self(value))
    }

    /// The namespace as written in keys.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self(crate::DEFAULT_NAMESPACE.to_owned())
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An agent type (`scaffold`, `validation`, …): names the streams its agents share.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentType(String);

impl AgentType {
    /// Checks `value`: 1–64 of `a-z 0-9 - _`, not a reserved word.
    pub fn new(value: impl Into<String>) -> Result<Self> {
        let value = value.into();
        check(
            "agent type",
            &value,
            MAX_NAME_LEN,
            lower_name_byte,
            "may hold only a-z, 0-9, '-' and '_'",
        )?;
        Ok(Self(value))
    }

    /// The agent type as written in keys and envelopes.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for AgentType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

/// Checks a consumer group name: 1–64 of `A-Z a-z 0-9 - _ .`, not reserved.
pub fn validate_group(value: &str) -> Result<()> {
    check(
        "group name",
        value,
        MAX_NAME_LEN,
        |b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'),
        "may hold only A-Z, a-z, 0-9, '-', '_' and '.'",
    )
}

/// Checks a consumer (worker instance) name: 1–128 of `A-Z a-z 0-9 - _ .`, not reserved.
pub fn validate_consumer(value: &str) -> Result<()> {
    check(
        "consumer name",
        value,
        MAX_CONSUMER_LEN,
        |b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'),
        "may hold only A-Z, a-z, 0-9, '-', '_' and '.'",
    )
}

/// Checks a SHA-256 digest as written in artifact references: 64 of `0-9 a-f`.
pub fn validate_sha256(value: &str) -> Result<()> {
    if value.len() != 64 {
        return Err(Error::InvalidName {
            what: "sha-256 digest",
            value: value.chars().take(80).collect(),
            why: "must be 64 hex digits",
        });
    }
    check(
        "sha-256 digest",
        value,
        64,
        |b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        "may hold only 0-9 and a-f",
    )
}

/// Checks a workflow definition name: 1–64 of `a-z 0-9 - _` (the same rule
/// as agent types).
pub fn validate_definition_name(value: &str) -> Result<()> {
    check(
        "definition name",
        value,
        MAX_NAME_LEN,
        lower_name_byte,
        "may hold only a-z, 0-9, '-' and '_'",
    )
}

/// Longest workflow id: a stage's task id `<workflow>:<stage>:<n>` must
/// stay within [`MAX_ID_LEN`].
pub const MAX_WORKFLOW_ID_LEN: usize = 48;

/// Checks a workflow id: 1–48 of `A-Z a-z 0-9 - _ .`. No `:` (task ids
/// `<workflow>:<stage>:<n>` are split at the first one) and no braces (the
/// id is the hash tag of the workflow's keys).
pub fn validate_workflow_id(value: &str) -> Result<()> {
    check(
        "workflow id",
        value,
        MAX_WORKFLOW_ID_LEN,
        |b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'),
        "may hold only A-Z, a-z, 0-9, '-', '_' and '.'",
    )
}

/// Checks a task id: 1–128 of `A-Z a-z 0-9 - _ . : @ / + =` (no spaces, no braces).
pub fn validate_task_id(value: &str) -> Result<()> {
    check(
        "task id",
        value,
        MAX_ID_LEN,
        id_byte,
        "may hold only A-Z, a-z, 0-9 and - _ . : @ / + =",
    )
}

/// Checks an idempotency key: same alphabet and length as a task id.
pub fn validate_idempotency_key(value: &str) -> Result<()> {
    check(
        "idempotency key",
        value,
        MAX_ID_LEN,
        id_byte,
        "may hold only A-Z, a-z, 0-9 and - _ . : @ / + =",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_types() {
        assert!(AgentType::new("scaffold").is_ok());
        assert!(AgentType::new("e2e_tests-2").is_ok());
        for bad in [
            "", "Scaffold", "a:b", "{x}", "a b", "streams", "STREAMS", "group",
        ] {
            assert!(AgentType::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(AgentType::new("a".repeat(64)).is_ok());
        assert!(AgentType::new("a".repeat(65)).is_err());
    }

    #[test]
    fn consumers_groups_ids() {
        assert!(validate_consumer("host-1.example-1234-ab12").is_ok());
        assert!(validate_consumer("STREAMS").is_err());
        assert!(validate_consumer(&"c".repeat(129)).is_err());
        assert!(validate_group("workers").is_ok());
        assert!(validate_group("Count").is_err());
        assert!(validate_task_id("wf-1:scaffold:1").is_ok());
        assert!(validate_task_id("a{b}").is_err());
        assert!(validate_task_id("a b").is_err());
        assert!(validate_idempotency_key("order/42+retry=1").is_ok());
        assert!(validate_idempotency_key("").is_err());
    }

    #[test]
    fn error_names_the_problem() {
        let e = Namespace::new("Bad:Ns").unwrap_err().to_string();
        assert!(e.contains("namespace") && e.contains("Bad:Ns"), "{e}");
    }
}
