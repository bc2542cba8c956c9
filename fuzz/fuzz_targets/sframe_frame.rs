//! A received SFrame-protected media frame, in each frame format (Opus, VP8, H.264 with its NAL
//! walk and emulation prevention, data): parsing and opening never panic, and a frame we
//! protect opens to the same bytes.
#![no_main]
use consult_e2ee::format::{protect, ProtectedFrame};
use consult_e2ee::sframe::{BaseKey, Header, ReceiverKey, SenderKey};
use consult_e2ee::{MediaFormat, Suite};
use libfuzzer_sys::fuzz_target;

const FORMATS: [MediaFormat; 4] = [
    MediaFormat::Opus,
    MediaFormat::Vp8,
    MediaFormat::H264,
    MediaFormat::Data,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, frame)) = data.split_first() else {
        return;
    };
    let format = FORMATS[usize::from(selector) % FORMATS.len()];
    let suite = if selector & 0x80 == 0 {
        Suite::Aes128Gcm
    } else {
        Suite::Aes256Gcm
    };
    let base = BaseKey::new(vec![7; 32]);
    let kid = 0x1234;
    let receiver = ReceiverKey::new(suite, kid, &base).expect("a receiver key");
    let _ = Header::parse(frame);
    if let Ok(protected) = ProtectedFrame::parse(format, frame) {
        let _ = protected.kid();
        let _ = protected.open(&receiver);
    }
    let sender = SenderKey::new(suite, kid, &base).expect("a sender key");
    if let Ok(sealed) = protect(format, &sender, u64::from(selector), frame) {
        let parsed = ProtectedFrame::parse(format, &sealed).expect("what we protect parses");
        assert_eq!(
            parsed.open(&receiver).expect("what we protect opens"),
            frame
        );
    }
});
