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
