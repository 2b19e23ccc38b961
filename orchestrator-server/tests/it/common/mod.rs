//! Shared by the server's behaviour tests: the kits of the SDK
//! (`TestRedis`, waits, processes), of the orchestrator (stage agents,
//! workflow reads) and of the server (in-process server), plus the
//! `orchestrator` binary as a real process and the HTTP calls tests share.

pub use agent_sdk::testing::{TestRedis, free_port};
pub use orchestrator::testing::*;
pub use orchestrator_server::testing::{
    ADMIN, InProcess, OPERATOR, VIEWER, http, http_as, http_builder_as, serve_flags, wait_ready,
};
use serde_json::{Value, json};
use std::time::Duration;

/// The `orchestrator` binary as a child process, ready.
pub struct Proc {
    proc: agent_sdk::testing::Proc,
    pub url: String,
}

impl Proc {
    pub async fn spawn(redis: &TestRedis, consumer: &str, extra: &[&str]) -> Self {
        Self::spawn_with_env(redis, consumer, extra, &[]).await
    }

    /// [`Proc::spawn`] with these environment variables set (the rest of
    /// the environment is cleared).
    pub async fn spawn_with_env(
        redis: &TestRedis,
        consumer: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["serve".to_string()];
        args.extend(serve_flags(redis, &listen, extra));
        args.extend(["--consumer".to_string(), consumer.to_string()]);
        let mut all_env = vec![("RUST_LOG", "info")];
        all_env.extend_from_slice(env);
        let log = redis
            .dir()
            .join(format!("orchestrator-{consumer}-{port}.log"));
        let proc = agent_sdk::testing::Proc::spawn(
            &format!("orchestrator {consumer}"),
            env!("CARGO_BIN_EXE_orchestrator"),
            &args,
            &all_env,
            log,
        );
        let p = Self {
            proc,
            url: format!("http://{listen}"),
        };
        wait_ready(&p.url).await;
        p
    }

    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// `kill -<sig>`.
    pub fn signal(&self, sig: &str) {
        self.proc.signal(sig);
    }

    /// Waits up to `timeout` for the process to exit; its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.proc.wait_exit(timeout).await
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

/// Creates a workflow of `definition` over HTTP; its id.
pub async fn create(http: &reqwest::Client, base: &str, definition: &str, input: Value) -> String {
    let r = http
        .post(format!("{base}/api/v1/workflows"))
        .json(&json!({ "definition": definition, "input": input }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}
