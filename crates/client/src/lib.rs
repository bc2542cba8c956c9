//! The Consult media client: a native participant that joins a consultation exactly as a browser
//! does and talks to browsers as an equal — for clinic kiosks, device carts, desktop apps and
//! Consult's load generator.
//!
//! The media core is three crates, in the spirit of str0m (engine) and its drivers:
//!
//! * [`peer`] (`consult-peer`) is **sans-IO**: no sockets, tasks or clock. Datagrams and time go
//!   in, [`peer::Peer::poll_output`] says what to send, what happened, and when to call again.
//!   Two peers, a lossy link and a virtual clock fit in a test (`consult-peer`'s `simulated`).
//! * [`codec`] (`consult-codec`) holds the real codecs (Opus, H.264, VP8) and a test pattern: the
//!   only crate that links C libraries.
//! * this crate's [`session::Session`] is the **tokio driver**: it joins through the signaling
//!   service (as a patient from an invite link, or as a clinician), owns the WebSocket, the UDP
//!   sockets, TURN allocations, timers and codecs, and hands out [`session::SessionEvent`]s.
//!   What to do — perfect negotiation, when to restart ICE, which frames can be decoded and
//!   when to ask for a keyframe, the recorder link, when to reconnect to the service — is
//!   decided by two sans-IO state machines inside it (the call and the signaling link), which
//!   this crate's unit tests drive on a virtual clock.
//!
//! ```text
//!   application ── send_video / send_audio / send_chat / offer_file ──► Session (tokio task)
//!        ▲                                                                │
//!        └──────────── SessionEvent (Video, Audio, Chat, File, Stats) ◄───┤ owns
//!                                                                         ▼
//!      consult-api-client ◄── REST, WebSocket ──► SignalLink (reconnect policy, sans-IO)
//!      UDP sockets / TURN relays ◄── datagrams ──► Call (decisions, sans-IO)
//!                                                    ├── Peer (consult-peer, str0m): chat, files, E2EE
//!                                                    └── recorder link (send-only Peer)
//!      consult-codec ◄── frames the call lets through / frames to send
//! ```
//!
//! # Joining as a patient (active)
//!
//! ```no_run
//! use consult_client::codec::pattern::{TestPattern, Tone};
//! use consult_client::session::{Session, SessionConfig, SessionEvent};
//! use consult_client::Credentials;
//!
//! # async fn kiosk() -> Result<(), consult_client::session::SessionError> {
//! let credentials = Credentials::Patient {
//!     invite_url: "https://consult.example.org/join#TOKEN".into(),
//!     name: "Kiosk 3".into(),
//! };
//! let mut session = Session::start(SessionConfig::new(credentials)).await?;
//! let mut pattern = TestPattern::new(640, 480);
//! while let Some(event) = session.next_event().await {
//!     match event {
//!         SessionEvent::Admitted => println!("the doctor let us in"),
//!         SessionEvent::Connected { .. } => session.send_video(pattern.next_frame()).await?,
//!         SessionEvent::Video { frame, from, .. } => println!("{}x{} from {from}", frame.width, frame.height),
//!         SessionEvent::Chat { text, .. } => session.send_chat(&format!("you said: {text}")).await?,
//!         SessionEvent::Ended => break,
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The sans-IO run loop underneath is in the [`peer`] crate's docs.
//!
//! Runnable examples: `kiosk` (sends a moving test pattern and a tone, prints what it receives),
//! `echo-bot` (sends back media, chat and files), `send-file` (sends one file and exits):
//!
//! ```text
//! cargo run --release -p consult-client --example kiosk -- --invite 'http://127.0.0.1:8080/join#TOKEN'
//! ```

/// The typed client of the service (`consult-api-client`), re-exported so an integrator needs
/// one dependency.
pub use consult_api_client as api;
/// Who joins: a patient with an invite link, or a clinician with a session token.
pub use consult_api_client::Credentials;
/// The codecs (`consult-codec`), re-exported so an integrator needs one dependency.
pub use consult_codec as codec;
/// The sans-IO peer (`consult-peer`), re-exported so an integrator needs one dependency.
pub use consult_peer as peer;

mod call;
mod events;
mod net;
mod reconnect;
mod recorder_link;
pub mod relay;
pub mod session;
pub mod video_ladder;
