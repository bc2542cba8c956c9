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
pub mod restic;
pub mod schedule;
mod verify;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{AnyPool, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::{Action, Actor, AuditLog};
use crate::config::Config;
use crate::db::{self, Backend};
pub use drill::{DrillOptions, DrillReport, RecordingCheck, SignIn};
pub use restic::{BackupSummary, Restic, Snapshot};
pub use verify::Verified;

/// Every snapshot Consult writes carries this tag.
pub const TAG: &str = "consult";
/// …and one of these.
pub const DATA_TAG: &str = "consult-data";
/// The vault's keys.
pub const KEYS_TAG: &str = "consult-keys";
/// Inside the data directory while a backup runs: the database snapshot and manifest.
const STAGING: &str = "backup-staging";
/// Inside the data directory while a backup runs: the sealed keys.
const KEYS_STAGING: &str = "backup-keys";
/// The sealed keys' file.
const ESCROW: &str = "escrow.json";
/// Where a restore leaves the configuration file of the backup.
pub const RESTORED_CONFIG: &str = "config-at-backup.toml";

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
    #[error("no backup repository at {repository} (consult backup create makes one)")]
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

/// The vault's keys as a backup keeps them (sealed inside `escrow.json`).
#[derive(Serialize, Deserialize)]
struct Escrow {
    installation: Uuid,
    taken_at: String,
    /// `keyring.json`, as is.
    keyring: Value,
    /// `keys/<id>.json`, as is, by recording id.
    keys: BTreeMap<Uuid, Value>,
}

/// The sealed form on disk: a fresh key per backup, so every key snapshot is new bytes.
#[derive(Serialize, Deserialize)]
struct SealedEscrow {
    format: u32,
    installation: Uuid,
    key: String,
    nonce: String,
    sealed: String,
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

/// One installation's backups.
#[derive(Debug)]
pub struct Backups {
    restic: Restic,
    config: Config,
}

impl Backups {
    /// The backups `config` describes (`[backup]` set).
    pub fn new(config: &Config) -> Result<Self, BackupError> {
        let restic = Restic::new(&config.backup, None)?;
        Ok(Self {
            restic,
            config: config.clone(),
        })
    }

    /// The engine.
    pub fn restic(&self) -> &Restic {
        &self.restic
    }

    /// Back up the installation whose database is `pool`: a data snapshot, then a key
    /// snapshot, then every older key snapshot forgotten and pruned. The repository is created
    /// on first use. A run that fails or is stopped half-way leaves the earlier backups whole.
    pub async fn create(&self, pool: &AnyPool) -> Result<Created, BackupError> {
        let started = Instant::now();
        let data_dir = &self.config.data_dir;
        fs::create_dir_all(data_dir)?;
        let _lock = lock_file(&data_dir.join("backup.lock"))?;
        let installation = db::installation_id(pool).await?;
        if !self.restic.exists().await? {
            self.restic.init().await?;
        } else {
            self.restic.unlock_stale().await?;
        }
        self.refuse_other_installations(installation).await?;

        let staging = data_dir.join(STAGING);
        let keys_staging = data_dir.join(KEYS_STAGING);
        let _ = fs::remove_dir_all(&staging);
        let _ = fs::remove_dir_all(&keys_staging);
        fs::create_dir_all(&staging)?;
        fs::create_dir_all(&keys_staging)?;
        let result = async {
            // The database first, then the keys: a recording shredded in between is in the
            // database snapshot without a key, which a restore reads as shredded.
            let manifest = self.snapshot_database(pool, installation, &staging).await?;
            if let Some(file) = &self.config.source_file {
                fs::copy(file, staging.join("config.toml"))?;
            }
            seal_escrow(
                &self.config.data_dir.join("vault"),
                installation,
                &keys_staging,
            )?;

            let tags = |kind: &str| {
                vec![
                    TAG.to_owned(),
                    kind.to_owned(),
                    installation_tag(installation),
                ]
            };
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
            let keys = self
                .restic
                .backup(data_dir, &[KEYS_STAGING], &tags(KEYS_TAG))
                .await?;
            let keys_forgotten = self
                .forget_old_keys(installation, &keys.snapshot_id)
                .await?;
            Ok::<_, BackupError>(Created {
                data_snapshot: data.snapshot_id,
                keys_snapshot: keys.snapshot_id,
                bytes_added: data.data_added + keys.data_added,
                bytes_processed: data.total_bytes_processed + keys.total_bytes_processed,
                duration: started.elapsed(),
                keys_forgotten,
                manifest,
            })
        }
        .await;
        let _ = fs::remove_dir_all(&staging);
        let _ = fs::remove_dir_all(&keys_staging);
        result
    }

    /// Refuse a repository holding another installation's snapshots.
    async fn refuse_other_installations(&self, ours: Uuid) -> Result<(), BackupError> {
        let ours = ours.to_string();
        for snapshot in self.restic.snapshots(&[TAG]).await? {
            if let Some(found) = installation_of(&snapshot)
                && found != ours
            {
                return Err(BackupError::OtherInstallation { found, ours });
            }
        }
        Ok(())
    }

    /// Forget every key snapshot of `installation` but `keep`, and prune: the old keys leave
    /// the repository (their packs are deleted whole).
    async fn forget_old_keys(&self, installation: Uuid, keep: &str) -> Result<usize, BackupError> {
        let tag = installation_tag(installation);
        let old: Vec<String> = self
            .restic
            .snapshots(&[KEYS_TAG, &tag])
            .await?
            .into_iter()
            .map(|s| s.id)
            .filter(|id| !id.starts_with(keep) && !keep.starts_with(id.as_str()))
            .collect();
        if !old.is_empty() {
            self.restic.forget(&old).await?;
            self.restic.prune().await?;
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
                pg_tool(
                    "pg_dump",
                    url,
                    &[
                        "--format=custom",
                        "--no-owner",
                        "--file",
                        &staging.join("database.pgdump").to_string_lossy(),
                    ],
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
        self.restic.prune().await?;
        Ok(before.saturating_sub(after))
    }

    /// Restore a data snapshot (`None`: the latest) with the current keys into the configured
    /// data directory (and database). Refused where data is, unless `force`, and always where
    /// another installation's data is or the service runs. Recordings whose keys are gone are
    /// marked shredded and their media deleted, audited; the restore itself is audited.
    pub async fn restore(
        &self,
        snapshot: Option<&str>,
        force: bool,
    ) -> Result<Restored, BackupError> {
        let started = Instant::now();
        let (data, keys, installation) = self.pick(snapshot).await?;
        let target = self.config.data_dir.clone();
        let occupied = target.is_dir() && fs::read_dir(&target)?.next().is_some();
        if occupied {
            if !force {
                return Err(BackupError::NotEmpty(target.display().to_string()));
            }
            refuse_if_running(&target)?;
            if target.join("consult.db").exists() && self.config.database_url.is_none() {
                let existing = db::open(&target, None)
                    .await
                    .map_err(|e| BackupError::Database(e.to_string()))?;
                let found = db::installation_id(&existing).await?;
                existing.close().await;
                if found != installation {
                    return Err(BackupError::OtherInstallation {
                        found: found.to_string(),
                        ours: installation.to_string(),
                    });
                }
            }
        }
        if let Some(url) = &self.config.database_url {
            check_postgres_target(url, installation, force).await?;
        }

        let scratch = sibling(&target, "restoring");
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch)?;
        let result = self
            .restore_into(&scratch, &data, &keys, installation)
            .await;
        let mut report = match result {
            Ok(report) => report,
            Err(e) => {
                let _ = fs::remove_dir_all(&scratch);
                return Err(e);
            }
        };
        if target.exists() {
            let aside = sibling(
                &target,
                &format!(
                    "before-restore-{}",
                    OffsetDateTime::now_utc().unix_timestamp()
                ),
            );
            fs::rename(&target, &aside)?;
            report.moved_aside = Some(aside);
        }
        fs::rename(&scratch, &target)?;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// The data snapshot `wanted` (or the latest), the current key snapshot, and the
    /// installation they belong to.
    async fn pick(&self, wanted: Option<&str>) -> Result<(Snapshot, Snapshot, Uuid), BackupError> {
        let (data, keys) = self.list().await?;
        let data = match wanted {
            None | Some("latest") => data.into_iter().last(),
            Some(id) => data.into_iter().find(|s| s.id.starts_with(id)),
        }
        .ok_or_else(|| BackupError::NoSuchBackup(wanted.unwrap_or("latest").to_owned()))?;
        let installation = installation_of(&data).ok_or_else(|| BackupError::Corrupt {
            detail: format!("snapshot {} names no installation", data.short_id()),
        })?;
        let keys = keys
            .filter(|k| installation_of(k).as_deref() == Some(installation.as_str()))
            .ok_or_else(|| BackupError::NoKeys(installation.clone()))?;
        let installation = Uuid::parse_str(&installation).map_err(|_| BackupError::Corrupt {
            detail: format!(
                "snapshot {} names a malformed installation",
                data.short_id()
            ),
        })?;
        Ok((data, keys, installation))
    }

    /// Restore `data` and `keys` into the empty `scratch`, laid out as a data directory.
    async fn restore_into(
        &self,
        scratch: &Path,
        data: &Snapshot,
        keys: &Snapshot,
        installation: Uuid,
    ) -> Result<Restored, BackupError> {
        self.restic.restore(&data.id, scratch).await?;
        let keys_dir = scratch.join(".keys-restore");
        self.restic.restore(&keys.id, &keys_dir).await?;
        let escrow = open_escrow(&keys_dir.join(KEYS_STAGING).join(ESCROW))?;
        fs::remove_dir_all(&keys_dir)?;

        let staging = scratch.join(STAGING);
        let manifest: Manifest = serde_json::from_slice(&fs::read(staging.join("manifest.json"))?)
            .map_err(|e| BackupError::Corrupt {
                detail: format!("manifest: {e}"),
            })?;
        if manifest.installation != installation || escrow.installation != installation {
            return Err(BackupError::Corrupt {
                detail: "the snapshot's manifest, tags and keys name different installations"
                    .into(),
            });
        }
        match manifest.database.as_str() {
            "sqlite" => {
                if self.config.database_url.is_some() {
                    return Err(BackupError::Database(
                        "this backup is of a SQLite installation; unset database_url to restore it"
                            .into(),
                    ));
                }
                fs::rename(staging.join("database.sqlite"), scratch.join("consult.db"))?;
            }
            "postgres" => {
                let Some(url) = &self.config.database_url else {
                    return Err(BackupError::Database(
                        "this backup is of a PostgreSQL installation; set database_url to the (empty) database to restore it into".into(),
                    ));
                };
                pg_tool(
                    "pg_restore",
                    url,
                    &[
                        "--clean",
                        "--if-exists",
                        "--no-owner",
                        "--single-transaction",
                        &staging.join("database.pgdump").to_string_lossy(),
                    ],
                )
                .await?;
            }
            other => {
                return Err(BackupError::Corrupt {
                    detail: format!("manifest: unknown database {other:?}"),
                })
            }
        }
        if staging.join("config.toml").exists() {
            fs::rename(staging.join("config.toml"), scratch.join(RESTORED_CONFIG))?;
        }
        fs::remove_dir_all(&staging)?;

        // The vault's keys: the keyring, and the wrapped key of every recording the restored
        // database knows and the current keys still hold.
        let vault_dir = scratch.join("vault");
        fs::create_dir_all(vault_dir.join("keys"))?;
        // No keyring: the vault was never opened (it makes one when it is).
        if !escrow.keyring.is_null() {
            write_json_private(&vault_dir.join("keyring.json"), &escrow.keyring)?;
        }
        let mut restored_config = self.config.clone();
        restored_config.data_dir = scratch.to_path_buf();
        let pool = db::open(scratch, self.config.database_url.as_deref())
            .await
            .map_err(|e| BackupError::Database(e.to_string()))?;
        let outcome = async {
            let found = db::installation_id(&pool).await?;
            if found != installation {
                return Err(BackupError::Corrupt {
                    detail: format!("the database in the snapshot belongs to installation {found}"),
                });
            }
            let rows = sqlx::query("SELECT id, state, consultation_id FROM recordings")
                .fetch_all(&pool)
                .await?;
            let mut gone = Vec::new();
            let mut recordings = 0;
            for row in rows {
                let id: String = row.try_get("id")?;
                let state: String = row.try_get("state")?;
                let consultation: String = row.try_get("consultation_id")?;
                let (Ok(id), Ok(consultation)) =
                    (Uuid::parse_str(&id), Uuid::parse_str(&consultation))
                else {
                    continue;
                };
                match escrow.keys.get(&id) {
                    Some(key) => {
                        write_json_private(
                            &vault_dir.join("keys").join(format!("{id}.json")),
                            key,
                        )?;
                        recordings += 1;
                    }
                    None if state != "shredded" => gone.push((id, consultation)),
                    None => {}
                }
            }
            let shredded = self
                .shred_keyless(&pool, &restored_config, &gone, data)
                .await?;
            let audit = AuditLog::new(pool.clone());
            audit
                .record(
                    OffsetDateTime::now_utc(),
                    &Actor::Operator,
                    Action::BackupRestored,
                    None,
                    json!({
                        "snapshot": data.id,
                        "taken_at": manifest.taken_at,
                        "keys_snapshot": keys.id,
                        "recordings": recordings,
                        "shredded_since": shredded,
                    }),
                )
                .await
                .map_err(|e| BackupError::Database(format!("{e:#}")))?;
            Ok(Restored {
                snapshot: data.id.clone(),
                taken_at: manifest.taken_at.clone(),
                manifest: manifest.clone(),
                recordings,
                shredded_since: shredded,
                moved_aside: None,
                duration: Duration::ZERO,
            })
        }
        .await;
        pool.close().await;
        outcome
    }

    /// Mark shredded, audited, the restored recordings whose keys are gone (shredded after
    /// the snapshot), and delete their media.
    async fn shred_keyless(
        &self,
        pool: &AnyPool,
        restored: &Config,
        gone: &[(Uuid, Uuid)],
        data: &Snapshot,
    ) -> Result<usize, BackupError> {
        if gone.is_empty() {
            return Ok(0);
        }
        let vault = crate::recording::open_vault(restored)
            .await
            .map_err(|e| BackupError::Database(format!("the restored vault: {e:#}")))?;
        let audit = AuditLog::new(pool.clone());
        for (id, consultation) in gone {
            vault.shred(*id).map_err(|e| {
                BackupError::Io(std::io::Error::other(format!("recording {id}: {e}")))
            })?;
            let mut tx = audit
                .begin()
                .await
                .map_err(|e| BackupError::Database(format!("{e:#}")))?;
            let now = OffsetDateTime::now_utc();
            crate::recording::rows::set_shredded(tx.connection(), *id, now)
                .await
                .map_err(|e| BackupError::Database(format!("{e:#}")))?;
            tx.record(
                now,
                &Actor::Operator,
                Action::RecordingShredded,
                Some(*consultation),
                json!({
                    "recording_id": id,
                    "detail": {
                        "reason": "restore",
                        "why": "its key was destroyed after the backup was taken",
                        "snapshot": data.id,
                    },
                }),
            )
            .await
            .map_err(|e| BackupError::Database(format!("{e:#}")))?;
            tx.commit()
                .await
                .map_err(|e| BackupError::Database(format!("{e:#}")))?;
        }
        Ok(gone.len())
    }
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    /// The data snapshot restored.
    pub snapshot: String,
    /// When it was taken.
    pub taken_at: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// Recordings restored with their keys.
    pub recordings: usize,
    /// Recordings in the snapshot whose keys were destroyed since: marked shredded.
    pub shredded_since: usize,
    /// Where the data that was in the target went (`--force`).
    pub moved_aside: Option<PathBuf>,
    /// How long it took.
    pub duration: Duration,
}

/// `<dir>.<suffix>` beside `dir`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "consult-data".into());
    dir.with_file_name(format!("{name}.{suffix}"))
}

/// Refuse while a service (or anything holding the vault) runs on `data_dir`.
fn refuse_if_running(data_dir: &Path) -> Result<(), BackupError> {
    let lock = data_dir.join("vault/.lock");
    if !lock.exists() {
        return Ok(());
    }
    let file = fs::OpenOptions::new().read(true).write(true).open(&lock)?;
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(fs::TryLockError::WouldBlock) => Err(BackupError::InUse(data_dir.to_path_buf())),
        Err(fs::TryLockError::Error(e)) => Err(e.into()),
    }
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

/// Copy the vault's keyring and wrapped keys, sealed under a fresh key, into `out/escrow.json`.
/// Holds the vault's shared lock meanwhile, so no key rotation is half-way through.
fn seal_escrow(vault_dir: &Path, installation: Uuid, out: &Path) -> Result<(), BackupError> {
    fs::create_dir_all(vault_dir.join("keys"))?;
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(vault_dir.join(".lock"))?;
    match lock.try_lock_shared() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(BackupError::Busy {
                detail: "the vault's keys are being rotated".into(),
            })
        }
        Err(fs::TryLockError::Error(e)) => return Err(e.into()),
    }
    let keyring = match fs::read(vault_dir.join("keyring.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| BackupError::Corrupt {
            detail: format!("the vault's keyring.json: {e}"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
        Err(e) => return Err(e.into()),
    };
    let mut keys = BTreeMap::new();
    for entry in fs::read_dir(vault_dir.join("keys"))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| Uuid::parse_str(n).ok())
        else {
            continue;
        };
        match fs::read(entry.path()) {
            Ok(bytes) => {
                let key = serde_json::from_slice(&bytes).map_err(|e| BackupError::Corrupt {
                    detail: format!("the vault's key of recording {id}: {e}"),
                })?;
                keys.insert(id, key);
            }
            // Shredded while we listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    drop(lock);
    let escrow = Escrow {
        installation,
        taken_at: rfc3339(OffsetDateTime::now_utc()),
        keyring,
        keys,
    };
    let mut plain =
        serde_json::to_vec(&escrow).map_err(|e| BackupError::Database(e.to_string()))?;
    let rng = SystemRandom::new();
    let mut key = [0u8; 32];
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut key)
        .and_then(|()| rng.fill(&mut nonce))
        .map_err(|_| std::io::Error::other("no randomness"))?;
    let sealing = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &key).map_err(|_| std::io::Error::other("AES key"))?,
    );
    sealing
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(installation.as_bytes()),
            &mut plain,
        )
        .map_err(|_| std::io::Error::other("sealing the keys"))?;
    let sealed = SealedEscrow {
        format: 1,
        installation,
        key: BASE64.encode(key),
        nonce: BASE64.encode(nonce),
        sealed: BASE64.encode(&plain),
    };
    key.fill(0);
    let text = serde_json::to_vec(&sealed).map_err(|e| BackupError::Database(e.to_string()))?;
    crate::server::write_private(&out.join(ESCROW), &text)?;
    Ok(())
}

/// Open a key snapshot's `escrow.json`.
fn open_escrow(path: &Path) -> Result<Escrow, BackupError> {
    let corrupt = |detail: &str| BackupError::Corrupt {
        detail: format!("the key snapshot: {detail}"),
    };
    let sealed: SealedEscrow = serde_json::from_slice(&fs::read(path)?)
        .map_err(|_| corrupt("escrow.json is malformed"))?;
    let key = BASE64
        .decode(&sealed.key)
        .map_err(|_| corrupt("malformed key"))?;
    let nonce: [u8; NONCE_LEN] = BASE64
        .decode(&sealed.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| corrupt("malformed nonce"))?;
    let mut data = BASE64
        .decode(&sealed.sealed)
        .map_err(|_| corrupt("malformed data"))?;
    let opening = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &key).map_err(|_| corrupt("malformed key"))?,
    );
    let plain = opening
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(sealed.installation.as_bytes()),
            &mut data,
        )
        .map_err(|_| corrupt("does not authenticate"))?;
    serde_json::from_slice(plain).map_err(|_| corrupt("malformed content"))
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

/// Refuse a PostgreSQL database holding another installation, or (unless `force`) any data.
async fn check_postgres_target(
    url: &str,
    installation: Uuid,
    force: bool,
) -> Result<(), BackupError> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    let outcome = async {
        let has_table = sqlx::query(
            "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_name = 'installation'",
        )
        .fetch_one(&pool)
        .await?
        .try_get::<i64, _>("n")?
            > 0;
        if has_table
            && let Some(row) = sqlx::query("SELECT id FROM installation")
                .fetch_optional(&pool)
                .await?
        {
            let found: String = row.try_get("id")?;
            if found != installation.to_string() {
                return Err(BackupError::OtherInstallation {
                    found,
                    ours: installation.to_string(),
                });
            }
        }
        let tables = sqlx::query(
            "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .fetch_one(&pool)
        .await?
        .try_get::<i64, _>("n")?;
        if tables > 0 && !force {
            return Err(BackupError::NotEmpty("the PostgreSQL database".into()));
        }
        Ok(())
    }
    .await;
    pool.close().await;
    outcome
}

/// Run `pg_dump` or `pg_restore` against `url`, the password passed in the environment (never
/// on the command line, where other users could see it).
async fn pg_tool(program: &str, url: &str, args: &[&str]) -> Result<(), BackupError> {
    let parsed = url::Url::parse(url)
        .map_err(|_| BackupError::Database("database_url is malformed".into()))?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(host) = parsed.host_str() {
        command.env("PGHOST", host.trim_start_matches('[').trim_end_matches(']'));
    }
    if let Some(port) = parsed.port() {
        command.env("PGPORT", port.to_string());
    }
    if !parsed.username().is_empty() {
        command.env("PGUSER", percent_decode(parsed.username()));
    }
    if let Some(password) = parsed.password() {
        command.env("PGPASSWORD", percent_decode(password));
    }
    let database = parsed.path().trim_start_matches('/');
    if !database.is_empty() {
        command.env("PGDATABASE", percent_decode(database));
        if program == "pg_restore" {
            command.arg("--dbname").arg(percent_decode(database));
        }
    }
    for (key, value) in parsed.query_pairs() {
        if key == "sslmode" {
            command.env("PGSSLMODE", value.as_ref());
        }
    }
    let output = command.output().await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            BackupError::Database(format!(
                "{program} is not installed (Debian: apt-get install postgresql-client)"
            ))
        } else {
            BackupError::Io(e)
        }
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let detail: Vec<&str> = stderr.lines().rev().take(3).collect();
    Err(BackupError::Database(format!(
        "{program}: {}",
        detail.into_iter().rev().collect::<Vec<_>>().join(" / ")
    )))
}

/// Check that a `pg_dump` archive reads whole (`pg_restore --list`).
async fn pg_list(archive: &Path) -> Result<(), BackupError> {
    let output = tokio::process::Command::new("pg_restore")
        .arg("--list")
        .arg(archive)
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    if output.status.success() {
        Ok(())
    } else {
        Err(BackupError::Corrupt {
            detail: format!(
                "the PostgreSQL dump: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}

/// A directory under the system's temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(prefix: &str) -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", Uuid::new_v4()));
        fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_and_refuse_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let vault = dir.path().join("vault");
        fs::create_dir_all(vault.join("keys")).unwrap();
        fs::write(vault.join("keyring.json"), br#"{"versions":[]}"#).unwrap();
        let id = Uuid::new_v4();
        fs::write(vault.join("keys").join(format!("{id}.json")), br#"{"k":1}"#).unwrap();
        let installation = Uuid::new_v4();
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        seal_escrow(&vault, installation, &out).unwrap();
        let first = fs::read(out.join(ESCROW)).unwrap();
        let escrow = open_escrow(&out.join(ESCROW)).unwrap();
        assert_eq!(escrow.installation, installation);
        assert_eq!(escrow.keys.get(&id), Some(&json!({"k": 1})));

        // The same keys sealed again are other bytes through and through.
        seal_escrow(&vault, installation, &out).unwrap();
        let second = fs::read(out.join(ESCROW)).unwrap();
        assert_ne!(first, second);

        // A flipped byte, or another installation's name, is refused.
        let mut sealed: SealedEscrow = serde_json::from_slice(&second).unwrap();
        sealed.installation = Uuid::new_v4();
        fs::write(out.join(ESCROW), serde_json::to_vec(&sealed).unwrap()).unwrap();
        assert!(matches!(
            open_escrow(&out.join(ESCROW)),
            Err(BackupError::Corrupt { .. })
        ));
    }

    #[test]
    fn database_passwords_are_decoded_for_the_environment() {
        assert_eq!(percent_decode("p%40ss%2Fword"), "p@ss/word");
        assert_eq!(percent_decode("plain+"), "plain+");
    }

    #[test]
    fn a_restore_goes_beside_the_target() {
        assert_eq!(
            sibling(Path::new("/srv/consult-data"), "restoring"),
            PathBuf::from("/srv/consult-data.restoring")
        );
    }
}
