//! The HTTP API: enrolment, sign-in with TOTP, throttling, sessions, CSRF, consultations,
//! invites and ICE servers, with their bad paths.

use crate::common;

use std::time::Duration;

use common::{error_code, http_client, TestService};
use consult_api_client::ApiError;
use consult_proto::api::{
    Consultation, ConsultationStatus, EnrolRequest, IceServers, InviteInfo, LoginRequest,
    LoginResponse, MfaEnrolRequest, Role, Session,
};
use consult_signaling::auth::totp;
use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn enrolment_link_sets_a_password_once_and_totp_enrolment_yields_a_session() {
    let svc = TestService::start().await;
    let token = svc.create_account("ada@clinic.test", Role::Doctor).await;
    let client = http_client();
    let enrol = |password: &'static str, token: String| {
        client
            .post(svc.url("/api/v1/auth/enrol"))
            .json(&json!({ "token": token, "password": password }))
            .send()
    };
    assert_eq!(
        error_code(enrol("short", token.clone()).await.unwrap()).await,
        (StatusCode::BAD_REQUEST, "weak_password".into())
    );
    assert_eq!(
        enrol("a long enough password", token.clone())
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        error_code(enrol("another long password", token.clone()).await.unwrap()).await,
        (StatusCode::GONE, "enrolment_link_invalid".into())
    );

    // First sign-in: the password is right, a second factor must be enrolled.
    let r = svc
        .login("ADA@clinic.test", "a long enough password", None)
        .await;
    let LoginResponse::MfaEnrolmentRequired { enrolment } = r.json().await.unwrap() else {
        panic!("expected MFA enrolment")
    };
    assert!(enrolment.qr_svg.contains("<svg"));
    assert!(enrolment.otpauth_uri.starts_with("otpauth://totp/"));
    let enrol_mfa = |code: String| {
        client
            .post(svc.url("/api/v1/auth/mfa/enrol"))
            .json(&json!({ "mfa_token": enrolment.mfa_token, "totp": code }))
            .send()
    };
    assert_eq!(
        error_code(enrol_mfa("000000".into()).await.unwrap()).await,
        (StatusCode::UNAUTHORIZED, "invalid_totp".into())
    );
    let code = totp::code_at(&enrolment.totp_secret, svc.now_unix()).unwrap();
    let r = enrol_mfa(code.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = r.headers()[header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("consult_session="));
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP must not mark the cookie Secure"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["recovery_codes"].as_array().unwrap().len(), 10);
    // The enrolment token is single-use.
    assert_eq!(
        enrol_mfa(code).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    // The cookie alone now authenticates.
    let session: Session = client
        .get(svc.url("/api/v1/auth/session"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session.user.email, "ada@clinic.test");
    assert!(
        session.token.is_none(),
        "the bearer token is only shown at sign-in"
    );
}

#[tokio::test]
async fn totp_seeds_are_sealed_in_the_database() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("seal@clinic.test").await;
    let stored: String =
        consult_signaling::db::query_scalar("SELECT totp_secret FROM users WHERE email = $1")
            .bind(&doctor.email)
            .fetch_one(&svc.state().pool)
            .await
            .unwrap();
    assert!(stored.starts_with("v1:"), "sealed, not the seed itself");
    assert!(!stored.contains(&doctor.totp_secret));
    // Moving a sealed seed to another account does not work: it is bound to its owner.
    let other = svc.create_account("other@clinic.test", Role::Doctor).await;
    let _ = other;
    consult_signaling::db::query("UPDATE users SET totp_secret = $1, password_hash = (SELECT password_hash FROM users WHERE email = $2) WHERE email = 'other@clinic.test'")
        .bind(&stored)
        .bind(&doctor.email)
        .execute(&svc.state().pool)
        .await
        .unwrap();
    svc.next_totp_step();
    let code = totp::code_at(&doctor.totp_secret, svc.now_unix()).unwrap();
    let r = svc
        .login("other@clinic.test", &doctor.password, Some(&code))
        .await;
    assert_eq!(
        r.status(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "a transplanted seed does not open"
    );
}

#[tokio::test]
async fn sign_in_needs_the_totp_code_and_refuses_wrong_and_replayed_codes() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("bo@clinic.test").await;
    svc.next_totp_step();
    let r = svc.login(&doctor.email, &doctor.password, None).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "mfa_required".into())
    );
    let r = svc
        .login(&doctor.email, &doctor.password, Some("123456"))
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "invalid_totp".into())
    );
    let code = totp::code_at(&doctor.totp_secret, svc.now_unix()).unwrap();
    let r = svc
        .login(&doctor.email, &doctor.password, Some(&code))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let LoginResponse::SignedIn { session } = r.json().await.unwrap() else {
        panic!("expected a session")
    };
    assert!(session.token.is_some());
    let r = svc
        .login(&doctor.email, &doctor.password, Some(&code))
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "totp_replayed".into())
    );
    // A wrong password never reveals whether the account exists.
    let r = svc
        .login(&doctor.email, "wrong password!!", Some(&code))
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "invalid_credentials".into())
    );
    let r = svc
        .login("nobody@clinic.test", "wrong password!!", None)
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "invalid_credentials".into())
    );
}

#[tokio::test]
async fn a_recovery_code_works_exactly_once() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("cy@clinic.test").await;
    let sign_in = |code: String| {
        http_client()
            .post(svc.url("/api/v1/auth/login"))
            .json(&json!({ "email": doctor.email, "password": doctor.password, "recovery_code": code }))
            .send()
    };
    let code = doctor.recovery_codes[3].to_lowercase();
    assert_eq!(
        sign_in(code.clone()).await.unwrap().status(),
        StatusCode::OK
    );
    let r = sign_in(code).await.unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "invalid_totp".into())
    );
}

#[tokio::test]
async fn repeated_failures_lock_the_account_with_back_off_and_are_audited() {
    let svc = TestService::start_with(|c| {
        c.login.max_failures_per_account = 3;
        c.login.lockout_base = Duration::from_secs(60);
    })
    .await;
    let doctor = svc.doctor("di@clinic.test").await;
    for _ in 0..3 {
        let r = svc.login(&doctor.email, "not the password", None).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    svc.next_totp_step();
    let code = totp::code_at(&doctor.totp_secret, svc.now_unix()).unwrap();
    // Locked: even the right password and code are refused, with Retry-After.
    let r = svc
        .login(&doctor.email, &doctor.password, Some(&code))
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 60, "{retry}");
    svc.clock.advance(Duration::from_secs(61));
    // One more failure doubles the lockout.
    let r = svc.login(&doctor.email, "not the password", None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = svc
        .login(&doctor.email, &doctor.password, Some(&code))
        .await;
    let retry: u64 = r.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 60 && retry <= 120, "{retry}");
    svc.clock.advance(Duration::from_secs(121));
    svc.next_totp_step();
    let code = totp::code_at(&doctor.totp_secret, svc.now_unix()).unwrap();
    assert_eq!(
        svc.login(&doctor.email, &doctor.password, Some(&code))
            .await
            .status(),
        StatusCode::OK
    );

    // Failures are counted per source and window (anyone can send them); locks are entries.
    assert_eq!(
        svc.audited_count("sign_in_failed").await,
        4 + 2,
        "4 wrong passwords and 2 refused while locked"
    );
    assert_eq!(svc.audited_count("sign_in_locked").await, 2);
    assert!(svc
        .metrics()
        .await
        .contains("consult_failed_signins_total 6"));
}

#[tokio::test]
async fn one_address_guessing_many_accounts_is_locked_out() {
    let svc = TestService::start_with(|c| c.login.max_failures_per_address = 5).await;
    for i in 0..5 {
        let r = svc
            .login(&format!("guess{i}@clinic.test"), "some password!!", None)
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let (status, code) = error_code(
        svc.login("guess9@clinic.test", "some password!!", None)
            .await,
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts")
    );
}

#[tokio::test]
async fn a_locked_out_address_cannot_guess_totp_codes_at_enrolment_either() {
    let svc = TestService::start_with(|c| c.login.max_failures_per_address = 5).await;
    let token = svc.create_account("new@clinic.test", Role::Doctor).await;
    let password = "a long enough password".to_owned();
    svc.api
        .enrol(&EnrolRequest {
            token,
            password: password.clone(),
        })
        .await
        .unwrap();
    let login = LoginRequest {
        email: "new@clinic.test".into(),
        password,
        totp: None,
        recovery_code: None,
    };
    let LoginResponse::MfaEnrolmentRequired { enrolment } = svc.api.login(&login).await.unwrap()
    else {
        panic!("expected MFA enrolment")
    };
    // Five wrong codes lock the address out.
    let wrong = MfaEnrolRequest {
        mfa_token: enrolment.mfa_token.clone(),
        totp: "000000".into(),
    };
    for _ in 0..5 {
        let refused = svc.api.mfa_enrol(&wrong).await.unwrap_err();
        assert!(
            matches!(&refused, ApiError::Refused { status: 401, code, .. } if code == "invalid_totp"),
            "{refused:?}"
        );
    }
    let client = http_client();
    let enrol_mfa = |code: String| {
        client
            .post(svc.url("/api/v1/auth/mfa/enrol"))
            .json(&json!({ "mfa_token": enrolment.mfa_token, "totp": code }))
            .send()
    };
    let failed = |text: String| {
        text.lines()
            .find_map(|l| l.strip_prefix("consult_failed_signins_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = failed(svc.metrics().await);
    // Even the right code is refused now, counted and audited, and the enrolment waits.
    let code = totp::code_at(&enrolment.totp_secret, svc.now_unix()).unwrap();
    let r = enrol_mfa(code).await.unwrap();
    assert!(r.headers().contains_key(header::RETRY_AFTER));
    assert_eq!(
        error_code(r).await,
        (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts".into())
    );
    assert_eq!(failed(svc.metrics().await), before + 1.0);
    let entry = svc
        .audited("sign_in_failed", Some("address:127.0.0.1"))
        .await;
    assert_eq!(entry.detail["reason"], "address_locked");
}

#[tokio::test]
async fn sessions_end_when_idle_at_the_absolute_timeout_and_at_sign_out() {
    let svc = TestService::start_with(|c| {
        c.session.idle_timeout = Duration::from_secs(15 * 60);
        c.session.absolute_timeout = Duration::from_secs(3600);
    })
    .await;
    let doctor = svc.doctor("ed@clinic.test").await;
    let status = |d: &common::Doctor| d.bearer(Method::GET, "/api/v1/auth/session").send();
    assert_eq!(status(&doctor).await.unwrap().status(), StatusCode::OK);
    // The person's activity every 14 minutes keeps it alive until the absolute timeout.
    let act = |d: &common::Doctor| d.bearer(Method::POST, "/api/v1/auth/activity").send();
    for _ in 0..4 {
        svc.clock.advance(Duration::from_secs(14 * 60));
        assert_eq!(act(&doctor).await.unwrap().status(), StatusCode::OK);
    }
    svc.clock.advance(Duration::from_secs(5 * 60));
    let (code, err) = error_code(status(&doctor).await.unwrap()).await;
    assert_eq!(
        (code, err.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );

    // Idle timeout.
    svc.next_totp_step();
    let code = totp::code_at(&doctor.totp_secret, svc.now_unix()).unwrap();
    let r = svc
        .login(&doctor.email, &doctor.password, Some(&code))
        .await;
    let LoginResponse::SignedIn { session } = r.json().await.unwrap() else {
        panic!()
    };
    let token = session.token.unwrap();
    let get = |t: &str| {
        reqwest::Client::new()
            .get(svc.url("/api/v1/auth/session"))
            .bearer_auth(t)
            .send()
    };
    svc.clock.advance(Duration::from_secs(15 * 60 + 1));
    assert_eq!(
        get(&token).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    // Sign-out revokes.
    svc.next_totp_step();
    let code = totp::code_at(&doctor.totp_secret, svc.now_unix()).unwrap();
    let r = svc
        .login(&doctor.email, &doctor.password, Some(&code))
        .await;
    let LoginResponse::SignedIn { session } = r.json().await.unwrap() else {
        panic!()
    };
    let token = session.token.unwrap();
    let r = reqwest::Client::new()
        .post(svc.url("/api/v1/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        get(&token).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get("not-a-token").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn cookie_requests_that_change_state_need_the_csrf_token() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("fa@clinic.test").await;
    let create = doctor
        .client
        .post(svc.url("/api/v1/consultations"))
        .json(&json!({}));
    let (status, code) = error_code(create.send().await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "csrf_rejected")
    );
    let wrong = doctor
        .client
        .post(svc.url("/api/v1/consultations"))
        .header("x-csrf-token", "0".repeat(64))
        .json(&json!({}));
    assert_eq!(wrong.send().await.unwrap().status(), StatusCode::FORBIDDEN);
    let right = doctor
        .client
        .post(svc.url("/api/v1/consultations"))
        .header("x-csrf-token", &doctor.csrf)
        .json(&json!({}));
    assert_eq!(right.send().await.unwrap().status(), StatusCode::CREATED);
    // Reads need no token.
    assert_eq!(
        doctor
            .client
            .get(svc.url("/api/v1/consultations"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn consultations_belong_to_their_doctor() {
    let svc = TestService::start().await;
    let alice = svc.doctor("alice@clinic.test").await;
    let bob = svc.doctor("bob@clinic.test").await;
    let (consultation, invite) = alice.create_consultation().await;
    assert_eq!(consultation.status, ConsultationStatus::Open);
    let url = consultation.invite_url.clone().unwrap();
    assert!(url.starts_with(&format!("{}/join#", svc.base)), "{url}");
    // 256 random bits, base64url.
    assert_eq!(invite.len(), 43);

    let list: Vec<Consultation> = alice
        .bearer(Method::GET, "/api/v1/consultations")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert!(
        list[0].invite_url.is_none(),
        "the link is only shown when issued"
    );
    assert!(list[0]
        .invite
        .as_ref()
        .is_some_and(|i| !i.revoked && !i.in_use));
    let path = format!("/api/v1/consultations/{}", consultation.id);
    assert_eq!(
        error_code(bob.bearer(Method::GET, &path).send().await.unwrap())
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let end = format!("{path}/end");
    assert_eq!(
        bob.bearer(Method::POST, &end)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    let bob_list: Vec<Consultation> = bob
        .bearer(Method::GET, "/api/v1/consultations")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(bob_list.is_empty());

    let r = alice
        .bearer(Method::POST, "/api/v1/consultations")
        .json(&json!({ "mode": "recorded", "e2ee": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "recording_key_missing".into())
    );
    let r = alice
        .bearer(Method::POST, "/api/v1/consultations")
        .json(&json!({ "title": "x".repeat(201) }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "title_too_long".into())
    );
    let r = alice
        .bearer(Method::POST, "/api/v1/consultations")
        .header("content-type", "application/json")
        .body("{\"title\": 5")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "invalid_body".into())
    );
    let r = alice
        .bearer(Method::GET, "/api/v1/consultations/not-a-uuid")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "invalid_path".into())
    );
    let r = alice
        .bearer(Method::POST, "/api/v1/consultations")
        .header("content-type", "application/json")
        .body(format!("{{\"title\":\"{}\"}}", "x".repeat(70_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large".into())
    );
    let r = reqwest::get(svc.url("/api/v1/consultations"))
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "unauthenticated".into())
    );
}

#[tokio::test]
async fn invites_expire_are_revoked_by_reissue_and_die_with_the_consultation() {
    let svc = TestService::start_with(|c| {
        c.invite.ttl = Duration::from_secs(3600);
        c.session.idle_timeout = Duration::from_secs(7200);
    })
    .await;
    let doctor = svc.doctor("gil@clinic.test").await;
    let (consultation, invite) = doctor.create_consultation().await;
    let info: InviteInfo = svc.inspect(&invite).await.json().await.unwrap();
    assert_eq!(info.doctor_name, "Dr gil");
    assert_eq!(
        error_code(svc.inspect(&"x".repeat(43)).await).await,
        (StatusCode::GONE, "invite_not_found".into())
    );
    let r = svc.redeem(&invite, "").await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "invalid_name".into())
    );

    // Reissue: the old link is revoked, the new one works.
    let path = format!("/api/v1/consultations/{}/invite", consultation.id);
    let r = doctor.bearer(Method::POST, &path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let fresh: Value = r.json().await.unwrap();
    let fresh = fresh["invite_url"]
        .as_str()
        .unwrap()
        .split_once('#')
        .unwrap()
        .1
        .to_owned();
    assert_eq!(
        error_code(svc.redeem(&invite, "Pat").await).await,
        (StatusCode::GONE, "invite_revoked".into())
    );

    // Expiry.
    svc.clock.advance(Duration::from_secs(3601));
    assert_eq!(
        error_code(svc.redeem(&fresh, "Pat").await).await,
        (StatusCode::GONE, "invite_expired".into())
    );

    // Revoke explicitly, then ending kills everything.
    let r = doctor.bearer(Method::POST, &path).send().await.unwrap();
    let newest: Value = r.json().await.unwrap();
    let newest = newest["invite_url"]
        .as_str()
        .unwrap()
        .split_once('#')
        .unwrap()
        .1
        .to_owned();
    assert_eq!(
        doctor
            .bearer(Method::DELETE, &path)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        error_code(svc.redeem(&newest, "Pat").await).await,
        (StatusCode::GONE, "invite_revoked".into())
    );
    assert_eq!(
        doctor
            .bearer(Method::DELETE, &path)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    let r = doctor
        .bearer(
            Method::POST,
            &format!("/api/v1/consultations/{}/end", consultation.id),
        )
        .send()
        .await
        .unwrap();
    let ended: Consultation = r.json().await.unwrap();
    assert_eq!(ended.status, ConsultationStatus::Ended);
    assert_eq!(
        error_code(svc.redeem(&newest, "Pat").await).await,
        (StatusCode::GONE, "consultation_ended".into())
    );
    let r = doctor.bearer(Method::POST, &path).send().await.unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::GONE, "consultation_ended".into())
    );
}

#[tokio::test]
async fn ice_servers_carry_turn_rest_credentials_for_signed_in_users_and_patients_only() {
    let svc = TestService::start_with(|c| {
        c.ice.stun_urls = vec!["stun:127.0.0.1:3478".into()];
        c.ice.turn_urls = vec!["turn:127.0.0.1:3478?transport=udp".into()];
        c.ice.turn_shared_secret = Some("a-shared-secret-for-turn".into());
        c.ice.turn_credential_ttl = Duration::from_secs(600);
    })
    .await;
    let r = reqwest::get(svc.url("/api/v1/ice-servers")).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let doctor = svc.doctor("hu@clinic.test").await;
    let servers: IceServers = doctor
        .bearer(Method::GET, "/api/v1/ice-servers")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(servers.ttl_secs, 600);
    let turn = &servers.ice_servers[1];
    let username = turn.username.clone().unwrap();
    let (expiry, _) = username.split_once(':').unwrap();
    assert_eq!(expiry.parse::<u64>().unwrap(), svc.now_unix() + 600);
    let (_, expected) = consult_signaling::ice::turn_credentials(
        "a-shared-secret-for-turn",
        expiry.parse().unwrap(),
        username.split_once(':').unwrap().1,
    );
    assert_eq!(turn.credential.as_deref(), Some(expected.as_str()));

    let (_, invite) = doctor.create_consultation().await;
    let patient = svc.patient(&invite, "Pat").await;
    let r = reqwest::Client::new()
        .get(svc.url("/api/v1/ice-servers"))
        .bearer_auth(&patient.participant_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn health_metrics_and_openapi_are_served() {
    let svc = TestService::start().await;
    assert_eq!(
        reqwest::get(svc.url("/healthz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    assert_eq!(
        reqwest::get(svc.url("/readyz")).await.unwrap().status(),
        StatusCode::OK
    );
    let metrics = svc.metrics().await;
    for name in [
        "consult_ws_connected_sockets",
        "consult_active_consultations",
        "consult_failed_signins_total",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    let doc: Value = reqwest::get(svc.url("/api/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/api/v1/auth/login",
        "/api/v1/consultations",
        "/api/v1/invites/redeem",
        "/api/v1/ice-servers",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from OpenAPI"
        );
    }
    let schema: Value = reqwest::get(svc.url("/api/v1/signal/schema.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(schema["schemas"]["ClientMessage"].is_object());
    assert!(schema["schemas"]["ServerMessage"].is_object());
    let page = reqwest::get(svc.url("/")).await.unwrap();
    assert!(page.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    // The pages may use the camera, the microphone and screen capture, for themselves only.
    assert_eq!(
        page.headers()["permissions-policy"],
        "camera=(self), microphone=(self), display-capture=(self)"
    );
    assert_eq!(
        reqwest::get(svc.url("/assets/../Cargo.toml"))
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_pages_go_gzipped_and_revalidate_by_their_hash_and_the_api_is_never_compressed() {
    use std::io::Read;
    let svc = TestService::start().await;
    let http = reqwest::Client::new();
    // GET `path` with one request header.
    let get_with = |path: &str, name: header::HeaderName, value: &str| {
        http.get(svc.url(path)).header(name, value).send()
    };
    let on_disk = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../web-demo/assets/call.js"
    ))
    .unwrap();
    let gzipped = get_with("/assets/call.js", header::ACCEPT_ENCODING, "gzip")
        .await
        .unwrap();
    assert_eq!(gzipped.status(), StatusCode::OK);
    assert_eq!(gzipped.headers()[header::CONTENT_ENCODING], "gzip");
    assert!(gzipped.headers()[header::VARY]
        .to_str()
        .unwrap()
        .to_ascii_lowercase()
        .contains("accept-encoding"));
    let etag = gzipped.headers()[header::ETAG].to_str().unwrap().to_owned();
    let body = gzipped.bytes().await.unwrap();
    assert!(
        body.len() * 3 < on_disk.len(),
        "{} bytes gzipped of {}",
        body.len(),
        on_disk.len()
    );
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, on_disk);
    // Not asked for: as it is.
    let plain = http.get(svc.url("/assets/call.js")).send().await.unwrap();
    assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
    assert_eq!(plain.bytes().await.unwrap(), on_disk);
    // The browser's copy is current: 304, no body; another tag: the file.
    let revalidated = get_with("/assets/call.js", header::IF_NONE_MATCH, &etag)
        .await
        .unwrap();
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);
    assert!(revalidated.bytes().await.unwrap().is_empty());
    assert!(etag.starts_with("W/\""), "{etag}");
    for (tags, status) in [
        (
            etag.trim_start_matches("W/").to_owned(),
            StatusCode::NOT_MODIFIED,
        ),
        (format!("\"0000\", {etag}"), StatusCode::NOT_MODIFIED),
        ("*".to_owned(), StatusCode::NOT_MODIFIED),
        ("\"0000\"".to_owned(), StatusCode::OK),
        ("not a tag".to_owned(), StatusCode::OK),
        (format!("{etag}x"), StatusCode::OK),
    ] {
        let answer = get_with("/assets/call.js", header::IF_NONE_MATCH, &tags)
            .await
            .unwrap();
        assert_eq!(answer.status(), status, "If-None-Match: {tags}");
    }
    // The patient's page too; the API's answers never (they may hold secrets).
    let page = get_with("/join", header::ACCEPT_ENCODING, "gzip")
        .await
        .unwrap();
    assert_eq!(page.headers()[header::CONTENT_ENCODING], "gzip");
    for path in ["/api/v1/openapi.json", "/api/v1/signal/schema.json"] {
        let api = get_with(path, header::ACCEPT_ENCODING, "gzip")
            .await
            .unwrap();
        assert_eq!(api.status(), StatusCode::OK, "{path}");
        assert!(
            api.headers().get(header::CONTENT_ENCODING).is_none(),
            "{path}"
        );
    }
}

#[tokio::test]
async fn e2ee_is_chosen_per_consultation_and_reaches_both_participants() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("e2ee@clinic.test").await;
    let (created, invite) = doctor
        .create_consultation_with(consult_proto::api::CreateConsultationRequest {
            e2ee: Some(true),
            ..Default::default()
        })
        .await;
    assert!(created.e2ee);
    let info: InviteInfo = svc.inspect(&invite).await.json().await.unwrap();
    assert!(info.e2ee, "the patient learns it before joining");
    let (_ws, joined) = doctor.join(&svc, created.id).await;
    let consult_proto::signal::ServerMessage::Joined { consultation, .. } = joined else {
        panic!("not joined: {joined:?}");
    };
    assert!(consultation.e2ee);
    let (plain, _) = doctor.create_consultation().await;
    assert!(!plain.e2ee, "off unless asked for or required");
}

#[tokio::test]
async fn an_organisation_that_requires_e2ee_gets_it_everywhere_and_refuses_opting_out() {
    let svc = TestService::start_with(|c| c.policy.e2ee_required = true).await;
    let doctor = svc.doctor("policy@clinic.test").await;
    let (c, _) = doctor.create_consultation().await;
    assert!(c.e2ee, "on by default under the policy");
    let r = doctor
        .bearer(Method::POST, "/api/v1/consultations")
        .json(&json!({ "e2ee": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "e2ee_required".into())
    );
    let entries = consult_signaling::audit::entries(&svc.state().pool)
        .await
        .unwrap();
    assert!(entries
        .iter()
        .any(|e| e.action == "consultation_created" && e.detail["e2ee"] == true));
}

/// Stop every audit write, as a full or failing audit store would.
async fn break_the_audit_log(svc: &TestService) {
    use consult_signaling::db::Backend;
    let pool = svc.state().pool.any_pool();
    let postgres = Backend::of(pool) == Backend::Postgres;
    if postgres {
        sqlx::raw_sql(
            "CREATE FUNCTION audit_down() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'audit down'; END $$",
        )
        .execute(pool)
        .await
        .unwrap();
    }
    // The chain, and the tallies that count unauthenticated events into it.
    for (name, table) in [
        ("audit_down", "audit_log"),
        ("tallies_down", "audit_tallies"),
    ] {
        for event in ["INSERT", "UPDATE"] {
            let trigger = if postgres {
                format!(
                    "CREATE TRIGGER {name}_{event} BEFORE {event} ON {table} \
                     FOR EACH ROW EXECUTE FUNCTION audit_down()"
                )
            } else {
                format!(
                    "CREATE TRIGGER {name}_{event} BEFORE {event} ON {table} \
                     BEGIN SELECT RAISE(ABORT, 'audit down'); END"
                )
            };
            sqlx::raw_sql(&trigger).execute(pool).await.unwrap();
        }
    }
}

async fn count(svc: &TestService, table: &str) -> i64 {
    consult_signaling::db::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&svc.state().pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_consultation_that_cannot_be_audited_is_not_created() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("audit@example.org").await;
    let (consultation, _) = doctor.create_consultation().await;
    let (consultations, invites) = (
        count(&svc, "consultations").await,
        count(&svc, "invites").await,
    );
    break_the_audit_log(&svc).await;
    let r = doctor
        .bearer(Method::POST, "/api/v1/consultations")
        .json(&json!({ "title": "never audited" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    // Neither the consultation nor its invite exists without its audit entries.
    assert_eq!(count(&svc, "consultations").await, consultations);
    assert_eq!(count(&svc, "invites").await, invites);
    // Ending, re-inviting and revoking roll back the same way: the consultation stays open, its
    // invite live.
    let id = consultation.id;
    for (method, path) in [
        (Method::POST, format!("/api/v1/consultations/{id}/end")),
        (Method::POST, format!("/api/v1/consultations/{id}/invite")),
        (Method::DELETE, format!("/api/v1/consultations/{id}/invite")),
    ] {
        let r = doctor.bearer(method, &path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR, "{path}");
    }
    let read = doctor
        .bearer(
            Method::GET,
            &format!("/api/v1/consultations/{}", consultation.id),
        )
        .send()
        .await
        .unwrap();
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["status"], "open");
    assert_eq!(read["invite"]["revoked"], false);
    assert_eq!(count(&svc, "invites").await, invites);
}

#[tokio::test]
async fn sign_in_sign_out_recovery_codes_redemption_keys_and_accounts_change_nothing_unaudited() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("rollback@example.org").await;
    let (_, invite) = doctor.create_consultation().await;
    svc.next_totp_step();
    let code = totp::code_at(&doctor.totp_secret, svc.now_unix()).unwrap();
    let unused_codes = || async {
        consult_signaling::db::query_scalar::<i64>(
            "SELECT COUNT(*) FROM recovery_codes WHERE used_at IS NULL",
        )
        .fetch_one(&svc.state().pool)
        .await
        .unwrap()
    };
    let failures = || async {
        consult_signaling::db::query_scalar::<i64>(
            "SELECT failed_logins FROM users WHERE email = $1",
        )
        .bind("rollback@example.org")
        .fetch_one(&svc.state().pool)
        .await
        .unwrap()
    };
    let (sessions, participants, users, codes) = (
        count(&svc, "sessions").await,
        count(&svc, "participants").await,
        count(&svc, "users").await,
        unused_codes().await,
    );
    break_the_audit_log(&svc).await;

    // Signing in with every factor right opens no session.
    let r = svc
        .login("rollback@example.org", &doctor.password, Some(&code))
        .await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(count(&svc, "sessions").await, sessions);
    // A recovery code is not spent.
    let r = http_client()
        .post(svc.url("/api/v1/auth/login"))
        .json(&json!({ "email": doctor.email, "password": doctor.password,
                       "recovery_code": doctor.recovery_codes[0] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(unused_codes().await, codes);
    // A wrong password is not counted against the account.
    let r = svc
        .login("rollback@example.org", "not the password at all", None)
        .await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(failures().await, 0);
    // An invite is not taken.
    let r = svc.redeem(&invite, "Pat").await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(count(&svc, "participants").await, participants);
    // A recording key is not registered.
    let key = consult_e2ee::recording_key::RecordingKeyPair::generate(&mut rand::rngs::OsRng);
    let r = doctor
        .bearer(Method::PUT, "/api/v1/account/recording-key")
        .json(&json!({ "public_key": key.public().to_base64() }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(doctor.api.recording_key(&doctor.token).await.unwrap(), None);
    // An account is not created.
    assert!(consult_signaling::accounts::create_user(
        &svc.state().pool,
        &svc.state().audit,
        svc.state().clock.now(),
        &consult_signaling::accounts::NewUser {
            email: "never@example.org".into(),
            display_name: "Never".into(),
            role: Role::Doctor,
            licence_number: None,
        },
        "http://127.0.0.1",
        Duration::from_secs(3600),
    )
    .await
    .is_err());
    assert_eq!(count(&svc, "users").await, users);
    // Signing out leaves the session working.
    let r = doctor
        .bearer(Method::POST, "/api/v1/auth/logout")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let r = doctor
        .bearer(Method::GET, "/api/v1/auth/session")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Found by API fuzzing (schemathesis): serde read a JSON array into a struct field by field,
/// so `[null, null]` created a consultation; path and query errors of some routes answered in
/// plain text; a password the document called too long was accepted.
#[tokio::test]
async fn malformed_bodies_paths_and_queries_get_the_api_error_body() {
    let svc = TestService::start().await;
    let admin = svc.enrolled("root@clinic.test", Role::Admin).await;
    let doctor = svc.doctor("doc@clinic.test").await;
    let before = count(&svc, "consultations").await;
    for body in ["[null, null]", "[]", "null", "\"title\"", "42"] {
        let r = doctor
            .bearer(Method::POST, "/api/v1/consultations")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(r).await,
            (StatusCode::BAD_REQUEST, "invalid_body".into()),
            "{body}"
        );
    }
    assert_eq!(
        count(&svc, "consultations").await,
        before,
        "nothing created"
    );
    for (method, path, code) in [
        (
            Method::POST,
            "/api/v1/admin/accounts/null,null/disable",
            "invalid_path",
        ),
        (
            Method::GET,
            "/api/v1/admin/alerts?state=1&state=2",
            "invalid_query",
        ),
        (
            Method::POST,
            "/api/v1/admin/alerts/x/acknowledge",
            "invalid_path",
        ),
    ] {
        let r = admin.bearer(method, path).send().await.unwrap();
        assert_eq!(
            r.headers()["content-type"],
            "application/json",
            "{path}: the API's error body"
        );
        assert_eq!(
            error_code(r).await,
            (StatusCode::BAD_REQUEST, code.into()),
            "{path}"
        );
    }
    let r = doctor
        .bearer(Method::POST, "/api/v1/auth/password")
        .json(&json!({ "current_password": doctor.password, "new_password": "x".repeat(257) }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "weak_password".into())
    );
}
