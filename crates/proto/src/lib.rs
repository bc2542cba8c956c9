//! Wire types of the Consult signaling protocol and REST API, shared by the service and every client.
//!
//! Two surfaces live here:
//!
//! * [`api`]: request and response bodies of the HTTP API under `/api/v1`, and the
//!   [`api::ErrorBody`] every failing request answers with.
//! * [`ice_url`]: the `stun:`, `turn:` and `turns:` URLs of the ICE servers, parsed strictly.
//! * [`media`]: the media vocabulary the peer and the codecs share ([`media::VideoCodec`]).
//! * [`signal`]: the JSON messages of the signaling WebSocket at `/api/v1/signal`. Every message
//!   is an object with a `type` and the protocol version `v` ([`signal::PROTOCOL_VERSION`]).
//!
//! All types derive `serde` and `utoipa::ToSchema`, so the service publishes a machine-readable
//! schema of both surfaces generated from this very code.
//!
//! ```
//! use consult_proto::signal::{ClientMessage, decode_client_message};
//!
//! let msg = decode_client_message(r#"{"v":1,"type":"ping"}"#, 64 * 1024).unwrap();
//! assert!(matches!(msg, ClientMessage::Ping {}));
//! ```

pub mod api;
pub mod ice_url;
pub mod media;
pub mod signal;
