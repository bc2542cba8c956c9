//! End-to-end tests of the media core against a running service, real codecs, coturn, ffmpeg
//! and an independent WebRTC stack: one module per subject, one test binary for all of them
//! (one link instead of seven).

mod backup;
mod deployment;
mod e2ee_call;
mod emulated;
mod examples;
mod export;
mod group_call;
mod native_call;
mod object_storage;
mod recorded_call;
mod relay;
mod webrtc_rs;
