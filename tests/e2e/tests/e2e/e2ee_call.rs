//! End-to-end encryption through the real service: two native peers in a consultation the
//! organisation's policy makes end-to-end encrypted agree keys over their data channel, show the
//! same SAS and decode each other's media; a peer that will not agree keys gets no media.

use std::time::{Duration, Instant};

use consult_client::session::Session;
use consult_client::Credentials;
use consult_e2e::{config, media_both_ways, pump, Clinic, Seen};

async fn start(clinic: &Clinic, keyless_patient: bool) -> (Session, Session, Seen, Seen) {
    let (consultation, invite) = clinic.consultation().await;
    assert!(
        consultation.e2ee,
        "the policy makes every consultation end-to-end encrypted"
    );
    let mut patient_config = config(Credentials::Patient {
        invite_url: invite,
        name: "Kiosk 7".into(),
    });
    if keyless_patient {
        patient_config.e2ee = Some(false);
    }
    let mut patient = Session::start(patient_config).await.unwrap();
    let doctor = Session::start(config(Credentials::Clinician {
        base_url: clinic.base.clone(),
        token: clinic.token.clone(),
        consultation_id: consultation.id,
    }))
    .await
    .unwrap();
    let mut p = Seen::default();
    pump(&mut patient, &mut p, Duration::from_millis(300)).await;
    clinic.admit_first_waiting(&consultation).await;
    (patient, doctor, p, Seen::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_peers_agree_keys_show_the_same_sas_and_decode_protected_media() {
    let clinic = Clinic::start_with(|c| c.policy.e2ee_required = true).await;
    let (mut patient, mut doctor, mut p, mut d) = start(&clinic, false).await;
    let started = Instant::now();
    while !(p.sas.is_some() && d.sas.is_some()) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no key agreement: {:?} / {:?}",
            p.warnings,
            d.warnings
        );
        pump(&mut patient, &mut p, Duration::from_millis(20)).await;
        pump(&mut doctor, &mut d, Duration::from_millis(20)).await;
    }
    assert_eq!(p.sas, d.sas, "both people see the same string");
    media_both_ways(&mut patient, &mut doctor, &mut p, &mut d, 3).await;
    patient.send_chat("Is this private?").await.unwrap();
    pump(&mut patient, &mut p, Duration::from_millis(1200)).await;
    pump(&mut doctor, &mut d, Duration::from_millis(1200)).await;
    println!(
        "e2ee: sas {:?}; patient decoded {} video / {} audio, doctor {} / {}",
        p.sas, p.video, p.audio, d.video, d.audio
    );
    assert!(p.video > 30 && d.video > 30, "video decoded both ways");
    assert!(p.audio > 50 && d.audio > 50, "audio decoded both ways");
    assert_eq!(d.chats, ["Is this private?"]);
    let e2ee = d.stats.clone().and_then(|s| s.e2ee).expect("e2ee counters");
    assert!(e2ee.protected > 50 && e2ee.opened > 50, "{e2ee:?}");
    assert!(e2ee.rejected.is_empty(), "{e2ee:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_will_not_agree_keys_gets_no_media_and_the_other_side_is_told() {
    let clinic = Clinic::start_with(|c| c.policy.e2ee_required = true).await;
    let (mut patient, mut doctor, mut p, mut d) = start(&clinic, true).await;
    let started = Instant::now();
    while !(p.connected && d.connected) {
        assert!(started.elapsed() < Duration::from_secs(20), "no connection");
        pump(&mut patient, &mut p, Duration::from_millis(20)).await;
        pump(&mut doctor, &mut d, Duration::from_millis(20)).await;
    }
    // Twelve seconds: past the ten the doctor's side waits before saying why nothing flows.
    media_both_ways(&mut patient, &mut doctor, &mut p, &mut d, 12).await;
    pump(&mut doctor, &mut d, Duration::from_millis(1200)).await;
    assert_eq!(p.video, 0, "the keyless peer decoded a frame");
    assert_eq!(p.audio, 0, "the keyless peer decoded audio");
    assert!(d.sas.is_none());
    assert!(
        d.warnings
            .iter()
            .any(|w| w.contains("end-to-end encryption")),
        "{:?}",
        d.warnings
    );
    let e2ee = d.stats.clone().and_then(|s| s.e2ee).expect("e2ee counters");
    assert_eq!(e2ee.protected, 0);
    assert!(e2ee.dropped_without_key > 100, "{e2ee:?}");
    // What the keyless side sent in the clear was refused, never decoded.
    assert_eq!((d.video, d.audio, e2ee.opened), (0, 0, 0));
    assert!(e2ee.rejected.values().sum::<u64>() > 100, "{e2ee:?}");
}
