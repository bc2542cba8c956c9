//! Random tokens and how they are kept: every token handed to a client is 256 random bits,
//! base64url-encoded, and the service stores only its SHA-256.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A secret token as handed to a client. Never `Debug`-printed, zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// 256 fresh random bits from the operating system.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let token = Self(URL_SAFE_NO_PAD.encode(bytes));
        bytes.zeroize();
        token
    }

    /// Wrap a token received from a client.
    pub fn from_client(text: &str) -> Self {
        Self(text.to_owned())
    }

    /// The token text, to send to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the database keeps: the hex SHA-256 of the token.
    pub fn hash(&self) -> TokenHash {
        TokenHash(hex_sha256(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The stored form of a [`Token`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenHash(pub String);

/// The token in the request cookie `name`, if any.
pub fn token_from_cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<Token> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(cookie, _)| *cookie == name)
        .map(|(_, value)| Token::from_client(value))
}

impl TokenHash {
    /// Compare in constant time.
    pub fn matches(&self, other: &TokenHash) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

/// Lower-case hex SHA-256.
pub fn hex_sha256(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_bit_unique_and_hashed() {
        let a = Token::generate();
        let b = Token::generate();
        assert_ne!(a, b);
        assert_eq!(URL_SAFE_NO_PAD.decode(a.expose()).unwrap().len(), 32);
        assert_eq!(a.hash().0.len(), 64);
        assert!(a.hash().matches(&Token::from_client(a.expose()).hash()));
        assert!(!a.hash().matches(&b.hash()));
        assert_eq!(format!("{a:?}"), "Token(<redacted>)");
    }

    #[test]
    fn sha256_matches_the_standard_vector() {
        assert_eq!(
            hex_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

/// Seals secrets the service must be able to read back (TOTP seeds) with AES-256-GCM under a key
/// kept in the data directory, outside the database: a copy of the database alone (a backup, a
/// leaked file) does not reveal them. Each sealed value is bound to what it belongs to (the
/// associated data), so it cannot be moved to another row.
pub struct SealingKey(aes_gcm::Aes256Gcm);

/// Why a sealed value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Not of the form `v1:<base64>`, or too short.
    #[error("malformed sealed value")]
    Malformed,
    /// Wrong key, wrong owner, or tampered with.
    #[error("sealed value does not authenticate")]
    Unauthentic,
    /// The key file could not be read or written.
    #[error("sealing key: {0}")]
    Key(#[from] std::io::Error),
}

const SEALED_PREFIX: &str = "v1:";

/// The bearer token of `/metrics` on the main listener: `configured`, or the one in
/// `DATA_DIR/keys/metrics.token` (created, owner-only, 256 random bits, on first use).
pub fn metrics_token(
    data_dir: &std::path::Path,
    configured: Option<&str>,
) -> std::io::Result<String> {
    kept_token(data_dir, "metrics.token", configured)
}

/// A shared secret: `configured`, or the one in `DATA_DIR/keys/<file_name>` (created,
/// owner-only, 256 random bits, on first use).
pub fn kept_token(
    data_dir: &std::path::Path,
    file_name: &str,
    configured: Option<&str>,
) -> std::io::Result<String> {
    if let Some(token) = configured {
        return Ok(token.trim().to_owned());
    }
    let dir = data_dir.join("keys");
    let path = dir.join(file_name);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        Ok(_) => Err(std::io::Error::other(format!(
            "{} is empty",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&dir)?;
            let token = Token::generate();
            crate::server::write_private(&path, token.expose().as_bytes())?;
            Ok(token.expose().to_owned())
        }
        Err(e) => Err(e),
    }
}

impl SealingKey {
    /// Load `DATA_DIR/keys/seal.key`, creating it (owner-only) on first use.
    pub fn load_or_create(data_dir: &std::path::Path) -> Result<Self, SealError> {
        use aes_gcm::KeyInit;
        let dir = data_dir.join("keys");
        let path = dir.join("seal.key");
        let mut key = [0u8; 32];
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let bytes = URL_SAFE_NO_PAD
                    .decode(text.trim())
                    .map_err(|_| SealError::Malformed)?;
                if bytes.len() != 32 {
                    return Err(SealError::Malformed);
                }
                key.copy_from_slice(&bytes);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir)?;
                OsRng.fill_bytes(&mut key);
                crate::server::write_private(&path, URL_SAFE_NO_PAD.encode(key).as_bytes())?;
            }
            Err(e) => return Err(e.into()),
        }
        let cipher = aes_gcm::Aes256Gcm::new_from_slice(&key).map_err(|_| SealError::Malformed)?;
        key.zeroize();
        Ok(Self(cipher))
    }

    /// Seal `plaintext` for `owner` (associated data).
    pub fn seal(&self, plaintext: &str, owner: &str) -> String {
        use aes_gcm::aead::{Aead, Payload};
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .0
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: owner.as_bytes(),
                },
            )
            // AES-GCM encryption only fails for inputs far beyond a TOTP seed's size.
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{SEALED_PREFIX}{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// Open a value sealed for `owner`.
    pub fn open(&self, sealed: &str, owner: &str) -> Result<String, SealError> {
        use aes_gcm::aead::{Aead, Payload};
        let encoded = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or(SealError::Malformed)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| SealError::Malformed)?;
        if bytes.len() < 12 + 16 {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let plain = self
            .0
            .decrypt(
                nonce.into(),
                Payload {
                    msg: ciphertext,
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| SealError::Unauthentic)?;
        String::from_utf8(plain).map_err(|_| SealError::Malformed)
    }
}

#[cfg(test)]
mod sealing_tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_key_and_for_their_owner() {
        let dir = tempfile::tempdir().unwrap();
        let key = SealingKey::load_or_create(dir.path()).unwrap();
        let sealed = key.seal("JBSWY3DPEHPK3PXP", "totp:alice");
        assert!(sealed.starts_with("v1:") && !sealed.contains("JBSWY3DPEHPK3PXP"));
        assert_ne!(
            sealed,
            key.seal("JBSWY3DPEHPK3PXP", "totp:alice"),
            "fresh nonce each time"
        );
        assert_eq!(key.open(&sealed, "totp:alice").unwrap(), "JBSWY3DPEHPK3PXP");
        assert!(matches!(
            key.open(&sealed, "totp:mallory"),
            Err(SealError::Unauthentic)
        ));
        // The key persists across restarts; another data directory has another key.
        let again = SealingKey::load_or_create(dir.path()).unwrap();
        assert_eq!(
            again.open(&sealed, "totp:alice").unwrap(),
            "JBSWY3DPEHPK3PXP"
        );
        let other = SealingKey::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(matches!(
            other.open(&sealed, "totp:alice"),
            Err(SealError::Unauthentic)
        ));
        // Tampering and garbage are refused.
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(key
            .open(std::str::from_utf8(&tampered).unwrap(), "totp:alice")
            .is_err());
        assert!(matches!(
            key.open("JBSWY3DPEHPK3PXP", "totp:alice"),
            Err(SealError::Malformed)
        ));
        assert!(matches!(
            key.open("v1:AAAA", "totp:alice"),
            Err(SealError::Malformed)
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("keys/seal.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0);
        }
    }
}
