//! `orchestrator serve`: the engine's loops and the HTTP API in one process.
//!
//! [`serve`] takes a bound listener and a shutdown token, so tests run the
//! real server on port 0 in-process, and the binary is a thin wrapper.

use crate::api::{self, AppState};
use crate::config::ServeConfig;
use crate::error::{Error, Result};
use crate::transport;
use agent_sdk::Client;
use agent_sdk::connection::{Connector, redis_backoff};
use agent_sdk::shutdown::pause;
use agent_sdk::stream::consumer_id;
use orchestrator::loops::results::{self, ConsumerSettings};
use orchestrator::loops::sweep::{self, SweepSettings};
use orchestrator::loops::{changes, retention, timers};
use orchestrator::{Definition, Engine};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Reads `*.yaml`, `*.yml` and `*.json` definitions from `dir`.
pub fn read_definitions(dir: &std::path::Path) -> Result<Vec<Definition>> {
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::Config(format!("--definitions {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        })
        .collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p)
            .map_err(|e| Error::Config(format!("{}: {e}", p.display())))?;
        let def =
            Definition::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", p.display())))?;
        def.validate()
            .map_err(|e| Error::Config(format!("{}: {e}", p.display())))?;
        out.push(def);
    }
    Ok(out)
}

async fn connect_manager(
    connector: &Connector,
    stop: &CancellationToken,
) -> Result<Option<ConnectionManager>> {
    let mut backoff = redis_backoff();
    loop {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_pipeline_buffer_size(4096);
        match ConnectionManager::new_with_config(connector.client().clone(), config).await {
            Ok(c) => return Ok(Some(c)),
            Err(e) => {
                tracing::warn!(url = %connector.redacted_url(), error = %e, "cannot connect to redis yet; retrying");
                if pause(stop, backoff.next().unwrap_or(Duration::from_secs(5))).await {
                    return Ok(None);
                }
            }
        }
    }
}

/// The API's tokens (see [`crate::tokens::resolve`]); logs the path of a
/// generated one, never a token.
fn api_tokens(cfg: &ServeConfig, port: u16) -> Result<(crate::tokens::Tokens, usize)> {
    let sources = crate::tokens::Sources {
        tokens_file: cfg.tokens_file.as_deref(),
        api_token_file: cfg.api_token_file.as_deref(),
        // The one secret read from the environment only: on argv every
        // local user could read it.
        env_token: std::env::var("AGENTIC_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        token_out: cfg.token_out.as_deref(),
    };
    let (tokens, generated) = crate::tokens::resolve(&sources, port)?;
    if let Some(path) = generated {
        tracing::warn!(
            path = %path.display(),
            "no API token configured: generated an admin token (named `generated`) into this file, readable by its owner only; send it as Authorization: Bearer <token>"
        );
    }
    let n = tokens.len();
    Ok((tokens, n))
}

/// Runs the orchestrator on `listener` until `stop` fires, then drains.
pub async fn serve(cfg: ServeConfig, listener: TcpListener, stop: CancellationToken) -> Result<()> {
    cfg.validate()?;
    api::install_metrics();
    let (tokens, token_count) = api_tokens(&cfg, listener.local_addr()?.port())?;
    let connector = cfg.redis.connector()?;
    // The port answers from the first moment: `/health` 200 and `/ready`
    // 503 while Redis is being reached, on a second handle of the same
    // socket. The full API takes over once it is built (both accept on the
    // socket for a moment, then this one stops).
    let addr = listener.local_addr()?;
    let listener = listener.into_std()?;
    let early_stop = stop.child_token();
    let early = tokio::spawn(transport::serve(
        TcpListener::from_std(listener.try_clone()?)?,
        api::starting_router(),
        cfg.connection_bounds(),
        early_stop.clone(),
    ));
    let listener = TcpListener::from_std(listener)?;
    let _early_ends = early_stop.clone().drop_guard();
    let Some(mut conn) = connect_manager(&connector, &stop).await? else {
        early_stop.cancel();
        let _ = early.await;
        return Ok(());
    };
    let client = loop {
        match Client::connect(&cfg.redis.url, &cfg.redis.namespace).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect the dispatch client yet; retrying");
                if pause(&stop, Duration::from_secs(1)).await {
                    return Ok(());
                }
            }
        }
    };
    let (mut engine, watch_rx) = Engine::new(client);
    engine.set_max_agent_types(cfg.max_agent_types);
    engine.set_keep_dead_letters(cfg.keep_dead_letters);
    engine.set_dispatch_key_ttl(cfg.dispatch_key_ttl);
    let engine = Arc::new(engine);

    // The built-in `sdlc` only when none is registered (an operator's own
    // `sdlc` is not overwritten at every restart); configured definitions
    // always (registering an unchanged one is a no-op).
    let mut defs = Vec::new();
    match engine.catalog().get(&mut conn, "sdlc", None).await {
        Err(orchestrator::Error::NotFound { .. }) => defs.push(Definition::sdlc()),
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    if let Some(dir) = &cfg.definitions {
        defs.extend(read_definitions(dir)?);
    }
    // Workflows stored before the status counters existed are counted into
    // them, once (every later start finds them seeded and returns at once).
    // Failing that only costs figures, never the start.
    match orchestrator::ops::counts::seed_counts(engine.store(), &mut conn).await {
        Ok(Some(n)) => tracing::info!(workflows = n, "status counters seeded"),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot seed the status counters; /metrics may undercount workflows stored before them (tried again at the next start)");
        }
    }
    // `--watch` first: the operator's types are never crowded out.
    for t in &cfg.watch {
        engine.watch(t)?;
    }
    for d in &defs {
        let (stored, created) = engine.register_definition(&mut conn, d).await?;
        if created {
            tracing::info!(definition = %stored.name, version = stored.version, "registered definition");
        }
    }
    // Definitions registered before (by any replica, or before the cap
    // existed) are watched up to the cap; one that does not fit is named,
    // and its workflows are refused at creation rather than left waiting.
    for d in engine.catalog().latest_all(&mut conn).await? {
        if let Err(e) = engine.watch_definition(&d) {
            tracing::error!(definition = %d.name, error = %e, "definition not watched: raise --max-agent-types to run it");
        }
    }

    let pool = deadpool_redis::Pool::builder(
        deadpool_redis::Manager::new_with_config(
            connector.client().get_connection_info().clone(),
            redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(Duration::from_secs(10))),
        )
        .map_err(Error::Redis)?,
    )
    .max_size(cfg.pool_size)
    .wait_timeout(Some(cfg.pool_wait))
    .create_timeout(Some(cfg.pool_wait))
    .recycle_timeout(Some(cfg.pool_wait))
    .runtime(deadpool_redis::Runtime::Tokio1)
    .build()
    .map_err(|e| Error::Config(format!("redis pool: {e}")))?;

    let consumer = cfg
        .consumer
        .clone()
        .unwrap_or_else(|| consumer_id(Some("orchestrator")));
    let settings = ConsumerSettings {
        consumer: consumer.clone(),
        batch: cfg.result_batch,
        block: cfg.result_block,
        claim_idle: cfg.claim_idle,
        parallelism: cfg.parallelism,
    };
    let tracker = TaskTracker::new();
    // Loops stop on their own token: the HTTP server drains first.
    let loops_stop = CancellationToken::new();
    // Each loop is marked running while its task lives: `/ready` names one
    // that ended.
    let loops = Arc::new(api::Loops::default());
    // One results consumer for every watched type, on one connection of
    // its own for its blocking reads: a type watched later joins its set.
    tracker.spawn(loops.track(
        "results",
        results::consume(
            engine.clone(),
            conn.clone(),
            connector.conn("results", settings.block + Duration::from_secs(5)),
            watch_rx,
            settings,
            loops_stop.clone(),
        ),
    ));
    tracker.spawn(loops.track(
        "timers",
        timers::run(
            engine.clone(),
            conn.clone(),
            cfg.timer_tick,
            loops_stop.clone(),
        ),
    ));
    tracker.spawn(loops.track(
        "sweep",
        sweep::run(
            engine.clone(),
            conn.clone(),
            SweepSettings {
                interval: cfg.sweep_interval,
                grace: cfg.sweep_grace,
            },
            loops_stop.clone(),
        ),
    ));
    tracker.spawn(retention::run_retention(
        engine.store().clone(),
        conn.clone(),
        consumer.clone(),
        cfg.retention_settings(),
        loops_stop.clone(),
    ));
    tracker.spawn(retention::run_housekeeping(
        engine.keys().clone(),
        conn.clone(),
        consumer.clone(),
        cfg.housekeeping_settings(),
        loops_stop.clone(),
    ));
    let (changes_tx, _) = broadcast::channel(1024);
    tracker.spawn(loops.track(
        "changes",
        changes::run(
            connector.client().clone(),
            engine.keys().workflow_changes(),
            changes_tx.clone(),
            loops_stop.clone(),
        ),
    ));

    let access = api::Access::new(tokens, addr, &cfg.allowed_hosts);
    let fleet = orchestrator::ops::fleet::FleetSettings {
        wedged_after: cfg.wedged_after,
        keep_gone: cfg.keep_gone,
    };
    let state = AppState::new(engine.clone(), pool, access, changes_tx, stop.clone())
        .with_liveness(fleet, loops)
        .with_metrics_token_required(cfg.metrics_token_required);
    let app = transport::bound_requests(api::router(state, cfg.max_body), cfg.request_bounds());
    tracing::info!(
        %addr,
        redis = %connector.redacted_url(),
        namespace = %cfg.redis.namespace,
        consumer = %consumer,
        tokens = token_count,
        max_connections = cfg.max_connections,
        "orchestrator serving"
    );
    let full = tokio::spawn(transport::serve(
        listener,
        app,
        cfg.connection_bounds(),
        stop.clone(),
    ));
    early_stop.cancel();
    let _ = early.await;
    let _ = full.await;
    tracing::info!("HTTP server stopped; draining the loops");
    loops_stop.cancel();
    tracker.close();
    if tokio::time::timeout(cfg.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?cfg.shutdown_grace, "loops still busy after the grace period; exiting (unacknowledged results are read again by the next orchestrator)");
    }
    Ok(())
}
