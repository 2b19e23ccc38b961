//! The Lua scripts of the durable shell. Each file under `scripts/` documents
//! its keys, arguments and reply. A script touches one workflow's keys (one
//! hash tag) or one global key, never keys of two slots, so they run
//! unchanged on Redis Cluster. Each starts with `#!lua`: under `maxmemory`
//! Redis refuses it whole instead of stopping it half done.

use redis::Script;
use std::sync::LazyLock;

/// Store a transition: state + outbox + event log, with a version check.
pub(crate) static TRANSITION: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/transition.lua")));

/// Empty an outbox that has been carried out.
pub(crate) static CLEAR_OUTBOX: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/clear_outbox.lua")));

/// Arm and cancel durable timers by the server's clock.
pub(crate) static TIMERS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/timers.lua")));

/// Take due timers with a lease.
pub(crate) static CLAIM_TIMERS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/claim_timers.lua")));

/// Register a definition as its next version.
pub(crate) static REGISTER_DEFINITION: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/register_definition.lua")));
