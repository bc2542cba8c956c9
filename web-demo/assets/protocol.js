// @ts-check
/**
 * Types of the Consult wire protocol, mirroring `crates/proto/src/api.rs` (REST bodies) and
 * `crates/proto/src/signal.rs` (signaling WebSocket messages). Times are RFC 3339 strings and
 * identifiers are UUID strings. `web-demo/protocol.test.mjs` checks every type here against the
 * schemas the service publishes (`/api/v1/openapi.json`), field by field and message by message.
 *
 * Import a type elsewhere with `@typedef {import('./protocol.js').Session} Session`.
 */

/** The protocol version every signaling message carries as `v`. */
export const PROTOCOL_VERSION = 1;

// ---------------------------------------------------------------------------------------------
// REST (api.rs)
// ---------------------------------------------------------------------------------------------

/**
 * The body of every failed request.
 * @typedef {{ error: ErrorDetail }} ErrorBody
 */

/**
 * @typedef {object} ErrorDetail
 * @property {string} code Stable snake_case code (`invalid_credentials`, `invite_in_use`, ...).
 * @property {string} message A sentence for people.
 */

/** @typedef {"doctor" | "admin"} Role */

/**
 * @typedef {object} User
 * @property {string} id
 * @property {string} email
 * @property {string} display_name "Dr Ada Lovelace"
 * @property {Role} role
 */

/**
 * `POST /api/v1/auth/enrol`.
 * @typedef {object} EnrolRequest
 * @property {string} token
 * @property {string} password At least 12 characters.
 */

/** @typedef {{ email: string }} EnrolResponse */

/**
 * `POST /api/v1/auth/login`.
 * @typedef {object} LoginRequest
 * @property {string} email
 * @property {string} password
 * @property {string} [totp]
 * @property {string} [recovery_code]
 */

/**
 * @typedef {{ status: "signed_in", session: Session }
 *   | { status: "mfa_enrolment_required", enrolment: MfaEnrolment }} LoginResponse
 */

/**
 * @typedef {object} Session
 * @property {User} user
 * @property {string} [token] Bearer token; only in the sign-in response.
 * @property {string} csrf_token Send as `X-CSRF-Token` on state-changing requests.
 * @property {string} idle_expires_at
 * @property {string} absolute_expires_at
 * @property {boolean} passkey_setup_required The organisation requires a passkey and this
 *   session was opened without one: it may only register one.
 */

/**
 * `POST /api/v1/auth/password`: the account's other sessions end.
 * @typedef {object} ChangePasswordRequest
 * @property {string} current_password
 * @property {string} new_password At least 12 characters.
 */

/**
 * `POST /api/v1/auth/passkey/start`: both for a passkey as the second factor, neither for
 * passwordless sign-in.
 * @typedef {object} PasskeySignInStart
 * @property {string} [email]
 * @property {string} [password]
 */

/**
 * `POST /api/v1/account/passkeys/registration`.
 * @typedef {object} PasskeyRegistrationStart
 * @property {string} current_password
 */

/**
 * A WebAuthn ceremony: the options for `navigator.credentials.create()` / `.get()` (WebAuthn
 * JSON, binary fields base64url) and the sealed state to send back.
 * @typedef {object} PasskeyChallenge
 * @property {string} ceremony
 * @property {any} options
 */

/**
 * `POST /api/v1/auth/passkey/finish`.
 * @typedef {object} PasskeySignInFinish
 * @property {string} ceremony
 * @property {any} credential
 */

/**
 * `POST /api/v1/account/passkeys`.
 * @typedef {object} PasskeyRegistrationFinish
 * @property {string} ceremony
 * @property {string} name
 * @property {any} credential
 */

/**
 * `PATCH /api/v1/account/passkeys/{id}`.
 * @typedef {object} RenamePasskey
 * @property {string} name
 */

/**
 * `DELETE /api/v1/account/passkeys/{id}`: the password again.
 * @typedef {object} RemovePasskey
 * @property {string} current_password
 */

/**
 * @typedef {object} PasskeySummary
 * @property {string} id
 * @property {string} name
 * @property {string} created_at
 * @property {string | null} [last_used_at]
 */

/**
 * An account as an administrator sees it (`GET /api/v1/admin/accounts`).
 * @typedef {object} AccountSummary
 * @property {User} user
 * @property {string | null} [disabled_at]
 */

/**
 * A security alert raised by a detection rule (`GET /api/v1/admin/alerts`).
 * @typedef {object} Alert
 * @property {string} id
 * @property {string} rule `credential_stuffing`, `password_spraying`, `second_factor_guessing`,
 *   `invite_guessing`, `cross_consultation`, `refused_exports` or `export_burst`.
 * @property {string} severity `warning`, `high` or `critical`.
 * @property {string} subject `address:IP`, `user:ID`, `participant:ID` or `service`.
 * @property {string} summary
 * @property {Record<string, unknown>} detail
 * @property {string} raised_at
 * @property {string} last_seen_at
 * @property {number} firings
 * @property {string | null} [acknowledged_at]
 * @property {string | null} [acknowledged_by]
 */

/**
 * @typedef {object} AlertList
 * @property {Alert[]} alerts
 */

/**
 * @typedef {object} MfaEnrolment
 * @property {string} mfa_token
 * @property {string} totp_secret Base32.
 * @property {string} otpauth_uri
 * @property {string} qr_svg An SVG document.
 */

/** @typedef {{ mfa_token: string, totp: string }} MfaEnrolRequest */

/** @typedef {{ session: Session, recovery_codes: string[] }} MfaEnrolResponse */

/** @typedef {"live_only" | "recorded"} ConsultationMode */

/** @typedef {"open" | "ended"} ConsultationStatus */

/**
 * `POST /api/v1/consultations`.
 * @typedef {object} CreateConsultationRequest
 * @property {string | null} [title]
 * @property {string | null} [scheduled_at]
 * @property {ConsultationMode | null} [mode]
 * @property {boolean} [e2ee] End-to-end encryption (the organisation may require it: then the
 *   service sets it whatever is asked).
 */

/**
 * @typedef {object} Consultation
 * @property {string} id
 * @property {string | null} title
 * @property {string | null} [scheduled_at]
 * @property {ConsultationMode} mode
 * @property {ConsultationStatus} status
 * @property {string} created_at
 * @property {string | null} [ended_at]
 * @property {InviteStatus | null} invite
 * @property {string} [invite_url] Only in the response that issues it.
 * @property {boolean} [e2ee] End-to-end encrypted (absent from services before it existed).
 * @property {WaitingPatient[]} waiting
 * @property {NamedInvite[]} [invites] The named invites still live, one per extra person.
 * @property {Colleague[]} [clinicians] Colleagues the doctor added.
 * @property {number} [max_participants] How many may take part at once, the doctor included.
 * @property {number} [places_taken] Places promised now, the doctor included (live or held
 *   invites, colleagues): another invite needs this below `max_participants`.
 */

/**
 * Who an invite is for: the patient link (no name: the patient enters theirs) or a named invite.
 * @typedef {"patient" | "interpreter" | "companion"} InviteKind
 */

/**
 * `POST /api/v1/consultations/{id}/invites`.
 * @typedef {{ kind: InviteKind, name: string }} IssueInviteRequest
 */

/**
 * @typedef {object} NamedInvite
 * @property {string} id
 * @property {InviteKind} kind
 * @property {string} name The name the doctor chose; the person who opens it cannot change it.
 * @property {string} issued_at
 * @property {string} expires_at
 * @property {boolean} in_use
 */

/** @typedef {{ invite: NamedInvite, invite_url: string }} IssuedInvite */

/**
 * `POST /api/v1/consultations/{id}/clinicians`.
 * @typedef {{ email: string }} AddClinicianRequest
 */

/**
 * @typedef {object} Colleague
 * @property {string} user_id
 * @property {string} name
 * @property {string} participant_id
 * @property {string} added_at
 */

/**
 * `GET /api/v1/consultations/shared`: consultations another clinician added you to.
 * @typedef {object} SharedConsultation
 * @property {string} id
 * @property {string | null} title
 * @property {string} doctor_name
 * @property {ConsultationMode} mode
 * @property {boolean} e2ee
 * @property {ConsultationStatus} status
 * @property {string} added_at
 */

/**
 * @typedef {object} InviteStatus
 * @property {string} issued_at
 * @property {string} expires_at
 * @property {boolean} in_use
 * @property {boolean} revoked
 */

/** @typedef {{ invite_url: string, expires_at: string }} Invite */

/**
 * @typedef {object} WaitingPatient
 * @property {string} participant_id
 * @property {string} consultation_id
 * @property {string} name
 * @property {string} waiting_since
 * @property {boolean} connected
 * @property {ParticipantRole} [role] Patient unless an invite or the doctor said otherwise.
 */

/**
 * `GET /api/v1/account/recording-key` (and the body of `PUT`, where `public_key` is a string): the
 * doctor's X25519 recording public key, standard base64 of 32 bytes, that recordings of their
 * end-to-end encrypted consultations are encrypted to; null when none is registered.
 * @typedef {{ public_key: string | null }} RecordingKeyBody
 */

/**
 * Where a stored recording is in its life (`signaling/src/recording/rows.rs`): `recording` (being
 * written), `complete`, `withdrawn` (stopped when the patient withdrew consent; what came before is
 * kept), `failed` (storage failed; kept up to the last sealed chunk), `interrupted` (the service
 * stopped without closing it; kept up to the last sealed chunk), `shredded` (its key is destroyed:
 * nothing can be read any more).
 * @typedef {"recording" | "complete" | "withdrawn" | "failed" | "interrupted" | "shredded"} RecordingStatus
 */

/**
 * A stored recording, as `GET /api/v1/consultations/{id}/recordings` lists it (metadata only).
 * @typedef {object} Recording
 * @property {string} id
 * @property {string} consultation_id
 * @property {RecordingStatus} state
 * @property {boolean} zero_knowledge SFrame ciphertext only the clinician's recording key opens:
 *   exported with the CLI and the key file, never downloaded from the service.
 * @property {string} started_at
 * @property {string | null} ended_at
 * @property {string} retain_until When the retention job shreds it.
 * @property {number} chunks Sealed chunks (one a second).
 * @property {number} bytes Bytes of sealed media.
 * @property {string | null} note Why it stopped, for people ("the patient withdrew consent; …").
 * @property {string | null} continues The recording this one continues: it was interrupted (the
 *   node recording it stopped) and this segment took over. Segments download and are shredded as
 *   one, from the first.
 */

/** @typedef {{ recordings: Recording[] }} RecordingList */

/**
 * What a medical certificate attests: `unfit_for_work` (a sick note), `attendance`,
 * `fit_to_travel`, or `free_text` (the clinician's own words, in `note`).
 * @typedef {"unfit_for_work" | "attendance" | "fit_to_travel" | "free_text"} CertificateKindName
 */

/**
 * `POST /api/v1/consultations/{id}/certificates`: what the clinician fills in (their name and
 * licence number come from their account). Dates are `YYYY-MM-DD`, the period inclusive.
 * @typedef {object} IssueCertificateRequest
 * @property {CertificateKindName} kind
 * @property {string} period_start
 * @property {string} period_end
 * @property {string} patient_name
 * @property {string | null} [restrictions]
 * @property {string | null} [diagnosis] Confidential: disclosed only if the patient chooses.
 * @property {string | null} [note]
 * @property {string | null} [invite_id] The patient's invite; default the patient link.
 */

/** @typedef {"valid" | "revoked"} CertificateState */

/**
 * One claim of a certificate: `period` (`{ start, end }`), `patient_name`, `clinician_name`,
 * `clinician_licence`, `restrictions`, `diagnosis` or `note` (text).
 * @typedef {{ name: string, value: any }} CertificateClaim
 */

/**
 * A certificate as its clinicians see it.
 * @typedef {object} CertificateSummary
 * @property {string} id
 * @property {string} consultation_id
 * @property {CertificateKindName} kind
 * @property {string} issued_at
 * @property {string} valid_until
 * @property {string} holder_until Until when the patient's link fetches it.
 * @property {string} issued_by
 * @property {CertificateState} state
 * @property {string | null} [revoked_at]
 * @property {string | null} [revoke_reason]
 * @property {CertificateClaim[] | null} [claims] Null once retention destroyed it.
 */

/** @typedef {{ certificates: CertificateSummary[] }} CertificateList */

/** @typedef {{ reason: string }} RevokeCertificateRequest */

/** @typedef {{ token: string }} HeldCertificatesRequest */

/**
 * A certificate as its holder (the patient's invite link) gets it.
 * @typedef {object} HeldCertificate
 * @property {string} id
 * @property {CertificateKindName} kind
 * @property {string} issued_at
 * @property {string} valid_until
 * @property {CertificateState} state
 * @property {CertificateClaim[]} claims
 * @property {string} sd_jwt The certificate itself (SD-JWT with every disclosure).
 */

/** @typedef {{ certificates: HeldCertificate[] }} HeldCertificates */

/** @typedef {{ token: string, disclose: string[] }} PresentationRequest */

/**
 * @typedef {object} Presentation
 * @property {string} presentation The SD-JWT with only the chosen claims.
 * @property {string} link `ISSUER/verify#PRESENTATION`.
 * @property {string} qr_svg The link as a QR code (SVG).
 * @property {number} qr_version
 */

/** @typedef {{ presentation: string }} VerifyCertificateRequest */

/** @typedef {"valid" | "revoked" | "invalid"} VerificationOutcome */

/**
 * What `POST /api/v1/certificates/verify` found: exactly what the presentation proves.
 * @typedef {object} VerificationResult
 * @property {VerificationOutcome} outcome
 * @property {string | null} [reason] Why it is invalid (or revoked).
 * @property {string | null} [issuer]
 * @property {CertificateKindName | null} [kind]
 * @property {string | null} [issued_at]
 * @property {string | null} [valid_until]
 * @property {CertificateClaim[]} [disclosed]
 */

/** @typedef {{ invite: string }} InspectInviteRequest */

/**
 * @typedef {object} InviteInfo
 * @property {string} consultation_id
 * @property {string} doctor_name
 * @property {ConsultationMode} mode
 * @property {boolean} [e2ee] End-to-end encrypted: the patient's browser must support it.
 * @property {string} expires_at
 * @property {InviteKind} [kind]
 * @property {string} [name] A named invite's name (then the page does not ask for one).
 */

/**
 * `name` is ignored (and may be left out) when the invite carries its own.
 * @typedef {{ invite: string, name?: string }} RedeemInviteRequest
 */

/**
 * @typedef {object} RedeemInviteResponse
 * @property {string} participant_token
 * @property {string} participant_id
 * @property {InviteInfo} invite
 */

/**
 * @typedef {object} IceServer
 * @property {string[]} urls
 * @property {string} [username]
 * @property {string} [credential]
 */

/**
 * Which candidates a client may use, passed as `iceTransportPolicy`: `relay` means TURN relay
 * candidates only (media goes through TURN and neither side learns the other's address).
 * @typedef {"all" | "relay"} IceTransportPolicy
 */

/**
 * `GET /api/v1/ice-servers`.
 * @typedef {object} IceServers
 * @property {IceServer[]} ice_servers Servers to pass as `iceServers`.
 * @property {IceTransportPolicy} ice_transport_policy Pass as `iceTransportPolicy` (a service
 *   older than this field leaves it out: then `all`).
 * @property {number} ttl_secs How long the TURN credentials stay valid, in seconds.
 */

// ---------------------------------------------------------------------------------------------
// Signaling (signal.rs)
// ---------------------------------------------------------------------------------------------

/**
 * `recorder`: the service's recorder, present only while the consultation is recorded. It is
 * receive-only: clients offer it a send-only connection; it never offers and never sends media.
 * `clinician` (a colleague the doctor added), `interpreter`, `companion` (through named invites):
 * they wait to be admitted, as a patient does.
 * @typedef {"doctor" | "patient" | "recorder" | "clinician" | "interpreter" | "companion"} ParticipantRole
 */

/**
 * Whether the consultation is recorded: `live_only` (nothing is or will be recorded),
 * `awaiting_consent` (the doctor chose to record; the patient is asked), `recording`, `declined`
 * (the patient said no), `withdrawn` (the patient took consent back: recording stopped, what was
 * recorded before stays, flagged), `failed` (the call goes on, unrecorded from then).
 * @typedef {"live_only" | "awaiting_consent" | "recording" | "declined" | "withdrawn" | "failed"} RecordingState
 */

/** @typedef {"left" | "connection_lost" | "removed"} LeaveReason */

/**
 * @typedef {object} Peer
 * @property {string} participant_id
 * @property {ParticipantRole} role
 * @property {string} name
 * @property {boolean} [polite] Your side of perfect negotiation with this peer (exactly one of a
 *   pair is polite).
 */

/**
 * @typedef {object} ConsultationSummary
 * @property {string} id
 * @property {string} doctor_name
 * @property {ConsultationMode} mode
 * @property {boolean} [e2ee] Media, chat and files are end-to-end encrypted (SFrame): a peer that
 *   cannot do it gets no media. Absent from services before it existed: treated as false.
 * @property {boolean} [guests_share_screen] The doctor lets everyone, not only clinicians, share a
 *   screen (`screen_sharing`). Absent: false.
 */

/**
 * `RTCSessionDescriptionInit` as it travels.
 * @typedef {{ type: "offer" | "answer" | "pranswer" | "rollback", sdp: string }} SessionDescription
 */

/**
 * `RTCIceCandidateInit` as it travels.
 * @typedef {object} IceCandidate
 * @property {string} candidate
 * @property {string | null} [sdpMid]
 * @property {number | null} [sdpMLineIndex]
 * @property {string | null} [usernameFragment]
 */

/**
 * @typedef {"malformed" | "unknown_type" | "too_large" | "unsupported_version" | "not_joined"
 *   | "already_joined" | "unauthorized" | "forbidden" | "not_admitted" | "outside_consultation"
 *   | "consultation_ended" | "doctor_busy" | "consultation_full" | "rate_limited" | "heartbeat_timeout" | "internal"
 * } SignalErrorCode
 */

/**
 * `recording`: sent after `joined` (to admitted participants and waiting patients) and on every
 * change.
 * @typedef {object} RecordingMessage
 * @property {"recording"} type
 * @property {RecordingState} state
 * @property {string[]} reasons The policy's reasons (`consent_withdrawn`, `all_patients_consented`, ...).
 * @property {number} [retention_days] Days the recording is kept before it is shredded (when recorded).
 * @property {boolean} zero_knowledge End-to-end encrypted: the recorder stores ciphertext only the
 *   doctor's key opens.
 * @property {string} [problem] What went wrong, for people (with `failed`).
 * @property {string} [recording_id] The recording being made (with `recording`).
 * @property {string} [recording_key] Zero-knowledge (with `recording`): the clinician's X25519
 *   recording public key, standard base64 of 32 bytes, that every client wraps its SFrame keys to
 *   (`recording_key` messages).
 */

/**
 * A message from a client to the service (without `v`, which the signaling client adds).
 * `consent` (patient only): `true` agrees to be recorded, `false` refuses (before recording) or
 * withdraws (while recording); declining and withdrawing are final for the consultation.
 * `recording_key` (zero-knowledge recording): one SFrame base key of the media this client sends to
 * the recorder, wrapped to the clinician's recording key with HPKE (see `e2ee/recording-key.js`):
 * `wrapped` is base64 of `enc (32) ‖ ciphertext`; sent before the first frame under `kid`.
 * `screen_sharing` (doctor only): let everyone else share a screen, or not.
 * @typedef {{ type: "join", token?: string, consultation_id?: string }
 *   | { type: "admit", participant_id: string }
 *   | { type: "decline", participant_id: string }
 *   | { type: "description", to: string, description: SessionDescription }
 *   | { type: "candidate", to: string, candidate: IceCandidate | null }
 *   | { type: "ping" }
 *   | { type: "leave" }
 *   | { type: "consent", recording: boolean }
 *   | { type: "recording_key", recording_id: string, kid: number, suite: number, wrapped: string }
 *   | { type: "screen_sharing", guests_allowed: boolean }} ClientMessage
 */

/**
 * @typedef {object} JoinedMessage
 * @property {"joined"} type
 * @property {string} participant_id
 * @property {ParticipantRole} role
 * @property {ConsultationSummary} consultation
 * @property {boolean} admitted
 * @property {boolean} resumed
 * @property {boolean} polite
 * @property {number} heartbeat_interval_ms
 * @property {Peer[]} peers
 */

/**
 * A message from the service to a client (`v` removed).
 * @typedef {JoinedMessage
 *   | { type: "waiting_room", entries: WaitingPatient[] }
 *   | { type: "admitted", peers: Peer[] }
 *   | { type: "declined" }
 *   | { type: "peer_joined", peer: Peer }
 *   | { type: "peer_presence", participant_id: string, online: boolean }
 *   | { type: "peer_left", participant_id: string, reason: LeaveReason }
 *   | { type: "description", from: string, description: SessionDescription }
 *   | { type: "candidate", from: string, candidate: IceCandidate | null }
 *   | { type: "pong", server_time: string }
 *   | RecordingMessage
 *   | { type: "recording_key", from: string, recording_id: string, kid: number, suite: number, wrapped: string }
 *   | { type: "screen_sharing", guests_allowed: boolean }
 *   | { type: "consultation_ended" }
 *   | { type: "replaced" }
 *   | { type: "error", code: SignalErrorCode, message: string, fatal: boolean }} ServerMessage
 */
