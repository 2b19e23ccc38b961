//! `--health-listen`: the worker's own `/live` and `/ready`, for probes.
//!
//! They reflect the worker's loops, not just the process: `/live` is 200
//! while the reader and the commit loop run; `/ready` is 200 while they run
//! and the last heartbeat reached Redis, and 503 with the reason otherwise
//! (Redis unreachable, a loop down, no heartbeat for three beats). The
//! answers come from flags in memory ([`Activity`]): a probe costs Redis
//! nothing, and the listener never opens a Redis connection of its own.

use super::heartbeat::Activity;
use crate::{Error, Result};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A loop whose running state the health answers reflect.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Loop {
    Reader,
    Committer,
}

/// Marks a loop as running while its future runs.
pub(crate) trait InLoop: Future + Sized {
    fn in_loop(self, activity: Arc<Activity>, which: Loop) -> impl Future<Output = Self::Output> {
        async move {
            let flag = match which {
                Loop::Reader => &activity.reader_up,
                Loop::Committer => &activity.committer_up,
            };
            let _running = activity.running(flag);
            self.await
        }
    }
}

impl<F: Future> InLoop for F {}

fn answer(reason: Option<String>, ok: &'static str) -> (StatusCode, String) {
    match reason {
        None => (StatusCode::OK, format!("{ok}\n")),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn live(State(a): State<Arc<Activity>>) -> (StatusCode, String) {
    answer(a.not_live(), "live")
}

async fn ready(State(a): State<Arc<Activity>>) -> (StatusCode, String) {
    answer(a.not_ready(), "ready")
}

/// Binds `addr` and serves `/live` and `/ready` until `stop` fires.
pub(crate) async fn start(
    addr: SocketAddr,
    activity: Arc<Activity>,
    stop: CancellationToken,
) -> Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("--health-listen {addr}: {e}")))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "serving /live and /ready");
    let app = Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .with_state(activity);
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the health listener stopped");
        }
    }))
}
