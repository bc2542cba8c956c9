//! Bodies of the HTTP API under `/api/v1`.
//!
//! Times are RFC 3339 strings; identifiers are UUIDs; secrets handed to a client (session tokens,
//! invite links, participant tokens, TOTP secrets, recovery codes) appear only in the one response
//! that creates them.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// `Debug` that names the secret fields but prints `<redacted>` for them, so a request or an
/// answer that holds a password, a code or a token can be logged without leaking it.
macro_rules! redacted_debug {
    ($ty:ident { shown: [$($shown:ident),*], secret: [$($secret:ident),*] }) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut out = f.debug_struct(stringify!($ty));
                $(out.field(stringify!($shown), &self.$shown);)*
                $(out.field(stringify!($secret), &"<redacted>");)*
                out.finish()
            }
        }
    };
}

/// The body of every failed request: `{ "error": { "code": "...", "message": "..." } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// A machine-readable code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case: clients branch on it (`invalid_credentials`, `invite_in_use`, ...).
    pub code: String,
    /// A sentence a person can read; may change between releases.
    pub message: String,
}

/// Who an account is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A clinician who holds consultations. Must use a second factor.
    Doctor,
    /// Manages accounts. Must use a second factor.
    Admin,
}

impl Role {
    /// The snake_case name used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Doctor => "doctor",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "doctor" => Ok(Role::Doctor),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (expected doctor or admin)")),
        }
    }
}

/// A signed-in account, as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    /// Account id.
    pub id: Uuid,
    /// Sign-in email, lower-cased.
    pub email: String,
    /// Name shown to patients ("Dr Ada Lovelace").
    pub display_name: String,
    /// Role of the account.
    pub role: Role,
}

/// `POST /api/v1/auth/enrol`: set the password of a new account from its one-time enrolment link.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrolRequest {
    /// The token from the enrolment link.
    pub token: String,
    /// The new password (at least 12 characters).
    #[schema(min_length = 12, max_length = 256)]
    pub password: String,
}

/// Answer to a successful enrolment: sign in next, which starts the second-factor enrolment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrolResponse {
    /// The account's email, to pre-fill the sign-in form.
    pub email: String,
}

/// `POST /api/v1/auth/login`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// Account email (case-insensitive).
    pub email: String,
    /// Account password.
    pub password: String,
    /// The current six-digit TOTP code, once a second factor is enrolled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<String>,
    /// A single-use recovery code, instead of `totp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_code: Option<String>,
}

/// Answer to a correct password: either a session, or the second-factor enrolment to complete first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LoginResponse {
    /// Signed in. A session cookie was set as well.
    SignedIn {
        /// The new session.
        session: Session,
    },
    /// The account has no second factor yet: enrol one with `POST /api/v1/auth/mfa/enrol`.
    MfaEnrolmentRequired {
        /// What the authenticator app needs.
        enrolment: MfaEnrolment,
    },
}

/// `POST /api/v1/auth/password`: change the signed-in account's password. Every other session of
/// the account ends (and its WebSockets close); this one stays.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    /// The password in use now.
    pub current_password: String,
    /// The new one (at least 12 characters).
    #[schema(min_length = 12, max_length = 256)]
    pub new_password: String,
}

/// `POST /api/v1/auth/passkey/start`: begin a sign-in with a passkey. With `email` and
/// `password` (checked and throttled like a sign-in) the passkey is the second factor and only
/// that account's passkeys are offered; with neither, the browser offers whichever passkey of
/// this site the person picks (passwordless).
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PasskeySignInStart {
    /// Account email, for a passkey as the second factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Account password, with `email`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// `POST /api/v1/account/passkeys/registration`: begin registering a passkey. The password is
/// asked again, so that an unattended signed-in browser cannot be given someone else's passkey.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct PasskeyRegistrationStart {
    /// The account's password.
    pub current_password: String,
}

/// A WebAuthn ceremony to hand to the browser, and the sealed state to send back with its answer.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct PasskeyChallenge {
    /// Opaque and single-use; expires after five minutes.
    pub ceremony: String,
    /// The `publicKey` options for `navigator.credentials.create()` or `.get()` (WebAuthn JSON:
    /// binary fields are base64url).
    #[schema(value_type = Object)]
    pub options: serde_json::Value,
}

/// `POST /api/v1/auth/passkey/finish`: the browser's answer to a sign-in ceremony.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct PasskeySignInFinish {
    /// From [`PasskeyChallenge::ceremony`].
    pub ceremony: String,
    /// The `PublicKeyCredential` from `navigator.credentials.get()` (WebAuthn JSON).
    #[schema(value_type = Object)]
    pub credential: serde_json::Value,
}

/// `POST /api/v1/account/passkeys`: the browser's answer to a registration ceremony.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct PasskeyRegistrationFinish {
    /// From [`PasskeyChallenge::ceremony`].
    pub ceremony: String,
    /// What the person calls it ("Laptop", "Phone"): 1 to 60 characters, not only spaces, no
    /// control characters.
    #[schema(
        max_length = 60,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub name: String,
    /// The `PublicKeyCredential` from `navigator.credentials.create()` (WebAuthn JSON).
    #[schema(value_type = Object)]
    pub credential: serde_json::Value,
}

/// `PATCH /api/v1/account/passkeys/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RenamePasskey {
    /// 1 to 60 characters, not only spaces, no control characters.
    #[schema(
        max_length = 60,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub name: String,
}

/// `DELETE /api/v1/account/passkeys/{id}`: the password is asked again (removing a passkey signs
/// out every other session).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct RemovePasskey {
    /// The account's password.
    pub current_password: String,
}

/// A registered passkey, as its owner sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PasskeySummary {
    /// Its id in the service.
    pub id: Uuid,
    /// The name its owner gave it.
    pub name: String,
    /// When it was registered.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it last signed in, if ever.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
}

/// An account as an administrator sees it (`GET /api/v1/admin/accounts`).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct AccountSummary {
    /// The account.
    pub user: User,
    /// When it was disabled, if it was.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub disabled_at: Option<OffsetDateTime>,
}

/// A session, as returned at sign-in (with its bearer token) or by `GET /api/v1/auth/session`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// The signed-in account.
    pub user: User,
    /// Bearer form of the session for non-browser clients (`Authorization: Bearer ...`).
    /// Present only in the sign-in response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Send as `X-CSRF-Token` with every state-changing request authenticated by the cookie.
    pub csrf_token: String,
    /// The session ends if the person does nothing until then. What the person does moves it
    /// forward — a state-changing request, `POST /api/v1/auth/activity`, or being in a call —
    /// while background reads (polling, heartbeats) never do.
    #[serde(with = "time::serde::rfc3339")]
    pub idle_expires_at: OffsetDateTime,
    /// The session ends then, however active.
    #[serde(with = "time::serde::rfc3339")]
    pub absolute_expires_at: OffsetDateTime,
    /// The organisation requires a passkey and this session was opened without one: it may
    /// only register a passkey (`/api/v1/account/passkeys`), read itself and sign out; every
    /// other request is refused with `403 passkey_setup_required`.
    #[serde(default)]
    pub passkey_setup_required: bool,
}

/// A TOTP secret to enrol, with a QR code rendered by the service (nothing leaves the machine).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct MfaEnrolment {
    /// Short-lived token that proves the password was checked; only good for `mfa/enrol`.
    pub mfa_token: String,
    /// The TOTP secret, base32, for manual entry.
    pub totp_secret: String,
    /// `otpauth://totp/...` URI (SHA1, 6 digits, 30 s).
    pub otpauth_uri: String,
    /// The URI as a QR code, an SVG document.
    pub qr_svg: String,
}

/// `POST /api/v1/auth/mfa/enrol`: confirm the authenticator with a first code.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct MfaEnrolRequest {
    /// From [`MfaEnrolment::mfa_token`].
    pub mfa_token: String,
    /// The code the authenticator shows now.
    pub totp: String,
}

/// Second factor enrolled: a session and recovery codes, shown once.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct MfaEnrolResponse {
    /// The new session. A session cookie was set as well.
    pub session: Session,
    /// Ten single-use recovery codes. They are stored hashed and never shown again.
    pub recovery_codes: Vec<String>,
}

/// Whether a consultation may be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsultationMode {
    /// Nothing is recorded, ever.
    #[default]
    LiveOnly,
    /// Recorded into encrypted storage, with the patient's consent.
    Recorded,
}

/// Whether a consultation can still be joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsultationStatus {
    /// Open: patients can join with a valid invite.
    Open,
    /// Ended: everyone was disconnected and the invite no longer works.
    Ended,
}

/// `POST /api/v1/consultations`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateConsultationRequest {
    /// Shown to the doctor only, e.g. "Follow-up, knee". At most 200 characters.
    #[serde(default)]
    pub title: Option<String>,
    /// When the consultation is planned.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub scheduled_at: Option<OffsetDateTime>,
    /// Live-only (default) or recorded.
    #[serde(default)]
    pub mode: Option<ConsultationMode>,
    /// End-to-end encryption (SFrame) for this consultation. Defaults to the organisation's
    /// policy (`policy.e2ee_required`); `false` is refused when the policy requires it.
    #[serde(default)]
    pub e2ee: Option<bool>,
}

/// A consultation, as its doctor sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Consultation {
    /// Consultation id.
    pub id: Uuid,
    /// Doctor's title for it.
    pub title: Option<String>,
    /// When it is planned.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub scheduled_at: Option<OffsetDateTime>,
    /// Live-only or recorded.
    pub mode: ConsultationMode,
    /// End-to-end encrypted (SFrame).
    pub e2ee: bool,
    /// Open or ended.
    pub status: ConsultationStatus,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it ended.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    /// State of the current patient invite, if one was issued.
    pub invite: Option<InviteStatus>,
    /// The patient invite link. Present only in the response that issues it: the service keeps
    /// only a hash, so reissue to get a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite_url: Option<String>,
    /// Patients in the waiting room now.
    pub waiting: Vec<WaitingPatient>,
    /// The named invites still live (neither revoked nor expired): one per extra person the
    /// doctor invited, each with its kind and the name the doctor chose.
    #[serde(default)]
    pub invites: Vec<NamedInvite>,
    /// Colleagues (other clinician accounts) the doctor added.
    #[serde(default)]
    pub clinicians: Vec<Colleague>,
    /// How many people may take part at once, the doctor included (the organisation's policy).
    #[serde(default = "default_max_participants")]
    pub max_participants: u8,
    /// How many places are promised now, the doctor included: every invite not revoked that is
    /// live or still held by a device, and every colleague. Another invite or colleague needs
    /// this below `max_participants`.
    #[serde(default)]
    pub places_taken: u8,
}

fn default_max_participants() -> u8 {
    2
}

/// Who an invite is for. A patient link without a name (the one every consultation has) asks the
/// patient for their name; a named invite carries the name its doctor chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InviteKind {
    /// A patient.
    #[default]
    Patient,
    /// A medical interpreter.
    Interpreter,
    /// A family member or carer.
    Companion,
}

impl InviteKind {
    /// The stored name (`patient`, `interpreter`, `companion`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Patient => "patient",
            Self::Interpreter => "interpreter",
            Self::Companion => "companion",
        }
    }

    /// The kind a stored name names.
    pub fn from_stored(stored: &str) -> Option<Self> {
        match stored {
            "patient" => Some(Self::Patient),
            "interpreter" => Some(Self::Interpreter),
            "companion" => Some(Self::Companion),
            _ => None,
        }
    }

    /// The role its holder has in the call.
    pub fn role(self) -> crate::signal::ParticipantRole {
        use crate::signal::ParticipantRole;
        match self {
            Self::Patient => ParticipantRole::Patient,
            Self::Interpreter => ParticipantRole::Interpreter,
            Self::Companion => ParticipantRole::Companion,
        }
    }
}

/// `POST /api/v1/consultations/{id}/invites`: invite one more person by a link of their own.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IssueInviteRequest {
    /// Who the link is for.
    pub kind: InviteKind,
    /// The name everyone in the call sees for them (1 to 80 characters, not only spaces, no
    /// control characters); the person who opens the link cannot change it.
    #[schema(
        max_length = 80,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub name: String,
}

/// A named invite, as its doctor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NamedInvite {
    /// Invite id, to revoke it.
    pub id: Uuid,
    /// Who it is for.
    pub kind: InviteKind,
    /// The name the doctor chose.
    pub name: String,
    /// When it was issued.
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// When it stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Whether a device holds it now.
    pub in_use: bool,
}

/// A freshly issued named invite: its link is shown only here.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IssuedInvite {
    /// The invite.
    pub invite: NamedInvite,
    /// The link to send to that person.
    pub invite_url: String,
}

/// `POST /api/v1/consultations/{id}/clinicians`: add a colleague by their account's email.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AddClinicianRequest {
    /// The colleague's sign-in email (case-insensitive).
    #[schema(max_length = 254)]
    pub email: String,
}

/// A colleague added to a consultation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Colleague {
    /// Their account.
    pub user_id: Uuid,
    /// Their display name.
    pub name: String,
    /// Their participant id in the call (the same every time they join).
    pub participant_id: Uuid,
    /// When they were added.
    #[serde(with = "time::serde::rfc3339")]
    pub added_at: OffsetDateTime,
}

/// A consultation another clinician added you to (`GET /api/v1/consultations/shared`): join it
/// with the signaling `join` message and its id, then wait to be admitted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SharedConsultation {
    /// Consultation id.
    pub id: Uuid,
    /// Its owner's title.
    pub title: Option<String>,
    /// The clinician who owns it.
    pub doctor_name: String,
    /// Live-only or recorded.
    pub mode: ConsultationMode,
    /// End-to-end encrypted.
    pub e2ee: bool,
    /// Open or ended.
    pub status: ConsultationStatus,
    /// When you were added.
    #[serde(with = "time::serde::rfc3339")]
    pub added_at: OffsetDateTime,
}

/// State of a patient invite.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InviteStatus {
    /// When it was issued.
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// When it stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Whether a patient device holds it now.
    pub in_use: bool,
    /// Whether it was revoked or its consultation ended.
    pub revoked: bool,
}

/// A freshly issued invite link.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Invite {
    /// The link to send to the patient.
    pub invite_url: String,
    /// When it stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A patient in a waiting room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WaitingPatient {
    /// Participant id, to admit or decline.
    pub participant_id: Uuid,
    /// The consultation they wait for.
    pub consultation_id: Uuid,
    /// Name the patient entered.
    pub name: String,
    /// Since when they wait.
    #[serde(with = "time::serde::rfc3339")]
    pub waiting_since: OffsetDateTime,
    /// Whether their device is connected right now.
    pub connected: bool,
    /// Who they are in the call (`patient` unless an invite or the doctor said otherwise).
    #[serde(default = "waiting_patient_role")]
    pub role: crate::signal::ParticipantRole,
}

fn waiting_patient_role() -> crate::signal::ParticipantRole {
    crate::signal::ParticipantRole::Patient
}

/// `POST /api/v1/invites/inspect`: what a patient sees before joining.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct InspectInviteRequest {
    /// The invite token from the link.
    pub invite: String,
}

/// What the invite leads to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InviteInfo {
    /// The consultation.
    pub consultation_id: Uuid,
    /// "Dr Ada Lovelace".
    pub doctor_name: String,
    /// Live-only or recorded: shown before the patient joins.
    pub mode: ConsultationMode,
    /// End-to-end encrypted: shown before the patient joins (their browser must support it).
    #[serde(default)]
    pub e2ee: bool,
    /// When the link stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Who the link is for.
    #[serde(default)]
    pub kind: InviteKind,
    /// The name the doctor chose for whoever opens it; absent on the patient link, where the
    /// patient enters theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `POST /api/v1/invites/redeem`: exchange an invite for a participant token.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct RedeemInviteRequest {
    /// The invite token from the link.
    pub invite: String,
    /// The patient's name, shown to the doctor (1 to 80 characters, not only spaces, no
    /// control characters); required by the patient link. A named invite carries its own name:
    /// then leave this out (one given is still checked, and ignored).
    #[schema(
        max_length = 80,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A patient's place in a consultation.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct RedeemInviteResponse {
    /// Secret that identifies this patient device; send it in the signaling `join` message.
    pub participant_token: String,
    /// The patient's participant id.
    pub participant_id: Uuid,
    /// What the invite leads to.
    pub invite: InviteInfo,
}

/// One entry of `GET /api/v1/ice-servers`, shaped like the browser's `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IceServer {
    /// `stun:` or `turn:`/`turns:` URLs.
    pub urls: Vec<String>,
    /// TURN REST username, `expiry:user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN REST password: base64 HMAC-SHA1 of the username with the shared secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Which candidates a client may use, like the browser's `RTCIceTransportPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum IceTransportPolicy {
    /// Host, server-reflexive and relay candidates.
    #[default]
    All,
    /// Relay candidates only: media goes through TURN and neither side learns the other's
    /// address.
    Relay,
}

/// `GET /api/v1/ice-servers`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IceServers {
    /// Servers to pass as `iceServers`.
    pub ice_servers: Vec<IceServer>,
    /// Pass as `iceTransportPolicy`.
    #[serde(default)]
    pub ice_transport_policy: IceTransportPolicy,
    /// How long the TURN credentials stay valid, in seconds.
    pub ttl_secs: u64,
}

/// `GET`/`PUT /api/v1/account/recording-key`: a clinician's recording public key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecordingKeyBody {
    /// X25519 public key, base64 (from `consult recording keygen`); `null` when none is
    /// registered.
    #[schema(pattern = "^[A-Za-z0-9+/]{43}=$")]
    pub public_key: Option<String>,
}

redacted_debug!(EnrolRequest {
    shown: [],
    secret: [token, password]
});
redacted_debug!(LoginRequest {
    shown: [email],
    secret: [password, totp, recovery_code]
});
redacted_debug!(Session {
    shown: [
        user,
        idle_expires_at,
        absolute_expires_at,
        passkey_setup_required
    ],
    secret: [token, csrf_token]
});
redacted_debug!(PasskeySignInStart {
    shown: [email],
    secret: [password]
});
redacted_debug!(PasskeyRegistrationStart {
    shown: [],
    secret: [current_password]
});
redacted_debug!(RemovePasskey {
    shown: [],
    secret: [current_password]
});
redacted_debug!(PasskeyChallenge {
    shown: [],
    secret: [ceremony, options]
});
redacted_debug!(PasskeySignInFinish {
    shown: [],
    secret: [ceremony, credential]
});
redacted_debug!(PasskeyRegistrationFinish {
    shown: [name],
    secret: [ceremony, credential]
});
redacted_debug!(MfaEnrolment {
    shown: [],
    secret: [mfa_token, totp_secret, otpauth_uri, qr_svg]
});
redacted_debug!(MfaEnrolRequest {
    shown: [],
    secret: [mfa_token, totp]
});
redacted_debug!(MfaEnrolResponse {
    shown: [session],
    secret: [recovery_codes]
});
redacted_debug!(InspectInviteRequest {
    shown: [],
    secret: [invite]
});
redacted_debug!(RedeemInviteRequest {
    shown: [name],
    secret: [invite]
});
redacted_debug!(RedeemInviteResponse {
    shown: [participant_id, invite],
    secret: [participant_token]
});

#[cfg(test)]
mod tests {
    use super::InviteKind;

    #[test]
    fn invite_kinds_round_trip_and_an_unknown_one_is_refused() {
        for kind in [
            InviteKind::Patient,
            InviteKind::Interpreter,
            InviteKind::Companion,
        ] {
            assert_eq!(InviteKind::from_stored(kind.as_str()), Some(kind));
            assert_eq!(kind.role().as_str(), kind.as_str());
        }
        assert_eq!(InviteKind::from_stored("clinician"), None);
        assert_eq!(InviteKind::from_stored("Patient"), None);
    }

    use super::*;

    #[test]
    fn debug_output_of_requests_and_answers_holds_no_secret() {
        let login = LoginRequest {
            email: "dr@example.org".into(),
            password: "SECRET-PASSWORD".into(),
            totp: Some("SECRET-CODE".into()),
            recovery_code: None,
        };
        let redeem = RedeemInviteRequest {
            invite: "SECRET-INVITE".into(),
            name: Some("Pat".into()),
        };
        let shown = format!("{login:?} {redeem:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(
            shown.contains("dr@example.org") && shown.contains("Pat"),
            "{shown}"
        );
    }
}

/// What a medical certificate attests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CertificateKindName {
    /// Unfit for work during the period (a sick note).
    UnfitForWork,
    /// Attended the consultation.
    Attendance,
    /// Fit to travel during the period.
    FitToTravel,
    /// The clinician's own words (in `note`).
    FreeText,
}

/// `POST /api/v1/consultations/{id}/certificates`: what the clinician fills in. The clinician's
/// name and licence number come from their account.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueCertificateRequest {
    /// The kind (always visible to verifiers).
    pub kind: CertificateKindName,
    /// First day of the period, `YYYY-MM-DD`.
    #[schema(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub period_start: String,
    /// Last day of the period (inclusive), `YYYY-MM-DD`.
    #[schema(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub period_end: String,
    /// The patient's name as entered or confirmed.
    pub patient_name: String,
    /// Restrictions (light duties, no flying…).
    #[serde(default)]
    pub restrictions: Option<String>,
    /// A confidential diagnosis: disclosed only if the patient chooses.
    #[serde(default)]
    pub diagnosis: Option<String>,
    /// A note; the text of a free-text certificate.
    #[serde(default)]
    pub note: Option<String>,
    /// The invite of the patient it is for; default the consultation's patient link.
    #[serde(default)]
    pub invite_id: Option<Uuid>,
}

redacted_debug!(IssueCertificateRequest {
    shown: [kind, period_start, period_end, invite_id],
    secret: [patient_name, restrictions, diagnosis, note]
});

/// Whether a certificate still stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CertificateState {
    /// Issued and not revoked.
    Valid,
    /// Revoked by its clinician or an administrator.
    Revoked,
}

/// A certificate as its clinicians see it in the consultation's list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CertificateSummary {
    /// Certificate id.
    pub id: Uuid,
    /// The consultation.
    pub consultation_id: Uuid,
    /// The kind.
    pub kind: CertificateKindName,
    /// When it was issued.
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// Until when it verifies.
    #[serde(with = "time::serde::rfc3339")]
    pub valid_until: OffsetDateTime,
    /// Until when the patient's invite link fetches it.
    #[serde(with = "time::serde::rfc3339")]
    pub holder_until: OffsetDateTime,
    /// The clinician who signed it.
    pub issued_by: String,
    /// Valid or revoked.
    pub state: CertificateState,
    /// When it was revoked.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Why it was revoked.
    #[serde(default)]
    pub revoke_reason: Option<String>,
    /// Its claims (`null` once retention destroyed it).
    #[serde(default)]
    pub claims: Option<Vec<CertificateClaim>>,
}

/// One claim of a certificate: its name and value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CertificateClaim {
    /// `period`, `patient_name`, `clinician_name`, `clinician_licence`, `restrictions`,
    /// `diagnosis` or `note`.
    pub name: String,
    /// The value (`period` is `{ "start", "end" }`, the others text).
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
}

/// `GET /api/v1/consultations/{id}/certificates`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CertificateList {
    /// Oldest first.
    pub certificates: Vec<CertificateSummary>,
}

/// `POST /api/v1/certificates/{id}/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeCertificateRequest {
    /// Why (shown to clinicians and kept in the audit trail; never published).
    pub reason: String,
}

/// `POST /api/v1/certificates/held`: the patient's invite link asks for its certificates.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeldCertificatesRequest {
    /// The invite token (the part of the link after `#`).
    pub token: String,
}

redacted_debug!(HeldCertificatesRequest {
    shown: [],
    secret: [token]
});

/// A certificate as its holder gets it.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct HeldCertificate {
    /// Certificate id.
    pub id: Uuid,
    /// The kind.
    pub kind: CertificateKindName,
    /// When it was issued.
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// Until when it verifies.
    #[serde(with = "time::serde::rfc3339")]
    pub valid_until: OffsetDateTime,
    /// Valid or revoked.
    pub state: CertificateState,
    /// Every claim it holds; the holder chooses which to disclose.
    pub claims: Vec<CertificateClaim>,
    /// The certificate itself: the SD-JWT with every disclosure, for a wallet.
    pub sd_jwt: String,
}

redacted_debug!(HeldCertificate {
    shown: [id, kind, issued_at, valid_until, state],
    secret: [claims, sd_jwt]
});

/// `POST /api/v1/certificates/held`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeldCertificates {
    /// Newest first.
    pub certificates: Vec<HeldCertificate>,
}

/// `POST /api/v1/certificates/{id}/presentation` (and `…/presentation.pdf`): the holder's
/// invite token and the claims to disclose.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresentationRequest {
    /// The invite token.
    pub token: String,
    /// The claims to disclose, by name; every other claim stays hidden.
    pub disclose: Vec<String>,
}

redacted_debug!(PresentationRequest {
    shown: [disclose],
    secret: [token]
});

/// A presentation: the certificate with only the chosen claims.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct Presentation {
    /// The SD-JWT presentation.
    pub presentation: String,
    /// `ISSUER/verify#PRESENTATION`: opens the verify page on it.
    pub link: String,
    /// The link as a QR code, SVG.
    pub qr_svg: String,
    /// The QR code's version (1–40).
    pub qr_version: u8,
}

redacted_debug!(Presentation {
    shown: [qr_version],
    secret: [presentation, link, qr_svg]
});

/// `POST /api/v1/certificates/verify`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyCertificateRequest {
    /// The presentation, or a verify link holding it after `#`.
    pub presentation: String,
}

redacted_debug!(VerifyCertificateRequest {
    shown: [],
    secret: [presentation]
});

/// What verification found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerificationOutcome {
    /// Signed by this issuer, intact, within its validity, not revoked.
    Valid,
    /// Genuine, but revoked.
    Revoked,
    /// Not a certificate this issuer signed as shown, or past its validity: `reason` says why.
    Invalid,
}

/// The answer of `POST /api/v1/certificates/verify`: exactly what the presentation proves.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct VerificationResult {
    /// Valid, revoked or invalid.
    pub outcome: VerificationOutcome,
    /// Why it is invalid.
    #[serde(default)]
    pub reason: Option<String>,
    /// The issuer (`iss`).
    #[serde(default)]
    pub issuer: Option<String>,
    /// The kind.
    #[serde(default)]
    pub kind: Option<CertificateKindName>,
    /// When it was issued.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub issued_at: Option<OffsetDateTime>,
    /// Until when it verifies.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub valid_until: Option<OffsetDateTime>,
    /// Exactly the disclosed claims.
    #[serde(default)]
    pub disclosed: Vec<CertificateClaim>,
}

redacted_debug!(VerificationResult {
    shown: [outcome, reason, issuer, kind, issued_at, valid_until],
    secret: [disclosed]
});
