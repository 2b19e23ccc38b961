//! `GET /`: the operators' dashboard, one self-contained HTML page (its CSS
//! and JavaScript inline, nothing fetched from elsewhere), embedded in the
//! binary so there is no build step and nothing to deploy beside it.
//!
//! The page itself holds no data and is served without the token; every
//! call it makes goes to `/api/v1` with the token the operator typed in.

use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

const PAGE: &str = include_str!("dashboard.html");

/// The page's one inline script.
fn script(page: &str) -> Option<&str> {
    let start = page.find("<script>")? + "<script>".len();
    let len = page[start..].find("</script>")?;
    Some(&page[start..start + len])
}

/// The content security policy: only the page's own script, by its hash,
/// runs. Even markup slipped into the page by a dead letter's text (the
/// page only ever sets text, but should that change) could not run code,
/// load anything or reach the token.
static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    let hash = script(PAGE)
        .map(|s| base64::engine::general_purpose::STANDARD.encode(Sha256::digest(s.as_bytes())))
        .unwrap_or_default();
    HeaderValue::from_str(&format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
});

/// `GET /` — the dashboard.
pub async fn page() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_SECURITY_POLICY, CSP.clone()),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        PAGE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_exactly_the_one_inline_script() {
        assert_eq!(
            PAGE.matches("<script").count(),
            1,
            "one inline script: the policy allows it by its hash"
        );
        let script = script(PAGE).expect("the page has its script");
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script));
        let csp = CSP.to_str().unwrap_or_default();
        assert!(
            csp.contains(&format!("script-src 'sha256-{hash}'")),
            "{csp}"
        );
        assert!(!csp.contains("script-src 'unsafe"), "{csp}");
    }
}
