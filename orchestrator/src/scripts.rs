//! The Lua scripts of the durable shell. Each file under `scripts/` documents
//! its keys, arguments and reply. A script touches one workflow's keys or one
//! agent type's keys (one hash tag each), never keys of two slots, so they run
//! unchanged on Redis Cluster. Each starts with `#!lua`: under `maxmemory`
//! Redis refuses it whole instead of stopping it half done.

use redis::Script;
use redis::aio::ConnectionLike;
use std::sync::LazyLock;

/// Store a transition: state + outbox + event log, with a version check.
pub(crate) static TRANSITION: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/transition.lua")));

/// Empty an outbox that has been carried out.
pub(crate) static CLEAR_OUTBOX: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/clear_outbox.lua")));

/// Take a workflow without an outbox out of the outbox index (and an
/// ended one out of the active index; an orphan out of every index).
pub(crate) static FORGET_OUTBOX: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/forget_outbox.lua")));

/// Delete the dead letter of a task its workflow no longer waits for.
pub(crate) static FORGET_DEAD_LETTER: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/forget_dead_letter.lua")));

/// Dispatch a task at most once and arm its deadline.
pub(crate) static DISPATCH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/dispatch.lua")));

/// Acknowledge applied results and clear their tasks' deadlines.
pub(crate) static ACK_RESULTS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/ack_results.lua")));

/// Arm and cancel durable timers by the server's clock.
pub(crate) static TIMERS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/timers.lua")));

/// Take due timers with a lease.
pub(crate) static CLAIM_TIMERS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/claim_timers.lua")));

/// Count every stored workflow by status into the counters, once.
pub(crate) static SEED_COUNTS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/seed_counts.lua")));

/// Register a definition as its next version.
pub(crate) static REGISTER_DEFINITION: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/register_definition.lua")));

/// Where one agent type's tasks are (read only): "why is this stuck?".
pub(crate) static LOCATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/locate.lua")));
/// Delete an ended workflow's state and log (retention, operators).
pub(crate) static DELETE_WORKFLOW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/delete_workflow.lua")));

/// Take a deleted workflow out of the ended index and its byte count.
pub(crate) static FORGET_ENDED: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/forget_ended.lua")));

/// Delete a consumer from a group if it holds nothing and is idle.
pub(crate) static PRUNE_CONSUMER: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/prune_consumer.lua")));

/// Take or renew a namespace-wide chore's lease.
pub(crate) static CHORE_LEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/chore_lease.lua")));

/// Runs `calls` of `script` in one round trip: a single call as `EVALSHA`
/// (which loads the script when Redis does not have it), several in one
/// pipeline that loads it first (a pipelined `EVALSHA` cannot). One reply
/// per call.
pub(crate) async fn invoke_all<C: ConnectionLike + Send, T: redis::FromRedisValue>(
    conn: &mut C,
    script: &redis::Script,
    calls: &[&redis::ScriptInvocation<'_>],
) -> redis::RedisResult<Vec<T>> {
    match calls {
        [] => Ok(Vec::new()),
        [one] => Ok(vec![one.invoke_async(conn).await?]),
        many => {
            let mut pipe = redis::pipe();
            pipe.load_script(script).ignore();
            for inv in many {
                pipe.invoke_script(inv);
            }
            pipe.query_async(conn).await
        }
    }
}
