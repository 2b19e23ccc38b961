//! The API token: with `--api-token`, every `/api/v1` call needs it as a
//! bearer token; the probes stay open.

use super::*;

const TOKEN: &str = "s3cret-token-0123456789";

/// Calls of every kind the token guards.
const GUARDED: [(&str, &str); 6] = [
    ("GET", "/workflows"),
    ("POST", "/workflows"),
    ("GET", "/definitions"),
    ("GET", "/agents"),
    ("GET", "/events"),
    ("GET", "/workflows/x/events"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_without_the_right_bearer_token_are_401() {
    let api = Api::start_with(&["--api-token", TOKEN]).await;
    for (method, path) in GUARDED {
        let req = |auth: Option<&str>| {
            let mut r = api.http.request(method.parse().unwrap(), api.url(path));
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r
        };
        let r = req(None).send().await.unwrap();
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let m = refused(r, 401, "unauthorized").await;
        assert!(m.contains("missing"), "{m}");
        let r = req(Some("Bearer wrong-token-0123456789"))
            .send()
            .await
            .unwrap();
        refused(r, 401, "unauthorized").await;
        // The token itself, not as a bearer token.
        let r = req(Some(TOKEN)).send().await.unwrap();
        refused(r, 401, "unauthorized").await;
    }
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_opens_the_api_and_probes_need_none() {
    let api = Api::start_with(&["--api-token", TOKEN]).await;
    let r = api
        .http
        .get(api.url("/workflows"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Probes stay open for load balancers.
    let r = api.http.get(format!("{}/health", api.o.url)).send();
    assert_eq!(r.await.unwrap().status(), 200);
    api.shutdown().await;
}
