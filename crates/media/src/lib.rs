//! The Consult media core: a WebRTC peer that talks to browsers and other stacks as an equal.
pub mod chat;
pub mod codec;
pub mod file_transfer;
pub mod peer;
pub mod session;
pub mod signal_client;
pub mod simulated;
