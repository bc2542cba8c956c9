//! Automatic logoff that means it: background polling and heartbeats never extend a session,
//! the person's actions and a call do; and a session that ends — sign-out, password change, a
//! disabled account, the idle timeout — ends on REST and on the WebSocket, the WebSocket within
//! moments.

use std::time::{Duration, Instant};

use consult_api_client::ApiError as ClientError;
use consult_proto::api::{ChangePasswordRequest, Role};
use consult_proto::signal::{ClientMessage, ServerMessage};
use consult_signaling::clock::Clock;
use reqwest::StatusCode;
use serde_json::json;

use crate::common::{Doctor, Signal, TestService};

const IDLE: Duration = Duration::from_secs(15 * 60);

fn unauthorized<T: std::fmt::Debug>(result: Result<T, ClientError>) -> bool {
    matches!(result, Err(ClientError::Refused { status: 401, .. }))
}

/// Wait for the server to close `ws` with a fatal `unauthorized` error; how long it took.
async fn closed_as_unauthorized(ws: &mut Signal, since: Instant) -> Duration {
    loop {
        match ws.recv().await {
            Some(ServerMessage::Error { code, fatal, .. }) => {
                assert_eq!(code.as_str(), "unauthorized");
                assert!(fatal);
                let took = since.elapsed();
                assert!(
                    ws.recv().await.is_none(),
                    "the socket closes after the error"
                );
                return took;
            }
            Some(_) => continue,
            None => panic!("closed without saying why"),
        }
    }
}

#[tokio::test]
async fn polling_never_extends_a_session_and_the_persons_actions_do() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.idle@example.org").await;
    let api = &doctor.api;
    // Ten minutes of the list page polling every few seconds, nobody at the keyboard.
    for _ in 0..20 {
        svc.clock.advance(Duration::from_secs(30));
        api.waiting_room(&doctor.token).await.unwrap();
        api.session(&doctor.token).await.unwrap();
    }
    svc.clock
        .advance(IDLE - Duration::from_secs(600) - Duration::from_secs(1));
    api.waiting_room(&doctor.token).await.unwrap();
    svc.clock.advance(Duration::from_secs(2));
    assert!(
        unauthorized(api.waiting_room(&doctor.token).await),
        "15 minutes after the last action, polling or not, the session is over"
    );

    // The person's actions do extend it: a reported input, a change.
    let doctor = svc.doctor("dr.busy@example.org").await;
    let api = &doctor.api;
    svc.clock.advance(Duration::from_secs(600));
    let before = svc.clock.now();
    let session = api.activity(&doctor.token).await.unwrap();
    assert_eq!(
        session.idle_expires_at.unix_timestamp(),
        (before + IDLE).unix_timestamp()
    );
    svc.clock.advance(Duration::from_secs(600));
    doctor.create_consultation().await;
    svc.clock.advance(Duration::from_secs(600));
    let seen = api.session(&doctor.token).await.unwrap();
    assert!(
        seen.idle_expires_at > svc.clock.now(),
        "still on: a change 10 minutes ago"
    );
}

#[tokio::test]
async fn heartbeats_extend_a_session_only_during_a_call() {
    let svc = TestService::start().await;
    // Alone in the consultation (nobody admitted): heartbeats do not count.
    let doctor = svc.doctor("dr.alone@example.org").await;
    let (consultation, _) = doctor.create_consultation().await;
    let (mut ws, _) = doctor.join(&svc, consultation.id).await;
    let mut minutes = 0;
    loop {
        svc.clock.advance(Duration::from_secs(60));
        minutes += 1;
        if !ping_answered(&mut ws).await {
            break;
        }
        assert!(minutes < 15, "heartbeats kept an idle session alive");
    }
    assert_eq!(minutes, 15, "the socket closed at the idle timeout");
    assert!(
        ws.recv().await.is_none(),
        "the idle session closed the socket"
    );
    assert!(unauthorized(doctor.api.session(&doctor.token).await));

    // In a call, they do: 40 minutes of talking, no click.
    let mut call = svc.admitted_call("dr.talking@example.org").await;
    for _ in 0..40 {
        svc.clock.advance(Duration::from_secs(60));
        call.doctor_ws.send(&ClientMessage::Ping {}).await;
        call.doctor_ws.recv_type("pong").await;
    }
    call.doctor
        .api
        .session(&call.doctor.token)
        .await
        .expect("the call kept the session");
}

/// Send a heartbeat: true when answered, false when the service ends the session instead
/// (`unauthorized`, fatal). Whatever else the service says first (waiting-room news) is skipped.
async fn ping_answered(ws: &mut Signal) -> bool {
    ws.send(&ClientMessage::Ping {}).await;
    loop {
        match ws.recv().await {
            Some(ServerMessage::Pong { .. }) => return true,
            Some(ServerMessage::Error { code, fatal, .. }) => {
                assert_eq!((code.as_str(), fatal), ("unauthorized", true));
                return false;
            }
            Some(_) => continue,
            None => panic!("closed without saying why"),
        }
    }
}

/// A session past its absolute lifetime ends its WebSocket at the next heartbeat, even in a call,
/// whose heartbeats keep it from idling out.
#[tokio::test]
async fn a_session_past_its_absolute_lifetime_ends_its_websocket_even_in_a_call() {
    let svc =
        TestService::start_with(|c| c.session.absolute_timeout = Duration::from_secs(3600)).await;
    let mut call = svc.admitted_call("dr.long.call@example.org").await;
    let mut minutes = 0;
    loop {
        svc.clock.advance(Duration::from_secs(60));
        minutes += 1;
        if !ping_answered(&mut call.doctor_ws).await {
            break;
        }
        assert!(
            minutes < 60,
            "the call outlived the session's absolute lifetime"
        );
    }
    assert_eq!(minutes, 60, "the socket closed at the absolute timeout");
    assert!(
        call.doctor_ws.recv().await.is_none(),
        "the expired session closed the socket"
    );
    assert!(unauthorized(
        call.doctor.api.session(&call.doctor.token).await
    ));
}

/// A doctor connected to a consultation's signaling.
async fn connected(svc: &TestService, doctor: &Doctor) -> Signal {
    connected_with(svc, doctor, &doctor.token).await
}

/// The doctor's session `token` connected to a new consultation's signaling.
async fn connected_with(svc: &TestService, doctor: &Doctor, token: &str) -> Signal {
    let consultation = doctor
        .api
        .create_consultation(token, &Default::default())
        .await
        .unwrap();
    let mut ws = svc.connect().await;
    ws.send(&ClientMessage::Join {
        token: Some(token.to_owned()),
        consultation_id: Some(consultation.id),
    })
    .await;
    ws.recv_type("joined").await;
    ws
}

#[tokio::test]
async fn signing_out_closes_the_sessions_sockets_within_a_second() {
    let svc = TestService::start().await;
    let mut closing = Vec::new();
    for run in 0..20 {
        let doctor = svc.doctor(&format!("dr.out{run}@example.org")).await;
        let mut ws = connected(&svc, &doctor).await;
        let since = Instant::now();
        doctor.api.sign_out(&doctor.token).await.unwrap();
        closing.push(closed_as_unauthorized(&mut ws, since).await);
        assert!(unauthorized(doctor.api.session(&doctor.token).await));
    }
    closing.sort();
    let p95 = closing[closing.len() * 95 / 100 - 1];
    println!(
        "sign-out to socket closed, 20 runs: median {:?}, p95 {p95:?}, max {:?}",
        closing[closing.len() / 2],
        closing[closing.len() - 1]
    );
    assert!(p95 < Duration::from_secs(1), "p95 {p95:?}");
}

#[tokio::test]
async fn a_password_change_ends_every_other_session_and_keeps_this_one() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.newpass@example.org").await;
    // A second session of the same account (another device), with a socket open.
    svc.next_totp_step();
    let code = consult_signaling::auth::totp::code_at(&doctor.totp_secret, svc.now_unix()).unwrap();
    let other: serde_json::Value = svc
        .login(&doctor.email, &doctor.password, Some(&code))
        .await
        .json()
        .await
        .unwrap();
    let other_token = other["session"]["token"].as_str().unwrap().to_owned();
    let mut other_ws = connected_with(&svc, &doctor, &other_token).await;
    let mut own_ws = connected(&svc, &doctor).await;

    // A wrong current password changes nothing and counts as a failure.
    let wrong = doctor
        .api
        .change_password(
            &doctor.token,
            &ChangePasswordRequest {
                current_password: "not my password at all".into(),
                new_password: "a brand new long password".into(),
            },
        )
        .await;
    assert!(unauthorized(wrong));
    // A weak new one is refused.
    let weak = doctor
        .api
        .change_password(
            &doctor.token,
            &ChangePasswordRequest {
                current_password: doctor.password.clone(),
                new_password: "short".into(),
            },
        )
        .await;
    assert!(matches!(
        weak,
        Err(ClientError::Refused { status: 400, .. })
    ));
    other_ws.assert_alive().await;

    let since = Instant::now();
    doctor
        .api
        .change_password(
            &doctor.token,
            &ChangePasswordRequest {
                current_password: doctor.password.clone(),
                new_password: "a brand new long password".into(),
            },
        )
        .await
        .unwrap();
    let took = closed_as_unauthorized(&mut other_ws, since).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(unauthorized(doctor.api.session(&other_token).await));
    own_ws.assert_alive().await;
    doctor.api.session(&doctor.token).await.unwrap();
    // The old password is gone, the new one works.
    svc.next_totp_step();
    let code = consult_signaling::auth::totp::code_at(&doctor.totp_secret, svc.now_unix()).unwrap();
    let old = svc
        .login(&doctor.email, &doctor.password, Some(&code))
        .await;
    assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
    let new = svc
        .login(&doctor.email, "a brand new long password", Some(&code))
        .await;
    assert_eq!(new.status(), StatusCode::OK);
    let audited = svc.audited("password_changed", None).await;
    assert_eq!(audited.detail["sessions_ended"], json!(1));
}

#[tokio::test]
async fn an_administrator_disabling_an_account_ends_its_sessions_at_once() {
    let svc = TestService::start().await;
    let admin = svc.enrolled("admin@example.org", Role::Admin).await;
    let doctor = svc.doctor("dr.leaving@example.org").await;
    let mut ws = connected(&svc, &doctor).await;
    // Only administrators may.
    let doctor_id = doctor.api.session(&doctor.token).await.unwrap().user.id;
    assert!(matches!(
        doctor.api.disable_account(&doctor.token, doctor_id).await,
        Err(ClientError::Refused { status: 403, .. })
    ));
    assert!(matches!(
        doctor.api.accounts(&doctor.token).await,
        Err(ClientError::Refused { status: 403, .. })
    ));
    let admin_id = admin.api.session(&admin.token).await.unwrap().user.id;
    assert!(matches!(
        admin.api.disable_account(&admin.token, admin_id).await,
        Err(ClientError::Refused { status: 403, .. })
    ));
    assert!(matches!(
        admin
            .api
            .disable_account(&admin.token, uuid::Uuid::new_v4())
            .await,
        Err(ClientError::Refused { status: 404, .. })
    ));

    let since = Instant::now();
    admin
        .api
        .disable_account(&admin.token, doctor_id)
        .await
        .unwrap();
    let took = closed_as_unauthorized(&mut ws, since).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(unauthorized(doctor.api.session(&doctor.token).await));
    let listed = admin.api.accounts(&admin.token).await.unwrap();
    let entry = listed.iter().find(|a| a.user.id == doctor_id).unwrap();
    assert!(entry.disabled_at.is_some());
    // The right password is told the account is disabled; a wrong one learns nothing.
    svc.next_totp_step();
    let code = consult_signaling::auth::totp::code_at(&doctor.totp_secret, svc.now_unix()).unwrap();
    let r = svc
        .login(&doctor.email, &doctor.password, Some(&code))
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = svc
        .login(&doctor.email, "not the password at all", Some(&code))
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let audited = svc.audited("account_disabled", None).await;
    assert_eq!(audited.detail["account"], json!(doctor_id));
}
