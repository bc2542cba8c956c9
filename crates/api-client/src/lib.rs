//! One typed client of the Consult service, used by every Rust caller: the media client, the load
//! generator and the end-to-end tests. It speaks the REST API under `/api/v1` and the signaling
//! WebSocket at `/api/v1/signal` with the wire types of `consult-proto`, so a change to the
//! protocol that a caller lacks fails to compile instead of failing at run time.
//!
//! ```text
//!   ApiClient ── REST (reqwest) ──► /api/v1/auth, /consultations, /invites, /ice-servers, ...
//!       │                           /healthz, /metrics (MetricsSnapshot)
//!       └── signal(join) ─ WebSocket ─► /api/v1/signal ── SignalConnection (send / recv)
//! ```
//!
//! Every failure is one [`ApiError`]: the service's own error code and message when it refused,
//! the URL and cause when it did not answer.
//!
//! ```no_run
//! use consult_api_client::{ApiClient, ClinicianLogin};
//! use consult_proto::api::CreateConsultationRequest;
//!
//! # async fn doctor() -> Result<(), consult_api_client::ApiError> {
//! let api = ApiClient::new("http://127.0.0.1:8080")?;
//! let login = ClinicianLogin {
//!     email: "demo.doctor@consult.localhost".into(),
//!     password: "…".into(),
//!     totp_secret: "…".into(),
//! };
//! let token = api.sign_in(&login).await?;
//! let consultation = api
//!     .create_consultation(&token, &CreateConsultationRequest::default())
//!     .await?;
//! println!("send the patient {}", consultation.invite_url.unwrap_or_default());
//! # Ok(()) }
//! ```

mod error;
mod invite;
mod metrics;
mod rest;
mod signal;

pub use error::ApiError;
pub use invite::{parse_invite, PatientPlace};
pub use metrics::MetricsSnapshot;
pub use rest::{totp_code, ApiClient, ClinicianLogin};
pub use signal::{Credentials, SignalConnection};
