//! Two native peers (the media core) hold a consultation through a running signaling service:
//! video and audio decoded both ways, chat, and a 20 MB file with an equal SHA-256.

use std::time::{Duration, Instant};

use consult_client::api::{ApiClient, ClinicianLogin};
use consult_client::session::{Session, SessionEvent};
use consult_client::Credentials;
use consult_e2e::{config, media_both_ways, pump, Clinic, Seen};
use consult_proto::api::CreateConsultationRequest;
use rand::RngCore;
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_native_peers_hold_a_consultation_through_the_service() {
    let clinic = Clinic::start().await;
    let (consultation, invite) = clinic.consultation().await;
    let (mut patient, mut doctor) = clinic.patient_and_doctor(&consultation, invite).await;
    let (mut p, mut d) = (Seen::default(), Seen::default());
    pump(&mut patient, &mut p, Duration::from_millis(300)).await;
    assert!(p.joined && !p.admitted, "the patient waits");
    clinic.admit_first_waiting(&consultation).await;

    // Connect, then three seconds of a moving pattern and a tone from both sides.
    let started = Instant::now();
    while !(p.connected && d.connected) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no connection: {:?} / {:?}",
            p.warnings,
            d.warnings
        );
        pump(&mut patient, &mut p, Duration::from_millis(20)).await;
        pump(&mut doctor, &mut d, Duration::from_millis(20)).await;
    }
    println!("admitted to connected: {:?}", started.elapsed());
    media_both_ways(&mut patient, &mut doctor, &mut p, &mut d, 3).await;
    pump(&mut patient, &mut p, Duration::from_millis(300)).await;
    pump(&mut doctor, &mut d, Duration::from_millis(300)).await;
    println!(
        "patient decoded {} video / {} audio frames; doctor {} / {}",
        p.video, p.audio, d.video, d.audio
    );
    assert!(p.video > 30 && d.video > 30, "video decoded both ways");
    assert!(p.audio > 50 && d.audio > 50, "audio decoded both ways");
    // The statistics an integrator's quality indicator reads.
    let stats = d.stats.clone().expect("stats arrive once a second");
    assert!(
        stats.frames_encoded > 30 && stats.frames_decoded > 30,
        "{stats:?}"
    );
    assert!(
        stats.rtt.is_some() && stats.selected_pair.is_some(),
        "{stats:?}"
    );
    assert!(stats.receive_bps > 0 && stats.send_bps > 0, "{stats:?}");

    // Chat both ways.
    patient.send_chat("Good morning, doctor").await.unwrap();
    doctor
        .send_chat("Good morning! How is the knee?")
        .await
        .unwrap();
    assert!(
        patient.send_chat(&"x".repeat(5000)).await.is_err(),
        "over the chat limit"
    );

    // A 20 MB random file from the patient to the doctor.
    let mut file = vec![0u8; 20 * 1024 * 1024];
    rand::thread_rng().fill_bytes(&mut file);
    let started = Instant::now();
    let [id] = patient
        .offer_file("knee-scan.bin", "application/octet-stream", file.clone())
        .await
        .unwrap()[..]
    else {
        panic!("one participant: one transfer");
    };
    while d.offered != Some(id) {
        assert!(started.elapsed() < Duration::from_secs(10), "no offer");
        pump(&mut doctor, &mut d, Duration::from_millis(20)).await;
        pump(&mut patient, &mut p, Duration::from_millis(1)).await;
    }
    doctor.accept_file(id).await.unwrap();
    while d.received.is_none() || !p.sent {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the file did not arrive"
        );
        pump(&mut doctor, &mut d, Duration::from_millis(10)).await;
        pump(&mut patient, &mut p, Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "20 MB in {:?} ({:.1} MB/s)",
        elapsed,
        20.0 / elapsed.as_secs_f64()
    );
    let received = d.received.take().unwrap();
    assert_eq!(Sha256::digest(&received), Sha256::digest(&file));
    assert_eq!(d.chats, vec!["Good morning, doctor".to_string()]);
    assert_eq!(p.chats, vec!["Good morning! How is the knee?".to_string()]);
    patient.leave().await.unwrap();
    doctor.leave().await.unwrap();
}

/// `target/<profile>/consult`, built by `cargo build --workspace`.
fn consult_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile.join("consult");
    assert!(
        path.exists(),
        "{} missing: run `cargo build -p consult-signaling`",
        path.display()
    );
    path
}

/// `consult serve --demo` on `bind` with `dir`: the process and the URL it printed.
async fn serve(dir: &std::path::Path, bind: &str) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;

    let mut service = tokio::process::Command::new(consult_binary())
        .args(["serve", "--demo", "--bind", bind, "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(service.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("serve printed its URL");
        if let Some(url) = line.strip_prefix("Consult is running at ") {
            break url.trim_end_matches('/').to_owned();
        }
    };
    (service, base)
}

/// Media goes peer to peer: when the service process dies mid-call (SIGKILL), both sides say
/// signaling is lost and keep trying to reconnect, and meanwhile the pictures and the sound
/// keep coming. When it is back on its data directory, both sessions rejoin by themselves,
/// still admitted, on the same peer connection (no new one connects), media still flows, and
/// ending the consultation reaches the patient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_keeps_flowing_while_the_service_is_gone_and_the_call_resumes_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut service, base) = serve(dir.path(), "127.0.0.1:0").await;
    // The service's API as the load generator speaks it: sign-in with TOTP, create, admit.
    let creds: ClinicianLogin =
        serde_json::from_slice(&std::fs::read(dir.path().join("demo-credentials.json")).unwrap())
            .unwrap();
    let api = ApiClient::new(&base).unwrap();
    let token = api.sign_in(&creds).await.unwrap();
    let created = api
        .create_consultation(
            &token,
            &CreateConsultationRequest {
                title: Some("outage".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (id, invite) = (created.id, created.invite_url.expect("an invite link"));
    let mut patient = Session::start(config(Credentials::Patient {
        invite_url: invite,
        name: "Kiosk 3".into(),
    }))
    .await
    .unwrap();
    let mut doctor = Session::start(config(Credentials::Clinician {
        base_url: base.clone(),
        token: token.clone(),
        consultation_id: id,
    }))
    .await
    .unwrap();
    let (mut p, mut d) = (Seen::default(), Seen::default());
    let participant = loop {
        match tokio::time::timeout(Duration::from_secs(10), patient.next_event()).await {
            Ok(Some(SessionEvent::Joined { participant_id, .. })) => break participant_id,
            Ok(Some(_)) => {}
            other => panic!("patient never waited: {other:?}"),
        }
    };
    api.admit(&token, id, participant).await.unwrap();
    let started = Instant::now();
    while !(p.connected && d.connected) {
        assert!(started.elapsed() < Duration::from_secs(20), "no connection");
        pump(&mut patient, &mut p, Duration::from_millis(20)).await;
        pump(&mut doctor, &mut d, Duration::from_millis(20)).await;
    }
    media_both_ways(&mut patient, &mut doctor, &mut p, &mut d, 1).await;
    assert!(p.video > 0 && d.video > 0, "video before the outage");

    service.kill().await.unwrap();
    let (mut p_after, mut d_after) = (Seen::default(), Seen::default());
    media_both_ways(&mut patient, &mut doctor, &mut p_after, &mut d_after, 3).await;
    for (side, seen) in [("patient", &p_after), ("doctor", &d_after)] {
        assert!(
            seen.warnings
                .iter()
                .any(|w| w.starts_with("signaling lost")),
            "{side} was not told: {:?}",
            seen.warnings
        );
        assert!(
            seen.video > 30 && seen.audio > 50,
            "{side} stopped receiving while signaling was down: {} video, {} audio",
            seen.video,
            seen.audio
        );
    }

    // Back on the same address and data directory.
    let address = base.trim_start_matches("http://").to_owned();
    let (_service, _) = serve(dir.path(), &address).await;
    let (mut p_back, mut d_back) = (Seen::default(), Seen::default());
    let restarted = Instant::now();
    while !(p_back.joined && d_back.joined) {
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "not rejoined: {:?} / {:?}",
            p_back.warnings,
            d_back.warnings
        );
        pump(&mut patient, &mut p_back, Duration::from_millis(20)).await;
        pump(&mut doctor, &mut d_back, Duration::from_millis(20)).await;
    }
    println!("both rejoined {:?} after the restart", restarted.elapsed());
    let (mut p_then, mut d_then) = (Seen::default(), Seen::default());
    media_both_ways(&mut patient, &mut doctor, &mut p_then, &mut d_then, 2).await;
    for (side, seen) in [("patient", &p_back), ("doctor", &d_back)] {
        assert!(!seen.connected, "{side} made a new peer connection");
    }
    for (side, seen) in [("patient", &p_then), ("doctor", &d_then)] {
        assert!(!seen.connected, "{side} made a new peer connection");
        assert!(
            seen.video > 20 && seen.audio > 30,
            "{side} after the restart: {} video, {} audio",
            seen.video,
            seen.audio
        );
    }
    api.end(&token, id).await.unwrap();
    let ending = Instant::now();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), patient.next_event()).await {
            Ok(Some(SessionEvent::Ended)) => break true,
            Ok(Some(_)) if ending.elapsed() < Duration::from_secs(10) => {}
            _ => break false,
        }
    };
    assert!(ended, "the ending reached the patient");
    doctor.leave().await.unwrap();
}

/// A sender whose frames change size (a camera switched, a source that scales) goes on: the
/// session makes a new encoder, and the far side decodes frames of both sizes. (An echo of a
/// browser whose resolution ramps up used to end the session: "480x360 frame for a 320x240
/// encoder".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_change_size_keep_flowing() {
    let clinic = Clinic::start().await;
    let (consultation, invite) = clinic.consultation().await;
    let (mut patient, mut doctor) = clinic.patient_and_doctor(&consultation, invite).await;
    let (mut p, mut d) = (Seen::default(), Seen::default());
    clinic.admit_first_waiting(&consultation).await;
    let started = Instant::now();
    while !(p.connected && d.connected) {
        assert!(started.elapsed() < Duration::from_secs(20), "no connection");
        pump(&mut patient, &mut p, Duration::from_millis(20)).await;
        pump(&mut doctor, &mut d, Duration::from_millis(20)).await;
    }
    let mut small = consult_client::codec::pattern::TestPattern::new(320, 240);
    let mut large = consult_client::codec::pattern::TestPattern::new(640, 480);
    // Two seconds at 320x240, then two at 640x480, then 320x240 again.
    for step in 0..180u32 {
        let frame = if (60..120).contains(&step) {
            large.next_frame()
        } else {
            small.next_frame()
        };
        patient
            .send_video(frame)
            .await
            .expect("the session takes every size");
        pump(&mut patient, &mut p, Duration::from_millis(16)).await;
        pump(&mut doctor, &mut d, Duration::from_millis(16)).await;
    }
    pump(&mut doctor, &mut d, Duration::from_millis(500)).await;
    println!("decoded per size: {:?}", d.sizes);
    assert!(
        d.sizes.get(&(320, 240)).is_some_and(|n| *n > 30),
        "{:?}",
        d.sizes
    );
    assert!(
        d.sizes.get(&(640, 480)).is_some_and(|n| *n > 20),
        "{:?}",
        d.sizes
    );
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    patient.leave().await.expect("the session is still up");
}
