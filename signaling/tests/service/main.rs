//! The service from outside, as its clients and operators meet it: the HTTP API, signaling,
//! recording, the CLI, and what the service binary links. One module per subject, one test
//! binary for all of them (one link instead of five).

mod alerts;
mod api;
mod backup;
mod certificates;
mod cli;
mod common;
mod dependencies;
mod groups;
mod limits;
mod nodes;
mod operator;
mod passkeys;
mod query_layer;
mod recording;
mod sessions;
mod signaling;
mod throttling;
