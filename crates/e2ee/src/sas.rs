//! The short authentication string: both DTLS fingerprints and both key-agreement public keys,
//! hashed into a transcript, shown to both people as two groups of four digits; and the
//! commitment each side sends before it reveals its key, so that nobody can choose a key after
//! seeing the other's.
//!
//! ```
//! use consult_e2ee::sas::{transcript_hash, Fingerprint, Sas};
//! let a = Fingerprint::from_sdp("sha-256 AA:BB").unwrap();
//! let b = Fingerprint::from_sdp("sha-256 CC:DD").unwrap();
//! // Each side passes its own values first; the result is the same on both sides.
//! let here = transcript_hash(&a, &b, &[1; 32], &[2; 32]);
//! let there = transcript_hash(&b, &a, &[2; 32], &[1; 32]);
//! assert_eq!(here, there);
//! assert_eq!(Sas::from_transcript(&here).to_string().len(), 9); // "NNNN NNNN"
//! ```

use hkdf::Hkdf;
use sha2::{Digest, Sha256};

/// A DTLS certificate fingerprint (`a=fingerprint:sha-256 AB:CD:...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Hash function name, lower case (`sha-256`).
    pub hash: String,
    /// The digest.
    pub digest: Vec<u8>,
}

impl Fingerprint {
    /// A fingerprint from its parts.
    pub fn new(hash: &str, digest: Vec<u8>) -> Self {
        Self {
            hash: hash.to_ascii_lowercase(),
            digest,
        }
    }

    /// Parse the SDP form `sha-256 AB:CD:...` (with or without `a=fingerprint:`).
    pub fn from_sdp(value: &str) -> Option<Self> {
        let value = value.trim().trim_start_matches("a=fingerprint:");
        let (hash, hex_digest) = value.split_once(' ')?;
        let digest = hex_digest
            .trim()
            .split(':')
            .map(|pair| u8::from_str_radix(pair, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        if digest.is_empty() {
            return None;
        }
        Some(Self::new(hash, digest))
    }

    fn transcript_bytes(&self) -> Vec<u8> {
        let mut bytes = self.hash.as_bytes().to_vec();
        bytes.push(0);
        bytes.extend_from_slice(&self.digest);
        bytes
    }
}

fn push_item(out: &mut Vec<u8>, item: &[u8]) {
    out.extend_from_slice(&(item.len() as u16).to_be_bytes());
    out.extend_from_slice(item);
}

fn sorted<'a>(a: &'a [u8], b: &'a [u8]) -> [&'a [u8]; 2] {
    if a <= b {
        [a, b]
    } else {
        [b, a]
    }
}

/// SHA-256 of the key-agreement transcript: the two fingerprints, then the two public keys,
/// each pair sorted bytewise so both sides compute the same value.
pub fn transcript_hash(
    local_fingerprint: &Fingerprint,
    remote_fingerprint: &Fingerprint,
    local_public_key: &[u8],
    remote_public_key: &[u8],
) -> [u8; 32] {
    let (fa, fb) = (
        local_fingerprint.transcript_bytes(),
        remote_fingerprint.transcript_bytes(),
    );
    let mut transcript = b"consult-e2ee/transcript/v1".to_vec();
    for item in sorted(&fa, &fb) {
        push_item(&mut transcript, item);
    }
    for item in sorted(local_public_key, remote_public_key) {
        push_item(&mut transcript, item);
    }
    Sha256::digest(&transcript).into()
}

/// SHA-256 of what a participant commits to before it may see the other's key: its participant
/// id, the sender's and then the receiver's DTLS fingerprint (as the sender sees them), and its
/// X25519 public key, each prefixed with its u16 big-endian length. The `commit` message carries
/// it; the `hello` that follows must match it. Binding the fingerprints ties a commitment to one
/// connection, so one replayed from another call never matches.
///
/// ```
/// use consult_e2ee::sas::{commitment, Fingerprint};
/// let doctor = Fingerprint::from_sdp("sha-256 AA:BB").unwrap();
/// let patient = Fingerprint::from_sdp("sha-256 CC:DD").unwrap();
/// // The doctor commits; the patient checks with the same values from its own side.
/// let sent = commitment("doctor", &doctor, &patient, &[1; 32]);
/// assert_eq!(sent, commitment("doctor", &doctor, &patient, &[1; 32]));
/// assert_ne!(sent, commitment("doctor", &doctor, &patient, &[2; 32]));
/// ```
pub fn commitment(
    participant: &str,
    sender_fingerprint: &Fingerprint,
    receiver_fingerprint: &Fingerprint,
    public_key: &[u8],
) -> [u8; 32] {
    let mut input = b"consult-e2ee/commit/v2".to_vec();
    push_item(&mut input, participant.as_bytes());
    push_item(&mut input, &sender_fingerprint.transcript_bytes());
    push_item(&mut input, &receiver_fingerprint.transcript_bytes());
    push_item(&mut input, public_key);
    Sha256::digest(&input).into()
}

/// SHA-256 of the two key-agreement public keys (sorted): the salt of the wrap keys.
pub fn key_hash(local_public_key: &[u8], remote_public_key: &[u8]) -> [u8; 32] {
    let mut input = b"consult-e2ee/keys/v1".to_vec();
    for item in sorted(local_public_key, remote_public_key) {
        push_item(&mut input, item);
    }
    Sha256::digest(&input).into()
}

/// A short authentication string: eight digits, shown as `NNNN NNNN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sas(u32);

impl Sas {
    /// The SAS of a transcript hash.
    pub fn from_transcript(transcript_hash: &[u8; 32]) -> Self {
        let mut okm = [0u8; 5];
        // Five bytes are far below HKDF-SHA256's limit, so expand cannot fail.
        let _ = Hkdf::<Sha256>::new(None, transcript_hash).expand(b"consult-e2ee/sas/v1", &mut okm);
        let value = okm.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        Self((value % 100_000_000) as u32)
    }

    /// The eight digits as a number.
    pub fn value(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for Sas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04} {:04}", self.0 / 10_000, self.0 % 10_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_from_sdp_and_refuse_garbage() {
        let fp = Fingerprint::from_sdp("a=fingerprint:SHA-256 0A:ff:10").unwrap();
        assert_eq!(fp, Fingerprint::new("sha-256", vec![0x0a, 0xff, 0x10]));
        assert_eq!(Fingerprint::from_sdp("sha-256"), None);
        assert_eq!(Fingerprint::from_sdp("sha-256 ZZ:01"), None);
    }

    #[test]
    fn a_swapped_fingerprint_or_key_changes_the_sas() {
        let a = Fingerprint::new("sha-256", vec![1; 32]);
        let b = Fingerprint::new("sha-256", vec![2; 32]);
        let m = Fingerprint::new("sha-256", vec![3; 32]);
        let honest = Sas::from_transcript(&transcript_hash(&a, &b, &[4; 32], &[5; 32]));
        let alice_sees = Sas::from_transcript(&transcript_hash(&a, &m, &[4; 32], &[5; 32]));
        let bob_sees = Sas::from_transcript(&transcript_hash(&b, &m, &[5; 32], &[4; 32]));
        assert_ne!(alice_sees, bob_sees);
        assert_ne!(honest, alice_sees);
        let other_key = Sas::from_transcript(&transcript_hash(&a, &b, &[4; 32], &[6; 32]));
        assert_ne!(honest, other_key);
        assert_eq!(format!("{}", Sas(1234)), "0000 1234");
    }
}
