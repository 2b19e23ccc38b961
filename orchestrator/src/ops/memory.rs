//! Redis memory at a glance (`agentctl memory`, `GET /memory`, the
//! dashboard): `used_memory` against `maxmemory`, and the namespace's keys
//! by family, from a bounded sample (`SCAN` + `MEMORY USAGE`) extrapolated
//! to the whole keyspace. A full scan would cost a walk of every key per
//! look; a sample of a few thousand keys costs milliseconds and, since
//! `SCAN` visits keys in hash order, is close to uniform.

use crate::Result;
use agent_sdk::schemas::Keys;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Keys looked at by default.
pub const DEFAULT_SAMPLE: usize = 2000;
/// Most keys a caller may ask to look at.
pub const MAX_SAMPLE: usize = 100_000;

/// One family of keys (`wf`, `wf:events`, `agent:tasks`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct KeyFamily {
    /// Family name: the key's shape with its namespace, agent type, ids
    /// and hashes left out.
    pub family: String,
    /// Keys of it in the sample.
    pub sampled_keys: u64,
    /// Their bytes (`MEMORY USAGE`).
    pub sampled_bytes: u64,
    /// Estimated keys of it in the whole keyspace.
    pub estimated_keys: u64,
    /// Estimated bytes of it in the whole keyspace.
    pub estimated_bytes: u64,
}

/// Redis memory, and the namespace's share of it by family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct MemoryReport {
    /// `used_memory` (bytes).
    pub used_memory: u64,
    /// `maxmemory` (bytes); `None`: no maxmemory set (Redis grows until
    /// the machine runs out).
    pub maxmemory: Option<u64>,
    /// `maxmemory-policy`.
    pub maxmemory_policy: String,
    /// `maxmemory - used_memory` when a maxmemory is set.
    pub headroom_bytes: Option<i64>,
    /// `used_memory / maxmemory` in percent, when set.
    pub used_percent: Option<f64>,
    /// Always true unless the scan covered every key: the families are
    /// estimates from a sample.
    pub sampled: bool,
    /// Keys of the whole database (`DBSIZE`).
    pub total_keys: u64,
    /// Keys the scan looked at (any namespace).
    pub scanned_keys: u64,
    /// Scanned keys of this namespace, measured.
    pub sampled_keys: u64,
    /// The namespace's keys by family, largest estimated bytes first.
    pub families: Vec<KeyFamily>,
}

/// The family of `key` in `keys`' namespace, or `None` for another
/// namespace's key.
pub fn family_of(keys: &Keys, key: &str) -> Option<String> {
    let rest = key
        .strip_prefix(keys.namespace().as_str())?
        .strip_prefix(':')?;
    // `agent:{T}:<kind>[:<id>]` → `agent:<kind>`
    if let Some(after) = rest.strip_prefix("agent:{") {
        let (_, tail) = after.split_once("}:")?;
        let kind = tail.split(':').next().unwrap_or(tail);
        return Some(format!("agent:{kind}"));
    }
    // `wf:{id}` → `wf`; `wf:{id}:events` → `wf:events`
    if let Some(after) = rest.strip_prefix("wf:{") {
        let (_, tail) = after.split_once('}')?;
        return Some(match tail.strip_prefix(':') {
            Some(t) => format!("wf:{t}"),
            None => "wf".to_owned(),
        });
    }
    let head = rest.split(':').next().unwrap_or(rest);
    Some(match head {
        "wfs" => format!("wfs:{}", rest.split(':').nth(1).unwrap_or("")),
        "registry" => match rest.split(':').nth(1) {
            Some("agent") => "registry:agent".to_owned(),
            _ => "registry".to_owned(),
        },
        "def" | "defs" | "artifact" | "lease" => head.to_owned(),
        _ => "other".to_owned(),
    })
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Memory figures, with the namespace's keys sampled over at most `sample`
/// scanned keys.
pub async fn memory_report<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    sample: usize,
) -> Result<MemoryReport> {
    let sample = sample.clamp(1, MAX_SAMPLE);
    let (info, total_keys): (String, u64) = redis::pipe()
        .cmd("INFO")
        .arg("memory")
        .cmd("DBSIZE")
        .query_async(conn)
        .await?;
    let used_memory = info_field(&info, "used_memory")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let maxmemory = info_field(&info, "maxmemory")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|m| *m > 0);
    let maxmemory_policy = info_field(&info, "maxmemory_policy")
        .unwrap_or("")
        .to_owned();

    let mut scanned = 0u64;
    let mut mine: Vec<(String, String)> = Vec::new();
    let mut cursor: u64 = 0;
    let mut complete = false;
    while (scanned as usize) < sample {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await?;
        for k in batch {
            scanned += 1;
            if let Some(f) = family_of(keys, &k) {
                mine.push((k, f));
            }
        }
        if next == 0 {
            complete = true;
            break;
        }
        cursor = next;
    }
    let mut by_family: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for chunk in mine.chunks(500) {
        let mut pipe = redis::pipe();
        for (k, _) in chunk {
            pipe.cmd("MEMORY").arg("USAGE").arg(k);
        }
        let sizes: Vec<Option<u64>> = pipe.query_async(conn).await?;
        for ((_, f), size) in chunk.iter().zip(sizes) {
            // A key that expired between the scan and now counts nothing.
            if let Some(b) = size {
                let e = by_family.entry(f.clone()).or_default();
                e.0 += 1;
                e.1 += b;
            }
        }
    }
    let factor = if complete || scanned == 0 {
        1.0
    } else {
        (total_keys as f64 / scanned as f64).max(1.0)
    };
    let mut families: Vec<KeyFamily> = by_family
        .into_iter()
        .map(|(family, (k, b))| KeyFamily {
            family,
            sampled_keys: k,
            sampled_bytes: b,
            estimated_keys: (k as f64 * factor).round() as u64,
            estimated_bytes: (b as f64 * factor).round() as u64,
        })
        .collect();
    families.sort_by_key(|f| std::cmp::Reverse(f.estimated_bytes));
    Ok(MemoryReport {
        used_memory,
        maxmemory,
        maxmemory_policy,
        headroom_bytes: maxmemory.map(|m| m as i64 - used_memory as i64),
        used_percent: maxmemory.map(|m| used_memory as f64 * 100.0 / m as f64),
        sampled: !complete,
        total_keys,
        scanned_keys: scanned,
        sampled_keys: families.iter().map(|f| f.sampled_keys).sum(),
        families,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_sdk::schemas::Namespace;

    #[test]
    fn families_leave_ids_out() {
        let k = Keys::new(Namespace::new("n1").unwrap());
        let f = |key: &str| family_of(&k, key);
        assert_eq!(f("n1:agent:{e2e}:tasks").as_deref(), Some("agent:tasks"));
        assert_eq!(f("n1:agent:{e2e}:idem:k1").as_deref(), Some("agent:idem"));
        assert_eq!(
            f("n1:agent:{e2e}:result:t:1").as_deref(),
            Some("agent:result")
        );
        assert_eq!(f("n1:wf:{w-1}").as_deref(), Some("wf"));
        assert_eq!(f("n1:wf:{w-1}:events").as_deref(), Some("wf:events"));
        assert_eq!(f("n1:wfs:all").as_deref(), Some("wfs:all"));
        assert_eq!(f("n1:wfs:{ended}:bytes").as_deref(), Some("wfs:{ended}"));
        assert_eq!(f("n1:registry:agent:x").as_deref(), Some("registry:agent"));
        assert_eq!(f("n1:artifact:abc").as_deref(), Some("artifact"));
        assert_eq!(f("n1:zzz").as_deref(), Some("other"));
        assert_eq!(f("n2:wf:{w-1}"), None);
        assert_eq!(f("n10:wf:{w-1}"), None);
    }
}
