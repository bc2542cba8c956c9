//! `consult backup restore`: a data snapshot and the current keys, laid out as a data directory
//! beside the target, checked, then put in place.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use time::OffsetDateTime;
use uuid::Uuid;

use super::escrow::{self, Escrow, ESCROW};
use super::{
    installation_of, postgres, write_json_private, BackupError, Backups, Manifest, Snapshot,
    KEYS_TAG, STAGING,
};
use crate::audit::{Action, Actor, AuditLog};
use crate::db;

/// Where the configuration file of the backup is left.
pub const RESTORED_CONFIG: &str = "config-at-backup.toml";

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

/// How a restore treats what it finds shredded since the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShreddedMedia {
    /// Delete their media (a real restore: the installation becomes what it was, less them).
    Delete,
    /// Leave it (a drill: nothing shared with the live installation is touched).
    Leave,
}

impl Backups {
    /// Restore a data snapshot (`None`: the latest) with the current keys into the configured
    /// data directory (and database). Refused where data is, unless `force`, and always where
    /// another installation's data is or a service runs. Recordings whose keys are gone are
    /// marked shredded and their media deleted, audited; the restore itself is audited.
    pub async fn restore(
        &self,
        snapshot: Option<&str>,
        force: bool,
    ) -> Result<Restored, BackupError> {
        self.restore_with(snapshot, force, ShreddedMedia::Delete)
            .await
    }

    pub(super) async fn restore_with(
        &self,
        snapshot: Option<&str>,
        force: bool,
        shredded_media: ShreddedMedia,
    ) -> Result<Restored, BackupError> {
        let started = Instant::now();
        let (data, keys, installation) = self.pick(snapshot).await?;
        let target = absolute(&self.config.data_dir);
        if target.parent().is_none() {
            return Err(BackupError::NotEmpty(target.display().to_string()));
        }
        if is_mount_point(&target) {
            return Err(BackupError::NotEmpty(format!(
                "{} is a mount point, which cannot be replaced: restore into a directory inside it",
                target.display()
            )));
        }
        let occupied = target.is_dir() && fs::read_dir(&target)?.next().is_some();
        // Held until the new directory is in place: no service starts on it meanwhile.
        let _running = if occupied {
            if !force {
                return Err(BackupError::NotEmpty(target.display().to_string()));
            }
            let lock = hold_vault(&target)?;
            if self.config.database_url.is_none() {
                sqlite_installation_differs(&target, installation).await?;
            }
            lock
        } else {
            None
        };
        let database_in_use = match &self.config.database_url {
            Some(url) => postgres::check_target(url, installation, force).await?,
            None => false,
        };

        let scratch = super::sibling(&target, "restoring");
        let _ = fs::remove_dir_all(&scratch);
        create_private_dir(&scratch)?;
        // The database that is there, kept beside what it is replaced with.
        let aside = super::sibling(
            &target,
            &format!(
                "before-restore-{}",
                OffsetDateTime::now_utc().unix_timestamp()
            ),
        );
        if database_in_use && let Some(url) = &self.config.database_url {
            create_private_dir(&aside)?;
            let dump = aside.join("database-before-restore.pgdump");
            postgres::dump(url, &dump, self.config.backup.timeout).await?;
        }
        let mut report = match self
            .restore_into(&scratch, &data, &keys, installation, shredded_media)
            .await
        {
            Ok(report) => report,
            Err(e) => {
                let _ = fs::remove_dir_all(&scratch);
                let dump = aside.join("database-before-restore.pgdump");
                if self.config.database_url.is_some() && dump.exists() {
                    return Err(BackupError::Database(format!(
                        "{e}; the PostgreSQL database may be partly restored: what it held before is in {} (pg_restore --clean it back)",
                        dump.display()
                    )));
                }
                return Err(e);
            }
        };
        if target.exists() {
            let aside_dir = if aside.exists() {
                aside.join("data")
            } else {
                aside.clone()
            };
            fs::rename(&target, &aside_dir)?;
            report.moved_aside = Some(aside.clone());
            if let Err(e) = fs::rename(&scratch, &target) {
                // Put back what was there; the restored copy is dropped.
                let _ = fs::rename(&aside_dir, &target);
                let _ = fs::remove_dir_all(&scratch);
                return Err(e.into());
            }
        } else {
            if aside.exists() {
                report.moved_aside = Some(aside.clone());
            }
            fs::rename(&scratch, &target)?;
        }
        report.duration = started.elapsed();
        Ok(report)
    }

    /// The data snapshot `wanted` (or the latest), the current key snapshot, and the
    /// installation they belong to.
    pub(super) async fn pick(
        &self,
        wanted: Option<&str>,
    ) -> Result<(Snapshot, Snapshot, Uuid), BackupError> {
        let (data, keys) = self.list().await?;
        // Keys are saved after their data: a data snapshot newer than the current keys lost
        // its keys (the run failed between the two) and is never restored.
        let keys_taken = keys.as_ref().and_then(Snapshot::taken_at);
        let data: Vec<Snapshot> = data
            .into_iter()
            .filter(|d| keys_taken.is_some_and(|k| d.taken_at().is_some_and(|t| t <= k)))
            .collect();
        let data = match wanted {
            None | Some("latest") => data.into_iter().last(),
            Some(id) if id.len() >= 8 => {
                let mut matching = data.into_iter().filter(|s| s.id.starts_with(id));
                match (matching.next(), matching.next()) {
                    (Some(one), None) => Some(one),
                    _ => None,
                }
            }
            Some(_) => None,
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

    /// The current keys (the latest key snapshot's escrow).
    pub(super) async fn current_keys(&self, keys: &Snapshot) -> Result<Escrow, BackupError> {
        if !keys.tags.iter().any(|t| t == KEYS_TAG) {
            return Err(BackupError::NoKeys(keys.id.clone()));
        }
        let bytes = self.restic.dump(&keys.id, &format!("/{ESCROW}")).await?;
        escrow::open(&bytes)
    }

    /// The current keys, and `data` restored into `into`: its manifest, checked to name the
    /// same installation as its tags and the keys.
    pub(super) async fn unpack(
        &self,
        data: &Snapshot,
        keys: &Snapshot,
        installation: Uuid,
        into: &Path,
    ) -> Result<(Escrow, Manifest), BackupError> {
        let escrow = self.current_keys(keys).await?;
        self.restic.restore(&data.id, into).await?;
        let manifest: Manifest = serde_json::from_slice(&fs::read(
            into.join(STAGING).join("manifest.json"),
        )?)
        .map_err(|e| BackupError::Corrupt {
            detail: format!("manifest: {e}"),
        })?;
        if manifest.installation != installation || escrow.installation != installation {
            return Err(BackupError::Corrupt {
                detail: "the snapshot's manifest, tags and keys name different installations"
                    .into(),
            });
        }
        Ok((escrow, manifest))
    }

    /// Restore `data` and `keys` into the empty `scratch`, laid out as a data directory.
    async fn restore_into(
        &self,
        scratch: &Path,
        data: &Snapshot,
        keys: &Snapshot,
        installation: Uuid,
        shredded_media: ShreddedMedia,
    ) -> Result<Restored, BackupError> {
        let (escrow, manifest) = self.unpack(data, keys, installation, scratch).await?;
        let staging = scratch.join(STAGING);
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
                postgres::restore(
                    url,
                    &staging.join("database.pgdump"),
                    self.config.backup.timeout,
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

        // The vault's keys: the keyring, and the key of every live recording the restored
        // database knows. Keys of recordings it does not know (made after this backup) stay in
        // the repository's current keys, and the next backup carries them forward.
        let vault_dir = scratch.join("vault");
        fs::create_dir_all(vault_dir.join("keys"))?;
        if !escrow.keyring.is_null() {
            write_json_private(&vault_dir.join("keyring.json"), &escrow.keyring)?;
        }
        let pool = db::open(scratch, self.config.database_url.as_deref())
            .await
            .map_err(|e| BackupError::Database(e.to_string()))?;
        let outcome = async {
            let found = db::installation_id(&pool).await?;
            if found != installation {
                return Err(BackupError::Corrupt {
                    detail: format!(
                        "the database in the snapshot belongs to installation {found}"
                    ),
                });
            }
            let keys_taken = parse_time(&escrow.taken_at);
            let rows = db::query("SELECT id, state, consultation_id, started_at FROM recordings")
                .fetch_all(&pool)
                .await?;
            let mut gone = Vec::new();
            let mut recordings = 0;
            for row in rows {
                let id: String = row.try_get("id")?;
                let state: String = row.try_get("state")?;
                let consultation: String = row.try_get("consultation_id")?;
                let started: i64 = row.try_get("started_at")?;
                let (Ok(id), Ok(consultation)) =
                    (Uuid::parse_str(&id), Uuid::parse_str(&consultation))
                else {
                    continue;
                };
                match escrow.keys.get(&id) {
                    Some(_) if state == "shredded" => {}
                    Some(key) => {
                        write_json_private(
                            &vault_dir.join("keys").join(format!("{id}.json")),
                            key,
                        )?;
                        recordings += 1;
                    }
                    None if state == "shredded" => {}
                    // The keys were saved after this recording began, without its key: it was
                    // shredded since.
                    None if started <= keys_taken => gone.push((id, consultation)),
                    None => {
                        return Err(BackupError::Corrupt {
                            detail: format!(
                                "recording {id} began after the current keys were saved: they are older than this backup"
                            ),
                        })
                    }
                }
            }
            let shredded = self
                .shred_keyless(&pool, scratch, &gone, data, shredded_media)
                .await?;
            AuditLog::new(pool.clone())
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
    /// the snapshot), and (unless a drill) delete their media.
    async fn shred_keyless(
        &self,
        pool: &db::Db,
        scratch: &Path,
        gone: &[(Uuid, Uuid)],
        data: &Snapshot,
        shredded_media: ShreddedMedia,
    ) -> Result<usize, BackupError> {
        if gone.is_empty() {
            return Ok(0);
        }
        if shredded_media == ShreddedMedia::Delete {
            let mut restored = self.config.clone();
            restored.data_dir = scratch.to_path_buf();
            let vault = crate::recording::open_vault(&restored)
                .await
                .map_err(|e| BackupError::Database(format!("the restored vault: {e:#}")))?;
            for (id, _) in gone {
                vault.shred(*id).map_err(|e| {
                    BackupError::Io(std::io::Error::other(format!("recording {id}: {e}")))
                })?;
            }
        }
        let audit = AuditLog::new(pool.clone());
        let database = |e: anyhow::Error| BackupError::Database(format!("{e:#}"));
        for (id, consultation) in gone {
            let mut tx = audit.begin().await.map_err(database)?;
            let now = OffsetDateTime::now_utc();
            crate::recording::rows::set_shredded(tx.connection(), *id, now)
                .await
                .map_err(database)?;
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
            .map_err(database)?;
            tx.commit().await.map_err(database)?;
        }
        Ok(gone.len())
    }
}

fn parse_time(text: &str) -> i64 {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .unwrap_or(i64::MAX)
}

/// `path` made absolute, symbolic links resolved where it exists.
fn absolute(path: &Path) -> PathBuf {
    path.canonicalize()
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// A directory only its owner may enter.
pub(super) fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (fs::metadata(path), path.parent().map(fs::metadata)) {
        (Ok(dir), Some(Ok(parent))) => dir.dev() != parent.dev(),
        _ => false,
    }
}

/// The vault's lock of `data_dir`, held exclusively: refused while a service runs on it.
fn hold_vault(data_dir: &Path) -> Result<Option<fs::File>, BackupError> {
    let lock = data_dir.join("vault/.lock");
    if !lock.exists() {
        return Ok(None);
    }
    let file = fs::OpenOptions::new().read(true).write(true).open(&lock)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Err(BackupError::InUse(data_dir.to_path_buf())),
        Err(fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// Refuse a SQLite data directory of another installation. Read only: nothing is migrated or
/// written; a database that does not open is no obstacle (it is moved aside).
async fn sqlite_installation_differs(data_dir: &Path, ours: Uuid) -> Result<(), BackupError> {
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::ConnectOptions as _;
    let file = data_dir.join("consult.db");
    if !file.exists() {
        return Ok(());
    }
    let Ok(mut conn) = SqliteConnectOptions::new()
        .filename(&file)
        .read_only(true)
        .connect()
        .await
    else {
        return Ok(());
    };
    let found: Option<String> = sqlx::query_scalar("SELECT id FROM installation")
        .fetch_optional(&mut conn)
        .await
        .ok()
        .flatten();
    let _ = sqlx::Connection::close(conn).await;
    match found {
        Some(found) if found != ours.to_string() => Err(BackupError::OtherInstallation {
            found,
            ours: ours.to_string(),
        }),
        _ => Ok(()),
    }
}
