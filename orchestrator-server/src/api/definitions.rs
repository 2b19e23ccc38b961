//! `/api/v1/definitions...`: register (YAML or JSON), list, get.

use super::AppState;
use super::auth::audit;
use super::doc::formats::Name;
use super::error::{ApiError, ApiErrorBody, ApiResult, body_rejection};
use super::extract::ApiQuery;
use crate::tokens::Caller;
use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orchestrator::Definition;
use orchestrator::ops::stuck::{self, DefinitionWarning};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A definition with its plan, as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DefinitionView {
    #[serde(flatten)]
    definition: Definition,
    /// Stage names by parallel level.
    levels: Vec<Vec<String>>,
    /// On registration only: what is accepted but likely wrong (an agent
    /// type never seen in this namespace); absent when nothing is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<DefinitionWarning>,
}

fn view(def: &Definition) -> ApiResult<DefinitionView> {
    let plan = def.validate().map_err(orchestrator::Error::from)?;
    Ok(DefinitionView {
        definition: def.clone(),
        levels: plan.levels,
        warnings: Vec::new(),
    })
}

/// Register a definition
///
/// `POST /definitions` — body YAML (`application/yaml`, `text/yaml`) or JSON
/// (`application/json`). 201 with the new version, 200 if it equals the
/// latest version already registered; either with `warnings` when a stage
/// names an agent type never seen in this namespace (accepted all the same).
#[utoipa::path(
    post,
    path = "/definitions",
    tag = "definitions",
    operation_id = "register_definition",
    request_body(
        description = "The definition (its `version` is assigned, any given is ignored)",
        content(
            (Definition = "application/json"),
            (Definition = "application/yaml"),
            (Definition = "application/x-yaml"),
            (Definition = "text/yaml"),
            (Definition = "text/x-yaml"),
        )
    ),
    responses(
        (status = 201, description = "Registered as a new version", body = DefinitionView,
            headers(("Location" = String, description = "`/api/v1/definitions/{name}?version={version}`"))),
        (status = 200, description = "Equal to the latest version: nothing registered", body = DefinitionView,
            headers(("Location" = String, description = "`/api/v1/definitions/{name}?version={version}`"))),
        (status = 400, description = "`malformed_definition`: not YAML or JSON of a definition; `bad_request`: not UTF-8; `bad_body`: the body could not be read", body = ApiErrorBody),
        (status = 413, description = "`body_too_large`", body = ApiErrorBody),
        (status = 415, description = "`unsupported_media_type`: neither JSON nor YAML", body = ApiErrorBody),
        (status = 422, description = "`invalid_definition`: a cycle, an unknown dependency, a bad name… (the stage is named)", body = ApiErrorBody),
        (status = 500, description = "`internal`: a stored value cannot be read", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> ApiResult<Response> {
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
        orchestrator::DefinitionError::Parse(m) => {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_definition", m)
        }
        other => orchestrator::Error::from(other).into(),
    })?;
    let mut conn = state.conn().await?;
    // Refused (422, naming --max-agent-types) before anything is stored
    // when its agent types would take the orchestrator over its cap.
    let (stored, created) = state.engine().register_definition(&mut conn, &def).await?;
    if created {
        audit(
            &caller,
            "define",
            &format!("{}@{}", stored.name, stored.version),
        );
    }
    // Accepted all the same: workers of a new type may start later.
    let warnings =
        stuck::definition_warnings(&mut conn, state.engine().keys(), &stored, &[]).await?;
    let body = DefinitionView {
        warnings,
        ..view(&stored)?
    };
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DefinitionSummary {
    /// Definition name.
    name: String,
    /// Latest version.
    version: u32,
    /// What the workflow is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    /// How many stages.
    stages: usize,
    /// Agent types its stages run on, sorted.
    agents: Vec<String>,
}

/// The definitions list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DefinitionList {
    /// Every definition at its latest version, by name.
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

/// List definitions
///
/// `GET /definitions` — every definition at its latest version.
#[utoipa::path(
    get,
    path = "/definitions",
    tag = "definitions",
    operation_id = "list_definitions",
    responses(
        (status = 200, description = "The latest version of each", body = DefinitionList),
        (status = 500, description = "`internal`: a stored value cannot be read", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<DefinitionList>> {
    let mut conn = state.conn().await?;
    let defs = state.engine().catalog().latest_all(&mut conn).await?;
    Ok(Json(DefinitionList {
        items: defs.iter().map(summary).collect(),
    }))
}

/// Query of `GET /definitions/{name}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    /// This version (the latest by default).
    #[param(minimum = 1)]
    version: Option<u32>,
}

/// One definition
///
/// `GET /definitions/{name}?version=` — one version (the latest by default)
/// with its parallel levels.
#[utoipa::path(
    get,
    path = "/definitions/{name}",
    tag = "definitions",
    operation_id = "get_definition",
    params(("name" = Name, Path, description = "Definition name"), GetQuery),
    responses(
        (status = 200, description = "The definition and its levels", body = DefinitionView),
        (status = 400, description = "`bad_query`: an unknown parameter or a bad version", body = ApiErrorBody),
        (status = 404, description = "`not_found`: no such definition or version", body = ApiErrorBody),
        (status = 422, description = "`invalid_definition`: the stored definition no longer validates", body = ApiErrorBody),
        (status = 500, description = "`internal`: a stored value cannot be read", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached", body = ApiErrorBody),
    )
)]
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
            orchestrator::Error::Invalid(_) => ApiError::not_found("definition", &name),
            other => other.into(),
        })?;
    Ok(Json(view(&def)?))
}
