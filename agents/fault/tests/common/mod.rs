//! The fault agent's test kit, plus its daemon as a real process.
#![allow(dead_code)]

use agent_sdk::RuntimeConfig;
pub use agent_sdk::testing::*;
pub use fault_agent::testing::*;
use std::path::Path;

static LOG_DIR: std::sync::LazyLock<tempfile::TempDir> =
    std::sync::LazyLock::new(|| tempfile::tempdir().expect("log dir"));

/// The `fault-agent` daemon of this crate as instance `instance_id`.
pub fn daemon(cfg: &RuntimeConfig, instance_id: &str) -> Proc {
    spawn_daemon(
        Path::new(env!("CARGO_BIN_EXE_fault-agent")),
        cfg,
        instance_id,
        LOG_DIR.path(),
    )
}
