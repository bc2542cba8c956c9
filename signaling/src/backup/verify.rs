//! `consult backup verify`: the repository checked by restic, then the latest backup restored
//! into a scratch directory and proven usable, without touching the installation.

use std::fs;
use std::path::Path;

use serde::Serialize;
use uuid::Uuid;

use super::{postgres, BackupError, Backups, STAGING};
use crate::db;

/// What a verification found: every count is of things that were read and authenticated.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// The data snapshot verified.
    pub snapshot: String,
    /// When it was taken.
    pub taken_at: String,
    /// Whether every pack of the repository was read (`--read-data`).
    pub read_all_data: bool,
    /// Audit entries whose hash chain verified (SQLite backups).
    pub audit_entries: Option<usize>,
    /// Signed audit checkpoints that verified against the chain (SQLite backups).
    pub audit_checkpoints: Option<usize>,
    /// Recordings whose every sealed chunk was read and authenticated with the backed-up keys.
    pub recordings_opened: usize,
    /// Sealed chunks read.
    pub chunks_read: u64,
    /// Recordings in the snapshot whose keys are gone (shredded since): unreadable, as meant.
    pub recordings_shredded_since: usize,
    /// Recordings whose media is in object storage (not in backups): keys checked only.
    pub recordings_in_object_storage: usize,
}

impl Backups {
    /// Check the repository (`read_all_data`: read and authenticate every pack), then restore
    /// the latest backup into a scratch directory and prove it: the manifest, keys and tags
    /// agree; the database opens and (SQLite) its audit chain and checkpoints verify; every
    /// recording with a key opens and every one of its sealed chunks authenticates.
    pub async fn verify(&self, read_all_data: bool) -> Result<Verified, BackupError> {
        self.restic.check(read_all_data).await?;
        let (data, keys, installation) = self.pick(None).await?;
        let scratch = super::Scratch::new("consult-backup-verify")?;
        let root = scratch.path();
        let (escrow, manifest) = self.unpack(&data, &keys, installation, root).await?;
        let staging = root.join(STAGING);

        let (audit_entries, audit_checkpoints) = match manifest.database.as_str() {
            "sqlite" => {
                fs::rename(staging.join("database.sqlite"), root.join("consult.db"))?;
                let (entries, checkpoints) = verify_sqlite(root, installation).await?;
                (Some(entries), Some(checkpoints))
            }
            _ => {
                postgres::list(&staging.join("database.pgdump")).await?;
                (None, None)
            }
        };

        // The keys stay in memory: never written beside the restored media.
        let keyring = if escrow.keyring.is_null() {
            None
        } else {
            Some(
                consult_vault::Keyring::from_json(&escrow.keyring.to_string()).map_err(|e| {
                    BackupError::Corrupt {
                        detail: format!("the backed-up keyring: {e}"),
                    }
                })?,
            )
        };
        let media = consult_vault::LocalDirectory::new(&root.join("vault/media")).map_err(|e| {
            BackupError::Corrupt {
                detail: format!("the backed-up media: {e}"),
            }
        })?;
        let mut verified = Verified {
            snapshot: data.id.clone(),
            taken_at: manifest.taken_at.clone(),
            read_all_data,
            audit_entries,
            audit_checkpoints,
            recordings_opened: 0,
            chunks_read: 0,
            recordings_shredded_since: 0,
            recordings_in_object_storage: 0,
        };
        for recording in manifest.recordings.iter().filter(|r| r.state != "shredded") {
            let Some(wrapped) = escrow.keys.get(&recording.id) else {
                verified.recordings_shredded_since += 1;
                continue;
            };
            let key = serde_json::from_value::<consult_vault::WrappedKey>(wrapped.clone())
                .map_err(|e| BackupError::Corrupt {
                    detail: format!("recording {}: its key: {e}", recording.id),
                })
                .and_then(|wrapped| {
                    keyring
                        .as_ref()
                        .ok_or_else(|| BackupError::Corrupt {
                            detail: "keys without a keyring".into(),
                        })?
                        .unwrap(recording.id, &wrapped)
                        .map_err(|e| corrupt_recording(recording.id, e))
                })?;
            if !manifest.media_included {
                verified.recordings_in_object_storage += 1;
                continue;
            }
            use consult_vault::MediaStore as _;
            let input = match media.open(recording.id) {
                Ok(input) => input,
                // Started just before the snapshot: no media was sealed yet.
                Err(consult_vault::VaultError::MediaMissing { .. })
                    if recording.state == "recording" =>
                {
                    continue
                }
                Err(e) => return Err(corrupt_recording(recording.id, e)),
            };
            let mut reader = consult_vault::ChunkReader::new(input, recording.id, &key)
                .map_err(|e| corrupt_recording(recording.id, e))?;
            loop {
                match reader.next_chunk() {
                    Ok(Some(_)) => verified.chunks_read += 1,
                    Ok(None) => break,
                    Err(e) => return Err(corrupt_recording(recording.id, e)),
                }
            }
            verified.recordings_opened += 1;
        }
        Ok(verified)
    }
}

fn corrupt_recording(id: Uuid, e: consult_vault::VaultError) -> BackupError {
    BackupError::Corrupt {
        detail: format!("recording {id}: {e}"),
    }
}

/// Open a restored SQLite database: it belongs to `installation`, its audit chain and every
/// stored checkpoint verify. The counts of entries and checkpoints.
async fn verify_sqlite(root: &Path, installation: Uuid) -> Result<(usize, usize), BackupError> {
    let pool = db::open(root, None)
        .await
        .map_err(|e| BackupError::Corrupt {
            detail: format!("the database: {e}"),
        })?;
    let outcome = async {
        let found = db::installation_id(&pool).await?;
        if found != installation {
            return Err(BackupError::Corrupt {
                detail: format!("the database in the snapshot belongs to installation {found}"),
            });
        }
        let entries = crate::audit::verify(&pool)
            .await
            .map_err(|e| BackupError::Database(format!("{e:#}")))?
            .map_err(|broken| BackupError::Corrupt {
                detail: format!("the audit chain: {broken}"),
            })?;
        let keys =
            crate::audit_checkpoints::public_keys(root).map_err(|e| BackupError::Corrupt {
                detail: format!("the audit keys: {e}"),
            })?;
        let checkpoints = crate::audit_checkpoints::verify_checkpoints(&pool, &keys)
            .await
            .map_err(|e| BackupError::Database(format!("{e:#}")))?
            .map_err(|(seq, mismatch)| BackupError::Corrupt {
                detail: format!("the audit checkpoint at entry {seq}: {mismatch}"),
            })?;
        Ok((entries, checkpoints))
    }
    .await;
    pool.close().await;
    outcome
}
