//! Two native peers (the media core) in a recorded consultation: the patient consents through
//! the session, both send their media to the service's recorder beside the call, and the
//! recording exports to a file ffprobe and ffmpeg accept — plain, and zero-knowledge (E2EE) with
//! the clinician's key only.

use std::io::Cursor;
use std::time::{Duration, Instant};

use consult_e2e::{media_both_ways, pump, Clinic, Seen};
use consult_e2ee::recording_key::RecordingKeyPair;
use consult_proto::api::{ConsultationMode, CreateConsultationRequest};
use consult_proto::signal::RecordingState;
use consult_signaling::recording::export::{self, ExportError};
use consult_signaling::recording::rows::{self, RecordingRow, RecordingStatus};

/// A consultation created with `request`, a native patient who consents and a native doctor, three
/// seconds of media both ways, then the end; returns the finished recording's row.
async fn recorded_call(clinic: &Clinic, request: CreateConsultationRequest) -> RecordingRow {
    recorded_call_with(clinic, request, || {}).await
}

/// A consultation being recorded: both sessions, what each has seen, the consultation.
struct Recording {
    consultation: consult_proto::api::Consultation,
    patient: consult_client::session::Session,
    doctor: consult_client::session::Session,
    p: Seen,
    d: Seen,
}

/// A consultation created with `request`, a native patient who consents and a native doctor,
/// both connected and told the recording runs, their recorder links up.
async fn recording_call(clinic: &Clinic, request: CreateConsultationRequest) -> Recording {
    let (consultation, invite) = clinic.consultation_with(request).await;
    let (mut patient, mut doctor) = clinic.patient_and_doctor(&consultation, invite).await;
    let (mut p, mut d) = (Seen::default(), Seen::default());
    pump(&mut patient, &mut p, Duration::from_millis(300)).await;
    clinic.admit_first_waiting(&consultation).await;
    patient.consent_to_recording(true).await.unwrap();
    let started = Instant::now();
    while !(p.connected && d.connected)
        || p.recording != Some(RecordingState::Recording)
        || d.recording != Some(RecordingState::Recording)
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not connected and recording: {:?} / {:?}",
            p.warnings,
            d.warnings
        );
        pump(&mut patient, &mut p, Duration::from_millis(20)).await;
        pump(&mut doctor, &mut d, Duration::from_millis(20)).await;
    }
    // The recorder's connections come up beside the call; give them a moment.
    pump(&mut patient, &mut p, Duration::from_millis(500)).await;
    pump(&mut doctor, &mut d, Duration::from_millis(500)).await;
    Recording {
        consultation,
        patient,
        doctor,
        p,
        d,
    }
}

/// [`recorded_call`], with `midway` done a second and a half into the media.
async fn recorded_call_with(
    clinic: &Clinic,
    request: CreateConsultationRequest,
    midway: impl FnOnce(),
) -> RecordingRow {
    let Recording {
        consultation,
        mut patient,
        mut doctor,
        mut p,
        mut d,
    } = recording_call(clinic, request).await;
    consult_e2e::media_both_ways_for(
        &mut patient,
        &mut doctor,
        &mut p,
        &mut d,
        Duration::from_millis(1500),
    )
    .await;
    midway();
    consult_e2e::media_both_ways_for(
        &mut patient,
        &mut doctor,
        &mut p,
        &mut d,
        Duration::from_millis(1500),
    )
    .await;
    assert!(p.video > 30 && d.video > 30, "the call itself goes on");
    clinic
        .api
        .end(&clinic.token, consultation.id)
        .await
        .expect("the consultation ends");
    let state = &clinic.server.state;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let recordings = rows::of_consultation(&state.pool, consultation.id)
            .await
            .unwrap();
        if let [row] = recordings.as_slice()
            && row.state == RecordingStatus::Complete
        {
            return row.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no complete recording: {recordings:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// ffprobe's stream codecs and duration; ffmpeg must decode every frame without a word.
pub(crate) fn probe(bytes: &[u8]) -> (Vec<String>, f64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recording.mkv");
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=codec_name"])
        .args(["-show_entries", "format=duration", "-of", "json"])
        .arg(&path)
        .output()
        .expect("ffprobe (Debian's ffmpeg package)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut codecs: Vec<String> = info["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["codec_name"].as_str().unwrap().to_owned())
        .collect();
    codecs.sort();
    let decoded = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-xerror", "-i"])
        .arg(&path)
        // Keep the input time base: the null muxer's guessed 1/fps base can merge frames
        // recorded 47 ms apart into one timestamp and complain (ffmpeg 5.1).
        .args(["-enc_time_base", "-1", "-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        decoded.status.success() && decoded.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    let duration = info["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (codecs, duration)
}

fn assert_plays(bytes: &[u8]) {
    let (codecs, duration) = probe(bytes);
    assert_eq!(
        codecs,
        ["h264", "h264", "opus", "opus"],
        "both participants' audio and video"
    );
    assert!(
        (2.0..=5.0).contains(&duration),
        "about the three seconds sent: {duration} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_peers_are_recorded_with_consent() {
    let clinic = Clinic::start().await;
    let row = recorded_call(
        &clinic,
        CreateConsultationRequest {
            mode: Some(ConsultationMode::Recorded),
            ..Default::default()
        },
    )
    .await;
    let mut out = Cursor::new(Vec::new());
    export::export(
        &clinic.server.state.recordings.vault,
        &row,
        &[],
        None,
        &mut out,
    )
    .unwrap();
    assert_plays(&out.into_inner());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_peers_make_a_zero_knowledge_recording_only_the_clinician_opens() {
    let clinic = Clinic::start().await;
    let clinician = RecordingKeyPair::generate(&mut rand::rngs::OsRng);
    clinic
        .api
        .set_recording_key(&clinic.token, &clinician.public().to_base64())
        .await
        .expect("the recording key is registered");
    let row = recorded_call(
        &clinic,
        CreateConsultationRequest {
            mode: Some(ConsultationMode::Recorded),
            e2ee: Some(true),
            ..Default::default()
        },
    )
    .await;
    assert!(row.zero_knowledge);
    let vault = &clinic.server.state.recordings.vault;
    let err = export::export(vault, &row, &[], None, Cursor::new(Vec::new())).unwrap_err();
    assert!(matches!(err, ExportError::NeedsClinicianKey(_)), "{err}");
    let mut out = Cursor::new(Vec::new());
    export::export(vault, &row, &[], Some(&clinician), &mut out).unwrap();
    assert_plays(&out.into_inner());
}

/// Recordings on object storage spread over three zones: Garage, three nodes in three zones,
/// replication factor 3. One node (not the one the service talks to) is killed in the middle of
/// a recorded call: the recording goes on — every chunk sealed, the recording complete — and the
/// export plays, from the two zones left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_on_three_zones_of_garage_outlives_one_of_them() {
    let garage = consult_e2e::garage::Garage::start(3);
    let storage = garage.service_config();
    let clinic = Clinic::start_with(|c| c.recording.object_storage = Some(storage)).await;
    let row = recorded_call_with(
        &clinic,
        CreateConsultationRequest {
            mode: Some(ConsultationMode::Recorded),
            ..Default::default()
        },
        || garage.kill(3),
    )
    .await;
    assert_eq!(row.state, RecordingStatus::Complete, "{:?}", row.note);
    let mut out = Cursor::new(Vec::new());
    export::export(
        &clinic.server.state.recordings.vault,
        &row,
        &[],
        None,
        &mut out,
    )
    .unwrap();
    let bytes = out.into_inner();
    assert_plays(&bytes);
    let (_, duration) = probe(&bytes);
    assert!(
        duration > 2.5,
        "media recorded after the zone went: {duration} s of about 3"
    );
}

/// The object store stops answering in the middle of a recorded call (its only node killed):
/// the recording fails — both sides are told, within the store's time limit — the call goes on,
/// and once the store is back, what was sealed before it went exports and plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stops_answering_fails_the_recording_not_the_call() {
    let garage = consult_e2e::garage::Garage::start(1);
    let storage = consult_signaling::config::ObjectStorageConfig {
        timeout: Duration::from_secs(2),
        ..garage.service_config()
    };
    let clinic = Clinic::start_with(|c| c.recording.object_storage = Some(storage)).await;
    let Recording {
        consultation,
        mut patient,
        mut doctor,
        mut p,
        mut d,
    } = recording_call(
        &clinic,
        CreateConsultationRequest {
            mode: Some(ConsultationMode::Recorded),
            ..Default::default()
        },
    )
    .await;
    media_both_ways(&mut patient, &mut doctor, &mut p, &mut d, 2).await;
    garage.kill(1);
    let killed = Instant::now();
    while p.recording != Some(RecordingState::Failed) || d.recording != Some(RecordingState::Failed)
    {
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "not told: {:?} / {:?}",
            p.recording,
            d.recording
        );
        consult_e2e::media_both_ways_for(
            &mut patient,
            &mut doctor,
            &mut p,
            &mut d,
            Duration::from_millis(100),
        )
        .await;
    }
    println!(
        "both told the recording failed {:?} after the store went",
        killed.elapsed()
    );
    let (video_p, video_d) = (p.video, d.video);
    media_both_ways(&mut patient, &mut doctor, &mut p, &mut d, 2).await;
    assert!(
        p.video > video_p + 20 && d.video > video_d + 20,
        "the call goes on: {} / {} more frames",
        p.video - video_p,
        d.video - video_d
    );
    clinic
        .api
        .end(&clinic.token, consultation.id)
        .await
        .unwrap();

    garage.restart(1);
    let state = &clinic.server.state;
    let rows = rows::of_consultation(&state.pool, consultation.id)
        .await
        .unwrap();
    let [row] = rows.as_slice() else {
        panic!("{rows:?}")
    };
    assert_eq!(row.state, RecordingStatus::Failed, "{:?}", row.note);
    let deadline = Instant::now() + Duration::from_secs(20);
    let bytes = loop {
        let mut out = Cursor::new(Vec::new());
        match export::export(&state.recordings.vault, row, &[], None, &mut out) {
            Ok(_) => break out.into_inner(),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no export once the store is back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let (codecs, duration) = probe(&bytes);
    assert_eq!(codecs, ["h264", "h264", "opus", "opus"]);
    assert!(
        (1.0..=4.5).contains(&duration),
        "what was sealed before the store went: {duration} s"
    );
}

/// The restore drill on a clinic with a plain, a zero-knowledge and a shredded recording, all
/// made by native peers: `consult backup drill`'s work restores the backup into a scratch
/// directory, starts a service on it, signs the clinician in, verifies the audit chain, exports
/// both recordings (the zero-knowledge one with the clinician's key) into files ffprobe accepts,
/// and finds the shredded one shredded; nothing was made since the backup. Then the real thing:
/// the clinic's data directory destroyed, the backup restored into its place, the service
/// started on it, and the recordings export and play.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restore_drill_proves_a_backup_of_a_recorded_clinic() {
    use consult_signaling::backup::{Backups, DrillOptions, SignIn};
    let site = tempfile::tempdir().unwrap();
    let key_file = site.path().join("backup.key");
    std::fs::write(
        &key_file,
        consult_signaling::secrets::Token::generate().expose(),
    )
    .unwrap();
    let backup = consult_signaling::config::BackupConfig {
        repository: Some(
            site.path()
                .join("repository")
                .to_string_lossy()
                .into_owned(),
        ),
        key_file: Some(key_file),
        ..Default::default()
    };
    let clinic = Clinic::start_with(|c| c.backup = backup).await;
    let clinician = RecordingKeyPair::generate(&mut rand::rngs::OsRng);
    clinic
        .api
        .set_recording_key(&clinic.token, &clinician.public().to_base64())
        .await
        .expect("the recording key is registered");
    let recorded = |e2ee| CreateConsultationRequest {
        mode: Some(ConsultationMode::Recorded),
        e2ee: Some(e2ee),
        ..Default::default()
    };
    let plain = recorded_call(&clinic, recorded(false)).await;
    let zero_knowledge = recorded_call(&clinic, recorded(true)).await;
    let shredded = recorded_call(&clinic, recorded(false)).await;
    let r = reqwest::Client::new()
        .delete(format!("{}/api/v1/recordings/{}", clinic.base, shredded.id))
        .bearer_auth(&clinic.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NO_CONTENT);

    let state = &clinic.server.state;
    let backups = Backups::new(&state.config).unwrap();
    backups.init().await.unwrap();
    let created = backups.create(&state.pool).await.unwrap();
    let clinician = std::sync::Arc::new(clinician);
    let report = backups
        .drill(
            &state.pool,
            DrillOptions {
                snapshot: None,
                sign_in: Some(SignIn {
                    email: clinic.login.email.clone(),
                    password: clinic.login.password.clone(),
                    totp_secret: clinic.login.totp_secret.clone(),
                }),
                clinician_key: Some(clinician.clone()),
                scratch_database_url: None,
                ffprobe: "ffprobe".into(),
            },
        )
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.snapshot.starts_with(&created.data_snapshot));
    assert_eq!(report.signed_in, Some(true));
    assert!(report.audit_entries > 10, "{}", report.audit_entries);
    let outcome = |id| {
        report
            .recordings
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.outcome.as_str())
    };
    assert_eq!(outcome(plain.id), Some("exported"));
    assert_eq!(outcome(zero_knowledge.id), Some("exported"));
    assert_eq!(outcome(shredded.id), Some("shredded"));
    assert_eq!(
        (report.audit_entries_since, report.recordings_since),
        (0, 0)
    );
    assert!(report.recovery_point_seconds < 120.0);

    // The site lost: the data directory destroyed, the backup restored into its place.
    let config = state.config.clone();
    let _kept = clinic.stop_keeping_data().await;
    std::fs::remove_dir_all(&config.data_dir).unwrap();
    let restored = Backups::new(&config)
        .unwrap()
        .restore(None, false)
        .await
        .unwrap();
    assert_eq!((restored.recordings, restored.shredded_since), (2, 0));
    let server = consult_signaling::server::start(
        config,
        std::sync::Arc::new(consult_signaling::clock::SystemClock),
    )
    .await
    .unwrap();
    let vault = &server.state.recordings.vault;
    let pool = &server.state.pool;
    let plain = rows::find(pool, plain.id).await.unwrap().unwrap();
    let mut out = Cursor::new(Vec::new());
    export::export(vault, &plain, &[], None, &mut out).unwrap();
    assert_plays(&out.into_inner());
    let zero_knowledge = rows::find(pool, zero_knowledge.id).await.unwrap().unwrap();
    let mut out = Cursor::new(Vec::new());
    export::export(vault, &zero_knowledge, &[], Some(&clinician), &mut out).unwrap();
    assert_plays(&out.into_inner());
    let gone = rows::find(pool, shredded.id).await.unwrap().unwrap();
    assert_eq!(gone.state, RecordingStatus::Shredded);
    assert!(vault.open_recording(shredded.id).is_err());
}
