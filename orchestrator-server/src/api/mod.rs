//! The HTTP API (axum), JSON under `/api/v1`, plus `/health`, `/ready` and
//! `/metrics`. See `orchestrator/README.md` for every route with curl
//! examples.
//!
//! Every route but the dashboard's `/` is registered through utoipa-axum's
//! [`OpenApiRouter`] from a handler annotated with `#[utoipa::path]`, so
//! the router and its OpenAPI document ([`openapi`], served at
//! `/api/v1/openapi.json`) are built by the same code and cannot drift: a
//! route cannot be served without being described.
//!
//! Handlers take pooled connections (deadpool-redis, with a checkout
//! timeout); dispatch goes through the engine's own long-lived connection.

mod agents;
pub mod auth;
mod dashboard;
mod definitions;
mod dlq;
pub mod dlq_view;
mod doc;
pub mod error;
mod events;
mod extract;
mod health;
mod memory;
mod retention;
mod streams;
mod tasks;
mod workflow_why;
mod workflows;

use agent_sdk::schemas::AgentType;
pub use auth::{Access, host_name};
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::get;
use axum::{Extension, Router};
pub use doc::openapi_json;
use error::ApiError;
pub use health::{Loops, install_metrics, starting_router};
use orchestrator::Engine;
use orchestrator::store::Change;
use std::sync::Arc;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: Arc<Engine>,
    pool: deadpool_redis::Pool,
    access: Access,
    /// `/metrics` asks for a token too (`--metrics-token-required`).
    metrics_token_required: std::sync::atomic::AtomicBool,
    changes: broadcast::Sender<Arc<Change>>,
    stop: CancellationToken,
    /// Agent types found by the last keyspace scan, and when.
    types: tokio::sync::Mutex<Option<(std::time::Instant, Vec<AgentType>)>>,
    /// The engine's loops, for `/ready`.
    loops: Arc<health::Loops>,
    /// How the fleet of agents is judged (`--wedged-after`, `--keep-gone`).
    fleet: orchestrator::ops::fleet::FleetSettings,
}

/// How long a scan for agent types is reused: the dashboard asks every few
/// seconds, and a scan walks the whole keyspace.
const TYPES_FRESH: std::time::Duration = std::time::Duration::from_secs(30);

impl AppState {
    /// State for the router.
    pub fn new(
        engine: Arc<Engine>,
        pool: deadpool_redis::Pool,
        access: Access,
        changes: broadcast::Sender<Arc<Change>>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                pool,
                access,
                metrics_token_required: std::sync::atomic::AtomicBool::new(false),
                changes,
                stop,
                types: tokio::sync::Mutex::default(),
                loops: Arc::default(),
                fleet: orchestrator::ops::fleet::FleetSettings::default(),
            }),
        }
    }

    /// Judges the fleet with `fleet` and reports `loops` in `/ready`. Call
    /// it on the state just built (before it is cloned): later it changes
    /// nothing.
    pub fn with_liveness(
        mut self,
        fleet: orchestrator::ops::fleet::FleetSettings,
        loops: Arc<health::Loops>,
    ) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.fleet = fleet;
            inner.loops = loops;
        }
        self
    }

    fn loops(&self) -> &health::Loops {
        &self.inner.loops
    }

    fn fleet(&self) -> &orchestrator::ops::fleet::FleetSettings {
        &self.inner.fleet
    }

    /// Makes `/metrics` ask for the token like `/api/v1` does.
    pub fn with_metrics_token_required(self, required: bool) -> Self {
        self.inner
            .metrics_token_required
            .store(required, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Whether `/metrics` asks for the token (`--metrics-token-required`):
    /// the hook the auth layer reads.
    pub fn metrics_token_required(&self) -> bool {
        self.inner
            .metrics_token_required
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, ApiError> {
        Ok(self.inner.pool.get().await?)
    }

    /// Every agent type with streams: the last scan (at most
    /// [`TYPES_FRESH`] old) plus the types this orchestrator dispatches to.
    async fn agent_types(
        &self,
        conn: &mut deadpool_redis::Connection,
    ) -> Result<Vec<AgentType>, ApiError> {
        let mut cached = self.inner.types.lock().await;
        let scanned = match &*cached {
            Some((at, types)) if at.elapsed() < TYPES_FRESH => types.clone(),
            _ => {
                let types =
                    orchestrator::ops::streams::agent_types(conn, self.engine().keys()).await?;
                *cached = Some((std::time::Instant::now(), types.clone()));
                types
            }
        };
        drop(cached);
        let mut all: std::collections::BTreeMap<String, AgentType> =
            scanned.into_iter().map(|t| (t.to_string(), t)).collect();
        for t in self.engine().watched_types() {
            if let Ok(a) = AgentType::new(&t) {
                all.entry(t).or_insert(a);
            }
        }
        Ok(all.into_values().collect())
    }
}

/// The whole router: `/api/v1/...` (behind a token of the role each
/// operation needs, but for `/api/v1/openapi.json`), `/health`, `/ready`,
/// `/metrics`, and the dashboard at `/`; every route behind the browser
/// guard (`Host`, cross-site requests, POST content types: see
/// [`auth::browser_guard`]). Bodies over `max_body` bytes get 413.
pub fn router(state: AppState, max_body: usize) -> Router {
    let authenticate = middleware::from_fn_with_state(state.clone(), auth::authenticate);
    let (routes, document) = parts(|api| api.route_layer(authenticate));
    let document = doc::Document::new(&document);
    routes
        // Not part of the API: an HTML page, left out of the document.
        .route("/", get(dashboard::page))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(Extension(document))
        // Last added, so outermost: a refused request reaches nothing.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::browser_guard,
        ))
        .with_state(state)
}

/// The OpenAPI document of the API: what `/api/v1/openapi.json` serves and
/// `orchestrator openapi` prints. Built by the same code as the router.
pub fn openapi() -> utoipa::openapi::OpenApi {
    parts(|api| api).1
}

/// The routes and their document, built together. `protect` is applied to
/// the `/api/v1` routes that need the token (the server passes the auth
/// `route_layer`); every operation registered before it is marked in the
/// document as needing the bearer token, the ones after it are not.
fn parts(
    protect: impl FnOnce(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>,
) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let mut api = OpenApiRouter::new()
        .routes(routes!(workflows::create, workflows::list))
        .routes(routes!(workflows::get, retention::delete_workflow))
        .routes(routes!(workflows::log))
        .routes(routes!(events::workflow))
        .routes(routes!(workflows::cancel))
        .routes(routes!(workflows::abort))
        .routes(routes!(workflows::approve))
        .routes(routes!(workflows::reject))
        .routes(routes!(workflows::replay))
        .routes(routes!(events::all))
        .routes(routes!(definitions::create, definitions::list))
        .routes(routes!(definitions::get))
        .routes(routes!(tasks::submit))
        .routes(routes!(tasks::result))
        .routes(routes!(agents::list))
        .routes(routes!(streams::overview))
        .routes(routes!(streams::streams))
        .routes(routes!(memory::memory))
        .routes(routes!(dlq::queues))
        .routes(routes!(dlq::list))
        .routes(routes!(dlq::replay))
        .routes(routes!(dlq::purge))
        .routes(routes!(dlq::show))
        .routes(routes!(auth::whoami));
    doc::require_token(api.get_openapi_mut());
    let api = protect(api).routes(routes!(doc::serve));
    let (routes, mut document) = OpenApiRouter::with_openapi(doc::ApiDoc::openapi())
        .nest("/api/v1", api)
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
        .split_for_parts();
    doc::open_flattened(&mut document);
    doc::browser_refusals(&mut document);
    (routes, document)
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
