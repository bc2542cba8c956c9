//! Sign-in sessions: an opaque random token, kept by the browser in an HttpOnly, SameSite=Strict
//! cookie (Secure under TLS) or sent by other clients as `Authorization: Bearer`. The database
//! holds only the token's hash. A session ends when idle too long, at its absolute timeout, or at
//! sign-out (or when its account's password changes or the account is disabled).
//!
//! Idle means no action by the person: only [`Activity::Person`] moves `last_seen_at` — a request
//! that changes something, `POST /api/v1/auth/activity` (the page reports input), or a heartbeat
//! during a call. Reads, polls and other heartbeats look the session up without extending it.
//!
//! CSRF: a request authenticated by the cookie that changes state must carry `X-CSRF-Token`, a
//! value derived from the session token that only a page of ours can learn (it is in the sign-in
//! response and `GET /api/v1/auth/session`). Bearer requests carry no ambient credential and need
//! none.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use consult_proto::api::{Role, Session, User};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use uuid::Uuid;

use super::rows;
use crate::db::to_unix;
use crate::error::ApiError;
use crate::secrets::{hex_sha256, Token};
use crate::state::AppState;

/// Name of the session cookie.
pub const COOKIE_NAME: &str = "consult_session";
/// Header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Only write `last_seen_at` when it moved by this much (or a tenth of the idle timeout, if
/// less), so that every action does not become a write; a session can end this much earlier
/// than the idle timeout after the last action.
const LAST_SEEN_GRANULARITY_SECS: i64 = 5;

/// The CSRF token of a session.
pub fn csrf_token(token: &Token) -> String {
    hex_sha256(format!("consult-csrf\0{}", token.expose()).as_bytes())
}

/// A signed-in request's account and session.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    /// The account.
    pub user: User,
    /// Session id (not the token).
    pub session_id: Uuid,
    /// As returned to the client.
    pub session: Session,
}

/// Start a session for `user` inside the caller's transaction (where its sign-in is audited);
/// returns the token to hand out and the session view. `passkey_setup_only`: the organisation
/// requires a passkey and the person signed in without one, so the session may only register
/// one (see [`SessionUser`]).
pub async fn create(
    state: &AppState,
    db: &mut crate::db::Tx,
    user: &User,
    passkey_setup_only: bool,
) -> Result<(Token, Session), ApiError> {
    let now = state.clock.now();
    let token = Token::generate();
    let absolute = now + state.config.session.absolute_timeout;
    rows::insert_session(
        db,
        &token.hash().0,
        user.id,
        now,
        absolute,
        passkey_setup_only,
    )
    .await?;
    let session = Session {
        user: user.clone(),
        token: Some(token.expose().to_owned()),
        csrf_token: csrf_token(&token),
        idle_expires_at: (now + state.config.session.idle_timeout).min(absolute),
        absolute_expires_at: absolute,
        passkey_setup_required: passkey_setup_only,
    };
    Ok((token, session))
}

/// Whether a use of the session is the person's doing (and so moves its idle deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// The person did something: a change, an input the page reported, a call going on.
    Person,
    /// A poll, a heartbeat outside a call, a read: the session is checked, not extended.
    Background,
}

/// Look up a live session by its token; [`Activity::Person`] moves its idle deadline forward.
/// A session that may only register a passkey is refused with `passkey_setup_required`.
pub async fn authenticate(
    state: &AppState,
    token: &Token,
    activity: Activity,
) -> Result<CurrentUser, ApiError> {
    let current = authenticate_any(state, token, activity).await?;
    if current.session.passkey_setup_required {
        return Err(ApiError::PasskeySetupRequired);
    }
    Ok(current)
}

/// [`authenticate`], letting a session through that may only register a passkey.
pub async fn authenticate_any(
    state: &AppState,
    token: &Token,
    activity: Activity,
) -> Result<CurrentUser, ApiError> {
    let now = state.clock.now();
    let (row, account) = rows::session_with_account(&state.pool, &token.hash().0)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let absolute = row.absolute_expires_at;
    let idle_deadline = row.last_seen_at + state.config.session.idle_timeout;
    if row.revoked || now >= absolute || now >= idle_deadline {
        return Err(ApiError::Unauthenticated);
    }
    let mut last_seen = row.last_seen_at;
    if activity == Activity::Person
        && to_unix(now) - to_unix(row.last_seen_at)
            >= LAST_SEEN_GRANULARITY_SECS
                .min((state.config.session.idle_timeout.as_secs() / 10) as i64)
    {
        let session_id = row.id;
        state
            .write(move |state| async move {
                rows::touch_session(&state.writer, session_id, now).await
            })
            .await?;
        last_seen = now;
    }
    if account.disabled_at.is_some() {
        return Err(ApiError::Unauthenticated);
    }
    Ok(CurrentUser {
        session_id: row.id,
        session: Session {
            user: account.user.clone(),
            token: None,
            csrf_token: csrf_token(token),
            idle_expires_at: (last_seen + state.config.session.idle_timeout).min(absolute),
            absolute_expires_at: absolute,
            passkey_setup_required: row.passkey_setup_only && state.config.policy.require_passkey,
        },
        user: account.user,
    })
}

/// The `Set-Cookie` value carrying a new session; `https`: the client's connection is HTTPS (to
/// us or to a trusted proxy), so the cookie is `Secure`.
pub fn session_cookie(state: &AppState, token: &Token, https: bool) -> HeaderValue {
    let secure = if https { "; Secure" } else { "" };
    let max_age = state.config.session.absolute_timeout.as_secs();
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
        token.expose()
    ))
    .unwrap_or_else(|_| clearing_cookie(https))
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clearing_cookie(https: bool) -> HeaderValue {
    let secure = if https { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"
    ))
    .unwrap_or(HeaderValue::from_static("consult_session=; Max-Age=0"))
}

/// The session token from the cookie, if any.
pub fn token_from_cookie(headers: &HeaderMap) -> Option<Token> {
    crate::secrets::token_from_cookie(headers, COOKIE_NAME)
}

/// The token from `Authorization: Bearer`, if any.
pub fn token_from_bearer(headers: &HeaderMap) -> Option<Token> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|t| Token::from_client(t.trim()))
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let SessionUser(current) = SessionUser::from_request_parts(parts, state).await?;
        if current.session.passkey_setup_required {
            return Err(ApiError::PasskeySetupRequired);
        }
        Ok(current)
    }
}

/// Any live session, including one that may only register a passkey: for the few endpoints
/// such a session may use (itself, activity, sign-out, passkeys). Everything else takes
/// [`CurrentUser`], which refuses it.
#[derive(Debug, Clone)]
pub struct SessionUser(pub CurrentUser);

impl FromRequestParts<AppState> for SessionUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        // A change is the person's doing; a read (a poll, a refresh) is not.
        let activity = if safe {
            Activity::Background
        } else {
            Activity::Person
        };
        if let Some(token) = token_from_bearer(&parts.headers) {
            return authenticate_any(state, &token, activity).await.map(Self);
        }
        let token = token_from_cookie(&parts.headers).ok_or(ApiError::Unauthenticated)?;
        let current = authenticate_any(state, &token, activity).await?;
        if !safe {
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !bool::from(sent.ct_eq(current.session.csrf_token.as_bytes())) {
                return Err(ApiError::CsrfRejected);
            }
        }
        Ok(Self(current))
    }
}

/// A signed-in doctor.
#[derive(Debug, Clone)]
pub struct CurrentDoctor(pub CurrentUser);

impl FromRequestParts<AppState> for CurrentDoctor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let current = CurrentUser::from_request_parts(parts, state).await?;
        if current.user.role != Role::Doctor {
            return Err(ApiError::Forbidden);
        }
        Ok(Self(current))
    }
}

/// Seconds since the Unix epoch, for `now`.
pub fn unix_now(now: OffsetDateTime) -> u64 {
    now.unix_timestamp().max(0) as u64
}
