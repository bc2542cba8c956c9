//! The Consult signaling service: accounts with a second factor, consultations and patient
//! invites, the waiting room, the signaling WebSocket, TURN credentials and a hash-chained audit
//! trail — one axum service over SQLite, whose binary is `consult`.
//!
//! ```text
//!   browser / native peer ── HTTPS ──► app::router ──► auth, consultations, invites, ice
//!                         ── WS ─────► signal::socket ──► signal::hub (rooms: waiting, admitted)
//!                                              │
//!                  db (SQLite: accounts, sessions, consultations, invites, participants)
//!                  audit (append-only hash chain)      metrics (Prometheus)
//! ```
//!
//! Start a service in-process (what the integration tests do):
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use consult_signaling::{clock::SystemClock, config::Config, server};
//! let config = Config { bind: "127.0.0.1:0".parse()?, ..Config::default() };
//! let shutdown = server::ShutdownSignal::listen()?;
//! let running = server::start(config, std::sync::Arc::new(SystemClock)).await?;
//! println!("Consult is running at {}/", running.url);
//! running.run_until(shutdown).await
//! # }
//! ```

pub mod accounts;
pub mod admin;
pub mod alerts;
pub mod app;
pub mod audit;
pub mod audit_checkpoints;
pub mod audit_tally;
pub mod auth;
pub mod backup;
pub mod certificates;
pub mod client_origin;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod consultations;
pub mod db;
pub mod error;
pub mod ice;
pub mod invites;
pub mod limits;
pub mod metrics;
pub mod recording;
pub mod secrets;
pub mod server;
pub mod signal;
pub mod state;
pub mod web;
pub mod write_lane;
