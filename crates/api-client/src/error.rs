//! The one error of every call.

/// Why a call to the service failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// No answer (connection refused, timeout, DNS).
    #[error("the service at {url} did not answer: {reason}")]
    Unreachable {
        /// What we called.
        url: String,
        /// Why.
        reason: String,
    },
    /// An HTTP answer, but a refusal.
    #[error("{status} {code}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The error code from the body (or the status text).
        code: String,
        /// Its message.
        message: String,
    },
    /// The signaling service answered a message with an error that ends the session, or
    /// ended the consultation.
    #[error("{code}: {message}")]
    Rejected {
        /// The error code.
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
    /// The invite link is not of the form `http(s)://host/join#token` (the link is named
    /// without its token).
    #[error("not an invite link: {0}")]
    BadInvite(String),
    /// The TOTP secret is not base32.
    #[error("the TOTP secret of {0} is not valid base32")]
    BadSecret(String),
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    WebSocket(String),
    /// The service closed the signaling connection.
    #[error("signaling connection closed")]
    Closed,
}

impl ApiError {
    /// The service's error code, when it refused or rejected.
    ///
    /// ```
    /// use consult_api_client::ApiError;
    ///
    /// let refused = ApiError::Refused { status: 409, code: "invite_in_use".into(), message: String::new() };
    /// assert_eq!(refused.code(), Some("invite_in_use"));
    /// assert_eq!(ApiError::Closed.code(), None);
    /// ```
    pub fn code(&self) -> Option<&str> {
        match self {
            ApiError::Refused { code, .. } | ApiError::Rejected { code, .. } => Some(code),
            _ => None,
        }
    }
}
