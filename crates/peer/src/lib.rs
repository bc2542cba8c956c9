//! A sans-IO WebRTC peer for Consult, on [str0m]: audio and video tracks, a chat channel, file
//! transfer, and SFrame end-to-end encryption hooked into every frame and message.
//!
//! [`Peer`] never opens a socket, spawns a task or reads the clock. Datagrams and time go in
//! ([`Peer::handle_receive`], [`Peer::handle_timeout`]); [`Peer::poll_output`] says what to send,
//! what happened, and when to call again. The same peer runs inside the tokio client
//! (`consult-client`), the service's recorder and the load generator, and — with the `simulated`
//! feature — two of them run a whole call over a lossy link on a virtual clock in a unit test.
//!
//! ```text
//!   signaling (SDP, candidates) ──► create_offer / accept_offer / accept_answer ─┐
//!   datagrams ──────────────────► handle_receive(now, ..)                         │
//!   time ───────────────────────► handle_timeout(now)                             ▼
//!   application ────────────────► write_video / write_audio / send_chat /  ┌──────────────┐
//!                                 offer_file / accept_file / ...            │     Peer     │
//!                                                                          │  (str0m Rtc) │
//!   Output::Transmit(datagram) ◄── poll_output() ◄─────────────────────────┤  chat        │
//!   Output::Event(PeerEvent)   ◄──                                          │  file_transfer│
//!   Output::Timeout(at)        ◄──                                          │  e2ee        │
//!                                                                          └──────────────┘
//! ```
//!
//! # The run loop (passive)
//!
//! ```
//! use std::time::Instant;
//! use consult_peer::{Output, Peer, PeerConfig};
//!
//! let mut peer = Peer::new(PeerConfig::default(), Instant::now());
//! let offer = peer.create_offer().unwrap(); // send through signaling
//! assert!(offer.is_some());
//! // After every input (a datagram, a timeout, a call), drain the outputs:
//! loop {
//!     match peer.poll_output().unwrap() {
//!         Output::Transmit(t) => { /* socket.send_to(&t.contents, t.destination) from t.source */ }
//!         Output::Event(e) => println!("{e:?}"),
//!         Output::Timeout(at) => break, // call peer.handle_timeout(at) then, unless a datagram comes first
//!     }
//! }
//! ```
//!
//! # A whole call on a virtual clock (with the `simulated` feature)
//!
//! ```
//! # #[cfg(feature = "simulated")] {
//! use std::time::Duration;
//! use consult_peer::simulated::{Link, SimulatedCall};
//! use consult_peer::PeerConfig;
//!
//! let mut call = SimulatedCall::new(PeerConfig::default(), PeerConfig::default(), Link::perfect(), 1);
//! call.negotiate().unwrap();
//! call.run_until(Duration::from_secs(5), |c| c.a.connected && c.b.connected).unwrap();
//! assert!(call.a.connected);
//! # }
//! ```
//!
//! Codecs live apart, in `consult-codec`, so that a program that only forwards or stores encoded
//! frames (the service's recorder) links no C codec library.

pub mod chat;
pub mod file_transfer;
mod peer;
pub mod redundancy;
#[cfg(feature = "simulated")]
pub mod simulated;

pub use peer::{
    DtlsCert, E2eeSetup, EncodedFrame, Output, Peer, PeerConfig, PeerError, PeerEvent,
    RemoteDescriptionOutcome, Stats, TrackKind, Transmit, VideoCodec, VideoSource, RECEIVE_BATCH,
    SCREEN_STREAM_ID,
};
/// The WebRTC engine underneath, for candidates and states the peer hands through unchanged.
pub use str0m;
