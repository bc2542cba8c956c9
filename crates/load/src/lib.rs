//! The Consult QA load generator: many real consultations at once through the real service,
//! each with two native peers from `consult-client`, measured end to end, with a report people
//! can read.
//!
//! A run ([`run::run`]) follows a [`Plan`]:
//!
//! ```text
//!   reach the service ── encode the loops once ── sign clinicians in ── ramp up N consultations
//!        │                  (test pattern, tone)      (one each)          │  create → invite →
//!        │                                                                │  waiting room → admit →
//!        │                                                                │  ICE+DTLS → frames
//!        └─ once a second: /healthz, /metrics, progress, timeline ◄──────┤
//!                                                                         ▼
//!                       Report (JSON) ── html::render ── table::render ◄─ hold, hang up, end
//! ```
//!
//! Every video frame carries a stamp ([`stamp`]): a counter and a hash in an SEI message, so the
//! receiver counts intact, missing and corrupt frames instead of guessing.
//!
//! ```no_run
//! use consult_load::plan::Plan;
//! use consult_load::run::{run, Target, Thresholds};
//! use consult_api_client::ClinicianLogin;
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn qa(clinicians: Vec<ClinicianLogin>) -> Result<(), consult_load::LoadError> {
//! let target = Target {
//!     base_url: "http://127.0.0.1:8080".into(),
//!     clinicians,
//!     bind_ip: None,
//!     service_log: None,
//!     service_pid: None,
//!     metrics_token: std::fs::read_to_string("consult-data/keys/metrics.token").ok(),
//! };
//! let thresholds = Thresholds { max_failures: Some(0), max_p95_join_ms: Some(1000.0) };
//! let report = run(Plan::default(), target, &thresholds, CancellationToken::new(), true).await?;
//! consult_load::write_report(&report, "load-report".as_ref())?;
//! println!("{}", consult_load::table::render(&report));
//! std::process::exit(report.exit_code().into());
//! # }
//! ```

use std::path::{Path, PathBuf};

mod consultation;
pub mod html;
pub mod live;
pub mod media;
pub mod plan;
pub mod progress;
pub mod report;
pub mod run;
pub mod stamp;
pub mod table;
pub mod usage;

pub use plan::Plan;
pub use report::Report;

/// Why a run could not start or its report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The plan makes no sense.
    #[error("{0}")]
    Plan(String),
    /// Fewer clinician accounts than consultations.
    #[error("{needed} consultations need {needed} clinician accounts (a clinician admits one patient at a time); {have} given")]
    NotEnoughClinicians {
        /// How many the plan needs.
        needed: usize,
        /// How many were given.
        have: usize,
    },
    /// Encoding the media loops failed.
    #[error("encoding the media loops: {0}")]
    Media(#[from] consult_client::codec::CodecError),
    /// The encoding task died.
    #[error("encoding the media loops: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The HTTP client could not be set up.
    #[error(transparent)]
    Service(#[from] consult_api_client::ApiError),
    /// Writing the report.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl Report {
    /// The exit code for a pipeline: 0 when the run completed within every threshold, 1 when
    /// a threshold was crossed or the run was aborted, 130 when interrupted.
    pub fn exit_code(&self) -> u8 {
        match self.outcome {
            report::Outcome::Interrupted => 130,
            report::Outcome::Aborted => 1,
            report::Outcome::Completed if self.thresholds.iter().any(|t| !t.passed) => 1,
            report::Outcome::Completed => 0,
        }
    }
}

/// Write `report.json` and `report.html` into `dir` (created if needed); returns their paths.
pub fn write_report(report: &Report, dir: &Path) -> Result<(PathBuf, PathBuf), LoadError> {
    let write = |path: PathBuf, bytes: &[u8]| {
        std::fs::write(&path, bytes)
            .map(|()| path.clone())
            .map_err(|source| LoadError::Write { path, source })
    };
    std::fs::create_dir_all(dir).map_err(|source| LoadError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let json = serde_json::to_vec_pretty(report).map_err(|e| LoadError::Write {
        path: dir.join("report.json"),
        source: e.into(),
    })?;
    let json = write(dir.join("report.json"), &json)?;
    let html = write(dir.join("report.html"), html::render(report).as_bytes())?;
    Ok((json, html))
}
