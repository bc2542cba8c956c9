//! The vault's keys as a backup keeps them: one file, `escrow.json`, sealed under a fresh random
//! AES-256-GCM key each time (the key travels in the same file: the sealing makes every key
//! snapshot new bytes through and through, so no two share a chunk restic could deduplicate and
//! an old one's packs are deleted whole when it is forgotten). It never touches this side's disk:
//! it goes to restic's standard input and comes back from `restic dump`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use consult_vault::{Keyring, WrappedKey};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{rfc3339, BackupError};

/// The file name inside a key snapshot.
pub const ESCROW: &str = "escrow.json";

/// The keys: the keyring and every recording's wrapped data key.
#[derive(Serialize, Deserialize)]
pub struct Escrow {
    /// The installation they belong to.
    pub installation: Uuid,
    /// When they were read.
    pub taken_at: String,
    /// `keyring.json`, as is (`null`: the vault never made one).
    pub keyring: Value,
    /// `keys/<id>.json`, as is, by recording id.
    pub keys: BTreeMap<Uuid, Value>,
    /// When each recording's retention ends (Unix seconds): a key carried forward for a
    /// recording the database does not know is dropped then, as retention would shred it.
    #[serde(default)]
    pub retain_until: BTreeMap<Uuid, i64>,
}

/// What the database says of a recording when its keys are gathered.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    /// Shredded: its key is never kept or carried.
    pub shredded: bool,
    /// When its retention ends (Unix seconds).
    pub retain_until: i64,
}

/// The sealed form.
#[derive(Serialize, Deserialize)]
struct SealedEscrow {
    format: u32,
    installation: Uuid,
    key: String,
    nonce: String,
    sealed: String,
}

/// Read the vault's keys for a backup, under the vault's shared lock (so no key rotation is
/// half-way through).
///
/// * A recording the database knows as live: its key from the vault.
/// * One the database knows as shredded: no key, whatever is left anywhere.
/// * One the database does not know (made after the backup this installation was restored
///   from, or by another copy of it): its key carried forward from `previous`, the repository's
///   current keys, re-wrapped under this keyring if it was wrapped under another — so restoring
///   an older backup never costs a later recording its key, and a key dropped by a shred is
///   never carried (it is in no current keys any more).
pub fn gather(
    vault_dir: &Path,
    installation: Uuid,
    known: &HashMap<Uuid, Known>,
    previous: Option<Escrow>,
    now: i64,
) -> Result<Escrow, BackupError> {
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
    let keyring_path = vault_dir.join("keyring.json");
    let keyring: Value = match fs::read(&keyring_path) {
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
        if known.get(&id).is_some_and(|k| k.shredded) {
            continue;
        }
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
    let mut keyring = keyring;
    let mut retain_until: BTreeMap<Uuid, i64> = known
        .iter()
        .filter(|(id, k)| !k.shredded && keys.contains_key(id))
        .map(|(id, k)| (*id, k.retain_until))
        .collect();
    if let Some(previous) = previous {
        // No keyring here yet (the vault never opened): the keys' own keyring comes along.
        let no_keyring = keyring.is_null();
        if no_keyring {
            keyring = previous.keyring.clone();
        }
        // Carried while their retention lasts (unknown retention: kept).
        let unknown: Vec<(Uuid, Value)> = previous
            .keys
            .into_iter()
            .filter(|(id, _)| !known.contains_key(id) && !keys.contains_key(id))
            .filter(|(id, _)| {
                previous
                    .retain_until
                    .get(id)
                    .is_none_or(|until| *until > now)
            })
            .collect();
        for (id, _) in &unknown {
            if let Some(until) = previous.retain_until.get(id) {
                retain_until.insert(*id, *until);
            }
        }
        if no_keyring {
            keys.extend(unknown);
        } else if !unknown.is_empty() {
            carry_forward(&keyring_path, &previous.keyring, unknown, &mut keys)?;
        }
    }
    drop(lock);
    Ok(Escrow {
        installation,
        taken_at: rfc3339(time::OffsetDateTime::now_utc()),
        keyring,
        keys,
        retain_until,
    })
}

/// Add `unknown` keys to `keys`: as they are if this keyring opens them, otherwise opened with
/// the keyring they were saved with and wrapped again under this one.
fn carry_forward(
    keyring_path: &Path,
    previous_keyring: &Value,
    unknown: Vec<(Uuid, Value)>,
    keys: &mut BTreeMap<Uuid, Value>,
) -> Result<(), BackupError> {
    let vault_error = |e: consult_vault::VaultError| BackupError::Corrupt {
        detail: format!("carrying keys forward: {e}"),
    };
    let current = Keyring::open(keyring_path).map_err(vault_error)?;
    let mut old: Option<Keyring> = None;
    for (id, value) in unknown {
        let wrapped: WrappedKey =
            serde_json::from_value(value.clone()).map_err(|e| BackupError::Corrupt {
                detail: format!("the backed-up key of recording {id}: {e}"),
            })?;
        if current.unwrap(id, &wrapped).is_ok() {
            keys.insert(id, value);
            continue;
        }
        if old.is_none() {
            // In memory only: the previous keyring never touches a disk here.
            let text = previous_keyring.to_string();
            old = Some(Keyring::from_json(&text).map_err(vault_error)?);
        }
        let Some(old) = &old else { continue };
        let key = old.unwrap(id, &wrapped).map_err(vault_error)?;
        let rewrapped = current.wrap(id, &key).map_err(vault_error)?;
        keys.insert(
            id,
            serde_json::to_value(rewrapped).map_err(|e| BackupError::Database(e.to_string()))?,
        );
    }
    Ok(())
}

/// Seal `escrow` under a fresh key.
pub fn seal(escrow: &Escrow) -> Result<Vec<u8>, BackupError> {
    let mut plain = serde_json::to_vec(escrow).map_err(|e| BackupError::Database(e.to_string()))?;
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
            Aad::from(escrow.installation.as_bytes()),
            &mut plain,
        )
        .map_err(|_| std::io::Error::other("sealing the keys"))?;
    let sealed = SealedEscrow {
        format: 1,
        installation: escrow.installation,
        key: BASE64.encode(key),
        nonce: BASE64.encode(nonce),
        sealed: BASE64.encode(&plain),
    };
    key.fill(0);
    serde_json::to_vec(&sealed).map_err(|e| BackupError::Database(e.to_string()))
}

/// Open a sealed escrow.
pub fn open(bytes: &[u8]) -> Result<Escrow, BackupError> {
    let corrupt = |detail: &str| BackupError::Corrupt {
        detail: format!("the key snapshot: {detail}"),
    };
    let sealed: SealedEscrow =
        serde_json::from_slice(bytes).map_err(|_| corrupt("escrow.json is malformed"))?;
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
    let escrow: Escrow = serde_json::from_slice(plain).map_err(|_| corrupt("malformed content"))?;
    if escrow.installation != sealed.installation {
        return Err(corrupt("names two installations"));
    }
    Ok(escrow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(retain_until: i64) -> Known {
        Known {
            shredded: false,
            retain_until,
        }
    }

    fn vault_with_one_recording(dir: &Path) -> (std::path::PathBuf, Uuid) {
        let vault_dir = dir.join("vault");
        let vault = consult_vault::Vault::open(&vault_dir).unwrap();
        let id = Uuid::new_v4();
        let mut writer = vault.create_recording(id).unwrap();
        writer.finish(b"media").unwrap();
        (vault_dir, id)
    }

    #[test]
    fn sealed_keys_open_and_refuse_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let (vault_dir, id) = vault_with_one_recording(dir.path());
        let installation = Uuid::new_v4();
        let known = HashMap::from([(id, live(i64::MAX))]);
        let escrow = gather(&vault_dir, installation, &known, None, 0).unwrap();
        let first = seal(&escrow).unwrap();
        let opened = open(&first).unwrap();
        assert_eq!(opened.installation, installation);
        assert!(opened.keys.contains_key(&id));

        // The same keys sealed again are other bytes through and through.
        let second = seal(&escrow).unwrap();
        assert_ne!(first, second);

        // Another installation's name on it is refused.
        let mut sealed: SealedEscrow = serde_json::from_slice(&second).unwrap();
        sealed.installation = Uuid::new_v4();
        assert!(matches!(
            open(&serde_json::to_vec(&sealed).unwrap()),
            Err(BackupError::Corrupt { .. })
        ));
    }

    #[test]
    fn shredded_keys_are_left_out_and_unknown_ones_carried_forward() {
        let dir = tempfile::tempdir().unwrap();
        let (vault_dir, id) = vault_with_one_recording(dir.path());
        let installation = Uuid::new_v4();
        let later = Uuid::new_v4();
        let shredded = Uuid::new_v4();

        // Keys from another keyring (another copy of the installation, rotated since).
        let other = tempfile::tempdir().unwrap();
        let other_vault = consult_vault::Vault::open(other.path()).unwrap();
        for recording in [later, shredded] {
            other_vault
                .create_recording(recording)
                .unwrap()
                .finish(b"x")
                .unwrap();
        }
        let expired = Uuid::new_v4();
        other_vault
            .create_recording(expired)
            .unwrap()
            .finish(b"x")
            .unwrap();
        let previous = gather(
            other.path(),
            installation,
            &HashMap::from([
                (later, live(2000)),
                (shredded, live(2000)),
                (expired, live(999)),
            ]),
            None,
            0,
        )
        .unwrap();
        let later_key = other_vault.data_key(later).unwrap();

        let known = HashMap::from([
            (id, live(i64::MAX)),
            (
                shredded,
                Known {
                    shredded: true,
                    retain_until: 2000,
                },
            ),
        ]);
        let escrow = gather(&vault_dir, installation, &known, Some(previous), 1000).unwrap();
        assert!(escrow.keys.contains_key(&id));
        assert!(
            !escrow.keys.contains_key(&shredded),
            "the database says shredded"
        );
        assert!(
            !escrow.keys.contains_key(&expired),
            "past its retention: not carried"
        );
        assert_eq!(escrow.retain_until.get(&later), Some(&2000));
        // Carried forward, re-wrapped under this vault's keyring: it opens with it.
        let wrapped: WrappedKey = serde_json::from_value(escrow.keys[&later].clone()).unwrap();
        let keyring = Keyring::open(&vault_dir.join("keyring.json")).unwrap();
        assert_eq!(
            keyring.unwrap(later, &wrapped).unwrap().as_bytes(),
            later_key.as_bytes()
        );
    }
}
