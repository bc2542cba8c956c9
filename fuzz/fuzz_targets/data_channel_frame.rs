//! A message on the chat or file-transfer data channel, text or binary: never a panic; a file
//! frame that decodes re-encodes to the same bytes.
#![no_main]
use consult_peer::chat::decode_incoming;
use consult_peer::file_transfer::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let binary = flags & 1 == 1;
    let _ = decode_incoming(binary, bytes, 4096);
    match Frame::decode(binary, bytes) {
        Frame::Invalid(_) => {}
        Frame::Chunk { .. } => {
            let frame = Frame::decode(binary, bytes);
            assert_eq!(frame.encode(), (true, bytes.to_vec()));
        }
        frame @ Frame::Control(_) => {
            let (binary_again, encoded) = frame.encode();
            assert!(!binary_again);
            assert_eq!(Frame::decode(false, &encoded), frame);
        }
    }
});
