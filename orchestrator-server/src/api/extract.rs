//! Extractors whose failures are [`ApiError`]s (JSON with a code) instead of
//! axum's plain-text rejections, and the input limits every JSON body is
//! held to ([`schemas::limits`]): what is accepted here, a worker decodes.

use super::error::ApiError;
use agent_sdk::schemas::limits::{self, LimitError};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

/// `Json<T>` with JSON errors: 400 malformed or nested deeper than
/// [`limits::MAX_DEPTH`] (`too_deep`), 422 wrong shape, 413 too large, 415
/// wrong content type.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| super::error::body_rejection(r.status(), r.body_text()))?;
        check_depth(&bytes)?;
        // Only an object: see `JsonObject`.
        let axum::Json(super::doc::formats::JsonObject(v)) =
            axum::Json::<super::doc::formats::JsonObject<T>>::from_bytes(&bytes)?;
        Ok(Self(v))
    }
}

/// `application/json` or `application/<anything>+json`, as axum's `Json`
/// decides it.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

/// 400 `too_deep` when the body nests deeper than a worker decodes; checked
/// on the bytes before parsing (serde_json alone would allow 128 levels).
fn check_depth(bytes: &[u8]) -> Result<(), ApiError> {
    limits::check_json_depth("the request body", bytes, limits::MAX_DEPTH)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "too_deep", e.to_string()))
}

/// 422 `invalid` when an input (of a workflow or a task) is deeper or
/// larger than [`limits::check_input`] allows: its task would be refused by
/// the worker, so it is refused here, naming the limit.
pub fn check_input(input: &serde_json::Value) -> Result<(), ApiError> {
    limits::check_input("input", input).map_err(|e: LimitError| ApiError::invalid(e.to_string()))
}

/// Like [`ApiJson`], but an empty body means `T::default()` (for actions
/// whose fields are all optional, such as cancel).
#[derive(Debug)]
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| super::error::body_rejection(r.status(), r.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        check_depth(&bytes)?;
        serde_json::from_slice(&bytes).map(Self).map_err(|e| {
            if e.is_data() {
                ApiError::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    e.to_string(),
                )
            } else {
                ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "malformed_json",
                    e.to_string(),
                )
            }
        })
    }
}

/// `Query<T>` with JSON errors (400).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(v))
    }
}
