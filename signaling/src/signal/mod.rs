//! The signaling WebSocket at `/api/v1/signal`: the live [`hub::Hub`] of consultations and the
//! per-connection [`socket`] loop that speaks the protocol of `consult_proto::signal`.

pub mod hub;
pub mod limits;
pub mod socket;
