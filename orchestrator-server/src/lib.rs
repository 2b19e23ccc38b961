//! The `orchestrator` binary's library: the engine's loops and the HTTP API
//! with its dashboard in one process, over the `orchestrator` library.
//!
//! - [`config`]: `orchestrator serve`'s flags.
//! - [`server`]: builds the loops and the router, runs them until shutdown
//!   ([`server::serve`] takes a bound listener, so tests run the real thing
//!   on port 0).
//! - [`api`]: the HTTP API (axum, utoipa), its view types, the dashboard.
//! - [`tokens`]: API tokens, their roles and the tokens file.
//! - [`transport`]: how HTTP is served: header, body, request and idle
//!   timeouts, the connection cap.

pub mod api;
pub mod check;
pub mod config;
mod error;
pub mod server;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod tokens;
pub mod transport;

pub use config::ServeConfig;
pub use error::{Error, Result};
