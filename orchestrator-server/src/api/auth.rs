//! Who may call what: the bearer token and its role on `/api/v1`
//! ([`authenticate`]), and the checks against browser attacks on every
//! route ([`browser_guard`]): a foreign `Host` (DNS rebinding), a
//! cross-site request (CSRF), a POST whose body a cross-site form could
//! have sent.
//!
//! The role each operation needs is decided in one place,
//! [`required_role`], which both the middleware and the OpenAPI document
//! use.

use super::AppState;
use super::error::{ApiError, ApiErrorBody};
use crate::tokens::{Caller, Role, Tokens};
use axum::Extension;
use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use std::net::{IpAddr, SocketAddr};

/// What the server lets in: its tokens, and the host names it answers.
#[derive(Debug, Clone)]
pub struct Access {
    tokens: Tokens,
    listen: SocketAddr,
    /// `--allowed-host`, lowercased; with a port when one was given.
    hosts: Vec<String>,
}

impl Access {
    /// Tokens, the address the server listens on, and `--allowed-host`.
    pub fn new(tokens: Tokens, listen: SocketAddr, hosts: &[String]) -> Self {
        Self {
            tokens,
            listen,
            hosts: hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether `origin` names a host given with `--allowed-host`: the
    /// server's public name when a proxy in front rewrites `Host`.
    fn origin_allowed(&self, origin: &str) -> bool {
        let Some((_, authority)) = origin.split_once("://") else {
            return false;
        };
        let authority = authority.to_ascii_lowercase();
        let name = host_name(&authority);
        name.is_some()
            && self
                .hosts
                .iter()
                .any(|h| *h == authority || (!h.contains(':') && host_name(h) == name))
    }

    /// Whether `host` (a `Host` header) names this server. IP literals
    /// cannot be rebound (a rebinding page's `Host` is the attacker's
    /// name), so one is accepted when it is the listen address, or any when
    /// listening on all addresses; names only when configured, and
    /// `localhost` when listening on loopback. Ports are not compared: a
    /// proxy or a container's port mapping changes them, and the name is
    /// what a rebinding attack cannot fake.
    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let Some(name) = host_name(&host) else {
            return false;
        };
        if let Ok(ip) = name.parse::<IpAddr>() {
            let l = self.listen.ip();
            return l.is_unspecified() || ip == l || (l.is_loopback() && ip.is_loopback());
        }
        if self.listen.ip().is_loopback() && (name == "localhost" || name.ends_with(".localhost")) {
            return true;
        }
        self.hosts.iter().any(|h| {
            *h == host || (host_name(h).as_deref() == Some(name.as_str()) && !h.contains(':'))
        })
    }
}

/// The host name of `host[:port]` (brackets of an IPv6 literal removed),
/// lowercased; `None` when it is not one.
pub fn host_name(host: &str) -> Option<String> {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        ip.parse::<std::net::Ipv6Addr>().ok()?;
        return Some(ip.to_ascii_lowercase());
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) if is_port(p) => n,
            Some(_) => return None,
            None => host,
        }
    };
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    ok.then(|| name.to_ascii_lowercase())
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// The role an operation needs: reads are for every role; creating
/// definitions and raw tasks to an agent type for `admin` (a raw task
/// reaches an agent without its workflow's stages, approvals included);
/// every other POST (start a workflow, its actions, dead-letter replay
/// and purge) and deleting an ended workflow for `operator`. `path` is the route's pattern, with or
/// without `/api/v1`. Anything not listed needs `admin`, so a route added
/// without thought is closed rather than open.
pub fn required_role(method: &Method, path: &str) -> Role {
    let path = path.strip_prefix("/api/v1").unwrap_or(path);
    match *method {
        Method::GET | Method::HEAD => Role::Viewer,
        Method::POST => match path {
            "/definitions" | "/tasks/{agent_type}" => Role::Admin,
            "/workflows"
            | "/workflows/{id}/cancel"
            | "/workflows/{id}/abort"
            | "/workflows/{id}/stages/{stage}/approve"
            | "/workflows/{id}/stages/{stage}/reject"
            | "/workflows/{id}/stages/{stage}/replay"
            | "/dlq/{agent_type}/replay"
            | "/dlq/{agent_type}/purge" => Role::Operator,
            _ => Role::Admin,
        },
        Method::DELETE => match path {
            "/workflows/{id}" => Role::Operator,
            _ => Role::Admin,
        },
        _ => Role::Admin,
    }
}

/// The token of an `Authorization` header: the scheme `Bearer` in any case
/// (RFC 9110 makes schemes case-insensitive), then the token.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(char::is_whitespace)?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl AppState {
    /// The caller whose bearer token `headers` carry, if any is known (for
    /// a route outside `/api/v1` that takes a token, such as `/metrics`).
    pub fn caller(&self, headers: &HeaderMap) -> Option<&Caller> {
        self.inner.access.tokens.find(bearer(headers)?)
    }
}

/// `/api/v1` but its document: a POST must say `Content-Type:
/// application/json` (415, empty bodies too: a cross-site form can only
/// send `text/plain`, urlencoded or multipart); then a known token (401
/// otherwise) whose role is enough for the operation (403 otherwise). The
/// caller goes into the request's extensions for the handlers' audit
/// records. A route layer: it runs only for a route and method that exist,
/// so a POST to a GET route stays 405.
pub async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    refuse_non_json_post(&req)?;
    let Some(given) = bearer(req.headers()) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token: send Authorization: Bearer <token>",
        ));
    };
    let Some(caller) = state.inner.access.tokens.find(given).cloned() else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong bearer token",
        ));
    };
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    let needed = required_role(req.method(), &path);
    if caller.role < needed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} {path} needs the {needed} role; token {:?} has the {} role",
                req.method(),
                caller.name,
                caller.role
            ),
        ));
    }
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// Media types a POST may carry: JSON, and YAML for definitions. None of
/// them is one a cross-site form or a "simple" cross-site `fetch` can send
/// without a CORS preflight, which this server never answers.
fn media_type_allowed(path: &str, media: &str) -> bool {
    let path = path.strip_prefix("/api/v1").unwrap_or(path);
    media == "application/json"
        || (path == "/definitions"
            && matches!(
                media,
                "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml"
            ))
}

/// Every route: the `Host` must name this server (421 otherwise: DNS
/// rebinding), and the request must not come from another site (403
/// `cross_site`: an `Origin` other than this server's, or `Sec-Fetch-Site`
/// `cross-site` or `same-site`, since another port of `localhost` is the
/// same site). The POST content type is checked by [`authenticate`], on
/// the routes that take a POST.
pub async fn browser_guard(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    let Some(host) = host else {
        return Err(misdirected("the request names no Host"));
    };
    if !state.inner.access.host_allowed(&host) {
        return Err(misdirected(&format!(
            "Host {host:?} is not a name of this server (a DNS rebinding?); \
             an operator can allow it with --allowed-host"
        )));
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("").to_ascii_lowercase();
        if !matches!(site.as_str(), "same-origin" | "none") && !page_navigation(&req) {
            return Err(cross_site(format!(
                "a {site} request (Sec-Fetch-Site): this API answers its own pages and non-browser clients only"
            )));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !same_origin(origin, &host) && !state.inner.access.origin_allowed(origin) {
            return Err(cross_site(format!(
                "Origin {origin:?} is not this server's origin"
            )));
        }
    }
    Ok(next.run(req).await)
}

fn refuse_non_json_post(req: &Request) -> Result<(), ApiError> {
    let headers = req.headers();
    if req.method() == Method::POST {
        let media = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let path = req
            .extensions()
            .get::<MatchedPath>()
            .map_or(req.uri().path(), MatchedPath::as_str);
        if !media_type_allowed(path, &media) {
            let given = if media.is_empty() {
                "no Content-Type".to_owned()
            } else {
                format!("Content-Type {media}")
            };
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "a POST must carry Content-Type: application/json (even with an empty body); got {given}"
                ),
            ));
        }
    }
    Ok(())
}

/// A person following a link to the dashboard page from elsewhere: a
/// top-level GET of `/`, which holds no data and changes nothing (its
/// calls to the API are same-origin).
fn page_navigation(req: &Request) -> bool {
    let h = req.headers();
    let is = |name: &str, want: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(want))
    };
    req.method() == Method::GET
        && req.uri().path() == "/"
        && is("sec-fetch-mode", "navigate")
        && is("sec-fetch-dest", "document")
}

/// Whether `origin` (`scheme://host[:port]`) is the origin of a page
/// served by this server under `host` (the request's `Host`).
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let with_port = |a: &str| -> Option<(String, String)> {
        let name = host_name(a)?;
        let port = match a.rsplit_once(':') {
            Some((_, p)) if is_port(p) && !a.ends_with(']') => p.to_owned(),
            _ => default.to_owned(),
        };
        Some((name, port))
    };
    match (with_port(authority), with_port(host)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Records an action in the audit trail (the log target `audit`): who,
/// what, on what. Workflow actions are also recorded in the workflow's own
/// event log (`by`).
pub fn audit(caller: &Caller, action: &str, on: &str) {
    tracing::info!(target: "audit", actor = %caller.name, role = %caller.role, action, on, "api action");
}

fn misdirected(message: &str) -> ApiError {
    ApiError::new(StatusCode::MISDIRECTED_REQUEST, "misdirected", message)
}

fn cross_site(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "cross_site", message)
}

/// Who am I
///
/// `GET /whoami` — the name and role of the token the request carries (the
/// dashboard shows only what that role may do).
#[utoipa::path(
    get,
    path = "/whoami",
    tag = "health",
    operation_id = "whoami",
    responses(
        (status = 200, description = "The caller", body = Caller),
        (status = 500, description = "`internal`: the request was not authenticated", body = ApiErrorBody),
    )
)]
pub async fn whoami(caller: Option<Extension<Caller>>) -> Result<Json<Caller>, ApiError> {
    caller.map(|Extension(c)| Json(c)).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request was not authenticated",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn access(listen: &str, hosts: &[&str]) -> Access {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        Access::new(Tokens::default(), listen.parse().unwrap(), &hosts)
    }

    #[test]
    fn hosts_are_the_listen_address_loopback_names_and_configured_ones() {
        let a = access("127.0.0.1:8080", &["orch.example", "lb.example:443"]);
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "orch.example",
            "orch.example:9000",
            "lb.example:443",
        ] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "lb.example:8443",
            "10.0.0.1:8080",
            "127.0.0.1.evil.example",
            "",
            "a b",
        ] {
            assert!(!a.host_allowed(bad), "{bad}");
        }
        let any = access("0.0.0.0:8080", &[]);
        assert!(any.host_allowed("10.1.2.3:8080"));
        assert!(!any.host_allowed("localhost:8080"));
        assert!(!any.host_allowed("evil.example:8080"));
    }

    #[test]
    fn origins_match_scheme_host_and_port() {
        assert!(same_origin("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(same_origin("http://localhost", "localhost:80"));
        assert!(same_origin("https://orch.example", "orch.example"));
        assert!(!same_origin("http://evil.example", "127.0.0.1:8080"));
        assert!(!same_origin("http://127.0.0.1:3000", "127.0.0.1:8080"));
        assert!(!same_origin("null", "127.0.0.1:8080"));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for (value, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER   abc ", Some("abc")),
            ("Basic abc", None),
            ("abc", None),
            ("Bearer ", None),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer(&h), want, "{value}");
        }
    }

    #[test]
    fn roles_of_operations() {
        assert_eq!(
            required_role(&Method::GET, "/api/v1/workflows"),
            Role::Viewer
        );
        assert_eq!(
            required_role(&Method::POST, "/workflows/{id}/cancel"),
            Role::Operator
        );
        assert_eq!(
            required_role(&Method::POST, "/api/v1/tasks/{agent_type}"),
            Role::Admin
        );
        assert_eq!(required_role(&Method::POST, "/definitions"), Role::Admin);
        assert_eq!(required_role(&Method::POST, "/something/new"), Role::Admin);
        assert_eq!(required_role(&Method::DELETE, "/workflows"), Role::Admin);
        assert_eq!(
            required_role(&Method::DELETE, "/api/v1/workflows/{id}"),
            Role::Operator
        );
    }
}
