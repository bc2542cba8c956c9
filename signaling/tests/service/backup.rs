//! Backups (`consult backup`, `[backup]`) with the real restic, into a repository directory:
//! what a restore brings back, that a shredded recording never comes back, the schedule and its
//! metrics, and every refusal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{self, fresh_postgres_database, synthetic_recording, TestService};
use consult_proto::api::Consultation;
use consult_signaling::backup::{BackupError, Backups};
use consult_signaling::config::{BackupConfig, Config};
use reqwest::{Method, StatusCode};

/// A repository and a backup key in a directory of their own (apart from any data directory).
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = consult_signaling::secrets::Token::generate();
        std::fs::write(dir.path().join("backup.key"), key.expose()).unwrap();
        Self { dir }
    }

    fn repository(&self) -> PathBuf {
        self.dir.path().join("repository")
    }

    fn config(&self) -> BackupConfig {
        BackupConfig {
            repository: Some(self.repository().to_string_lossy().into_owned()),
            key_file: Some(self.dir.path().join("backup.key")),
            timeout: Duration::from_secs(120),
            ..BackupConfig::default()
        }
    }
}

/// A service backing up into a site of its own, a doctor, and a consultation of theirs.
async fn clinic_with_backups() -> (Site, TestService, common::Doctor, Consultation) {
    let site = Site::new();
    let svc = TestService::start_with(|c| c.backup = site.config()).await;
    let doctor = svc.doctor("owner@clinic.test").await;
    let (consultation, _) = doctor.create_consultation().await;
    (site, svc, doctor, consultation)
}

/// The configuration of a restore: `config`'s, into `data_dir` and (on PostgreSQL) a new,
/// empty database.
async fn restore_config(config: &Config, data_dir: &Path) -> Config {
    let mut config = config.clone();
    config.data_dir = data_dir.to_path_buf();
    config.database_url = fresh_postgres_database().await;
    config
}

/// A storage that returns damaged objects: one byte in every 4 KiB of every pack file flipped
/// (every blob touched, so whichever blobs a restore reads, it meets damage).
fn damage_every_pack(repository: &Path) {
    for shard in std::fs::read_dir(repository.join("data")).unwrap() {
        for pack in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let path = pack.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            for i in (0..bytes.len()).step_by(4096) {
                bytes[i] ^= 0x55;
            }
            let mut permissions = std::fs::metadata(&path).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            permissions.set_readonly(false);
            std::fs::set_permissions(&path, permissions).unwrap();
            std::fs::write(&path, bytes).unwrap();
        }
    }
}

/// The whole path: two recordings backed up, one shredded, backed up again (only what changed
/// is uploaded, and the first backup's keys leave the repository), the data directory
/// destroyed, then the *first* backup restored: the accounts sign in, the audit chain verifies,
/// the kept recording exports byte for byte, and the shredded one stays shredded.
#[tokio::test]
async fn a_restore_brings_everything_back_but_what_was_shredded_since() {
    let (site, svc, doctor, consultation) = clinic_with_backups().await;
    let (kept, _) = synthetic_recording(&svc, consultation.id).await;
    let (shredded, _) = synthetic_recording(&svc, consultation.id).await;
    let media_of = |id: uuid::Uuid| {
        svc.state()
            .recordings
            .vault
            .media_size(id)
            .unwrap()
            .unwrap()
    };
    let media = media_of(kept) + media_of(shredded);
    let exported_before = doctor
        .bearer(Method::GET, &format!("/api/v1/recordings/{kept}/export"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let config = svc.state().config.clone();
    let backups = Backups::new(&config).unwrap();
    let pool = svc.state().pool.clone();
    backups.init().await.unwrap();

    let first = backups.create(&pool).await.unwrap();
    assert!(
        first.bytes_added >= media,
        "the first backup uploads the media: {} < {media}",
        first.bytes_added
    );
    assert_eq!(first.manifest.recordings.len(), 2);

    let r = doctor
        .bearer(Method::DELETE, &format!("/api/v1/recordings/{shredded}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // A recording made after the first backup.
    let (later, _) = synthetic_recording(&svc, consultation.id).await;
    let second = backups.create(&pool).await.unwrap();
    assert_eq!(
        second.keys_forgotten, 1,
        "the first backup's keys are forgotten"
    );
    let added = media_of(later);
    assert!(
        second.bytes_added < added + media / 20,
        "incremental: {} bytes uploaded the second time, for {added} bytes of new media ({media} before)",
        second.bytes_added
    );
    let (data, keys) = backups.list().await.unwrap();
    assert_eq!(data.len(), 2);
    assert!(keys.unwrap().id.starts_with(&second.keys_snapshot));
    // The first key snapshot, and the blobs only it used, are gone from the repository.
    let nowhere = tempfile::tempdir().unwrap();
    assert!(backups
        .restic()
        .restore(&first.keys_snapshot, nowhere.path())
        .await
        .is_err());
    let verified = backups.verify(true).await.unwrap();
    assert_eq!(verified.recordings_opened, 2, "kept and later");
    assert!(verified.audit_entries.is_none_or(|n| n > 5));

    // The site burns down.
    let data_dir = svc.data_dir().to_path_buf();
    svc.kill().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    assert!(!data_dir.exists());

    let target = tempfile::tempdir().unwrap();
    let restored_dir = target.path().join("data");
    let restore = restore_config(&config, &restored_dir).await;
    let restored = Backups::new(&restore)
        .unwrap()
        .restore(Some(&first.data_snapshot), false)
        .await
        .unwrap();
    assert_eq!((restored.recordings, restored.shredded_since), (1, 1));
    assert!(
        !restored_dir
            .join("vault/media")
            .join(shredded.to_string())
            .exists(),
        "the shredded recording's media is deleted at restore"
    );

    let url = restore.database_url.clone();
    let backup = site.config();
    let again = TestService::start_with(move |c| {
        c.data_dir = restored_dir;
        c.database_url = url;
        c.backup = backup;
    })
    .await;
    // Sign in with the password and a fresh second-factor code.
    again.next_totp_step();
    let code =
        consult_signaling::auth::totp::code_at(&doctor.totp_secret, again.now_unix()).unwrap();
    let r = again
        .login(&doctor.email, &doctor.password, Some(&code))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.json::<serde_json::Value>().await.unwrap();
    let token = body["session"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();
    let download = |id: uuid::Uuid| {
        reqwest::Client::new()
            .get(again.url(&format!("/api/v1/recordings/{id}/export")))
            .bearer_auth(&token)
            .send()
    };
    let r = download(kept).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.bytes().await.unwrap() == exported_before,
        "the export is the same bytes"
    );
    let (status, code) = common::error_code(download(shredded).await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "access_denied")
    );
    let row = consult_signaling::recording::rows::find(&again.state().pool, shredded)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.state,
        consult_signaling::recording::rows::RecordingStatus::Shredded
    );
    assert!(again.state().recordings.vault.is_shredded(shredded));
    assert_eq!(
        consult_signaling::audit::verify(&again.state().pool)
            .await
            .unwrap()
            .map(|n| n > 5),
        Ok(true)
    );
    let shred = again.audited("recording_shredded", Some("operator")).await;
    assert_eq!(shred.detail["detail"]["reason"], "restore");
    assert_eq!(shred.detail["recording_id"], shredded.to_string());
    again.audited("backup_restored", Some("operator")).await;

    // Restored to the first backup, the installation backs up again: the later recording, which
    // its database does not know, keeps its key (carried forward), so the second backup still
    // restores whole.
    let backups_again = Backups::new(&again.state().config).unwrap();
    let third = backups_again.create(&again.state().pool).await.unwrap();
    assert_eq!(third.keys_forgotten, 1);
    let elsewhere = tempfile::tempdir().unwrap();
    let restore = restore_config(&config, &elsewhere.path().join("data")).await;
    let restored = Backups::new(&restore)
        .unwrap()
        .restore(Some(&second.data_snapshot), false)
        .await
        .unwrap();
    assert_eq!((restored.recordings, restored.shredded_since), (2, 0));
    let vault = consult_vault::Vault::open(&restore.data_dir.join("vault")).unwrap();
    let mut reader = vault.open_recording(later).unwrap();
    while reader.next_chunk().unwrap().is_some() {}
    assert!(vault.open_recording(shredded).is_err());
}

/// Every refusal names what is wrong and changes nothing: no repository, a wrong key, a missing
/// engine, another installation's repository, a non-empty target, a running service, and a
/// repository returning damaged objects (found by verify; a restore stops and leaves no half
/// directory).
#[tokio::test]
async fn backups_refuse_what_they_must_and_say_why() {
    let (site, svc, _doctor, consultation) = clinic_with_backups().await;
    synthetic_recording(&svc, consultation.id).await;
    let config = svc.state().config.clone();
    let backups = Backups::new(&config).unwrap();
    assert!(matches!(
        backups.list().await,
        Err(BackupError::NoRepository { .. })
    ));
    // A backup never makes a repository: one that cannot be found is not replaced elsewhere.
    assert!(matches!(
        backups.create(&svc.state().pool).await,
        Err(BackupError::NoRepository { .. })
    ));
    assert!(!site.repository().exists());
    backups.init().await.unwrap();
    backups.create(&svc.state().pool).await.unwrap();

    let mut wrong_key = config.clone();
    let other_key = site.dir.path().join("other.key");
    std::fs::write(&other_key, "not the key").unwrap();
    wrong_key.backup.key_file = Some(other_key);
    assert!(matches!(
        Backups::new(&wrong_key).unwrap().list().await,
        Err(BackupError::WrongKey)
    ));

    let mut no_engine = config.clone();
    no_engine.backup.restic = "/nonexistent/restic".into();
    let e = Backups::new(&no_engine).unwrap().list().await.unwrap_err();
    assert!(matches!(e, BackupError::EngineMissing { .. }), "{e}");
    assert!(e.to_string().contains("apt-get install restic"), "{e}");

    // Another installation pointed at this repository (same key) is refused.
    let other = TestService::start_with(|c| c.backup = site.config()).await;
    let e = Backups::new(&other.state().config)
        .unwrap()
        .create(&other.state().pool)
        .await
        .unwrap_err();
    assert!(matches!(e, BackupError::OtherInstallation { .. }), "{e}");

    // A backup named by a prefix too short to be one, or by one that names none.
    for wanted in ["", "abc", "ffffffff"] {
        let e = backups.restore(Some(wanted), false).await.unwrap_err();
        assert!(matches!(e, BackupError::NoSuchBackup(_)), "{wanted:?}: {e}");
    }

    // Restoring onto the running service's directory: refused, forced or not.
    assert!(matches!(
        backups.restore(None, false).await,
        Err(BackupError::NotEmpty(_))
    ));
    if config.database_url.is_none() {
        assert!(matches!(
            backups.restore(None, true).await,
            Err(BackupError::InUse(_))
        ));
        // Onto another installation's (stopped) directory, even forced.
        // (A copy of its database: in this process the stopped service's vault stays open.)
        let kept = other.stop().await;
        let other_dir = tempfile::tempdir().unwrap().keep();
        for file in ["consult.db", "consult.db-wal", "consult.db-shm"] {
            if kept.path().join(file).exists() {
                std::fs::copy(kept.path().join(file), other_dir.join(file)).unwrap();
            }
        }
        let mut onto_other = config.clone();
        onto_other.data_dir = other_dir.clone();
        let e = Backups::new(&onto_other)
            .unwrap()
            .restore(None, true)
            .await
            .unwrap_err();
        assert!(matches!(e, BackupError::OtherInstallation { .. }), "{e}");
        assert!(other_dir.join("consult.db").exists(), "left as it was");
    } else {
        // A PostgreSQL database holding another installation, even forced.
        let mut onto_other = config.clone();
        onto_other.data_dir = tempfile::tempdir().unwrap().keep();
        onto_other.database_url = other.state().config.database_url.clone();
        let e = Backups::new(&onto_other)
            .unwrap()
            .restore(None, true)
            .await
            .unwrap_err();
        assert!(matches!(e, BackupError::OtherInstallation { .. }), "{e}");
    }

    // Damaged objects in the repository: verify finds them; a restore refuses and leaves
    // nothing behind.
    damage_every_pack(&site.repository());
    let e = backups.verify(true).await.unwrap_err();
    assert!(matches!(e, BackupError::Corrupt { .. }), "{e}");
    let target = tempfile::tempdir().unwrap();
    let restore = restore_config(&config, &target.path().join("data")).await;
    let e = Backups::new(&restore)
        .unwrap()
        .restore(None, false)
        .await
        .unwrap_err();
    assert!(matches!(e, BackupError::Corrupt { .. }), "{e}");
    assert!(!target.path().join("data").exists());
    assert!(!target.path().join("data.restoring").exists());
}

/// `[backup] interval`: a backup at start-up, the metrics set, and another at once after a
/// shred, which takes the shredded recording's key out of the repository.
#[tokio::test]
async fn the_schedule_backs_up_at_start_and_after_a_shred() {
    let site = Site::new();
    let mut config = Config {
        backup: site.config(),
        ..Config::default()
    };
    config.data_dir = site.dir.path().join("unused");
    Backups::new(&config).unwrap().init().await.unwrap();
    let svc = TestService::start_with(|c| {
        c.backup = BackupConfig {
            interval: Some(Duration::from_secs(3600)),
            ..site.config()
        }
    })
    .await;
    let gauge = |metrics: &str, name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let first = svc.audited("backup_created", Some("system")).await;
    let metrics = svc.metrics().await;
    assert!(gauge(&metrics, "consult_backup_last_success_timestamp_seconds") > 1.0e9);
    assert_eq!(gauge(&metrics, "consult_backup_interval_seconds"), 3600.0);
    assert!(gauge(&metrics, "consult_backup_last_processed_bytes") > 0.0);

    let doctor = svc.doctor("owner@clinic.test").await;
    let (consultation, _) = doctor.create_consultation().await;
    let (id, _) = synthetic_recording(&svc, consultation.id).await;
    let r = doctor
        .bearer(Method::DELETE, &format!("/api/v1/recordings/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while svc.audited_count("backup_created").await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no backup after the shred"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (data, keys) = Backups::new(&svc.state().config)
        .unwrap()
        .list()
        .await
        .unwrap();
    assert_eq!(data.len(), 2);
    let first_keys = first.detail["keys_snapshot"].as_str().unwrap();
    assert!(!keys.unwrap().id.starts_with(first_keys));
}
