//! Attacks noticed: scripted attacks against the real service raise each rule's alert within
//! five seconds, stored, audited, counted and delivered to a real webhook receiver over HTTP
//! with a signature it can check; a receiver that is down loses nothing; unauthenticated floods
//! grow the audit log by a handful of entries with exact counts; only administrators see and
//! acknowledge alerts.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode as AxumStatus};
use consult_proto::api::Role;
use consult_signaling::alerts::{self, Alert, WebhookBody};
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::common::{self, TestService};

const SECRET: &str = "a webhook secret the receiver also holds";

/// A webhook endpoint on loopback: what it was sent, and the status it answers.
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    status: Arc<AtomicU16>,
}

impl Receiver {
    /// Listen on `port` (0: any free one).
    async fn start(port: u16) -> Self {
        let received: Arc<Mutex<Vec<(HeaderMap, String)>>> = Arc::default();
        let status = Arc::new(AtomicU16::new(200));
        let app = {
            let (received, status) = (received.clone(), status.clone());
            axum::Router::new().route(
                "/hook",
                axum::routing::post(move |headers: HeaderMap, body: String| {
                    let (received, status) = (received.clone(), status.clone());
                    async move {
                        received.lock().unwrap().push((headers, body));
                        AxumStatus::from_u16(status.load(Ordering::SeqCst)).unwrap()
                    }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://127.0.0.1:{port}/hook"),
            received,
            status,
        }
    }

    fn bodies(&self) -> Vec<(HeaderMap, String)> {
        self.received.lock().unwrap().clone()
    }
}

/// The receiver's check: the signature is HMAC-SHA256 of `t.body` under the shared secret.
fn signature_holds(headers: &HeaderMap, body: &str) -> bool {
    let Some(value) = headers
        .get("x-consult-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((t, v1)) = value
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let Ok(sent) = hex::decode(v1) else {
        return false;
    };
    mac.verify_slice(&sent).is_ok()
}

async fn open_alerts(svc: &TestService) -> Vec<Alert> {
    alerts::list_alerts(&svc.state().pool, true).await.unwrap()
}

/// Wait (up to 5 s) for an open alert of `rule` about `subject`; how long it took.
async fn raised_within(svc: &TestService, rule: &str, subject: &str) -> (Alert, Duration) {
    let start = Instant::now();
    loop {
        if let Some(alert) = open_alerts(svc)
            .await
            .into_iter()
            .find(|a| a.rule == rule && a.subject == subject)
        {
            return (alert, start.elapsed());
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no {rule} alert about {subject} within 5 s; open: {:?}",
            open_alerts(svc).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw request from `address` (through the trusted proxy on loopback).
fn from(svc: &TestService, address: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
    common::http_client()
        .request(method, svc.url(path))
        .header("x-forwarded-for", address)
}

async fn login_from(svc: &TestService, address: &str, body: Value) -> StatusCode {
    from(svc, address, Method::POST, "/api/v1/auth/login")
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
}

async fn inspect_from(svc: &TestService, address: &str, invite: &str) -> StatusCode {
    from(svc, address, Method::POST, "/api/v1/invites/inspect")
        .json(&json!({ "invite": invite }))
        .send()
        .await
        .unwrap()
        .status()
}

fn behind_proxy_with_webhook(
    url: Option<String>,
) -> impl FnOnce(&mut consult_signaling::config::Config) {
    move |c| {
        c.trusted_proxies = vec!["127.0.0.1".into()];
        c.alerts.webhook_url = url;
        c.alerts.webhook_secret = Some(SECRET.into());
    }
}

#[tokio::test]
async fn scripted_attacks_raise_each_rule_within_five_seconds_and_reach_the_webhook() {
    let receiver = Receiver::start(0).await;
    let svc = TestService::start_with(behind_proxy_with_webhook(Some(receiver.url.clone()))).await;
    let mut figures = Vec::new();

    // Credential stuffing: ten different emails from one address.
    for n in 0..10 {
        let body =
            json!({ "email": format!("victim{n}@elsewhere.test"), "password": "hunter2hunter2" });
        assert_eq!(
            login_from(&svc, "203.0.113.10", body).await,
            StatusCode::UNAUTHORIZED
        );
    }
    let (alert, took) = raised_within(&svc, "credential_stuffing", "address:203.0.113.10").await;
    assert_eq!(alert.severity, "high");
    assert_eq!(alert.detail["source"], "203.0.113.10");
    figures.push(("credential_stuffing", took));

    // Password spraying: one wrong password for each of ten existing accounts, each from
    // its own address.
    for n in 0..10 {
        let email = format!("staff{n}@clinic.test");
        svc.create_account(&email, Role::Doctor).await;
        let address = format!("198.51.100.{n}");
        let body = json!({ "email": email, "password": "Winter2026!" });
        assert_eq!(
            login_from(&svc, &address, body).await,
            StatusCode::UNAUTHORIZED
        );
    }
    let (alert, took) = raised_within(&svc, "password_spraying", "service").await;
    assert_eq!(alert.severity, "critical");
    figures.push(("password_spraying", took));

    // Second-factor guessing: the right password, five wrong codes.
    let doctor = svc.doctor("target@clinic.test").await;
    for n in 0..5 {
        let body = json!({ "email": doctor.email, "password": doctor.password,
                           "totp": format!("{:06}", 100_000 + n) });
        let status = login_from(&svc, "192.0.2.77", body).await;
        assert!(
            matches!(
                status,
                StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
            ),
            "{status}"
        );
    }
    let user_id = consult_signaling::accounts::find_by_email(&svc.state().pool, &doctor.email)
        .await
        .unwrap()
        .unwrap()
        .user
        .id;
    let (alert, took) =
        raised_within(&svc, "second_factor_guessing", &format!("user:{user_id}")).await;
    assert_eq!(alert.detail["last_source"], "192.0.2.77");
    figures.push(("second_factor_guessing", took));

    // Invite guessing: twenty made-up links from one address.
    for n in 0..20 {
        let status = inspect_from(&svc, "192.0.2.200", &format!("made-up-invite-{n:04}")).await;
        assert_eq!(status, StatusCode::GONE);
    }
    let (_, took) = raised_within(&svc, "invite_guessing", "address:192.0.2.200").await;
    figures.push(("invite_guessing", took));

    // Cross-consultation: a patient still waiting sends offers to the doctor ten times.
    let (consultation, invite) = doctor.create_consultation().await;
    let (_doctor_ws, joined) = doctor.join(&svc, consultation.id).await;
    let doctor_pid = common::participant_id(&joined);
    let patient = svc.patient(&invite, "Pat").await;
    let (mut patient_ws, _) = svc.join_patient(&patient.participant_token).await;
    for _ in 0..10 {
        patient_ws
            .send_text(format!(
                r#"{{"v":1,"type":"description","to":"{doctor_pid}","description":{{"type":"offer","sdp":"v=0"}}}}"#
            ))
            .await;
        assert!(!patient_ws.expect_error("not_admitted").await);
    }
    let (alert, took) = raised_within(
        &svc,
        "cross_consultation",
        &format!("participant:{}", patient.participant_id),
    )
    .await;
    assert_eq!(alert.detail["consultation_id"], consultation.id.to_string());
    figures.push(("cross_consultation", took));
    for (rule, took) in &figures {
        eprintln!(
            "figure: {rule} raised {} ms after the attack's last request",
            took.as_millis()
        );
    }

    // Every new alert was audited, counted, and delivered once, signed.
    let raised = open_alerts(&svc).await;
    assert_eq!(raised.len(), 5, "{raised:?}");
    assert_eq!(svc.audited_count("alert_raised").await, 5);
    let metrics = svc.metrics().await;
    for (rule, _) in &figures {
        assert!(
            metrics.contains(&format!("consult_alerts_raised_total{{rule=\"{rule}\"}} 1")),
            "{rule} counted"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while receiver.bodies().len() < raised.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = receiver.bodies();
    assert_eq!(delivered.len(), raised.len(), "one delivery per alert");
    let mut delivery_ids = std::collections::HashSet::new();
    for (headers, body) in &delivered {
        assert!(signature_holds(headers, body), "signed: {headers:?}");
        assert_eq!(headers["content-type"], "application/json");
        assert!(delivery_ids.insert(headers["x-consult-delivery"].to_str().unwrap().to_owned()));
        let body: WebhookBody = serde_json::from_str(body).unwrap();
        assert_eq!(body.event, "alert_raised");
        assert_eq!(body.service, svc.base);
        assert!(raised.contains(&body.alert), "{:?}", body.alert);
    }
    // Tampered, the signature no longer holds.
    let (headers, body) = &delivered[0];
    assert!(!signature_holds(
        headers,
        &body.replace("alert_raised", "alert_cleared")
    ));

    // A rule that keeps firing raises the open alert's count, not a new alert (or delivery).
    for n in 0..20 {
        inspect_from(&svc, "192.0.2.200", &format!("more-made-up-{n:04}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alert = open_alerts(&svc)
            .await
            .into_iter()
            .find(|a| a.subject == "address:192.0.2.200")
            .unwrap();
        if alert.firings == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "firings {}", alert.firings);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open_alerts(&svc).await.len(), 5);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.bodies().len(), 5, "no delivery for a repeat");
}

#[tokio::test]
async fn refused_exports_raise_an_alert() {
    let svc = TestService::start_with(|c| {
        c.alerts.rules.export_burst.count = 2;
    })
    .await;
    let owner = svc.doctor("owner@clinic.test").await;
    let other = svc.doctor("other@clinic.test").await;
    let call =
        crate::recording::consented_call(&svc, &owner, crate::recording::recorded(false)).await;
    let vault = svc.state().recordings.vault.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while vault.recordings().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no recording started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = vault.recordings().unwrap()[0];
    drop(call);
    for _ in 0..3 {
        let r = other
            .bearer(Method::GET, &format!("/api/v1/recordings/{id}/export"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    let other_id = consult_signaling::accounts::find_by_email(&svc.state().pool, &other.email)
        .await
        .unwrap()
        .unwrap()
        .user
        .id;
    let (alert, took) = raised_within(&svc, "refused_exports", &format!("user:{other_id}")).await;
    assert_eq!(alert.severity, "warning");
    eprintln!(
        "figure: refused_exports raised {} ms after the attack's last request",
        took.as_millis()
    );
}

#[tokio::test]
async fn a_webhook_that_is_down_loses_nothing_and_requests_never_wait_for_it() {
    // Nothing listens on the webhook's port yet.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/hook");
    let svc = TestService::start_with(behind_proxy_with_webhook(Some(url))).await;
    let started = Instant::now();
    for n in 0..20 {
        assert_eq!(
            inspect_from(&svc, "192.0.2.55", &format!("guess-{n}")).await,
            StatusCode::GONE
        );
    }
    let attack_took = started.elapsed();
    let (alert, _) = raised_within(&svc, "invite_guessing", "address:192.0.2.55").await;

    // The first attempt fails, and stays queued with why.
    let pool = svc.state().pool.clone();
    let pending = || {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i64, Option<String>, Option<String>)>(
                "SELECT attempts, last_error, delivered_at FROM alert_deliveries",
            )
            .fetch_all(pool.any_pool())
            .await
            .unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while pending()
        .await
        .first()
        .is_none_or(|(attempts, _, _)| *attempts == 0)
    {
        assert!(
            Instant::now() < deadline,
            "no attempt: {:?}",
            pending().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rows = pending().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1.as_deref(), Some("could not connect"));
    assert_eq!(rows[0].2, None);
    eprintln!(
        "figure: 20 requests took {} ms with the webhook down",
        attack_took.as_millis()
    );

    // The endpoint comes up, answering 503 at first: still queued, retried after back-off.
    let receiver = Receiver::start(port).await;
    receiver.status.store(503, Ordering::SeqCst);
    svc.clock.advance(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(5);
    while receiver.bodies().is_empty() {
        assert!(
            Instant::now() < deadline,
            "not retried: {:?}",
            pending().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rows = pending().await;
    assert!(
        rows[0].1.as_deref().is_some_and(|e| e.contains("503")),
        "{rows:?}"
    );
    assert_eq!(rows[0].2, None);
    // Not before its back-off is over.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        receiver.bodies().len(),
        1,
        "retried before the back-off was over"
    );

    receiver.status.store(200, Ordering::SeqCst);
    svc.clock.advance(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    while pending().await[0].2.is_none() {
        assert!(
            Instant::now() < deadline,
            "never delivered: {:?}",
            pending().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bodies = receiver.bodies();
    assert_eq!(bodies.len(), 2);
    // The same delivery each time: same id, same body, each attempt signed afresh.
    assert_eq!(
        bodies[0].0["x-consult-delivery"],
        bodies[1].0["x-consult-delivery"]
    );
    assert_eq!(bodies[0].1, bodies[1].1);
    for (headers, body) in &bodies {
        assert!(signature_holds(headers, body));
    }
    let body: WebhookBody = serde_json::from_str(&bodies[1].1).unwrap();
    assert_eq!(body.alert, alert);
    assert!(pending().await[0].0 >= 3);
    let metrics = svc.metrics().await;
    assert!(metrics.contains("consult_alert_webhook_deliveries_total{outcome=\"delivered\"} 1"));
    assert!(metrics.contains("consult_alert_webhook_pending 0"));
}

#[tokio::test]
async fn ten_thousand_unknown_invites_add_a_few_audit_entries_with_exact_counts() {
    let svc = TestService::start().await;
    let before = consult_signaling::audit::entries(&svc.state().pool)
        .await
        .unwrap()
        .len();
    let client = common::http_client();
    let statuses: Vec<StatusCode> = futures_util::stream::iter(0..10_000)
        .map(|n| {
            let request = client
                .post(svc.url("/api/v1/invites/inspect"))
                .json(&json!({ "invite": format!("no-such-invite-{n:05}") }));
            async move { request.send().await.unwrap().status() }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == StatusCode::GONE));
    let (_, _) = raised_within(&svc, "invite_guessing", "address:127.0.0.1").await;
    let (_, _) = raised_within(&svc, "invite_guessing", "service").await;
    assert_eq!(svc.audited_count("invite_refused").await, 10_000);
    let entries = consult_signaling::audit::entries(&svc.state().pool)
        .await
        .unwrap();
    let grown = entries.len() - before;
    // One tally entry per window (the test's clock stands still: one window) and the two
    // alerts raised.
    assert!(grown <= 4, "the log grew by {grown} entries");
    let tally = entries
        .iter()
        .find(|e| e.action == "invite_refused")
        .unwrap();
    assert_eq!(tally.actor, "anonymous");
    assert_eq!(tally.detail["address"], "127.0.0.1");
    assert_eq!(tally.detail["reason"], "invite_not_found");
    assert_eq!(tally.detail["aggregated"], true);
    assert_eq!(
        consult_signaling::audit::verify(&svc.state().pool)
            .await
            .unwrap(),
        Ok(entries.len())
    );
}

/// `GET /api/v1/admin/alerts{query}` as `who`, parsed.
async fn alerts_as(who: &common::Doctor, query: &str) -> Value {
    let r = who.bearer(Method::GET, &format!("/api/v1/admin/alerts{query}"));
    r.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn only_administrators_see_and_acknowledge_alerts() {
    let svc = TestService::start_with(behind_proxy_with_webhook(None)).await;
    let admin = svc.enrolled("admin@clinic.test", Role::Admin).await;
    let doctor = svc.doctor("doc@clinic.test").await;
    for n in 0..20 {
        inspect_from(&svc, "192.0.2.9", &format!("guess-{n}")).await;
    }
    let (alert, _) = raised_within(&svc, "invite_guessing", "address:192.0.2.9").await;

    let r = common::http_client()
        .get(svc.url("/api/v1/admin/alerts"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = doctor.bearer(Method::GET, "/api/v1/admin/alerts").send();
    assert_eq!(r.await.unwrap().status(), StatusCode::FORBIDDEN);
    let ack = |who: &common::Doctor, id: String| {
        who.bearer(
            Method::POST,
            &format!("/api/v1/admin/alerts/{id}/acknowledge"),
        )
        .send()
    };
    let r = ack(&doctor, alert.id.to_string()).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let list = alerts_as(&admin, "").await;
    assert_eq!(list["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(list["alerts"][0]["id"], alert.id.to_string());
    let r = admin
        .bearer(Method::GET, "/api/v1/admin/alerts?state=closed")
        .send()
        .await
        .unwrap();
    assert_eq!(
        common::error_code(r).await,
        (StatusCode::BAD_REQUEST, "invalid_state".into())
    );

    let r = ack(&admin, alert.id.to_string()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let acked: Alert = r.json().await.unwrap();
    assert!(acked.acknowledged_at.is_some());
    let r = ack(&admin, alert.id.to_string()).await.unwrap();
    assert_eq!(
        common::error_code(r).await,
        (StatusCode::CONFLICT, "already_acknowledged".into())
    );
    let r = ack(&admin, uuid::Uuid::new_v4().to_string()).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = ack(&admin, "not-a-uuid".into()).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let entry = svc.audited("alert_acknowledged", None).await;
    assert_eq!(entry.detail["alert_id"], alert.id.to_string());

    // The attack goes on: a new alert, the acknowledged one kept.
    for n in 0..20 {
        inspect_from(&svc, "192.0.2.9", &format!("again-{n}")).await;
    }
    let (again, _) = raised_within(&svc, "invite_guessing", "address:192.0.2.9").await;
    assert_ne!(again.id, alert.id);
    let all = alerts_as(&admin, "?state=all").await;
    let ids: Vec<_> = all["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(again.id), json!(alert.id)], "open first");
}

#[tokio::test]
async fn normal_sign_in_mistakes_raise_nothing() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("tired@clinic.test").await;
    // Two wrong passwords, a mistyped code, then success; another doctor mistypes too.
    for password in ["wrong once", "wrong twice"] {
        svc.login(&doctor.email, password, None).await;
    }
    svc.login(&doctor.email, &doctor.password, Some("000000"))
        .await;
    let other = svc.doctor("other@clinic.test").await;
    svc.login(&other.email, "typo", None).await;
    svc.inspect("an-old-link-i-still-had").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(open_alerts(&svc).await, vec![]);
}
