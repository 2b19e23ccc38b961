//! `orchestrator serve` settings: flags with `AGENTIC_*` environment
//! fallbacks and human durations, checked by [`ServeConfig::validate`].

use crate::error::Error;
use agent_sdk::{LogFormat, RedisArgs};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings of one orchestrator process.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct ServeConfig {
    /// Redis and namespace.
    #[command(flatten)]
    pub redis: RedisArgs,

    /// Address the HTTP API listens on.
    #[arg(long, env = "AGENTIC_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Bearer token every `/api/v1` call must carry. Required unless
    /// `--listen` is a loopback address (or `--insecure-no-auth` is given).
    #[arg(long, env = "AGENTIC_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Serve without a token on a non-loopback address (behind a proxy that
    /// authenticates).
    #[arg(long, env = "AGENTIC_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Consumer name in the `orchestrator` groups; host-pid-random when not
    /// given. Give a stable one per replica so a restart finds its own
    /// pending results at once.
    #[arg(long, env = "AGENTIC_CONSUMER")]
    pub consumer: Option<String>,

    /// Results pending this long at another orchestrator are taken over.
    #[arg(long, env = "AGENTIC_CLAIM_IDLE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub claim_idle: Duration,

    /// Results read per call, per agent type.
    #[arg(long, env = "AGENTIC_RESULT_BATCH", default_value_t = 256)]
    pub result_batch: usize,

    /// How long one read of a results stream waits for results (also how
    /// long a shutdown may wait for the reads in progress).
    #[arg(long, env = "AGENTIC_RESULT_BLOCK", default_value = "2s", value_parser = humantime::parse_duration)]
    pub result_block: Duration,

    /// Workflows whose results are applied in one pipelined round (see the
    /// engine's transition pipeline).
    #[arg(long, env = "AGENTIC_PARALLELISM", default_value_t = 64)]
    pub parallelism: usize,

    /// How often due timers are looked for.
    #[arg(long, env = "AGENTIC_TIMER_TICK", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub timer_tick: Duration,

    /// How often unfinished outboxes are looked for.
    #[arg(long, env = "AGENTIC_SWEEP_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub sweep_interval: Duration,

    /// An outbox untouched this long is taken over by the sweeper.
    #[arg(long, env = "AGENTIC_SWEEP_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub sweep_grace: Duration,

    /// Extra agent types whose results to consume (those of registered
    /// definitions are found by themselves).
    #[arg(long = "watch", env = "AGENTIC_WATCH", value_delimiter = ',')]
    pub watch: Vec<String>,

    /// Most agent types this orchestrator watches (results consumed,
    /// deadlines polled). A type is watched because a registered definition
    /// names it or `--watch` does, never because of a request alone;
    /// registering a definition that would go over this is refused.
    #[arg(long, env = "AGENTIC_MAX_AGENT_TYPES", default_value_t = orchestrator::engine::DEFAULT_MAX_AGENT_TYPES)]
    pub max_agent_types: usize,

    /// `/metrics` asks for the API token like `/api/v1` does (the auth layer
    /// reads this through `AppState::metrics_token_required`).
    #[arg(long, env = "AGENTIC_METRICS_TOKEN_REQUIRED")]
    pub metrics_token_required: bool,

    /// Directory of workflow definitions (`*.yaml`, `*.yml`, `*.json`)
    /// registered at start.
    #[arg(long, env = "AGENTIC_DEFINITIONS")]
    pub definitions: Option<PathBuf>,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "AGENTIC_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: usize,

    /// Pooled Redis connections for HTTP handlers.
    #[arg(long, env = "AGENTIC_POOL_SIZE", default_value_t = 16)]
    pub pool_size: usize,

    /// How long a handler waits for a pooled connection before answering 503.
    #[arg(long, env = "AGENTIC_POOL_WAIT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub pool_wait: Duration,

    /// How long in-flight work may take to finish after SIGTERM.
    #[arg(long, env = "AGENTIC_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "AGENTIC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl ServeConfig {
    /// Rejects inconsistent settings with a message naming the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        self.redis.validate()?;
        if let Some(c) = &self.consumer {
            agent_sdk::schemas::names::validate_consumer(c)?;
        }
        for t in &self.watch {
            agent_sdk::schemas::AgentType::new(t.clone())?;
        }
        if let Some(t) = &self.api_token
            && t.len() < 16
        {
            return bad("--api-token must be at least 16 characters".into());
        }
        if self.api_token.is_none() && !self.listen.ip().is_loopback() && !self.insecure_no_auth {
            return bad(format!(
                "--listen {} is not a loopback address: set --api-token (or AGENTIC_API_TOKEN), \
                 or --insecure-no-auth if a proxy in front authenticates",
                self.listen
            ));
        }
        if self.max_agent_types == 0 || self.max_agent_types > 100_000 {
            return bad("--max-agent-types must be 1..=100000".into());
        }
        if self.watch.len() > self.max_agent_types {
            return bad(format!(
                "--watch names {} agent types, over --max-agent-types {}",
                self.watch.len(),
                self.max_agent_types
            ));
        }
        if self.metrics_token_required && self.api_token.is_none() {
            return bad("--metrics-token-required needs --api-token (or AGENTIC_API_TOKEN)".into());
        }
        if self.result_batch == 0 || self.result_batch > 10_000 {
            return bad("--result-batch must be 1..=10000".into());
        }
        if self.parallelism == 0 || self.parallelism > 10_000 {
            return bad("--parallelism must be 1..=10000".into());
        }
        if self.pool_size == 0 || self.pool_size > 1024 {
            return bad("--pool-size must be 1..=1024".into());
        }
        if self.result_block < Duration::from_millis(10)
            || self.result_block > Duration::from_secs(60)
        {
            return bad("--result-block must be between 10ms and 60s".into());
        }
        if self.claim_idle < Duration::from_millis(100) {
            return bad("--claim-idle must be at least 100ms".into());
        }
        if self.timer_tick < Duration::from_millis(10) || self.timer_tick > Duration::from_secs(60)
        {
            return bad("--timer-tick must be between 10ms and 60s".into());
        }
        if self.sweep_interval < Duration::from_millis(100) {
            return bad("--sweep-interval must be at least 100ms".into());
        }
        if self.max_body < 1024 || self.max_body > 64 * 1024 * 1024 {
            return bad("--max-body must be between 1 KiB and 64 MiB".into());
        }
        if self.pool_wait.is_zero() {
            return bad("--pool-wait must be above 0".into());
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
        serve: ServeConfig,
    }

    fn parse(args: &[&str]) -> std::result::Result<ServeConfig, clap::Error> {
        Cli::try_parse_from(std::iter::once("orchestrator").chain(args.iter().copied()))
            .map(|c| c.serve)
    }

    #[test]
    fn defaults_are_valid_and_local() {
        let c = parse(&[]).unwrap();
        c.validate().unwrap();
        assert!(c.listen.ip().is_loopback());
        assert!(c.api_token.is_none());
    }

    #[test]
    fn a_public_address_needs_a_token() {
        let c = parse(&["--listen", "0.0.0.0:8080"]).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--api-token"), "{e}");
        let c = parse(&[
            "--listen",
            "0.0.0.0:8080",
            "--api-token",
            "0123456789abcdef",
        ])
        .unwrap();
        c.validate().unwrap();
        let c = parse(&["--listen", "0.0.0.0:8080", "--insecure-no-auth"]).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (&["--api-token", "short"][..], "--api-token"),
            (&["--namespace", "Bad NS"][..], "namespace"),
            (&["--parallelism", "0"][..], "--parallelism"),
            (&["--redis-url", "http://:pw@h"][..], "--redis-url"),
            (&["--watch", "a,STREAMS"][..], "STREAMS"),
            (&["--max-agent-types", "0"][..], "--max-agent-types"),
            (
                &["--max-agent-types", "1", "--watch", "a,b"][..],
                "--max-agent-types",
            ),
            (&["--metrics-token-required"][..], "--api-token"),
        ] {
            let e = parse(args).unwrap().validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{args:?}: {e}");
            assert!(!e.contains("pw@"), "{e}");
        }
        assert!(parse(&["--claim-idle", "soon"]).is_err());
    }
}
