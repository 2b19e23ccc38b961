//! Runtime configuration: one `clap` struct every agent binary flattens in
//! (with [`RedisArgs`], the Redis flags every binary of the project shares).
//!
//! Every field has a flag, an `AGENTIC_*` environment fallback and a default;
//! durations are written the human way (`30s`, `2m`, `500ms`).

use crate::retry::RetryPolicy;
use crate::{Error, RedisArgs, Result};
use clap::{Args, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings of a worker (and of the telemetry of the process that runs it).
#[derive(Debug, Clone, PartialEq, Args)]
pub struct RuntimeConfig {
    /// Redis and namespace.
    #[command(flatten)]
    pub redis: RedisArgs,

    /// Agent type to serve; the binary's own type when not given.
    #[arg(long, env = "AGENTIC_AGENT_TYPE")]
    pub agent_type: Option<String>,

    /// Instance id (consumer name); host-pid-random when not given. Must be
    /// unique among live workers.
    #[arg(long, env = "AGENTIC_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Most tasks run at once by this process.
    #[arg(long, env = "AGENTIC_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,

    /// Most entries read per XREADGROUP (never more than the free slots).
    #[arg(long, env = "AGENTIC_BATCH_SIZE", default_value_t = 64)]
    pub batch_size: usize,

    /// How long an idle reader waits for work before it reads again anyway.
    /// New work ends the wait at once (the process's doorbell), and so do
    /// shutdown and a reclaim pass that is due, so a long wait only saves
    /// an idle worker's round trips.
    #[arg(long, env = "AGENTIC_READ_BLOCK", default_value = "30s", value_parser = humantime::parse_duration)]
    pub read_block: Duration,

    /// Attempts and backoff.
    #[command(flatten)]
    pub retry: RetryPolicy,

    /// Handler timeout when the task does not set one; a timeout is a retryable failure.
    #[arg(long, env = "AGENTIC_TASK_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub task_timeout: Duration,

    /// Idle time after which a pending task counts as abandoned by a dead
    /// worker and is reclaimed. Live workers renew their tasks well before.
    #[arg(long, env = "AGENTIC_CLAIM_IDLE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub claim_idle: Duration,

    /// How often a worker renews the claim on the tasks it is running.
    /// Must be at most a third of --claim-idle.
    #[arg(long, env = "AGENTIC_LEASE_RENEW", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_renew: Duration,

    /// Deliveries of one entry after which it is dead-lettered instead of run
    /// again (a poison message that keeps killing its worker).
    #[arg(long, env = "AGENTIC_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u32,

    /// How often the worker writes its registry record; the record expires
    /// after three missed beats.
    #[arg(long, env = "AGENTIC_HEARTBEAT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// How long shutdown waits for running tasks before leaving them pending
    /// for another worker.
    #[arg(long, env = "AGENTIC_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Largest task body accepted, in bytes; larger ones are dead-lettered
    /// unread. The default is the API's (`schemas::limits::MAX_BODY_BYTES`).
    #[arg(long, env = "AGENTIC_MAX_PAYLOAD", default_value_t = schemas::limits::MAX_BODY_BYTES)]
    pub max_payload: usize,

    /// How often due retries and delayed tasks are moved into the task stream.
    #[arg(long, env = "AGENTIC_PROMOTE_INTERVAL", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub promote_interval: Duration,

    /// How long a task's result stays readable by task id (0 = not stored).
    #[arg(long, env = "AGENTIC_RESULT_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub result_ttl: Duration,

    /// Approximate cap on the results stream (0 = no cap). Leave it at 0 when
    /// an orchestrator consumes the stream: a cap can drop unread results.
    #[arg(long, env = "AGENTIC_RESULTS_MAX_LEN", default_value_t = 0)]
    pub results_max_len: u64,

    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9100).
    #[arg(long, env = "AGENTIC_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Serve `/live` and `/ready` on this address (e.g. 0.0.0.0:8081) for
    /// probes: `/live` is 200 while the reader and commit loops run, `/ready`
    /// 503 with the reason while Redis is unreachable or a loop is down.
    /// Off when not given.
    #[arg(long, env = "AGENTIC_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    /// Log format.
    #[arg(long, env = "AGENTIC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            redis: RedisArgs::default(),
            agent_type: None,
            instance_id: None,
            concurrency: 16,
            batch_size: 64,
            read_block: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            task_timeout: Duration::from_secs(300),
            claim_idle: Duration::from_secs(60),
            lease_renew: Duration::from_secs(10),
            max_deliveries: 5,
            heartbeat: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            max_payload: schemas::limits::MAX_BODY_BYTES,
            promote_interval: Duration::from_millis(200),
            result_ttl: Duration::from_secs(24 * 3600),
            results_max_len: 0,
            metrics_listen: None,
            health_listen: None,
            log_format: LogFormat::Text,
        }
    }
}

impl RuntimeConfig {
    /// Rejects inconsistent settings with a message naming the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        self.redis.validate()?;
        self.retry.validate()?;
        if let Some(t) = &self.agent_type {
            schemas::AgentType::new(t.clone())?;
        }
        if let Some(id) = &self.instance_id {
            schemas::names::validate_consumer(id)?;
        }
        if self.concurrency == 0 || self.concurrency > 10_000 {
            return bad(format!(
                "--concurrency must be 1..=10000, got {}",
                self.concurrency
            ));
        }
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return bad(format!(
                "--batch-size must be 1..=10000, got {}",
                self.batch_size
            ));
        }
        if self.read_block < Duration::from_millis(10) || self.read_block > Duration::from_secs(60)
        {
            return bad("--read-block must be between 10ms and 60s".into());
        }
        if self.max_deliveries == 0 {
            return bad("--max-deliveries must be at least 1".into());
        }
        if self.task_timeout.is_zero() {
            return bad("--task-timeout must be above 0".into());
        }
        if self.lease_renew < Duration::from_millis(10) {
            return bad("--lease-renew must be at least 10ms".into());
        }
        // A live worker's task must never look abandoned: renewals have to
        // land well inside the idle window even when one of them is late.
        if self.claim_idle < self.lease_renew * 3 {
            return bad(format!(
                "--claim-idle ({}) must be at least 3 x --lease-renew ({}), or a live worker's \
                 tasks could be reclaimed between two renewals",
                humantime::format_duration(self.claim_idle),
                humantime::format_duration(self.lease_renew)
            ));
        }
        if self.heartbeat < Duration::from_millis(100) {
            return bad("--heartbeat must be at least 100ms".into());
        }
        if self.promote_interval < Duration::from_millis(10) {
            return bad("--promote-interval must be at least 10ms".into());
        }
        if self.max_payload < 64 || self.max_payload > 512 * 1024 * 1024 {
            return bad("--max-payload must be between 64 bytes and 512 MiB".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        runtime: RuntimeConfig,
    }

    fn parse(args: &[&str]) -> std::result::Result<RuntimeConfig, clap::Error> {
        Cli::try_parse_from(std::iter::once("agent").chain(args.iter().copied())).map(|c| c.runtime)
    }

    #[test]
    fn defaults_match_the_flags() {
        assert_eq!(parse(&[]).unwrap(), RuntimeConfig::default());
        RuntimeConfig::default().validate().unwrap();
    }

    #[test]
    fn human_durations() {
        let c = parse(&["--claim-idle", "2m", "--lease-renew", "500ms"]).unwrap();
        assert_eq!(c.claim_idle, Duration::from_secs(120));
        assert_eq!(c.lease_renew, Duration::from_millis(500));
        assert!(parse(&["--claim-idle", "soon"]).is_err());
    }

    #[test]
    fn claim_idle_must_cover_renewals() {
        let c = parse(&["--claim-idle", "10s", "--lease-renew", "5s"]).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("--claim-idle") && e.contains("--lease-renew"),
            "{e}"
        );
    }

    #[test]
    fn rejects_bad_values() {
        for args in [
            &["--concurrency", "0"][..],
            &["--namespace", "Bad:NS"],
            &["--agent-type", "STREAMS"],
            &["--backoff-jitter", "1.5"],
            &["--backoff-initial", "10m", "--backoff-max", "1m"],
            &["--redis-url", "http://x"],
            &["--max-attempts", "0"],
        ] {
            let c = parse(args).unwrap();
            assert!(c.validate().is_err(), "{args:?} accepted");
        }
    }
}
