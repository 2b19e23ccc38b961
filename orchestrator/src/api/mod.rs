//! The HTTP API (axum), JSON under `/api/v1`, plus `/health`, `/ready` and
//! `/metrics`. See `orchestrator/README.md` for every route with curl
//! examples.
//!
//! Handlers take pooled connections (deadpool-redis, with a checkout
//! timeout); dispatch goes through the engine's own long-lived connection.

mod agents;
mod dashboard;
mod definitions;
mod dlq;
pub mod error;
mod events;
mod extract;
mod health;
mod streams;
mod tasks;
mod workflows;

use crate::engine::Engine;
use crate::store::Change;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use error::ApiError;
pub use health::install_metrics;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: Arc<Engine>,
    pool: deadpool_redis::Pool,
    token: Option<String>,
    changes: broadcast::Sender<Arc<Change>>,
    stop: CancellationToken,
}

impl AppState {
    /// State for the router.
    pub fn new(
        engine: Arc<Engine>,
        pool: deadpool_redis::Pool,
        token: Option<String>,
        changes: broadcast::Sender<Arc<Change>>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                pool,
                token,
                changes,
                stop,
            }),
        }
    }

    fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, ApiError> {
        Ok(self.inner.pool.get().await?)
    }
}

/// The whole router: `/api/v1/...` (behind the token when one is set),
/// `/health`, `/ready`, `/metrics`. Bodies over `max_body` bytes get 413.
pub fn router(state: AppState, max_body: usize) -> Router {
    let api = Router::new()
        .route("/workflows", post(workflows::create).get(workflows::list))
        .route("/workflows/{id}", get(workflows::get))
        .route("/workflows/{id}/log", get(workflows::log))
        .route("/workflows/{id}/events", get(events::workflow))
        .route("/workflows/{id}/cancel", post(workflows::cancel))
        .route("/workflows/{id}/abort", post(workflows::abort))
        .route(
            "/workflows/{id}/stages/{stage}/approve",
            post(workflows::approve),
        )
        .route(
            "/workflows/{id}/stages/{stage}/reject",
            post(workflows::reject),
        )
        .route(
            "/workflows/{id}/stages/{stage}/replay",
            post(workflows::replay),
        )
        .route("/events", get(events::all))
        .route(
            "/definitions",
            post(definitions::create).get(definitions::list),
        )
        .route("/definitions/{name}", get(definitions::get))
        .route("/tasks/{agent_type}", post(tasks::submit))
        .route("/tasks/{agent_type}/{task_id}", get(tasks::result))
        .route("/agents", get(agents::list))
        .route("/overview", get(streams::overview))
        .route("/streams", get(streams::streams))
        .route("/dlq", get(dlq::queues))
        .route("/dlq/{agent_type}", get(dlq::list))
        .route("/dlq/{agent_type}/replay", post(dlq::replay))
        .route("/dlq/{agent_type}/purge", post(dlq::purge))
        .route("/dlq/{agent_type}/{id}", get(dlq::show))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .nest("/api/v1", api)
        .route("/", get(dashboard::page))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// Bearer-token check, in constant time, when a token is configured.
async fn auth(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(expected) = &state.inner.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(expected.as_bytes())));
        if !ok {
            let message = if given.is_none() {
                "missing bearer token: send Authorization: Bearer <token>"
            } else {
                "wrong bearer token"
            };
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                message,
            ));
        }
    }
    Ok(next.run(req).await)
}
