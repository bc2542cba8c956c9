//! A signaling message from a client (the WebSocket's text frames), and one from the service
//! (what clients parse): never a panic; what decodes re-encodes to something that decodes the
//! same.
#![no_main]
use consult_proto::signal::{
    decode_client_message, decode_server_message, DEFAULT_MAX_MESSAGE_BYTES,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(message) = decode_client_message(text, DEFAULT_MAX_MESSAGE_BYTES) {
        let again = serde_json::to_string(&message).expect("a decoded message encodes");
        let mut value: serde_json::Value = serde_json::from_str(&again).expect("encoded is JSON");
        value["v"] = serde_json::json!(consult_proto::signal::PROTOCOL_VERSION);
        let reparsed = decode_client_message(&value.to_string(), usize::MAX)
            .expect("a re-encoded message decodes");
        assert_eq!(reparsed, message);
    }
    let _ = decode_server_message(text);
});
