//! Consent and recording over the real signaling socket and API: who may answer, what everyone
//! is told, that a recorder joins (visibly) only with consent and leaves on withdrawal, that a
//! live-only consultation writes nothing, and that the policy guards every access.

use crate::common;

use common::{error_code, synthetic_recording, TestService};
use consult_proto::api::{ConsultationMode, CreateConsultationRequest};
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
pub(crate) async fn until_state(ws: &mut common::Signal, wanted: RecordingState) {
    for _ in 0..4 {
        let state = recording_state(ws).await;
        if state == wanted {
            return;
        }
        assert_eq!(state, RecordingState::AwaitingConsent, "before {wanted:?}");
    }
    panic!("no {wanted:?}");
}

/// A recorded consultation, end-to-end encrypted or not.
pub(crate) fn recorded(e2ee: bool) -> CreateConsultationRequest {
    CreateConsultationRequest {
        mode: Some(ConsultationMode::Recorded),
        e2ee: e2ee.then_some(true),
        ..Default::default()
    }
}

fn consent(recording: bool) -> ClientMessage {
    ClientMessage::Consent { recording }
}

/// A consultation created with `request`, its patient admitted and consenting: the sockets, the
/// patient's place and the recorder that joined.
pub(crate) struct ConsentedCall {
    pub(crate) consultation: consult_proto::api::Consultation,
    pub(crate) doctor_ws: common::Signal,
    pub(crate) patient: consult_api_client::PatientPlace,
    pub(crate) patient_ws: common::Signal,
    pub(crate) recorder: consult_proto::signal::Peer,
}

/// A consultation created with `request`: the doctor in it, the patient in its waiting room.
async fn waiting_call(
    svc: &TestService,
    doctor: &common::Doctor,
    request: CreateConsultationRequest,
) -> (
    consult_proto::api::Consultation,
    common::Signal,
    consult_api_client::PatientPlace,
    common::Signal,
) {
    let (consultation, invite) = doctor.create_consultation_with(request).await;
    let (doctor_ws, _) = doctor.join(svc, consultation.id).await;
    let patient = svc.patient(&invite, "Pat").await;
    let (patient_ws, _) = svc.join_patient(&patient.participant_token).await;
    (consultation, doctor_ws, patient, patient_ws)
}

pub(crate) async fn consented_call(
    svc: &TestService,
    doctor: &common::Doctor,
    request: CreateConsultationRequest,
) -> ConsentedCall {
    let (consultation, mut doctor_ws, patient, mut patient_ws) =
        waiting_call(svc, doctor, request).await;
    doctor_ws
        .send(&ClientMessage::Admit {
            participant_id: patient.participant_id,
        })
        .await;
    patient_ws.recv_type("admitted").await;
    patient_ws.send(&consent(true)).await;
    let ServerMessage::PeerJoined { peer: recorder } = patient_ws.recv_type("peer_joined").await
    else {
        unreachable!()
    };
    ConsentedCall {
        consultation,
        doctor_ws,
        patient,
        patient_ws,
        recorder,
    }
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
    let (consultation, mut doctor_ws, patient, mut patient_ws) =
        waiting_call(&svc, &doctor, recorded(false)).await;
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
    let (_, mut doctor_ws, patient, mut patient_ws) =
        waiting_call(&svc, &doctor, recorded(false)).await;
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

/// A stand-in for a client of an end-to-end encrypted consultation: a native peer that offers
/// the recorder a connection and sends it SFrame-protected frames under a key it wrapped to the
/// clinician's recording key. Its frames carry a marker the test then looks for.
mod protected_sender {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use base64::Engine as _;
    use consult_e2ee::format::protect;
    use consult_e2ee::recording_key::{EpochKeyBinding, RecordingPublicKey};
    use consult_e2ee::sframe::{BaseKey, SenderKey, Suite};
    use consult_e2ee::MediaFormat;
    use consult_peer::{Output, Peer, PeerConfig, VideoCodec};
    use consult_proto::signal::{ClientMessage, SdpKind, ServerMessage, SessionDescription};
    use tokio::net::UdpSocket;
    use uuid::Uuid;

    pub const MARKER: &[u8] = b"CONSULT-PLAINTEXT-MARKER";

    /// A VP8 keyframe header (tag, start code, 64x48) followed by the marker, repeated.
    fn vp8_keyframe() -> Vec<u8> {
        let mut frame = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 64, 0, 48, 0];
        for _ in 0..20 {
            frame.extend_from_slice(MARKER);
        }
        frame
    }

    /// Offer the recorder a connection from `me`, wrap one epoch key, send `frames` protected
    /// frames; returns how many were written.
    pub async fn send(
        ws: &mut super::common::Signal,
        me: Uuid,
        recorder: Uuid,
        recording_id: Uuid,
        recording_key: &str,
        frames: usize,
    ) -> usize {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local: SocketAddr = socket.local_addr().unwrap();
        let start = Instant::now();
        let mut peer = Peer::new(
            PeerConfig {
                audio: false,
                video_codecs: vec![VideoCodec::Vp8],
                ..PeerConfig::default()
            },
            start,
        );
        let candidate = peer.add_host_candidate(local).unwrap().unwrap();
        let offer = peer.create_offer().unwrap().unwrap();
        ws.send(&ClientMessage::Description {
            to: recorder,
            description: SessionDescription {
                kind: SdpKind::Offer,
                sdp: offer,
            },
        })
        .await;
        ws.send(&ClientMessage::Candidate {
            to: recorder,
            candidate: Some(consult_proto::signal::IceCandidate {
                candidate,
                sdp_mid: None,
                sdp_m_line_index: Some(0),
                username_fragment: None,
            }),
        })
        .await;

        // The key: wrapped to the clinician and sent before any frame uses it.
        let suite = Suite::Aes128Gcm;
        let kid = (0x5a << 24) | 1;
        let base = BaseKey::new(vec![0x42; 16]);
        let binding = EpochKeyBinding {
            recording: *recording_id.as_bytes(),
            sender: *me.as_bytes(),
            kid,
            suite,
        };
        let public = RecordingPublicKey::from_base64(recording_key).unwrap();
        let wrapped = binding
            .wrap(&public, &base, &mut rand::rngs::OsRng)
            .unwrap();
        ws.send(&ClientMessage::RecordingKey {
            recording_id,
            kid,
            suite: suite.id(),
            wrapped: base64::engine::general_purpose::STANDARD.encode(wrapped),
        })
        .await;
        let sender = SenderKey::new(suite, kid, &base).unwrap();

        let mut buf = vec![0u8; 2048];
        let mut written = 0;
        let deadline = start + Duration::from_secs(20);
        while written < frames && Instant::now() < deadline {
            for message in ws.drain(Duration::from_millis(2)).await {
                match message {
                    ServerMessage::Description { from, description } if from == recorder => {
                        peer.handle_remote_answer(&description.sdp).unwrap();
                    }
                    ServerMessage::Candidate {
                        from,
                        candidate: Some(c),
                    } if from == recorder => {
                        peer.add_remote_candidate(&c.candidate).unwrap();
                    }
                    _ => {}
                }
            }
            while let Ok(Ok((n, source))) =
                tokio::time::timeout(Duration::from_millis(2), socket.recv_from(&mut buf)).await
            {
                peer.handle_receive(Instant::now(), source, local, &buf[..n])
                    .unwrap();
            }
            peer.handle_timeout(Instant::now()).unwrap();
            if peer.is_connected() {
                let protected =
                    protect(MediaFormat::Vp8, &sender, written as u64, &vp8_keyframe()).unwrap();
                let rtp = 3000 * written as u64;
                if peer
                    .write_video(Instant::now(), rtp, VideoCodec::Vp8, &protected)
                    .is_ok()
                {
                    written += 1;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            loop {
                match peer.poll_output().unwrap() {
                    Output::Transmit(t) => {
                        socket.send_to(&t.contents, t.destination).await.unwrap();
                    }
                    Output::Timeout(_) => break,
                    Output::Event(_) => {}
                }
            }
        }
        written
    }
}

#[tokio::test]
async fn a_zero_knowledge_recording_holds_no_plaintext_and_opens_only_with_the_clinicians_key() {
    use consult_e2ee::recording_key::RecordingKeyPair;
    use consult_signaling::recording::export::{self, ExportError};
    use consult_signaling::recording::rows;
    use consult_vault::recording::RecordingContents;
    use protected_sender::MARKER;

    let svc = TestService::start().await;
    let doctor = svc.doctor("ann@clinic.test").await;
    let clinician = RecordingKeyPair::generate(&mut rand::rngs::OsRng);
    // Not a key, or not 32 bytes: refused, and nothing is registered.
    for bad in ["not base64!", "AAAA"] {
        let r = doctor
            .bearer(Method::PUT, "/api/v1/account/recording-key")
            .json(&json!({ "public_key": bad }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(r).await,
            (StatusCode::BAD_REQUEST, "invalid_recording_key".into())
        );
    }
    let registered: serde_json::Value = doctor
        .bearer(Method::GET, "/api/v1/account/recording-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(registered, json!({ "public_key": null }));
    let r = doctor
        .bearer(Method::PUT, "/api/v1/account/recording-key")
        .json(&json!({ "public_key": clinician.public().to_base64() }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let ConsentedCall {
        consultation,
        patient,
        mut patient_ws,
        recorder,
        doctor_ws: _doctor_ws,
    } = consented_call(&svc, &doctor, recorded(true)).await;
    let (recording_id, recording_key) = loop {
        if let ServerMessage::Recording {
            state: RecordingState::Recording,
            recording_id: Some(id),
            recording_key: Some(key),
            zero_knowledge: true,
            ..
        } = patient_ws.recv_type("recording").await
        {
            break (id, key);
        }
    };
    assert_eq!(recording_key, clinician.public().to_base64());
    // A key for another recording is refused.
    patient_ws
        .send(&ClientMessage::RecordingKey {
            recording_id: uuid::Uuid::new_v4(),
            kid: 1,
            suite: 4,
            wrapped: "AAAA".into(),
        })
        .await;
    assert!(!patient_ws.expect_error("outside_consultation").await);
    // So is an oversized wrapped key, or one for an SFrame suite that does not exist; the
    // socket stays.
    for (suite, wrapped) in [(4, "A".repeat(400)), (9, "AAAA".to_owned())] {
        patient_ws
            .send(&ClientMessage::RecordingKey {
                recording_id,
                kid: 1,
                suite,
                wrapped,
            })
            .await;
        assert!(!patient_ws.expect_error("malformed").await);
    }

    let sent = protected_sender::send(
        &mut patient_ws,
        patient.participant_id,
        recorder.participant_id,
        recording_id,
        &recording_key,
        40,
    )
    .await;
    assert_eq!(sent, 40, "frames written to the recorder");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let r = doctor
        .bearer(
            Method::POST,
            &format!("/api/v1/consultations/{}/end", consultation.id),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    // What the operator holds — the vault opened with its keyring — is ciphertext only.
    let state = svc.state();
    let vault = state.recordings.vault.clone();
    let row = loop {
        let row = rows::find(&state.pool, recording_id)
            .await
            .unwrap()
            .unwrap();
        if row.state != rows::RecordingStatus::Recording {
            break row;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(row.zero_knowledge);
    let contents =
        RecordingContents::read(vault.open_recording(recording_id).unwrap(), false).unwrap();
    assert!(
        contents.frames.len() >= 30,
        "{} frames recorded",
        contents.frames.len()
    );
    assert_eq!(contents.epoch_keys.len(), 1);
    let contains = |bytes: &[u8]| bytes.windows(MARKER.len()).any(|w| w == MARKER);
    assert!(
        contents.frames.iter().all(|f| !contains(&f.data)),
        "no plaintext in the recorder's output"
    );
    let media = std::fs::read(
        state
            .config
            .data_dir
            .join("vault/media")
            .join(format!("{recording_id}.cvlt")),
    )
    .unwrap();
    assert!(!contains(&media));

    // The operator's keyring alone does not open it; another clinician's key does not either.
    let mut out = std::io::Cursor::new(Vec::new());
    let err = export::export(&vault, &row, &[], None, &mut out).unwrap_err();
    assert!(matches!(err, ExportError::NeedsClinicianKey(_)), "{err}");
    let stranger = RecordingKeyPair::generate(&mut rand::rngs::OsRng);
    let err = export::export(&vault, &row, &[], Some(&stranger), &mut out).unwrap_err();
    assert!(matches!(err, ExportError::DoesNotOpen { .. }), "{err}");
    assert!(err.to_string().contains("does not open"));

    // The clinician's key opens every frame: the plaintext is in the export.
    let mut out = std::io::Cursor::new(Vec::new());
    let exported = export::export(&vault, &row, &[], Some(&clinician), &mut out).unwrap();
    assert_eq!(exported.summary.frames, contents.frames.len());
    assert_eq!(exported.unopened, vec![]);
    assert!(contains(&out.into_inner()));

    // Damage to the stored stream is named, and nothing is exported: a flipped byte, then the
    // final chunk cut off a recording that says it is whole.
    let path = state
        .config
        .data_dir
        .join("vault/media")
        .join(format!("{recording_id}.cvlt"));
    let mut flipped = media.clone();
    flipped[60] ^= 0x20;
    std::fs::write(&path, &flipped).unwrap();
    let err = export::export(
        &vault,
        &row,
        &[],
        Some(&clinician),
        std::io::Cursor::new(Vec::new()),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("chunk 0 fails authentication"),
        "{err}"
    );
    let mut offset = 32;
    let mut last_chunk_at = offset;
    while offset < media.len() {
        last_chunk_at = offset;
        let len = u32::from_be_bytes(media[offset..offset + 4].try_into().unwrap()) as usize;
        offset += 4 + len;
    }
    std::fs::write(&path, &media[..last_chunk_at]).unwrap();
    let err = export::export(
        &vault,
        &row,
        &[],
        Some(&clinician),
        std::io::Cursor::new(Vec::new()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[tokio::test]
async fn the_retention_job_shreds_recordings_past_their_retention() {
    let svc = TestService::start_with(|c| {
        c.policy.retention_days = 0;
        c.recording.retention_sweep_interval = std::time::Duration::from_millis(200);
    })
    .await;
    let doctor = svc.doctor("ann@clinic.test").await;
    // The doctor's socket stays open for the whole test, as in a real call.
    let ConsentedCall {
        mut patient_ws,
        doctor_ws: _doctor_ws,
        ..
    } = consented_call(&svc, &doctor, recorded(false)).await;
    // While it is being made, a recording is never shredded, whatever its retention.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let vault = svc.state().recordings.vault.clone();
    assert_eq!(vault.recordings().unwrap().len(), 1);
    let id = vault.recordings().unwrap()[0];
    patient_ws.send(&consent(false)).await;
    // The job shreds the media first and audits it last: wait for the audit entry.
    let shredded = svc.audited("recording_shredded", None).await;
    assert!(vault.is_shredded(id));
    assert_eq!(shredded.actor, "system");
    assert_eq!(shredded.detail["reason"], "retention");
}

/// The value of one metric line (`name{labels}`) in `/metrics`.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The patient offers the recorder a connection (with a candidate for `in_offer` written into
/// the offer) and trickles `trickled`; returns once the recorder has answered.
async fn offer_recorder_candidates(
    call: &mut ConsentedCall,
    in_offer: std::net::SocketAddr,
    trickled: &[String],
) {
    use consult_peer::{Peer, PeerConfig};
    use consult_proto::signal::{IceCandidate, SdpKind, SessionDescription};
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut peer = Peer::new(PeerConfig::default(), std::time::Instant::now());
    peer.add_host_candidate(socket.local_addr().unwrap())
        .unwrap();
    let offer = peer.create_offer().unwrap().unwrap();
    let line = format!(
        "a=candidate:77 1 udp 2130706431 {} {} typ host\r\n",
        in_offer.ip(),
        in_offer.port()
    );
    let at = offer.find("a=mid:").unwrap();
    let offer = format!("{}{line}{}", &offer[..at], &offer[at..]);
    let recorder = call.recorder.participant_id;
    call.patient_ws
        .send(&ClientMessage::Description {
            to: recorder,
            description: SessionDescription {
                kind: SdpKind::Offer,
                sdp: offer,
            },
        })
        .await;
    for candidate in trickled {
        call.patient_ws
            .send(&ClientMessage::Candidate {
                to: recorder,
                candidate: Some(IceCandidate {
                    candidate: candidate.clone(),
                    sdp_mid: None,
                    sdp_m_line_index: Some(0),
                    username_fragment: None,
                }),
            })
            .await;
    }
    loop {
        if let ServerMessage::Description { from, .. } =
            call.patient_ws.recv_type("description").await
            && from == recorder
        {
            break;
        }
    }
}

/// Whether a STUN message arrives on `socket` within `within`.
async fn stun_arrives(socket: &tokio::net::UdpSocket, within: std::time::Duration) -> bool {
    let mut buf = [0u8; 1500];
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
        // A STUN header: the two top bits zero and the magic cookie.
        if n >= 20 && buf[0] & 0xc0 == 0 && buf[4..8] == [0x21, 0x12, 0xa4, 0x42] {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn the_recorder_sends_nothing_to_candidates_outside_its_networks() {
    // A recorder on loopback may reach loopback by default: the control, showing that the
    // recorder does send checks to a listening address it is given.
    let svc = TestService::start().await;
    let doctor = svc.doctor("ann@clinic.test").await;
    let mut call = consented_call(&svc, &doctor, recorded(false)).await;
    let (trickled_to, in_offer) = (
        tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap(),
        tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap(),
    );
    let line = |addr: std::net::SocketAddr| {
        format!(
            "candidate:9 1 udp 2130706431 {} {} typ host",
            addr.ip(),
            addr.port()
        )
    };
    let victim = line(trickled_to.local_addr().unwrap());
    offer_recorder_candidates(&mut call, in_offer.local_addr().unwrap(), &[victim]).await;
    let wait = std::time::Duration::from_secs(3);
    assert!(
        stun_arrives(&trickled_to, wait).await,
        "control: a trickled candidate is checked"
    );
    assert!(
        stun_arrives(&in_offer, wait).await,
        "control: a candidate in the offer is checked"
    );
    drop(call);

    // Only 127.0.0.1 listed: 127.0.0.2, the link-local metadata address and a private address
    // are refused, trickled or in the offer, and more than eight candidates are not kept.
    let svc = TestService::start_with(|c| {
        c.recording.candidate_networks = Some(vec!["127.0.0.1/32".into()]);
    })
    .await;
    let doctor = svc.doctor("ann@clinic.test").await;
    let mut call = consented_call(&svc, &doctor, recorded(false)).await;
    let (trickled_to, in_offer) = (
        tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap(),
        tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap(),
    );
    let mut trickled = vec![
        line(trickled_to.local_addr().unwrap()),
        "candidate:9 1 udp 2130706431 169.254.169.254 80 typ host".to_owned(),
        "candidate:9 1 udp 2130706431 10.0.0.8 5000 typ host".to_owned(),
        "candidate:9 1 udp 2130706431 host.local 5000 typ host".to_owned(),
    ];
    // Twelve public ones (documentation addresses: nothing answers there).
    trickled
        .extend((1..=12).map(|n| format!("candidate:9 1 udp 2130706431 203.0.113.{n} 9 typ host")));
    offer_recorder_candidates(&mut call, in_offer.local_addr().unwrap(), &trickled).await;
    assert!(
        !stun_arrives(&trickled_to, wait).await,
        "nothing sent to a refused trickled candidate"
    );
    assert!(
        !stun_arrives(&in_offer, wait).await,
        "nothing sent to a refused candidate in the offer"
    );
    let metrics = svc.metrics().await;
    let refused = |reason: &str| {
        metric(
            &metrics,
            &format!("consult_recorder_candidates_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(
        refused("not_allowed"),
        4.0,
        "127.0.0.2 twice, 169.254.169.254, 10.0.0.8"
    );
    assert_eq!(refused("unparsable"), 1.0, "an mDNS name");
    // Eight kept: the offer's own host candidate and the first seven public ones.
    assert_eq!(
        refused("too_many"),
        5.0,
        "twelve public candidates, seven of them kept"
    );
}

/// The download streams (no length known ahead, pieces as they are made, read here slowly) and
/// its bytes are exactly the file the CLI's export writes.
#[tokio::test]
async fn a_downloaded_recording_streams_and_equals_the_exported_file() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("owner@clinic.test").await;
    let (consultation, _) = doctor.create_consultation().await;
    let (id, frames) = synthetic_recording(&svc, consultation.id).await;

    let mut r = doctor
        .bearer(Method::GET, &format!("/api/v1/recordings/{id}/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "video/webm");
    assert!(r.headers().get("content-length").is_none(), "streamed");
    let (mut downloaded, mut pieces) = (Vec::new(), 0);
    while let Some(piece) = r.chunk().await.unwrap() {
        downloaded.extend_from_slice(&piece);
        pieces += 1;
        if pieces % 8 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    let row = consult_signaling::recording::rows::find(&svc.state().pool, id)
        .await
        .unwrap()
        .unwrap();
    let mut exported = Vec::new();
    let written = consult_signaling::recording::export::export(
        &svc.state().recordings.vault,
        &row,
        &[],
        None,
        &mut exported,
    )
    .unwrap();
    assert_eq!(
        (written.summary.frames, written.summary.skipped_frames),
        (frames, 0)
    );
    let duration = written.summary.duration_ms;
    assert!((119_900..=120_100).contains(&duration), "{duration} ms");
    assert!(pieces > 10, "{pieces} pieces");
    assert_eq!(downloaded.len(), exported.len());
    assert!(
        downloaded == exported,
        "the download differs from the export"
    );
    let audited = svc.audited("recording_exported", None).await;
    assert_eq!(audited.detail["detail"]["frames"], frames);
}

/// A byte flipped near the end of the sealed media: the planning pass finds it, so the download
/// is refused with its reason before the first byte of a file (no partial file that looks
/// whole), and the refusal is audited.
#[tokio::test]
async fn a_damaged_recording_is_refused_before_any_byte_of_the_file() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("owner@clinic.test").await;
    let (consultation, _) = doctor.create_consultation().await;
    let (id, _) = synthetic_recording(&svc, consultation.id).await;
    let media = svc
        .data_dir()
        .join("vault")
        .join("media")
        .join(format!("{id}.cvlt"));
    let mut bytes = std::fs::read(&media).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0x40;
    std::fs::write(&media, bytes).unwrap();

    let r = doctor
        .bearer(Method::GET, &format!("/api/v1/recordings/{id}/export"))
        .send()
        .await
        .unwrap();
    let (status, code) = error_code(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::CONFLICT, "recording_damaged")
    );
    let audited = svc.audited("recording_exported", None).await;
    let refused = audited.detail["detail"]["refused"].as_str().unwrap();
    assert!(refused.contains("chunk"), "{refused}");
}

/// A restart mid-recording (a deploy: the recorder seals the recording whole; after a crash it
/// is interrupted at its last sealed chunk): when the doctor and the patient are back, the
/// patient's consent still stands (nobody asks again) and a new recording starts; a withdrawal
/// stands across a restart too.
#[tokio::test]
async fn consent_outlives_a_restart_and_recording_resumes_in_a_new_recording() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.consent@clinic.test").await;
    let call = consented_call(&svc, &doctor, recorded(false)).await;
    let (consultation, patient) = (call.consultation, call.patient);
    drop((call.doctor_ws, call.patient_ws));
    let svc = svc.restart().await;
    let (mut patient_ws, _) = svc.join_patient(&patient.participant_token).await;
    let (mut doctor_ws, _) = doctor.join(&svc, consultation.id).await;
    // Recording again, without a consent question.
    until_state(&mut patient_ws, RecordingState::Recording).await;
    until_state(&mut doctor_ws, RecordingState::Recording).await;
    let rows =
        consult_signaling::recording::rows::of_consultation(&svc.state().pool, consultation.id)
            .await
            .unwrap();
    let states: Vec<String> = rows.iter().map(|r| format!("{:?}", r.state)).collect();
    assert_eq!(rows.len(), 2, "{states:?}");
    assert!(
        states.contains(&"Complete".to_owned()) && states.contains(&"Recording".to_owned()),
        "{states:?}"
    );

    // Withdrawn, then restarted: it stays withdrawn and nothing records.
    patient_ws.send(&consent(false)).await;
    until_state(&mut patient_ws, RecordingState::Withdrawn).await;
    drop((doctor_ws, patient_ws));
    let svc = svc.restart().await;
    let (mut patient_ws, _) = svc.join_patient(&patient.participant_token).await;
    let (_doctor_ws, _) = doctor.join(&svc, consultation.id).await;
    until_state(&mut patient_ws, RecordingState::Withdrawn).await;
    patient_ws.send(&consent(true)).await;
    // Refused (forbidden, not fatal): a withdrawal stands.
    assert!(!patient_ws.expect_error("forbidden").await);
}

/// Which interrupted recording a new recorder continues: only the latest of its consultation,
/// of the same kind, interrupted within the last ten minutes and not continued already — and a
/// recording is continued at most once, whatever races.
#[tokio::test]
async fn only_a_recent_interruption_nobody_continued_is_continued() {
    use consult_signaling::recording::rows::{self, NewRecording, RecordingStatus};
    let svc = TestService::start().await;
    let doctor = svc.doctor("segments@clinic.test").await;
    let (consultation, _) = doctor.create_consultation().await;
    let pool = &svc.state().pool;
    let now = time::OffsetDateTime::now_utc();
    let interrupted = |started_s: i64, ended_s: i64, zero_knowledge: bool| async move {
        let id = uuid::Uuid::new_v4();
        let started_at = now + time::Duration::seconds(started_s);
        rows::insert(
            pool,
            &NewRecording {
                id,
                consultation_id: consultation.id,
                zero_knowledge,
                started_at,
                retain_until: now + time::Duration::days(30),
                continues: None,
            },
        )
        .await
        .unwrap();
        let ended_at = now + time::Duration::seconds(ended_s);
        rows::finish(pool, id, RecordingStatus::Interrupted, ended_at, 1, 1, None)
            .await
            .unwrap();
        id
    };
    let since = now - consult_signaling::recording::CONTINUE_WITHIN;
    let to_continue = |zero_knowledge: bool| async move {
        rows::to_continue(pool, consultation.id, zero_knowledge, since)
            .await
            .unwrap()
            .map(|r| r.id)
    };

    // Interrupted eleven minutes ago: a consultation taken up again, not a failover.
    interrupted(-900, -660, false).await;
    assert_eq!(to_continue(false).await, None);
    // Interrupted a minute ago: continued — by a recording of the same kind only.
    let recent = interrupted(-300, -60, false).await;
    assert_eq!(to_continue(false).await, Some(recent));
    assert_eq!(to_continue(true).await, None);

    // Continued once; a second continuation of the same recording is refused by the database.
    let continuation = |continues| NewRecording {
        id: uuid::Uuid::new_v4(),
        consultation_id: consultation.id,
        zero_knowledge: false,
        started_at: now,
        retain_until: now + time::Duration::days(30),
        continues: Some(continues),
    };
    rows::insert(pool, &continuation(recent)).await.unwrap();
    assert_eq!(to_continue(false).await, None, "continued already");
    assert!(rows::insert(pool, &continuation(recent)).await.is_err());
    assert_eq!(rows::segments(pool, recent).await.unwrap().len(), 2);

    // An interruption followed by another recording (which was not its continuation) is not
    // continued either.
    interrupted(-50, -40, true).await;
    rows::insert(
        pool,
        &NewRecording {
            continues: None,
            zero_knowledge: true,
            started_at: now - time::Duration::seconds(30),
            ..continuation(recent)
        },
    )
    .await
    .unwrap();
    assert_eq!(to_continue(true).await, None);

    // A row naming a recording of another consultation (the database tampered with) is never
    // followed: whoever may have one consultation's recordings must not reach another's.
    let base = interrupted(-20, -10, false).await;
    let (elsewhere, _) = doctor.create_consultation().await;
    let stranger = NewRecording {
        consultation_id: elsewhere.id,
        ..continuation(base)
    };
    rows::insert(pool, &stranger).await.unwrap();
    let err = rows::segments(pool, stranger.id).await.unwrap_err();
    assert!(err.to_string().contains("another consultation"), "{err}");
    assert!(err.downcast_ref::<rows::BrokenChain>().is_some());
    assert!(rows::segments(pool, base).await.is_err());
    // Asked for over the API, it is a damaged recording: refused with a clear answer, audited.
    rows::finish(
        pool,
        stranger.id,
        RecordingStatus::Complete,
        now,
        1,
        1,
        None,
    )
    .await
    .unwrap();
    let r = doctor
        .bearer(
            Method::GET,
            &format!("/api/v1/recordings/{}/export", stranger.id),
        )
        .send()
        .await
        .unwrap();
    let (status, code) = error_code(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::CONFLICT, "recording_damaged")
    );
    let refused = svc.audited("recording_exported", None).await;
    assert!(
        refused.detail["detail"]["refused"]
            .as_str()
            .is_some_and(|why| why.contains("another consultation")),
        "{}",
        refused.detail
    );
}
