//! Small documents sealed for storage elsewhere (a database row): each under its own random data
//! key, wrapped by the keyring's current KEK like a recording's. Destroying the wrapped key
//! (crypto-shredding) makes every copy of the document unreadable, and rotating the keyring
//! re-wraps the key without touching the sealed bytes.
//!
//! ```
//! use consult_vault::Vault;
//! # fn main() -> Result<(), consult_vault::VaultError> {
//! let dir = tempfile::tempdir()?;
//! let vault = Vault::open(dir.path())?;
//! let id = uuid::Uuid::new_v4();
//! let sealed = vault.seal_document(id, b"a medical certificate")?;
//! assert_eq!(&*vault.open_document(id, &sealed)?, b"a medical certificate");
//! // Bound to its id: it does not open as another document.
//! assert!(vault.open_document(uuid::Uuid::new_v4(), &sealed).is_err());
//! # Ok(()) }
//! ```

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{DataKey, VaultError, WrappedKey};

/// The largest document [`crate::Vault::seal_document`] seals (1 MiB).
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// A sealed document as stored: its wrapped data key and its ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedDocument {
    /// The document's data key, wrapped by a KEK of the keyring.
    pub key: WrappedKey,
    /// AES-256-GCM nonce, base64.
    pub nonce: String,
    /// The document and tag, base64.
    pub ciphertext: String,
}

fn document_aad(id: Uuid) -> Vec<u8> {
    let mut aad = b"consult-vault document v1".to_vec();
    aad.extend_from_slice(id.as_bytes());
    aad
}

fn aead(key: &DataKey) -> Result<LessSafeKey, VaultError> {
    let unbound = UnboundKey::new(&AES_256_GCM, key.as_bytes())
        .map_err(|_| VaultError::Crypto("AES-256-GCM key"))?;
    Ok(LessSafeKey::new(unbound))
}

/// Seal `plaintext` as document `id` under `key`.
pub(crate) fn seal(
    id: Uuid,
    key: &DataKey,
    wrapped: WrappedKey,
    plaintext: &[u8],
) -> Result<SealedDocument, VaultError> {
    if plaintext.len() > MAX_DOCUMENT_BYTES {
        return Err(VaultError::ChunkTooLarge(plaintext.len()));
    }
    let mut nonce = [0u8; 12];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| VaultError::Crypto("random nonce"))?;
    let mut sealed = plaintext.to_vec();
    aead(key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(document_aad(id)),
            &mut sealed,
        )
        .map_err(|_| VaultError::Crypto("seal document"))?;
    Ok(SealedDocument {
        key: wrapped,
        nonce: BASE64.encode(nonce),
        ciphertext: BASE64.encode(sealed),
    })
}

/// Open document `id` with its unwrapped `key`.
pub(crate) fn open(
    id: Uuid,
    key: &DataKey,
    sealed: &SealedDocument,
) -> Result<zeroize::Zeroizing<Vec<u8>>, VaultError> {
    let nonce: [u8; 12] = BASE64
        .decode(&sealed.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or(VaultError::Corrupt { chunk: 0 })?;
    let mut bytes = zeroize::Zeroizing::new(
        BASE64
            .decode(&sealed.ciphertext)
            .map_err(|_| VaultError::Corrupt { chunk: 0 })?,
    );
    let len = aead(key)?
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(document_aad(id)),
            &mut bytes,
        )
        .map_err(|_| VaultError::Corrupt { chunk: 0 })?
        .len();
    bytes.truncate(len);
    Ok(bytes)
}
