//! Backup figures of a recorded clinic, in one run:
//!
//! ```text
//! backup_figures [--seconds 60]
//! ```
//!
//! A service on loopback (SQLite, local vault) and its backup repository in a directory; a
//! recorded consultation between two native peers (320x240 video at 300 kbit/s and Opus audio
//! both ways) for `--seconds`, then a full backup; one more such call, then an incremental
//! backup; then the second backup restored into a fresh data directory, and the restore drill.
//! Prints the size and time of each step.

use std::time::{Duration, Instant};

use consult_e2e::{media_both_ways_for, pump, Clinic, Seen};
use consult_proto::api::{ConsultationMode, CreateConsultationRequest};
use consult_proto::signal::RecordingState;
use consult_signaling::backup::{Backups, DrillOptions, SignIn};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One recorded consultation of `length`, ended.
async fn recorded_call(clinic: &Clinic, length: Duration) {
    let (consultation, invite) = clinic
        .consultation_with(CreateConsultationRequest {
            mode: Some(ConsultationMode::Recorded),
            ..Default::default()
        })
        .await;
    let (mut patient, mut doctor) = clinic.patient_and_doctor(&consultation, invite).await;
    let (mut p, mut d) = (Seen::default(), Seen::default());
    pump(&mut patient, &mut p, Duration::from_millis(300)).await;
    clinic.admit_first_waiting(&consultation).await;
    patient.consent_to_recording(true).await.expect("consent");
    let started = Instant::now();
    while !(p.connected && d.connected) || d.recording != Some(RecordingState::Recording) {
        assert!(started.elapsed() < Duration::from_secs(20), "no recording");
        pump(&mut patient, &mut p, Duration::from_millis(20)).await;
        pump(&mut doctor, &mut d, Duration::from_millis(20)).await;
    }
    media_both_ways_for(&mut patient, &mut doctor, &mut p, &mut d, length).await;
    clinic
        .api
        .end(&clinic.token, consultation.id)
        .await
        .expect("the consultation ends");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn dir_size(path: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let meta = entry.metadata().expect("metadata");
            total += if meta.is_dir() {
                dir_size(&entry.path())
            } else {
                meta.len()
            };
        }
    }
    total
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds = arg("--seconds", 60);
    let site = tempfile::tempdir().expect("temp dir");
    let repository = site.path().join("repository");
    let key_file = site.path().join("backup.key");
    std::fs::write(
        &key_file,
        consult_signaling::secrets::Token::generate().expose(),
    )
    .expect("key");
    let backup = consult_signaling::config::BackupConfig {
        repository: Some(repository.to_string_lossy().into_owned()),
        key_file: Some(key_file),
        ..Default::default()
    };
    let clinic = Clinic::start_with(|c| c.backup = backup).await;
    let state = &clinic.server.state;
    let backups = Backups::new(&state.config).expect("backups");
    backups.init().await.expect("init");

    println!("| step | time | read | uploaded | repository after |");
    println!("|---|---|---|---|---|");
    recorded_call(&clinic, Duration::from_secs(seconds)).await;
    let full = backups.create(&state.pool).await.expect("full backup");
    println!(
        "| full backup (one {seconds} s recorded call) | {:.2} s | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        full.duration.as_secs_f64(),
        mib(full.bytes_processed),
        mib(full.bytes_added),
        mib(dir_size(&repository))
    );
    recorded_call(&clinic, Duration::from_secs(seconds)).await;
    let incremental = backups
        .create(&state.pool)
        .await
        .expect("incremental backup");
    println!(
        "| incremental (one more {seconds} s recorded call) | {:.2} s | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        incremental.duration.as_secs_f64(),
        mib(incremental.bytes_processed),
        mib(incremental.bytes_added),
        mib(dir_size(&repository))
    );
    let unchanged = backups.create(&state.pool).await.expect("backup");
    println!(
        "| nothing changed | {:.2} s | {:.1} MiB | {:.3} MiB | {:.1} MiB |",
        unchanged.duration.as_secs_f64(),
        mib(unchanged.bytes_processed),
        mib(unchanged.bytes_added),
        mib(dir_size(&repository))
    );

    let target = tempfile::tempdir().expect("temp dir");
    let mut restore = state.config.clone();
    restore.data_dir = target.path().join("data");
    let restored = Backups::new(&restore)
        .expect("backups")
        .restore(None, false)
        .await
        .expect("restore");
    println!(
        "| restore (latest, {} recordings) | {:.2} s | | | {:.1} MiB restored |",
        restored.recordings,
        restored.duration.as_secs_f64(),
        mib(dir_size(&restore.data_dir))
    );
    let report = backups
        .drill(
            &state.pool,
            DrillOptions {
                sign_in: Some(SignIn {
                    email: clinic.login.email.clone(),
                    password: clinic.login.password.clone(),
                    totp_secret: clinic.login.totp_secret.clone(),
                }),
                ffprobe: "ffprobe".into(),
                ..DrillOptions::default()
            },
        )
        .await
        .expect("drill");
    println!(
        "| drill (restore, start, sign in, verify, export {} recordings) | {:.2} s restore + {:.2} s start | | | {} |",
        report.recordings.len(),
        report.restore_seconds,
        report.start_seconds,
        if report.failures.is_empty() {
            "passed".to_owned()
        } else {
            format!("FAILED: {:?}", report.failures)
        }
    );
}
