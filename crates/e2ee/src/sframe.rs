//! RFC 9605 SFrame keys: one sender key or receiver key per KID.
//!
//! The header (section 4.3), key and salt derivation (HKDF, section 4.4.2), nonce formation and
//! the AEAD (section 4.4.3, `header ‖ metadata` as associated data) are composed here from ring's
//! HKDF and AES-GCM, with the AES key schedule set up once per KID rather than once per frame, and
//! headers read and written without allocating (the `sframe` crate builds a new ring key for
//! every frame, which cost more than sealing a 1 KiB frame, and allocates for each header). Frames are sealed and opened in place, in buffers the caller
//! owns and reuses. RFC 9605 Appendix C checks headers and both directions byte for byte in this
//! module's tests, and property tests compare every frame with the `sframe` crate's own.
//!
//! This module pins SFrame to the two suites Consult uses, makes the counter an explicit argument
//! (the key schedule owns counters) and keeps base keys out of `Debug`.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
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

    fn aead(self) -> &'static ring::aead::Algorithm {
        match self {
            Suite::Aes128Gcm => &ring::aead::AES_128_GCM,
            Suite::Aes256Gcm => &ring::aead::AES_256_GCM,
        }
    }

    fn hkdf(self) -> ring::hkdf::Algorithm {
        match self {
            Suite::Aes128Gcm => ring::hkdf::HKDF_SHA256,
            Suite::Aes256Gcm => ring::hkdf::HKDF_SHA512,
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
    /// Read the header at the start of `bytes` (RFC 9605 section 4.3: a config byte `X K Y C`,
    /// then the KID's bytes when `X` is set, then the CTR's when `Y` is), without allocating.
    pub fn parse(bytes: &[u8]) -> Result<Self, SframeError> {
        let (&config, rest) = bytes.split_first().ok_or(SframeError::Malformed)?;
        let field = |nibble: u8| -> (u64, usize) {
            match nibble & 0x8 {
                0 => (u64::from(nibble & 0x7), 0),
                _ => (0, usize::from(nibble & 0x7) + 1),
            }
        };
        let (kid, kid_len) = field(config >> 4);
        let (ctr, ctr_len) = field(config & 0x0f);
        if rest.len() < kid_len + ctr_len {
            return Err(SframeError::Malformed);
        }
        let big_endian = |b: &[u8]| b.iter().fold(0u64, |v, x| (v << 8) | u64::from(*x));
        Ok(Self {
            kid: if kid_len == 0 {
                kid
            } else {
                big_endian(&rest[..kid_len])
            },
            ctr: if ctr_len == 0 {
                ctr
            } else {
                big_endian(&rest[kid_len..kid_len + ctr_len])
            },
            len: 1 + kid_len + ctr_len,
        })
    }

    /// Encode a header (RFC 9605 section 4.3).
    pub fn encode(kid: u64, ctr: u64) -> Vec<u8> {
        let mut out = [0u8; MAX_HEADER_LEN];
        let len = encode_header(kid, ctr, &mut out);
        out[..len].to_vec()
    }
}

/// An HKDF output length (ring asks for it as a type).
struct OutputLen(usize);

impl ring::hkdf::KeyType for OutputLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// The AEAD key and nonce salt of one KID (RFC 9605 section 4.4.2), set up once.
struct AeadKey {
    key: LessSafeKey,
    salt: [u8; NONCE_LEN],
}

impl AeadKey {
    /// `sframe_secret = HKDF-Extract("", base_key)`; `sframe_key` and `sframe_salt` expanded from
    /// it with the labels `"SFrame 1.0 Secret key " ‖ KID ‖ suite` and `"… salt …"`.
    fn derive(suite: Suite, kid: u64, base_key: &BaseKey) -> Result<Self, SframeError> {
        let secret = ring::hkdf::Salt::new(suite.hkdf(), b"").extract(base_key.expose());
        let kid = kid.to_be_bytes();
        let id = suite.id().to_be_bytes();
        let mut key = Zeroizing::new([0u8; 32]);
        let key = &mut key[..suite.base_key_len()];
        secret
            .expand(
                &[b"SFrame 1.0 Secret key ", &kid[..], &id[..]],
                OutputLen(key.len()),
            )
            .and_then(|okm| okm.fill(key))
            .map_err(|_| SframeError::Key)?;
        let mut salt = [0u8; NONCE_LEN];
        secret
            .expand(
                &[b"SFrame 1.0 Secret salt ", &kid[..], &id[..]],
                OutputLen(NONCE_LEN),
            )
            .and_then(|okm| okm.fill(&mut salt))
            .map_err(|_| SframeError::Key)?;
        let key = UnboundKey::new(suite.aead(), key).map_err(|_| SframeError::Key)?;
        Ok(Self {
            key: LessSafeKey::new(key),
            salt,
        })
    }

    /// `sframe_salt XOR CTR` (big-endian, right-aligned; section 4.4.3).
    fn nonce(&self, ctr: u64) -> Nonce {
        let mut nonce = self.salt;
        for (n, c) in nonce[NONCE_LEN - 8..].iter_mut().zip(ctr.to_be_bytes()) {
            *n ^= c;
        }
        Nonce::assume_unique_for_key(nonce)
    }
}

impl Drop for AeadKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.salt);
    }
}

/// The associated data `header ‖ metadata`, on the stack when it is short (every Opus and VP8
/// frame, most H.264 frames).
fn with_aad<T>(header: &[u8], metadata: &[u8], seal: impl FnOnce(Aad<&[u8]>) -> T) -> T {
    const ON_STACK: usize = 256;
    let len = header.len() + metadata.len();
    if len <= ON_STACK {
        let mut aad = [0u8; ON_STACK];
        aad[..header.len()].copy_from_slice(header);
        aad[header.len()..len].copy_from_slice(metadata);
        seal(Aad::from(&aad[..len]))
    } else {
        let mut aad = Vec::with_capacity(len);
        aad.extend_from_slice(header);
        aad.extend_from_slice(metadata);
        seal(Aad::from(&aad[..]))
    }
}

/// The longest SFrame header: the config byte, then KID and CTR of 8 bytes each.
pub const MAX_HEADER_LEN: usize = 17;

/// Encode the header for `kid` and `ctr` into `out` (each value in the config byte when under 8,
/// otherwise in as few big-endian bytes as it needs after it); its length.
fn encode_header(kid: u64, ctr: u64, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
    let mut len = 1;
    let mut field = |value: u64| -> u8 {
        if value < 8 {
            return value as u8;
        }
        let bytes = 8 - value.leading_zeros() as usize / 8;
        out[len..len + bytes].copy_from_slice(&value.to_be_bytes()[8 - bytes..]);
        len += bytes;
        0x8 | (bytes - 1) as u8
    };
    let k = field(kid);
    let c = field(ctr);
    out[0] = (k << 4) | c;
    len
}

/// The key a sender protects frames with under one KID.
pub struct SenderKey {
    key: AeadKey,
    suite: Suite,
    kid: u64,
}

impl SenderKey {
    /// Derive the SFrame key and salt for `kid` from `base_key`.
    pub fn new(suite: Suite, kid: u64, base_key: &BaseKey) -> Result<Self, SframeError> {
        Ok(Self {
            key: AeadKey::derive(suite, kid, base_key)?,
            suite,
            kid,
        })
    }

    /// The KID.
    pub fn kid(&self) -> u64 {
        self.kid
    }

    /// The suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Protect `payload` with counter `ctr`, authenticating `metadata` too. Replaces the contents
    /// of `out` with `metadata ‖ header ‖ ciphertext ‖ tag`, in its existing allocation when it
    /// is large enough: the payload is copied once and encrypted where it lands.
    pub fn seal(
        &self,
        ctr: u64,
        metadata: &[u8],
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SframeError> {
        let mut header = [0u8; MAX_HEADER_LEN];
        let header_len = encode_header(self.kid, ctr, &mut header);
        out.clear();
        out.reserve(metadata.len() + header_len + payload.len() + TAG_LEN);
        out.extend_from_slice(metadata);
        out.extend_from_slice(&header[..header_len]);
        let start = out.len();
        out.extend_from_slice(payload);
        let tag = self.seal_detached(ctr, &header[..header_len], metadata, &mut out[start..])?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Encode the header of a frame under this key with counter `ctr` into `out`; its length.
    pub fn header(&self, ctr: u64, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        encode_header(self.kid, ctr, out)
    }

    /// Encrypt `payload` where it lies under the header `header` (from [`SenderKey::header`]
    /// with the same `ctr`), authenticating `header ‖ metadata`; the tag to append. For formats
    /// whose ciphertext is not contiguous with its header on the wire (H.264).
    pub fn seal_detached(
        &self,
        ctr: u64,
        header: &[u8],
        metadata: &[u8],
        payload: &mut [u8],
    ) -> Result<[u8; TAG_LEN], SframeError> {
        let tag = with_aad(header, metadata, |aad| {
            self.key
                .key
                .seal_in_place_separate_tag(self.key.nonce(ctr), aad, payload)
        })
        .map_err(|_| SframeError::Key)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }
}

/// The key a receiver opens one sender's frames with under one KID.
pub struct ReceiverKey {
    key: AeadKey,
    kid: u64,
}

impl ReceiverKey {
    /// Derive the SFrame key and salt for `kid` from `base_key`.
    pub fn new(suite: Suite, kid: u64, base_key: &BaseKey) -> Result<Self, SframeError> {
        Ok(Self {
            key: AeadKey::derive(suite, kid, base_key)?,
            kid,
        })
    }

    /// The KID.
    pub fn kid(&self) -> u64 {
        self.kid
    }

    /// Open `sframe` (`header ‖ ciphertext ‖ tag`) whose metadata is `metadata`; the plaintext.
    pub fn open(&self, metadata: &[u8], sframe: &[u8]) -> Result<Vec<u8>, SframeError> {
        let mut out = sframe.to_vec();
        let plaintext = self.open_in_place(metadata, &mut out)?;
        out.truncate(plaintext.end);
        out.drain(..plaintext.start);
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
        let header = Header::parse(sframe)?;
        out.clear();
        out.reserve(metadata.len() + sframe.len());
        out.extend_from_slice(metadata);
        out.extend_from_slice(&sframe[header.len..]);
        let start = metadata.len();
        let len = self.open_parsed(header, &sframe[..header.len], metadata, &mut out[start..])?;
        out.truncate(start + len);
        Ok(())
    }

    /// Decrypt `sframe` (`header ‖ ciphertext ‖ tag`) where it lies; where the plaintext now is
    /// within it. Nothing is allocated or copied but the associated data.
    pub fn open_in_place(
        &self,
        metadata: &[u8],
        sframe: &mut [u8],
    ) -> Result<std::ops::Range<usize>, SframeError> {
        let header = Header::parse(sframe)?;
        let (head, body) = sframe.split_at_mut(header.len);
        let len = self.open_parsed(header, head, metadata, body)?;
        Ok(header.len..header.len + len)
    }

    /// Decrypt `body` (`ciphertext ‖ tag`) in place under `header` (an SFrame header, whose KID
    /// must be this key's), authenticating `header ‖ metadata`; the plaintext's length (it is
    /// `body`'s start).
    pub fn open_detached(
        &self,
        header: &[u8],
        metadata: &[u8],
        body: &mut [u8],
    ) -> Result<usize, SframeError> {
        let parsed = Header::parse(header)?;
        if parsed.len != header.len() {
            return Err(SframeError::Malformed);
        }
        self.open_parsed(parsed, header, metadata, body)
    }

    fn open_parsed(
        &self,
        parsed: Header,
        header: &[u8],
        metadata: &[u8],
        body: &mut [u8],
    ) -> Result<usize, SframeError> {
        if body.len() < TAG_LEN {
            return Err(SframeError::Malformed);
        }
        if parsed.kid != self.kid {
            return Err(SframeError::Authentication);
        }
        let plaintext = with_aad(header, metadata, |aad| {
            self.key
                .key
                .open_in_place(self.key.nonce(parsed.ctr), aad, body)
                .map(|p| p.len())
        })
        .map_err(|_| SframeError::Authentication)?;
        Ok(plaintext)
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

    /// The `sframe` crate's own encryption: the reference the in-place path must equal.
    fn reference_seal(
        suite: Suite,
        kid: u64,
        base: &BaseKey,
        ctr: u64,
        metadata: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        use ::sframe::frame::{MediaFrameView, SingleUseCounter};
        use ::sframe::key::EncryptionKey;
        let suite = match suite {
            Suite::Aes128Gcm => ::sframe::CipherSuite::AesGcm128Sha256,
            Suite::Aes256Gcm => ::sframe::CipherSuite::AesGcm256Sha512,
        };
        let key = EncryptionKey::derive_from(suite, kid, base.expose()).unwrap();
        let mut counter = SingleUseCounter::new(ctr);
        let frame = MediaFrameView::try_with_meta_data(&mut counter, payload, metadata).unwrap();
        let mut out = Vec::new();
        frame.encrypt_into(&key, &mut out).unwrap();
        out
    }

    fn reference_open(
        suite: Suite,
        kid: u64,
        base: &BaseKey,
        metadata: &[u8],
        sframe: &[u8],
    ) -> Option<Vec<u8>> {
        use ::sframe::frame::EncryptedFrameView;
        use ::sframe::key::DecryptionKey;
        let suite = match suite {
            Suite::Aes128Gcm => ::sframe::CipherSuite::AesGcm128Sha256,
            Suite::Aes256Gcm => ::sframe::CipherSuite::AesGcm256Sha512,
        };
        let key = DecryptionKey::derive_from(suite, kid, base.expose()).unwrap();
        let frame = EncryptedFrameView::try_with_meta_data(sframe, metadata).ok()?;
        if frame.header().key_id() != kid {
            return None;
        }
        let mut out = Vec::new();
        frame.decrypt_into(&key, &mut out).ok()?;
        Some(out[metadata.len()..].to_vec())
    }

    #[test]
    fn in_place_sealing_equals_the_sframe_crate_byte_for_byte_and_each_opens_the_other() {
        use rand::{Rng, RngCore, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9605);
        // One buffer reused for every frame, as the media path does.
        let mut out = Vec::new();
        let mut opened = Vec::new();
        for round in 0..600 {
            let suite = if round % 2 == 0 {
                Suite::Aes128Gcm
            } else {
                Suite::Aes256Gcm
            };
            let mut base = vec![0u8; suite.base_key_len()];
            rng.fill_bytes(&mut base);
            let base = BaseKey::new(base);
            // KIDs and counters of every header length, including the extremes.
            let kid = match round % 5 {
                0 => rng.gen_range(0..8),
                1 => u64::MAX,
                _ => rng.next_u64() >> rng.gen_range(0..64),
            };
            let ctr = match round % 7 {
                0 => 0,
                1 => u64::MAX,
                _ => rng.next_u64() >> rng.gen_range(0..64),
            };
            // Metadata from none to past the stack buffer; payloads from empty to 20 KiB.
            let mut metadata = vec![0u8; [0, 3, 10, 255, 300][round % 5]];
            rng.fill_bytes(&mut metadata);
            let mut payload = vec![0u8; rng.gen_range(0..20_000)];
            rng.fill_bytes(&mut payload);

            let sender = SenderKey::new(suite, kid, &base).unwrap();
            sender.seal(ctr, &metadata, &payload, &mut out).unwrap();
            let reference = reference_seal(suite, kid, &base, ctr, &metadata, &payload);
            assert_eq!(out, reference, "round {round}");

            let receiver = ReceiverKey::new(suite, kid, &base).unwrap();
            let sframe = &reference[metadata.len()..];
            assert_eq!(receiver.open(&metadata, sframe).unwrap(), payload);
            receiver.open_into(&metadata, sframe, &mut opened).unwrap();
            assert_eq!(&opened[..metadata.len()], &metadata[..]);
            assert_eq!(&opened[metadata.len()..], &payload[..]);
            let mut in_place = sframe.to_vec();
            let range = receiver.open_in_place(&metadata, &mut in_place).unwrap();
            assert_eq!(&in_place[range], &payload[..]);

            // Adversarial: one bit flipped anywhere, or cut anywhere: refused by both.
            let mut flipped = sframe.to_vec();
            let at = rng.gen_range(0..flipped.len());
            flipped[at] ^= 1 << rng.gen_range(0..8);
            assert!(receiver
                .open_in_place(&metadata, &mut flipped.clone())
                .is_err());
            assert_eq!(reference_open(suite, kid, &base, &metadata, &flipped), None);
            let cut = rng.gen_range(0..sframe.len());
            assert!(receiver
                .open_in_place(&metadata, &mut sframe[..cut].to_vec())
                .is_err());
            assert_eq!(
                reference_open(suite, kid, &base, &metadata, &sframe[..cut]),
                None
            );
            if !metadata.is_empty() {
                let mut other = metadata.clone();
                other[0] ^= 0x80;
                assert_eq!(
                    receiver.open_in_place(&other, &mut sframe.to_vec()),
                    Err(SframeError::Authentication)
                );
            }
        }
    }

    #[test]
    fn headers_read_as_the_sframe_crate_reads_them_from_any_bytes() {
        use ::sframe::header::SframeHeader;
        use rand::{Rng, RngCore, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(43);
        for _ in 0..20_000 {
            let mut bytes = vec![0u8; rng.gen_range(0..20)];
            rng.fill_bytes(&mut bytes);
            let reference = SframeHeader::deserialize(&bytes[..])
                .map(|h| (h.key_id(), h.counter(), h.len()))
                .ok();
            let ours = Header::parse(&bytes).map(|h| (h.kid, h.ctr, h.len)).ok();
            assert_eq!(ours, reference, "{bytes:02x?}");
        }
        // And written as it writes them, for every length of each value.
        for shift in 0..64 {
            for base in [1u64, 5, 0xff, u64::MAX] {
                let (kid, ctr) = (base >> shift, (base >> (63 - shift)).wrapping_mul(3));
                let reference = SframeHeader::new(kid, ctr);
                let mut expected = vec![0u8; reference.len()];
                reference.serialize(&mut expected).unwrap();
                assert_eq!(Header::encode(kid, ctr), expected, "kid {kid} ctr {ctr}");
            }
        }
    }

    #[test]
    fn base_keys_do_not_print() {
        let printed = format!("{:?}", BaseKey::new(vec![0x42; 16]));
        assert_eq!(printed, "BaseKey(16 bytes)");
    }
}
