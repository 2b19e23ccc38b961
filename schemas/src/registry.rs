//! The registry record of an agent instance, kept (as JSON, inside a
//! [`FleetRecord`]) in its type's fleet hash `N:agent:{T}:fleet`; and the
//! progress a running task reports. [`AgentRecord::to_fields`] /
//! [`AgentRecord::from_fields`] are the plain-field form of the legacy
//! per-instance hash.

use crate::{Error, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Whether an instance takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Reading and running tasks.
    Ready,
    /// Shutting down: finishing in-flight tasks, reading no more.
    Draining,
}

impl AgentStatus {
    /// The value of the `status` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Draining => "draining",
        }
    }
}

/// One live agent instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[schemars(title = "AgentRecord")]
pub struct AgentRecord {
    /// Instance id, also its consumer name in the group.
    pub instance_id: String,
    /// Agent type it serves.
    pub agent_type: String,
    /// Version of the agent binary.
    pub version: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Start time (ms since the Unix epoch, its own clock).
    pub started_at_ms: u64,
    /// Last heartbeat (ms since the Unix epoch, its own clock).
    pub last_seen_ms: u64,
    /// Ready or draining.
    pub status: AgentStatus,
    /// Most tasks it runs at once.
    pub concurrency: u32,
    /// Tasks running now.
    pub in_flight: u32,
    /// Tasks finished (any outcome) since start.
    pub processed: u64,
    /// Tasks that failed (retried or dead-lettered) since start.
    pub failed: u64,
}

impl AgentRecord {
    /// The hash fields, in a fixed order.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("instance_id", self.instance_id.clone()),
            ("agent_type", self.agent_type.clone()),
            ("version", self.version.clone()),
            ("host", self.host.clone()),
            ("pid", self.pid.to_string()),
            ("started_at_ms", self.started_at_ms.to_string()),
            ("last_seen_ms", self.last_seen_ms.to_string()),
            ("status", self.status.as_str().to_owned()),
            ("concurrency", self.concurrency.to_string()),
            ("in_flight", self.in_flight.to_string()),
            ("processed", self.processed.to_string()),
            ("failed", self.failed.to_string()),
        ]
    }

    /// Reads a record back from `HGETALL` output.
    pub fn from_fields(map: &std::collections::HashMap<String, String>) -> Result<Self> {
        fn get<'a>(
            map: &'a std::collections::HashMap<String, String>,
            f: &'static str,
        ) -> Result<&'a str> {
            map.get(f).map(String::as_str).ok_or(Error::Field {
                field: f,
                why: "missing".into(),
            })
        }
        fn num<T: std::str::FromStr>(
            map: &std::collections::HashMap<String, String>,
            f: &'static str,
        ) -> Result<T> {
            get(map, f)?.parse().map_err(|_| Error::Field {
                field: f,
                why: "not a number".into(),
            })
        }
        Ok(Self {
            instance_id: get(map, "instance_id")?.to_owned(),
            agent_type: get(map, "agent_type")?.to_owned(),
            version: get(map, "version")?.to_owned(),
            host: get(map, "host")?.to_owned(),
            pid: num(map, "pid")?,
            started_at_ms: num(map, "started_at_ms")?,
            last_seen_ms: num(map, "last_seen_ms")?,
            status: match get(map, "status")? {
                "ready" => AgentStatus::Ready,
                "draining" => AgentStatus::Draining,
                other => {
                    return Err(Error::Field {
                        field: "status",
                        why: format!("unknown status {other:?}"),
                    });
                }
            },
            concurrency: num(map, "concurrency")?,
            in_flight: num(map, "in_flight")?,
            processed: num(map, "processed")?,
            failed: num(map, "failed")?,
        })
    }
}

/// An instance's record in its type's fleet hash `N:agent:{T}:fleet`: the
/// registry record plus what it last did, every time by the Redis server's
/// clock (the heartbeat script turns the worker's "how long ago" into Redis
/// times, so no two hosts' clocks are compared).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct FleetRecord {
    /// The registry record (`last_seen_ms` by the Redis clock here).
    #[serde(flatten)]
    pub record: AgentRecord,
    /// Last return of its XREADGROUP, empty or not (ms, Redis clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_read_ms: Option<u64>,
    /// Last commit of a finished task (ms, Redis clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_commit_ms: Option<u64>,
    /// Last progress report of a handler (ms, Redis clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_ms: Option<u64>,
    /// When it counts as gone without another heartbeat (ms, Redis clock).
    pub expires_at_ms: u64,
}

/// Longest progress message kept, in bytes (longer ones are cut at a
/// character boundary): handler-chosen text shown in browsers and terminals.
pub const MAX_PROGRESS_MESSAGE: usize = 200;

/// A running task's latest progress report, in `N:agent:{T}:progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct TaskProgress {
    /// Done so far, 0.0 ..= 1.0.
    pub fraction: f32,
    /// What the handler says it is doing (at most [`MAX_PROGRESS_MESSAGE`]
    /// bytes, control characters removed; untrusted text: escape it).
    pub message: String,
    /// When it was reported (ms, Redis clock).
    pub at_ms: u64,
    /// The instance running the task.
    pub instance: String,
}

impl TaskProgress {
    /// `message` made safe to store: control characters dropped, cut to
    /// [`MAX_PROGRESS_MESSAGE`] bytes at a character boundary.
    pub fn clean_message(message: &str) -> String {
        let mut out = String::with_capacity(message.len().min(MAX_PROGRESS_MESSAGE));
        for c in message.chars().filter(|c| !c.is_control()) {
            if out.len() + c.len_utf8() > MAX_PROGRESS_MESSAGE {
                break;
            }
            out.push(c);
        }
        out
    }

    /// `fraction` clamped into 0.0 ..= 1.0 (NaN is 0).
    pub fn clamp_fraction(fraction: f32) -> f32 {
        if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let r = AgentRecord {
            instance_id: "h-1-ab".into(),
            agent_type: "echo".into(),
            version: "0.1.0".into(),
            host: "h".into(),
            pid: 1,
            started_at_ms: 2,
            last_seen_ms: 3,
            status: AgentStatus::Draining,
            concurrency: 4,
            in_flight: 5,
            processed: 6,
            failed: 7,
        };
        let map = r
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(AgentRecord::from_fields(&map).unwrap(), r);
    }

    #[test]
    fn progress_message_is_bounded_and_clean() {
        let long = "é".repeat(300);
        let m = TaskProgress::clean_message(&long);
        assert!(m.len() <= MAX_PROGRESS_MESSAGE && m.len() >= MAX_PROGRESS_MESSAGE - 1);
        assert_eq!(TaskProgress::clean_message("a\u{1b}[31mb\nc"), "a[31mbc");
        assert_eq!(TaskProgress::clamp_fraction(f32::NAN), 0.0);
        assert_eq!(TaskProgress::clamp_fraction(7.0), 1.0);
        assert_eq!(TaskProgress::clamp_fraction(-1.0), 0.0);
    }
}
