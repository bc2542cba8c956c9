//! The signaling rules over a real WebSocket: admission, isolation, one device per invite,
//! reconnect grace, ending, heartbeats, and every kind of bad message.

use crate::common;

use std::time::Duration;

use common::{error_code, joined_parts, participant_id, TestService};
use consult_proto::api::WaitingPatient;
use consult_proto::signal::{
    ClientMessage, IceCandidate, LeaveReason, SdpKind, ServerMessage, SessionDescription,
};
use reqwest::{Method, StatusCode};
use uuid::Uuid;

fn offer(to: Uuid) -> ClientMessage {
    ClientMessage::Description {
        to,
        description: SessionDescription {
            kind: SdpKind::Offer,
            sdp: "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n".into(),
        },
    }
}

fn candidate(to: Uuid) -> ClientMessage {
    ClientMessage::Candidate {
        to,
        candidate: Some(IceCandidate {
            candidate: "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        }),
    }
}

#[tokio::test]
async fn patient_cannot_exchange_signaling_before_admission() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("ann@clinic.test").await;
    let (consultation, invite) = doctor.create_consultation().await;
    let (mut doc_ws, doc_joined) = doctor.join(&svc, consultation.id).await;
    let doctor_pid = participant_id(&doc_joined);
    let patient = svc.patient(&invite, "Pat Smith").await;
    let (mut pat_ws, joined) = svc.join_patient(&patient.participant_token).await;
    assert!(
        matches!(&joined, ServerMessage::Joined { admitted: false, polite: true, peers, .. } if peers.is_empty())
    );

    // The doctor sees the patient waiting, by name.
    let ServerMessage::WaitingRoom { entries } = doc_ws.recv_type("waiting_room").await else {
        unreachable!()
    };
    let entries = if entries.is_empty() {
        let ServerMessage::WaitingRoom { entries } = doc_ws.recv_type("waiting_room").await else {
            unreachable!()
        };
        entries
    } else {
        entries
    };
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].name, "Pat Smith");
    assert!(entries[0].connected);

    // Neither direction passes before admission.
    pat_ws.send(&offer(doctor_pid)).await;
    assert!(!pat_ws.expect_error("not_admitted").await);
    doc_ws.send(&offer(patient.participant_id)).await;
    assert!(!doc_ws.expect_error("outside_consultation").await);
    assert!(doc_ws
        .drain(Duration::from_millis(200))
        .await
        .iter()
        .all(|m| !matches!(m, ServerMessage::Description { .. })));
    assert!(pat_ws
        .drain(Duration::from_millis(200))
        .await
        .iter()
        .all(|m| !matches!(m, ServerMessage::Description { .. })));

    // The waiting room over REST, then admission over the socket.
    let waiting: Vec<WaitingPatient> = doctor
        .bearer(Method::GET, "/api/v1/waiting-room")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(waiting[0].participant_id, patient.participant_id);
    doc_ws
        .send(&ClientMessage::Admit {
            participant_id: patient.participant_id,
        })
        .await;
    let ServerMessage::Admitted { peers } = pat_ws.recv_type("admitted").await else {
        unreachable!()
    };
    assert_eq!(peers[0].participant_id, doctor_pid);
    assert!(
        matches!(doc_ws.recv_type("peer_joined").await, ServerMessage::PeerJoined { peer } if peer.participant_id == patient.participant_id)
    );

    // Now offers and candidates flow both ways, stamped with the sender.
    pat_ws.send(&offer(doctor_pid)).await;
    let ServerMessage::Description { from, description } = doc_ws.recv_type("description").await
    else {
        unreachable!()
    };
    assert_eq!(
        (from, description.kind),
        (patient.participant_id, SdpKind::Offer)
    );
    doc_ws.send(&candidate(patient.participant_id)).await;
    let ServerMessage::Candidate { from, candidate } = pat_ws.recv_type("candidate").await else {
        unreachable!()
    };
    assert_eq!(from, doctor_pid);
    assert_eq!(candidate.unwrap().sdp_m_line_index, Some(0));
    // A patient cannot admit anyone.
    pat_ws
        .send(&ClientMessage::Admit {
            participant_id: patient.participant_id,
        })
        .await;
    assert!(!pat_ws.expect_error("forbidden").await);
    let metrics = svc.metrics().await;
    assert!(
        metrics.contains("consult_signal_rejected_total{reason=\"not_admitted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("consult_signal_messages_total{type=\"description\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn consultations_are_isolated_from_each_other() {
    let svc = TestService::start().await;
    let alice = svc.doctor("alice@clinic.test").await;
    let bob = svc.doctor("bob@clinic.test").await;
    let (a, a_invite) = alice.create_consultation().await;
    let (b, _) = bob.create_consultation().await;
    let (mut a_ws, _) = alice.join(&svc, a.id).await;
    let (mut b_ws, b_joined) = bob.join(&svc, b.id).await;
    let bob_pid = participant_id(&b_joined);
    let patient = svc.patient(&a_invite, "Pat").await;
    let (mut pat_ws, _) = svc.join_patient(&patient.participant_token).await;
    alice
        .bearer(
            Method::POST,
            &format!(
                "/api/v1/consultations/{}/participants/{}/admit",
                a.id, patient.participant_id
            ),
        )
        .send()
        .await
        .unwrap();
    pat_ws.recv_type("admitted").await;
    b_ws.drain(Duration::from_millis(100)).await;

    pat_ws.send(&offer(bob_pid)).await;
    assert!(!pat_ws.expect_error("outside_consultation").await);
    a_ws.send(&candidate(bob_pid)).await;
    assert!(!a_ws.expect_error("outside_consultation").await);
    assert!(
        b_ws.drain(Duration::from_millis(300)).await.is_empty(),
        "nothing may reach another consultation"
    );

    // Bob can neither join Alice's consultation nor admit in it.
    let mut intruder = svc.connect().await;
    intruder
        .send(&ClientMessage::Join {
            token: Some(bob.token.clone()),
            consultation_id: Some(a.id),
        })
        .await;
    assert!(intruder.expect_error("forbidden").await);
    intruder.expect_closed().await;
    let r = bob
        .bearer(
            Method::POST,
            &format!(
                "/api/v1/consultations/{}/participants/{}/admit",
                a.id, patient.participant_id
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    a_ws.assert_alive().await;
}

#[tokio::test]
async fn bad_messages_get_clear_errors_and_the_session_goes_on() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("bea@clinic.test").await;
    let (consultation, _) = doctor.create_consultation().await;
    let mut ws = svc.connect().await;
    ws.send(&ClientMessage::Ping {}).await;
    assert!(!ws.expect_error("not_joined").await);
    let (mut ws, _) = doctor.join(&svc, consultation.id).await;
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "malformed"),
        ("[]".into(), "malformed"),
        (r#"{"type":"ping"}"#.into(), "unsupported_version"),
        (r#"{"v":7,"type":"ping"}"#.into(), "unsupported_version"),
        (r#"{"v":1,"type":"teleport"}"#.into(), "unknown_type"),
        (
            r#"{"v":1,"type":"candidate","to":"nope"}"#.into(),
            "malformed",
        ),
        (
            format!(
                r#"{{"v":1,"type":"description","to":"{}","description":{{"type":"offer","sdp":"{}"}}}}"#,
                Uuid::new_v4(),
                "a".repeat(70_000)
            ),
            "too_large",
        ),
        (
            format!(
                r#"{{"v":1,"type":"candidate","to":"{}","candidate":null}}"#,
                Uuid::new_v4()
            ),
            "outside_consultation",
        ),
        (
            format!(
                r#"{{"v":1,"type":"join","consultation_id":"{}"}}"#,
                consultation.id
            ),
            "already_joined",
        ),
    ];
    for (text, code) in &cases {
        ws.send_text(text.clone()).await;
        assert!(!ws.expect_error(code).await, "{code} must not be fatal");
    }
    ws.assert_alive().await;
    let metrics = svc.metrics().await;
    for reason in [
        "malformed",
        "unsupported_version",
        "unknown_type",
        "too_large",
        "outside_consultation",
        "already_joined",
    ] {
        assert!(
            metrics.contains(&format!(
                "consult_signal_rejected_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted"
        );
    }
}

#[tokio::test]
async fn a_flood_is_rate_limited_without_closing_the_session() {
    let svc = TestService::start_with(|c| c.signaling.max_messages_per_second = 5).await;
    let doctor = svc.doctor("flo@clinic.test").await;
    let (consultation, _) = doctor.create_consultation().await;
    let (mut ws, _) = doctor.join(&svc, consultation.id).await;
    for _ in 0..30 {
        ws.send(&ClientMessage::Ping {}).await;
    }
    let replies = ws.drain(Duration::from_millis(300)).await;
    let limited = replies
        .iter()
        .filter(
            |m| matches!(m, ServerMessage::Error { code, .. } if code.as_str() == "rate_limited"),
        )
        .count();
    assert!(limited >= 15, "{limited} of 30 limited");
    tokio::time::sleep(Duration::from_millis(500)).await;
    ws.assert_alive().await;
}

#[tokio::test]
async fn unauthenticated_joins_are_refused_and_closed() {
    let svc = TestService::start().await;
    for join in [
        ClientMessage::Join {
            token: None,
            consultation_id: None,
        },
        ClientMessage::Join {
            token: Some("forged".into()),
            consultation_id: None,
        },
        ClientMessage::Join {
            token: Some("forged".into()),
            consultation_id: Some(Uuid::new_v4()),
        },
    ] {
        let mut ws = svc.connect().await;
        ws.send(&join).await;
        assert!(ws.expect_error("unauthorized").await);
        ws.expect_closed().await;
    }
}

#[tokio::test]
async fn an_invite_is_held_by_one_device_at_a_time() {
    let svc =
        TestService::start_with(|c| c.signaling.reconnect_grace = Duration::from_millis(300)).await;
    let doctor = svc.doctor("cat@clinic.test").await;
    let (_, invite) = doctor.create_consultation().await;
    let first = svc.patient(&invite, "Pat").await;
    let (mut first_ws, _) = svc.join_patient(&first.participant_token).await;
    let (status, code) = error_code(svc.redeem(&invite, "Someone else").await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::CONFLICT, "invite_in_use")
    );
    // The first device keeps working.
    first_ws.assert_alive().await;
    // Once it hangs up, the link is free again, and the old token is dead.
    first_ws.send(&ClientMessage::Leave {}).await;
    first_ws.expect_closed().await;
    // At once: the link is released before the connection closes.
    let second = svc.patient(&invite, "Pat again").await;
    assert_ne!(second.participant_id, first.participant_id);
    let mut stale = svc.connect().await;
    stale
        .send(&ClientMessage::Join {
            token: Some(first.participant_token.clone()),
            consultation_id: None,
        })
        .await;
    assert!(stale.expect_error("unauthorized").await);

    // A device that redeems and never connects loses the link after the grace period.
    let (_, invite2) = doctor.create_consultation().await;
    svc.patient(&invite2, "Idle").await;
    assert_eq!(
        svc.redeem(&invite2, "Other").await.status(),
        StatusCode::CONFLICT
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while svc.redeem(&invite2, "Other").await.status() != StatusCode::CREATED {
        assert!(
            std::time::Instant::now() < deadline,
            "an unused hold was never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_reconnect_within_the_grace_period_gets_its_place_back() {
    let svc =
        TestService::start_with(|c| c.signaling.reconnect_grace = Duration::from_millis(800)).await;
    let doctor = svc.doctor("dan@clinic.test").await;
    let (consultation, invite) = doctor.create_consultation().await;
    let (mut doc_ws, _) = doctor.join(&svc, consultation.id).await;
    let patient = svc.patient(&invite, "Pat").await;
    let (pat_ws, _) = svc.join_patient(&patient.participant_token).await;
    doc_ws
        .send(&ClientMessage::Admit {
            participant_id: patient.participant_id,
        })
        .await;
    doc_ws.recv_type("peer_joined").await;

    drop(pat_ws);
    assert_eq!(
        doc_ws.recv_type("peer_presence").await,
        ServerMessage::PeerPresence {
            participant_id: patient.participant_id,
            online: false
        }
    );
    let (mut pat_ws, joined) = svc.join_patient(&patient.participant_token).await;
    assert!(
        matches!(
            joined,
            ServerMessage::Joined {
                admitted: true,
                resumed: true,
                ..
            }
        ),
        "{joined:?}"
    );
    assert_eq!(
        doc_ws.recv_type("peer_presence").await,
        ServerMessage::PeerPresence {
            participant_id: patient.participant_id,
            online: true
        }
    );
    // Still admitted: signaling flows without a second admission.
    let doctor_pid = match joined {
        ServerMessage::Joined { peers, .. } => peers[0].participant_id,
        _ => unreachable!(),
    };
    pat_ws.send(&offer(doctor_pid)).await;
    doc_ws.recv_type("description").await;

    // A second connection with the same token replaces the first.
    let (mut newer, _) = svc.join_patient(&patient.participant_token).await;
    assert_eq!(
        pat_ws.recv_type("replaced").await,
        ServerMessage::Replaced {}
    );
    pat_ws.expect_closed().await;
    newer.assert_alive().await;

    // Gone longer than the grace period: the place is lost and the doctor is told.
    drop(newer);
    let left = doc_ws.recv_type("peer_left").await;
    assert_eq!(
        left,
        ServerMessage::PeerLeft {
            participant_id: patient.participant_id,
            reason: LeaveReason::ConnectionLost
        }
    );
    // The doctor hears first; the place is released and audited right after.
    let actor = format!("participant:{}", patient.participant_id);
    svc.audited("left", Some(&actor)).await;
    let mut late = svc.connect().await;
    late.send(&ClientMessage::Join {
        token: Some(patient.participant_token.clone()),
        consultation_id: None,
    })
    .await;
    assert!(late.expect_error("unauthorized").await);
}

#[tokio::test]
async fn ending_a_consultation_disconnects_everyone_and_kills_the_link() {
    let svc = TestService::start().await;
    let call = svc.admitted_call("eve@clinic.test").await;
    let (doctor, consultation, invite) = (call.doctor, call.consultation, call.invite);
    let (mut doc_ws, mut pat_ws) = (call.doctor_ws, call.patient_ws);
    let r = doctor
        .bearer(
            Method::POST,
            &format!("/api/v1/consultations/{}/end", consultation.id),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for ws in [&mut doc_ws, &mut pat_ws] {
        assert_eq!(
            ws.recv_type("consultation_ended").await,
            ServerMessage::ConsultationEnded {}
        );
        ws.expect_closed().await;
    }
    assert_eq!(
        error_code(svc.redeem(&invite, "Pat").await).await.1,
        "consultation_ended"
    );
    let mut again = svc.connect().await;
    again
        .send(&ClientMessage::Join {
            token: Some(doctor.token.clone()),
            consultation_id: Some(consultation.id),
        })
        .await;
    assert!(again.expect_error("consultation_ended").await);
}

#[tokio::test]
async fn a_doctor_admits_one_patient_at_a_time_across_consultations() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("fay@clinic.test").await;
    let (first, first_invite) = doctor.create_consultation().await;
    let (second, second_invite) = doctor.create_consultation().await;
    let p1 = svc.patient(&first_invite, "One").await;
    let p2 = svc.patient(&second_invite, "Two").await;
    let (_w1, _) = svc.join_patient(&p1.participant_token).await;
    let (mut w2, _) = svc.join_patient(&p2.participant_token).await;
    let waiting: Vec<WaitingPatient> = doctor
        .bearer(Method::GET, "/api/v1/waiting-room")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(waiting.len(), 2);
    let admit = |c: Uuid, p: Uuid| {
        doctor
            .bearer(
                Method::POST,
                &format!("/api/v1/consultations/{c}/participants/{p}/admit"),
            )
            .send()
    };
    assert_eq!(
        admit(first.id, p1.participant_id).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let (status, code) = error_code(admit(second.id, p2.participant_id).await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::CONFLICT, "doctor_busy")
    );
    // Declining the second patient closes their connection with a clear message.
    let r = doctor
        .bearer(
            Method::POST,
            &format!(
                "/api/v1/consultations/{}/participants/{}/decline",
                second.id, p2.participant_id
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(w2.recv_type("declined").await, ServerMessage::Declined {});
    w2.expect_closed().await;
}

#[tokio::test]
async fn revoking_the_invite_disconnects_its_holder() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("gus@clinic.test").await;
    let (consultation, invite) = doctor.create_consultation().await;
    let patient = svc.patient(&invite, "Pat").await;
    let (mut pat_ws, _) = svc.join_patient(&patient.participant_token).await;
    let r = doctor
        .bearer(
            Method::DELETE,
            &format!("/api/v1/consultations/{}/invite", consultation.id),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(pat_ws.expect_error("unauthorized").await);
    pat_ws.expect_closed().await;
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_heartbeat_timeout() {
    let svc = TestService::start_with(|c| {
        c.signaling.heartbeat_interval = Duration::from_millis(100);
        c.signaling.heartbeat_timeout = Duration::from_millis(400);
        c.signaling.join_timeout = Duration::from_millis(200);
    })
    .await;
    let doctor = svc.doctor("hal@clinic.test").await;
    let (consultation, _) = doctor.create_consultation().await;
    let (mut ws, joined) = doctor.join(&svc, consultation.id).await;
    assert!(matches!(
        joined,
        ServerMessage::Joined {
            heartbeat_interval_ms: 100,
            ..
        }
    ));
    assert!(ws.expect_error("heartbeat_timeout").await);
    ws.expect_closed().await;
    // A connection that never joins is closed too.
    let mut idle = svc.connect().await;
    assert!(idle.expect_error("not_joined").await);
}

#[tokio::test]
async fn signing_out_ends_the_doctors_signaling_connection() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("ida@clinic.test").await;
    let (consultation, _) = doctor.create_consultation().await;
    let (mut ws, _) = doctor.join(&svc, consultation.id).await;
    ws.assert_alive().await;
    doctor
        .bearer(Method::POST, "/api/v1/auth/logout")
        .send()
        .await
        .unwrap();
    ws.send(&ClientMessage::Ping {}).await;
    assert!(ws.expect_error("unauthorized").await);
    ws.expect_closed().await;
}

#[tokio::test]
async fn a_websocket_from_another_origin_is_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let svc = TestService::start().await;
    let mut request = svc.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(request).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    let mut request = svc.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", svc.base.parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_ok());
}

#[tokio::test]
async fn a_whole_consultation_leaves_an_intact_audit_chain_without_secrets() {
    let svc = TestService::start().await;
    let call = svc.admitted_call("jo@clinic.test").await;
    let (doctor, consultation, invite, patient) =
        (call.doctor, call.consultation, call.invite, call.patient);
    let (mut doc_ws, mut pat_ws, doctor_id) = (call.doctor_ws, call.patient_ws, call.doctor_id);
    let sdp_marker = "a=fingerprint:sha-256 SECRET-SDP-MARKER";
    pat_ws
        .send(&ClientMessage::Description {
            to: doctor_id,
            description: SessionDescription {
                kind: SdpKind::Offer,
                sdp: sdp_marker.into(),
            },
        })
        .await;
    doc_ws.recv_type("description").await;
    pat_ws.send(&ClientMessage::Leave {}).await;
    doc_ws.recv_type("peer_left").await;
    svc.audited(
        "left",
        Some(&format!("participant:{}", patient.participant_id)),
    )
    .await;
    doctor
        .bearer(
            Method::POST,
            &format!("/api/v1/consultations/{}/end", consultation.id),
        )
        .send()
        .await
        .unwrap();

    // The doctor's own departure may still be appended meanwhile: the chain verified covers at
    // least every entry read before it.
    let pool = &svc.state().pool;
    let entries = consult_signaling::audit::entries(pool).await.unwrap();
    let verified = consult_signaling::audit::verify(pool).await.unwrap();
    assert!(
        matches!(verified, Ok(n) if n >= entries.len()),
        "{verified:?} of {} entries",
        entries.len()
    );
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    for action in [
        "user_created",
        "account_enrolled",
        "mfa_enrolled",
        "sign_in",
        "consultation_created",
        "invite_issued",
        "invite_used",
        "joined",
        "admitted",
        "left",
        "consultation_ended",
    ] {
        assert!(
            actions.contains(&action),
            "{action} not audited: {actions:?}"
        );
    }
    let text = serde_json::to_string(&entries).unwrap();
    for secret in [
        doctor.token.as_str(),
        doctor.password.as_str(),
        doctor.totp_secret.as_str(),
        invite.as_str(),
        patient.participant_token.as_str(),
        "SECRET-SDP-MARKER",
        doctor.recovery_codes[0].as_str(),
    ] {
        assert!(!text.contains(secret), "a secret reached the audit log");
    }
}

/// The `joined` a participant gets: (participant id, admitted, resumed, the peers' ids).
/// A restart mid-call (a deploy) forgets nobody: the patient's token still works and they are
/// still admitted, the doctor comes back under the same participant id, each finds the other
/// among their peers (so neither page starts a new peer connection), messages flow again without
/// a new admission, and ending the consultation still reaches the patient.
#[tokio::test]
async fn a_restarted_service_gives_everyone_their_place_in_the_call_back() {
    let svc = TestService::start().await;
    let call = svc.admitted_call("dr.restart@example.org").await;
    let (doctor, consultation, patient, doctor_id) =
        (call.doctor, call.consultation, call.patient, call.doctor_id);
    drop((call.doctor_ws, call.patient_ws));
    let svc = svc.restart().await;

    // The patient is back first: admitted, resumed, the (offline) doctor among the peers.
    let (mut patient_ws, joined) = svc.join_patient(&patient.participant_token).await;
    assert_eq!(
        joined_parts(&joined),
        (patient.participant_id, true, true, vec![doctor_id])
    );
    // The doctor is back under the same participant id, and finds the patient in the call.
    let (mut doctor_ws, joined) = doctor.join(&svc, consultation.id).await;
    assert_eq!(
        joined_parts(&joined),
        (doctor_id, true, true, vec![patient.participant_id])
    );
    assert_eq!(
        patient_ws.recv_type("peer_presence").await,
        ServerMessage::PeerPresence {
            participant_id: doctor_id,
            online: true
        }
    );
    // Signaling flows between them again, with no admission.
    doctor_ws
        .send(&ClientMessage::Description {
            to: patient.participant_id,
            description: consult_proto::signal::SessionDescription {
                kind: consult_proto::signal::SdpKind::Offer,
                sdp: "v=0\r\n".into(),
            },
        })
        .await;
    assert!(matches!(
        patient_ws.recv_type("description").await,
        ServerMessage::Description { from, .. } if from == doctor_id
    ));
    // Ending reaches the patient.
    doctor
        .api
        .end(&doctor.token, consultation.id)
        .await
        .unwrap();
    assert_eq!(
        patient_ws.recv_type("consultation_ended").await,
        ServerMessage::ConsultationEnded {}
    );
}

/// A place nobody reclaims within the reconnect grace after a restart is released as after any
/// lost connection: the old token stops working, the departure is audited, and the invite link
/// works again on a new device. A waiting patient comes back waiting.
#[tokio::test]
async fn after_a_restart_a_place_not_reclaimed_in_the_grace_period_is_released() {
    let svc =
        TestService::start_with(|c| c.signaling.reconnect_grace = Duration::from_secs(1)).await;
    let doctor = svc.doctor("dr.gone@example.org").await;
    let (consultation, invite) = doctor.create_consultation().await;
    let waiting = svc.patient(&invite, "Wanda").await;
    let (waiting_ws, _) = svc.join_patient(&waiting.participant_token).await;
    drop(waiting_ws);
    let svc = svc.restart().await;
    // Back within the grace period: still waiting, not admitted.
    let (ws, joined) = svc.join_patient(&waiting.participant_token).await;
    assert_eq!(
        joined_parts(&joined),
        (waiting.participant_id, false, true, vec![])
    );
    drop(ws);
    let svc = svc.restart().await;
    // Not back this time: released after the grace period.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = svc.audited_count("left").await;
        if left >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no departure recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut again = svc.connect().await;
    again
        .send(&ClientMessage::Join {
            token: Some(waiting.participant_token.clone()),
            consultation_id: None,
        })
        .await;
    assert!(again.expect_error("unauthorized").await);
    let fresh = svc.patient(&invite, "Wanda").await;
    assert_ne!(fresh.participant_id, waiting.participant_id);
    let _ = consultation;
}
