//! `/api/v1/definitions...`: register (YAML or JSON), list, get.

use super::AppState;
use super::error::{ApiError, ApiResult, body_rejection};
use super::extract::ApiQuery;
use crate::definition::Definition;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A definition with its plan, as the API shows it.
#[derive(Debug, Serialize)]
pub struct DefinitionView {
    #[serde(flatten)]
    definition: Definition,
    /// Stage names by parallel level.
    levels: Vec<Vec<String>>,
}

fn view(def: &Definition) -> ApiResult<DefinitionView> {
    let plan = def.validate().map_err(crate::error::Error::from)?;
    Ok(DefinitionView {
        definition: def.clone(),
        levels: plan.levels,
    })
}

/// `POST /definitions` — body YAML (`application/yaml`, `text/yaml`) or JSON
/// (`application/json`). 201 with the new version, 200 if it equals the
/// latest version already registered.
pub async fn create(State(state): State<AppState>, req: Request) -> ApiResult<Response> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let body = Bytes::from_request(req, &state)
        .await
        .map_err(|r| body_rejection(r.status(), r.body_text()))?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the definition is not UTF-8"))?;
    let parsed = match content_type.as_str() {
        "application/json" => Definition::from_json(text),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => {
            Definition::from_yaml(text)
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the definition as application/json or application/yaml",
            ));
        }
    };
    let def = parsed.map_err(|e| match e {
        crate::DefinitionError::Parse(m) => {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_definition", m)
        }
        other => crate::error::Error::from(other).into(),
    })?;
    let mut conn = state.conn().await?;
    let (stored, created) = state.engine().catalog().register(&mut conn, &def).await?;
    state.engine().watch_definition(&stored);
    let body = view(&stored)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let loc = HeaderValue::from_str(&format!(
        "/api/v1/definitions/{}?version={}",
        stored.name, stored.version
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("/api/v1/definitions"));
    Ok((status, [(header::LOCATION, loc)], Json(body)).into_response())
}

/// One line of the definitions list.
#[derive(Debug, Serialize)]
pub struct DefinitionSummary {
    name: String,
    /// Latest version.
    version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    stages: usize,
    agents: Vec<String>,
}

/// The definitions list.
#[derive(Debug, Serialize)]
pub struct DefinitionList {
    items: Vec<DefinitionSummary>,
}

fn summary(d: &Arc<Definition>) -> DefinitionSummary {
    let mut agents: Vec<String> = d.stages.iter().map(|s| s.agent.clone()).collect();
    agents.sort();
    agents.dedup();
    DefinitionSummary {
        name: d.name.clone(),
        version: d.version,
        description: d.description.clone(),
        stages: d.stages.len(),
        agents,
    }
}

/// `GET /definitions` — every definition at its latest version.
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<DefinitionList>> {
    let mut conn = state.conn().await?;
    let defs = state.engine().catalog().latest_all(&mut conn).await?;
    Ok(Json(DefinitionList {
        items: defs.iter().map(summary).collect(),
    }))
}

/// Query of `GET /definitions/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    version: Option<u32>,
}

/// `GET /definitions/{name}?version=` — one version (the latest by default).
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<GetQuery>,
) -> ApiResult<Json<DefinitionView>> {
    let mut conn = state.conn().await?;
    let def = state
        .engine()
        .catalog()
        .get(&mut conn, &name, q.version)
        .await
        .map_err(|e| match e {
            crate::error::Error::Invalid(_) => ApiError::not_found("definition", &name),
            other => other.into(),
        })?;
    Ok(Json(view(&def)?))
}
