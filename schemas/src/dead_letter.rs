//! Dead letters: entries of `N:agent:{T}:dlq`.
//!
//! A dead letter is made of plain fields only (see [`crate::fields`]), so an
//! operator can read it with `XRANGE` and a replay can rebuild the original
//! entry byte for byte from the `raw.*` fields.

use crate::fields;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a task was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// The handler failed permanently (or rejected its input).
    Permanent,
    /// Retryable failures used up every attempt.
    AttemptsExhausted,
    /// The entry could not be decoded: garbage, unknown version, over the size limit.
    Malformed,
    /// Delivered more than `max_deliveries` times: a poison message.
    MaxDeliveries,
}

impl DeadLetterReason {
    /// The value of the plain `reason` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::Malformed => "malformed",
            Self::MaxDeliveries => "max_deliveries",
        }
    }

    /// Parses the plain `reason` field.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Permanent,
            Self::AttemptsExhausted,
            Self::Malformed,
            Self::MaxDeliveries,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A dead letter as read back from the DLQ stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "DeadLetter")]
pub struct DeadLetter {
    /// Entry id in the DLQ stream (the handle for get, replay, purge).
    pub id: String,
    /// Agent type whose task this was.
    pub agent_type: String,
    /// Task id, when the entry could be decoded far enough to know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Workflow id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// Stage, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Why it was dead-lettered.
    pub reason: DeadLetterReason,
    /// The last error message.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// Worker instance that dead-lettered it.
    pub worker: String,
    /// When (ms since the Unix epoch, that worker's clock).
    pub failed_at_ms: u64,
    /// Entry id the task had in its task stream.
    pub source_id: String,
    /// The original entry's fields, byte for byte (values that are not UTF-8 are
    /// kept as bytes; JSON shows them as arrays of numbers).
    pub raw: Vec<(String, Vec<u8>)>,
}

impl DeadLetter {
    /// Builds a dead letter from a DLQ entry's id and fields.
    pub fn from_entry(id: &str, entry: &[(String, Vec<u8>)]) -> crate::Result<Self> {
        let get = |name: &'static str| {
            entry
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let need = |name: &'static str| {
            get(name).ok_or(crate::Error::Field {
                field: name,
                why: "missing".into(),
            })
        };
        let num = |name: &'static str| -> crate::Result<u64> {
            need(name)?.parse().map_err(|_| crate::Error::Field {
                field: name,
                why: "not a number".into(),
            })
        };
        let reason = need(fields::REASON)?;
        Ok(Self {
            id: id.to_owned(),
            agent_type: need(fields::AGENT_TYPE)?,
            task_id: get(fields::TASK_ID),
            workflow_id: get(fields::WORKFLOW),
            stage: get(fields::STAGE),
            reason: DeadLetterReason::parse(&reason).ok_or(crate::Error::Field {
                field: fields::REASON,
                why: format!("unknown reason {reason:?}"),
            })?,
            error: get(fields::ERROR).unwrap_or_default(),
            attempts: u32::try_from(num(fields::ATTEMPTS)?).unwrap_or(u32::MAX),
            worker: get(fields::WORKER).unwrap_or_default(),
            failed_at_ms: num(fields::FAILED_AT_MS)?,
            source_id: get(fields::SOURCE_ID).unwrap_or_default(),
            raw: entry
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix(fields::RAW_PREFIX)
                        .map(|k| (k.to_owned(), v.clone()))
                })
                .collect(),
        })
    }

    /// The DLQ entry's fields, as [`DeadLetter::from_entry`] reads them (so
    /// an exported dead letter can be imported elsewhere unchanged).
    pub fn to_fields(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = Vec::with_capacity(10 + self.raw.len());
        let mut put = |k: &str, v: &str| out.push((k.to_owned(), v.as_bytes().to_vec()));
        put(fields::AGENT_TYPE, &self.agent_type);
        if let Some(t) = &self.task_id {
            put(fields::TASK_ID, t);
        }
        if let Some(w) = &self.workflow_id {
            put(fields::WORKFLOW, w);
        }
        if let Some(s) = &self.stage {
            put(fields::STAGE, s);
        }
        put(fields::REASON, self.reason.as_str());
        put(fields::ERROR, &self.error);
        put(fields::ATTEMPTS, &self.attempts.to_string());
        put(fields::WORKER, &self.worker);
        put(fields::FAILED_AT_MS, &self.failed_at_ms.to_string());
        put(fields::SOURCE_ID, &self.source_id);
        for (k, v) in &self.raw {
            out.push((format!("{}{k}", fields::RAW_PREFIX), v.clone()));
        }
        out
    }

    /// The raw field `name` of the original entry.
    pub fn raw_field(&self, name: &str) -> Option<&[u8]> {
        self.raw
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Largest body [`DeadLetter::envelope`] decodes: bodies over a task's
    /// limit were dead-lettered as malformed and stay readable raw.
    pub const SHOW_MAX_BODY: usize = 16 * 1024 * 1024;

    /// The task envelope decoded from the raw `body`, or why it cannot be.
    pub fn envelope(&self) -> std::result::Result<crate::TaskEnvelope, String> {
        let body = self
            .raw_field(fields::BODY)
            .ok_or_else(|| "the entry has no body field".to_owned())?;
        let limits = crate::DecodeLimits {
            max_bytes: Self::SHOW_MAX_BODY,
            ..crate::DecodeLimits::default()
        };
        crate::codec::decode_any::<crate::TaskEnvelope>(body, limits)
            .map(|(env, _)| env)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(k: &str, v: &str) -> (String, Vec<u8>) {
        (k.to_owned(), v.as_bytes().to_vec())
    }

    #[test]
    fn parses_an_entry_and_keeps_raw_bytes() {
        let entry = vec![
            s("agent_type", "echo"),
            s("task_id", "t1"),
            s("reason", "attempts_exhausted"),
            s("error", "boom"),
            s("attempts", "3"),
            s("worker", "w1"),
            s("failed_at_ms", "17"),
            s("source_id", "1-0"),
            ("raw.body".to_owned(), vec![0x81, 0xff, 0x00]),
            s("raw.attempt", "3"),
        ];
        let d = DeadLetter::from_entry("5-0", &entry).unwrap();
        assert_eq!(d.reason, DeadLetterReason::AttemptsExhausted);
        assert_eq!(d.attempts, 3);
        assert_eq!(d.task_id.as_deref(), Some("t1"));
        assert_eq!(d.raw_field("body"), Some(&[0x81, 0xff, 0x00][..]));
        assert_eq!(d.raw.len(), 2);
        let again = DeadLetter::from_entry("5-0", &d.to_fields()).unwrap();
        assert_eq!(again, d, "to_fields is the inverse of from_entry");
    }

    #[test]
    fn rejects_unknown_reason() {
        let entry = vec![
            s("agent_type", "echo"),
            s("reason", "bored"),
            s("attempts", "1"),
            s("failed_at_ms", "1"),
        ];
        assert!(DeadLetter::from_entry("1-0", &entry).is_err());
    }
}
