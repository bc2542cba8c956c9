//! Group consultations through the service: named invites for a patient, an interpreter or a
//! companion, colleagues by account, everyone waiting and admitted separately, the cap on how
//! many take part, removal for good, and a restart that gives everyone their place back.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::{error_code, joined_parts, participant_id, Signal, TestService};
use consult_api_client::ApiError;
use consult_proto::api::{InviteKind, Role};
use consult_proto::signal::{
    ClientMessage, IceCandidate, LeaveReason, ParticipantRole, Peer, ServerMessage,
};
use reqwest::{Method, StatusCode};
use uuid::Uuid;

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

/// The code of a refused API call.
fn refusal<T: std::fmt::Debug>(result: Result<T, ApiError>) -> (u16, String) {
    match result {
        Err(ApiError::Refused { status, code, .. }) => (status, code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The token in an invite URL.
fn token_of(invite_url: &str) -> String {
    invite_url.split_once('#').unwrap().1.to_owned()
}

/// The peers an `admitted` or `joined` message names, by id.
fn peers_of(message: &ServerMessage) -> HashMap<Uuid, Peer> {
    let peers = match message {
        ServerMessage::Admitted { peers } | ServerMessage::Joined { peers, .. } => peers,
        other => panic!("no peers in {other:?}"),
    };
    peers
        .iter()
        .map(|p| (p.participant_id, p.clone()))
        .collect()
}

async fn admit(doctor_ws: &mut Signal, participant_id: Uuid) {
    doctor_ws
        .send(&ClientMessage::Admit { participant_id })
        .await;
}

#[tokio::test]
async fn a_group_of_four_is_invited_by_name_and_role_and_admitted_one_by_one() {
    let svc = TestService::start_with(|c| c.policy.max_participants = 4).await;
    let doctor = svc.doctor("dr.group@example.org").await;
    let colleague = svc.doctor("dr.colleague@example.org").await;
    let (consultation, patient_link) = doctor.create_consultation().await;
    let cid = consultation.id;
    assert_eq!(consultation.max_participants, 4);

    let interpreter_invite = doctor
        .api
        .issue_invite(
            &doctor.token,
            cid,
            InviteKind::Interpreter,
            "  Ines Interpreter ",
        )
        .await
        .unwrap();
    assert_eq!(interpreter_invite.invite.name, "Ines Interpreter");
    let added = doctor
        .api
        .add_clinician(&doctor.token, cid, "DR.COLLEAGUE@example.org")
        .await
        .unwrap();
    assert_eq!(added.name, "Dr dr.colleague");
    // The doctor, the patient link, the interpreter and the colleague: every place is promised.
    assert_eq!(
        refusal(
            doctor
                .api
                .issue_invite(&doctor.token, cid, InviteKind::Companion, "Carl")
                .await
        ),
        (409, "consultation_full".into())
    );
    let view = doctor.api.consultation(&doctor.token, cid).await.unwrap();
    assert_eq!((view.places_taken, view.max_participants), (4, 4));
    assert_eq!(view.invites.len(), 1);
    assert_eq!(view.invites[0].kind, InviteKind::Interpreter);
    assert_eq!(view.clinicians.len(), 1);
    assert_eq!(view.clinicians[0].user_id, added.user_id);

    // The interpreter's link says who it is for; the name typed on the page does not count.
    let interpreter_token = token_of(&interpreter_invite.invite_url);
    let info = svc.api.inspect_invite(&interpreter_token).await.unwrap();
    assert_eq!(
        (info.kind, info.name.as_deref()),
        (InviteKind::Interpreter, Some("Ines Interpreter"))
    );
    let interpreter = svc.patient(&interpreter_token, "Mallory").await;
    let patient = svc.patient(&patient_link, "Pat").await;
    // The colleague finds the consultation among those shared with them.
    let shared = colleague
        .api
        .shared_consultations(&colleague.token)
        .await
        .unwrap();
    assert_eq!(shared.len(), 1);
    assert_eq!(shared[0].id, cid);
    assert_eq!(shared[0].doctor_name, "Dr dr.group");

    let (mut doctor_ws, joined) = doctor.join(&svc, cid).await;
    let doctor_id = participant_id(&joined);
    let (mut interpreter_ws, joined) = svc.join_patient(&interpreter.participant_token).await;
    assert!(matches!(
        joined,
        ServerMessage::Joined {
            role: ParticipantRole::Interpreter,
            admitted: false,
            ..
        }
    ));
    let (mut patient_ws, _) = svc.join_patient(&patient.participant_token).await;
    let (mut colleague_ws, joined) = colleague.join(&svc, cid).await;
    assert_eq!(
        joined_parts(&joined),
        (added.participant_id, false, false, vec![])
    );
    assert!(matches!(
        joined,
        ServerMessage::Joined {
            role: ParticipantRole::Clinician,
            ..
        }
    ));

    // Everyone waits, named and with their role, in the doctor's waiting room.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let waiting = loop {
        let waiting = doctor.api.waiting_room(&doctor.token).await.unwrap();
        if waiting.len() == 3 || std::time::Instant::now() > deadline {
            break waiting;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut seen: Vec<(String, ParticipantRole)> =
        waiting.iter().map(|w| (w.name.clone(), w.role)).collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        vec![
            ("Dr dr.colleague".into(), ParticipantRole::Clinician),
            ("Ines Interpreter".into(), ParticipantRole::Interpreter),
            ("Pat".into(), ParticipantRole::Patient),
        ]
    );
    // A colleague cannot admit anyone: only the consultation's doctor does.
    colleague_ws
        .send(&ClientMessage::Admit {
            participant_id: patient.participant_id,
        })
        .await;
    assert!(!colleague_ws.expect_error("forbidden").await);

    // Admitted one by one: each newcomer is told of everyone in the call, and everyone in the
    // call of the newcomer, with their names and roles; exactly one side of a pair is polite.
    let mut politeness: HashMap<(Uuid, Uuid), bool> = HashMap::new();
    admit(&mut doctor_ws, patient.participant_id).await;
    let admitted = patient_ws.recv_type("admitted").await;
    for (id, peer) in peers_of(&admitted) {
        politeness.insert((patient.participant_id, id), peer.polite);
    }
    admit(&mut doctor_ws, interpreter.participant_id).await;
    let admitted = interpreter_ws.recv_type("admitted").await;
    let peers = peers_of(&admitted);
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[&doctor_id].role, ParticipantRole::Doctor);
    assert_eq!(peers[&patient.participant_id].name, "Pat");
    for (id, peer) in peers {
        politeness.insert((interpreter.participant_id, id), peer.polite);
    }
    admit(&mut doctor_ws, added.participant_id).await;
    let admitted = colleague_ws.recv_type("admitted").await;
    assert_eq!(peers_of(&admitted).len(), 3);
    for (id, peer) in peers_of(&admitted) {
        politeness.insert((added.participant_id, id), peer.polite);
    }
    for (ws, me) in [
        (&mut doctor_ws, doctor_id),
        (&mut patient_ws, patient.participant_id),
        (&mut interpreter_ws, interpreter.participant_id),
    ] {
        for message in ws.drain(Duration::from_millis(300)).await {
            if let ServerMessage::PeerJoined { peer } = message {
                politeness.insert((me, peer.participant_id), peer.polite);
            }
        }
    }
    let everyone = [
        doctor_id,
        patient.participant_id,
        interpreter.participant_id,
        added.participant_id,
    ];
    for a in everyone {
        for b in everyone {
            if a != b {
                assert_ne!(
                    politeness.get(&(a, b)),
                    politeness.get(&(b, a)),
                    "{a} and {b}: exactly one is polite"
                );
                assert!(politeness.contains_key(&(a, b)), "{a} never heard of {b}");
            }
        }
        assert_eq!(
            politeness.get(&(doctor_id, a)).copied(),
            (a != doctor_id).then_some(false)
        );
    }

    // Any two of them signal each other directly; nobody outside reaches them.
    interpreter_ws.send(&candidate(added.participant_id)).await;
    assert!(matches!(
        colleague_ws.recv_type("candidate").await,
        ServerMessage::Candidate { from, .. } if from == interpreter.participant_id
    ));
    let stranger = Uuid::new_v4();
    patient_ws.send(&candidate(stranger)).await;
    assert!(!patient_ws.expect_error("outside_consultation").await);

    // The colleague's heartbeats keep their own session alive; they leave the call and come
    // back to the waiting room, not into the call.
    colleague_ws.assert_alive().await;
    colleague_ws.send(&ClientMessage::Leave {}).await;
    colleague_ws.expect_closed().await;
    assert!(matches!(
        patient_ws.recv_type("peer_left").await,
        ServerMessage::PeerLeft { participant_id, reason: LeaveReason::Left }
            if participant_id == added.participant_id
    ));
    let (_colleague_ws, joined) = colleague.join(&svc, cid).await;
    assert_eq!(
        joined_parts(&joined),
        (added.participant_id, false, false, vec![])
    );
    svc.audited("clinician_added", None).await;
}

#[tokio::test]
async fn the_doctor_removes_anyone_for_good() {
    let svc = TestService::start_with(|c| {
        c.policy.max_participants = 4;
        c.signaling.reconnect_grace = Duration::from_secs(30);
    })
    .await;
    let doctor = svc.doctor("dr.remove@example.org").await;
    let colleague = svc.doctor("dr.removed@example.org").await;
    let (consultation, _) = doctor.create_consultation().await;
    let cid = consultation.id;
    let companion_invite = doctor
        .api
        .issue_invite(&doctor.token, cid, InviteKind::Companion, "Carl Carer")
        .await
        .unwrap();
    let companion_link = token_of(&companion_invite.invite_url);
    let added = doctor
        .api
        .add_clinician(&doctor.token, cid, "dr.removed@example.org")
        .await
        .unwrap();
    let (mut doctor_ws, _) = doctor.join(&svc, cid).await;
    let companion = svc.patient(&companion_link, "").await;
    let (mut companion_ws, _) = svc.join_patient(&companion.participant_token).await;
    let (mut colleague_ws, _) = colleague.join(&svc, cid).await;
    for id in [companion.participant_id, added.participant_id] {
        admit(&mut doctor_ws, id).await;
    }
    companion_ws.recv_type("admitted").await;
    colleague_ws.recv_type("admitted").await;

    // Nobody removes the doctor, and a stranger's id is not found.
    let doctor_id = consultation_doctor_id(&svc, cid).await;
    assert_eq!(
        refusal(
            doctor
                .api
                .remove_participant(&doctor.token, cid, doctor_id)
                .await
        ),
        (400, "cannot_remove_yourself".into())
    );
    assert_eq!(
        refusal(
            doctor
                .api
                .remove_participant(&doctor.token, cid, Uuid::new_v4())
                .await
        ),
        (404, "not_found".into())
    );
    // Another doctor cannot remove anyone from a consultation that is not theirs.
    assert_eq!(
        refusal(
            colleague
                .api
                .remove_participant(&colleague.token, cid, companion.participant_id)
                .await
        ),
        (404, "not_found".into())
    );

    // The companion is removed: told, disconnected, and the others hear it.
    doctor
        .api
        .remove_participant(&doctor.token, cid, companion.participant_id)
        .await
        .unwrap();
    assert!(companion_ws.expect_error("unauthorized").await);
    companion_ws.expect_closed().await;
    assert!(matches!(
        colleague_ws.recv_type("peer_left").await,
        ServerMessage::PeerLeft { participant_id, reason: LeaveReason::Removed }
            if participant_id == companion.participant_id
    ));
    // Within the grace period, their token no longer joins, and their link no longer works.
    let mut again = svc.connect().await;
    again
        .send(&ClientMessage::Join {
            token: Some(companion.participant_token.clone()),
            consultation_id: None,
        })
        .await;
    assert!(again.expect_error("unauthorized").await);
    let (status, code) = error_code(svc.redeem(&companion_link, "Carl").await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::GONE, "invite_revoked")
    );

    // The colleague is removed by participant id: off the consultation, and refused on return.
    doctor
        .api
        .remove_participant(&doctor.token, cid, added.participant_id)
        .await
        .unwrap();
    assert!(colleague_ws.expect_error("forbidden").await);
    colleague_ws.expect_closed().await;
    let mut again = svc.connect().await;
    again
        .send(&ClientMessage::Join {
            token: Some(colleague.token.clone()),
            consultation_id: Some(cid),
        })
        .await;
    assert!(again.expect_error("forbidden").await);
    assert!(colleague
        .api
        .shared_consultations(&colleague.token)
        .await
        .unwrap()
        .is_empty());
    // Removing them again finds nobody; adding them again works (a new participant id).
    assert_eq!(
        refusal(
            doctor
                .api
                .remove_clinician(&doctor.token, cid, added.user_id)
                .await
        ),
        (404, "not_found".into())
    );
    let readded = doctor
        .api
        .add_clinician(&doctor.token, cid, "dr.removed@example.org")
        .await
        .unwrap();
    assert_ne!(readded.participant_id, added.participant_id);
    for action in ["participant_removed", "clinician_removed", "invite_revoked"] {
        svc.audited(action, None).await;
    }
    let _ = doctor_ws.drain(Duration::from_millis(50)).await;
}

/// The doctor's participant id in a consultation, from the service's own record.
async fn consultation_doctor_id(svc: &TestService, cid: Uuid) -> Uuid {
    consult_signaling::consultations::find(&svc.state().pool, cid)
        .await
        .unwrap()
        .unwrap()
        .doctor_participant_id
}

#[tokio::test]
async fn invites_and_colleagues_refuse_bad_requests() {
    let svc = TestService::start_with(|c| c.policy.max_participants = 3).await;
    let doctor = svc.doctor("dr.bad@example.org").await;
    let other = svc.doctor("dr.other@example.org").await;
    svc.create_account("admin@example.org", Role::Admin).await;
    let (consultation, _) = doctor.create_consultation().await;
    let cid = consultation.id;

    // Names: blank, too long, control characters.
    for name in ["   ", &"x".repeat(81), "Ines\u{7}"] {
        assert_eq!(
            refusal(
                doctor
                    .api
                    .issue_invite(&doctor.token, cid, InviteKind::Interpreter, name)
                    .await
            ),
            (400, "invalid_name".into())
        );
    }
    // A kind that is not one.
    let response = doctor
        .bearer(
            Method::POST,
            &format!("/api/v1/consultations/{cid}/invites"),
        )
        .json(&serde_json::json!({ "kind": "clinician", "name": "Dr X" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Someone else's consultation looks like none.
    assert_eq!(
        refusal(
            other
                .api
                .issue_invite(&other.token, cid, InviteKind::Patient, "Pam")
                .await
        ),
        (404, "not_found".into())
    );
    // Colleagues: no email, one too long, yourself, an unknown email, an administrator's
    // account, twice.
    let too_long = format!("{}@example.org", "x".repeat(250));
    for email in ["  ", too_long.as_str()] {
        assert_eq!(
            refusal(doctor.api.add_clinician(&doctor.token, cid, email).await),
            (400, "invalid_email".into())
        );
    }
    assert_eq!(
        refusal(
            doctor
                .api
                .add_clinician(&doctor.token, cid, "dr.bad@example.org")
                .await
        ),
        (400, "own_consultation".into())
    );
    for email in ["nobody@example.org", "admin@example.org"] {
        assert_eq!(
            refusal(doctor.api.add_clinician(&doctor.token, cid, email).await),
            (404, "not_found".into())
        );
    }
    doctor
        .api
        .add_clinician(&doctor.token, cid, "dr.other@example.org")
        .await
        .unwrap();
    assert_eq!(
        refusal(
            doctor
                .api
                .add_clinician(&doctor.token, cid, "dr.other@example.org")
                .await
        ),
        (409, "already_added".into())
    );
    // The colleague sees the consultation shared, never as their own.
    assert_eq!(
        refusal(other.api.consultation(&other.token, cid).await),
        (404, "not_found".into())
    );
    // Three places (the doctor, the patient link, the colleague) are all promised.
    assert_eq!(
        refusal(
            doctor
                .api
                .issue_invite(&doctor.token, cid, InviteKind::Companion, "Carl")
                .await
        ),
        (409, "consultation_full".into())
    );
    // Revoking the patient link frees a place; reissuing it is then refused while full.
    doctor
        .bearer(
            Method::DELETE,
            &format!("/api/v1/consultations/{cid}/invite"),
        )
        .send()
        .await
        .unwrap();
    let companion = doctor
        .api
        .issue_invite(&doctor.token, cid, InviteKind::Companion, "Carl")
        .await
        .unwrap();
    let response = doctor
        .bearer(Method::POST, &format!("/api/v1/consultations/{cid}/invite"))
        .send()
        .await
        .unwrap();
    let (status, code) = error_code(response).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::CONFLICT, "consultation_full")
    );
    // A name given to a named invite is still checked (and otherwise ignored).
    let link = token_of(&companion.invite_url);
    let (status, code) = error_code(svc.redeem(&link, "Carl\u{7}").await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_name")
    );
    // An invite of this consultation is not revoked through another one's path.
    let (elsewhere, _) = doctor.create_consultation().await;
    assert_eq!(
        refusal(
            doctor
                .api
                .revoke_named_invite(&doctor.token, elsewhere.id, companion.invite.id)
                .await
        ),
        (404, "not_found".into())
    );
    // A named invite is held by one device at a time, like the patient link.
    let first = svc.patient(&link, "ignored").await;
    let (_first_ws, _) = svc.join_patient(&first.participant_token).await;
    let (status, code) = error_code(svc.redeem(&link, "Someone else").await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::CONFLICT, "invite_in_use")
    );
    // Revoking a named invite twice: the second finds none.
    doctor
        .api
        .revoke_named_invite(&doctor.token, cid, companion.invite.id)
        .await
        .unwrap();
    assert_eq!(
        refusal(
            doctor
                .api
                .revoke_named_invite(&doctor.token, cid, companion.invite.id)
                .await
        ),
        (404, "not_found".into())
    );
    // After the end, nothing more is added.
    doctor.api.end(&doctor.token, cid).await.unwrap();
    assert_eq!(
        refusal(
            doctor
                .api
                .issue_invite(&doctor.token, cid, InviteKind::Patient, "Pam")
                .await
        ),
        (410, "consultation_ended".into())
    );
}

#[tokio::test]
async fn by_default_four_take_part_and_a_one_to_one_policy_keeps_it_at_two() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.four@example.org").await;
    svc.doctor("dr.colleague@example.org").await;
    let (consultation, _) = doctor.create_consultation().await;
    assert_eq!(consultation.max_participants, 4);
    assert_eq!(
        consultation.places_taken, 2,
        "the doctor and the patient link"
    );
    doctor
        .api
        .issue_invite(
            &doctor.token,
            consultation.id,
            InviteKind::Interpreter,
            "Ines",
        )
        .await
        .expect("a third place");
    doctor
        .api
        .add_clinician(&doctor.token, consultation.id, "dr.colleague@example.org")
        .await
        .expect("a fourth place");
    assert_eq!(
        refusal(
            doctor
                .api
                .issue_invite(
                    &doctor.token,
                    consultation.id,
                    InviteKind::Companion,
                    "Carla"
                )
                .await
        ),
        (409, "consultation_full".into()),
        "a fifth is refused"
    );

    // An organisation that keeps every consultation one to one.
    let svc = TestService::start_with(|c| c.policy.max_participants = 2).await;
    let doctor = svc.doctor("dr.pair@example.org").await;
    svc.doctor("dr.third@example.org").await;
    let (consultation, patient_link) = doctor.create_consultation().await;
    assert_eq!(consultation.max_participants, 2);
    // The doctor and the patient link: both places taken.
    assert_eq!(consultation.places_taken, 2);
    // The patient link asks the patient's name: a redemption without one is refused.
    let response = common::http_client()
        .post(svc.url("/api/v1/invites/redeem"))
        .json(&serde_json::json!({ "invite": patient_link }))
        .send()
        .await
        .unwrap();
    let (status, code) = error_code(response).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_name")
    );
    assert_eq!(
        refusal(
            doctor
                .api
                .issue_invite(
                    &doctor.token,
                    consultation.id,
                    InviteKind::Interpreter,
                    "Ines"
                )
                .await
        ),
        (409, "consultation_full".into())
    );
    assert_eq!(
        refusal(
            doctor
                .api
                .add_clinician(&doctor.token, consultation.id, "dr.third@example.org")
                .await
        ),
        (409, "consultation_full".into())
    );
}

#[tokio::test]
async fn a_restarted_service_gives_a_group_its_places_and_roles_back() {
    let svc = TestService::start_with(|c| c.policy.max_participants = 3).await;
    let doctor = svc.doctor("dr.regroup@example.org").await;
    let colleague = svc.doctor("dr.back@example.org").await;
    let (consultation, _) = doctor.create_consultation().await;
    let cid = consultation.id;
    doctor
        .bearer(
            Method::DELETE,
            &format!("/api/v1/consultations/{cid}/invite"),
        )
        .send()
        .await
        .unwrap();
    let invite = doctor
        .api
        .issue_invite(&doctor.token, cid, InviteKind::Interpreter, "Ines")
        .await
        .unwrap();
    let added = doctor
        .api
        .add_clinician(&doctor.token, cid, "dr.back@example.org")
        .await
        .unwrap();
    let interpreter = svc.patient(&token_of(&invite.invite_url), "x").await;
    let (mut doctor_ws, joined) = doctor.join(&svc, cid).await;
    let doctor_id = participant_id(&joined);
    let (mut interpreter_ws, _) = svc.join_patient(&interpreter.participant_token).await;
    let (mut colleague_ws, _) = colleague.join(&svc, cid).await;
    admit(&mut doctor_ws, interpreter.participant_id).await;
    interpreter_ws.recv_type("admitted").await;
    admit(&mut doctor_ws, added.participant_id).await;
    colleague_ws.recv_type("admitted").await;
    drop((doctor_ws, interpreter_ws, colleague_ws));
    let svc = svc.restart().await;

    // The colleague is back first, admitted and resumed, with both others (offline) as peers,
    // their roles kept.
    let (_colleague_ws, joined) = colleague.join(&svc, cid).await;
    let (id, admitted, resumed, mut peers) = joined_parts(&joined);
    peers.sort();
    let mut expected = vec![doctor_id, interpreter.participant_id];
    expected.sort();
    assert_eq!(
        (id, admitted, resumed, peers),
        (added.participant_id, true, true, expected)
    );
    let roles: HashMap<Uuid, ParticipantRole> = peers_of(&joined)
        .into_iter()
        .map(|(id, p)| (id, p.role))
        .collect();
    assert_eq!(
        roles[&interpreter.participant_id],
        ParticipantRole::Interpreter
    );
    let (_interpreter_ws, joined) = svc.join_patient(&interpreter.participant_token).await;
    assert!(matches!(
        joined,
        ServerMessage::Joined {
            role: ParticipantRole::Interpreter,
            admitted: true,
            resumed: true,
            ..
        }
    ));
}

/// A colleague who connects to another node than the doctor's home reaches the room there, and
/// waits to be admitted, as on one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_colleague_on_another_node_reaches_the_doctors_room() {
    let redis = common::TestRedis::start();
    let a = TestService::start_clustered(&redis).await;
    let b = a.another_node().await;
    let doctor = a.doctor("dr.home@example.org").await;
    let colleague = a.doctor("dr.away@example.org").await;
    let (consultation, _) = doctor.create_consultation().await;
    // Room for one more: the patient link is revoked.
    doctor
        .bearer(
            Method::DELETE,
            &format!("/api/v1/consultations/{}/invite", consultation.id),
        )
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let added = doctor
        .api
        .add_clinician(&doctor.token, consultation.id, "dr.away@example.org")
        .await
        .unwrap();
    let (mut doctor_ws, _) = doctor.join(&a, consultation.id).await;
    // Before and after the doctor is home, the colleague's join on node B is relayed to A.
    let (mut colleague_ws, joined) = colleague.join(&b, consultation.id).await;
    assert_eq!(
        joined_parts(&joined),
        (added.participant_id, false, false, vec![])
    );
    admit(&mut doctor_ws, added.participant_id).await;
    assert!(matches!(
        colleague_ws.recv_type("admitted").await,
        ServerMessage::Admitted { peers } if peers.len() == 1
    ));
}

/// A place whose invite was revoked is void at once — even if disconnecting its holder failed
/// or has not happened — and removing its holder still disconnects them; a redemption that
/// races a revocation takes no place.
#[tokio::test]
async fn a_revoked_invite_voids_its_place_and_removal_always_disconnects() {
    let svc = TestService::start_with(|c| c.policy.max_participants = 3).await;
    let doctor = svc.doctor("dr.void@example.org").await;
    let (consultation, _) = doctor.create_consultation().await;
    let cid = consultation.id;
    let invite = doctor
        .api
        .issue_invite(&doctor.token, cid, InviteKind::Companion, "Carl")
        .await
        .unwrap();
    let link = token_of(&invite.invite_url);
    let companion = svc.patient(&link, "").await;
    let (mut doctor_ws, _) = doctor.join(&svc, cid).await;
    let (mut companion_ws, _) = svc.join_patient(&companion.participant_token).await;
    admit(&mut doctor_ws, companion.participant_id).await;
    companion_ws.recv_type("admitted").await;

    // The invite is revoked behind the hub's back (as when disconnecting its holder failed).
    let state = svc.state();
    let mut connection = state.pool.begin_write().await.unwrap();
    consult_signaling::consultations::rows::revoke_invites(
        &mut connection,
        cid,
        consult_signaling::consultations::rows::Revoke::One(invite.invite.id),
        time::OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    connection.commit().await.unwrap();
    // Its token no longer joins anywhere, nor fetches ICE servers.
    let mut again = svc.connect().await;
    again
        .send(&ClientMessage::Join {
            token: Some(companion.participant_token.clone()),
            consultation_id: None,
        })
        .await;
    assert!(again.expect_error("unauthorized").await);
    // Removing them still disconnects them, though their invite was revoked already.
    doctor
        .api
        .remove_participant(&doctor.token, cid, companion.participant_id)
        .await
        .unwrap();
    companion_ws.expect_closed().await;
    assert!(!state.hub.is_present(cid, companion.participant_id));

    // A place on a revoked invite is never taken, whatever was checked before.
    let place = consult_signaling::consultations::rows::NewParticipant {
        id: Uuid::new_v4(),
        consultation_id: cid,
        invite_id: invite.invite.id,
        role: InviteKind::Companion,
        name: "Carl",
        token_hash: "0000",
        created_at: time::OffsetDateTime::now_utc(),
    };
    let mut connection = state.pool.begin_write().await.unwrap();
    assert!(
        !consult_signaling::consultations::rows::insert_participant(&mut connection, &place)
            .await
            .unwrap()
    );
}

/// The doctor decides whether everyone else may share a screen: everyone there is told, a later
/// `joined` says so, it is kept in the database (a restarted service says the same) and
/// audited; nobody but the doctor may change it.
#[tokio::test]
async fn only_the_doctor_lets_everyone_else_share_a_screen() {
    use consult_proto::signal::ConsultationSummary;
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.screens@example.org").await;
    let (consultation, link) = doctor.create_consultation().await;
    let cid = consultation.id;
    let summary = |joined: &ServerMessage| match joined {
        ServerMessage::Joined { consultation, .. } => consultation.clone(),
        other => panic!("not joined: {other:?}"),
    };
    let (mut doctor_ws, joined) = doctor.join(&svc, cid).await;
    assert!(
        !summary(&joined).guests_share_screen,
        "clinicians only, to begin with"
    );
    let patient = svc.patient(&link, "Pat").await;
    let (mut patient_ws, joined) = svc.join_patient(&patient.participant_token).await;
    let ConsultationSummary {
        guests_share_screen,
        ..
    } = summary(&joined);
    assert!(!guests_share_screen);

    // The patient cannot allow themselves.
    patient_ws
        .send(&ClientMessage::ScreenSharing {
            guests_allowed: true,
        })
        .await;
    assert!(!patient_ws.expect_error("forbidden").await, "not fatal");
    let unchanged = consult_signaling::consultations::rows::find(&svc.state().pool, cid)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !unchanged.guests_share_screen,
        "the refusal changed nothing"
    );
    // A malformed choice from the doctor is refused, and changes nothing either.
    for text in [
        r#"{"v":1,"type":"screen_sharing"}"#,
        r#"{"v":1,"type":"screen_sharing","guests_allowed":"yes"}"#,
    ] {
        doctor_ws.send_text(text.into()).await;
        assert!(!doctor_ws.expect_error("malformed").await, "not fatal");
    }
    let unchanged = consult_signaling::consultations::rows::find(&svc.state().pool, cid)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !unchanged.guests_share_screen,
        "malformed choices changed nothing"
    );
    // The doctor allows it: both are told (the patient while still waiting, too).
    doctor_ws
        .send(&ClientMessage::ScreenSharing {
            guests_allowed: true,
        })
        .await;
    for ws in [&mut doctor_ws, &mut patient_ws] {
        assert_eq!(
            ws.recv_type("screen_sharing").await,
            ServerMessage::ScreenSharing {
                guests_allowed: true
            }
        );
    }
    let stored = consult_signaling::consultations::rows::find(&svc.state().pool, cid)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.guests_share_screen, "kept");
    // A later `joined` (here the doctor's second device taking the place) says so.
    let (_doctor_again, joined) = doctor.join(&svc, cid).await;
    assert!(
        summary(&joined).guests_share_screen,
        "a later joined says so"
    );
    let entry = svc.audited("screen_sharing_changed", None).await;
    assert_eq!(entry.detail["guests_allowed"], true);
    drop(patient_ws);
}
