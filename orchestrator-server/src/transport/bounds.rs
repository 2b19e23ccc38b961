//! The per-request bounds, as one middleware around the whole router: the
//! body must arrive within the body timeout, the answer within the request
//! timeout, a declared length within the body limit. Each answers with the
//! API's JSON errors.

use crate::api::error::ApiError;
use axum::BoxError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// What [`bounded`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct RequestBounds {
    /// Longest time to receive the whole body.
    pub body_timeout: Duration,
    /// Longest time from the head's arrival to the answer's head.
    pub request_timeout: Duration,
    /// Largest body, in bytes.
    pub max_body: usize,
}

/// The middleware (`axum::middleware::from_fn_with_state`).
///
/// The body is not read here: it is handed on with a deadline, so only a
/// handler reads it, after authentication (an unauthenticated client makes
/// the server buffer nothing). A body still arriving at the deadline fails
/// its read, and the answer becomes 408 `body_timeout` with the connection
/// closed. The request timeout counts from the head's arrival to the
/// answer's head, so an event stream, which answers at once and streams
/// afterwards, is not cut by it (the idle timeout and the connection cap
/// bound those).
pub async fn bounded(State(b): State<RequestBounds>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > b.max_body as u64) {
        return closing(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the request body is over the limit of {} bytes (--max-body)",
                b.max_body
            ),
        ));
    }
    let late = Arc::new(AtomicBool::new(false));
    let req = if declared == Some(0) {
        req
    } else {
        let (parts, body) = req.into_parts();
        let body = with_deadline(body, Instant::now() + b.body_timeout, late.clone());
        Request::from_parts(parts, body)
    };
    let answer = tokio::time::timeout(b.request_timeout, next.run(req)).await;
    if late.load(Ordering::SeqCst) {
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
    match answer {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout = ?b.request_timeout, "request not answered within the request timeout");
            closing(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                format!(
                    "no answer within the request timeout of {}",
                    humantime::format_duration(b.request_timeout)
                ),
            ))
        }
    }
}

/// The body's read failed at its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimeout;

/// `body`, failing at `deadline` if it is not all in by then (and saying
/// so in `late`).
fn with_deadline(body: Body, deadline: Instant, late: Arc<AtomicBool>) -> Body {
    let data = body.into_data_stream();
    let chunks = futures::stream::unfold(Some(data), move |data| {
        let late = late.clone();
        async move {
            let mut data = data?;
            match tokio::time::timeout_at(deadline, data.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(data))),
                Ok(Some(Err(e))) => Some((Err(BoxError::from(e)), None)),
                Ok(None) => None,
                Err(_) => {
                    late.store(true, Ordering::SeqCst);
                    Some((Err(BoxError::from(BodyTimeout)), None))
                }
            }
        }
    });
    Body::from_stream(chunks)
}
/// The error, with `Connection: close`: the rest of the body is not read, so
/// the connection cannot carry another request.
fn closing(e: ApiError) -> Response {
    let mut r = e.into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}
