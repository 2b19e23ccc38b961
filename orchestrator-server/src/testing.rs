//! Test kit of the server (feature `test-util`), for this crate's tests and
//! `agentctl`'s: the real server in-process on a free port, its flags with
//! short timings, and API tokens of each role ([`ADMIN`], [`OPERATOR`],
//! [`VIEWER`]) in a tokens file beside the test's Redis.

use crate::ServeConfig;
use crate::tokens::Role;
use agent_sdk::CancellationToken;
use agent_sdk::testing::TestRedis;
use clap::Parser;
use orchestrator::testing::{NS, wait_until};
use std::time::Duration;

#[derive(Parser, Debug)]
struct ServeCli {
    #[command(flatten)]
    serve: ServeConfig,
}

/// The test admin token (named `test-admin`).
pub const ADMIN: &str = "test-admin-token-0123456789abcdef";
/// The test operator token (named `test-operator`).
pub const OPERATOR: &str = "test-operator-token-0123456789abcdef";
/// The test viewer token (named `test-viewer`).
pub const VIEWER: &str = "test-viewer-token-0123456789abcdef";

/// Writes (once) the tokens file of [`ADMIN`], [`OPERATOR`] and [`VIEWER`]
/// in `dir`; its path.
pub fn tokens_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("api-tokens");
    if !path.exists() {
        for (name, role, token) in [
            ("test-admin", Role::Admin, ADMIN),
            ("test-operator", Role::Operator, OPERATOR),
            ("test-viewer", Role::Viewer, VIEWER),
        ] {
            crate::tokens::append_entry(&path, name, role, token).expect("write the test tokens");
        }
    }
    path
}

/// A builder of HTTP clients that send `token` as their bearer token.
pub fn http_builder_as(token: &str) -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value =
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value");
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder().default_headers(headers)
}

/// An HTTP client that sends `token` as its bearer token.
pub fn http_as(token: &str) -> reqwest::Client {
    http_builder_as(token).build().expect("an HTTP client")
}

/// An HTTP client with the [`ADMIN`] token.
pub fn http() -> reqwest::Client {
    http_as(ADMIN)
}

/// Flags of a test orchestrator: short timings so recovery happens within a
/// test's patience, and the tokens of [`tokens_file`] (unless `extra` names
/// other tokens). A flag of `extra` replaces the default one of that name.
pub fn serve_flags(redis: &TestRedis, listen: &str, extra: &[&str]) -> Vec<String> {
    let defaults: Vec<String> = [
        "--redis-url",
        &redis.url(),
        "--namespace",
        NS,
        "--listen",
        listen,
        "--claim-idle",
        "1s",
        "--sweep-interval",
        "500ms",
        "--sweep-grace",
        "1s",
        "--timer-tick",
        "50ms",
        "--result-block",
        "200ms",
        "--shutdown-grace",
        "5s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut v: Vec<String> = defaults
        .chunks(2)
        .filter(|pair| !extra.contains(&pair[0].as_str()))
        .flatten()
        .cloned()
        .collect();
    let own_tokens = extra
        .iter()
        .any(|f| matches!(*f, "--tokens-file" | "--api-token-file" | "--token-out"));
    if !own_tokens {
        v.push("--tokens-file".into());
        v.push(tokens_file(redis.dir()).display().to_string());
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// `args` parsed as `orchestrator serve` would.
pub fn serve_config(args: &[String]) -> ServeConfig {
    ServeCli::try_parse_from(
        std::iter::once("orchestrator".to_string()).chain(args.iter().cloned()),
    )
    .expect("serve flags")
    .serve
}

/// The orchestrator running inside the test process on a free port.
#[derive(Debug)]
pub struct InProcess {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Stops it.
    pub stop: CancellationToken,
    /// Its task.
    pub handle: tokio::task::JoinHandle<crate::Result<()>>,
}

impl InProcess {
    /// Starts it with the test flags plus `extra`, and waits until it is ready.
    pub async fn start(redis: &TestRedis, extra: &[&str]) -> Self {
        Self::start_as(redis, &redis.url(), extra).await
    }

    /// [`InProcess::start`] connecting to Redis through `redis_url` (the
    /// same server, as another user).
    pub async fn start_as(redis: &TestRedis, redis_url: &str, extra: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("local address");
        let mut flags = serve_flags(redis, &addr.to_string(), extra);
        if let Some(at) = flags.iter().position(|f| f == "--redis-url") {
            flags[at + 1] = redis_url.to_owned();
        }
        let cfg = serve_config(&flags);
        let stop = CancellationToken::new();
        let handle = tokio::spawn(crate::server::serve(cfg, listener, stop.clone()));
        let url = format!("http://{addr}");
        wait_ready(&url).await;
        Self { url, stop, handle }
    }

    /// Stops it and waits for it; panics if it failed or did not stop in 30 s.
    pub async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("orchestrator did not stop within 30s")
            .expect("orchestrator task panicked")
            .expect("orchestrator failed");
    }

    /// The URL of API path `path` (`/workflows`, …).
    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }
}

/// Waits until the orchestrator at `url` answers `/ready`.
pub async fn wait_ready(url: &str) {
    let http = reqwest::Client::new();
    wait_until("orchestrator /ready", Duration::from_secs(30), || async {
        http.get(format!("{url}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}
