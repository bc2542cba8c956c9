//! The REST API under `/api/v1`, plus `/healthz` and `/metrics`.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use consult_proto::api::{
    AccountSummary, AddClinicianRequest, ChangePasswordRequest, Colleague, Consultation,
    CreateConsultationRequest, EnrolRequest, EnrolResponse, ErrorBody, IceServers,
    InspectInviteRequest, InviteInfo, InviteKind, IssueInviteRequest, IssuedInvite, LoginRequest,
    LoginResponse, MfaEnrolRequest, MfaEnrolResponse, RecordingKeyBody, RedeemInviteRequest,
    RedeemInviteResponse, Session, SharedConsultation, WaitingPatient,
};
use consult_proto::api::{
    CertificateList, CertificateSummary, HeldCertificate, HeldCertificates,
    HeldCertificatesRequest, IssueCertificateRequest, Presentation, PresentationRequest,
    RevokeCertificateRequest, VerificationResult, VerifyCertificateRequest,
};
use consult_proto::signal::ClientMessage;
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use totp_rs::{Algorithm, Secret, TOTP};
use uuid::Uuid;

use crate::{parse_invite, ApiError, MetricsSnapshot, PatientPlace, SignalConnection};

/// A clinician's sign-in details, as in `demo-credentials.json` or `load-credentials.json`.
/// Its `Debug` shows the email only.
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

/// A client of one service. Cheap to clone; every request has a time limit.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    /// The bearer token `/metrics` asks for, if known.
    metrics_token: Option<String>,
}

impl ApiClient {
    /// A client of the service at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config().map_err(|e| ApiError::Protocol {
                url: base_url.to_owned(),
                reason: format!("cannot set up TLS: {e}"),
            })?)
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ApiError::Protocol {
                url: base_url.to_owned(),
                reason: format!("cannot set up an HTTP client: {e}"),
            })?;
        Ok(Self {
            base: base_url.trim_end_matches('/').to_owned(),
            http,
            metrics_token: None,
        })
    }

    /// The same client, reading `/metrics` with this token (the service's `admin.metrics_token`,
    /// or the contents of its `DATA_DIR/keys/metrics.token`).
    pub fn with_metrics_token(mut self, token: impl Into<String>) -> Self {
        self.metrics_token = Some(token.into().trim().to_owned());
        self
    }

    /// The client of the service an invite link (`https://host/join#TOKEN`) leads to, and the
    /// invite token.
    pub fn for_invite(invite_url: &str) -> Result<(Self, String), ApiError> {
        let (base, token) = parse_invite(invite_url)?;
        Ok((Self::new(&base)?, token))
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Send, and turn a refusal into [`ApiError::Refused`] with the service's code and message.
    async fn send(&self, path: &str, request: RequestBuilder) -> Result<Response, ApiError> {
        let response = request.send().await.map_err(|e| ApiError::Unreachable {
            url: self.url(path),
            reason: chain(&e),
        })?;
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
        Err(ApiError::Refused {
            status: status.as_u16(),
            code,
            message,
        })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        path: &str,
        request: RequestBuilder,
    ) -> Result<T, ApiError> {
        let response = self.send(path, request).await?;
        response.json().await.map_err(|e| ApiError::Protocol {
            url: self.url(path),
            reason: chain(&e),
        })
    }

    async fn no_content(&self, path: &str, request: RequestBuilder) -> Result<(), ApiError> {
        self.send(path, request).await.map(drop)
    }

    /// `GET /healthz`; how long it took.
    pub async fn healthz(&self) -> Result<Duration, ApiError> {
        let started = Instant::now();
        let request = self
            .request(Method::GET, "/healthz", None)
            .timeout(Duration::from_secs(2));
        self.no_content("/healthz", request).await?;
        Ok(started.elapsed())
    }

    /// `GET /metrics`, with the metrics token if one was given ([`Self::with_metrics_token`]).
    pub async fn metrics(&self) -> Result<MetricsSnapshot, ApiError> {
        let path = "/metrics";
        let request = self
            .request(Method::GET, path, self.metrics_token.as_deref())
            .timeout(Duration::from_secs(2));
        let text =
            self.send(path, request)
                .await?
                .text()
                .await
                .map_err(|e| ApiError::Unreachable {
                    url: self.url(path),
                    reason: chain(&e),
                })?;
        Ok(MetricsSnapshot::parse(&text))
    }

    /// `POST /api/v1/auth/enrol`: set a new account's password with the token of its
    /// enrolment link (the part after `#`).
    pub async fn enrol(&self, enrol: &EnrolRequest) -> Result<EnrolResponse, ApiError> {
        let path = "/api/v1/auth/enrol";
        self.json(path, self.request(Method::POST, path, None).json(enrol))
            .await
    }

    /// `POST /api/v1/auth/mfa/enrol`: confirm the authenticator app of a sign-in that answered
    /// [`LoginResponse::MfaEnrolmentRequired`] with its first code; signs in, and hands out the
    /// recovery codes (once).
    pub async fn mfa_enrol(&self, enrol: &MfaEnrolRequest) -> Result<MfaEnrolResponse, ApiError> {
        let path = "/api/v1/auth/mfa/enrol";
        self.json(path, self.request(Method::POST, path, None).json(enrol))
            .await
    }

    /// `POST /api/v1/auth/login` as it is.
    pub async fn login(&self, login: &LoginRequest) -> Result<LoginResponse, ApiError> {
        let path = "/api/v1/auth/login";
        self.json(path, self.request(Method::POST, path, None).json(login))
            .await
    }

    /// Sign a clinician in with password and a TOTP code computed from their secret; returns
    /// the bearer token. A code refused as already used (another sign-in within 30 s) is
    /// retried once with the next step's code, which the service accepts within its skew.
    pub async fn sign_in(&self, login: &ClinicianLogin) -> Result<String, ApiError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
        match self.sign_in_at(login, now).await {
            Err(error) if error.code() == Some("totp_replayed") => {
                self.sign_in_at(login, now + 30).await
            }
            other => other,
        }
    }

    async fn sign_in_at(&self, login: &ClinicianLogin, unix: u64) -> Result<String, ApiError> {
        let totp = totp_code(&login.totp_secret, unix)
            .ok_or_else(|| ApiError::BadSecret(login.email.clone()))?;
        let request = LoginRequest {
            email: login.email.clone(),
            password: login.password.clone(),
            totp: Some(totp),
            recovery_code: None,
        };
        match self.login(&request).await? {
            LoginResponse::SignedIn { session } => {
                session.token.ok_or_else(|| ApiError::Protocol {
                    url: self.url("/api/v1/auth/login"),
                    reason: "no bearer token in the sign-in answer".into(),
                })
            }
            LoginResponse::MfaEnrolmentRequired { .. } => Err(ApiError::Refused {
                status: 200,
                code: "mfa_enrolment_required".into(),
                message: format!("{} has not enrolled a second factor yet", login.email),
            }),
        }
    }

    /// `POST /api/v1/auth/logout`: end a session.
    pub async fn sign_out(&self, token: &str) -> Result<(), ApiError> {
        let path = "/api/v1/auth/logout";
        let request = self
            .request(Method::POST, path, Some(token))
            .timeout(Duration::from_secs(5));
        self.no_content(path, request).await
    }

    /// `GET /api/v1/auth/session`: the session as it stands (reading it does not extend it).
    pub async fn session(&self, token: &str) -> Result<Session, ApiError> {
        let path = "/api/v1/auth/session";
        self.json(path, self.request(Method::GET, path, Some(token)))
            .await
    }

    /// `POST /api/v1/auth/activity`: the person is active; the session's idle deadline moves.
    pub async fn activity(&self, token: &str) -> Result<Session, ApiError> {
        let path = "/api/v1/auth/activity";
        self.json(path, self.request(Method::POST, path, Some(token)))
            .await
    }

    /// `POST /api/v1/auth/password`: change the password; the account's other sessions end.
    pub async fn change_password(
        &self,
        token: &str,
        change: &ChangePasswordRequest,
    ) -> Result<(), ApiError> {
        let path = "/api/v1/auth/password";
        let request = self.request(Method::POST, path, Some(token)).json(change);
        self.no_content(path, request).await
    }

    /// `GET /api/v1/admin/accounts` (administrators).
    pub async fn accounts(&self, token: &str) -> Result<Vec<AccountSummary>, ApiError> {
        let path = "/api/v1/admin/accounts";
        self.json(path, self.request(Method::GET, path, Some(token)))
            .await
    }

    /// `POST /api/v1/admin/accounts/{id}/disable` (administrators): the account's sessions end.
    pub async fn disable_account(&self, token: &str, account: Uuid) -> Result<(), ApiError> {
        let path = format!("/api/v1/admin/accounts/{account}/disable");
        self.no_content(&path, self.request(Method::POST, &path, Some(token)))
            .await
    }

    /// `GET /api/v1/account/recording-key`: the clinician's recording public key, if any.
    pub async fn recording_key(&self, token: &str) -> Result<Option<String>, ApiError> {
        let path = "/api/v1/account/recording-key";
        let body: RecordingKeyBody = self
            .json(path, self.request(Method::GET, path, Some(token)))
            .await?;
        Ok(body.public_key)
    }

    /// `PUT /api/v1/account/recording-key`: register the clinician's recording public key
    /// (X25519, base64).
    pub async fn set_recording_key(&self, token: &str, public_key: &str) -> Result<(), ApiError> {
        let path = "/api/v1/account/recording-key";
        let body = RecordingKeyBody {
            public_key: Some(public_key.to_owned()),
        };
        let request = self.request(Method::PUT, path, Some(token)).json(&body);
        self.no_content(path, request).await
    }

    /// `POST /api/v1/consultations`. The answer carries the invite link (shown once).
    pub async fn create_consultation(
        &self,
        token: &str,
        request: &CreateConsultationRequest,
    ) -> Result<Consultation, ApiError> {
        let path = "/api/v1/consultations";
        let request = self.request(Method::POST, path, Some(token)).json(request);
        self.json(path, request).await
    }

    /// `GET /api/v1/consultations/{id}`.
    pub async fn consultation(&self, token: &str, id: Uuid) -> Result<Consultation, ApiError> {
        let path = format!("/api/v1/consultations/{id}");
        self.json(&path, self.request(Method::GET, &path, Some(token)))
            .await
    }

    /// `GET /api/v1/waiting-room`: patients waiting across the clinician's consultations.
    pub async fn waiting_room(&self, token: &str) -> Result<Vec<WaitingPatient>, ApiError> {
        let path = "/api/v1/waiting-room";
        self.json(path, self.request(Method::GET, path, Some(token)))
            .await
    }

    /// `POST /api/v1/consultations/{id}/participants/{pid}/admit`.
    pub async fn admit(
        &self,
        token: &str,
        consultation: Uuid,
        participant: Uuid,
    ) -> Result<(), ApiError> {
        let path = format!("/api/v1/consultations/{consultation}/participants/{participant}/admit");
        self.no_content(&path, self.request(Method::POST, &path, Some(token)))
            .await
    }

    /// `POST /api/v1/consultations/{id}/invites`: a link of their own for one more person, of
    /// `kind`, under the `name` everyone will see.
    pub async fn issue_invite(
        &self,
        token: &str,
        consultation: Uuid,
        kind: InviteKind,
        name: &str,
    ) -> Result<IssuedInvite, ApiError> {
        let path = format!("/api/v1/consultations/{consultation}/invites");
        let body = IssueInviteRequest {
            kind,
            name: name.to_owned(),
        };
        let request = self.request(Method::POST, &path, Some(token)).json(&body);
        self.json(&path, request).await
    }

    /// `DELETE /api/v1/consultations/{id}/invites/{invite_id}`: its holder is disconnected.
    pub async fn revoke_named_invite(
        &self,
        token: &str,
        consultation: Uuid,
        invite: Uuid,
    ) -> Result<(), ApiError> {
        let path = format!("/api/v1/consultations/{consultation}/invites/{invite}");
        self.no_content(&path, self.request(Method::DELETE, &path, Some(token)))
            .await
    }

    /// `POST /api/v1/consultations/{id}/clinicians`: add a colleague by their email.
    pub async fn add_clinician(
        &self,
        token: &str,
        consultation: Uuid,
        email: &str,
    ) -> Result<Colleague, ApiError> {
        let path = format!("/api/v1/consultations/{consultation}/clinicians");
        let body = AddClinicianRequest {
            email: email.to_owned(),
        };
        let request = self.request(Method::POST, &path, Some(token)).json(&body);
        self.json(&path, request).await
    }

    /// `DELETE /api/v1/consultations/{id}/clinicians/{user_id}`.
    pub async fn remove_clinician(
        &self,
        token: &str,
        consultation: Uuid,
        user: Uuid,
    ) -> Result<(), ApiError> {
        let path = format!("/api/v1/consultations/{consultation}/clinicians/{user}");
        self.no_content(&path, self.request(Method::DELETE, &path, Some(token)))
            .await
    }

    /// `POST /api/v1/consultations/{id}/participants/{pid}/remove`: out of the call, for good.
    pub async fn remove_participant(
        &self,
        token: &str,
        consultation: Uuid,
        participant: Uuid,
    ) -> Result<(), ApiError> {
        let path =
            format!("/api/v1/consultations/{consultation}/participants/{participant}/remove");
        self.no_content(&path, self.request(Method::POST, &path, Some(token)))
            .await
    }

    /// `GET /api/v1/consultations/shared`: consultations other clinicians added you to.
    pub async fn shared_consultations(
        &self,
        token: &str,
    ) -> Result<Vec<SharedConsultation>, ApiError> {
        let path = "/api/v1/consultations/shared";
        self.json(path, self.request(Method::GET, path, Some(token)))
            .await
    }

    /// `POST /api/v1/consultations/{id}/end`: everyone in it is told.
    pub async fn end(&self, token: &str, consultation: Uuid) -> Result<(), ApiError> {
        let path = format!("/api/v1/consultations/{consultation}/end");
        let request = self
            .request(Method::POST, &path, Some(token))
            .timeout(Duration::from_secs(5));
        self.no_content(&path, request).await
    }

    /// `POST /api/v1/invites/inspect`: what an invite token leads to, without using it.
    pub async fn inspect_invite(&self, invite: &str) -> Result<InviteInfo, ApiError> {
        let path = "/api/v1/invites/inspect";
        let body = InspectInviteRequest {
            invite: invite.to_owned(),
        };
        self.json(path, self.request(Method::POST, path, None).json(&body))
            .await
    }

    /// `POST /api/v1/invites/redeem`: a patient's place for an invite token and their name
    /// (empty for a named invite, which carries its own).
    pub async fn redeem_invite(&self, invite: &str, name: &str) -> Result<PatientPlace, ApiError> {
        let path = "/api/v1/invites/redeem";
        // An empty name is left out: a named invite carries its own.
        let body = RedeemInviteRequest {
            invite: invite.to_owned(),
            name: (!name.is_empty()).then(|| name.to_owned()),
        };
        let redeemed: RedeemInviteResponse = self
            .json(path, self.request(Method::POST, path, None).json(&body))
            .await?;
        Ok(PatientPlace {
            participant_token: redeemed.participant_token,
            participant_id: redeemed.participant_id,
            invite: redeemed.invite,
        })
    }

    /// `POST /api/v1/consultations/{id}/certificates`: a clinician of the consultation issues
    /// a medical certificate for its patient.
    pub async fn issue_certificate(
        &self,
        token: &str,
        consultation: Uuid,
        request: &IssueCertificateRequest,
    ) -> Result<CertificateSummary, ApiError> {
        let path = format!("/api/v1/consultations/{consultation}/certificates");
        self.json(
            &path,
            self.request(Method::POST, &path, Some(token)).json(request),
        )
        .await
    }

    /// `GET /api/v1/consultations/{id}/certificates`: its certificates, with their claims.
    pub async fn certificates(
        &self,
        token: &str,
        consultation: Uuid,
    ) -> Result<Vec<CertificateSummary>, ApiError> {
        let path = format!("/api/v1/consultations/{consultation}/certificates");
        let list: CertificateList = self
            .json(&path, self.request(Method::GET, &path, Some(token)))
            .await?;
        Ok(list.certificates)
    }

    /// `POST /api/v1/certificates/{id}/revoke`, with the reason.
    pub async fn revoke_certificate(
        &self,
        token: &str,
        certificate: Uuid,
        reason: &str,
    ) -> Result<CertificateSummary, ApiError> {
        let path = format!("/api/v1/certificates/{certificate}/revoke");
        let body = RevokeCertificateRequest {
            reason: reason.to_owned(),
        };
        self.json(
            &path,
            self.request(Method::POST, &path, Some(token)).json(&body),
        )
        .await
    }

    /// `POST /api/v1/certificates/held`: the certificates a patient's invite link holds.
    pub async fn held_certificates(&self, invite: &str) -> Result<Vec<HeldCertificate>, ApiError> {
        let path = "/api/v1/certificates/held";
        let body = HeldCertificatesRequest {
            token: invite.to_owned(),
        };
        let held: HeldCertificates = self
            .json(path, self.request(Method::POST, path, None).json(&body))
            .await?;
        Ok(held.certificates)
    }

    /// `POST /api/v1/certificates/{id}/presentation`: a presentation disclosing `disclose`.
    pub async fn present_certificate(
        &self,
        invite: &str,
        certificate: Uuid,
        disclose: &[&str],
    ) -> Result<Presentation, ApiError> {
        let path = format!("/api/v1/certificates/{certificate}/presentation");
        let body = PresentationRequest {
            token: invite.to_owned(),
            disclose: disclose.iter().map(|s| (*s).to_owned()).collect(),
        };
        self.json(&path, self.request(Method::POST, &path, None).json(&body))
            .await
    }

    /// `POST /api/v1/certificates/{id}/presentation.pdf`: the same as a printable PDF.
    pub async fn certificate_pdf(
        &self,
        invite: &str,
        certificate: Uuid,
        disclose: &[&str],
    ) -> Result<Vec<u8>, ApiError> {
        let path = format!("/api/v1/certificates/{certificate}/presentation.pdf");
        let body = PresentationRequest {
            token: invite.to_owned(),
            disclose: disclose.iter().map(|s| (*s).to_owned()).collect(),
        };
        let response = self
            .send(&path, self.request(Method::POST, &path, None).json(&body))
            .await?;
        Ok(response
            .bytes()
            .await
            .map_err(|e| ApiError::Protocol {
                url: self.url(&path),
                reason: chain(&e),
            })?
            .to_vec())
    }

    /// `POST /api/v1/certificates/verify`: what a presentation (or verify link) proves.
    pub async fn verify_certificate(
        &self,
        presentation: &str,
    ) -> Result<VerificationResult, ApiError> {
        let path = "/api/v1/certificates/verify";
        let body = VerifyCertificateRequest {
            presentation: presentation.to_owned(),
        };
        self.json(path, self.request(Method::POST, path, None).json(&body))
            .await
    }

    /// `GET /api/v1/ice-servers` with a clinician's session or a patient's participant token.
    pub async fn ice_servers(&self, token: &str) -> Result<IceServers, ApiError> {
        let path = "/api/v1/ice-servers";
        self.json(path, self.request(Method::GET, path, Some(token)))
            .await
    }

    /// Open the signaling WebSocket and send `join`.
    pub async fn signal(&self, join: ClientMessage) -> Result<SignalConnection, ApiError> {
        SignalConnection::join(&self.base, join).await
    }
}

/// The TLS set-up of a client: the Mozilla roots and the system's (what reqwest trusts in this
/// workspace's builds, where `object_store` turns on its native roots, and what the media
/// client's TURN over TLS trusts), offering HTTP/1.1 by ALPN as reqwest does. The roots are read
/// and parsed once per process: per client, that took a third of the load generator's CPU (every
/// patient is a client of its own). Each client gets its own configuration, so its own TLS
/// session cache.
fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    let roots = ROOTS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        // Unreadable or malformed system certificates are skipped, as reqwest does.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        Arc::new(roots)
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An error with its causes, which reqwest keeps apart ("error sending request: … refused").
fn chain(error: &dyn std::error::Error) -> String {
    let mut reason = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        reason = format!("{reason}: {inner}");
        source = inner.source();
    }
    reason
}

/// The TOTP code (SHA-1, 6 digits, 30 s) of a base32 secret at a Unix time.
///
/// ```
/// // RFC 6238 appendix B, SHA-1, T = 59 s (8 digits there; the last 6 here).
/// let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"; // "12345678901234567890"
/// assert_eq!(consult_api_client::totp_code(secret, 59).as_deref(), Some("287082"));
/// assert_eq!(consult_api_client::totp_code("not base32!", 59), None);
/// ```
pub fn totp_code(secret_b32: &str, unix: u64) -> Option<String> {
    let bytes = Secret::Encoded(secret_b32.to_owned()).to_bytes().ok()?;
    let totp = TOTP::new_unchecked(Algorithm::SHA1, 6, 1, 30, bytes, None, String::new());
    Some(totp.generate(unix))
}
