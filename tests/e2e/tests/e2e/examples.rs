//! The media core's examples as an integrator runs them: `kiosk` and `send-file` join through an
//! invite link and a native doctor sees the test pattern and receives the file.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use consult_client::peer::file_transfer::FileEvent;
use consult_client::session::{Session, SessionConfig, SessionEvent};
use consult_client::Credentials;
use consult_e2e::Clinic;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};

/// `target/<profile>/examples/<name>`, built by `cargo build --all-targets` (or `--examples`).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile.join("examples").join(name);
    assert!(
        path.exists(),
        "{} missing: run `cargo build -p consult-client --examples`",
        path.display()
    );
    path
}

async fn doctor(clinic: &Clinic, consultation: uuid::Uuid) -> Session {
    let mut config = SessionConfig::new(Credentials::Clinician {
        base_url: clinic.base.clone(),
        token: clinic.token.clone(),
        consultation_id: consultation,
    });
    config.bind_ips = vec!["127.0.0.1".parse().expect("ip")];
    Session::start(config).await.expect("doctor joins")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kiosk_example_sends_a_moving_pattern_and_a_tone_to_a_native_doctor() {
    let clinic = Clinic::start().await;
    let (consultation, invite) = clinic.consultation().await;
    let mut kiosk = tokio::process::Command::new(example("kiosk"))
        .args([
            "--invite",
            &invite,
            "--name",
            "Kiosk 7",
            "--width",
            "320",
            "--height",
            "240",
            "--seconds",
            "15",
            "--json",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kiosk starts");
    let mut lines = BufReader::new(kiosk.stdout.take().expect("stdout")).lines();
    let mut doctor = doctor(&clinic, consultation.id).await;
    clinic.admit_first_waiting(&consultation).await;
    let (mut frames, mut audio, mut previous): (u32, u32, Option<Vec<u8>>) = (0, 0, None);
    let mut moving = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while frames < 30 || audio < 50 {
        let event = tokio::time::timeout_at(deadline, doctor.next_event())
            .await
            .expect("media from the kiosk in time");
        match event.expect("session open") {
            SessionEvent::Video { frame, .. } => {
                assert_eq!((frame.width, frame.height), (320, 240));
                moving |= previous.as_ref().is_some_and(|p| *p != frame.data);
                previous = Some(frame.data);
                frames += 1;
            }
            SessionEvent::Audio { .. } => audio += 1,
            _ => {}
        }
    }
    assert!(moving, "the pattern moves");
    // The kiosk reports, as JSON lines, what it received (nothing: the doctor sends no media here)
    // and that it connected.
    let mut connected = false;
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(2), lines.next_line()).await
    {
        let value: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
        connected |= value["event"] == "connected";
        if connected {
            break;
        }
    }
    assert!(connected, "the kiosk reported its connection");
    doctor.leave().await.expect("leave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_file_example_delivers_a_file_with_its_hash() {
    let clinic = Clinic::start().await;
    let (consultation, invite) = clinic.consultation().await;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("report.pdf");
    let content: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &content).expect("write");
    let sender = tokio::process::Command::new(example("send-file"))
        .args(["--invite", &invite, "--name", "Patient", "--json"])
        .arg(&path)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("send-file starts");
    let mut doctor = doctor(&clinic, consultation.id).await;
    clinic.admit_first_waiting(&consultation).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let received = loop {
        let event = tokio::time::timeout_at(deadline, doctor.next_event())
            .await
            .expect("file in time");
        match event.expect("session open") {
            SessionEvent::File {
                event: FileEvent::Offered { offer },
                ..
            } => {
                assert_eq!(
                    (offer.name.as_str(), offer.mime.as_str(), offer.size),
                    ("report.pdf", "application/pdf", 700_000)
                );
                doctor.accept_file(offer.id).await.expect("accept");
            }
            SessionEvent::File {
                event: FileEvent::Received { data, .. },
                ..
            } => break data,
            _ => {}
        }
    };
    assert_eq!(Sha256::digest(&received), Sha256::digest(&content));
    let output = tokio::time::timeout(Duration::from_secs(15), sender.wait_with_output())
        .await
        .expect("send-file exits")
        .expect("output");
    assert!(
        output.status.success(),
        "send-file failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let expected = format!("{:x}", Sha256::digest(&content));
    assert!(
        stdout.contains(&expected),
        "send-file printed the hash: {stdout}"
    );
    doctor.leave().await.expect("leave");
}
