//! The Lua scripts of the runtime. Each file under `scripts/` documents its
//! keys, arguments and reply; every key it touches is passed in `KEYS` and
//! shares one hash tag, so they run unchanged on Redis Cluster.
//!
//! Scripts run once per batch (commit, renew, claim, reclaim, promote), never once per task.
//!
//! Each starts with a `#!lua` shebang (Redis 7+): a script so marked is
//! refused whole with `OOM` when Redis is over `maxmemory`, instead of being
//! stopped by `OOM` at its first write after having done part of its work.
//! A commit is therefore all or nothing, and its retry publishes nothing twice.

use redis::Script;
use std::sync::LazyLock;

/// Commit a batch: fenced publish + ack + delete, retry scheduling, dead letters.
pub(crate) static COMMIT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/commit.lua")));

/// Renew the claim on running tasks without stealing reclaimed ones.
pub(crate) static RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/renew.lua")));

/// Claim abandoned entries by id, reporting those whose body is gone.
pub(crate) static CLAIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/claim.lua")));

/// One bounded reclaim pass with poison triage, fenced by the janitor lease.
pub(crate) static RECLAIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/reclaim.lua")));

/// Acquire, renew or take over the janitor lease of an agent type.
pub(crate) static JANITOR: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/janitor.lua")));

/// Move due delayed entries into the task stream.
pub(crate) static PROMOTE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/promote.lua")));

/// Enqueue now or later, at most once per idempotency key.
pub(crate) static SCHEDULE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/schedule.lua")));

/// Replay one dead letter.
pub(crate) static REPLAY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/replay.lua")));

/// Add one dead letter and index it by task id.
pub(crate) static DLQ_ADD: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/dlq_add.lua")));

/// Delete dead letters (by id, or older than an id) and their index entries.
pub(crate) static DLQ_DELETE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/dlq_delete.lua")));

/// Encodes stream fields as a delayed-set member: `len:bytes` per name and
/// per value, back to back (parsed by `promote.lua`).
pub(crate) fn delayed_member<'a>(fields: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        for part in [k.as_bytes(), v] {
            out.extend_from_slice(part.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn member_format() {
        let m = super::delayed_member([("id", &b"t1"[..]), ("body", &b"a:b"[..])]);
        assert_eq!(m, b"2:id2:t14:body3:a:b");
    }
}
