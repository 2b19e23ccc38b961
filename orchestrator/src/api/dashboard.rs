//! `GET /`: the operators' dashboard, one self-contained HTML page (its CSS
//! and JavaScript inline, nothing fetched from elsewhere), embedded in the
//! binary so there is no build step and nothing to deploy beside it.
//!
//! The page itself holds no data and is served without the token; every
//! call it makes goes to `/api/v1` with the token the operator typed in.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("dashboard.html");

/// `GET /` — the dashboard.
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Only this page's own inline code and same-origin calls: a
            // dead letter's text shown on the page cannot load or run
            // anything.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                 frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}
