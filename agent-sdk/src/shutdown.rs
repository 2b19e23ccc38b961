//! Shutdown on SIGINT / SIGTERM.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT or SIGTERM. A second signal exits
/// the process at once (exit code 130), for an operator who means it.
///
/// Must be called inside a tokio runtime. The handlers are installed before
/// this returns, so a signal sent right after start is never missed.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown requested; draining (signal again to exit at once)");
        t.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal; exiting without draining");
        std::process::exit(130);
    });
    Ok(token)
}

/// Sleeps `d`; `true` if `stop` fired first (the caller should stop).
pub async fn pause(stop: &CancellationToken, d: std::time::Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
