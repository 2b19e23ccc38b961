//! Logs and metrics set-up for agent binaries.

use crate::config::{LogFormat, RuntimeConfig};
use crate::{Error, Result};
use tracing_subscriber::EnvFilter;

/// Installs the `tracing` subscriber: `RUST_LOG` filter (default `info`),
/// text or JSON lines on stderr. Call once, first thing in `main`.
pub fn init_logging(format: LogFormat) {
    init_logging_at(format, "info");
}

/// [`init_logging`] with `default` as the filter when `RUST_LOG` is unset
/// (a CLI wants `warn`: its output is its answer, not a log).
pub fn init_logging_at(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// Installs the Prometheus recorder and its HTTP listener when
/// `--metrics-listen` is set. Must run inside a tokio runtime.
pub fn init_metrics(config: &RuntimeConfig) -> Result<()> {
    let Some(addr) = config.metrics_listen else {
        return Ok(());
    };
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| Error::Config(format!("--metrics-listen {addr}: {e}")))?;
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
}

/// Both of the above, from the runtime configuration.
pub fn init(config: &RuntimeConfig) -> Result<()> {
    init_logging(config.log_format);
    init_metrics(config)
}
