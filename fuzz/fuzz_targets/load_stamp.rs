//! The load generator's frame stamp, read from every H.264 frame a peer receives (Annex B NAL
//! walk, SEI payload, SHA-256 check): never a panic; a stamped frame verifies.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../crates/load/src/stamp.rs"]
#[allow(dead_code)]
mod stamp;

fuzz_target!(|data: &[u8]| {
    let _ = stamp::nal_units(data);
    let _ = stamp::verify_frame(data);
    // Stamped, an Annex-B frame verifies as what was stamped.
    if data.starts_with(&[0, 0, 0, 1]) && !stamp::nal_units(data).is_empty() {
        let sent = stamp::Stamp {
            stream: 3,
            counter: data.len() as u64,
            sent_micros: 42,
        };
        let stamped = stamp::stamp_frame(data, &sent);
        assert_eq!(stamp::verify_frame(&stamped), stamp::Verdict::Intact(sent));
    }
});
