//! The service's HTTP API as the generator uses it: health, sign-in, consultations, admission,
//! and `/metrics`.

use std::time::{Duration, Instant};

use consult_proto::api::{Consultation, ErrorBody, LoginResponse};
use serde::{Deserialize, Serialize};
use totp_rs::{Algorithm, Secret, TOTP};
use uuid::Uuid;

/// A clinician's sign-in details, as in `demo-credentials.json` or `load-credentials.json`.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClinicianLogin {
    /// Sign-in email.
    pub email: String,
    /// Password.
    pub password: String,
    /// Base32 TOTP secret.
    pub totp_secret: String,
}

impl std::fmt::Debug for ClinicianLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClinicianLogin")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// Why a request to the service failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    /// No answer (connection refused, timeout, DNS).
    #[error("the service at {url} did not answer: {reason}")]
    Unreachable {
        /// What we called.
        url: String,
        /// Why.
        reason: String,
    },
    /// An answer, but a refusal.
    #[error("{status} {code}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The error code from the body (or the status text).
        code: String,
        /// Its message.
        message: String,
    },
    /// An answer we could not read.
    #[error("unexpected answer from {url}: {reason}")]
    Protocol {
        /// What we called.
        url: String,
        /// Why.
        reason: String,
    },
    /// The TOTP secret is not base32.
    #[error("the TOTP secret of {0} is not valid base32")]
    BadSecret(String),
}

/// A snapshot of the service's `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// `consult_joins_total`, summed over roles.
    pub joins: u64,
    /// `consult_active_consultations`.
    pub active_consultations: i64,
    /// CPU seconds the service used: `consult_process_cpu_seconds` (to the microsecond), or
    /// `process_cpu_seconds_total` (whole seconds).
    pub cpu_secs: Option<f64>,
    /// `process_resident_memory_bytes`.
    pub rss_bytes: Option<f64>,
}

impl MetricsSnapshot {
    /// Read the text exposition format.
    ///
    /// ```
    /// use consult_load::service::MetricsSnapshot;
    ///
    /// let text = "# HELP x\nconsult_joins_total{role=\"doctor\"} 3\nconsult_joins_total{role=\"patient\"} 2\n\
    ///             consult_active_consultations 1\nprocess_cpu_seconds_total 1.5\n";
    /// let m = MetricsSnapshot::parse(text);
    /// assert_eq!((m.joins, m.active_consultations, m.cpu_secs), (5, 1, Some(1.5)));
    /// assert_eq!(m.rss_bytes, None);
    /// ```
    pub fn parse(text: &str) -> Self {
        let mut snapshot = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let metric = name.split('{').next().unwrap_or(name);
            match metric {
                "consult_joins_total" => snapshot.joins += value as u64,
                "consult_active_consultations" => snapshot.active_consultations = value as i64,
                // Whole seconds; Consult's own gauge, when there, is finer and wins.
                "process_cpu_seconds_total" => {
                    snapshot.cpu_secs.get_or_insert(value);
                }
                "consult_process_cpu_seconds" => snapshot.cpu_secs = Some(value),
                "process_resident_memory_bytes" => snapshot.rss_bytes = Some(value),
                _ => {}
            }
        }
        snapshot
    }
}

/// A client of one service.
#[derive(Clone)]
pub struct ServiceClient {
    base: String,
    http: reqwest::Client,
}

impl ServiceClient {
    /// A client of the service at `base_url` (e.g. `http://127.0.0.1:8080`); every request
    /// has a time limit.
    pub fn new(base_url: &str) -> Result<Self, ServiceError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ServiceError::Protocol {
                url: base_url.to_owned(),
                reason: format!("cannot set up an HTTP client: {e}"),
            })?;
        Ok(Self {
            base: base_url.trim_end_matches('/').to_owned(),
            http,
        })
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn unreachable(&self, path: &str, e: reqwest::Error) -> ServiceError {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            reason = format!("{reason}: {inner}");
            source = inner.source();
        }
        ServiceError::Unreachable {
            url: self.url(path),
            reason,
        }
    }

    async fn check(response: reqwest::Response) -> Result<reqwest::Response, ServiceError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&body) {
            Ok(error) => (error.error.code, error.error.message),
            Err(_) => (
                status.canonical_reason().unwrap_or("error").to_owned(),
                body.chars().take(200).collect(),
            ),
        };
        Err(ServiceError::Refused {
            status: status.as_u16(),
            code,
            message,
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        response: reqwest::Response,
    ) -> Result<T, ServiceError> {
        let response = Self::check(response).await?;
        response.json().await.map_err(|e| ServiceError::Protocol {
            url: self.url(path),
            reason: e.to_string(),
        })
    }

    /// `GET /healthz`; how long it took.
    pub async fn healthz(&self) -> Result<Duration, ServiceError> {
        let started = Instant::now();
        let response = self
            .http
            .get(self.url("/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| self.unreachable("/healthz", e))?;
        Self::check(response).await?;
        Ok(started.elapsed())
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> Result<MetricsSnapshot, ServiceError> {
        let response = self
            .http
            .get(self.url("/metrics"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| self.unreachable("/metrics", e))?;
        let text = Self::check(response)
            .await?
            .text()
            .await
            .map_err(|e| self.unreachable("/metrics", e))?;
        Ok(MetricsSnapshot::parse(&text))
    }

    /// Sign in with password and TOTP; returns the bearer token. A code refused as already
    /// used (a run within 30 s of another with the same account) is retried once with the next
    /// step's code, which the service accepts within its one-step skew.
    pub async fn sign_in(&self, login: &ClinicianLogin) -> Result<String, ServiceError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
        match self.sign_in_at(login, now).await {
            Err(ServiceError::Refused { code, .. }) if code == "totp_replayed" => {
                self.sign_in_at(login, now + 30).await
            }
            other => other,
        }
    }

    async fn sign_in_at(&self, login: &ClinicianLogin, unix: u64) -> Result<String, ServiceError> {
        let code = totp_code(&login.totp_secret, unix)
            .ok_or_else(|| ServiceError::BadSecret(login.email.clone()))?;
        let path = "/api/v1/auth/login";
        let response = self
            .http
            .post(self.url(path))
            .json(&serde_json::json!({
                "email": login.email, "password": login.password, "totp": code
            }))
            .send()
            .await
            .map_err(|e| self.unreachable(path, e))?;
        match self.json::<LoginResponse>(path, response).await? {
            LoginResponse::SignedIn { session } => {
                session.token.ok_or_else(|| ServiceError::Protocol {
                    url: self.url(path),
                    reason: "no bearer token in the sign-in answer".into(),
                })
            }
            LoginResponse::MfaEnrolmentRequired { .. } => Err(ServiceError::Refused {
                status: 200,
                code: "mfa_enrolment_required".into(),
                message: format!("{} has not enrolled a second factor yet", login.email),
            }),
        }
    }

    /// End-to-end encrypted recordings need the clinician's recording key. When the account
    /// has none, register a throwaway one whose private half is dropped at once: such load
    /// recordings can never be opened. An account that has a key keeps it.
    pub async fn ensure_recording_key(&self, token: &str) -> Result<(), ServiceError> {
        #[derive(Deserialize)]
        struct RecordingKey {
            public_key: Option<String>,
        }
        let path = "/api/v1/account/recording-key";
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| self.unreachable(path, e))?;
        let current: RecordingKey = self.json(path, response).await?;
        if current.public_key.is_some() {
            return Ok(());
        }
        let throwaway =
            consult_e2ee::recording_key::RecordingKeyPair::generate(&mut rand::rngs::OsRng);
        let response = self
            .http
            .put(self.url(path))
            .bearer_auth(token)
            .json(&serde_json::json!({ "public_key": throwaway.public().to_base64() }))
            .send()
            .await
            .map_err(|e| self.unreachable(path, e))?;
        Self::check(response).await.map(drop)
    }

    /// `POST /api/v1/auth/logout`: end a clinician's session.
    pub async fn sign_out(&self, token: &str) -> Result<(), ServiceError> {
        let path = "/api/v1/auth/logout";
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| self.unreachable(path, e))?;
        Self::check(response).await.map(drop)
    }

    /// `POST /api/v1/consultations`; returns its id and invite link.
    pub async fn create_consultation(
        &self,
        token: &str,
        title: &str,
        e2ee: bool,
        recorded: bool,
    ) -> Result<(Uuid, String), ServiceError> {
        let path = "/api/v1/consultations";
        let mode = if recorded { "recorded" } else { "live_only" };
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(&serde_json::json!({ "title": title, "e2ee": e2ee, "mode": mode }))
            .send()
            .await
            .map_err(|e| self.unreachable(path, e))?;
        let consultation: Consultation = self.json(path, response).await?;
        let invite = consultation
            .invite_url
            .ok_or_else(|| ServiceError::Protocol {
                url: self.url(path),
                reason: "no invite link in the answer".into(),
            })?;
        Ok((consultation.id, invite))
    }

    /// Admit a waiting patient.
    pub async fn admit(
        &self,
        token: &str,
        consultation: Uuid,
        participant: Uuid,
    ) -> Result<(), ServiceError> {
        let path = format!("/api/v1/consultations/{consultation}/participants/{participant}/admit");
        let response = self
            .http
            .post(self.url(&path))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| self.unreachable(&path, e))?;
        Self::check(response).await.map(drop)
    }

    /// End a consultation (everyone in it is told).
    pub async fn end(&self, token: &str, consultation: Uuid) -> Result<(), ServiceError> {
        let path = format!("/api/v1/consultations/{consultation}/end");
        let response = self
            .http
            .post(self.url(&path))
            .bearer_auth(token)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| self.unreachable(&path, e))?;
        Self::check(response).await.map(drop)
    }
}

/// The TOTP code (SHA-1, 6 digits, 30 s) of a base32 secret at a Unix time.
///
/// ```
/// // RFC 6238 appendix B, SHA-1, T = 59 s (8 digits there; the last 6 here).
/// let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"; // "12345678901234567890"
/// assert_eq!(consult_load::service::totp_code(secret, 59).as_deref(), Some("287082"));
/// assert_eq!(consult_load::service::totp_code("not base32!", 59), None);
/// ```
pub fn totp_code(secret_b32: &str, unix: u64) -> Option<String> {
    let bytes = Secret::Encoded(secret_b32.to_owned()).to_bytes().ok()?;
    let totp = TOTP::new_unchecked(Algorithm::SHA1, 6, 1, 30, bytes, None, String::new());
    Some(totp.generate(unix))
}
