//! Zero-knowledge recording: the clinician's recording key, and SFrame base keys wrapped to it.
//!
//! The recorder of an end-to-end encrypted consultation stores SFrame ciphertext it cannot open.
//! Each client wraps every base key it sends the recorder media under to the clinician's
//! recording public key with HPKE (RFC 9180, base mode, DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256, AES-256-GCM), bound to the recording, the sender and the KID:
//!
//! ```text
//! info = "consult recording epoch key v1"
//! aad  = recording id (16) ‖ sender participant id (16) ‖ kid (u64) ‖ suite (u16)
//! wrapped = enc (32) ‖ AES-256-GCM ciphertext of the base key, with its tag
//! ```
//!
//! The private key lives only in the clinician's key file, sealed under their passphrase
//! (Argon2id, then AES-256-GCM), and is unlocked only where they export.
//!
//! ```
//! use consult_e2ee::recording_key::{RecordingKeyPair, RecordingKeyFile, EpochKeyBinding};
//! use consult_e2ee::sframe::{BaseKey, Suite};
//! let pair = RecordingKeyPair::generate(&mut rand_core::OsRng);
//! let file = RecordingKeyFile::seal(&pair, "correct horse battery staple", &mut rand_core::OsRng).unwrap();
//! let binding = EpochKeyBinding { recording: [1; 16], sender: [2; 16], kid: 0x2a0001, suite: Suite::Aes128Gcm };
//! let wrapped = binding.wrap(&pair.public(), &BaseKey::new(vec![7; 16]), &mut rand_core::OsRng).unwrap();
//!
//! let unlocked = file.unlock("correct horse battery staple").unwrap();
//! assert_eq!(unlocked.unwrap_epoch_key(&binding, &wrapped).unwrap().expose(), &[7; 16]);
//! assert!(file.unlock("wrong").is_err());
//! ```

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::sframe::{BaseKey, Suite};

/// The HPKE `info` of a wrapped epoch key.
pub const EPOCH_KEY_INFO: &[u8] = b"consult recording epoch key v1";

/// Bytes of an X25519 public key, and of HPKE's `enc`.
pub const PUBLIC_KEY_LEN: usize = 32;

/// What can go wrong with recording keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordingKeyError {
    /// Not a 32-byte X25519 public key in base64.
    #[error("not a recording public key (32 bytes of X25519, base64)")]
    BadPublicKey,
    /// The key file is not one (or of another version).
    #[error("not a Consult recording key file: {0}")]
    BadKeyFile(String),
    /// The passphrase does not open the key file (or the file was altered).
    #[error("the passphrase does not open this recording key file (or the file was altered)")]
    WrongPassphrase,
    /// A wrapped epoch key does not open: another clinician's key, another recording or sender,
    /// or altered.
    #[error("the wrapped SFrame key does not open with this recording key (another clinician's key, or altered)")]
    DoesNotOpen,
    /// HPKE could not seal (a bad public key).
    #[error("HPKE could not seal to this public key")]
    Seal,
    /// Argon2 failed.
    #[error("passphrase hashing failed: {0}")]
    Kdf(String),
}

/// The clinician's recording public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingPublicKey([u8; PUBLIC_KEY_LEN]);

impl RecordingPublicKey {
    /// From its base64 form (as the API and the key file carry it).
    pub fn from_base64(text: &str) -> Result<Self, RecordingKeyError> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| RecordingKeyError::BadPublicKey)?;
        let bytes: [u8; PUBLIC_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| RecordingKeyError::BadPublicKey)?;
        // HPKE refuses keys it cannot use (for example all zeros) at seal time; check now.
        <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(&bytes)
            .map_err(|_| RecordingKeyError::BadPublicKey)?;
        Ok(Self(bytes))
    }

    /// Its base64 form.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }
}

/// The clinician's recording key pair (the private half zeroized on drop).
pub struct RecordingKeyPair {
    private: Zeroizing<[u8; 32]>,
    public: RecordingPublicKey,
}

impl std::fmt::Debug for RecordingKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingKeyPair")
            .field("public", &self.public.to_base64())
            .finish_non_exhaustive()
    }
}

impl RecordingKeyPair {
    /// A fresh key pair.
    pub fn generate(rng: &mut (impl CryptoRng + RngCore)) -> Self {
        let mut ikm = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut ikm[..]);
        let (private, public) = X25519HkdfSha256::derive_keypair(&ikm[..]);
        Self::from_parts(&private.to_bytes(), &public.to_bytes())
    }

    /// From a raw X25519 private key (test vectors).
    pub fn from_private_bytes(bytes: &[u8; 32]) -> Result<Self, RecordingKeyError> {
        let private = <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(bytes)
            .map_err(|_| RecordingKeyError::BadKeyFile("not an X25519 private key".into()))?;
        let public = X25519HkdfSha256::sk_to_pk(&private);
        Ok(Self::from_parts(&private.to_bytes(), &public.to_bytes()))
    }

    fn from_parts(private: &[u8], public: &[u8]) -> Self {
        let mut sk = Zeroizing::new([0u8; 32]);
        sk.copy_from_slice(private);
        let mut pk = [0u8; 32];
        pk.copy_from_slice(public);
        Self {
            private: sk,
            public: RecordingPublicKey(pk),
        }
    }

    /// The public half, to register with the service.
    pub fn public(&self) -> RecordingPublicKey {
        self.public.clone()
    }

    /// Open a wrapped epoch key.
    pub fn unwrap_epoch_key(
        &self,
        binding: &EpochKeyBinding,
        wrapped: &[u8],
    ) -> Result<BaseKey, RecordingKeyError> {
        if wrapped.len() <= PUBLIC_KEY_LEN {
            return Err(RecordingKeyError::DoesNotOpen);
        }
        let (enc, ciphertext) = wrapped.split_at(PUBLIC_KEY_LEN);
        let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(enc)
            .map_err(|_| RecordingKeyError::DoesNotOpen)?;
        let private = <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(&self.private[..])
            .map_err(|_| RecordingKeyError::DoesNotOpen)?;
        let plaintext = hpke::single_shot_open::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &private,
            &enc,
            EPOCH_KEY_INFO,
            ciphertext,
            &binding.aad(),
        )
        .map_err(|_| RecordingKeyError::DoesNotOpen)?;
        if plaintext.len() != binding.suite.base_key_len() {
            return Err(RecordingKeyError::DoesNotOpen);
        }
        Ok(BaseKey::new(plaintext))
    }
}

/// What a wrapped epoch key is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochKeyBinding {
    /// The recording's id (UUID bytes).
    pub recording: [u8; 16],
    /// The sending participant's id (UUID bytes).
    pub sender: [u8; 16],
    /// The SFrame KID the key is for.
    pub kid: u64,
    /// The SFrame suite.
    pub suite: Suite,
}

impl EpochKeyBinding {
    /// The HPKE associated data.
    pub fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(42);
        aad.extend_from_slice(&self.recording);
        aad.extend_from_slice(&self.sender);
        aad.extend_from_slice(&self.kid.to_be_bytes());
        aad.extend_from_slice(&self.suite.id().to_be_bytes());
        aad
    }

    /// Wrap `base_key` to the clinician's `recipient` key: `enc ‖ ciphertext`.
    pub fn wrap(
        &self,
        recipient: &RecordingPublicKey,
        base_key: &BaseKey,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<Vec<u8>, RecordingKeyError> {
        let public = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(&recipient.0)
            .map_err(|_| RecordingKeyError::BadPublicKey)?;
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut seed[..]);
        let mut hpke_rng =
            <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::from_seed(*seed);
        let (enc, ciphertext) =
            hpke::single_shot_seal::<AesGcm256, HkdfSha256, X25519HkdfSha256, _>(
                &OpModeS::Base,
                &public,
                EPOCH_KEY_INFO,
                base_key.expose(),
                &self.aad(),
                &mut hpke_rng,
            )
            .map_err(|_| RecordingKeyError::Seal)?;
        let mut wrapped = enc.to_bytes().to_vec();
        wrapped.extend_from_slice(&ciphertext);
        Ok(wrapped)
    }
}

/// Argon2id cost of the key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfParams {
    /// "argon2id".
    pub algorithm: KdfAlgorithm,
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

/// The passphrase hash of a key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KdfAlgorithm {
    /// Argon2id (RFC 9106).
    Argon2id,
}

impl Default for KdfParams {
    fn default() -> Self {
        Self {
            algorithm: KdfAlgorithm::Argon2id,
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

/// The clinician's key file: the public key in the clear, the private key sealed under their
/// passphrase (Argon2id → AES-256-GCM, the public key as associated data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingKeyFile {
    /// 1.
    pub format: u32,
    /// "consult-recording-key".
    pub kind: String,
    /// The public key, base64: what the clinician registers with the service.
    pub public_key: String,
    /// How the passphrase becomes the sealing key.
    pub kdf: KdfParams,
    /// Argon2 salt, base64.
    pub salt: String,
    /// AES-256-GCM nonce, base64.
    pub nonce: String,
    /// The sealed private key, base64.
    pub ciphertext: String,
}

const KIND: &str = "consult-recording-key";

fn derive(
    passphrase: &str,
    salt: &[u8],
    kdf: &KdfParams,
) -> Result<Zeroizing<[u8; 32]>, RecordingKeyError> {
    let params = argon2::Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32))
        .map_err(|e| RecordingKeyError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut key[..])
        .map_err(|e| RecordingKeyError::Kdf(e.to_string()))?;
    Ok(key)
}

impl RecordingKeyFile {
    /// Seal `pair` under `passphrase` with the default Argon2id cost.
    pub fn seal(
        pair: &RecordingKeyPair,
        passphrase: &str,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<Self, RecordingKeyError> {
        Self::seal_with(pair, passphrase, KdfParams::default(), rng)
    }

    /// Seal with a given Argon2id cost.
    pub fn seal_with(
        pair: &RecordingKeyPair,
        passphrase: &str,
        kdf: KdfParams,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<Self, RecordingKeyError> {
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        let key = derive(passphrase, &salt, &kdf)?;
        let cipher = Aes256Gcm::new_from_slice(&key[..])
            .map_err(|e| RecordingKeyError::Kdf(e.to_string()))?;
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &pair.private[..],
                    aad: pair.public.as_bytes(),
                },
            )
            .map_err(|_| RecordingKeyError::Kdf("sealing failed".into()))?;
        Ok(Self {
            format: 1,
            kind: KIND.into(),
            public_key: pair.public.to_base64(),
            kdf,
            salt: BASE64.encode(salt),
            nonce: BASE64.encode(nonce),
            ciphertext: BASE64.encode(ciphertext),
        })
    }

    /// Parse a key file's JSON.
    pub fn from_json(text: &str) -> Result<Self, RecordingKeyError> {
        let file: Self =
            serde_json::from_str(text).map_err(|e| RecordingKeyError::BadKeyFile(e.to_string()))?;
        if file.format != 1 || file.kind != KIND {
            return Err(RecordingKeyError::BadKeyFile(format!(
                "format {} of kind {:?}",
                file.format, file.kind
            )));
        }
        Ok(file)
    }

    /// The file as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The public key it holds.
    pub fn public_key(&self) -> Result<RecordingPublicKey, RecordingKeyError> {
        RecordingPublicKey::from_base64(&self.public_key)
    }

    /// Unlock the private key with the passphrase.
    pub fn unlock(&self, passphrase: &str) -> Result<RecordingKeyPair, RecordingKeyError> {
        let public = self.public_key()?;
        let decode = |s: &str| {
            BASE64
                .decode(s)
                .map_err(|_| RecordingKeyError::BadKeyFile("a field is not base64".into()))
        };
        let (salt, nonce, ciphertext) = (
            decode(&self.salt)?,
            decode(&self.nonce)?,
            decode(&self.ciphertext)?,
        );
        if nonce.len() != 12 {
            return Err(RecordingKeyError::BadKeyFile(
                "the nonce is not 12 bytes".into(),
            ));
        }
        let key = derive(passphrase, &salt, &self.kdf)?;
        let cipher = Aes256Gcm::new_from_slice(&key[..])
            .map_err(|e| RecordingKeyError::Kdf(e.to_string()))?;
        let private = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &ciphertext,
                        aad: public.as_bytes(),
                    },
                )
                .map_err(|_| RecordingKeyError::WrongPassphrase)?,
        );
        let private: [u8; 32] = private
            .as_slice()
            .try_into()
            .map_err(|_| RecordingKeyError::WrongPassphrase)?;
        let pair = RecordingKeyPair::from_private_bytes(&private)?;
        if pair.public != public {
            return Err(RecordingKeyError::WrongPassphrase);
        }
        Ok(pair)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    fn cheap() -> KdfParams {
        KdfParams {
            memory_kib: 256,
            iterations: 1,
            ..KdfParams::default()
        }
    }

    fn binding() -> EpochKeyBinding {
        EpochKeyBinding {
            recording: [1; 16],
            sender: [2; 16],
            kid: 0x1a_0003,
            suite: Suite::Aes128Gcm,
        }
    }

    #[test]
    fn a_wrapped_key_opens_only_with_its_binding_and_key() {
        let pair = RecordingKeyPair::generate(&mut OsRng);
        let other = RecordingKeyPair::generate(&mut OsRng);
        let base = BaseKey::new(vec![9; 16]);
        let wrapped = binding().wrap(&pair.public(), &base, &mut OsRng).unwrap();
        assert_eq!(
            pair.unwrap_epoch_key(&binding(), &wrapped)
                .unwrap()
                .expose(),
            &[9; 16]
        );
        assert_eq!(
            other.unwrap_epoch_key(&binding(), &wrapped).unwrap_err(),
            RecordingKeyError::DoesNotOpen
        );
        for changed in [
            EpochKeyBinding {
                kid: 0x1a_0004,
                ..binding()
            },
            EpochKeyBinding {
                sender: [3; 16],
                ..binding()
            },
            EpochKeyBinding {
                recording: [4; 16],
                ..binding()
            },
        ] {
            assert!(pair.unwrap_epoch_key(&changed, &wrapped).is_err());
        }
        let mut flipped = wrapped.clone();
        flipped[40] ^= 1;
        assert!(pair.unwrap_epoch_key(&binding(), &flipped).is_err());
        assert!(pair.unwrap_epoch_key(&binding(), &wrapped[..20]).is_err());
    }

    #[test]
    fn the_key_file_opens_only_with_its_passphrase_and_unaltered() {
        let pair = RecordingKeyPair::generate(&mut OsRng);
        let file = RecordingKeyFile::seal_with(&pair, "s3cret pass", cheap(), &mut OsRng).unwrap();
        let parsed = RecordingKeyFile::from_json(&file.to_json()).unwrap();
        assert_eq!(
            parsed.unlock("s3cret pass").unwrap().public(),
            pair.public()
        );
        assert_eq!(
            parsed.unlock("s3cret pas").unwrap_err(),
            RecordingKeyError::WrongPassphrase
        );
        // Another public key pasted in: the sealed private key does not open under it.
        let mut swapped = parsed.clone();
        swapped.public_key = RecordingKeyPair::generate(&mut OsRng).public().to_base64();
        assert_eq!(
            swapped.unlock("s3cret pass").unwrap_err(),
            RecordingKeyError::WrongPassphrase
        );
        assert!(RecordingKeyFile::from_json("{\"format\":2}").is_err());
        assert!(RecordingPublicKey::from_base64("AAAA").is_err());
    }
}

#[cfg(test)]
mod vectors {
    use super::*;

    fn hex(s: &serde_json::Value) -> Vec<u8> {
        hex::decode(s.as_str().unwrap_or_default()).unwrap_or_default()
    }

    /// The browser's wrapping (web-demo/assets/e2ee/hpke.js), sealed with a fixed ephemeral key,
    /// opens here byte for byte: the exporter reads what browsers send.
    #[test]
    fn a_key_wrapped_by_the_browser_opens_here() {
        let text = include_str!("../test-vectors/hpke.json");
        let all: serde_json::Value = serde_json::from_str(text).unwrap();
        let v = &all["consult_epoch_key"];
        let sk: [u8; 32] = hex(&v["skRm"]).try_into().unwrap();
        let pair = RecordingKeyPair::from_private_bytes(&sk).unwrap();
        assert_eq!(pair.public().as_bytes().to_vec(), hex(&v["pkRm"]));
        assert_eq!(
            pair.public().to_base64(),
            v["recording_key_base64"].as_str().unwrap()
        );
        let uuid = |key: &str| {
            let h = v[key].as_str().unwrap().replace('-', "");
            <[u8; 16]>::try_from(hex::decode(h).unwrap()).unwrap()
        };
        let binding = EpochKeyBinding {
            recording: uuid("recording_id"),
            sender: uuid("participant_id"),
            kid: v["kid"].as_u64().unwrap(),
            suite: Suite::from_id(v["suite"].as_u64().unwrap() as u16).unwrap(),
        };
        assert_eq!(binding.aad(), hex(&v["aad"]));
        assert_eq!(EPOCH_KEY_INFO.to_vec(), hex(&v["info"]));
        let base = pair
            .unwrap_epoch_key(&binding, &hex(&v["wrapped"]))
            .unwrap();
        assert_eq!(base.expose(), hex(&v["base_key"]).as_slice());
    }
}
