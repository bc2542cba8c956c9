//! The organisation as a certificate issuer: its signing key (kept in the vault's keyring), the
//! public keys of every key it ever used (its JWKS), and its signed status list.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use consult_certificate::{IssuerKey, Jwks, PublicJwk, StatusList};
use consult_vault::{Vault, VaultError};
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// Bits in the status list: one per certificate, drawn at random. At 2^20 the list is 128 KiB
/// before compression (a few hundred bytes after, while few bits are set), and a certificate's
/// index says nothing about when it was issued or how many were.
pub const STATUS_LIST_BITS: u64 = 1 << 20;

/// How long a signed status list is reused before it is signed again (a revocation on this
/// node is seen at once: it clears the cache).
const STATUS_LIST_REUSE: Duration = Duration::from_secs(5);
/// Verifiers fetch the list again after this (the token's `ttl`).
pub const STATUS_LIST_TTL_SECS: u64 = 60;
/// A fetched status list is not trusted after this (the token's `exp`).
const STATUS_LIST_VALID_SECS: u64 = 24 * 3600;

/// The issuer: built once at start-up from the vault's keyring.
pub struct CertificateIssuer {
    issuer: String,
    key: IssuerKey,
    jwks: Jwks,
    signed_status_list: Mutex<Option<(Instant, String)>>,
}

impl std::fmt::Debug for CertificateIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.key.kid())
            .finish_non_exhaustive()
    }
}

/// A new ES256 key in the form the keyring keeps: id, PKCS#8, public JWK.
pub fn new_signing_key() -> Result<(String, Zeroizing<Vec<u8>>, String), VaultError> {
    let key = IssuerKey::generate().map_err(|_| VaultError::Crypto("generate an issuer key"))?;
    let public = serde_json::to_string(&key.public_jwk())
        .map_err(|_| VaultError::Crypto("encode an issuer key"))?;
    Ok((
        key.kid().to_owned(),
        Zeroizing::new(key.pkcs8().to_vec()),
        public,
    ))
}

/// Why the issuer could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// The vault refused.
    #[error("the vault's signing key: {0}")]
    Vault(#[from] VaultError),
    /// A key in the keyring is not an issuer key.
    #[error("signing key {0} in the keyring is not an ES256 issuer key")]
    BadKey(String),
}

impl CertificateIssuer {
    /// The issuer `issuer` (its URL), signing with the keyring's current signing key (made
    /// now if there is none) and publishing every signing key's public key.
    pub fn load(vault: &Vault, issuer: String) -> Result<Self, IssuerError> {
        let current = vault.ensure_signing_key(new_signing_key)?;
        let private = current
            .private_key()?
            .ok_or_else(|| IssuerError::BadKey(current.id.clone()))?;
        let key =
            IssuerKey::from_pkcs8(&private).map_err(|_| IssuerError::BadKey(current.id.clone()))?;
        if key.kid() != current.id {
            return Err(IssuerError::BadKey(current.id.clone()));
        }
        let mut keys = Vec::new();
        for stored in vault.signing_keys()? {
            let jwk: PublicJwk = serde_json::from_str(&stored.public)
                .map_err(|_| IssuerError::BadKey(stored.id.clone()))?;
            if jwk.kid != stored.id {
                return Err(IssuerError::BadKey(stored.id.clone()));
            }
            keys.push(jwk);
        }
        if !keys.iter().any(|k| k.kid == key.kid()) {
            keys.push(key.public_jwk());
        }
        Ok(Self {
            issuer,
            key,
            jwks: Jwks { keys },
            signed_status_list: Mutex::new(None),
        })
    }

    /// The issuer URL (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The current signing key.
    pub fn key(&self) -> &IssuerKey {
        &self.key
    }

    /// Every public key, current and retired: `/.well-known/jwks.json`.
    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }

    /// Where the status list is published (the `uri` in every certificate).
    pub fn status_list_uri(&self) -> String {
        format!("{}/api/v1/certificates/status-list", self.issuer)
    }

    /// The signed status list made in the last few seconds, if any.
    pub fn cached_status_list(&self) -> Option<String> {
        let cached = self
            .signed_status_list
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        cached
            .as_ref()
            .filter(|(made, _)| made.elapsed() < STATUS_LIST_REUSE)
            .map(|(_, token)| token.clone())
    }

    /// Sign the status list with `revoked` set (and keep it for a few seconds).
    pub fn sign_status_list(&self, revoked: &[u64], now: OffsetDateTime) -> anyhow::Result<String> {
        let mut list = StatusList::new(STATUS_LIST_BITS)?;
        for idx in revoked {
            list.revoke(*idx)?;
        }
        let token = list.sign(
            &self.key,
            &self.status_list_uri(),
            now,
            STATUS_LIST_TTL_SECS,
            STATUS_LIST_VALID_SECS,
        )?;
        *self
            .signed_status_list
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), token.clone()));
        Ok(token)
    }

    /// Forget the signed status list (a certificate was revoked).
    pub fn status_changed(&self) {
        *self
            .signed_status_list
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }
}
