//! The operator's surfaces stay off the public path: `/metrics` on the main listener only with
//! the metrics token, and the optional admin listener serving metrics and health alone.

use std::os::unix::fs::PermissionsExt;

use reqwest::StatusCode;

use crate::common::{error_code, TestService};

#[tokio::test]
async fn metrics_on_the_public_listener_need_the_token() {
    let svc = TestService::start().await;
    let url = svc.url("/metrics");
    let r = reqwest::get(&url).await.unwrap();
    assert!(r.headers().contains_key("www-authenticate"));
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "metrics_token_required".into())
    );
    let client = reqwest::Client::new();
    for wrong in ["", "wrong", &format!("{}x", svc.state().metrics_token)] {
        let r = client.get(&url).bearer_auth(wrong).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{wrong:?}");
    }
    // The token is generated into the data directory, readable by its owner only.
    let path = svc.data_dir().join("keys/metrics.token");
    let stored = std::fs::read_to_string(&path).unwrap();
    assert_eq!(stored.trim(), svc.state().metrics_token);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(svc.metrics().await.contains("consult_open_connections"));
}

#[tokio::test]
async fn the_admin_listener_serves_metrics_and_health_and_nothing_else() {
    let token = "a configured metrics token of at least 32 characters";
    let svc = TestService::start_with(|c| {
        c.admin.bind = Some("127.0.0.1:0".parse().unwrap());
        c.admin.metrics_token = Some(token.into());
    })
    .await;
    let admin = svc.running.admin_addr().expect("an admin listener");
    assert_ne!(admin, svc.running.addr);
    let get = |path: &str| reqwest::get(format!("http://{admin}{path}"));
    let metrics = get("/metrics").await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("consult_open_connections"));
    assert_eq!(get("/healthz").await.unwrap().status(), StatusCode::OK);
    assert_eq!(get("/readyz").await.unwrap().status(), StatusCode::OK);
    for elsewhere in [
        "/",
        "/api/v1/consultations",
        "/api/v1/openapi.json",
        "/join",
    ] {
        assert_eq!(
            get(elsewhere).await.unwrap().status(),
            StatusCode::NOT_FOUND,
            "{elsewhere}"
        );
    }
    // The main listener takes the configured token.
    let r = reqwest::Client::new()
        .get(svc.url("/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!svc.data_dir().join("keys/metrics.token").exists());
}

/// Every `consult_*` metric the shipped Prometheus rules name, in the text of `rules`.
fn metrics_named(rules: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = rules;
    while let Some(at) = rest.find("consult_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn the_shipped_alerting_rules_name_only_metrics_the_service_exports() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/prometheus/consult-alerts.yml"
    );
    let rules = std::fs::read_to_string(path).unwrap();
    let named = metrics_named(&rules);
    assert!(named.len() >= 7, "{named:?}");
    let svc = TestService::start().await;
    let exported = svc.metrics().await;
    for name in &named {
        assert!(
            exported
                .lines()
                .any(|l| l.starts_with(&format!("# TYPE {name} "))),
            "{name} is named by the rules but not exported"
        );
    }
    // Labelled series exist at zero from the start, so `increase()` sees the first event.
    for series in [
        "consult_alerts_raised_total{rule=\"credential_stuffing\"} 0",
        "consult_http_responses_total{class=\"5xx\"} 0",
        "consult_alert_webhook_deliveries_total{outcome=\"failed\"} 0",
    ] {
        assert!(exported.contains(series), "{series}");
    }
}
