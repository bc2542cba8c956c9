//! Consent and recording over the real signaling socket and API: who may answer, what everyone
//! is told, that a recorder joins (visibly) only with consent and leaves on withdrawal, that a
//! live-only consultation writes nothing, and that the policy guards every access.

mod common;

use common::{error_code, TestService};
use consult_proto::signal::{ClientMessage, ParticipantRole, RecordingState, ServerMessage};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The next `recording` message's state.
async fn recording_state(ws: &mut common::Signal) -> RecordingState {
    match ws.recv_type("recording").await {
        ServerMessage::Recording { state, .. } => state,
        _ => unreachable!(),
    }
}

/// Read `recording` messages until one says `wanted` (the states before it may vary with the
/// order the service processes two sockets in); fails on anything else.
async fn until_state(ws: &mut common::Signal, wanted: RecordingState) {
    for _ in 0..4 {
        let state = recording_state(ws).await;
        if state == wanted {
            return;
        }
        assert_eq!(state, RecordingState::AwaitingConsent, "before {wanted:?}");
    }
    panic!("no {wanted:?}");
}

fn consent(recording: bool) -> ClientMessage {
    ClientMessage::Consent { recording }
}

#[tokio::test]
async fn a_live_only_consultation_says_so_and_records_nothing() {
    let svc = TestService::start().await;
    let call = svc.admitted_call("ann@clinic.test").await;
    let (mut doctor_ws, mut patient_ws) = (call.doctor_ws, call.patient_ws);
    assert_eq!(
        recording_state(&mut doctor_ws).await,
        RecordingState::LiveOnly
    );
    assert_eq!(
        recording_state(&mut patient_ws).await,
        RecordingState::LiveOnly
    );
    // Consenting changes nothing: no recorder, nothing in the vault.
    patient_ws.send(&consent(true)).await;
    patient_ws.assert_alive().await;
    assert!(doctor_ws
        .drain(std::time::Duration::from_millis(300))
        .await
        .iter()
        .all(|m| !matches!(m, ServerMessage::PeerJoined { .. })));
    let list: Value = call
        .doctor
        .bearer(
            Method::GET,
            &format!("/api/v1/consultations/{}/recordings", call.consultation.id),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!({ "recordings": [] }));
    let vault = svc.state().recordings.vault.clone();
    assert!(vault.recordings().unwrap().is_empty());
}

#[tokio::test]
async fn consent_starts_a_visible_recorder_and_withdrawal_stops_it() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("ann@clinic.test").await;
    let (consultation, invite) = doctor
        .create_consultation_with(json!({ "mode": "recorded" }))
        .await;
    let (mut doctor_ws, _) = doctor.join(&svc, consultation.id).await;
    let patient = svc.patient(&invite, "Pat").await;
    let (mut patient_ws, _) = svc.join_patient(&patient.participant_token).await;
    // A waiting patient is asked already.
    assert_eq!(
        recording_state(&mut patient_ws).await,
        RecordingState::AwaitingConsent
    );
    doctor_ws
        .send(&ClientMessage::Admit {
            participant_id: patient.participant_id,
        })
        .await;
    patient_ws.recv_type("admitted").await;

    // Only the patient answers.
    doctor_ws.send(&consent(true)).await;
    assert!(!doctor_ws.expect_error("forbidden").await);

    patient_ws.send(&consent(true)).await;
    // The recorder joins as a participant everyone sees.
    let ServerMessage::PeerJoined { peer } = patient_ws.recv_type("peer_joined").await else {
        unreachable!()
    };
    assert_eq!(
        (peer.role, peer.name.as_str()),
        (ParticipantRole::Recorder, "Recorder")
    );
    assert_eq!(
        recording_state(&mut patient_ws).await,
        RecordingState::Recording
    );
    until_state(&mut doctor_ws, RecordingState::Recording).await;
    let recorder = peer.participant_id;

    // Withdrawal: the recorder leaves and everyone is told; consent cannot be given again.
    patient_ws.send(&consent(false)).await;
    assert_eq!(
        recording_state(&mut doctor_ws).await,
        RecordingState::Withdrawn
    );
    let ServerMessage::PeerLeft { participant_id, .. } = doctor_ws.recv_type("peer_left").await
    else {
        unreachable!()
    };
    assert_eq!(participant_id, recorder);
    patient_ws.send(&consent(true)).await;
    assert!(!patient_ws.expect_error("forbidden").await);

    // The recording is kept, flagged; it holds no media (nobody sent any), so it exports nothing.
    let list: Value = doctor
        .bearer(
            Method::GET,
            &format!("/api/v1/consultations/{}/recordings", consultation.id),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let recordings = list["recordings"].as_array().unwrap();
    assert_eq!(recordings.len(), 1);
    assert_eq!(recordings[0]["state"], "withdrawn");
    let id = recordings[0]["id"].as_str().unwrap().to_owned();
    let r = doctor
        .bearer(Method::GET, &format!("/api/v1/recordings/{id}/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::CONFLICT, "recording_empty".into())
    );

    // Another doctor may not list, export or shred it; each refusal is audited.
    let other = svc.doctor("bob@clinic.test").await;
    for (method, path) in [
        (
            Method::GET,
            format!("/api/v1/consultations/{}/recordings", consultation.id),
        ),
        (Method::GET, format!("/api/v1/recordings/{id}/export")),
        (Method::DELETE, format!("/api/v1/recordings/{id}")),
    ] {
        let r = other.bearer(method, &path).send().await.unwrap();
        assert_eq!(
            error_code(r).await,
            (StatusCode::FORBIDDEN, "access_denied".into())
        );
    }
    let entries = consult_signaling::audit::entries(&svc.state().pool)
        .await
        .unwrap();
    let actions = |name: &str| entries.iter().filter(|e| e.action == name).count();
    assert_eq!(actions("recording_access_denied"), 3);
    assert_eq!(actions("recording_consent"), 2);
    assert_eq!(actions("recording_started"), 1);
    assert_eq!(actions("recording_stopped"), 1);

    // The owner shreds it: gone for good.
    let r = doctor
        .bearer(Method::DELETE, &format!("/api/v1/recordings/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = doctor
        .bearer(Method::GET, &format!("/api/v1/recordings/{id}/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, StatusCode::FORBIDDEN);
    let uuid = id.parse().unwrap();
    assert!(svc.state().recordings.vault.is_shredded(uuid));
}

#[tokio::test]
async fn a_refusal_is_final_and_recording_can_be_forbidden_by_the_organisation() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("ann@clinic.test").await;
    let (consultation, invite) = doctor
        .create_consultation_with(json!({ "mode": "recorded" }))
        .await;
    let (mut doctor_ws, _) = doctor.join(&svc, consultation.id).await;
    let patient = svc.patient(&invite, "Pat").await;
    let (mut patient_ws, _) = svc.join_patient(&patient.participant_token).await;
    patient_ws.send(&consent(false)).await;
    doctor_ws
        .send(&ClientMessage::Admit {
            participant_id: patient.participant_id,
        })
        .await;
    until_state(&mut doctor_ws, RecordingState::Declined).await;
    patient_ws.send(&consent(true)).await;
    assert!(!patient_ws.expect_error("forbidden").await);
    assert!(svc
        .state()
        .recordings
        .vault
        .recordings()
        .unwrap()
        .is_empty());

    let strict = TestService::start_with(|c| c.policy.recording_allowed = false).await;
    let doctor = strict.doctor("ann@clinic.test").await;
    let r = doctor
        .bearer(Method::POST, "/api/v1/consultations")
        .json(&json!({ "mode": "recorded" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "recording_not_allowed".into())
    );
}
