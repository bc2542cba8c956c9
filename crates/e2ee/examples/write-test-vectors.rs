//! Regenerates the Consult parts of `test-vectors/sframe.json` (`consult_frames`,
//! `consult_schedule`) from this crate, keeping the RFC 9605 parts as they are. The inputs are
//! fixed, so running it again changes nothing unless the format changed — which the tests in
//! both languages would then catch.
//!
//! ```text
//! cargo run -p consult-e2ee --example write-test-vectors
//! ```

use consult_e2ee::format::protect;
use consult_e2ee::schedule::{kid, vectors::agreement, STREAM_DATA, STREAM_MEDIA};
use consult_e2ee::sframe::{BaseKey, SenderKey};
use consult_e2ee::{Fingerprint, MediaFormat, Suite};
use serde_json::{json, Value};

fn h264_access_unit() -> Vec<u8> {
    // SPS, PPS, an IDR slice whose clear part ends in zeros and whose data holds would-be start
    // codes, and a second slice: what Chromium's size-limited slices look like.
    let mut frame = vec![
        0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xec,
    ];
    frame.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
    frame.extend_from_slice(&[0, 0, 0, 1, 0x65, 0xb8, 0x00, 0x04, 0x10, 0x00, 0x00]);
    // Emulation prevention already in the slice data (00 00 03 01), as real encoders write it.
    frame.extend((4..204u32).map(|i| match i % 9 {
        0 | 1 => 0,
        2 => 3,
        3 => 1,
        _ => (i * 37 % 251) as u8,
    }));
    frame.extend_from_slice(&[0, 0, 1, 0x41, 0x9a, 0x21, 0x6c, 0x41, 0x0f]);
    frame.extend((0..64u32).map(|i| (i * 91 % 256) as u8));
    frame
}

/// name, format, suite, KID, CTR, frame
type Case = (&'static str, MediaFormat, Suite, u64, u64, Vec<u8>);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/test-vectors/sframe.json");
    let mut file: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;

    let vp8_key = vec![
        0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01, 0x00, 0x47, 0x08, 0x85,
    ];
    let vp8_delta = vec![0x31, 0x0a, 0x00, 0x11, 0x22, 0x00, 0x00, 0x01, 0x33];
    let opus = vec![0xfc, 0xff, 0xfe, 0x01, 0x02, 0x03, 0x04];
    let chat = [&[0u8][..], "Guten Tag, Frau Doktor ✓".as_bytes()].concat();
    let cases: Vec<Case> = vec![
        (
            "opus packet",
            MediaFormat::Opus,
            Suite::Aes128Gcm,
            kid(0xbeef, STREAM_MEDIA, 1),
            0,
            opus.clone(),
        ),
        (
            "opus packet, suite 5",
            MediaFormat::Opus,
            Suite::Aes256Gcm,
            kid(0xbeef, STREAM_MEDIA, 2),
            300,
            opus,
        ),
        (
            "vp8 keyframe",
            MediaFormat::Vp8,
            Suite::Aes128Gcm,
            kid(0x0102, STREAM_MEDIA, 1),
            1,
            vp8_key,
        ),
        (
            "vp8 delta frame",
            MediaFormat::Vp8,
            Suite::Aes128Gcm,
            kid(0x0102, STREAM_MEDIA, 1),
            70_000,
            vp8_delta,
        ),
        (
            "h264 access unit",
            MediaFormat::H264,
            Suite::Aes128Gcm,
            kid(0xfffe, STREAM_MEDIA, 0x1_0003),
            2,
            h264_access_unit(),
        ),
        (
            "h264 access unit, suite 5",
            MediaFormat::H264,
            Suite::Aes256Gcm,
            kid(0x0001, STREAM_MEDIA, 9),
            0,
            h264_access_unit(),
        ),
        (
            "h264 tiny slices (shorter than their clear part)",
            MediaFormat::H264,
            Suite::Aes128Gcm,
            kid(0x0a0b, STREAM_MEDIA, 4),
            77,
            vec![
                0, 0, 0, 1, 0x41, 0x9a, 0x02, 0, 0, 1, 0x41, 0x9a, 0x21, 0x6c, 0, 0, 1, 0x41, 0x9b,
            ],
        ),
        (
            "chat message",
            MediaFormat::Data,
            Suite::Aes128Gcm,
            kid(0xbeef, STREAM_DATA, 1),
            5,
            chat,
        ),
    ];
    let mut frames = Vec::new();
    for (name, format, suite, kid, ctr, frame) in cases {
        let base: Vec<u8> = (0..suite.base_key_len() as u8)
            .map(|i| i.wrapping_mul(17).wrapping_add(3))
            .collect();
        let key = SenderKey::new(suite, kid, &BaseKey::new(base.clone()))?;
        let protected = protect(format, &key, ctr, &frame)?;
        frames.push(json!({
            "name": name, "format": format.name(), "suite": suite.id(),
            "kid": kid.to_string(), "ctr": ctr.to_string(),
            "base_key": hex::encode(base), "frame": hex::encode(&frame),
            "protected": hex::encode(protected),
        }));
    }

    let fp_a = Fingerprint::new("sha-256", (0..32).map(|i| i * 7).collect());
    let fp_b = Fingerprint::new("sha-256", (0..32).map(|i| 255 - i * 3).collect());
    let secret_a: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(13).wrapping_add(1));
    let secret_b: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(29).wrapping_add(200));
    let (public_b, ..) = agreement(secret_b, [9; 32], &fp_b, &fp_a, "b", "a");
    let (public_a, transcript, sas, wrap) = agreement(
        secret_a,
        public_b,
        &fp_a,
        &fp_b,
        "7d3c5a4e-doctor",
        "0b9e1f22-patient",
    );
    let schedule = vec![json!({
        "fingerprint_a": {"hash": fp_a.hash, "digest": hex::encode(&fp_a.digest)},
        "fingerprint_b": {"hash": fp_b.hash, "digest": hex::encode(&fp_b.digest)},
        "secret_a": hex::encode(secret_a), "public_key_a": hex::encode(public_a),
        "public_key_b": hex::encode(public_b),
        "transcript_hash": hex::encode(transcript), "sas": sas.to_string(),
        "from": "7d3c5a4e-doctor", "to": "0b9e1f22-patient", "wrap_key": hex::encode(wrap),
    })];

    file["consult_frames"] = Value::Array(frames);
    file["consult_schedule"] = Value::Array(schedule);
    std::fs::write(path, serde_json::to_string_pretty(&file)? + "\n")?;
    println!("wrote {path}");
    Ok(())
}
