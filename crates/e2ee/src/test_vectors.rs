//! The shared test-vector file (`test-vectors/sframe.json`), as the Rust tests read it.

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
pub struct Vectors {
    pub rfc9605_header: Vec<HeaderCase>,
    pub rfc9605_sframe: Vec<SframeCase>,
    pub consult_frames: Vec<FrameCase>,
    pub consult_schedule: Vec<ScheduleCase>,
}

#[derive(Debug, Deserialize)]
pub struct HeaderCase {
    pub kid: String,
    pub ctr: String,
    pub encoded: String,
}

#[derive(Debug, Deserialize)]
pub struct SframeCase {
    pub cipher_suite: u16,
    pub kid: String,
    pub ctr: String,
    pub base_key: String,
    pub metadata: String,
    pub pt: String,
    pub ct: String,
}

#[derive(Debug, Deserialize)]
pub struct FrameCase {
    pub name: String,
    pub format: String,
    pub suite: u16,
    pub kid: String,
    pub ctr: String,
    pub base_key: String,
    pub frame: String,
    pub protected: String,
}

#[derive(Debug, Deserialize)]
pub struct FingerprintCase {
    pub hash: String,
    pub digest: String,
}

#[derive(Debug, Deserialize)]
pub struct ScheduleCase {
    pub fingerprint_a: FingerprintCase,
    pub fingerprint_b: FingerprintCase,
    pub secret_a: String,
    pub public_key_a: String,
    /// A's commitment to its public key (participant `from`, fingerprints A then B).
    pub commitment_a: String,
    pub public_key_b: String,
    pub transcript_hash: String,
    pub sas: String,
    pub from: String,
    pub to: String,
    pub wrap_key: String,
}

pub fn vectors() -> Vectors {
    serde_json::from_str(include_str!("../test-vectors/sframe.json")).expect("test vectors parse")
}

pub fn hex(text: &str) -> Vec<u8> {
    hex::decode(text).expect("hex in test vectors")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{protect, ProtectedFrame};
    use crate::schedule::vectors::agreement;
    use crate::sframe::{BaseKey, ReceiverKey, SenderKey, Suite};
    use crate::{Fingerprint, MediaFormat};

    fn format_named(name: &str) -> MediaFormat {
        match name {
            "opus" => MediaFormat::Opus,
            "vp8" => MediaFormat::Vp8,
            "h264" => MediaFormat::H264,
            "data" => MediaFormat::Data,
            other => panic!("unknown format {other}"),
        }
    }

    #[test]
    fn consult_frame_vectors_match_byte_for_byte_both_ways() {
        let v = vectors();
        let formats: std::collections::BTreeSet<&str> =
            v.consult_frames.iter().map(|c| c.format.as_str()).collect();
        assert_eq!(
            formats.into_iter().collect::<Vec<_>>(),
            ["data", "h264", "opus", "vp8"]
        );
        for case in &v.consult_frames {
            let suite = Suite::from_id(case.suite).unwrap();
            let kid: u64 = case.kid.parse().unwrap();
            let base = BaseKey::new(hex(&case.base_key));
            let format = format_named(&case.format);
            let sender = SenderKey::new(suite, kid, &base).unwrap();
            let sealed = protect(
                format,
                &sender,
                case.ctr.parse().unwrap(),
                &hex(&case.frame),
            )
            .unwrap();
            assert_eq!(hex::encode(&sealed), case.protected, "{}", case.name);
            let parsed = ProtectedFrame::parse(format, &sealed).unwrap();
            let receiver = ReceiverKey::new(suite, parsed.kid(), &base).unwrap();
            assert_eq!(
                parsed.open(&receiver).unwrap(),
                hex(&case.frame),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn consult_schedule_vectors_match() {
        let v = vectors();
        assert!(!v.consult_schedule.is_empty());
        for case in &v.consult_schedule {
            let fp = |f: &FingerprintCase| Fingerprint::new(&f.hash, hex(&f.digest));
            let secret: [u8; 32] = hex(&case.secret_a).try_into().unwrap();
            let remote: [u8; 32] = hex(&case.public_key_b).try_into().unwrap();
            let (public, transcript, sas, wrap) = agreement(
                secret,
                remote,
                &fp(&case.fingerprint_a),
                &fp(&case.fingerprint_b),
                &case.from,
                &case.to,
            );
            assert_eq!(hex::encode(public), case.public_key_a);
            assert_eq!(hex::encode(transcript), case.transcript_hash);
            assert_eq!(sas.to_string(), case.sas);
            assert_eq!(hex::encode(wrap), case.wrap_key);
            let committed = crate::sas::commitment(
                &case.from,
                &fp(&case.fingerprint_a),
                &fp(&case.fingerprint_b),
                &public,
            );
            assert_eq!(hex::encode(committed), case.commitment_a);
        }
    }
}
