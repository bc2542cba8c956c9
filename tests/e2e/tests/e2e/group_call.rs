//! Three native peers (the media core) in one end-to-end encrypted consultation through a
//! running service: a doctor, a patient through the patient link and an interpreter through a
//! named invite, each admitted separately, in a full mesh. Everyone decodes everyone else's
//! video and audio, each pair agrees its own keys, and when one leaves the other two go on.

use std::time::{Duration, Instant};

use consult_client::session::Session;
use consult_client::Credentials;
use consult_e2e::{config, pump, Clinic, Seen};
use consult_proto::api::{CreateConsultationRequest, InviteKind};

/// Send a moving pattern and a tone from every session for `length`, collecting events.
async fn everyone_sends(sessions: &mut [(Session, Seen)], length: Duration) {
    everyone_sends_and(sessions, length, &[]).await
}

/// [`everyone_sends`], and the sessions in `screens` also send frames of a 640x360 screen.
async fn everyone_sends_and(sessions: &mut [(Session, Seen)], length: Duration, screens: &[usize]) {
    let mut desktop = consult_client::codec::pattern::TestPattern::new(640, 360);
    let mut patterns: Vec<_> = sessions
        .iter()
        .map(|_| consult_client::codec::pattern::TestPattern::new(320, 240))
        .collect();
    let mut tones: Vec<_> = (0..sessions.len())
        .map(|i| consult_client::codec::pattern::Tone::new(440.0 + 110.0 * i as f32))
        .collect();
    let started = Instant::now();
    let mut tick = 0u64;
    while started.elapsed() < length {
        for (i, (session, seen)) in sessions.iter_mut().enumerate() {
            if tick.is_multiple_of(3) {
                session.send_video(patterns[i].next_frame()).await.unwrap();
                if screens.contains(&i) {
                    session.send_screen(desktop.next_frame()).await.unwrap();
                }
            }
            if tick.is_multiple_of(2) {
                session.send_audio(tones[i].next_frame()).await.unwrap();
            }
            pump(session, seen, Duration::from_millis(3)).await;
        }
        tick += 1;
    }
}

/// A consultation created with `request` (on a service allowing three), a native doctor, a
/// native patient through the patient link and a native interpreter through a named invite,
/// each admitted on their own: the consultation and the three sessions, doctor first.
async fn group_of_three(
    clinic: &Clinic,
    request: CreateConsultationRequest,
) -> (consult_proto::api::Consultation, Vec<(Session, Seen)>) {
    let (consultation, patient_link) = clinic.consultation_with(request).await;
    let interpreter_link = clinic
        .api
        .issue_invite(
            &clinic.token,
            consultation.id,
            InviteKind::Interpreter,
            "Ines Interpreter",
        )
        .await
        .expect("named invite")
        .invite_url;
    let doctor = Session::start(config(Credentials::Clinician {
        base_url: clinic.base.clone(),
        token: clinic.token.clone(),
        consultation_id: consultation.id,
    }))
    .await
    .expect("doctor session");
    let mut sessions = vec![(doctor, Seen::default())];
    for (link, name) in [(patient_link, "Kiosk 3"), (interpreter_link, "ignored")] {
        let session = Session::start(config(Credentials::Patient {
            invite_url: link,
            name: name.into(),
        }))
        .await
        .expect("invited session");
        sessions.push((session, Seen::default()));
        // Each waits, and is admitted on their own.
        clinic.admit_first_waiting(&consultation).await;
    }
    (consultation, sessions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_native_peers_hold_an_encrypted_group_consultation_through_the_service() {
    let clinic = Clinic::start_with(|c| c.policy.max_participants = 3).await;
    let (_, mut sessions) = group_of_three(
        &clinic,
        CreateConsultationRequest {
            title: Some("group".into()),
            e2ee: Some(true),
            ..Default::default()
        },
    )
    .await;
    // Everyone connects with both others, and each pair agrees its keys.
    let started = Instant::now();
    while !sessions
        .iter()
        .all(|(_, seen)| seen.sas_with.len() == 2 && seen.connected)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the mesh did not come up: {:?}",
            sessions
                .iter()
                .map(|(_, s)| (s.sas_with.len(), s.warnings.clone()))
                .collect::<Vec<_>>()
        );
        for (session, seen) in &mut sessions {
            pump(session, seen, Duration::from_millis(20)).await;
        }
    }
    println!("admitted to every pair keyed: {:?}", started.elapsed());
    everyone_sends(&mut sessions, Duration::from_secs(4)).await;
    for (_, seen) in &mut sessions {
        assert_eq!(seen.video_from.len(), 2, "video from both others");
        assert_eq!(seen.audio_from.len(), 2, "audio from both others");
        for (from, frames) in &seen.video_from {
            assert!(*frames > 20, "{frames} video frames from {from}");
        }
        for (from, frames) in &seen.audio_from {
            assert!(*frames > 30, "{frames} audio frames from {from}");
        }
    }
    // The two sides of each pair show the same code, and the three pairs three different ones.
    let codes: Vec<(uuid::Uuid, &String)> = sessions
        .iter()
        .flat_map(|(_, seen)| seen.sas_with.iter().map(|(k, v)| (*k, v)))
        .collect();
    let mut distinct: Vec<&String> = codes.iter().map(|(_, c)| *c).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "one code per pair: {codes:?}");

    // The interpreter hangs up: the doctor and the patient keep their call.
    let (interpreter, _) = sessions.pop().expect("interpreter");
    interpreter.leave().await.expect("leave");
    // What was already on its way arrives; then only the two left send.
    for (session, seen) in &mut sessions {
        pump(session, seen, Duration::from_millis(300)).await;
        seen.video_from.clear();
    }
    everyone_sends(&mut sessions, Duration::from_secs(2)).await;
    for (_, seen) in &sessions {
        assert_eq!(
            seen.video_from.len(),
            1,
            "video goes on between the two left: {:?} {:?}",
            seen.video_from,
            seen.warnings
        );
        assert!(seen.video_from.values().all(|n| *n > 10));
    }
    for (session, _) in sessions {
        session.leave().await.expect("leave");
    }
}

/// A recorded group consultation: the patient and the interpreter consent (the clinician is
/// not asked), everyone's media reaches the recorder, and the export holds every participant's
/// tracks, named, and plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_group_consultation_exports_every_participants_tracks_named() {
    recorded_group(false).await
}

/// The same, end-to-end encrypted: a zero-knowledge recording of the group (every sender's frames,
/// the doctor's screen included, stored as ciphertext under keys wrapped to the clinician's
/// recording key). The export is refused without that key and holds every named track with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_knowledge_recording_of_a_group_opens_only_with_the_clinicians_key() {
    recorded_group(true).await
}

async fn recorded_group(zero_knowledge: bool) {
    use consult_e2ee::recording_key::RecordingKeyPair;
    use consult_proto::api::ConsultationMode;
    use consult_proto::signal::RecordingState;
    use consult_signaling::recording::{export, rows};

    let clinic = Clinic::start_with(|c| c.policy.max_participants = 3).await;
    let clinician = RecordingKeyPair::generate(&mut rand::rngs::OsRng);
    if zero_knowledge {
        clinic
            .api
            .set_recording_key(&clinic.token, &clinician.public().to_base64())
            .await
            .expect("the recording key is registered");
    }
    let (consultation, mut sessions) = group_of_three(
        &clinic,
        CreateConsultationRequest {
            title: Some("recorded group".into()),
            mode: Some(ConsultationMode::Recorded),
            e2ee: Some(zero_knowledge),
            ..Default::default()
        },
    )
    .await;
    // Only the patient has consented: not recorded yet, the interpreter is asked too.
    sessions[1].0.consent_to_recording(true).await.unwrap();
    let started = Instant::now();
    while sessions[2].1.recording != Some(RecordingState::AwaitingConsent) {
        assert!(started.elapsed() < Duration::from_secs(20), "not asked");
        for (session, seen) in &mut sessions {
            pump(session, seen, Duration::from_millis(20)).await;
        }
    }
    sessions[2].0.consent_to_recording(true).await.unwrap();
    let started = Instant::now();
    while !sessions.iter().all(|(_, seen)| {
        seen.recording == Some(RecordingState::Recording) && seen.video_from.len() == 2
    }) {
        if sessions.iter().all(|(_, s)| s.connected) {
            everyone_sends(&mut sessions, Duration::from_millis(100)).await;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not recording with everyone: {:?}",
            sessions
                .iter()
                .map(|(_, s)| (s.recording, s.video_from.len(), s.warnings.clone()))
                .collect::<Vec<_>>()
        );
        for (session, seen) in &mut sessions {
            pump(session, seen, Duration::from_millis(20)).await;
        }
    }
    // The recorder's connections come up beside the call.
    for (session, seen) in &mut sessions {
        pump(session, seen, Duration::from_millis(300)).await;
    }
    everyone_sends(&mut sessions, Duration::from_secs(2)).await;
    // The doctor shares a screen: both others decode it, apart from the camera, and it is
    // recorded as a track of its own. The interpreter tries too, without the doctor's leave: their
    // client refuses and says so, nobody gets a screen from them and none is recorded.
    sessions[0].0.share_screen(true).await.unwrap();
    sessions[2].0.share_screen(true).await.unwrap();
    everyone_sends_and(&mut sessions, Duration::from_secs(3), &[0, 2]).await;
    let doctor_id = *sessions[1]
        .1
        .video_from
        .keys()
        .find(|id| sessions[2].1.video_from.contains_key(id))
        .expect("the doctor's camera reached both");
    for (i, (_, seen)) in sessions.iter().enumerate().skip(1) {
        assert!(
            seen.screen_from.get(&doctor_id).is_some_and(|n| *n > 10),
            "session {i} decodes the doctor's screen: {:?}",
            seen.screen_from
        );
        assert_eq!(
            seen.screen_from.len(),
            1,
            "only the doctor's screen is handed over"
        );
    }
    assert!(
        sessions[0].1.screen_from.is_empty(),
        "the interpreter's is not"
    );
    assert!(
        sessions[2]
            .1
            .warnings
            .iter()
            .any(|w| w.contains("only clinicians may share a screen")),
        "{:?}",
        sessions[2].1.warnings
    );
    clinic
        .api
        .end(&clinic.token, consultation.id)
        .await
        .expect("the consultation ends");
    let state = &clinic.server.state;
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let recordings = rows::of_consultation(&state.pool, consultation.id)
            .await
            .unwrap();
        if let [row] = recordings.as_slice()
            && row.state == rows::RecordingStatus::Complete
        {
            break row.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no complete recording: {recordings:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let names = export::participant_names(&state.pool, consultation.id)
        .await
        .unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    assert_eq!(row.zero_knowledge, zero_knowledge);
    if zero_knowledge {
        let refused = export::prepare(&state.recordings.vault, &row, &[], None).err();
        assert!(
            matches!(refused, Some(export::ExportError::NeedsClinicianKey(_))),
            "{refused:?}"
        );
    }
    let key = zero_knowledge.then_some(&clinician);
    export::prepare(&state.recordings.vault, &row, &[], key)
        .unwrap()
        .with_names(&names)
        .write(&state.recordings.vault, &mut out)
        .unwrap();
    let bytes = out.into_inner();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("group.mkv");
    std::fs::write(&path, &bytes).unwrap();
    let probe = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name:stream_tags=title",
        ])
        .args(["-of", "json"])
        .arg(&path)
        .output()
        .expect("ffprobe (Debian's ffmpeg package)");
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    let mut streams: Vec<(String, String)> = info["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["codec_name"].as_str().unwrap_or_default().to_owned(),
                s["tags"]["title"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    streams.sort();
    let titles: Vec<&str> = streams.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        streams.len(),
        7,
        "three senders' audio and video, and the doctor's screen: {streams:?}"
    );
    for who in ["Kiosk 3 (patient)", "Ines Interpreter (interpreter)"] {
        assert_eq!(
            titles.iter().filter(|t| t.starts_with(who)).count(),
            2,
            "{who}'s audio and video: {titles:?}"
        );
    }
    assert_eq!(
        titles.iter().filter(|t| t.contains("(doctor)")).count(),
        3,
        "{titles:?}"
    );
    assert_eq!(
        titles
            .iter()
            .filter(|t| t.ends_with("(doctor) screen"))
            .count(),
        1,
        "{titles:?}"
    );
    // Every frame decodes (ffmpeg -xerror), as for any recording.
    let (codecs, _) = crate::recorded_call::probe(&bytes);
    assert_eq!(
        codecs,
        ["h264", "h264", "h264", "h264", "opus", "opus", "opus"]
    );
    for (session, _) in sessions {
        session.leave().await.expect("leave");
    }
}
