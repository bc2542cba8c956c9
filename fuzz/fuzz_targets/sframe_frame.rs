//! A received SFrame-protected media frame, in each frame format (Opus, VP8, H.264 with its NAL
//! walk and emulation prevention, data): parsing and opening never panic, and a frame we
//! protect opens to the same bytes. The path calls take (`FrameBuffers`: protected into a
//! buffer kept, opened where the frame lies) gives the reference's bytes and verdicts.
#![no_main]
use consult_e2ee::format::{protect, ProtectedFrame};
use consult_e2ee::in_place::FrameBuffers;
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
    let reference = ProtectedFrame::parse(format, frame).ok().and_then(|protected| {
        let _ = protected.kid();
        protected.open(&receiver).ok()
    });
    let mut buffers = FrameBuffers::default();
    assert_eq!(open_in_place(&mut buffers, format, &receiver, frame), reference);
    let sender = SenderKey::new(suite, kid, &base).expect("a sender key");
    let ctr = u64::from(selector);
    let sealed = protect(format, &sender, ctr, frame);
    let mut wire = Vec::new();
    let fast = buffers.protect(format, &sender, ctr, frame, &mut wire);
    assert_eq!(fast.map(|()| wire.clone()), sealed, "protected as the reference does");
    if let Ok(sealed) = sealed {
        let parsed = ProtectedFrame::parse(format, &sealed).expect("what we protect parses");
        assert_eq!(
            parsed.open(&receiver).expect("what we protect opens"),
            frame
        );
        let opened = open_in_place(&mut buffers, format, &receiver, &sealed);
        assert_eq!(opened.as_deref(), Some(frame), "opened where it lies");
    }
});

/// `data` parsed and opened where it lies, as a call does; the frame, or `None` if refused.
fn open_in_place(
    buffers: &mut FrameBuffers,
    format: MediaFormat,
    key: &ReceiverKey,
    data: &[u8],
) -> Option<Vec<u8>> {
    buffers.parse(format, data).ok()?;
    let mut data = data.to_vec();
    let frame = buffers.open(key, &mut data).ok()?;
    Some(data[frame].to_vec())
}
