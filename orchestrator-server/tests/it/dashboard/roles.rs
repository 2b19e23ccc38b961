//! The dashboard signed in with a token of each role: it shows the token's
//! name and role, and only the actions the role may take (hidden, not
//! disabled); what it shows works.

use super::{Driver, Page};
use crate::common::{ADMIN, InProcess, OPERATOR, VIEWER, agent_type, http};
use agent_sdk::schemas::{DeadLetter, DeadLetterReason};
use agent_sdk::testing::TestRedis;
use fantoccini::Locator;
use serde_json::{Value, json};

/// Whether `selector` matches an element on the page now.
async fn present(page: &Page, selector: &str) -> bool {
    page.js(
        "return document.querySelector(arguments[0]) !== null",
        vec![json!(selector)],
    )
    .await
        == json!(true)
}

/// Signs the page in with `token` (signing out first if signed in), and
/// waits until it shows who it is.
async fn sign_in(page: &mut Page, url: &str, token: &str, name: &str, role: &str) {
    page.c.goto(&format!("{url}/#/")).await.unwrap();
    page.wait_js(
        "the token form or a signed-in page",
        "return document.querySelector('[data-testid=token-form]') !== null || \
         document.querySelector('[data-testid=whoami]:not([hidden])') !== null",
        vec![],
        |v| v == &json!(true),
    )
    .await;
    if !present(page, "[data-testid=token-form]").await {
        page.click("[data-testid=signout]").await;
        page.wait_for("the token form", "[data-testid=token-form]")
            .await;
    }
    page.c
        .find(Locator::Css("[data-testid=token-input]"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    page.click("[data-testid=token-submit]").await;
    let want = format!("{name} · {role}");
    page.wait_js(
        "the signed-in token's name and role",
        "const e = document.querySelector('[data-testid=whoami]'); \
         return e && !e.hidden ? [e.textContent, e.getAttribute('data-role')] : null",
        vec![],
        |v| v[0] == json!(want) && v[1] == json!(role),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_each_role_only_what_it_may_do() {
    let driver = Driver::start().await;
    let redis = TestRedis::start();
    let o = InProcess::start(&redis, &[]).await;
    let admin = http();
    let gated = "name: gated\nstages:\n  - name: build\n    agent: alpha\n    approval: true\n";
    let r = admin
        .post(o.api("/definitions"))
        .header("content-type", "application/yaml")
        .body(gated)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = admin
        .post(o.api("/workflows"))
        .json(&json!({ "definition": "gated" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let client = agent_sdk::Client::connect(&redis.url(), crate::common::NS)
        .await
        .unwrap();
    let dead = client
        .dead_letters()
        .import(
            &agent_type("alpha"),
            &DeadLetter {
                id: "0-0".into(),
                agent_type: "alpha".into(),
                task_id: Some("t-role".into()),
                workflow_id: None,
                stage: None,
                reason: DeadLetterReason::Permanent,
                error: "kept for the role test".into(),
                attempts: 1,
                worker: "w".into(),
                failed_at_ms: 1,
                source_id: "1-0".into(),
                raw: vec![("body".into(), b"{}".to_vec())],
            },
        )
        .await
        .unwrap();

    let mut page = Page {
        c: driver.browser().await,
        shots: Vec::new(),
    };
    for (token, name, role, acts) in [
        (VIEWER, "test-viewer", "viewer", false),
        (OPERATOR, "test-operator", "operator", true),
        (ADMIN, "test-admin", "admin", true),
    ] {
        sign_in(&mut page, &o.url, token, name, role).await;

        // The workflow waiting for its approval.
        page.js(
            "location.hash = '#/workflows/' + arguments[0]; return null",
            vec![json!(id)],
        )
        .await;
        page.wait_js(
            "the stage awaiting approval",
            "const e = document.querySelector('[data-testid=view-workflow] [data-testid=stage-build]'); \
             return e && e.getAttribute('data-status')",
            vec![],
            |v| v == "awaiting_approval",
        )
        .await;
        for action in ["stage-approve", "stage-reject", "wf-cancel", "wf-abort"] {
            let shown = present(&page, &format!("[data-testid={action}]")).await;
            assert_eq!(shown, acts, "{role}: {action} shown: {shown}");
        }
        page.shot(&format!("role-{role}-workflow")).await;

        // The dead letters of alpha, and the one in full.
        page.js("location.hash = '#/dlq/alpha'; return null", vec![])
            .await;
        page.wait_for(
            "the dead letter row",
            "[data-testid=dlq-items] [data-testid=dlq-show]",
        )
        .await;
        for action in [
            "dlq-replay",
            "dlq-purge",
            "dlq-replay-all",
            "dlq-purge-all",
            "dlq-replay-selected",
            "dlq-check-all",
        ] {
            let shown = present(&page, &format!("[data-testid={action}]")).await;
            assert_eq!(shown, acts, "{role}: {action} shown: {shown}");
        }
        page.js(
            "location.hash = '#/dlq/alpha/' + arguments[0]; return null",
            vec![json!(dead)],
        )
        .await;
        page.wait_for("the dead letter in full", "[data-testid=dlq-entry-error]")
            .await;
        let shown = present(
            &page,
            "[data-testid=view-dlq-entry] [data-testid=dlq-replay]",
        )
        .await;
        assert_eq!(shown, acts, "{role}: the entry's replay shown: {shown}");
    }

    // What is shown works: the operator approves from the page.
    sign_in(&mut page, &o.url, OPERATOR, "test-operator", "operator").await;
    page.js(
        "location.hash = '#/workflows/' + arguments[0]; return null",
        vec![json!(id)],
    )
    .await;
    page.click("[data-testid=stage-approve]").await;
    page.wait_js(
        "the approved stage running",
        "const e = document.querySelector('[data-testid=view-workflow] [data-testid=stage-build]'); \
         return e && e.getAttribute('data-status')",
        vec![],
        |v| v == "running",
    )
    .await;
    let log = crate::common::log(&redis, &id).await;
    let approved = log.iter().find(|e| e.kind == "approved").unwrap();
    assert_eq!(approved.event["by"], "test-operator");
    page.c.close().await.unwrap();
    o.shutdown().await;
    drop(driver);
}
