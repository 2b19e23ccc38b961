//! The HTTP API: every route's success and error paths, the token, and
//! server-sent events, a module per area after the server's `src/api/`
//! (`router`, `auth` and `browser` test what its `mod.rs` and `auth.rs`
//! do). Each test states one
//! behaviour, against its own `redis-server` and the real server in-process
//! on a free port ([`Api`]).

mod agents;
mod auth;
mod browser;
mod definitions;
mod dlq;
mod events;
mod formats;
mod health;
mod router;
mod streams;
mod tasks;
mod workflows;

use crate::common::*;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

/// How long a test waits for anything.
const PATIENCE: Duration = Duration::from_secs(60);

/// One stage, `build` on agent `alpha`, that waits for an approval first.
const GATED: &str = "name: gated\nstages:\n  - name: build\n    agent: alpha\n    approval: true\n";

/// A test's own Redis, the server in-process on it, and an HTTP client.
/// Fields drop in order: the server goes before its Redis.
struct Api {
    http: reqwest::Client,
    o: InProcess,
    redis: TestRedis,
}

impl Api {
    /// A fresh Redis and the server with the test flags.
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// [`Api::start`] with these flags too.
    async fn start_with(extra: &[&str]) -> Self {
        let redis = TestRedis::start();
        let o = InProcess::start(&redis, extra).await;
        Self {
            http: http(),
            o,
            redis,
        }
    }

    /// The URL of API path `path` (`/workflows`, …).
    fn url(&self, path: &str) -> String {
        self.o.api(path)
    }

    /// `GET` an API path.
    async fn get(&self, path: &str) -> Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// `POST` JSON to an API path.
    async fn post(&self, path: &str, req: Value) -> Response {
        self.http
            .post(self.url(path))
            .json(&req)
            .send()
            .await
            .unwrap()
    }

    /// `POST` to an API path with an empty JSON body (no body, but the
    /// content type every POST must carry).
    async fn post_empty(&self, path: &str) -> Response {
        self.http
            .post(self.url(path))
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap()
    }

    /// `POST` a body as is, with this content type (none when `None`).
    async fn post_raw(&self, path: &str, content_type: Option<&str>, raw: &str) -> Response {
        let mut r = self.http.post(self.url(path)).body(raw.to_owned());
        if let Some(t) = content_type {
            r = r.header("content-type", t);
        }
        r.send().await.unwrap()
    }

    /// `GET` an API path → JSON, asserting the status.
    async fn get_json(&self, path: &str, status: u16) -> Value {
        get_json(&self.http, &self.url(path), status).await
    }

    /// `POST` JSON to an API path → JSON, asserting the status.
    async fn post_json(&self, path: &str, req: Value, status: u16) -> Value {
        post_json(&self.http, &self.url(path), req, status).await
    }

    /// Registers a definition given as YAML.
    async fn define(&self, yaml: &str) -> Response {
        self.post_raw("/definitions", Some("application/yaml"), yaml)
            .await
    }

    /// Registers [`GATED`], asserting it is new.
    async fn define_gated(&self) {
        let r = self.define(GATED).await;
        assert_eq!(r.status(), 201);
    }

    /// Creates a workflow of `definition`; its id.
    async fn create(&self, definition: &str, input: Value) -> String {
        create(&self.http, &self.o.url, definition, input).await
    }

    /// Creates a workflow of `definition` with id `id`; the workflow.
    async fn create_as(&self, definition: &str, id: &str) -> Value {
        self.post_json(
            "/workflows",
            json!({ "definition": definition, "id": id }),
            201,
        )
        .await
    }

    /// Stops the server.
    async fn shutdown(self) {
        self.o.shutdown().await;
    }
}

/// A response's status and JSON body.
async fn body(r: Response) -> (StatusCode, Value) {
    let s = r.status();
    let text = r.text().await.unwrap();
    (
        s,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({s}): {text}")),
    )
}

/// Asserts an error answer: status and code. Its message.
async fn refused(r: Response, status: u16, code: &str) -> String {
    let (s, v) = body(r).await;
    assert_eq!(s.as_u16(), status, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    v["error"]["message"].as_str().unwrap().to_owned()
}

/// `GET` → JSON, asserting the status.
async fn get_json(http: &reqwest::Client, url: &str, status: u16) -> Value {
    let (s, v) = body(http.get(url).send().await.unwrap()).await;
    assert_eq!(s.as_u16(), status, "GET {url}: {v}");
    v
}

/// `POST` JSON → JSON, asserting the status.
async fn post_json(http: &reqwest::Client, url: &str, req: Value, status: u16) -> Value {
    let (s, v) = body(http.post(url).json(&req).send().await.unwrap()).await;
    assert_eq!(s.as_u16(), status, "POST {url} {req}: {v}");
    v
}

/// A client of the SDK on `redis`.
async fn sdk_client(redis: &TestRedis) -> agent_sdk::Client {
    agent_sdk::Client::connect(&redis.url(), NS).await.unwrap()
}
