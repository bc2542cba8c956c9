//! Sign-in: enrolment links, password + TOTP, recovery codes, sessions and throttling.

pub mod devices;
pub mod passkey_rows;
pub mod passkeys;
pub mod password;
pub mod revocations;
pub mod rows;
pub mod sessions;
pub mod throttle;
pub mod totp;

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use consult_proto::api::{
    ChangePasswordRequest, EnrolRequest, EnrolResponse, ErrorBody, LoginRequest, LoginResponse,
    MfaEnrolRequest, MfaEnrolResponse, MfaEnrolment, Session, User,
};
use rand::rngs::OsRng;
use rand::Rng;
use serde_json::json;
use uuid::Uuid;

use crate::accounts::{self, Account};
use crate::alerts::rules::{Factor, Observation, Target};
use crate::audit::{Action, Actor};
use crate::audit_tally;
use crate::client_origin::ClientOrigin;
use crate::error::{ApiError, ApiJson};
use crate::secrets::{hex_sha256, Token};
use crate::state::AppState;
use revocations::Revoked;
use sessions::{unix_now, CurrentUser, SessionUser};

/// How long the password-checked token for second-factor enrolment lives.
const MFA_ENROLMENT_TTL: Duration = Duration::from_secs(10 * 60);
/// Recovery codes issued at enrolment.
const RECOVERY_CODES: usize = 10;
/// What a disabled account's owner is told (only once the password was right).
const ACCOUNT_DISABLED: &str = "this account is disabled; ask your administrator";

/// `POST /api/v1/auth/enrol`: set a new account's password from its enrolment link.
#[utoipa::path(post, path = "/api/v1/auth/enrol", tag = "auth", request_body = EnrolRequest,
    responses((status = 200, body = EnrolResponse),
              (status = 400, body = ErrorBody, description = "weak password"),
              (status = 410, body = ErrorBody, description = "link unknown, used or expired")))]
pub async fn enrol(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<EnrolRequest>,
) -> Result<Json<EnrolResponse>, ApiError> {
    password::check_policy(&req.password)
        .map_err(|e| ApiError::bad_request("weak_password", e.to_string()))?;
    let now = state.clock.now();
    let token = Token::from_client(&req.token);
    let gone = || {
        ApiError::gone(
            "enrolment_link_invalid",
            "this enrolment link is unknown, used or expired; ask your administrator for a new one",
        )
    };
    let link = rows::enrolment_link(&state.pool, &token.hash().0)
        .await?
        .ok_or_else(gone)?;
    if link.used || link.expires_at <= now {
        return Err(gone());
    }
    let password = req.password.clone();
    let hash = password::hash_off_thread(password)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    // The link used, the password set and the enrolment audited, together.
    let mut tx = state.audit.begin().await?;
    if !rows::use_enrolment_link(tx.connection(), &token.hash().0, now).await? {
        return Err(gone());
    }
    rows::set_password(tx.connection(), link.user_id, &hash).await?;
    tx.record(
        now,
        &Actor::User(link.user_id),
        Action::AccountEnrolled,
        None,
        json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(EnrolResponse { email: link.email }))
}

/// `POST /api/v1/auth/login`.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse, description = "signed in (cookie set), or second-factor enrolment needed"),
              (status = 401, body = ErrorBody, description = "invalid_credentials, mfa_required, invalid_totp or totp_replayed"),
              (status = 429, body = ErrorBody, description = "too_many_attempts; see Retry-After")))]
pub async fn login(
    State(state): State<AppState>,
    source: SignInSource,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let now = state.clock.now();
    let account = accounts::find_by_email(&state.pool, &req.email).await?;
    let (account, source) = check_password(
        &state,
        source,
        &req.email,
        account,
        &req.password,
        "wrong_password",
    )
    .await?;
    // Under a policy that requires a passkey, the app's code opens a session that may only
    // register one, and only while the account has none; a recovery code (a lost passkey) too.
    let passkey_setup_only = state.config.policy.require_passkey;
    if passkey_setup_only
        && req.recovery_code.is_none()
        && passkey_rows::count(&state.pool, account.user.id).await? > 0
    {
        return Err(ApiError::PasskeyRequired);
    }
    let Some(sealed) = account.totp_secret.as_deref() else {
        return start_mfa_enrolment(&state, &account).await;
    };
    let secret = state
        .sealing_key
        .open(sealed, &accounts::totp_owner(account.user.id))
        .map_err(|e| ApiError::Internal(e.into()))?;
    if let Some(code) = req.recovery_code.as_deref() {
        if !use_recovery_code(&state, &account, code).await? {
            return Err(fail(
                &state,
                &source,
                Some(&account),
                "wrong_recovery_code",
                ApiError::InvalidTotp,
            )
            .await);
        }
    } else if let Some(code) = req.totp.as_deref() {
        match totp::verify(&secret, code, unix_now(now), account.totp_last_step) {
            Ok(step) => {
                let spent = rows::spend_totp_step(&state.writer, account.user.id, step).await?;
                if !spent {
                    return Err(fail(
                        &state,
                        &source,
                        Some(&account),
                        "totp_replayed",
                        ApiError::TotpReplayed,
                    )
                    .await);
                }
            }
            Err(totp::TotpError::Replayed) => {
                return Err(fail(
                    &state,
                    &source,
                    Some(&account),
                    "totp_replayed",
                    ApiError::TotpReplayed,
                )
                .await);
            }
            Err(_) => {
                return Err(fail(
                    &state,
                    &source,
                    Some(&account),
                    "wrong_totp",
                    ApiError::InvalidTotp,
                )
                .await);
            }
        }
    } else {
        return Err(ApiError::MfaRequired);
    }
    if source.device.is_none() {
        // The untrusted channel's count restarts only when it succeeds itself.
        rows::clear_failures(&state.writer, account.user.id).await?;
    }
    let method = if req.recovery_code.is_some() {
        "recovery_code"
    } else {
        "totp"
    };
    let started = start_session(&state, &account.user, &source, method, passkey_setup_only).await?;
    let session = started.session.clone();
    Ok(signed_in(
        &state,
        &source,
        started,
        LoginResponse::SignedIn { session },
        StatusCode::OK,
    ))
}

/// Check a password for `account` (`None`: an unknown email) the way every guess is checked:
/// refused while the address is locked (unless a device of the account vouches), or the device
/// or the account is; a wrong one counted and audited as `reason`. A disabled account is
/// refused only once the password was right. Returns the account and the source, its device
/// kept only if it belongs to the account.
pub(crate) async fn check_password(
    state: &AppState,
    source: SignInSource,
    email: &str,
    account: Option<Account>,
    password: &str,
    reason: &str,
) -> Result<(Account, SignInSource), ApiError> {
    let now = state.clock.now();
    let mut source = source.for_account(account.as_ref().map(|a| a.user.id));
    source.attempted = Some(match &account {
        Some(a) => Target::Account(a.user.id),
        None => state.alerts.unknown_email(email),
    });
    source
        .refuse_if_address_locked(state, account.as_ref())
        .await?;
    // The attempt's channel: the doctor's known device is locked only by failures on it;
    // anything else by the account's failures without one.
    let (locked_until, lock_reason) = match &source.device {
        Some(device) => (device.locked_until, "device_locked"),
        None => (
            account.as_ref().and_then(|a| a.locked_until),
            "account_locked",
        ),
    };
    if let Some(until) = locked_until
        && until > now
    {
        state.metrics.failed_signins.inc();
        audit_failure(state, &source, account.as_ref(), lock_reason).await?;
        return Err(ApiError::TooManyAttempts {
            retry_after_secs: throttle::seconds_until(now, until),
        });
    }
    let stored = account.as_ref().and_then(|a| a.password_hash.clone());
    let password_ok = password::verify_off_thread(password.to_owned(), stored).await;
    let account = match account {
        Some(account) if password_ok => account,
        account => {
            return Err(fail(
                state,
                &source,
                account.as_ref(),
                reason,
                ApiError::InvalidCredentials,
            )
            .await);
        }
    };
    // Said only to someone who knows the password.
    if account.disabled_at.is_some() {
        return Err(ApiError::Denied(ACCOUNT_DISABLED.into()));
    }
    Ok((account, source))
}

/// The signed-in person's password, asked again before something that signs out their other
/// sessions or adds a way in; checked and throttled like a sign-in.
pub(crate) async fn recheck_password(
    state: &AppState,
    source: SignInSource,
    current: &CurrentUser,
    password: &str,
    reason: &str,
) -> Result<Account, ApiError> {
    let account = accounts::find_by_id(&state.pool, current.user.id).await?;
    let email = current.user.email.clone();
    let (account, _) = check_password(state, source, &email, account, password, reason).await?;
    Ok(account)
}

/// End every other session of `current`'s account in `tx` (where the change that calls for it
/// was made), audit `action` with `detail` and the number ended, commit, and close their
/// WebSockets.
pub(crate) async fn end_other_sessions(
    state: &AppState,
    mut tx: crate::audit::AuditedTransaction<'_>,
    current: &CurrentUser,
    action: Action,
    mut detail: serde_json::Value,
) -> Result<(), ApiError> {
    let now = state.clock.now();
    let ended = rows::revoke_user_sessions(
        tx.connection(),
        current.user.id,
        Some(current.session_id),
        now,
    )
    .await?;
    detail["sessions_ended"] = json!(ended);
    tx.record(now, &actor(&current.user), action, None, detail)
        .await?;
    tx.commit().await?;
    state.revocations.announce(Revoked::User {
        user_id: current.user.id,
        except: Some(current.session_id),
    });
    Ok(())
}

/// A session just opened, and the device token to hand out if this device is new.
struct StartedSession {
    token: Token,
    session: Session,
    new_device: Option<Token>,
}

/// Open a session for a user who passed every factor — with the device known from then on —
/// and audit the sign-in with it.
async fn start_session(
    state: &AppState,
    user: &User,
    source: &SignInSource,
    method: &str,
    passkey_setup_only: bool,
) -> Result<StartedSession, ApiError> {
    let now = state.clock.now();
    let mut tx = state.audit.begin().await?;
    let (token, session) =
        sessions::create(state, tx.connection(), user, passkey_setup_only).await?;
    let new_device = match &source.device {
        Some(device) => {
            devices::signed_in(tx.connection(), device.id, now).await?;
            None
        }
        None => Some(devices::register(tx.connection(), user.id, now).await?),
    };
    tx.record(
        now,
        &actor(user),
        Action::SignIn,
        None,
        json!({
            "address": source.origin.address.to_string(),
            "device": if new_device.is_some() { "new" } else { "known" },
            "method": method,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(StartedSession {
        token,
        session,
        new_device,
    })
}

fn actor(user: &User) -> Actor {
    Actor::User(user.id)
}

fn signed_in<T: serde::Serialize>(
    state: &AppState,
    source: &SignInSource,
    started: StartedSession,
    body: T,
    status: StatusCode,
) -> Response {
    let https = source.origin.https;
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        sessions::session_cookie(state, &started.token, https),
    );
    if let Some(cookie) = started
        .new_device
        .as_ref()
        .and_then(|token| devices::cookie(token, https))
    {
        headers.append(header::SET_COOKIE, cookie);
    }
    response
}

/// Where an attempt at a guessable secret (a password, a TOTP code) comes from: the client's
/// address as [`ClientOrigin`] finds it (through trusted proxies only), and the known device its
/// cookie names, if any ([`devices`]). Sign-in and TOTP enrolment share it.
///
/// A locked-out address is refused with `429 too_many_attempts` before the body is read —
/// counted in `consult_failed_signins_total` and audited — unless the request carries a known
/// device; then the refusal waits for the account: a device signing in to its own account is not
/// refused for its address (a clinic's shared address, say), one signing in to another is.
pub struct SignInSource {
    /// The client.
    pub origin: ClientOrigin,
    /// The known device, once [`SignInSource::for_account`] confirmed it belongs to the account
    /// signed in to (before that: any known device).
    pub device: Option<devices::Device>,
    /// Seconds the address is still locked for, if it is.
    address_locked_for: Option<u64>,
    /// The account (or unknown email) being tried, once known: for the detection rules.
    attempted: Option<Target>,
}

impl SignInSource {
    /// Keep the device only if it belongs to `account`.
    pub fn for_account(mut self, account: Option<Uuid>) -> Self {
        let belongs = matches!((&self.device, account), (Some(d), Some(a)) if d.user_id == a);
        if !belongs {
            self.device = None;
        }
        self
    }

    /// Refuse (and count and audit) if the address is locked and no device of `account` vouches
    /// for the attempt.
    pub async fn refuse_if_address_locked(
        &self,
        state: &AppState,
        account: Option<&Account>,
    ) -> Result<(), ApiError> {
        match self.address_locked_for {
            Some(secs) if self.device.is_none() => {
                state.metrics.failed_signins.inc();
                audit_failure(state, self, account, "address_locked").await?;
                Err(ApiError::TooManyAttempts {
                    retry_after_secs: secs,
                })
            }
            _ => Ok(()),
        }
    }
}

impl axum::extract::FromRequestParts<AppState> for SignInSource {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let now = state.clock.now();
        let origin = ClientOrigin::from_request_parts(parts, state).await?;
        let device = match devices::token_from_cookie(&parts.headers) {
            Some(token) => devices::find(&state.pool, &token, now).await?,
            None => None,
        };
        let source = Self {
            origin,
            address_locked_for: state.address_throttle.locked_for(origin.address, now).await,
            device,
            attempted: None,
        };
        if source.device.is_none() {
            // Nothing can vouch for it: refused before the body is read.
            source.refuse_if_address_locked(state, None).await?;
        }
        Ok(source)
    }
}

async fn audit_failure(
    state: &AppState,
    source: &SignInSource,
    account: Option<&Account>,
    reason: &str,
) -> Result<(), ApiError> {
    let now = state.clock.now();
    observe_failure(state, now, source, account, reason);
    let event = failure_event(source.origin.address, account, reason);
    audit_tally::count_now(&state.writer, now, &state.config.audit, &event).await?;
    Ok(())
}

/// Tell the detection rules: which account (or unknown email) failed, from where, and how.
fn observe_failure(
    state: &AppState,
    now: time::OffsetDateTime,
    source: &SignInSource,
    account: Option<&Account>,
    reason: &str,
) {
    let Some(target) = account
        .map(|a| Target::Account(a.user.id))
        .or(source.attempted)
    else {
        // Refused for its address before the body was read: nothing tried yet.
        return;
    };
    let factor = match reason {
        "wrong_password"
        | "wrong_current_password"
        | "account_locked"
        | "device_locked"
        | "address_locked" => Factor::Password,
        "wrong_totp" | "wrong_recovery_code" | "wrong_totp_at_enrolment" => Factor::SecondFactor,
        _ => Factor::Other,
    };
    state.alerts.observe(
        now,
        Observation::SignInFailed {
            source: source.origin.address,
            target,
            factor,
        },
    );
}

/// A failed attempt as the audit counts it: by the account when there is one, else by the
/// address ([`audit_tally`]: one entry per source and window, not one per guess).
fn failure_event<'a>(
    address: IpAddr,
    account: Option<&Account>,
    reason: &'a str,
) -> audit_tally::Unauthenticated<'a> {
    audit_tally::Unauthenticated {
        action: Action::SignInFailed,
        actor: account.map_or(Actor::Address(address), |a| actor(&a.user)),
        source: address,
        reason,
        consultation_id: None,
    }
}

/// Count a failed attempt — on the known device it came from, or else against the address and
/// the account — lock whichever crossed its threshold, audit it, and return `error` (or the
/// audit failure).
async fn fail(
    state: &AppState,
    source: &SignInSource,
    account: Option<&Account>,
    reason: &str,
    error: ApiError,
) -> ApiError {
    match record_failure(state, source, account, reason).await {
        Ok(()) => error,
        Err(e) => e,
    }
}

async fn record_failure(
    state: &AppState,
    source: &SignInSource,
    account: Option<&Account>,
    reason: &str,
) -> Result<(), ApiError> {
    let now = state.clock.now();
    let address = source.origin.address;
    state.metrics.failed_signins.inc();
    observe_failure(state, now, source, account, reason);
    let login = &state.config.login;
    if let Some(device) = &source.device {
        // The device's own count: neither the account's nor the address's.
        let mut tx = state.audit.begin().await?;
        let event = failure_event(address, account, reason);
        audit_tally::count(tx.connection(), now, &state.config.audit, &event).await?;
        let failures = devices::count_failure(tx.connection(), device.id).await?;
        if let Some(lock) = throttle::lockout_after(
            failures,
            login.max_failures_per_account,
            login.lockout_base,
            login.lockout_max,
        ) {
            devices::lock(tx.connection(), device.id, now + lock).await?;
            tx.record(
                now,
                &event.actor,
                Action::SignInLocked,
                None,
                json!({ "scope": "device", "device": device.id, "seconds": lock.as_secs() }),
            )
            .await?;
        }
        tx.commit().await?;
        return Ok(());
    }
    let address_lock = state.address_throttle.record_failure(address, now).await;
    // The failure, the account's count and lock, and their audit entries commit together.
    let mut tx = state.audit.begin().await?;
    let event = failure_event(address, account, reason);
    audit_tally::count(tx.connection(), now, &state.config.audit, &event).await?;
    if let Some(lock) = address_lock {
        tx.record(
            now,
            &Actor::Address(address),
            Action::SignInLocked,
            None,
            json!({ "scope": "address", "seconds": lock.as_secs() }),
        )
        .await?;
    }
    if let Some(account) = account {
        let failures = rows::count_failure(tx.connection(), account.user.id).await?;
        if let Some(lock) = throttle::lockout_after(
            failures,
            login.max_failures_per_account,
            login.lockout_base,
            login.lockout_max,
        ) {
            rows::lock_account(tx.connection(), account.user.id, now + lock).await?;
            tx.record(
                now,
                &event.actor,
                Action::SignInLocked,
                None,
                json!({ "scope": "account", "seconds": lock.as_secs() }),
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

async fn start_mfa_enrolment(state: &AppState, account: &Account) -> Result<Response, ApiError> {
    let now = state.clock.now();
    let token = Token::generate();
    let secret = totp::generate_secret();
    let internal = |e: totp::TotpError| ApiError::Internal(e.into());
    let uri = totp::otpauth_uri(&secret, &account.user.email).map_err(internal)?;
    let qr_svg = totp::qr_svg(&uri).map_err(internal)?;
    let enrolment = rows::MfaEnrolmentRow {
        user_id: account.user.id,
        sealed_secret: state
            .sealing_key
            .seal(&secret, &accounts::totp_owner(account.user.id)),
        expires_at: now + MFA_ENROLMENT_TTL,
    };
    let mut tx = state.writer.begin_write().await?;
    rows::replace_mfa_enrolment(&mut tx, &token.hash().0, &enrolment, now).await?;
    tx.commit().await?;
    let body = LoginResponse::MfaEnrolmentRequired {
        enrolment: MfaEnrolment {
            mfa_token: token.expose().to_owned(),
            totp_secret: secret,
            otpauth_uri: uri,
            qr_svg,
        },
    };
    Ok(Json(body).into_response())
}

/// `POST /api/v1/auth/mfa/enrol`: confirm the authenticator app with its first code.
#[utoipa::path(post, path = "/api/v1/auth/mfa/enrol", tag = "auth", request_body = MfaEnrolRequest,
    responses((status = 200, body = MfaEnrolResponse, description = "enrolled and signed in (cookie set)"),
              (status = 401, body = ErrorBody, description = "invalid_totp, or the enrolment expired"),
              (status = 429, body = ErrorBody)))]
pub async fn mfa_enrol(
    State(state): State<AppState>,
    source: SignInSource,
    ApiJson(req): ApiJson<MfaEnrolRequest>,
) -> Result<Response, ApiError> {
    let now = state.clock.now();
    let token = Token::from_client(&req.mfa_token);
    let enrolment = rows::mfa_enrolment(&state.pool, &token.hash().0)
        .await?
        .filter(|e| e.expires_at > now)
        .ok_or(ApiError::Unauthenticated)?;
    let account = accounts::find_by_id(&state.pool, enrolment.user_id)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let source = source.for_account(Some(account.user.id));
    source
        .refuse_if_address_locked(&state, Some(&account))
        .await?;
    if account.disabled_at.is_some() {
        return Err(ApiError::Denied(ACCOUNT_DISABLED.into()));
    }
    let sealed = enrolment.sealed_secret;
    let secret = state
        .sealing_key
        .open(&sealed, &accounts::totp_owner(account.user.id))
        .map_err(|e| ApiError::Internal(e.into()))?;
    let step = match totp::verify(&secret, &req.totp, unix_now(now), None) {
        Ok(step) => step,
        Err(_) => {
            return Err(fail(
                &state,
                &source,
                Some(&account),
                "wrong_totp_at_enrolment",
                ApiError::InvalidTotp,
            )
            .await)
        }
    };
    let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
    // The factor, the recovery codes and the enrolment's audit entry commit together.
    let mut tx = state.audit.begin().await?;
    if !rows::claim_mfa_enrolment(tx.connection(), &token.hash().0).await? {
        return Err(ApiError::Unauthenticated);
    }
    // Stored as sealed, for the same owner.
    rows::set_totp(tx.connection(), account.user.id, &sealed, step).await?;
    let hashes: Vec<String> = codes.iter().map(|c| hash_recovery_code(c)).collect();
    rows::replace_recovery_codes(tx.connection(), account.user.id, &hashes).await?;
    tx.record(
        now,
        &actor(&account.user),
        Action::MfaEnrolled,
        None,
        json!({ "method": "totp" }),
    )
    .await?;
    tx.commit().await?;
    let started = start_session(
        &state,
        &account.user,
        &source,
        "totp",
        state.config.policy.require_passkey,
    )
    .await?;
    let session = started.session.clone();
    Ok(signed_in(
        &state,
        &source,
        started,
        MfaEnrolResponse {
            session,
            recovery_codes: codes,
        },
        StatusCode::OK,
    ))
}

/// A recovery code: 16 characters from an unambiguous alphabet (80 bits), grouped for reading.
fn recovery_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let chars: String = (0..16)
        .map(|_| ALPHABET[OsRng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!(
        "{}-{}-{}-{}",
        &chars[0..4],
        &chars[4..8],
        &chars[8..12],
        &chars[12..16]
    )
}

/// Recovery codes carry 80 random bits, so a plain SHA-256 is enough to keep them (a slow hash
/// protects guessable secrets). Case and separators are ignored.
fn hash_recovery_code(code: &str) -> String {
    let normalised: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    hex_sha256(format!("consult-recovery\0{normalised}").as_bytes())
}

async fn use_recovery_code(
    state: &AppState,
    account: &Account,
    code: &str,
) -> Result<bool, ApiError> {
    let now = state.clock.now();
    // The code spent and its audit entry commit together.
    let mut tx = state.audit.begin().await?;
    let hash = hash_recovery_code(code);
    let Some(left) =
        rows::spend_recovery_code(tx.connection(), account.user.id, &hash, now).await?
    else {
        return Ok(false);
    };
    tx.record(
        now,
        &actor(&account.user),
        Action::RecoveryCodeUsed,
        None,
        json!({ "codes_left": left }),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// `GET /api/v1/auth/session`: the current session (and its CSRF token).
#[utoipa::path(get, path = "/api/v1/auth/session", tag = "auth",
    responses((status = 200, body = Session), (status = 401, body = ErrorBody)))]
pub async fn current_session(SessionUser(current): SessionUser) -> Json<Session> {
    Json(current.session)
}

/// `POST /api/v1/auth/activity`: the person did something in the page (typed, clicked, moved the
/// pointer) without a request that changes anything: the session's idle deadline moves forward.
/// Polls and heartbeats never do, so an unattended page reaches the idle timeout.
#[utoipa::path(post, path = "/api/v1/auth/activity", tag = "auth",
    responses((status = 200, body = Session, description = "the session with its new idle deadline"),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "csrf_rejected")))]
pub async fn activity(SessionUser(current): SessionUser) -> Json<Session> {
    // The extractor did the work: a POST is the person's activity.
    Json(current.session)
}

/// `POST /api/v1/auth/password`: change the password. The current one is checked (a wrong one
/// counts as a failed sign-in); every other session of the account ends, and its WebSockets
/// close at once.
#[utoipa::path(post, path = "/api/v1/auth/password", tag = "auth", request_body = ChangePasswordRequest,
    responses((status = 204), (status = 400, body = ErrorBody, description = "weak_password"),
              (status = 401, body = ErrorBody, description = "invalid_credentials: the current password is wrong"),
              (status = 403, body = ErrorBody, description = "csrf_rejected"),
              (status = 429, body = ErrorBody, description = "too_many_attempts")))]
pub async fn change_password(
    State(state): State<AppState>,
    source: SignInSource,
    current: CurrentUser,
    ApiJson(req): ApiJson<ChangePasswordRequest>,
) -> Result<StatusCode, ApiError> {
    password::check_policy(&req.new_password)
        .map_err(|e| ApiError::bad_request("weak_password", e.to_string()))?;
    let account = recheck_password(
        &state,
        source,
        &current,
        &req.current_password,
        "wrong_current_password",
    )
    .await?;
    let hash = password::hash_off_thread(req.new_password.clone())
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let mut tx = state.audit.begin().await?;
    rows::change_password(tx.connection(), account.user.id, &hash).await?;
    end_other_sessions(&state, tx, &current, Action::PasswordChanged, json!({})).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/auth/logout`: revoke the session and clear the cookie.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "csrf_rejected")))]
pub async fn logout(
    State(state): State<AppState>,
    origin: ClientOrigin,
    SessionUser(current): SessionUser,
) -> Result<Response, ApiError> {
    let now = state.clock.now();
    let mut tx = state.audit.begin().await?;
    rows::revoke_session(tx.connection(), current.session_id, now).await?;
    tx.record(now, &actor(&current.user), Action::SignOut, None, json!({}))
        .await?;
    tx.commit().await?;
    state
        .revocations
        .announce(Revoked::Session(current.session_id));
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, sessions::clearing_cookie(origin.https));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_random_and_normalised_when_hashed() {
        let a = recovery_code();
        assert_eq!(a.len(), 19);
        assert_ne!(a, recovery_code());
        assert_eq!(
            hash_recovery_code(&a),
            hash_recovery_code(&a.to_lowercase().replace('-', " "))
        );
    }
}
