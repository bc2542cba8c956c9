//! Two native peers (the media core) hold a consultation through a running signaling service:
//! video and audio decoded both ways, chat, and a 20 MB file with an equal SHA-256.

use std::time::{Duration, Instant};

use consult_e2e::{media_both_ways, pump, Clinic, Seen};
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
    let id = patient
        .offer_file("knee-scan.bin", "application/octet-stream", file.clone())
        .await
        .unwrap();
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
