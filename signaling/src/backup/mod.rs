//! Backups: everything needed to bring an installation back, encrypted and incremental, in a
//! repository at another site (a directory or an S3 bucket), through restic ([`restic`]).
//!
//! Every backup is two snapshots, tagged with the installation's id (`db::installation_id`):
//!
//! * **data** (`consult-data`): a consistent snapshot of the database (SQLite's `VACUUM INTO`,
//!   or `pg_dump`), a manifest (installation, time, audit head, every recording and its state),
//!   the configuration file, `keys/` (session sealing key, audit signing keys, metrics token),
//!   `tls/`, and the recordings' sealed media when it is kept locally (`vault/media`; media in
//!   object storage stays in its replicated bucket). Never the vault's keys.
//! * **keys** (`consult-keys`): the vault's keyring and every recording's wrapped data key,
//!   in one file sealed under a fresh random key each time (AES-256-GCM; the key travels in
//!   the same file), so that no two key snapshots share a byte restic could deduplicate.
//!
//! After writing a key snapshot, every older one is forgotten and the repository pruned, so the
//! repository holds one set of keys: the current one. Old packs are deleted whole. That is how
//! crypto-shredding survives backups: once the backup after `consult recording shred` has run,
//! the shredded recording's key exists in no backup, and its media — in any data snapshot,
//! however old — opens nothing. A restore takes the keys from the current key snapshot only and
//! marks shredded (and deletes the media of) every recording whose key is not there, so a
//! restore never brings one back.

mod drill;
mod escrow;
mod postgres;
pub mod restic;
mod restore;
pub mod schedule;
mod verify;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{AnyPool, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::Config;
use crate::db::{self, Backend};
pub use drill::{DrillOptions, DrillReport, RecordingCheck, SignIn};
pub use restic::{BackupSummary, Restic, Snapshot};
pub use restore::{Restored, RESTORED_CONFIG};
pub use verify::Verified;

/// Every snapshot Consult writes carries this tag.
pub const TAG: &str = "consult";
/// …and one of these.
pub const DATA_TAG: &str = "consult-data";
/// The vault's keys.
pub const KEYS_TAG: &str = "consult-keys";
/// Inside the data directory while a backup runs: the database snapshot and manifest.
const STAGING: &str = "backup-staging";

/// What can go wrong with a backup. Messages are for operators and name what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// `[backup] repository` and `key_file` are not set.
    #[error("no backups configured: set [backup] repository and key_file")]
    NotConfigured,
    /// restic is not installed.
    #[error("the backup engine {program:?} is not installed (Debian: apt-get install restic; or set backup.restic)")]
    EngineMissing {
        /// The program looked for.
        program: PathBuf,
    },
    /// The backup key does not open the repository.
    #[error("the backup key does not open this repository (wrong backup.key_file?)")]
    WrongKey,
    /// Nothing at the repository's location.
    #[error("no backup repository at {repository} (consult backup init makes one)")]
    NoRepository {
        /// Where it was looked for.
        repository: String,
    },
    /// The repository cannot be reached.
    #[error("the backup repository cannot be reached: {detail}")]
    Unreachable {
        /// What the engine said.
        detail: String,
    },
    /// The repository has no room left.
    #[error("the backup repository is full: {detail}")]
    TargetFull {
        /// What the engine said.
        detail: String,
    },
    /// Something in the repository does not authenticate: nothing from it was used.
    #[error("the backup repository returned damaged data (nothing of it was used): {detail}")]
    Corrupt {
        /// What failed.
        detail: String,
    },
    /// Another backup (or a prune) is running.
    #[error("another backup run holds the repository or this data directory: {detail}")]
    Busy {
        /// What holds it.
        detail: String,
    },
    /// A run took longer than `backup.timeout`; it was stopped.
    #[error("restic {command} took longer than {after:?} and was stopped (the previous backups are untouched)")]
    TimedOut {
        /// The restic command.
        command: String,
        /// The limit.
        after: Duration,
    },
    /// The repository holds another installation's backups.
    #[error("this repository holds the backups of installation {found}, not of this one ({ours}); use another repository")]
    OtherInstallation {
        /// The installation found.
        found: String,
        /// This installation.
        ours: String,
    },
    /// The restore target already holds data.
    #[error("{0} is not empty: restore into an empty place, or add --force (what is there is moved aside, never deleted)")]
    NotEmpty(String),
    /// The service is running on the target.
    #[error("the service is running on {0}: stop it before restoring over it")]
    InUse(PathBuf),
    /// No such backup.
    #[error("no backup {0} in the repository")]
    NoSuchBackup(String),
    /// The repository has data but no keys snapshot for it.
    #[error(
        "the repository has no key snapshot for installation {0}: its recordings cannot be opened"
    )]
    NoKeys(String),
    /// The database could not be snapshotted or restored.
    #[error("database: {0}")]
    Database(String),
    /// The engine failed in a way it did not explain better.
    #[error("restic {command} failed: {detail}")]
    Engine {
        /// The restic command.
        command: String,
        /// What it said.
        detail: String,
    },
    /// A local file could not be read or written.
    #[error("backup: {0}")]
    Io(#[from] std::io::Error),
}

impl From<sqlx::Error> for BackupError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e.to_string())
    }
}

impl From<db::sql::Error> for BackupError {
    fn from(e: db::sql::Error) -> Self {
        Self::Database(e.to_string())
    }
}

/// What `create` made.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    /// The data snapshot's id.
    pub data_snapshot: String,
    /// The key snapshot's id.
    pub keys_snapshot: String,
    /// Bytes uploaded (new after deduplication).
    pub bytes_added: u64,
    /// Bytes read from the installation.
    pub bytes_processed: u64,
    /// How long it took.
    pub duration: Duration,
    /// Older key snapshots forgotten and pruned.
    pub keys_forgotten: usize,
    /// The manifest written.
    pub manifest: Manifest,
}

/// What a data snapshot says about itself (`backup-staging/manifest.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// The installation backed up.
    pub installation: Uuid,
    /// When the database snapshot was taken (RFC 3339).
    pub taken_at: String,
    /// The version of Consult that took it.
    pub consult_version: String,
    /// `sqlite` or `postgres`.
    pub database: String,
    /// The audit chain's length and head at the snapshot.
    pub audit_entries: i64,
    /// The hash of the last audit entry.
    pub audit_head: Option<String>,
    /// Every recording and its state at the snapshot.
    pub recordings: Vec<RecordingState>,
    /// Whether the recordings' media is in this snapshot (kept locally) or in object storage.
    pub media_included: bool,
}

/// One recording in a manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordingState {
    /// Its id.
    pub id: Uuid,
    /// Its state (`complete`, `shredded`, …).
    pub state: String,
}

/// The tag naming an installation.
pub fn installation_tag(installation: Uuid) -> String {
    format!("installation-{installation}")
}

fn installation_of(snapshot: &Snapshot) -> Option<String> {
    snapshot
        .tags
        .iter()
        .find_map(|t| t.strip_prefix("installation-"))
        .map(str::to_owned)
}

/// Refuse a repository holding another installation's snapshots.
fn refuse_other_installations(snapshots: &[Snapshot], ours: Uuid) -> Result<(), BackupError> {
    let ours = ours.to_string();
    for snapshot in snapshots {
        if let Some(found) = installation_of(snapshot)
            && found != ours
        {
            return Err(BackupError::OtherInstallation { found, ours });
        }
    }
    Ok(())
}

/// One installation's backups.
#[derive(Debug)]
pub struct Backups {
    restic: Restic,
    config: Config,
}

impl Backups {
    /// The backups `config` describes (`[backup]` set).
    pub fn new(config: &Config) -> Result<Self, BackupError> {
        let restic = Restic::new(&config.backup)?;
        Ok(Self {
            restic,
            config: config.clone(),
        })
    }

    /// The engine.
    pub fn restic(&self) -> &Restic {
        &self.restic
    }

    /// Create the repository (the operator's step, once: a repository that cannot be found is
    /// never replaced by a new one somewhere else).
    pub async fn init(&self) -> Result<(), BackupError> {
        if self.restic.exists().await? {
            return Ok(());
        }
        self.restic.init().await
    }

    /// Back up the installation whose database is `pool`: a data snapshot, then a key
    /// snapshot, then every older key snapshot forgotten and pruned. A run that fails or is
    /// stopped half-way leaves the earlier backups whole (a data snapshot whose keys could not
    /// be saved is forgotten again).
    pub async fn create(&self, db: &db::Db) -> Result<Created, BackupError> {
        let pool = db.any_pool();
        let started = Instant::now();
        let data_dir = &self.config.data_dir;
        fs::create_dir_all(data_dir.join("vault"))?;
        // In the vault's directory, which the nodes of a deployment share: one backup at a time
        // across them, so no two key snapshots race to forget each other.
        let _lock = lock_file(&data_dir.join("vault").join("backup.lock"))?;
        Scratch::sweep_stale();
        let installation = db::installation_id(db).await?;
        if !self.restic.exists().await? {
            return Err(BackupError::NoRepository {
                repository: self.restic.repository(),
            });
        }
        self.restic.unlock_stale().await?;
        // Listed once, before anything is written: every key snapshot here is older than the
        // one this run makes (the lock keeps other runs out meanwhile), so all of them go.
        let existing = self.restic.snapshots(&[TAG]).await?;
        refuse_other_installations(&existing, installation)?;
        let earlier_keys: Vec<Snapshot> = existing
            .into_iter()
            .filter(|s| s.tags.iter().any(|t| t == KEYS_TAG))
            .collect();

        let staging = data_dir.join(STAGING);
        let _ = fs::remove_dir_all(&staging);
        restore::create_private_dir(&staging)?;
        let tags = |kind: &str| {
            vec![
                TAG.to_owned(),
                kind.to_owned(),
                installation_tag(installation),
            ]
        };
        let made = async {
            let manifest = self.snapshot_database(pool, installation, &staging).await?;
            if let Some(file) = &self.config.source_file {
                fs::copy(file, staging.join("config.toml"))?;
            }
            let mut paths = vec![STAGING];
            for optional in ["keys", "tls"] {
                if data_dir.join(optional).is_dir() {
                    paths.push(optional);
                }
            }
            if manifest.media_included && data_dir.join("vault/media").is_dir() {
                paths.push("vault/media");
            }
            let data = self
                .restic
                .backup(data_dir, &paths, &tags(DATA_TAG))
                .await?;
            Ok::<_, BackupError>((manifest, data))
        }
        .await;
        let _ = fs::remove_dir_all(&staging);
        let (manifest, data) = made?;

        // The keys, read now (after the database: a recording shredded in between is in the
        // data without a key, which a restore reads as shredded), sealed and handed to restic.
        let keys = match self
            .save_keys(pool, installation, earlier_keys.last(), &tags(KEYS_TAG))
            .await
        {
            Ok(keys) => keys,
            Err(e) => {
                // Data without its keys is never restored (a restore picks data no newer than
                // the keys), and is forgotten here if the repository lets us.
                if let Err(forget) = self
                    .restic
                    .forget(std::slice::from_ref(&data.snapshot_id))
                    .await
                {
                    tracing::warn!(snapshot = %data.snapshot_id, error = %forget, "a data snapshot without keys stays until the next prune");
                }
                return Err(e);
            }
        };
        let keys_forgotten = self.forget_keys(&earlier_keys).await?;
        Ok(Created {
            data_snapshot: data.snapshot_id,
            keys_snapshot: keys.snapshot_id,
            bytes_added: data.data_added + keys.data_added,
            bytes_processed: data.total_bytes_processed + keys.total_bytes_processed,
            duration: started.elapsed(),
            keys_forgotten,
            manifest,
        })
    }

    /// Gather the vault's keys (carrying forward those of recordings the database does not
    /// know from the current key snapshot), seal them and back them up.
    async fn save_keys(
        &self,
        pool: &AnyPool,
        installation: Uuid,
        previous: Option<&Snapshot>,
        tags: &[String],
    ) -> Result<BackupSummary, BackupError> {
        let known: HashMap<Uuid, escrow::Known> =
            sqlx::query("SELECT id, state, retain_until FROM recordings")
                .fetch_all(pool)
                .await?
                .into_iter()
                .filter_map(|row| {
                    let id: String = row.try_get("id").ok()?;
                    let state: String = row.try_get("state").ok()?;
                    let retain_until: i64 = row.try_get("retain_until").ok()?;
                    Some((
                        Uuid::parse_str(&id).ok()?,
                        escrow::Known {
                            shredded: state == "shredded",
                            retain_until,
                        },
                    ))
                })
                .collect();
        let previous = match previous {
            Some(keys) => Some(self.current_keys(keys).await?),
            None => None,
        };
        let vault_dir = self.config.data_dir.join("vault");
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let sealed = tokio::task::spawn_blocking({
            move || {
                let escrow = escrow::gather(&vault_dir, installation, &known, previous, now)?;
                escrow::seal(&escrow)
            }
        })
        .await
        .map_err(|e| BackupError::Io(std::io::Error::other(e)))??;
        self.restic.backup_bytes(escrow::ESCROW, sealed, tags).await
    }

    /// Forget the key snapshots `earlier` (listed before this run's was made), and prune: the
    /// old keys leave the repository (their packs are deleted whole).
    async fn forget_keys(&self, earlier: &[Snapshot]) -> Result<usize, BackupError> {
        let old: Vec<String> = earlier.iter().map(|s| s.id.clone()).collect();
        if !old.is_empty() {
            self.restic.forget(&old).await?;
            // Their packs hold nothing else, so they go whole; nothing else is repacked.
            self.restic.prune("unlimited").await?;
        }
        Ok(old.len())
    }

    /// The database's consistent snapshot and the manifest, into `staging`.
    async fn snapshot_database(
        &self,
        pool: &AnyPool,
        installation: Uuid,
        staging: &Path,
    ) -> Result<Manifest, BackupError> {
        let taken_at = OffsetDateTime::now_utc();
        // Read the manifest's facts in the same state the snapshot sees as nearly as possible:
        // recordings listed before the snapshot (one created in between is simply newer).
        let recordings = sqlx::query("SELECT id, state FROM recordings ORDER BY id")
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let state: String = row.try_get("state")?;
                Ok(RecordingState {
                    id: Uuid::parse_str(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                    state,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let database = match Backend::of(pool) {
            Backend::Sqlite => {
                let target = staging.join("database.sqlite");
                let target = target.to_string_lossy().replace('\'', "''");
                sqlx::query(&format!("VACUUM INTO '{target}'"))
                    .execute(pool)
                    .await?;
                "sqlite"
            }
            Backend::Postgres => {
                let url = self.config.database_url.as_deref().unwrap_or_default();
                postgres::dump(
                    url,
                    &staging.join("database.pgdump"),
                    self.config.backup.timeout,
                )
                .await?;
                "postgres"
            }
        };
        let head = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(pool)
            .await?;
        let (audit_entries, audit_head) = match head {
            Some(row) => (row.try_get::<i64, _>("seq")?, Some(row.try_get("hash")?)),
            None => (0, None),
        };
        let manifest = Manifest {
            format: 1,
            installation,
            taken_at: rfc3339(taken_at),
            consult_version: env!("CARGO_PKG_VERSION").to_owned(),
            database: database.to_owned(),
            audit_entries,
            audit_head,
            recordings,
            media_included: self.config.recording.object_storage.is_none(),
        };
        let text = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| BackupError::Database(e.to_string()))?;
        fs::write(staging.join("manifest.json"), text)?;
        Ok(manifest)
    }

    /// This installation's backups (data snapshots), oldest first, and the current key snapshot.
    pub async fn list(&self) -> Result<(Vec<Snapshot>, Option<Snapshot>), BackupError> {
        let snapshots = self.restic.snapshots(&[TAG]).await?;
        let (keys, data): (Vec<_>, Vec<_>) = snapshots
            .into_iter()
            .partition(|s| s.tags.iter().any(|t| t == KEYS_TAG));
        Ok((data, keys.into_iter().last()))
    }

    /// Apply the retention policy to the data snapshots and delete what nothing uses.
    pub async fn prune(&self, installation: Uuid) -> Result<usize, BackupError> {
        let tag = installation_tag(installation);
        let before = self.restic.snapshots(&[DATA_TAG, &tag]).await?.len();
        self.restic
            .forget_by_policy(&[DATA_TAG, &tag], &self.config.backup)
            .await?;
        let after = self.restic.snapshots(&[DATA_TAG, &tag]).await?.len();
        self.restic.prune("5%").await?;
        Ok(before.saturating_sub(after))
    }
}

/// `<dir>.<suffix>` beside `dir`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "consult-data".into());
    dir.with_file_name(format!("{name}.{suffix}"))
}

/// An exclusive lock on `path` held while the returned file lives.
fn lock_file(path: &Path) -> Result<fs::File, BackupError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(BackupError::Busy {
            detail: format!("{} (a backup is running)", path.display()),
        }),
        Err(fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

fn write_json_private(path: &Path, value: &Value) -> Result<(), BackupError> {
    let text =
        serde_json::to_vec_pretty(value).map_err(|e| BackupError::Database(e.to_string()))?;
    crate::server::write_private(path, &text)?;
    Ok(())
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A directory under the system's temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(prefix: &str) -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", Uuid::new_v4()));
        restore::create_private_dir(&path)?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Scratch {
    /// Remove scratch directories an earlier run left behind (killed before it could), an hour
    /// old or more: they may hold restored keys.
    fn sweep_stale() {
        let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let ours = ["consult-backup-verify-", "consult-drill-"]
                .iter()
                .any(|p| name.starts_with(p));
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(3600));
            if ours && old {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_goes_beside_the_target() {
        assert_eq!(
            sibling(Path::new("/srv/consult-data"), "restoring"),
            PathBuf::from("/srv/consult-data.restoring")
        );
    }
}
