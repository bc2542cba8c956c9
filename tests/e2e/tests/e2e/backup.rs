//! Backups into an S3 bucket at another site — Garage on loopback — and that site's faults: down,
//! frozen in the middle of a backup, full. Each fails the backup with its name, and the backups
//! made before stay whole: they verify, and they restore.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use consult_e2e::garage::Garage;
use consult_signaling::backup::{BackupError, Backups};
use consult_signaling::config::{BackupConfig, Config};
use rand::RngCore;

/// An installation (SQLite, local media) backing up into `garage`'s bucket.
struct Installation {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    config: Config,
    pool: consult_signaling::db::Db,
}

impl Installation {
    async fn new(garage: &Garage, timeout: Duration) -> Self {
        let data = tempfile::tempdir().unwrap();
        let apart = tempfile::tempdir().unwrap();
        let key_file = apart.path().join("backup.key");
        std::fs::write(
            &key_file,
            consult_signaling::secrets::Token::generate().expose(),
        )
        .unwrap();
        let s3 = garage.config();
        let config = Config {
            data_dir: data.path().to_path_buf(),
            backup: BackupConfig {
                repository: Some(format!(
                    "s3:{}/{}/backups-{}",
                    s3.endpoint.unwrap(),
                    s3.bucket,
                    uuid::Uuid::new_v4()
                )),
                key_file: Some(key_file),
                s3_region: Some(s3.region),
                s3_access_key_id: Some(s3.access_key_id),
                s3_secret_access_key: Some(s3.secret_access_key),
                timeout,
                ..BackupConfig::default()
            },
            ..Config::default()
        };
        let pool = consult_signaling::db::open(data.path(), None)
            .await
            .unwrap();
        Self {
            _dirs: (data, apart),
            config,
            pool,
        }
    }

    /// A new media file of `mib` MiB of random bytes (what a recording's sealed chunks look like
    /// to a backup); its path.
    fn add_media(&self, mib: usize) -> PathBuf {
        let dir = self.config.data_dir.join("vault/media");
        std::fs::create_dir_all(&dir).unwrap();
        let mut bytes = vec![0u8; mib << 20];
        rand::thread_rng().fill_bytes(&mut bytes);
        let path = dir.join(uuid::Uuid::new_v4().to_string());
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn backups(&self) -> Backups {
        Backups::new(&self.config).unwrap()
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[tokio::test]
async fn a_bucket_at_another_site_keeps_whole_backups_through_its_faults() {
    let garage = Garage::start(1);
    let site = Installation::new(&garage, Duration::from_secs(10)).await;
    site.backups().init().await.unwrap();
    let first_media = site.add_media(4);
    let first = site.backups().create(&site.pool).await.unwrap();
    assert!(first.bytes_added >= 4 << 20, "{} bytes", first.bytes_added);

    // The site is down.
    garage.stop(1);
    site.add_media(2);
    let e = site.backups().create(&site.pool).await.unwrap_err();
    assert!(
        matches!(
            e,
            BackupError::Unreachable { .. } | BackupError::TimedOut { .. }
        ),
        "{e}"
    );
    garage.restart(1);

    // The site freezes in the middle of a backup (it takes connections and answers nothing):
    // stopped at the time limit.
    site.add_media(24);
    let backups = site.backups();
    let pool = site.pool.clone();
    let running = tokio::spawn(async move { backups.create(&pool).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    garage.pause(1);
    let started = Instant::now();
    let e = running.await.unwrap().unwrap_err();
    assert!(matches!(e, BackupError::TimedOut { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(15));
    garage.resume(1);

    // The site is full.
    garage.set_quota("1MiB");
    site.add_media(2);
    let e = site.backups().create(&site.pool).await.unwrap_err();
    assert!(matches!(e, BackupError::TargetFull { .. }), "{e}");
    assert!(e.to_string().contains("quota"), "{e}");
    // A full site still lists and verifies (reading takes no lock): the first backup is
    // whole, every pack read.
    let (data, _) = site.backups().list().await.unwrap();
    assert_eq!(data.len(), 1, "only the first backup was made");
    let verified = site.backups().verify(true).await.unwrap();
    assert!(verified.snapshot.starts_with(&first.data_snapshot));
    garage.set_quota("none");

    // And it restores.
    let restored_dir = tempfile::tempdir().unwrap();
    let mut restore = site.config.clone();
    restore.data_dir = restored_dir.path().join("data");
    Backups::new(&restore)
        .unwrap()
        .restore(None, false)
        .await
        .unwrap();
    let name = first_media.file_name().unwrap();
    assert!(same_file(
        &first_media,
        &restore.data_dir.join("vault/media").join(name)
    ));

    // And the next backup, the site back, succeeds with everything since.
    let next = site.backups().create(&site.pool).await.unwrap();
    assert!(
        next.bytes_processed >= 32 << 20 && next.bytes_added >= 4 << 20,
        "the media added during the faults: {} bytes read, {} new",
        next.bytes_processed,
        next.bytes_added
    );
}
