//! The Consult media core: a WebRTC peer that talks to browsers and other stacks as an equal —
//! for clinic kiosks, device carts, desktop apps, and Consult's own recorder and load generator.
//!
//! Two layers, as in str0m, on which it is built:
//!
//! * [`peer::Peer`] is **sans-IO**: no sockets, tasks or clock. Datagrams and time go in
//!   ([`Peer::handle_receive`](peer::Peer::handle_receive),
//!   [`Peer::handle_timeout`](peer::Peer::handle_timeout)), and
//!   [`Peer::poll_output`](peer::Peer::poll_output) says what to send, what happened, and when to
//!   call again. Two peers, a lossy link and a virtual clock fit in a test ([`simulated`]).
//! * [`session::Session`] is the **tokio driver**: it joins a consultation through the signaling
//!   service (as a patient from an invite link, or as a clinician), owns the UDP sockets, TURN
//!   allocations and timers, runs perfect negotiation, encodes and decodes, and hands out
//!   [`session::SessionEvent`]s.
//!
//! ```text
//!   application ── send_video / send_audio / send_chat / offer_file ──► Session (tokio task)
//!        ▲                                                                │
//!        └──────────── SessionEvent (Video, Audio, Chat, File, Stats) ◄───┤
//!                                                                         │ owns
//!      signal_client ◄── WebSocket ──► signaling service                  ▼
//!      UDP sockets / TURN relays ◄── Transmit / Receive ──►  Peer (sans-IO, str0m)
//!                                                              ├── chat channel  (chat)
//!                                                              ├── file channel  (file_transfer)
//!                                                              └── audio, video  (codec: Opus, H.264, VP8)
//! ```
//!
//! # Joining as a patient (active)
//!
//! ```no_run
//! use consult_media::codec::pattern::{TestPattern, Tone};
//! use consult_media::session::{Session, SessionConfig, SessionEvent};
//! use consult_media::signal_client::Credentials;
//!
//! # async fn kiosk() -> Result<(), consult_media::session::SessionError> {
//! let credentials = Credentials::Patient {
//!     invite_url: "https://consult.example.org/join#TOKEN".into(),
//!     name: "Kiosk 3".into(),
//! };
//! let mut session = Session::start(SessionConfig::new(credentials)).await?;
//! let mut pattern = TestPattern::new(640, 480);
//! while let Some(event) = session.next_event().await {
//!     match event {
//!         SessionEvent::Admitted => println!("the doctor let us in"),
//!         SessionEvent::Connected => session.send_video(pattern.next_frame()).await?,
//!         SessionEvent::Video { frame, .. } => println!("{}x{} from the doctor", frame.width, frame.height),
//!         SessionEvent::Chat(text) => session.send_chat(&format!("you said: {text}")).await?,
//!         SessionEvent::Ended => break,
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # The sans-IO run loop (passive)
//!
//! ```
//! use std::time::Instant;
//! use consult_media::peer::{Output, Peer, PeerConfig};
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
//! Runnable examples: `kiosk` (sends a moving test pattern and a tone, prints what it receives),
//! `echo-bot` (sends back media, chat and files), `send-file` (sends one file and exits):
//!
//! ```text
//! cargo run --release -p consult-media --example kiosk -- --invite 'http://127.0.0.1:8080/join#TOKEN'
//! ```

pub mod chat;
pub mod codec;
pub mod file_transfer;
pub mod peer;
mod recorder_link;
pub mod session;
pub mod signal_client;
pub mod simulated;
