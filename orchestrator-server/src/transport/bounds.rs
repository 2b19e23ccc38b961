//! The per-request bounds, as one middleware around the whole router: the
//! body must arrive within the body timeout (and the body limit), then the
//! handler must answer within the request timeout. Both answer with the
//! API's JSON errors.

use crate::api::error::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use std::time::Duration;

/// What [`bounded`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct RequestBounds {
    /// Longest time to receive the whole body.
    pub body_timeout: Duration,
    /// Longest time for the handler to answer once the body is in.
    pub request_timeout: Duration,
    /// Largest body, in bytes.
    pub max_body: usize,
}

/// The middleware (`axum::middleware::from_fn_with_state`).
///
/// The body is read here, whole, before the handler runs: every route takes
/// a small JSON or YAML body (or none), so nothing streams, and a body that
/// trickles in is cut at the body timeout instead of holding a handler.
/// The request timeout then bounds the time to the answer's head: an event
/// stream answers at once and streams afterwards, so it is not cut by it
/// (the idle timeout and the connection cap bound those).
pub async fn bounded(State(b): State<RequestBounds>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > b.max_body as u64) {
        return closing(too_large(b.max_body));
    }
    let body = match tokio::time::timeout(b.body_timeout, read(body, b.max_body)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return closing(e),
        Err(_) => {
            tracing::debug!(timeout = ?b.body_timeout, "request body not received in time; closing the connection");
            return closing(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within the body timeout of {}",
                    humantime::format_duration(b.body_timeout)
                ),
            ));
        }
    };
    let req = Request::from_parts(parts, Body::from(body));
    match tokio::time::timeout(b.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout = ?b.request_timeout, "request not answered within the request timeout");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                format!(
                    "no answer within the request timeout of {}",
                    humantime::format_duration(b.request_timeout)
                ),
            )
            .into_response()
        }
    }
}

/// Reads `body` whole, refusing it past `max` bytes.
async fn read(body: Body, max: usize) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("the request body could not be read: {e}"),
            )
        })?;
        if buf.len() + chunk.len() > max {
            return Err(too_large(max));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is over the limit of {max} bytes (--max-body)"),
    )
}

/// The error, with `Connection: close`: the rest of the body is not read, so
/// the connection cannot carry another request.
fn closing(e: ApiError) -> Response {
    let mut r = e.into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}
