//! The SDP text a remote participant sends — an offer, an answer or a trickled candidate line —
//! through the parsers the peer uses (str0m's), without building peers: the same input surface
//! as `peer_sdp` at parser speed, so a campaign reaches millions of executions. Never a panic.
#![no_main]
use consult_peer::str0m::change::{SdpAnswer, SdpOffer};
use consult_peer::str0m::Candidate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(offer) = SdpOffer::from_sdp_string(text) {
        let _ = offer.to_sdp_string();
    }
    if let Ok(answer) = SdpAnswer::from_sdp_string(text) {
        let _ = answer.to_sdp_string();
    }
    for line in text.lines().take(16) {
        let _ = Candidate::from_sdp_string(line);
    }
});
