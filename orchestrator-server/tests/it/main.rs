//! The server's behaviour tests: one test binary, a module per area, against
//! real `redis-server`s, the server in-process or as its real binary, and
//! stage agents on the SDK.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod cli;
mod clocks;
mod common;
mod crash;
mod creates;
mod dashboard;
mod hostile;
mod limits;
mod liveness;
mod openapi;
mod outbox;
mod retention;
mod stuck;
mod sweep;
mod timeouts;
mod workflows;
