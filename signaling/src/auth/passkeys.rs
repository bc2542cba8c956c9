//! Passkeys (WebAuthn) for clinicians, with [webauthn-rs](https://docs.rs/webauthn-rs): register
//! several (the password is asked again), name and remove them, and sign in with one — as the
//! second factor after the password, or alone (passwordless: the browser offers this site's
//! passkeys and the one picked names the account). User verification (PIN or biometrics on the
//! authenticator) is always required.
//!
//! Ceremony state never waits in the service: the challenge and webauthn-rs's state are sealed
//! (AES-256-GCM under the service's sealing key) into an opaque `ceremony` that the browser sends
//! back with its answer, so starting a ceremony — which anyone may do — writes nothing. Each
//! ceremony is answered once: its id is recorded when an answer arrives, before the answer is
//! checked, and it expires after [`CEREMONY_TTL`].
//!
//! What is refused, each with its own code: an answer for another origin (a phishing site
//! relaying the ceremony: `passkey_wrong_origin`), a passkey of another account
//! (`passkey_unknown`), an answer without user verification (`passkey_not_verified`), a ceremony
//! answered before (`passkey_replayed`) or too late (`passkey_expired`), and a signature counter
//! that did not move forward (`passkey_cloned`: a copy of the authenticator's key is in use).
//! Failed answers count as failed sign-ins, like a wrong code.
//!
//! The relying party is the service's public URL: its host is the RP ID, its origin the only one
//! accepted. WebAuthn needs a domain name; a service reached at an IP address (the default
//! `http://127.0.0.1:8443`) offers passkeys at `localhost` on the same port and scheme instead.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use consult_proto::api::{
    ErrorBody, LoginResponse, PasskeyChallenge, PasskeyRegistrationFinish,
    PasskeyRegistrationStart, PasskeySignInFinish, PasskeySignInStart, PasskeySummary,
    RemovePasskey, RenamePasskey,
};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Webauthn, WebauthnBuilder, WebauthnError,
};
use webauthn_rs_proto::{AllowCredentials, Mediation, ResidentKeyRequirement};

use super::passkey_rows::{self as rows, PasskeyRow};
use super::sessions::{CurrentUser, SessionUser};
use super::{
    check_password, end_other_sessions, fail, recheck_password, signed_in, start_session,
    SignInSource,
};
use crate::accounts;
use crate::audit::{Action, Actor};
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::state::AppState;

/// How long a ceremony can be answered.
pub const CEREMONY_TTL: Duration = Duration::from_secs(5 * 60);
/// Passkeys one account may register.
pub const MAX_PASSKEYS_PER_ACCOUNT: u64 = 20;
/// Longest passkey name, in characters.
const MAX_NAME_CHARS: usize = 60;
/// The sealing key's owner label for ceremonies.
const CEREMONY_OWNER: &str = "passkey-ceremony";

/// The service as a WebAuthn relying party.
pub struct RelyingParty {
    webauthn: Webauthn,
    origin: Url,
}

impl RelyingParty {
    /// The relying party of a service reached at `public_url` (see the module docs for an
    /// address instead of a name).
    pub fn for_public_url(public_url: &str) -> anyhow::Result<Self> {
        let mut origin = Url::parse(public_url)?;
        let is_name = matches!(origin.host(), Some(url::Host::Domain(_)));
        if !is_name {
            origin
                .set_host(Some("localhost"))
                .map_err(|e| anyhow::anyhow!("public_url {public_url}: {e}"))?;
        }
        origin.set_path("");
        origin.set_query(None);
        origin.set_fragment(None);
        let rp_id = origin
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("public_url {public_url} has no host"))?
            .to_owned();
        let webauthn = WebauthnBuilder::new(&rp_id, &origin)?
            .rp_name("Consult")
            .timeout(CEREMONY_TTL)
            .build()?;
        Ok(Self { webauthn, origin })
    }

    /// The one origin whose ceremonies are accepted, like `https://consult.example.org`.
    pub fn origin(&self) -> String {
        self.origin.origin().ascii_serialization()
    }
}

/// What a sealed ceremony is for, with webauthn-rs's state.
#[derive(Serialize, Deserialize)]
#[serde(tag = "purpose", rename_all = "snake_case")]
enum Purpose {
    /// Registering a passkey, from this session of this account.
    Register {
        user_id: Uuid,
        session_id: Uuid,
        state: PasskeyRegistration,
    },
    /// Signing in to this account, whose password was right.
    SecondFactor {
        user_id: Uuid,
        state: DiscoverableAuthentication,
    },
    /// Signing in to whichever account the passkey picked belongs to.
    Passwordless { state: DiscoverableAuthentication },
}

#[derive(Serialize, Deserialize)]
struct Ceremony {
    id: String,
    expires_at: i64,
    #[serde(flatten)]
    purpose: Purpose,
}

/// The options for the browser, with the sealed ceremony to send back.
fn challenge(
    state: &AppState,
    purpose: Purpose,
    options: &impl Serialize,
) -> Result<Json<PasskeyChallenge>, ApiError> {
    let ceremony = seal(state, purpose)?;
    let options = serde_json::to_value(options).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Json(PasskeyChallenge { ceremony, options }))
}

fn seal(state: &AppState, purpose: Purpose) -> Result<String, ApiError> {
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    let expires_at = state.clock.now() + CEREMONY_TTL;
    let ceremony = Ceremony {
        id: URL_SAFE_NO_PAD.encode(id),
        expires_at: expires_at.unix_timestamp(),
        purpose,
    };
    let text = serde_json::to_string(&ceremony).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(state.sealing_key.seal(&text, CEREMONY_OWNER))
}

fn rejected(code: &'static str, message: &str) -> ApiError {
    ApiError::PasskeyRejected {
        code,
        message: message.to_owned(),
    }
}

/// Open a ceremony the client sent back and spend it: tampered, expired or answered before is
/// refused.
async fn open(state: &AppState, sealed: &str) -> Result<Purpose, ApiError> {
    let invalid = || {
        rejected(
            "passkey_ceremony_invalid",
            "this passkey request is not one of ours; start again",
        )
    };
    let text = state
        .sealing_key
        .open(sealed, CEREMONY_OWNER)
        .map_err(|_| invalid())?;
    let ceremony: Ceremony = serde_json::from_str(&text).map_err(|_| invalid())?;
    let now = state.clock.now();
    let expires_at =
        OffsetDateTime::from_unix_timestamp(ceremony.expires_at).map_err(|_| invalid())?;
    if expires_at <= now {
        return Err(rejected(
            "passkey_expired",
            "the passkey request expired; start again",
        ));
    }
    if !rows::use_ceremony(&state.writer, &ceremony.id, expires_at, now).await? {
        return Err(rejected(
            "passkey_replayed",
            "this passkey request was answered already; start again",
        ));
    }
    Ok(ceremony.purpose)
}

/// What webauthn-rs's refusal means for the person.
fn refusal(error: &WebauthnError) -> (ApiError, &'static str) {
    match error {
        WebauthnError::InvalidRPOrigin | WebauthnError::InvalidRPIDHash => (
            rejected(
                "passkey_wrong_origin",
                "this passkey answer was made for another site; sign in only on the clinic's own address",
            ),
            "passkey_wrong_origin",
        ),
        WebauthnError::CredentialPossibleCompromise => (
            rejected(
                "passkey_cloned",
                "this passkey's counter went backwards, as when its key was copied; it was refused — use another passkey or a recovery code and tell your administrator",
            ),
            "passkey_cloned",
        ),
        WebauthnError::UserNotVerified => (
            rejected(
                "passkey_not_verified",
                "the passkey did not verify you (PIN or biometrics); try again",
            ),
            "passkey_not_verified",
        ),
        _ => (
            rejected("passkey_invalid", "the passkey's answer is not valid; try again"),
            "passkey_invalid",
        ),
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| {
        ApiError::bad_request(
            "malformed_credential",
            format!("the passkey credential is not WebAuthn JSON: {e}"),
        )
    })
}

fn decode(row: &PasskeyRow) -> Result<Passkey, ApiError> {
    serde_json::from_str(&row.passkey).map_err(|e| ApiError::Internal(e.into()))
}

fn summary(row: &PasskeyRow) -> PasskeySummary {
    PasskeySummary {
        id: row.id,
        name: row.name.clone(),
        created_at: row.created_at,
        last_used_at: row.last_used_at,
    }
}

fn too_many_passkeys() -> ApiError {
    ApiError::conflict(
        "too_many_passkeys",
        format!("an account has at most {MAX_PASSKEYS_PER_ACCOUNT} passkeys; remove one first"),
    )
}

fn checked_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_passkey_name",
            format!("name the passkey with 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(name.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Sign-in
// ---------------------------------------------------------------------------------------------

/// `POST /api/v1/auth/passkey/start`: begin a sign-in with a passkey.
#[utoipa::path(post, path = "/api/v1/auth/passkey/start", tag = "auth", request_body = PasskeySignInStart,
    responses((status = 200, body = PasskeyChallenge, description = "options for navigator.credentials.get()"),
              (status = 400, body = ErrorBody, description = "email without password or the reverse"),
              (status = 401, body = ErrorBody, description = "invalid_credentials"),
              (status = 409, body = ErrorBody, description = "no_passkey: the account has none"),
              (status = 429, body = ErrorBody, description = "too_many_attempts")))]
pub async fn start_sign_in(
    State(state): State<AppState>,
    source: SignInSource,
    ApiJson(req): ApiJson<PasskeySignInStart>,
) -> Result<Json<PasskeyChallenge>, ApiError> {
    let (mut options, state_of) = state
        .passkeys
        .webauthn
        .start_discoverable_authentication()
        .map_err(|e| ApiError::Internal(e.into()))?;
    // A button, not the autofill prompt: the browser asks at once.
    options.mediation = None::<Mediation>;
    let purpose = match (req.email.as_deref(), req.password.as_deref()) {
        (Some(email), Some(password)) => {
            let account = accounts::find_by_email(&state.pool, email).await?;
            let (account, _) =
                check_password(&state, source, email, account, password, "wrong_password").await?;
            let registered = rows::for_user(&state.pool, account.user.id).await?;
            if registered.is_empty() {
                return Err(ApiError::conflict(
                    "no_passkey",
                    "this account has no passkey yet; sign in with the code from your authenticator app",
                ));
            }
            options.public_key.allow_credentials = registered
                .iter()
                .map(|row| {
                    decode(row).map(|passkey| AllowCredentials {
                        type_: "public-key".into(),
                        id: passkey.cred_id().clone(),
                        transports: None,
                    })
                })
                .collect::<Result<_, _>>()?;
            Purpose::SecondFactor {
                user_id: account.user.id,
                state: state_of,
            }
        }
        (None, None) => Purpose::Passwordless { state: state_of },
        _ => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "send both email and password, or neither",
            ))
        }
    };
    challenge(&state, purpose, &options)
}

/// `POST /api/v1/auth/passkey/finish`: sign in with the passkey's answer.
#[utoipa::path(post, path = "/api/v1/auth/passkey/finish", tag = "auth", request_body = PasskeySignInFinish,
    responses((status = 200, body = LoginResponse, description = "signed in (cookie set)"),
              (status = 400, body = ErrorBody, description = "malformed_credential"),
              (status = 401, body = ErrorBody, description = "passkey_wrong_origin, passkey_unknown, passkey_not_verified, passkey_cloned, passkey_replayed, passkey_expired, passkey_invalid, passkey_ceremony_invalid"),
              (status = 403, body = ErrorBody, description = "the account is disabled"),
              (status = 429, body = ErrorBody, description = "too_many_attempts")))]
pub async fn finish_sign_in(
    State(state): State<AppState>,
    source: SignInSource,
    ApiJson(req): ApiJson<PasskeySignInFinish>,
) -> Result<Response, ApiError> {
    // Malformed JSON is refused before the ceremony is spent (or stored as spent).
    let credential: PublicKeyCredential = parse(req.credential)?;
    let purpose = open(&state, &req.ceremony).await?;
    let (expected_user, ceremony_state) = match purpose {
        Purpose::SecondFactor { user_id, state } => (Some(user_id), state),
        Purpose::Passwordless { state } => (None, state),
        Purpose::Register { .. } => {
            return Err(rejected(
                "passkey_ceremony_invalid",
                "this is a registration request, not a sign-in; start again",
            ))
        }
    };
    let claimed_user = credential
        .get_user_unique_id()
        .map(|handle| Uuid::from_slice(handle).ok());
    let row = rows::by_credential(
        &state.pool,
        &URL_SAFE_NO_PAD.encode(credential.get_credential_id()),
    )
    .await?;
    // The passkey must be registered, to the account the password was for (second factor) or
    // to the account its user handle names (passwordless: the handle must be there).
    let owner_matches = |row: &PasskeyRow| {
        expected_user.is_none_or(|user| user == row.user_id)
            && match claimed_user {
                Some(Some(user)) => user == row.user_id,
                Some(None) => false,
                None => expected_user.is_some(),
            }
    };
    let row = match row {
        Some(row) if owner_matches(&row) => row,
        _ => {
            let account = match expected_user {
                Some(user) => accounts::find_by_id(&state.pool, user).await?,
                None => None,
            };
            let source = source.for_account(account.as_ref().map(|a| a.user.id));
            source
                .refuse_if_address_locked(&state, account.as_ref())
                .await?;
            return Err(fail(
                &state,
                &source,
                account.as_ref(),
                "passkey_unknown",
                rejected(
                    "passkey_unknown",
                    "this passkey is not registered to the account signing in",
                ),
            )
            .await);
        }
    };
    let account = accounts::find_by_id(&state.pool, row.user_id)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let source = source.for_account(Some(account.user.id));
    source
        .refuse_if_address_locked(&state, Some(&account))
        .await?;
    let mut passkey = decode(&row)?;
    let result = match state
        .passkeys
        .webauthn
        .finish_discoverable_authentication_v2(&credential, ceremony_state, &passkey)
    {
        Ok(result) => result,
        Err(e) => {
            let (error, reason) = refusal(&e);
            tracing::info!(error = %e, reason, "a passkey answer was refused");
            return Err(fail(&state, &source, Some(&account), reason, error).await);
        }
    };
    passkey.update_credential(&result);
    let stored = serde_json::to_string(&passkey).map_err(|e| ApiError::Internal(e.into()))?;
    let now = state.clock.now();
    if !rows::record_use(
        &state.writer,
        row.id,
        row.sign_count,
        &stored,
        result.counter(),
        now,
    )
    .await?
    {
        // Another answer of this passkey was accepted meanwhile with the counter this one was
        // checked against: two copies of the key are in use.
        let (error, reason) = refusal(&WebauthnError::CredentialPossibleCompromise);
        return Err(fail(&state, &source, Some(&account), reason, error).await);
    }
    if account.disabled_at.is_some() {
        return Err(ApiError::Denied(
            "this account is disabled; ask your administrator".into(),
        ));
    }
    if source.device.is_none() {
        // As after a sign-in with the password: the untrusted channel's count starts again.
        super::rows::clear_failures(&state.writer, account.user.id).await?;
    }
    let started = start_session(&state, &account.user, &source, "passkey", false).await?;
    let session = started.session.clone();
    Ok(signed_in(
        &state,
        &source,
        started,
        LoginResponse::SignedIn { session },
        StatusCode::OK,
    ))
}

// ---------------------------------------------------------------------------------------------
// The account's passkeys
// ---------------------------------------------------------------------------------------------

/// `GET /api/v1/account/passkeys`: the signed-in account's passkeys.
#[utoipa::path(get, path = "/api/v1/account/passkeys", tag = "account",
    responses((status = 200, body = [PasskeySummary]), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    SessionUser(current): SessionUser,
) -> Result<Json<Vec<PasskeySummary>>, ApiError> {
    let registered = rows::for_user(&state.pool, current.user.id).await?;
    Ok(Json(registered.iter().map(summary).collect()))
}

/// `POST /api/v1/account/passkeys/registration`: begin registering a passkey (the password is
/// checked again, and a wrong one counts as a failed sign-in).
#[utoipa::path(post, path = "/api/v1/account/passkeys/registration", tag = "account", request_body = PasskeyRegistrationStart,
    responses((status = 200, body = PasskeyChallenge, description = "options for navigator.credentials.create()"),
              (status = 401, body = ErrorBody, description = "invalid_credentials: the password is wrong"),
              (status = 403, body = ErrorBody, description = "csrf_rejected"),
              (status = 409, body = ErrorBody, description = "too_many_passkeys"),
              (status = 429, body = ErrorBody, description = "too_many_attempts")))]
pub async fn start_registration(
    State(state): State<AppState>,
    source: SignInSource,
    SessionUser(current): SessionUser,
    ApiJson(req): ApiJson<PasskeyRegistrationStart>,
) -> Result<Json<PasskeyChallenge>, ApiError> {
    let account = recheck_password(
        &state,
        source,
        &current,
        &req.current_password,
        "wrong_password_for_passkey",
    )
    .await?;
    let registered = rows::for_user(&state.pool, account.user.id).await?;
    if registered.len() as u64 >= MAX_PASSKEYS_PER_ACCOUNT {
        return Err(too_many_passkeys());
    }
    let exclude = registered
        .iter()
        .map(|row| decode(row).map(|p| p.cred_id().clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let (mut options, registration) = state
        .passkeys
        .webauthn
        .start_passkey_registration(
            account.user.id,
            &account.user.email,
            &account.user.display_name,
            Some(exclude),
        )
        .map_err(|e| ApiError::Internal(e.into()))?;
    // Discoverable, so that it can sign in without an email (passwordless).
    if let Some(selection) = options.public_key.authenticator_selection.as_mut() {
        selection.resident_key = Some(ResidentKeyRequirement::Required);
        selection.require_resident_key = true;
    }
    let purpose = Purpose::Register {
        user_id: account.user.id,
        session_id: current.session_id,
        state: registration,
    };
    challenge(&state, purpose, &options)
}

/// `POST /api/v1/account/passkeys`: register the passkey the browser created.
#[utoipa::path(post, path = "/api/v1/account/passkeys", tag = "account", request_body = PasskeyRegistrationFinish,
    responses((status = 201, body = PasskeySummary),
              (status = 400, body = ErrorBody, description = "malformed_credential, invalid_passkey_name"),
              (status = 401, body = ErrorBody, description = "passkey_wrong_origin, passkey_not_verified, passkey_replayed, passkey_expired, passkey_invalid, passkey_ceremony_invalid"),
              (status = 409, body = ErrorBody, description = "passkey_exists")))]
pub async fn finish_registration(
    State(state): State<AppState>,
    SessionUser(current): SessionUser,
    ApiJson(req): ApiJson<PasskeyRegistrationFinish>,
) -> Result<(StatusCode, Json<PasskeySummary>), ApiError> {
    let name = checked_name(&req.name)?;
    let credential: RegisterPublicKeyCredential = parse(req.credential)?;
    let registration = match open(&state, &req.ceremony).await? {
        Purpose::Register {
            user_id,
            session_id,
            state,
        } if user_id == current.user.id && session_id == current.session_id => state,
        _ => {
            return Err(rejected(
                "passkey_ceremony_invalid",
                "this passkey request was not started in this session; start again",
            ))
        }
    };
    let passkey = state
        .passkeys
        .webauthn
        .finish_passkey_registration(&credential, &registration)
        .map_err(|e| {
            tracing::info!(error = %e, "a passkey registration was refused");
            refusal(&e).0
        })?;
    let stored = serde_json::to_string(&passkey).map_err(|e| ApiError::Internal(e.into()))?;
    let credential_id = URL_SAFE_NO_PAD.encode(passkey.cred_id());
    let now = state.clock.now();
    let id = Uuid::new_v4();
    let mut tx = state.audit.begin().await?;
    // Checked again here: ceremonies started side by side all passed the check at the start.
    if rows::count(tx.connection(), current.user.id).await? >= MAX_PASSKEYS_PER_ACCOUNT {
        return Err(too_many_passkeys());
    }
    // Its counter starts at zero here: the first sign-in moves it.
    if !rows::insert(
        tx.connection(),
        id,
        current.user.id,
        &credential_id,
        &name,
        &stored,
        0,
        now,
    )
    .await?
    {
        return Err(ApiError::conflict(
            "passkey_exists",
            "this passkey is registered already",
        ));
    }
    super::rows::end_passkey_setup(tx.connection(), current.session_id).await?;
    tx.record(
        now,
        &Actor::User(current.user.id),
        Action::PasskeyRegistered,
        None,
        json!({ "passkey": id, "name": name }),
    )
    .await?;
    tx.commit().await?;
    let row = PasskeyRow {
        id,
        user_id: current.user.id,
        name,
        passkey: stored,
        sign_count: 0,
        created_at: now,
        last_used_at: None,
    };
    Ok((StatusCode::CREATED, Json(summary(&row))))
}

/// `PATCH /api/v1/account/passkeys/{id}`: rename a passkey.
#[utoipa::path(patch, path = "/api/v1/account/passkeys/{id}", tag = "account", request_body = RenamePasskey,
    params(("id" = Uuid, Path, description = "the passkey")),
    responses((status = 200, body = PasskeySummary), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody, description = "no such passkey of yours")))]
pub async fn rename(
    State(state): State<AppState>,
    current: CurrentUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<RenamePasskey>,
) -> Result<Json<PasskeySummary>, ApiError> {
    let name = checked_name(&req.name)?;
    let mut tx = state.audit.begin().await?;
    if !rows::rename(tx.connection(), current.user.id, id, &name).await? {
        return Err(ApiError::NotFound("passkey"));
    }
    tx.record(
        state.clock.now(),
        &Actor::User(current.user.id),
        Action::PasskeyRenamed,
        None,
        json!({ "passkey": id, "name": name }),
    )
    .await?;
    tx.commit().await?;
    let registered = rows::for_user(&state.pool, current.user.id).await?;
    registered
        .iter()
        .find(|row| row.id == id)
        .map(|row| Json(summary(row)))
        .ok_or(ApiError::NotFound("passkey"))
}

/// `DELETE /api/v1/account/passkeys/{id}`: remove a passkey (the password is asked again, as it
/// signs out every other session). Every other session of the account ends (and its WebSockets
/// close), since one of them may have been opened with it.
#[utoipa::path(delete, path = "/api/v1/account/passkeys/{id}", tag = "account", request_body = RemovePasskey,
    params(("id" = Uuid, Path, description = "the passkey")),
    responses((status = 204), (status = 401, body = ErrorBody, description = "invalid_credentials: the password is wrong"),
              (status = 404, body = ErrorBody, description = "no such passkey of yours"),
              (status = 409, body = ErrorBody, description = "last_passkey: the organisation requires one"),
              (status = 429, body = ErrorBody, description = "too_many_attempts")))]
pub async fn remove(
    State(state): State<AppState>,
    source: SignInSource,
    current: CurrentUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<RemovePasskey>,
) -> Result<StatusCode, ApiError> {
    recheck_password(
        &state,
        source,
        &current,
        &req.current_password,
        "wrong_password_for_passkey",
    )
    .await?;
    let keep_one = state.config.policy.require_passkey;
    let mut tx = state.audit.begin().await?;
    match rows::remove(tx.connection(), current.user.id, id, keep_one).await? {
        rows::Removal::Removed => {}
        rows::Removal::NotFound => return Err(ApiError::NotFound("passkey")),
        rows::Removal::LastOne => {
            return Err(ApiError::conflict(
                "last_passkey",
                "your organisation requires a passkey: register another before removing this one",
            ))
        }
    }
    end_other_sessions(
        &state,
        tx,
        &current,
        Action::PasskeyRemoved,
        json!({ "passkey": id }),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
