//! `orchestrator serve` settings: flags with `AGENTIC_*` environment
//! fallbacks and human durations, checked by [`ServeConfig::validate`].

use crate::error::Error;
use agent_sdk::{LogFormat, RedisArgs};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

type Result<T, E = Error> = std::result::Result<T, E>;

/// How often an event stream sends a keep-alive comment (axum's default).
const EVENT_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Settings of one orchestrator process.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct ServeConfig {
    /// Redis and namespace.
    #[command(flatten)]
    pub redis: RedisArgs,

    /// Address the HTTP API listens on.
    #[arg(long, env = "AGENTIC_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// File of API tokens, one `name role sha256hex` a line (`role`:
    /// viewer, operator or admin); `orchestrator token new` adds entries.
    #[arg(long, env = "AGENTIC_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// File holding one admin token, named `default` (the token itself can
    /// also come from the `AGENTIC_API_TOKEN` environment variable; never
    /// from the command line, where every local user can read it).
    #[arg(long, env = "AGENTIC_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,

    /// Where the token generated at start goes when no token is configured
    /// (an admin token named `generated`, in a file readable by the owner
    /// only). Default: `$XDG_RUNTIME_DIR/agentic/orchestrator-<port>.token`,
    /// else `$XDG_STATE_HOME` (or `~/.local/state`)`/agentic/...`, else the
    /// working directory.
    #[arg(long, env = "AGENTIC_TOKEN_OUT")]
    pub token_out: Option<PathBuf>,

    /// Host names (or `name:port`) the API answers besides the listen
    /// address (and `localhost` when listening on loopback): what a proxy
    /// or browser puts in `Host`. Others get 421 (DNS rebinding).
    #[arg(
        long = "allowed-host",
        env = "AGENTIC_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,

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

    /// A live agent instance with work waiting for it (undelivered tasks of
    /// its type, or tasks it holds) and no read, commit or progress for this
    /// long is reported `wedged` (dashboard, `/api/v1/agents`, `/metrics`).
    #[arg(long, env = "AGENTIC_WEDGED_AFTER", default_value = "5m", value_parser = humantime::parse_duration)]
    pub wedged_after: Duration,

    /// A vanished agent instance (no heartbeat) stays listed as `gone`, with
    /// its last-seen time, this long (at most 7d); then it is forgotten.
    #[arg(long, env = "AGENTIC_KEEP_GONE", default_value = "1h", value_parser = humantime::parse_duration)]
    pub keep_gone: Duration,

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

    /// How long each dispatched task's idempotency key (task id → entry) is
    /// kept, so a re-dispatch after a crash adds nothing. It must outlast
    /// the longest time every orchestrator can be down while commands wait
    /// in an outbox; the keys (about 100 bytes each, one per dispatch)
    /// plateau after one such period at a steady rate.
    #[arg(long, env = "AGENTIC_DISPATCH_KEY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub dispatch_key_ttl: std::time::Duration,

    /// Keep the dead letters of workflow tasks that no workflow waits for
    /// any more. By default they are deleted: a stage that timed out or
    /// failed, or a workflow that ended, leaves no dead letter behind (its
    /// error stays in the workflow and its event log).
    #[arg(long, env = "AGENTIC_KEEP_DEAD_LETTERS")]
    pub keep_dead_letters: bool,

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

    /// Longest wait for a request's head (request line and headers), from
    /// when the server starts waiting for it: right after the previous
    /// answer on a kept-alive connection, so this also closes idle
    /// kept-alive connections. Slower clients are disconnected.
    #[arg(long, env = "AGENTIC_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// Longest time to receive a request's whole body, from its head's
    /// arrival; a slower one is answered 408 and its connection closed. (A
    /// body is read only by a handler, after authentication.)
    #[arg(long, env = "AGENTIC_BODY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,

    /// Longest time from a request's head to its answer's head, the body's
    /// arrival included (503 past it). Event streams answer at once and
    /// then stream: they are bounded by --idle-timeout and
    /// --max-connections, not by this.
    #[arg(long, env = "AGENTIC_REQUEST_TIMEOUT", default_value = "40s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// A connection on which no byte moves either way for this long is
    /// closed (a client that stopped reading its answer or an event
    /// stream). Longer than --request-timeout and than the 15 s keep-alive
    /// comments of event streams.
    #[arg(long, env = "AGENTIC_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Most connections served at once; further ones wait, unaccepted, in
    /// the listen backlog until one closes.
    #[arg(long, env = "AGENTIC_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Pooled Redis connections for HTTP handlers.
    #[arg(long, env = "AGENTIC_POOL_SIZE", default_value_t = 16)]
    pub pool_size: usize,

    /// How long a handler waits for a pooled connection before answering 503.
    #[arg(long, env = "AGENTIC_POOL_WAIT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub pool_wait: Duration,

    /// How long in-flight work may take to finish after SIGTERM.
    #[arg(long, env = "AGENTIC_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Ended workflows (completed, failed, cancelled) are deleted this long
    /// after they ended (Redis clock): state, event log, index entries. A
    /// workflow blocked on a dead letter has not ended and is kept.
    #[arg(long, env = "AGENTIC_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: Duration,

    /// Keep at most this many ended workflows (the oldest go first).
    #[arg(long, env = "AGENTIC_RETENTION_MAX_COUNT")]
    pub retention_max_count: Option<u64>,

    /// Keep at most this many bytes of ended workflows (state + event log,
    /// measured with MEMORY USAGE when each ended; the oldest go first).
    #[arg(long, env = "AGENTIC_RETENTION_MAX_BYTES")]
    pub retention_max_bytes: Option<u64>,

    /// How often retention looks for ended workflows to delete (one
    /// replica per round, by a lease in Redis).
    #[arg(long, env = "AGENTIC_RETENTION_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub retention_interval: Duration,

    /// Before deleting, append each expired workflow with its event log as
    /// one JSON line to this file (synced first; a failed write keeps the
    /// workflow for the next round).
    #[arg(long, env = "AGENTIC_ARCHIVE_FILE")]
    pub archive_file: Option<PathBuf>,

    /// Before deleting, add each expired workflow as one entry (field
    /// `workflow`, the same JSON line) to the stream `N:wfs:archive`.
    #[arg(long, env = "AGENTIC_ARCHIVE_STREAM")]
    pub archive_stream: bool,

    /// The archive stream keeps about this many entries.
    #[arg(
        long,
        env = "AGENTIC_ARCHIVE_STREAM_MAX_LEN",
        default_value_t = 100_000
    )]
    pub archive_stream_max_len: usize,

    /// How often dead consumers are pruned and unread results streams
    /// capped (one replica per round, by a lease in Redis).
    #[arg(long, env = "AGENTIC_HOUSEKEEPING_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub housekeeping_interval: Duration,

    /// A consumer of a `workers` or `orchestrator` group that holds nothing,
    /// has no live registry record and has been idle this long is removed.
    /// Also: a results stream whose group has no consumer active within
    /// this long counts as unread.
    #[arg(long, env = "AGENTIC_CONSUMER_PRUNE_IDLE", default_value = "1h", value_parser = humantime::parse_duration)]
    pub consumer_prune_idle: Duration,

    /// A results stream nobody reads is capped at this many entries
    /// (never below what an orchestrator group has not applied).
    #[arg(long, env = "AGENTIC_RESULTS_CAP", default_value_t = 10_000)]
    pub results_cap: u64,

    /// Log format.
    #[arg(long, env = "AGENTIC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl ServeConfig {
    /// The retention rules ([`orchestrator::loops::retention`]).
    pub fn retention_settings(&self) -> orchestrator::loops::retention::RetentionSettings {
        orchestrator::loops::retention::RetentionSettings {
            interval: self.retention_interval,
            max_age: self.retention,
            max_count: self.retention_max_count,
            max_bytes: self.retention_max_bytes,
            archive: orchestrator::loops::retention::ArchiveSettings {
                file: self.archive_file.clone(),
                stream_max_len: self.archive_stream.then_some(self.archive_stream_max_len),
            },
        }
    }

    /// The streams' housekeeping ([`orchestrator::ops::housekeeping`]).
    pub fn housekeeping_settings(&self) -> orchestrator::ops::housekeeping::HousekeepingSettings {
        orchestrator::ops::housekeeping::HousekeepingSettings {
            interval: self.housekeeping_interval,
            consumer_prune_idle: self.consumer_prune_idle,
            results_cap: self.results_cap,
        }
    }

    /// The bounds of each request ([`crate::transport`]).
    pub fn request_bounds(&self) -> crate::transport::RequestBounds {
        crate::transport::RequestBounds {
            body_timeout: self.body_timeout,
            request_timeout: self.request_timeout,
            max_body: self.max_body,
        }
    }

    /// The bounds of connections ([`crate::transport`]).
    pub fn connection_bounds(&self) -> crate::transport::ConnectionBounds {
        crate::transport::ConnectionBounds {
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            shutdown_grace: self.shutdown_grace,
        }
    }

    /// Rejects inconsistent settings with a message naming the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        self.redis.validate()?;
        if self.wedged_after < Duration::from_secs(1) {
            return bad("--wedged-after must be at least 1s".into());
        }
        // Workers forget instances silent for a week by themselves.
        if self.keep_gone.is_zero() || self.keep_gone > Duration::from_secs(7 * 24 * 3600) {
            return bad("--keep-gone must be above 0 and at most 7d".into());
        }
        if let Some(c) = &self.consumer {
            agent_sdk::schemas::names::validate_consumer(c)?;
        }
        for t in &self.watch {
            agent_sdk::schemas::AgentType::new(t.clone())?;
        }
        for h in &self.allowed_hosts {
            crate::api::host_name(h)
                .ok_or_else(|| Error::Config(format!("--allowed-host {h:?} is not a host name")))?;
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
        for (flag, d) in [
            ("--header-timeout", self.header_timeout),
            ("--body-timeout", self.body_timeout),
            ("--request-timeout", self.request_timeout),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
                return bad(format!("{flag} must be between 100ms and 1h"));
            }
        }
        if self.idle_timeout <= self.request_timeout.max(EVENT_KEEP_ALIVE) {
            return bad(format!(
                "--idle-timeout must be longer than --request-timeout and than the {}s \
                 keep-alive of event streams (a quiet stream or a working handler moves no byte)",
                EVENT_KEEP_ALIVE.as_secs()
            ));
        }
        for (flag, d) in [
            ("--retention-interval", self.retention_interval),
            ("--housekeeping-interval", self.housekeeping_interval),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(86_400) {
                return bad(format!("{flag} must be between 100ms and 1d"));
            }
        }
        if self.retention.is_zero() {
            return bad("--retention must be above 0".into());
        }
        if self.retention_max_count == Some(0) || self.retention_max_bytes == Some(0) {
            return bad("--retention-max-count and --retention-max-bytes must be above 0 (leave them out for no cap)".into());
        }
        if self.archive_stream_max_len == 0 {
            return bad("--archive-stream-max-len must be above 0".into());
        }
        if self.consumer_prune_idle < Duration::from_secs(1) {
            return bad("--consumer-prune-idle must be at least 1s".into());
        }
        if self.results_cap == 0 {
            return bad("--results-cap must be above 0".into());
        }
        if self.max_connections == 0 || self.max_connections > 65_536 {
            return bad("--max-connections must be 1..=65536".into());
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
        assert!(c.tokens_file.is_none() && c.api_token_file.is_none());
    }

    #[test]
    fn no_token_is_taken_from_the_command_line() {
        let e = parse(&["--api-token", "0123456789abcdef"]).unwrap_err();
        assert!(e.to_string().contains("--api-token"), "{e}");
        assert!(parse(&["--insecure-no-auth"]).is_err());
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (&["--allowed-host", "a b"][..], "--allowed-host"),
            (&["--namespace", "Bad NS"][..], "namespace"),
            (&["--parallelism", "0"][..], "--parallelism"),
            (&["--redis-url", "http://:pw@h"][..], "--redis-url"),
            (&["--watch", "a,STREAMS"][..], "STREAMS"),
            (&["--header-timeout", "0s"][..], "--header-timeout"),
            (&["--body-timeout", "2h"][..], "--body-timeout"),
            (&["--idle-timeout", "30s"][..], "--idle-timeout"),
            (
                &["--idle-timeout", "10s", "--request-timeout", "5s"][..],
                "--idle-timeout",
            ),
            (&["--max-connections", "0"][..], "--max-connections"),
            (&["--max-agent-types", "0"][..], "--max-agent-types"),
            (&["--wedged-after", "10ms"][..], "--wedged-after"),
            (&["--keep-gone", "30d"][..], "--keep-gone"),
            (
                &["--max-agent-types", "1", "--watch", "a,b"][..],
                "--max-agent-types",
            ),
        ] {
            let e = parse(args).unwrap().validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{args:?}: {e}");
            assert!(!e.contains("pw@"), "{e}");
        }
        assert!(parse(&["--claim-idle", "soon"]).is_err());
    }
}
