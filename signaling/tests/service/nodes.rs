//! Several nodes of one deployment on one database (SQLite in the quick tier, PostgreSQL in the
//! full run): what one node writes, every node reads, and concurrent writers keep one chain.

use consult_api_client::ApiClient;
use consult_proto::api::CreateConsultationRequest;
use consult_proto::signal::{ClientMessage, ServerMessage};
use consult_signaling::audit_checkpoints::{self, AuditSigner};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_writing_at_once_keep_one_audit_chain_and_its_checkpoints() {
    let a = TestService::start().await;
    let b = a.another_node().await;
    let doctor = a.doctor("nodes@clinic.test").await;
    // The session made on one node is good on the other: it lives in the shared database.
    let on_b = ApiClient::new(&b.base).unwrap();
    let signer = AuditSigner::load_or_create(a.data_dir()).unwrap();
    let request = CreateConsultationRequest::default();

    // 60 creations, alternating nodes, all in flight together, with checkpoints from both
    // nodes taken while they run.
    let creations = futures_util::future::join_all((0..60).map(|i| {
        let api = if i % 2 == 0 { &doctor.api } else { &on_b };
        api.create_consultation(&doctor.token, &request)
    }));
    let checkpoints = async {
        for round in 0..10 {
            let pool = if round % 2 == 0 {
                &a.state().pool
            } else {
                &b.state().pool
            };
            audit_checkpoints::checkpoint(pool, &signer).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let (made, ()) = tokio::join!(creations, checkpoints);
    let made: Vec<_> = made.into_iter().map(|c| c.unwrap()).collect();
    audit_checkpoints::checkpoint(&b.state().pool, &signer)
        .await
        .unwrap();

    // One chain: every entry links to the one before, no gap, no fork, each creation once.
    let entries = consult_signaling::audit::verify(&a.state().pool)
        .await
        .unwrap()
        .expect("one intact chain");
    assert!(entries >= 60, "{entries} entries");
    assert_eq!(a.audited_count("consultation_created").await, 60);
    let keys = audit_checkpoints::public_keys(a.data_dir()).unwrap();
    let held = audit_checkpoints::verify_checkpoints(&b.state().pool, &keys)
        .await
        .unwrap()
        .expect("every checkpoint holds");
    assert!(held >= 2, "{held} checkpoints");

    // Each node reads what both made.
    for (i, c) in made.iter().enumerate() {
        let api = if i % 2 == 0 { &on_b } else { &doctor.api };
        assert_eq!(
            api.consultation(&doctor.token, c.id).await.unwrap().id,
            c.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invite_redeemed_on_two_nodes_at_once_goes_to_one_device() {
    let a = TestService::start().await;
    let b = a.another_node().await;
    let doctor = a.doctor("race@clinic.test").await;
    for round in 0..5 {
        let (_, invite) = doctor.create_consultation().await;
        // Twenty devices, half on each node, all at once.
        let answers = futures_util::future::join_all((0..20).map(|i| {
            let node = if i % 2 == 0 { &a } else { &b };
            node.redeem(&invite, "Patient")
        }))
        .await;
        let mut created = 0;
        for answer in answers {
            match answer.status() {
                reqwest::StatusCode::CREATED => created += 1,
                _ => assert_eq!(
                    error_code(answer).await,
                    (reqwest::StatusCode::CONFLICT, "invite_in_use".to_owned()),
                    "round {round}"
                ),
            }
        }
        assert_eq!(created, 1, "round {round}: one device holds the invite");
    }
}

/// A call whose doctor is connected to node `a` and whose patient (admitted) to node `b`.
struct CrossCall {
    doctor: Doctor,
    consultation: consult_proto::api::Consultation,
    doctor_id: uuid::Uuid,
    patient: consult_api_client::PatientPlace,
    doctor_ws: Signal,
    patient_ws: Signal,
}

async fn cross_call(a: &TestService, b: &TestService, email: &str) -> CrossCall {
    let doctor = a.doctor(email).await;
    let (consultation, invite) = doctor.create_consultation().await;
    let (mut doctor_ws, joined) = doctor.join(a, consultation.id).await;
    let doctor_id = participant_id(&joined);
    let patient = b.patient(&invite, "Pat").await;
    let (mut patient_ws, _) = b.join_patient(&patient.participant_token).await;
    doctor_ws
        .send(&ClientMessage::Admit {
            participant_id: patient.participant_id,
        })
        .await;
    patient_ws.recv_type("admitted").await;
    CrossCall {
        doctor,
        consultation,
        doctor_id,
        patient,
        doctor_ws,
        patient_ws,
    }
}

/// Join as a patient, as a page does after losing its connection: again after a refusal to
/// try later (a consultation between homes), for up to 15 s.
async fn rejoin_patient(node: &TestService, token: &str) -> (Signal, ServerMessage) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no rejoin within 15 s"
        );
        let mut ws = node.connect().await;
        ws.send(&ClientMessage::Join {
            token: Some(token.to_owned()),
            consultation_id: None,
        })
        .await;
        if let Some(joined @ ServerMessage::Joined { .. }) = ws.recv().await {
            return (ws, joined);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// An offer to `to`, as a page sends one.
fn offer(to: uuid::Uuid) -> ClientMessage {
    ClientMessage::Description {
        to,
        description: consult_proto::signal::SessionDescription {
            kind: consult_proto::signal::SdpKind::Offer,
            sdp: "v=0\r\n".into(),
        },
    }
}

/// A doctor on one node and their patient on another: the patient waits, the doctor sees them
/// and admits them (once over the socket, once over REST from a third node), signaling flows
/// both ways in order, and ending the consultation on the third node reaches both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_doctor_and_patient_are_on_different_nodes_works_as_on_one() {
    let redis = TestRedis::start();
    let a = TestService::start_clustered(&redis).await;
    let b = a.another_node().await;
    let c = a.another_node().await;
    let doctor = a.doctor("across@clinic.test").await;
    let (consultation, invite) = doctor.create_consultation().await;
    let (mut doctor_ws, joined) = doctor.join(&a, consultation.id).await;
    let doctor_id = participant_id(&joined);
    assert!(matches!(
        doctor_ws.recv_type("waiting_room").await,
        ServerMessage::WaitingRoom { entries } if entries.is_empty()
    ));

    // The patient redeems and connects on node B: relayed to A, where the doctor's room is.
    let patient = b.patient(&invite, "Pat").await;
    let (mut patient_ws, joined) = b.join_patient(&patient.participant_token).await;
    assert_eq!(
        joined_parts(&joined),
        (patient.participant_id, false, false, vec![])
    );
    assert!(matches!(
        doctor_ws.recv_type("waiting_room").await,
        ServerMessage::WaitingRoom { entries } if entries.len() == 1 && entries[0].connected
    ));
    // The waiting room over REST, asked of node C, is the home's.
    let on_c = ApiClient::new(&c.base).unwrap();
    let waiting = on_c.waiting_room(&doctor.token).await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].participant_id, patient.participant_id);

    // Admitted over REST on node C: the home admits, both sides hear it.
    on_c.admit(&doctor.token, consultation.id, patient.participant_id)
        .await
        .unwrap();
    assert!(matches!(
        patient_ws.recv_type("admitted").await,
        ServerMessage::Admitted { peers } if peers.iter().any(|p| p.participant_id == doctor_id)
    ));
    doctor_ws.recv_type("peer_joined").await;
    // A second admission of the same patient, from another node, is refused: one admission.
    assert!(on_c
        .admit(&doctor.token, consultation.id, patient.participant_id)
        .await
        .is_err());

    // Fifty messages each way arrive, in order.
    for i in 0..50u32 {
        doctor_ws
            .send(&ClientMessage::Candidate {
                to: patient.participant_id,
                candidate: Some(consult_proto::signal::IceCandidate {
                    candidate: format!("candidate:{i} 1 udp 1 127.0.0.1 {} typ host", 1000 + i),
                    sdp_mid: Some("0".into()),
                    sdp_m_line_index: Some(0),
                    username_fragment: None,
                }),
            })
            .await;
        patient_ws.send(&offer(doctor_id)).await;
    }
    for i in 0..50u32 {
        match patient_ws.recv_type("candidate").await {
            ServerMessage::Candidate {
                from,
                candidate: Some(candidate),
            } => {
                assert_eq!(from, doctor_id);
                assert!(candidate.candidate.starts_with(&format!("candidate:{i} ")));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            doctor_ws.recv_type("description").await,
            ServerMessage::Description { from, .. } if from == patient.participant_id
        ));
    }

    // Ending on node C reaches the patient on B and the doctor on A.
    on_c.end(&doctor.token, consultation.id).await.unwrap();
    assert_eq!(
        patient_ws.recv_type("consultation_ended").await,
        ServerMessage::ConsultationEnded {}
    );
    assert_eq!(
        doctor_ws.recv_type("consultation_ended").await,
        ServerMessage::ConsultationEnded {}
    );
}

/// Signing out on one node closes the doctor's signaling connection held by another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_on_one_node_closes_the_socket_another_holds() {
    let redis = TestRedis::start();
    let a = TestService::start_clustered(&redis).await;
    let b = a.another_node().await;
    let doctor = a.doctor("signout@clinic.test").await;
    let (consultation, _) = doctor.create_consultation().await;
    let (mut ws, _) = doctor.join(&a, consultation.id).await;
    ApiClient::new(&b.base)
        .unwrap()
        .sign_out(&doctor.token)
        .await
        .unwrap();
    assert!(ws.expect_error("unauthorized").await);
}

/// A doctor admits one patient at a time, even when their consultations' connections arrive on
/// different nodes: the doctor's consultations share one home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doctor_busy_on_one_node_cannot_admit_on_another() {
    let redis = TestRedis::start();
    let a = TestService::start_clustered(&redis).await;
    let b = a.another_node().await;
    let call = a.admitted_call("busy@clinic.test").await;
    let doctor = call.doctor;
    let (second, invite) = doctor.create_consultation().await;
    let other = b.patient(&invite, "Second").await;
    let (_other_ws, _) = b.join_patient(&other.participant_token).await;
    let (mut second_ws, _) = doctor.join(&b, second.id).await;
    second_ws
        .send(&ClientMessage::Admit {
            participant_id: other.participant_id,
        })
        .await;
    assert!(matches!(
        second_ws.recv_type("error").await,
        ServerMessage::Error {
            code: consult_proto::signal::SignalErrorCode::DoctorBusy,
            ..
        }
    ));
    drop(call.patient_ws);
}

/// A node that stops without a word (its process killed): within the lease, another node
/// takes the consultation from the database; both sides reconnect there and find their places,
/// the admission and each other, with no new admission; a relayed connection whose home died
/// is told to reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_node_holding_a_call_dies_another_gives_everyone_their_place_back() {
    let redis = TestRedis::start();
    let a = TestService::start_clustered(&redis).await;
    let b = a.another_node().await;
    let CrossCall {
        doctor,
        consultation,
        doctor_id,
        patient,
        doctor_ws,
        patient_ws,
    } = cross_call(&a, &b, "failover@clinic.test").await;
    let (mut doctor_ws, mut patient_ws) = (doctor_ws, patient_ws);

    // Node A dies: no goodbye to anyone, its leases left to lapse.
    a.kill().await;
    let died = std::time::Instant::now();
    doctor_ws.expect_closed().await;
    // B notices its relayed connection's home is gone and tells the patient to reconnect.
    patient_ws.expect_closed().await;

    // Both reconnect (through the load balancer, here: to B) and resume.
    let (mut patient_ws, joined) = b.join_patient(&patient.participant_token).await;
    assert_eq!(
        joined_parts(&joined),
        (patient.participant_id, true, true, vec![doctor_id])
    );
    let (mut doctor_ws, joined) = doctor.join(&b, consultation.id).await;
    assert_eq!(
        joined_parts(&joined),
        (doctor_id, true, true, vec![patient.participant_id])
    );
    eprintln!("both rejoined {:?} after the node died", died.elapsed());
    doctor_ws.send(&offer(patient.participant_id)).await;
    assert!(matches!(
        patient_ws.recv_type("description").await,
        ServerMessage::Description { from, .. } if from == doctor_id
    ));
    ApiClient::new(&b.base)
        .unwrap()
        .end(&doctor.token, consultation.id)
        .await
        .unwrap();
    patient_ws.recv_type("consultation_ended").await;
}

/// The node recording a consultation dies: the node that takes the consultation over marks
/// the recording interrupted (up to its last sealed chunk) and, when the call goes on, starts a
/// recorder whose recording continues it — kept as long, exported and shredded with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_on_a_dead_node_goes_on_in_a_segment_kept_and_shredded_with_it() {
    use crate::recording::{consented_call, recorded, until_state};
    use consult_proto::signal::RecordingState;
    use consult_signaling::recording::rows::{self, RecordingStatus};
    let redis = TestRedis::start();
    let a = TestService::start_clustered(&redis).await;
    let b = a.another_node().await;
    let doctor = a.doctor("recorded.failover@clinic.test").await;
    let call = consented_call(&a, &doctor, recorded(false)).await;
    let (consultation, patient) = (call.consultation, call.patient);
    let (mut doctor_ws, mut patient_ws) = (call.doctor_ws, call.patient_ws);
    until_state(&mut patient_ws, RecordingState::Recording).await;
    let first = rows::of_consultation(&b.state().pool, consultation.id)
        .await
        .unwrap();
    assert!(
        matches!(first.as_slice(), [r] if r.state == RecordingStatus::Recording),
        "{first:?}"
    );
    let first = first[0].clone();

    a.kill().await;
    doctor_ws.expect_closed().await;
    patient_ws.expect_closed().await;
    let (mut patient_ws, _) = rejoin_patient(&b, &patient.participant_token).await;
    let (mut doctor_ws, _) = doctor.join(&b, consultation.id).await;
    // The consent stands: recording again, without asking.
    until_state(&mut patient_ws, RecordingState::Recording).await;
    until_state(&mut doctor_ws, RecordingState::Recording).await;
    let both = rows::of_consultation(&b.state().pool, consultation.id)
        .await
        .unwrap();
    // (The test's clock stands still: both started in the same second, listed in either order.)
    let (Some(new), Some(old)) = (
        both.iter().find(|r| r.continues.is_some()),
        both.iter().find(|r| r.continues.is_none()),
    ) else {
        panic!("{both:?}")
    };
    assert_eq!(both.len(), 2);
    assert_eq!(
        (old.id, old.state),
        (first.id, RecordingStatus::Interrupted)
    );
    assert_eq!(new.state, RecordingStatus::Recording);
    assert_eq!(
        new.continues,
        Some(first.id),
        "the new recording continues the first"
    );
    assert_eq!(new.retain_until, first.retain_until, "and is kept as long");
    let segments = rows::segments(&b.state().pool, first.id).await.unwrap();
    assert_eq!(
        segments.iter().map(|r| r.id).collect::<Vec<_>>(),
        [first.id, new.id]
    );
    assert_eq!(
        rows::segments(&b.state().pool, new.id).await.unwrap(),
        segments,
        "the same segments from either"
    );
    let pool = b.state().pool.clone();
    let audited = |action: &'static str| {
        let pool = pool.clone();
        async move {
            consult_signaling::audit::entries(&pool)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.action == action)
                .map(|e| e.detail)
                .collect::<Vec<_>>()
        }
    };
    let started = audited("recording_started").await;
    assert_eq!(started.len(), 2, "{started:?}");
    assert_eq!(started[1]["continues"], first.id.to_string());

    // While the continuation is being recorded, neither segment can be shredded.
    let on_b = |method: reqwest::Method, path: String| {
        reqwest::Client::new()
            .request(method, b.url(&path))
            .bearer_auth(&doctor.token)
    };
    let shred =
        |id: uuid::Uuid| on_b(reqwest::Method::DELETE, format!("/api/v1/recordings/{id}")).send();
    let (status, code) = error_code(shred(first.id).await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (reqwest::StatusCode::CONFLICT, "still_recording")
    );
    ApiClient::new(&b.base)
        .unwrap()
        .end(&doctor.token, consultation.id)
        .await
        .unwrap();
    patient_ws.recv_type("consultation_ended").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rows::of_consultation(&b.state().pool, consultation.id)
        .await
        .unwrap()
        .iter()
        .any(|r| r.state == RecordingStatus::Recording)
    {
        assert!(std::time::Instant::now() < deadline, "still recording");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Shredding the continuation shreds the whole recording, each segment audited.
    assert_eq!(
        shred(new.id).await.unwrap().status(),
        reqwest::StatusCode::NO_CONTENT
    );
    let after = rows::of_consultation(&b.state().pool, consultation.id)
        .await
        .unwrap();
    assert!(
        after.iter().all(|r| r.state == RecordingStatus::Shredded),
        "{after:?}"
    );
    for id in [first.id, new.id] {
        let r = on_b(
            reqwest::Method::GET,
            format!("/api/v1/recordings/{id}/export"),
        )
        .send()
        .await
        .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("shredded"), "{body}");
    }
    let shredded: Vec<String> = audited("recording_shredded")
        .await
        .iter()
        .map(|detail| {
            detail["recording_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(shredded, [first.id.to_string(), new.id.to_string()]);
}

/// Redis lost everything mid-call (restarted without persistence): the nodes reconnect, the
/// connections that crossed nodes are told to reconnect, and everyone resumes with nothing
/// relayed across consultations and nobody admitted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_call_heals_without_a_second_admission() {
    let mut redis = TestRedis::start();
    let a = TestService::start_clustered(&redis).await;
    let b = a.another_node().await;
    let CrossCall {
        doctor_id,
        patient,
        doctor_ws,
        patient_ws,
        ..
    } = cross_call(&a, &b, "redis@clinic.test").await;
    let (mut doctor_ws, mut patient_ws) = (doctor_ws, patient_ws);
    // Another consultation, another doctor, in the same deployment.
    let stranger = b.doctor("stranger@clinic.test").await;
    let (other, _) = stranger.create_consultation().await;
    let (mut stranger_ws, _) = stranger.join(&b, other.id).await;

    redis.restart();

    // The relayed patient is told to reconnect; they and the doctor resume.
    patient_ws.expect_closed().await;
    let (mut patient_ws, joined) = rejoin_patient(&b, &patient.participant_token).await;
    assert_eq!(
        joined_parts(&joined),
        (patient.participant_id, true, true, vec![doctor_id])
    );
    doctor_ws.assert_alive().await;
    doctor_ws.send(&offer(patient.participant_id)).await;
    assert!(matches!(
        patient_ws.recv_type("description").await,
        ServerMessage::Description { from, .. } if from == doctor_id
    ));
    // Nothing of it reached the other consultation.
    let heard = stranger_ws
        .drain(std::time::Duration::from_millis(500))
        .await;
    assert!(
        heard.iter().all(|m| !matches!(
            m,
            ServerMessage::Description { .. } | ServerMessage::Admitted { .. }
        )),
        "{heard:?}"
    );
    assert_eq!(a.audited_count("admitted").await, 1, "admitted once");
}

/// Guesses from one address spread over the nodes add up: the address is locked out on every
/// node once their sum reaches the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_spread_over_nodes_lock_the_address_on_all_of_them() {
    let redis = TestRedis::start();
    let url = redis.url();
    let a = TestService::start_with(move |c| {
        c.cluster.redis_url = Some(url);
        c.login.max_failures_per_address = 6;
    })
    .await;
    let b = a.another_node().await;
    for i in 0..6 {
        let node = if i % 2 == 0 { &a } else { &b };
        let answer = node
            .login(&format!("guess{i}@clinic.test"), "some password!!", None)
            .await;
        assert_eq!(
            answer.status(),
            reqwest::StatusCode::UNAUTHORIZED,
            "guess {i}"
        );
    }
    for node in [&a, &b] {
        let (status, code) = error_code(
            node.login("guess9@clinic.test", "some password!!", None)
                .await,
        )
        .await;
        assert_eq!(
            (status, code.as_str()),
            (reqwest::StatusCode::TOO_MANY_REQUESTS, "too_many_attempts")
        );
    }
}

/// Two nodes admitting the same waiting patient at the same moment: exactly one admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_admitting_one_patient_at_once_admit_once() {
    let redis = TestRedis::start();
    let a = TestService::start_clustered(&redis).await;
    let b = a.another_node().await;
    let c = a.another_node().await;
    let doctor = a.doctor("twice@clinic.test").await;
    let (on_b, on_c) = (
        ApiClient::new(&b.base).unwrap(),
        ApiClient::new(&c.base).unwrap(),
    );
    for round in 0..5 {
        let (consultation, invite) = doctor.create_consultation().await;
        let patient = a.patient(&invite, "Pat").await;
        let (mut patient_ws, _) = c.join_patient(&patient.participant_token).await;
        let (first, second) = tokio::join!(
            on_b.admit(&doctor.token, consultation.id, patient.participant_id),
            on_c.admit(&doctor.token, consultation.id, patient.participant_id),
        );
        assert_eq!(
            [first.is_ok(), second.is_ok()]
                .iter()
                .filter(|ok| **ok)
                .count(),
            1,
            "round {round}: {first:?} / {second:?}"
        );
        patient_ws.recv_type("admitted").await;
        on_b.end(&doctor.token, consultation.id).await.unwrap();
    }
    assert_eq!(a.audited_count("admitted").await, 5);
}

/// A node that starts right after Redis did cannot tell a new deployment from one whose Redis
/// just lost every lease: it lets the deployment settle for one lease before any free home is
/// taken, so a live home elsewhere re-takes its own first. A join meanwhile waits, then works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starting_beside_a_fresh_redis_lets_the_deployment_settle_first() {
    let redis = TestRedis::start();
    let a = TestService::start_clustered(&redis).await;
    let settling = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "PTTL", "consult:settling"])
        .output()
        .expect("redis-cli runs");
    let left: i64 = String::from_utf8_lossy(&settling.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(
        left > 0,
        "the deployment settles after a fresh Redis ({left} ms left)"
    );
    // A doctor joining meanwhile is placed once the settling is over.
    let doctor = a.doctor("settle@clinic.test").await;
    let (consultation, _) = doctor.create_consultation().await;
    let (_ws, joined) = doctor.join(&a, consultation.id).await;
    assert!(matches!(joined, ServerMessage::Joined { .. }));
}

/// A client flooding a connection relayed to another node is limited where it arrives: it is
/// told to slow down and keeps its connection, and the bus never carries the flood, so another
/// call relayed by the same node goes on undisturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_a_relayed_connection_is_limited_where_it_arrives() {
    let redis = TestRedis::start();
    let url = redis.url();
    let a = TestService::start_with(move |c| {
        c.cluster.redis_url = Some(url);
        c.cluster.lease = std::time::Duration::from_millis(1500);
        c.signaling.max_messages_per_second = 5;
    })
    .await;
    let b = a.another_node().await;
    let flooding = cross_call(&a, &b, "flood@clinic.test").await;
    let calm = cross_call(&a, &b, "calm@clinic.test").await;
    let mut patient_ws = flooding.patient_ws;
    for _ in 0..3000 {
        patient_ws.send(&ClientMessage::Ping {}).await;
    }
    let replies = patient_ws
        .drain(std::time::Duration::from_millis(500))
        .await;
    let limited = replies
        .iter()
        .filter(
            |m| matches!(m, ServerMessage::Error { code, .. } if code.as_str() == "rate_limited"),
        )
        .count();
    assert!(limited >= 2900, "{limited} of 3000 limited");
    // Limited at the entry: the home saw only what the limit let through.
    let rejected = |node: &TestService| {
        node.state()
            .metrics
            .signal_rejected
            .with_label_values(&["rate_limited"])
            .get()
    };
    assert!(
        rejected(&b) >= 2900,
        "the entry node limited {}",
        rejected(&b)
    );
    assert!(rejected(&a) < 20, "the home limited {}", rejected(&a));
    patient_ws.assert_alive().await;
    // The other relayed call is untouched.
    let (mut doctor_ws, mut other_patient) = (calm.doctor_ws, calm.patient_ws);
    doctor_ws.send(&offer(calm.patient.participant_id)).await;
    assert!(matches!(
        other_patient.recv_type("description").await,
        ServerMessage::Description { from, .. } if from == calm.doctor_id
    ));
}

/// A join that proves nothing — a forged participant token, a consultation id without a valid
/// session, another doctor's consultation, garbage — is refused on the node it reached, and
/// takes no consultation's home there (nothing is claimed or restored for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_that_prove_nothing_are_refused_and_take_no_home() {
    let redis = TestRedis::start();
    let a = TestService::start_clustered(&redis).await;
    let b = a.another_node().await;
    let owner = a.doctor("owner@clinic.test").await;
    let stranger = a.doctor("stranger@clinic.test").await;
    let (consultation, invite) = owner.create_consultation().await;
    // A patient holds a place, so there is something a claim would restore.
    let patient = a.patient(&invite, "Pat").await;
    drop(patient);
    let attempts = [
        ClientMessage::Join {
            token: Some("forged-participant-token".into()),
            consultation_id: None,
        },
        ClientMessage::Join {
            token: Some("forged-session-token".into()),
            consultation_id: Some(consultation.id),
        },
        ClientMessage::Join {
            token: Some(stranger.token.clone()),
            consultation_id: Some(consultation.id),
        },
    ];
    for attempt in attempts {
        let mut ws = b.connect().await;
        ws.send(&attempt).await;
        assert!(
            matches!(
                ws.recv().await,
                Some(ServerMessage::Error { fatal: true, .. })
            ),
            "{attempt:?} refused"
        );
    }
    let mut ws = b.connect().await;
    ws.send_text("{\"v\":1,\"type\":\"join\",".repeat(10)).await;
    assert!(matches!(
        ws.recv().await,
        Some(ServerMessage::Error { fatal: false, .. })
    ));
    // No node took the owner's consultations for any of it: no home lease in Redis, no room.
    let leases = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "KEYS", "consult:home:*"])
        .output()
        .expect("redis-cli runs");
    assert_eq!(String::from_utf8_lossy(&leases.stdout).trim(), "");
    for node in [&a, &b] {
        assert_eq!(node.state().metrics.cluster_homes.get(), 0);
    }
}
