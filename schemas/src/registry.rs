//! The registry record of a live agent instance: hash `N:registry:agent:<id>`.
//!
//! Plain fields only, so `redis-cli HGETALL` reads it. The hash has a TTL a few
//! heartbeats long: when the process dies the record expires by itself.

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
}
