//! The one error type of the HTTP API: each failure maps to a status code and the JSON body
//! `{ "error": { "code": "...", "message": "..." } }`.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::FromRequestParts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use consult_proto::api::{ErrorBody, ErrorDetail};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request body or parameters are wrong.
    #[error("{message}")]
    BadRequest {
        /// Stable code.
        code: &'static str,
        /// For people.
        message: String,
    },
    /// No valid session or token.
    #[error("sign in first")]
    Unauthenticated,
    /// Email or password wrong (never says which).
    #[error("email or password is wrong")]
    InvalidCredentials,
    /// Password right; a TOTP or recovery code is needed.
    #[error("enter the code from your authenticator app")]
    MfaRequired,
    /// The TOTP or recovery code is wrong.
    #[error("that code is wrong or expired")]
    InvalidTotp,
    /// The TOTP code was already used.
    #[error("that code was already used; wait for the next one")]
    TotpReplayed,
    /// The state-changing request lacks a valid `X-CSRF-Token`.
    #[error("missing or wrong X-CSRF-Token header")]
    CsrfRejected,
    /// Authenticated, but not allowed.
    #[error("you are not allowed to do that")]
    Forbidden,
    /// The policy refuses this access; the message says why.
    #[error("{0}")]
    Denied(String),
    /// Nothing there (or not yours: the two look the same).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The state forbids it now.
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// For people.
        message: String,
    },
    /// Was valid once, is not any more.
    #[error("{message}")]
    Gone {
        /// Stable code.
        code: &'static str,
        /// For people.
        message: String,
    },
    /// The passkey's answer was refused; the code says why.
    #[error("{message}")]
    PasskeyRejected {
        /// Stable code.
        code: &'static str,
        /// For people.
        message: String,
    },
    /// The organisation requires a passkey and this account has one: sign in with it.
    #[error("your organisation requires a passkey: sign in with it (or with a recovery code if you lost it)")]
    PasskeyRequired,
    /// The organisation requires a passkey: this session may only register one.
    #[error("your organisation requires a passkey: register one to continue")]
    PasskeySetupRequired,
    /// Throttled; try again after the given seconds.
    #[error("too many attempts; try again in {retry_after_secs} s")]
    TooManyAttempts {
        /// When to try again.
        retry_after_secs: u64,
    },
    /// Not now: a limit or a shutdown; try again later.
    #[error("{message}")]
    Unavailable {
        /// Stable code.
        code: &'static str,
        /// For people.
        message: String,
    },
    /// The request body is over the size limit.
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// A fault of ours. Details go to the log, not to the client.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// A 400 with a code and a message.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A 409 with a code and a message.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }

    /// A 503 with a code and a message.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unavailable {
            code,
            message: message.into(),
        }
    }

    /// A 410 with a code and a message.
    pub fn gone(code: &'static str, message: impl Into<String>) -> Self {
        Self::Gone {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthenticated
            | Self::InvalidCredentials
            | Self::MfaRequired
            | Self::InvalidTotp
            | Self::TotpReplayed
            | Self::PasskeyRejected { .. } => StatusCode::UNAUTHORIZED,
            Self::CsrfRejected
            | Self::Forbidden
            | Self::Denied(_)
            | Self::PasskeyRequired
            | Self::PasskeySetupRequired => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Gone { .. } => StatusCode::GONE,
            Self::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Conflict { code, .. }
            | Self::Gone { code, .. }
            | Self::PasskeyRejected { code, .. }
            | Self::Unavailable { code, .. } => code,
            Self::PasskeySetupRequired => "passkey_setup_required",
            Self::PasskeyRequired => "passkey_required",
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidCredentials => "invalid_credentials",
            Self::MfaRequired => "mfa_required",
            Self::InvalidTotp => "invalid_totp",
            Self::TotpReplayed => "totp_replayed",
            Self::CsrfRejected => "csrf_rejected",
            Self::Forbidden => "forbidden",
            Self::Denied(_) => "access_denied",
            Self::NotFound(_) => "not_found",
            Self::TooManyAttempts { .. } => "too_many_attempts",
            Self::PayloadTooLarge => "body_too_large",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::PayloadTooLarge;
        }
        Self::bad_request("invalid_body", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request("invalid_path", rejection.body_text())
    }
}

/// `axum::Json` whose rejections answer with the API's error body. The body must be a JSON
/// object: serde would otherwise read an array into a struct field by field (`[null, null]`
/// as a consultation with no title), which no client means.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) =
            axum::Json::<serde_json::Value>::from_request(request, state).await?;
        if !value.is_object() {
            return Err(Self::not_an_object());
        }
        serde_json::from_value(value).map(ApiJson).map_err(|e| {
            ApiError::bad_request(
                "invalid_body",
                format!("Failed to deserialize the JSON body into the target type: {e}"),
            )
        })
    }
}

impl<T> ApiJson<T> {
    fn not_an_object() -> ApiError {
        ApiError::bad_request("invalid_body", "the body must be a JSON object")
    }
}

/// `axum::extract::Path` whose rejections answer with the API's error body.
#[derive(Debug, Clone, Copy, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Query` whose rejections answer with the API's error body.
#[derive(Debug, Clone, Copy, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        Self::bad_request("invalid_query", rejection.body_text())
    }
}

/// Whether a database error says the database cannot be reached right now (down, restarting,
/// the network between): the request may succeed later, so it is answered 503, not 500.
pub fn database_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        // PostgreSQL's classes 08 (connection exception) and 57P (operator intervention:
        // shutting down, cannot connect now).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

fn database_unavailable() -> ApiError {
    ApiError::unavailable(
        "database_unavailable",
        "the database cannot be reached; try again shortly",
    )
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if database_unreachable(&e) {
            tracing::warn!(error = %e, "the database cannot be reached");
            return database_unavailable();
        }
        Self::Internal(e.into())
    }
}

impl From<crate::db::sql::Error> for ApiError {
    fn from(e: crate::db::sql::Error) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "the database cannot take the request");
            return database_unavailable();
        }
        Self::Internal(e.into())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        let unreachable = e.chain().any(|cause| {
            cause
                .downcast_ref::<sqlx::Error>()
                .is_some_and(database_unreachable)
                || cause
                    .downcast_ref::<crate::db::sql::Error>()
                    .is_some_and(crate::db::sql::Error::is_unavailable)
        });
        if unreachable {
            tracing::warn!(error = format!("{e:#}"), "the database cannot be reached");
            return database_unavailable();
        }
        Self::Internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(e) = &self {
            tracing::error!(error = format!("{e:#}"), "request failed");
        }
        let status = self.status();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Self::TooManyAttempts { retry_after_secs } = self
            && let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}
