//! How HTTP is served, with the bounds a client cannot stretch: how long a
//! request's head and body may take to arrive, how long a handler may take
//! to answer, how long a connection may sit with no byte moving, and how
//! many connections are served at once.
//!
//! `axum::serve` has none of these knobs, so connections are served here
//! with hyper-util's builder (HTTP/1.1 only: hyper times the head of an
//! HTTP/1 request, but the sniffing of HTTP/2's preface waits unbounded),
//! drained on shutdown by `hyper_util::server::graceful`, and the request
//! bounds are one middleware ([`bounds::bounded`]).

mod bounds;
mod idle;

use axum::Router;
use axum::serve::Listener;
pub use bounds::RequestBounds;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use idle::IdleIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The connection bounds.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionBounds {
    /// Longest wait for a request's head, from when the server starts
    /// waiting for it (right after the previous answer on a kept-alive
    /// connection, so this also closes idle kept-alive connections).
    pub header_timeout: Duration,
    /// A connection on which no byte moves either way for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections served at once; the next ones wait, unaccepted, in
    /// the listen backlog until one closes.
    pub max_connections: usize,
    /// How long open connections may take to finish after the stop.
    pub shutdown_grace: Duration,
}

/// Wraps `router` in the request bounds.
pub fn bound_requests(router: Router, bounds: RequestBounds) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        bounds,
        bounds::bounded,
    ))
}

/// Serves `app` on `listener` until `stop` fires, then stops accepting,
/// lets open requests finish (up to the grace period) and returns.
pub async fn serve(
    mut listener: TcpListener,
    app: Router,
    bounds: ConnectionBounds,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(bounds.max_connections));
    let graceful = GracefulShutdown::new();
    // Connections still open when the grace period ends are dropped.
    let cut = CancellationToken::new();
    loop {
        // A slot before accepting: past the cap, new connections are not
        // accepted at all (the kernel queues them in the backlog), rather
        // than accepted and left unanswered.
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
        };
        if slots.available_permits() == 0 {
            tracing::debug!(
                max = bounds.max_connections,
                "connection cap reached; new connections wait in the backlog"
            );
        }
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            // axum's `Listener` retries (with a pause) on accept errors such as
            // too many open files, as `axum::serve` did.
            c = Listener::accept(&mut listener) => c,
        };
        let (io, activity) = IdleIo::new(tcp);
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let cut = cut.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.header_timeout)
                .keep_alive(true);
            let conn = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
            tokio::select! {
                served = conn => {
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                () = activity.idle(bounds.idle_timeout) => {
                    tracing::debug!(%peer, idle = ?bounds.idle_timeout, "closing a connection nothing moved on");
                }
                () = cut.cancelled() => {}
            }
        });
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        tracing::debug!(open, "draining open connections");
    }
    if tokio::time::timeout(bounds.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?bounds.shutdown_grace, "connections still open after the grace period; closing them");
        cut.cancel();
    }
}
