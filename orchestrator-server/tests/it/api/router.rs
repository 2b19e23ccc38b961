//! The router's own answers: routes and methods it does not have.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_are_refused() {
    let api = Api::start().await;
    refused(api.get("/nope").await, 404, "no_route").await;
    let r = api.http.delete(api.url("/workflows")).send().await.unwrap();
    refused(r, 405, "method_not_allowed").await;
    // A POST to a route without one is 405 too, whatever its content type.
    let r = api.post_raw("/agents", None, "").await;
    refused(r, 405, "method_not_allowed").await;
    api.shutdown().await;
}
