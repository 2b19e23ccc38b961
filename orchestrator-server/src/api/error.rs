//! API errors: JSON `{"error": {"code", "message"}}` with a stable `code`.
//! Bad input is a 4xx naming the problem; only a broken store is a 5xx.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orchestrator::Error;
use serde::{Deserialize, Serialize};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`not_found`, `malformed_json`, …).
    pub code: &'static str,
    /// For people.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 404 for `what` `id`.
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} {id:?} not found"),
        )
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

/// The body of every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiErrorBody {
    /// What went wrong.
    pub error: ApiErrorDetail,
}

/// The `error` of an [`ApiErrorBody`].
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiErrorDetail {
    /// Stable machine-readable code: `malformed_json`, `bad_query`,
    /// `bad_request`, `bad_body`, `malformed_definition`, `too_deep` (400),
    /// `unauthorized` (401), `forbidden`, `cross_site` (403), `not_found`,
    /// `no_result`, `no_route` (404),
    /// `method_not_allowed` (405), `conflict` (409), `body_too_large` (413),
    /// `unsupported_media_type` (415), `invalid`, `invalid_body`,
    /// `invalid_definition` (422), `internal` (500), `unavailable`,
    /// `unconfirmed`, `not_ready` (503).
    #[schema(example = "not_found")]
    pub code: String,
    /// For people.
    #[schema(example = "workflow \"wf-1\" not found")]
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ApiErrorBody {
            error: ApiErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "not_found", msg),
            Error::Conflict(_) => Self::conflict(msg),
            Error::Invalid(_) | Error::Protocol(_) => Self::invalid(msg),
            Error::Definition(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_definition", msg)
            }
            Error::Unconfirmed { .. } => {
                tracing::warn!(error = %msg, "create unconfirmed: redis unavailable");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unconfirmed", msg)
            }
            Error::Redis(_) | Error::Sdk(_) => {
                tracing::warn!(error = %msg, "request failed: redis unavailable");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg)
            }
            _ => {
                tracing::error!(error = %msg, "request failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg)
            }
        }
    }
}

impl From<deadpool_redis::PoolError> for ApiError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        match e {
            deadpool_redis::PoolError::Backend(e) => Error::Redis(e).into(),
            other => {
                let msg = format!("redis connection pool: {other}");
                tracing::warn!(error = %msg, "request failed: redis unavailable");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg)
            }
        }
    }
}

impl From<agent_sdk::Error> for ApiError {
    fn from(e: agent_sdk::Error) -> Self {
        match e {
            agent_sdk::Error::Protocol(p) => Self::invalid(p.to_string()),
            other => Error::Sdk(other).into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let text = r.body_text();
        match r {
            JsonRejection::JsonSyntaxError(_) => {
                Self::new(StatusCode::BAD_REQUEST, "malformed_json", text)
            }
            JsonRejection::JsonDataError(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", text)
            }
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ),
            other => body_rejection(other.status(), other.body_text()),
        }
    }
}

/// A body that could not be read: too large (413) or cut off (400).
pub fn body_rejection(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "body_too_large", text)
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_body", text)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_query", r.body_text())
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
