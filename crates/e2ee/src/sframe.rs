//! RFC 9605 SFrame keys: one sender key or receiver key per KID, on the `sframe` crate (ring).
//!
//! The crate does the RFC's work — header encoding, HKDF key and salt derivation, nonce
//! formation, AEAD with `header ‖ metadata` as AAD — and is checked against RFC 9605 Appendix C
//! in this crate's tests. This module pins it to the two suites Consult uses, makes the counter an
//! explicit argument (the key schedule owns counters) and keeps base keys out of `Debug`.

use ::sframe::frame::{EncryptedFrameView, MediaFrameView, SingleUseCounter};
use ::sframe::header::SframeHeader;
use ::sframe::key::{DecryptionKey, EncryptionKey};
use ::sframe::CipherSuite;
use zeroize::Zeroizing;

/// Length of the authentication tag of every suite Consult supports (both are `_128`).
pub const TAG_LEN: usize = 16;

/// An SFrame cipher suite Consult supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Suite {
    /// `AES_128_GCM_SHA256_128` (RFC 9605 suite 4), the default.
    #[default]
    Aes128Gcm,
    /// `AES_256_GCM_SHA512_128` (RFC 9605 suite 5).
    Aes256Gcm,
}

impl Suite {
    /// The RFC 9605 cipher suite number.
    pub fn id(self) -> u16 {
        match self {
            Suite::Aes128Gcm => 4,
            Suite::Aes256Gcm => 5,
        }
    }

    /// The suite with this RFC 9605 number, if Consult supports it.
    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            4 => Some(Suite::Aes128Gcm),
            5 => Some(Suite::Aes256Gcm),
            _ => None,
        }
    }

    /// Length of a base key Consult generates for this suite (the AEAD key length).
    pub fn base_key_len(self) -> usize {
        match self {
            Suite::Aes128Gcm => 16,
            Suite::Aes256Gcm => 32,
        }
    }

    /// Length of the authentication tag.
    pub fn tag_len(self) -> usize {
        TAG_LEN
    }

    fn cipher_suite(self) -> CipherSuite {
        match self {
            Suite::Aes128Gcm => CipherSuite::AesGcm128Sha256,
            Suite::Aes256Gcm => CipherSuite::AesGcm256Sha512,
        }
    }
}

/// A base key: secret bytes from which SFrame derives the key and salt of a KID. Zeroized on
/// drop; its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct BaseKey(Zeroizing<Vec<u8>>);

impl BaseKey {
    /// Wrap key material.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret bytes (to wrap them for a peer).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for BaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BaseKey({} bytes)", self.0.len())
    }
}

/// Why SFrame refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SframeError {
    /// The bytes do not start with a valid SFrame header, or are shorter than header and tag.
    #[error("not an SFrame (header or tag missing)")]
    Malformed,
    /// Authentication failed: wrong key, or the frame or its metadata was changed.
    #[error("SFrame authentication failed")]
    Authentication,
    /// The key could not be derived or used.
    #[error("SFrame key error")]
    Key,
}

/// The KID and CTR of an SFrame header, and its length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Key id.
    pub kid: u64,
    /// Counter.
    pub ctr: u64,
    /// Encoded length.
    pub len: usize,
}

impl Header {
    /// Read the header at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, SframeError> {
        let header = SframeHeader::deserialize(bytes).map_err(|_| SframeError::Malformed)?;
        Ok(Self {
            kid: header.key_id(),
            ctr: header.counter(),
            len: header.len(),
        })
    }

    /// Encode a header (RFC 9605 section 4.3).
    pub fn encode(kid: u64, ctr: u64) -> Vec<u8> {
        let header = SframeHeader::new(kid, ctr);
        let mut out = vec![0; header.len()];
        // The buffer has exactly the header's length, so serializing cannot fail.
        if header.serialize(&mut out).is_err() {
            out.clear();
        }
        out
    }
}

/// The key a sender protects frames with under one KID.
pub struct SenderKey {
    key: EncryptionKey,
    suite: Suite,
    kid: u64,
}

impl SenderKey {
    /// Derive the SFrame key and salt for `kid` from `base_key`.
    pub fn new(suite: Suite, kid: u64, base_key: &BaseKey) -> Result<Self, SframeError> {
        let key = EncryptionKey::derive_from(suite.cipher_suite(), kid, base_key.expose())
            .map_err(|_| SframeError::Key)?;
        Ok(Self { key, suite, kid })
    }

    /// The KID.
    pub fn kid(&self) -> u64 {
        self.kid
    }

    /// The suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Protect `payload` with counter `ctr`, authenticating `metadata` too. Replaces `out` with
    /// `metadata ‖ header ‖ ciphertext ‖ tag`.
    pub fn seal(
        &self,
        ctr: u64,
        metadata: &[u8],
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SframeError> {
        let mut counter = SingleUseCounter::new(ctr);
        let frame = MediaFrameView::try_with_meta_data(&mut counter, payload, metadata)
            .map_err(|_| SframeError::Key)?;
        frame
            .encrypt_into(&self.key, out)
            .map_err(|_| SframeError::Key)?;
        Ok(())
    }
}

/// The key a receiver opens one sender's frames with under one KID.
pub struct ReceiverKey {
    key: DecryptionKey,
    kid: u64,
}

impl ReceiverKey {
    /// Derive the SFrame key and salt for `kid` from `base_key`.
    pub fn new(suite: Suite, kid: u64, base_key: &BaseKey) -> Result<Self, SframeError> {
        let key = DecryptionKey::derive_from(suite.cipher_suite(), kid, base_key.expose())
            .map_err(|_| SframeError::Key)?;
        Ok(Self { key, kid })
    }

    /// The KID.
    pub fn kid(&self) -> u64 {
        self.kid
    }

    /// Open `sframe` (`header ‖ ciphertext ‖ tag`) whose metadata is `metadata`; the plaintext.
    pub fn open(&self, metadata: &[u8], sframe: &[u8]) -> Result<Vec<u8>, SframeError> {
        let mut out = Vec::new();
        self.open_into(metadata, sframe, &mut out)?;
        out.drain(..metadata.len());
        Ok(out)
    }

    /// Like [`ReceiverKey::open`], but replaces `out` with `metadata ‖ plaintext` — for frames
    /// whose clear prefix is the metadata, the original frame, without another copy.
    pub fn open_into(
        &self,
        metadata: &[u8],
        sframe: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SframeError> {
        let frame = EncryptedFrameView::try_with_meta_data(sframe, metadata)
            .map_err(|_| SframeError::Malformed)?;
        if frame.header().key_id() != self.kid {
            return Err(SframeError::Authentication);
        }
        out.clear();
        frame
            .decrypt_into(&self.key, out)
            .map_err(|_| SframeError::Authentication)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_vectors::{hex, vectors};

    #[test]
    fn header_encoding_matches_rfc9605_appendix_c1() {
        let v = vectors();
        assert_eq!(v.rfc9605_header.len(), 289);
        for case in &v.rfc9605_header {
            let (kid, ctr) = (case.kid.parse().unwrap(), case.ctr.parse().unwrap());
            let encoded = hex(&case.encoded);
            assert_eq!(Header::encode(kid, ctr), encoded, "kid {kid} ctr {ctr}");
            let parsed = Header::parse(&encoded).unwrap();
            assert_eq!(
                (parsed.kid, parsed.ctr, parsed.len),
                (kid, ctr, encoded.len())
            );
        }
    }

    #[test]
    fn encryption_matches_rfc9605_appendix_c4_byte_for_byte() {
        let v = vectors();
        let mut suites = Vec::new();
        for case in &v.rfc9605_sframe {
            let suite = Suite::from_id(case.cipher_suite).unwrap();
            suites.push(suite);
            let (kid, ctr) = (case.kid.parse().unwrap(), case.ctr.parse().unwrap());
            let base = BaseKey::new(hex(&case.base_key));
            let metadata = hex(&case.metadata);
            let mut out = Vec::new();
            SenderKey::new(suite, kid, &base)
                .unwrap()
                .seal(ctr, &metadata, &hex(&case.pt), &mut out)
                .unwrap();
            // The crate writes metadata ‖ header ‖ ciphertext ‖ tag; the RFC's `ct` is the rest.
            assert_eq!(&out[..metadata.len()], &metadata[..]);
            assert_eq!(
                &out[metadata.len()..],
                &hex(&case.ct)[..],
                "suite {suite:?}"
            );
            let opened = ReceiverKey::new(suite, kid, &base)
                .unwrap()
                .open(&metadata, &hex(&case.ct))
                .unwrap();
            assert_eq!(opened, hex(&case.pt));
        }
        assert_eq!(suites, vec![Suite::Aes128Gcm, Suite::Aes256Gcm]);
    }

    #[test]
    fn changed_metadata_or_ciphertext_is_refused() {
        let base = BaseKey::new(vec![7; 16]);
        let sender = SenderKey::new(Suite::Aes128Gcm, 9, &base).unwrap();
        let receiver = ReceiverKey::new(Suite::Aes128Gcm, 9, &base).unwrap();
        let mut out = Vec::new();
        sender.seal(1, b"meta", b"payload", &mut out).unwrap();
        let sframe = &out[4..];
        assert_eq!(receiver.open(b"meta", sframe).unwrap(), b"payload");
        assert_eq!(
            receiver.open(b"mota", sframe),
            Err(SframeError::Authentication)
        );
        let mut flipped = sframe.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            receiver.open(b"meta", &flipped),
            Err(SframeError::Authentication)
        );
        assert!(receiver.open(b"meta", &sframe[..5]).is_err());
        assert_eq!(receiver.open(b"meta", &[]), Err(SframeError::Malformed));
        let other = ReceiverKey::new(Suite::Aes128Gcm, 10, &base).unwrap();
        assert_eq!(
            other.open(b"meta", sframe),
            Err(SframeError::Authentication)
        );
    }

    #[test]
    fn base_keys_do_not_print() {
        let printed = format!("{:?}", BaseKey::new(vec![0x42; 16]));
        assert_eq!(printed, "BaseKey(16 bytes)");
    }
}
