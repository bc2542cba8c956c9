//! An end-to-end key agreement message from the other participant (hello, commitment, reveal,
//! abort): never a panic; what decodes re-encodes to itself.
#![no_main]
use consult_e2ee::wire::KeyMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(message) = KeyMessage::decode(text) {
        let again = KeyMessage::decode(&message.encode()).expect("a re-encoded message decodes");
        assert_eq!(again, message);
    }
});
