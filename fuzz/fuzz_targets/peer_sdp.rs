//! A remote offer, answer or trickled candidate handed to the sans-IO peer (what the signaling
//! service relays from the other participant, and what the recorder is given): never a panic.
#![no_main]
use std::time::Instant;

use consult_peer::{DtlsCert, Peer, PeerConfig};
use libfuzzer_sys::fuzz_target;

/// One DTLS certificate for the run: generating one per input would be most of the work.
fn config() -> PeerConfig {
    static CERTIFICATE: std::sync::OnceLock<DtlsCert> = std::sync::OnceLock::new();
    let certificate = CERTIFICATE.get_or_init(|| {
        consult_peer::str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .expect("a DTLS certificate")
    });
    PeerConfig {
        dtls_certificate: Some(certificate.clone()),
        ..PeerConfig::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now = Instant::now();
    // As the answering side (the recorder, a native client called by a browser).
    let mut answerer = Peer::new(config(), now);
    let _ = answerer.add_host_candidate("127.0.0.1:40000".parse().unwrap());
    let _ = answerer.handle_remote_offer(text);
    for line in text.lines().take(16) {
        let _ = answerer.add_remote_candidate(line);
    }
    // As the offering side, given this as the answer.
    let mut offerer = Peer::new(config(), now);
    let _ = offerer.add_host_candidate("127.0.0.1:40001".parse().unwrap());
    if let Ok(Some(_offer)) = offerer.create_offer() {
        let _ = offerer.handle_remote_answer(text);
    }
});
