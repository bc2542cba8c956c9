//! End-to-end encryption for Consult: SFrame (RFC 9605) frame protection for Opus, VP8 and
//! H.264, and the peer-to-peer key schedule with a short authentication string (SAS).
//!
//! DTLS-SRTP protects each hop; SFrame protects each *encoded frame* from the sender's encoder
//! to the receiver's decoder, so anything that terminates DTLS in between — a recorder, a media
//! relay, a service that swaps fingerprints — sees ciphertext. Keys are agreed by the
//! participants over their own data channel and never reach the signaling service; the SAS lets
//! the two people check that nobody in the middle swapped keys.
//!
//! Sans-IO, like the media core: nothing here opens a socket or reads the clock. Time (`now`) and
//! randomness (a [`rand_core::CryptoRngCore`]) are arguments; key messages go out through
//! [`KeySchedule::poll_output`] and come in through [`KeySchedule::handle_message`];
//! timers run in [`KeySchedule::handle_timeout`].
//!
//! ```text
//!   encoder ──frame──► KeySchedule::protect(format) ──SFrame──► packetizer ─► DTLS-SRTP ─►
//!   ─► depacketizer ──SFrame──► KeySchedule::unprotect(format) ──frame──► decoder
//!
//!   data channel "consult-e2ee":  commit (hash of the key) ─► ◄─ commit
//!                                 hello (X25519 public key) ─► ◄─ hello   (each checked
//!                                                                   against its commit)
//!                                 key (base key, AEAD-wrapped) ─► ◄─ ack
//!   ┌────────────┐   ┌──────────────┐   ┌────────────┐
//!   │ sframe     │   │ format       │   │ schedule   │  epochs, KIDs, counters, replay
//!   │ RFC 9605   │◄──│ Opus/VP8/    │◄──│ wire, sas  │  windows, rotation, erasure
//!   │ (sframe    │   │ H.264/data   │   │            │
//!   │  crate)    │   └──────────────┘   └────────────┘
//!   └────────────┘
//! ```
//!
//! # Two peers agreeing keys and protecting a frame
//!
//! ```
//! use std::time::Instant;
//! use consult_e2ee::{Fingerprint, KeySchedule, MediaFormat, ScheduleConfig, ScheduleOutput};
//!
//! let now = Instant::now();
//! let mut rng = rand::thread_rng();
//! let fp_a = Fingerprint::new("sha-256", vec![0xaa; 32]);
//! let fp_b = Fingerprint::new("sha-256", vec![0xbb; 32]);
//! let mut alice = KeySchedule::new(ScheduleConfig::default(), "alice");
//! let mut bob = KeySchedule::new(ScheduleConfig::default(), "bob");
//! alice.connect(now, &mut rng, "bob", fp_a.clone(), fp_b.clone());
//! bob.connect(now, &mut rng, "alice", fp_b, fp_a);
//! // Shuttle key messages until both sides are quiet (a data channel does this in real life).
//! loop {
//!     let mut moved = false;
//!     while let ScheduleOutput::Send(msg) = alice.poll_output() {
//!         bob.handle_message(now, &mut rng, &msg).unwrap();
//!         moved = true;
//!     }
//!     while let ScheduleOutput::Send(msg) = bob.poll_output() {
//!         alice.handle_message(now, &mut rng, &msg).unwrap();
//!         moved = true;
//!     }
//!     if !moved { break; }
//! }
//! assert_eq!(alice.sas(), bob.sas()); // shown to both people as "1234 5678"
//! let sealed = alice.protect(now, MediaFormat::Opus, b"an opus packet").unwrap();
//! assert_eq!(bob.unprotect(now, MediaFormat::Opus, &sealed).unwrap(), b"an opus packet");
//! ```
//!
//! # The wire format (what the JavaScript side in `web-demo/assets/e2ee/` implements too)
//!
//! **SFrame.** RFC 9605 exactly: header `|X|K|Y|C|` + KID + CTR, key and salt derived with HKDF
//! from the base key and KID, nonce = salt XOR CTR, AAD = header ‖ metadata. Cipher suites
//! `AES_128_GCM_SHA256_128` (4, the default) and `AES_256_GCM_SHA512_128` (5). The AES-CTR-HMAC
//! suites (1–3) are not supported: ring (which the frame cipher is composed on, see
//! [`sframe`]) lacks AES-CTR with HMAC, and WebCrypto's AES-CTR + HMAC would be a second
//! construction to maintain. Frames can be protected into a reused buffer and opened where they
//! lie ([`in_place`], [`KeySchedule::protect_into`], [`KeySchedule::unprotect_in_place`]). `test-vectors/sframe.json`
//! carries RFC 9605 Appendix C's vectors for suites 4 and 5 and the header encodings, and this
//! crate's own codec-format vectors; the Rust tests and the JavaScript tests both read it.
//!
//! **KID.** `KID = sender_tag << 24 | stream << 16 | (epoch & 0xffff)`: `sender_tag` is the first
//! two bytes (big-endian) of SHA-256 of the sender's hello public key; `stream` is 0 for media
//! (audio and video share one counter) and 1 for data-channel messages (chat, files), so the
//! browser's media worker and its page never share a counter; `epoch` counts the sender's keys
//! from 1. **CTR** starts at 0 for each KID and increases by one per protected unit.
//!
//! **Frame formats** ([`MediaFormat`]). The bytes a packetizer must read stay in the clear, ahead of
//! the SFrame header, and are the SFrame *metadata* (authenticated, not encrypted):
//! * `Opus`: nothing in the clear: `header ‖ ciphertext ‖ tag`.
//! * `Vp8`: the first 10 bytes of a keyframe (frame tag, start code, dimensions) or the first 3
//!   bytes of a delta frame (the frame tag; keyframe when bit 0 of byte 0 is 0); a shorter frame
//!   is refused: `clear ‖ header ‖ ciphertext ‖ tag`, metadata = `clear`.
//! * `Data` (chat, file frames): nothing in the clear; the plaintext is one kind byte (0 text,
//!   1 binary) followed by the message.
//! * `H264` (Annex-B): the frame is split into NAL units at start codes (`00 00 01`, with any
//!   zero bytes before it belonging to the start code). SPS, PPS, AUD, end-of-sequence,
//!   end-of-stream and filler NAL units (types 7–12) stay whole in the clear. Every other NAL unit
//!   keeps in the clear its header byte and, for slices (types 1–5), the next
//!   [`format::H264_CLEAR_SLICE_BYTES`] bytes (first_mb_in_slice, slice_type, pps_id, which
//!   receivers parse before decrypting) — fewer if the unit is shorter. The rest of each such
//!   unit is its *piece*. The pieces' bytes, concatenated in order, are the SFrame plaintext;
//!   `header ‖ ciphertext ‖ tag` is cut back into pieces of the same lengths, with the SFrame
//!   header in front of the first piece and the tag after the last. Each piece is then escaped
//!   (insert `03` after `00 00` when the next byte is `00`–`03`, counting the zeros that end the
//!   unit's clear part) and followed by one trailer byte, `0x80 | clear length`, which tells the
//!   receiver where the clear part ends even in a unit shorter than usual; no start code can
//!   appear in ciphertext and no unit ends in a zero byte. The metadata is, for every unit in order:
//!   `u8 protected(0|1) ‖ u32 clear length ‖ clear bytes ‖ (u32 piece length, if protected)`,
//!   all big-endian, so moving bytes between units or between clear and encrypted fails
//!   authentication. A frame with no protected unit is refused.
//!
//! **Key agreement** ([`wire`], over the reliable, ordered data channel labelled
//! `consult-e2ee`, JSON text, `"v":2`). Each side makes a fresh X25519 key per connection and
//! first sends only `commit {participant, commitment}`: SHA-256 of `"consult-e2ee/commit/v2"`
//! followed by the sender's participant id, the sender's DTLS fingerprint, the receiver's DTLS
//! fingerprint (both as the sender sees them) and the public key, each prefixed with its u16
//! big-endian length ([`sas::commitment`]). Once it holds the other side's commitment it reveals
//! its key in `hello {participant, public_key}`. A hello that arrives before its sender's commit,
//! or whose key does not match that commit (checked with the fingerprints as the receiver sees
//! them), stops the agreement: the receiver erases every key of the connection, sends
//! `abort {from, reason}` (`reveal_before_commitment` or `commitment_mismatch`) and tells its
//! person why; the other side does the same on receiving the abort. Nothing more is accepted on
//! that connection. As in ZRTP (RFC 6189 §4.4.1.1), nobody can choose a key after seeing the
//! other's: a middle that runs its own agreement with each side commits blind on at least one
//! leg, so it makes both strings equal once in 10⁸ calls (and each failed try shows); a middle
//! that swaps the certificates and relays the key messages is caught by the commitments
//! themselves. The transcript hash is SHA-256 of `"consult-e2ee/transcript/v1"` followed by the
//! two DTLS fingerprints and then the two public keys, each pair sorted bytewise and each item
//! prefixed with its u16 big-endian length; a fingerprint's bytes are the lower-case hash name,
//! one zero byte, and the digest. `Z = X25519(own secret, peer public)`; the key hash is SHA-256
//! of `"consult-e2ee/keys/v1"` followed by the two public keys (sorted, length-prefixed as
//! above); `wrap_key(from→to) = HKDF-SHA256(salt = key hash, ikm = Z,
//! info = "consult-e2ee/wrap/v1|" + from + "|" + to)`, 32 bytes. The wrap keys deliberately
//! leave the DTLS fingerprints out: a middle that terminates DTLS and relays the key messages
//! unchanged learns nothing (it lacks both X25519 secrets) and is exposed by the SAS instead. A sender's base key for an
//! epoch (16 bytes for suite 4, 32 for suite 5) travels in `key {from, to, epoch, suite, nonce,
//! wrapped}`, sealed with AES-256-GCM under `wrap_key(from→to)` with a random 12-byte nonce and
//! AAD `"consult-e2ee/key/v1|" + from + "|" + to + "|" + epoch + "|" + suite`. The receiver answers
//! `ack {from, epoch}`; the sender switches to the new key when acknowledged (or after
//! [`ScheduleConfig::switch_after`]).
//!
//! **SAS.** `HKDF-SHA256(salt = empty, ikm = transcript hash, info = "consult-e2ee/sas/v1")`,
//! 5 bytes as a big-endian integer modulo 10⁸, shown as two groups of four digits. Eight digits
//! (26.6 bits) are kept on purpose: with commitments a middle gets one blind guess per call, so
//! its odds are 1 in 10⁸ and every miss is two different strings on the two screens; longer
//! strings (more digits, word lists) make people compare less carefully, and ZRTP settles for
//! 16–20 bits with the same commitment. Both DTLS
//! fingerprints are in the transcript: a service that substitutes its own certificate in the
//! SDP to sit in the middle gives the two sides different strings; one that also substitutes
//! its own X25519 keys changes the public keys in the transcript as well.
//!
//! **Epochs.** A sender starts a new epoch when a peer connects (join), when it disconnects
//! (leave), every [`ScheduleConfig::rotate_every`] (10 minutes by default), and when a counter
//! reaches [`ScheduleConfig::max_counter`]. The old send key is erased on switching. A receiver
//! keeps a sender's older keys for [`ScheduleConfig::grace`] after the first frame under a newer
//! epoch (and at most `switch_after + grace` after the newer key arrived), then erases them;
//! frames under an erased key are refused as expired. Key messages for an epoch not newer than
//! the last one accepted from that sender are refused as replays.

pub mod format;
pub mod in_place;
pub mod recording_key;
pub mod sas;
pub mod schedule;
pub mod sframe;
pub mod wire;

#[cfg(test)]
mod grinding_tests;
#[cfg(test)]
mod test_vectors;

pub use format::MediaFormat;
pub use sas::{Fingerprint, Sas};
pub use schedule::{
    E2eeError, E2eeEvent, E2eeStats, KeySchedule, Rejection, ScheduleConfig, ScheduleOutput,
};
pub use sframe::Suite;

pub use rand_core;
