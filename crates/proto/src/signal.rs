//! Messages of the signaling WebSocket at `/api/v1/signal`.
//!
//! Every message, in both directions, is one JSON text frame: an object with the protocol version
//! `v` and a `type`. A client first sends `join`; the service answers `joined`. A patient then waits
//! until the doctor admits them; only admitted participants of the same consultation exchange
//! `description` (SDP offer/answer) and `candidate` (trickled ICE) messages, addressed by
//! participant id. A bad message gets an `error` answer and, unless `fatal` is set, the
//! connection stays.
//!
//! ```text
//! patient                      service                       doctor
//!    |-- join {token} ----------->|                              |
//!    |<-- joined {admitted:false}-|-- waiting_room {entries} --->|
//!    |                            |<-- admit {participant_id} ---|
//!    |<-- admitted {peers} -------|-- peer_joined {peer} ------->|
//!    |-- description {to, sdp} -->|-- description {from, sdp} -->|
//!    |<-- candidate {from, ...} --|<-- candidate {to, ...} ------|
//! ```

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::{ConsultationMode, WaitingPatient};

/// The protocol version this crate speaks; every message carries it as `v`.
pub const PROTOCOL_VERSION: u64 = 1;

/// The default largest message the service accepts, in bytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A message from a client to the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Take a place in a consultation. The first message of every connection.
    ///
    /// A patient sends the participant token from `POST /api/v1/invites/redeem`. A doctor sends
    /// the consultation id, authenticated by the session cookie or by `token` holding the bearer
    /// session token. Joining again with the same identity within the reconnect grace period
    /// resumes the same place (and replaces an older connection).
    Join {
        /// Participant token (patient) or bearer session token (doctor without a cookie).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// The consultation, for a doctor.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consultation_id: Option<Uuid>,
    },
    /// Doctor: let a waiting patient in.
    Admit {
        /// The waiting patient.
        participant_id: Uuid,
    },
    /// Doctor: turn a waiting patient away.
    Decline {
        /// The waiting patient.
        participant_id: Uuid,
    },
    /// An SDP offer or answer for another admitted participant.
    Description {
        /// Recipient participant id.
        to: Uuid,
        /// The description, as `RTCSessionDescriptionInit`.
        description: SessionDescription,
    },
    /// A trickled ICE candidate for another admitted participant; `null` ends the candidates.
    Candidate {
        /// Recipient participant id.
        to: Uuid,
        /// The candidate, as `RTCIceCandidateInit`.
        candidate: Option<IceCandidate>,
    },
    /// Heartbeat; answered with `pong`. Send one every `heartbeat_interval_ms`.
    Ping {},
    /// Leave for good (hang up). A doctor leaving does not end the consultation.
    Leave {},
    /// Patient: answer the recording question, or withdraw consent (`recording: false` while
    /// recording). Declining and withdrawing are final for the consultation. Anyone else
    /// sending it is refused with `forbidden`.
    Consent {
        /// True: the patient agrees to be recorded. False: they refuse or withdraw.
        recording: bool,
    },
    /// Zero-knowledge recording: one SFrame base key of the media this client sends to the
    /// recorder, wrapped to the clinician's recording key with HPKE (RFC 9180; X25519,
    /// HKDF-SHA256, AES-256-GCM; base mode) — `info` = "consult recording epoch key v1",
    /// `aad` = recording id (16 bytes) ‖ sender participant id (16) ‖ kid (u64) ‖ suite (u16),
    /// big-endian. Send one before the first frame under each key. The service hands it to the
    /// recorder, which stores it beside the ciphertext; neither can open it.
    RecordingKey {
        /// The recording (from the `recording` message).
        recording_id: uuid::Uuid,
        /// The SFrame KID the key is for.
        kid: u64,
        /// The SFrame cipher suite (4: AES_128_GCM_SHA256_128, 5: AES_256_GCM_SHA512_128).
        suite: u16,
        /// Base64 of the HPKE `enc` (32 bytes) followed by the ciphertext.
        wrapped: String,
    },
    /// Doctor: let everyone else in the call (patients, interpreters, companions) share a screen,
    /// or not; clinicians always may. Everyone is told (`screen_sharing`). Media goes peer to
    /// peer, so the receivers keep it: the pages and the native client show or hand over a guest's
    /// screen, and the recorder keeps it, only while it is allowed (a modified client can still
    /// send one that nobody shows or records). Anyone else sending it is refused with `forbidden`.
    ScreenSharing {
        /// True: everyone may share a screen.
        guests_allowed: bool,
    },
}

/// `RTCSessionDescriptionInit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionDescription {
    /// offer, answer, pranswer or rollback.
    #[serde(rename = "type")]
    pub kind: SdpKind,
    /// The SDP text (empty for a rollback).
    #[serde(default)]
    pub sdp: String,
}

/// Kind of session description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SdpKind {
    /// An offer.
    Offer,
    /// An answer.
    Answer,
    /// A provisional answer.
    Pranswer,
    /// Undo a pending offer (perfect negotiation).
    Rollback,
}

/// `RTCIceCandidateInit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    /// The `candidate:` attribute line; empty for end-of-candidates of a generation.
    pub candidate: String,
    /// Media stream identification tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// Index of the media section.
    #[serde(
        default,
        rename = "sdpMLineIndex",
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_m_line_index: Option<u16>,
    /// ICE username fragment, telling ICE generations apart after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// A participant's role in a consultation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantRole {
    /// The consultation's doctor; admitted by right.
    Doctor,
    /// A patient who came through the invite link; waits until admitted.
    Patient,
    /// The service's recorder: receive-only, present only while the consultation is recorded.
    /// Clients offer it a send-only connection; it never offers and never sends media.
    Recorder,
    /// Another clinician account the doctor added to the consultation; waits until admitted.
    Clinician,
    /// A medical interpreter who came through a named invite; waits until admitted.
    Interpreter,
    /// A family member or carer who came through a named invite; waits until admitted.
    Companion,
}

impl ParticipantRole {
    /// The snake_case name it travels as (`doctor`, `patient`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Doctor => "doctor",
            Self::Patient => "patient",
            Self::Recorder => "recorder",
            Self::Clinician => "clinician",
            Self::Interpreter => "interpreter",
            Self::Companion => "companion",
        }
    }
}

/// Whether the consultation is being recorded, as every participant is told (`recording`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// Live only: nothing is or will be recorded (the doctor's choice or the organisation's
    /// policy).
    LiveOnly,
    /// The doctor chose to record; waiting for the patient's answer (the patient is asked).
    AwaitingConsent,
    /// Recording now.
    Recording,
    /// The patient refused: not recorded.
    Declined,
    /// The patient withdrew consent: recording stopped; what was recorded before stays, flagged.
    Withdrawn,
    /// Recording failed (for example the disk is full): the call goes on, unrecorded from then.
    Failed,
}

/// Another admitted participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Peer {
    /// Their participant id: the `to` of messages for them.
    pub participant_id: Uuid,
    /// Their role.
    pub role: ParticipantRole,
    /// Display name.
    pub name: String,
    /// Your role in perfect negotiation with this peer: a polite peer rolls back its own offer
    /// on glare. In every pair exactly one side is polite (the doctor never is; then clinicians,
    /// interpreters, companions and patients, in that order, with the participant id breaking
    /// ties). Absent from services before group consultations: then `Joined::polite`.
    #[serde(default)]
    pub polite: bool,
}

/// Why a participant is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// They hung up.
    Left,
    /// Their connection dropped and did not come back within the grace period.
    ConnectionLost,
    /// The doctor or the service removed them (declined, invite revoked).
    Removed,
}

/// What a consultation is, as its participants see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConsultationSummary {
    /// Consultation id.
    pub id: Uuid,
    /// "Dr Ada Lovelace".
    pub doctor_name: String,
    /// Live-only or recorded; the web demo shows it as a badge.
    pub mode: ConsultationMode,
    /// End-to-end encryption (SFrame) is on: clients agree keys over their data channel,
    /// protect every frame, and send no media unprotected.
    #[serde(default)]
    pub e2ee: bool,
    /// The doctor lets everyone, not only clinicians, share a screen (see `screen_sharing`).
    #[serde(default)]
    pub guests_share_screen: bool,
}

/// A message from the service to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answer to `join`.
    Joined {
        /// Your participant id: the `from` the others see.
        participant_id: Uuid,
        /// Your role.
        role: ParticipantRole,
        /// The consultation.
        consultation: ConsultationSummary,
        /// Whether you are admitted (a doctor always is; a patient waits until `admitted`).
        admitted: bool,
        /// True when this connection took back a place held during the reconnect grace period.
        resumed: bool,
        /// Your role in perfect negotiation: a polite peer rolls back its own offer on glare.
        polite: bool,
        /// Send `ping` at least this often.
        heartbeat_interval_ms: u64,
        /// Other admitted participants already here.
        peers: Vec<Peer>,
    },
    /// Doctor: who is in the waiting room now (sent on every change).
    WaitingRoom {
        /// Waiting patients, longest-waiting first.
        entries: Vec<WaitingPatient>,
    },
    /// Patient: you were admitted; start negotiating with these peers.
    Admitted {
        /// The admitted participants.
        peers: Vec<Peer>,
    },
    /// Patient: the doctor declined; the connection closes after this.
    Declined {},
    /// Another admitted participant arrived (or came back after the grace period).
    PeerJoined {
        /// Who.
        peer: Peer,
    },
    /// An admitted participant's connection dropped, or came back within the grace period (also
    /// when a new connection replaced one the service had not yet seen close). Online again: what
    /// was sent to them meanwhile may be lost, so resend an unanswered offer.
    PeerPresence {
        /// Who.
        participant_id: Uuid,
        /// Whether they are connected now.
        online: bool,
    },
    /// The doctor let everyone else share a screen, or took it back (sent to everyone in the
    /// consultation; `joined` carries the current choice in `consultation`).
    ScreenSharing {
        /// True: everyone may share a screen; false: only clinicians.
        guests_allowed: bool,
    },
    /// An admitted participant is gone.
    PeerLeft {
        /// Who.
        participant_id: Uuid,
        /// Why.
        reason: LeaveReason,
    },
    /// An SDP offer or answer from another participant.
    Description {
        /// Sender participant id.
        from: Uuid,
        /// The description.
        description: SessionDescription,
    },
    /// A trickled ICE candidate from another participant.
    Candidate {
        /// Sender participant id.
        from: Uuid,
        /// The candidate, or `null` for end-of-candidates.
        candidate: Option<IceCandidate>,
    },
    /// Answer to `ping`.
    Pong {
        /// Service time, for clock-skew diagnostics.
        #[serde(with = "time::serde::rfc3339")]
        server_time: OffsetDateTime,
    },
    /// Whether the consultation is recorded: sent after `joined` (to admitted participants and
    /// waiting patients) and on every change.
    Recording {
        /// The state.
        state: RecordingState,
        /// Why, as the policy's reasons (`consent_withdrawn`, `all_patients_consented`, ...).
        reasons: Vec<String>,
        /// Days the recording is kept before it is shredded (when recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retention_days: Option<u32>,
        /// End-to-end encrypted: the recorder stores ciphertext only the doctor's key opens.
        #[serde(default)]
        zero_knowledge: bool,
        /// What went wrong, for people (with `failed`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        problem: Option<String>,
        /// The recording being made (with `recording`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recording_id: Option<uuid::Uuid>,
        /// Zero-knowledge: the clinician's recording public key (X25519, base64) that every
        /// client wraps its SFrame keys to (`recording_key` messages).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recording_key: Option<String>,
    },
    /// Recorder only: a client's wrapped SFrame key (see [`ClientMessage::RecordingKey`]).
    RecordingKey {
        /// Who sent it.
        from: uuid::Uuid,
        /// The recording.
        recording_id: uuid::Uuid,
        /// The SFrame KID.
        kid: u64,
        /// The SFrame cipher suite.
        suite: u16,
        /// Base64 of `enc` ‖ ciphertext.
        wrapped: String,
    },
    /// The consultation ended; the connection closes after this.
    ConsultationEnded {},
    /// A newer connection took over this participant's place; this one closes.
    Replaced {},
    /// A message was refused. Unless `fatal`, the connection stays open.
    Error {
        /// Stable code, for example `malformed`, `not_admitted`, `outside_consultation`.
        code: SignalErrorCode,
        /// A sentence for people.
        message: String,
        /// Whether the service closes the connection after this.
        fatal: bool,
    },
}

/// Why the service refused a message. Also the `reason` label of the rejected-messages metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignalErrorCode {
    /// Not JSON, not an object, or fields of the wrong shape.
    Malformed,
    /// A `type` this version does not know.
    UnknownType,
    /// Larger than the size limit.
    TooLarge,
    /// Missing or unsupported `v`.
    UnsupportedVersion,
    /// A message other than `join` before joining.
    NotJoined,
    /// A second `join` on one connection.
    AlreadyJoined,
    /// Credentials missing, wrong, expired or revoked.
    Unauthorized,
    /// Authenticated, but not allowed to do that (e.g. a patient admitting).
    Forbidden,
    /// Sent before being admitted.
    NotAdmitted,
    /// Addressed to someone who is not an admitted participant of the sender's consultation.
    OutsideConsultation,
    /// The consultation has ended.
    ConsultationEnded,
    /// The doctor is already in a call in another consultation.
    DoctorBusy,
    /// The call has as many participants as the organisation allows.
    ConsultationFull,
    /// Too many messages too fast.
    RateLimited,
    /// No heartbeat within the timeout.
    HeartbeatTimeout,
    /// The service could not process the message.
    Internal,
}

impl SignalErrorCode {
    /// The snake_case name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownType => "unknown_type",
            Self::TooLarge => "too_large",
            Self::UnsupportedVersion => "unsupported_version",
            Self::NotJoined => "not_joined",
            Self::AlreadyJoined => "already_joined",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotAdmitted => "not_admitted",
            Self::OutsideConsultation => "outside_consultation",
            Self::ConsultationEnded => "consultation_ended",
            Self::DoctorBusy => "doctor_busy",
            Self::ConsultationFull => "consultation_full",
            Self::RateLimited => "rate_limited",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::Internal => "internal",
        }
    }
}

/// Every `type` a [`ClientMessage`] can have.
pub const CLIENT_MESSAGE_TYPES: &[&str] = &[
    "join",
    "admit",
    "decline",
    "description",
    "candidate",
    "ping",
    "leave",
    "consent",
    "recording_key",
    "screen_sharing",
];

impl ClientMessage {
    /// The `type` of this message, as on the wire (and as the metrics label).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Join { .. } => "join",
            Self::Admit { .. } => "admit",
            Self::Decline { .. } => "decline",
            Self::Description { .. } => "description",
            Self::Candidate { .. } => "candidate",
            Self::Ping {} => "ping",
            Self::Leave {} => "leave",
            Self::Consent { .. } => "consent",
            Self::RecordingKey { .. } => "recording_key",
            Self::ScreenSharing { .. } => "screen_sharing",
        }
    }
}

/// Why a client message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Longer than the limit.
    #[error("message of {size} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// Size of the message.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// `v` missing or not the version spoken here.
    #[error("protocol version {found} is not supported (this service speaks v{PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// What the message said, or "none".
        found: String,
    },
    /// `type` is not one of [`CLIENT_MESSAGE_TYPES`].
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// Not a JSON object of the right shape.
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl DecodeError {
    /// The error code to answer with.
    pub fn code(&self) -> SignalErrorCode {
        match self {
            Self::TooLarge { .. } => SignalErrorCode::TooLarge,
            Self::UnsupportedVersion { .. } => SignalErrorCode::UnsupportedVersion,
            Self::UnknownType(_) => SignalErrorCode::UnknownType,
            Self::Malformed(_) => SignalErrorCode::Malformed,
        }
    }
}

/// Decode one client text frame, refusing anything over `max_bytes`, of another version, or of an
/// unknown type, with an error that says which.
///
/// ```
/// use consult_proto::signal::{decode_client_message, DecodeError};
///
/// let err = decode_client_message(r#"{"v":1,"type":"teleport"}"#, 1024).unwrap_err();
/// assert_eq!(err, DecodeError::UnknownType("teleport".into()));
/// ```
pub fn decode_client_message(text: &str, max_bytes: usize) -> Result<ClientMessage, DecodeError> {
    if text.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            size: text.len(),
            limit: max_bytes,
        });
    }
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| DecodeError::Malformed("expected a JSON object".into()))?;
    match object.remove("v") {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(PROTOCOL_VERSION) => {}
        Some(other) => {
            return Err(DecodeError::UnsupportedVersion {
                found: other.to_string(),
            })
        }
        None => {
            return Err(DecodeError::UnsupportedVersion {
                found: "none".into(),
            })
        }
    }
    match object.get("type") {
        Some(serde_json::Value::String(t)) if CLIENT_MESSAGE_TYPES.contains(&t.as_str()) => {}
        Some(serde_json::Value::String(t)) => return Err(DecodeError::UnknownType(t.clone())),
        _ => return Err(DecodeError::Malformed("missing string field `type`".into())),
    }
    serde_json::from_value(value).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Encode a server message as one text frame, with `v` set.
pub fn encode_server_message(message: &ServerMessage) -> String {
    encode_with_version(message)
}

/// Encode a client message as one text frame, with `v` set (for native clients and tests).
pub fn encode_client_message(message: &ClientMessage) -> String {
    encode_with_version(message)
}

/// Decode a server text frame (for native clients and tests).
pub fn decode_server_message(text: &str) -> Result<ServerMessage, DecodeError> {
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if let Some(object) = value.as_object_mut() {
        match object.remove("v") {
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(PROTOCOL_VERSION) => {}
            other => {
                return Err(DecodeError::UnsupportedVersion {
                    found: other.map_or_else(|| "none".into(), |v| v.to_string()),
                })
            }
        }
    }
    serde_json::from_value(value).map_err(|e| DecodeError::Malformed(e.to_string()))
}

fn encode_with_version<T: Serialize>(message: &T) -> String {
    // Both enums serialize to objects (internally tagged), so adding `v` cannot fail.
    let mut value = serde_json::to_value(message).unwrap_or(serde_json::Value::Null);
    if let Some(object) = value.as_object_mut() {
        object.insert("v".into(), PROTOCOL_VERSION.into());
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_client_message() -> Vec<ClientMessage> {
        let id = Uuid::new_v4();
        vec![
            ClientMessage::Join {
                token: Some("t".into()),
                consultation_id: Some(id),
            },
            ClientMessage::Admit { participant_id: id },
            ClientMessage::Decline { participant_id: id },
            ClientMessage::Description {
                to: id,
                description: SessionDescription {
                    kind: SdpKind::Offer,
                    sdp: "v=0\r\n".into(),
                },
            },
            ClientMessage::Candidate {
                to: id,
                candidate: Some(IceCandidate {
                    candidate: "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host".into(),
                    sdp_mid: Some("0".into()),
                    sdp_m_line_index: Some(0),
                    username_fragment: Some("abcd".into()),
                }),
            },
            ClientMessage::Candidate {
                to: id,
                candidate: None,
            },
            ClientMessage::Ping {},
            ClientMessage::Leave {},
        ]
    }

    #[test]
    fn every_client_message_round_trips_and_its_type_is_known() {
        for msg in every_client_message() {
            let text = encode_client_message(&msg);
            assert!(CLIENT_MESSAGE_TYPES.contains(&msg.type_name()));
            assert_eq!(decode_client_message(&text, 4096), Ok(msg));
        }
    }

    #[test]
    fn candidate_uses_browser_field_names() {
        let text = r#"{"v":1,"type":"candidate","to":"6a1f0e38-4a53-4d0e-8a4e-2f1f1d1b1c1a",
            "candidate":{"candidate":"candidate:1","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"u"}}"#;
        let ClientMessage::Candidate {
            candidate: Some(c), ..
        } = decode_client_message(text, 4096).unwrap()
        else {
            panic!("not a candidate")
        };
        assert_eq!(c.sdp_m_line_index, Some(0));
        assert_eq!(c.username_fragment.as_deref(), Some("u"));
    }

    #[test]
    fn oversized_message_is_refused_before_parsing() {
        let text = format!(r#"{{"v":1,"type":"ping","pad":"{}"}}"#, "x".repeat(100));
        assert!(matches!(
            decode_client_message(&text, 64),
            Err(DecodeError::TooLarge { limit: 64, .. })
        ));
    }

    #[test]
    fn bad_messages_get_distinct_errors() {
        let cases = [
            ("not json", SignalErrorCode::Malformed),
            ("[1,2]", SignalErrorCode::Malformed),
            (r#"{"type":"ping"}"#, SignalErrorCode::UnsupportedVersion),
            (
                r#"{"v":2,"type":"ping"}"#,
                SignalErrorCode::UnsupportedVersion,
            ),
            (
                r#"{"v":"1","type":"ping"}"#,
                SignalErrorCode::UnsupportedVersion,
            ),
            (r#"{"v":1}"#, SignalErrorCode::Malformed),
            (r#"{"v":1,"type":"warp"}"#, SignalErrorCode::UnknownType),
            (r#"{"v":1,"type":"admit"}"#, SignalErrorCode::Malformed),
            (
                r#"{"v":1,"type":"admit","participant_id":"nope"}"#,
                SignalErrorCode::Malformed,
            ),
            (
                r#"{"v":1,"type":"ping","extra":1}"#,
                SignalErrorCode::Malformed,
            ),
        ];
        for (text, code) in cases {
            let err = decode_client_message(text, 4096).unwrap_err();
            assert_eq!(err.code(), code, "{text}: {err}");
        }
    }

    #[test]
    fn server_messages_carry_the_version() {
        let text = encode_server_message(&ServerMessage::Declined {});
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["v"], 1);
        assert_eq!(value["type"], "declined");
        assert_eq!(
            decode_server_message(&text).unwrap(),
            ServerMessage::Declined {}
        );
    }
}
