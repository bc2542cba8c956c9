//! Envelope encryption: a random data key per recording, wrapped (AES-256-GCM) by a versioned
//! key-encryption key (KEK) from the keyring.
//!
//! The keyring is a JSON file in the data directory, written with mode 0600. Rotating adds a new
//! KEK version; [`crate::Vault::rotate_keys`] then re-wraps every data key under it and retires
//! the old versions, without touching any media.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{write_atomically, VaultError};

/// Bytes of a data key and of a KEK (AES-256).
pub const KEY_LEN: usize = 32;

/// A recording's data key (AES-256-GCM). Zeroized on drop; `Debug` does not print it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; KEY_LEN]);

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, VaultError> {
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| VaultError::Crypto("random data key"))?;
        Ok(Self(key))
    }

    /// A key from its bytes (tests and benchmarks).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// A data key wrapped by one KEK version, as stored (one small file per recording).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedKey {
    /// Format version (1).
    pub format: u32,
    /// The recording the key belongs to (bound into the associated data).
    pub recording: Uuid,
    /// The KEK version that wraps it.
    pub kek_version: u32,
    /// AES-256-GCM nonce, base64.
    pub nonce: String,
    /// The wrapped key and tag, base64.
    pub ciphertext: String,
}

fn wrap_aad(recording: Uuid, kek_version: u32) -> Vec<u8> {
    let mut aad = b"consult-vault data key v1".to_vec();
    aad.extend_from_slice(recording.as_bytes());
    aad.extend_from_slice(&kek_version.to_be_bytes());
    aad
}

#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct StoredKek {
    #[zeroize(skip)]
    version: u32,
    /// Base64 of the 32 key bytes.
    key: String,
    #[zeroize(skip)]
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKeyring {
    format: u32,
    current: u32,
    keys: Vec<StoredKek>,
    /// The organisation's signing keys (medical certificates), newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    signing_keys: Vec<SigningKey>,
}

/// A signing key kept in the keyring (the certificate issuer's): its private key while it is
/// current, and its public key for ever, so that what it signed still verifies after rotation.
/// The vault does not interpret either: the key id and both forms are its owner's.
/// `Debug` prints the id and dates only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct SigningKey {
    /// The key id (its owner's, for example an RFC 7638 thumbprint).
    #[zeroize(skip)]
    pub id: String,
    /// The private key, base64 (for example PKCS#8); `None` once retired and destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<String>,
    /// The public key, as its owner publishes it (for example a JWK).
    #[zeroize(skip)]
    pub public: String,
    /// When it was made.
    #[zeroize(skip)]
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When a newer key replaced it (its private key destroyed then).
    #[zeroize(skip)]
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub retired_at: Option<OffsetDateTime>,
}

impl SigningKey {
    /// The private key's bytes, if it is still kept.
    pub fn private_key(&self) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, VaultError> {
        self.private
            .as_deref()
            .map(|text| {
                BASE64
                    .decode(text)
                    .map(zeroize::Zeroizing::new)
                    .map_err(|_| {
                        VaultError::BadKeyring(format!("signing key {} is not base64", self.id))
                    })
            })
            .transpose()
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// One KEK version, in memory.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct Kek([u8; KEY_LEN]);

/// The versioned key-encryption keys. `Debug` prints versions only.
pub struct Keyring {
    path: PathBuf,
    current: u32,
    keks: BTreeMap<u32, (Kek, OffsetDateTime)>,
    signing_keys: Vec<SigningKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("path", &self.path)
            .field("current", &self.current)
            .field("versions", &self.versions())
            .finish()
    }
}

fn random_kek() -> Result<Kek, VaultError> {
    let mut key = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| VaultError::Crypto("random KEK"))?;
    Ok(Kek(key))
}

fn aead(key: &[u8; KEY_LEN]) -> Result<LessSafeKey, VaultError> {
    let unbound =
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| VaultError::Crypto("AES-256-GCM key"))?;
    Ok(LessSafeKey::new(unbound))
}

impl Keyring {
    /// Load the keyring at `path`, or create one with a first KEK (version 1) if there is none.
    pub fn open_or_create(path: &Path) -> Result<Self, VaultError> {
        if path.exists() {
            return Self::open(path);
        }
        let mut keks = BTreeMap::new();
        keks.insert(1, (random_kek()?, OffsetDateTime::now_utc()));
        let keyring = Self {
            path: path.to_path_buf(),
            current: 1,
            keks,
            signing_keys: Vec::new(),
        };
        keyring.save()?;
        Ok(keyring)
    }

    /// Load the keyring at `path`.
    pub fn open(path: &Path) -> Result<Self, VaultError> {
        let text = fs::read_to_string(path)?;
        Self::parse(&text, path)
    }

    /// A keyring from the text of a `keyring.json` (a backup's copy), in memory only: it can
    /// wrap and unwrap, but adding or retiring versions fails, as it has no file.
    pub fn from_json(text: &str) -> Result<Self, VaultError> {
        Self::parse(text, Path::new(""))
    }

    fn parse(text: &str, path: &Path) -> Result<Self, VaultError> {
        let stored: StoredKeyring = serde_json::from_str(text)
            .map_err(|e| VaultError::BadKeyring(format!("{}: {e}", path.display())))?;
        if stored.format != 1 && stored.format != 2 {
            return Err(VaultError::BadKeyring(format!(
                "keyring format {} is not supported",
                stored.format
            )));
        }
        let mut keks = BTreeMap::new();
        for kek in &stored.keys {
            let mut bytes = BASE64.decode(&kek.key).map_err(|_| {
                VaultError::BadKeyring(format!("KEK {} is not base64", kek.version))
            })?;
            let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
                VaultError::BadKeyring(format!("KEK {} is not {KEY_LEN} bytes", kek.version))
            })?;
            bytes.zeroize();
            keks.insert(kek.version, (Kek(key), kek.created_at));
        }
        if !keks.contains_key(&stored.current) {
            return Err(VaultError::BadKeyring(format!(
                "the current KEK version {} is missing",
                stored.current
            )));
        }
        let mut ids = std::collections::BTreeSet::new();
        for key in &stored.signing_keys {
            if !ids.insert(key.id.as_str()) {
                return Err(VaultError::BadKeyring(format!(
                    "signing key {} is listed twice",
                    key.id
                )));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            current: stored.current,
            keks,
            signing_keys: stored.signing_keys,
        })
    }

    fn save(&self) -> Result<(), VaultError> {
        let stored = StoredKeyring {
            // 2 once it keeps signing keys: a build from before them refuses it by its format
            // (saying so) rather than by an unknown field. One way: such a build cannot open it.
            format: if self.signing_keys.is_empty() { 1 } else { 2 },
            current: self.current,
            keys: self
                .keks
                .iter()
                .map(|(version, (kek, created_at))| StoredKek {
                    version: *version,
                    key: BASE64.encode(kek.0),
                    created_at: *created_at,
                })
                .collect(),
            signing_keys: self.signing_keys.clone(),
        };
        let mut text = serde_json::to_vec_pretty(&stored)
            .map_err(|e| VaultError::BadKeyring(e.to_string()))?;
        let result = write_atomically(&self.path, &text, true);
        text.zeroize();
        result
    }

    /// The version new data keys are wrapped under.
    pub fn current_version(&self) -> u32 {
        self.current
    }

    /// Every KEK version present, oldest first.
    pub fn versions(&self) -> Vec<u32> {
        self.keks.keys().copied().collect()
    }

    /// Add a new KEK version and make it current (saved before this returns).
    pub fn add_version(&mut self) -> Result<u32, VaultError> {
        let version = self
            .current
            .max(self.keks.keys().max().copied().unwrap_or(0))
            + 1;
        self.keks
            .insert(version, (random_kek()?, OffsetDateTime::now_utc()));
        self.current = version;
        self.save()?;
        Ok(version)
    }

    /// Destroy every version but the current one (saved before this returns).
    pub fn retire_old_versions(&mut self) -> Result<Vec<u32>, VaultError> {
        let old: Vec<u32> = self
            .keks
            .keys()
            .copied()
            .filter(|v| *v != self.current)
            .collect();
        for version in &old {
            self.keks.remove(version);
        }
        self.save()?;
        Ok(old)
    }

    /// Take the signing keys another process saved in the keyring file since this one was
    /// loaded (the key-encryption keys only change while one process has the vault to itself).
    pub(crate) fn reload_signing_keys(&mut self) -> Result<(), VaultError> {
        let on_disk = Self::open(&self.path)?;
        self.signing_keys = on_disk.signing_keys.clone();
        Ok(())
    }

    /// The signing keys, oldest first: the last one not retired is the current one.
    pub fn signing_keys(&self) -> &[SigningKey] {
        &self.signing_keys
    }

    /// The current signing key (the newest, with its private key), if there is one.
    pub fn current_signing_key(&self) -> Option<&SigningKey> {
        self.signing_keys
            .last()
            .filter(|key| key.retired_at.is_none() && key.private.is_some())
    }

    /// Add a signing key and make it current: every older one is retired and its private key
    /// destroyed (its public key stays). Saved before this returns.
    pub fn add_signing_key(
        &mut self,
        id: &str,
        private: &[u8],
        public: &str,
    ) -> Result<(), VaultError> {
        if self.signing_keys.iter().any(|key| key.id == id) {
            return Err(VaultError::BadKeyring(format!(
                "signing key {id} is already in the keyring"
            )));
        }
        let now = OffsetDateTime::now_utc();
        for old in &mut self.signing_keys {
            if let Some(mut private) = old.private.take() {
                private.zeroize();
            }
            old.retired_at.get_or_insert(now);
        }
        self.signing_keys.push(SigningKey {
            id: id.to_owned(),
            private: Some(BASE64.encode(private)),
            public: public.to_owned(),
            created_at: now,
            retired_at: None,
        });
        self.save()
    }

    /// Wrap `key` for `recording` under the current KEK.
    pub fn wrap(&self, recording: Uuid, key: &DataKey) -> Result<WrappedKey, VaultError> {
        let version = self.current;
        let (kek, _) = self
            .keks
            .get(&version)
            .ok_or(VaultError::KekMissing { version })?;
        let mut nonce = [0u8; 12];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| VaultError::Crypto("random nonce"))?;
        let mut sealed = key.as_bytes().to_vec();
        aead(&kek.0)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(wrap_aad(recording, version)),
                &mut sealed,
            )
            .map_err(|_| VaultError::Crypto("wrap data key"))?;
        Ok(WrappedKey {
            format: 1,
            recording,
            kek_version: version,
            nonce: BASE64.encode(nonce),
            ciphertext: BASE64.encode(sealed),
        })
    }

    /// Unwrap a data key for `recording`.
    pub fn unwrap(&self, recording: Uuid, wrapped: &WrappedKey) -> Result<DataKey, VaultError> {
        if wrapped.recording != recording || wrapped.format != 1 {
            return Err(VaultError::KeyUnwrap { recording });
        }
        let version = wrapped.kek_version;
        let (kek, _) = self
            .keks
            .get(&version)
            .ok_or(VaultError::KekMissing { version })?;
        let nonce: [u8; 12] = BASE64
            .decode(&wrapped.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(VaultError::KeyUnwrap { recording })?;
        let mut sealed = BASE64
            .decode(&wrapped.ciphertext)
            .map_err(|_| VaultError::KeyUnwrap { recording })?;
        let opened = aead(&kek.0)?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(wrap_aad(recording, version)),
                &mut sealed,
            )
            .map_err(|_| VaultError::KeyUnwrap { recording })?;
        let key: [u8; KEY_LEN] = (&*opened)
            .try_into()
            .map_err(|_| VaultError::KeyUnwrap { recording })?;
        sealed.zeroize();
        Ok(DataKey(key))
    }
}
