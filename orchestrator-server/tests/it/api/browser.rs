//! Browser attacks, performed for real against the server: a cross-site
//! form's `text/plain` POST (CSRF), a cross-site `fetch` with a JSON body,
//! and a page on a rebound DNS name reaching the server (`Host`).

use super::*;

/// A workflow that waits for an approval (so a cancel would change it).
async fn waiting(api: &Api) -> String {
    api.define_gated().await;
    api.create("gated", json!({})).await
}

/// Asserts workflow `id` is still waiting, uncancelled.
async fn not_cancelled(api: &Api, id: &str) {
    let v = api.get_json(&format!("/workflows/{id}"), 200).await;
    assert_eq!(v["stages"][0]["status"], "awaiting_approval", "{v}");
    assert!(v["ending"].is_null(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_form_post_is_refused_415_and_cancels_nothing() {
    let api = Api::start().await;
    let id = waiting(&api).await;
    let cancel = api.url(&format!("/workflows/{id}/cancel"));
    // What an HTML form on another site can send: text/plain, urlencoded,
    // multipart; or a POST with no body at all. With the operator's token
    // too, so the content type alone is what refuses it.
    for (content_type, body) in [
        (Some("text/plain"), "{\"reason\": \"csrf\"}"),
        (Some("application/x-www-form-urlencoded"), "reason=csrf"),
        (Some("multipart/form-data; boundary=x"), "--x--"),
        (None, ""),
    ] {
        for client in [reqwest::Client::new(), http_as(OPERATOR)] {
            let mut r = client.post(&cancel).body(body);
            if let Some(t) = content_type {
                r = r.header("content-type", t);
            }
            let m = refused(r.send().await.unwrap(), 415, "unsupported_media_type").await;
            assert!(m.contains("application/json"), "{content_type:?}: {m}");
        }
    }
    not_cancelled(&api, &id).await;
    // The definitions route takes YAML too, but nothing a form can send.
    let r = api
        .post_raw("/definitions", Some("text/plain"), GATED)
        .await;
    refused(r, 415, "unsupported_media_type").await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_json_post_is_refused_403_and_cancels_nothing() {
    let api = Api::start().await;
    let id = waiting(&api).await;
    let cancel = api.url(&format!("/workflows/{id}/cancel"));
    let own = api.o.url.clone();
    let other_port = format!("http://127.0.0.1:{}", free_port());
    for (header, value) in [
        ("origin", "http://evil.example"),
        ("origin", "null"),
        ("origin", other_port.as_str()),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ] {
        let r = api
            .http
            .post(&cancel)
            .header(header, value)
            .json(&json!({ "reason": "csrf" }))
            .send()
            .await
            .unwrap();
        let m = refused(r, 403, "cross_site").await;
        assert!(
            m.contains(value) || m.contains("site"),
            "{header} {value}: {m}"
        );
    }
    // Reads and event streams too.
    let r = api
        .http
        .get(api.url("/events"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    refused(r, 403, "cross_site").await;
    not_cancelled(&api, &id).await;
    // A link followed from another site opens the dashboard page (it holds
    // no data), and nothing else.
    for (path, status) in [("/", 200), ("/api/v1/workflows", 403)] {
        let r = api
            .http
            .get(format!("{}{path}", api.o.url))
            .header("sec-fetch-site", "cross-site")
            .header("sec-fetch-mode", "navigate")
            .header("sec-fetch-dest", "document")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
    }
    // The server's own page (same origin) may.
    let r = api
        .http
        .post(&cancel)
        .header("origin", own)
        .header("sec-fetch-site", "same-origin")
        .json(&json!({ "reason": "from the dashboard" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_host_name_is_refused_on_every_route() {
    let api = Api::start().await;
    let port = api.o.url.rsplit(':').next().unwrap().to_owned();
    let evil = format!("evil.example:{port}");
    for path in [
        "/api/v1/workflows",
        "/api/v1/events",
        "/",
        "/health",
        "/api/v1/openapi.json",
    ] {
        let r = api
            .http
            .get(format!("{}{path}", api.o.url))
            .header("host", &evil)
            .send()
            .await
            .unwrap();
        let m = refused(r, 421, "misdirected").await;
        assert!(m.contains("evil.example"), "{path}: {m}");
    }
    // The server's own names answer.
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let r = api
            .http
            .get(api.url("/workflows"))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_host_is_answered() {
    let api = Api::start_with(&["--allowed-host", "orch.example"]).await;
    let port = api.o.url.rsplit(':').next().unwrap().to_owned();
    let r = api
        .http
        .get(api.url("/workflows"))
        .header("host", format!("orch.example:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = api
        .http
        .get(api.url("/workflows"))
        .header("host", format!("other.example:{port}"))
        .send()
        .await
        .unwrap();
    refused(r, 421, "misdirected").await;
    // Behind a proxy that rewrites Host, a page of the allowed name may
    // still call; another origin may not.
    for (origin, status) in [("https://orch.example", 200), ("https://evil.example", 403)] {
        let r = api
            .http
            .get(api.url("/workflows"))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{origin}");
    }
    api.shutdown().await;
}
