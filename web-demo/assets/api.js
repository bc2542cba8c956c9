// @ts-check
/**
 * The REST API under `/api/v1`: one fetch wrapper and a typed function per endpoint.
 *
 * State-changing requests carry `X-CSRF-Token` (set from the session with `setCsrfToken`); a failed
 * request throws an `ApiError` whose `code` is the service's stable error code.
 */

/** @typedef {import('./protocol.js').Session} Session */
/** @typedef {import('./protocol.js').LoginRequest} LoginRequest */
/** @typedef {import('./protocol.js').LoginResponse} LoginResponse */
/** @typedef {import('./protocol.js').MfaEnrolResponse} MfaEnrolResponse */
/** @typedef {import('./protocol.js').EnrolResponse} EnrolResponse */
/** @typedef {import('./protocol.js').Consultation} Consultation */
/** @typedef {import('./protocol.js').CreateConsultationRequest} CreateConsultationRequest */
/** @typedef {import('./protocol.js').Invite} Invite */
/** @typedef {import('./protocol.js').WaitingPatient} WaitingPatient */
/** @typedef {import('./protocol.js').InviteInfo} InviteInfo */
/** @typedef {import('./protocol.js').RedeemInviteResponse} RedeemInviteResponse */
/** @typedef {import('./protocol.js').IceServers} IceServers */
/** @typedef {import('./protocol.js').RecordingKeyBody} RecordingKeyBody */
/** @typedef {import('./protocol.js').Recording} Recording */
/** @typedef {import('./protocol.js').RecordingList} RecordingList */

/** A failed API request. */
export class ApiError extends Error {
  /**
   * @param {number} status HTTP status, or 0 when the service could not be reached.
   * @param {string} code The service's error code (`network` when unreachable).
   * @param {string} message A sentence for people.
   * @param {number | null} [retryAfterSecs] From `Retry-After`, when present.
   */
  constructor(status, code, message, retryAfterSecs = null) {
    super(asSentence(message));
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfterSecs = retryAfterSecs;
  }
}

/**
 * The service's messages are lower-case clauses ("enter a name of 1 to 80 characters"): show them
 * as sentences.
 * @param {string} text
 * @returns {string}
 */
export function asSentence(text) {
  const trimmed = text.trim();
  if (!trimmed) return trimmed;
  const first = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
  return /[.!?…]$/.test(first) ? first : `${first}.`;
}

/** @type {string | null} */
let csrfToken = null;

/**
 * Remember the CSRF token of the current session (or forget it with `null`).
 * @param {string | null} token
 */
export function setCsrfToken(token) {
  csrfToken = token;
}

const STATE_CHANGING = new Set(["POST", "PUT", "PATCH", "DELETE"]);

/**
 * Call the API. Resolves with the decoded JSON body (or `undefined` for 204).
 * @template T
 * @param {string} method
 * @param {string} path Starting with `/api/v1/`.
 * @param {{ body?: unknown, bearer?: string, signal?: AbortSignal }} [options]
 * @returns {Promise<T>}
 */
export async function request(method, path, options = {}) {
  /** @type {Record<string, string>} */
  const headers = { Accept: "application/json" };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  if (STATE_CHANGING.has(method) && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  if (options.bearer) headers.Authorization = `Bearer ${options.bearer}`;
  /** @type {Response} */
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      credentials: "same-origin",
      cache: "no-store",
      signal: options.signal,
    });
  } catch (err) {
    if (err instanceof DOMException && err.name === "AbortError") throw err;
    throw new ApiError(0, "network", "The service could not be reached. Check your internet connection and try again.");
  }
  if (response.ok) {
    if (response.status === 204) return /** @type {T} */ (undefined);
    const text = await response.text();
    return /** @type {T} */ (text ? JSON.parse(text) : undefined);
  }
  let code = `http_${response.status}`;
  let message = `The request failed (HTTP ${response.status}).`;
  try {
    const body = await response.json();
    if (body && typeof body === "object" && body.error && typeof body.error.code === "string") {
      code = body.error.code;
      if (typeof body.error.message === "string") message = body.error.message;
    }
  } catch {
    // Not JSON: keep the generic code and message.
  }
  const retryAfter = response.headers.get("Retry-After");
  const retryAfterSecs = retryAfter && /^\d+$/.test(retryAfter) ? Number(retryAfter) : null;
  throw new ApiError(response.status, code, message, retryAfterSecs);
}

// --- Accounts ---------------------------------------------------------------------------------

/**
 * @param {string} token From the enrolment link.
 * @param {string} password
 * @returns {Promise<EnrolResponse>}
 */
export function enrol(token, password) {
  return request("POST", "/api/v1/auth/enrol", { body: { token, password } });
}

/**
 * @param {LoginRequest} body
 * @returns {Promise<LoginResponse>}
 */
export function login(body) {
  return request("POST", "/api/v1/auth/login", { body });
}

/**
 * @param {string} mfaToken
 * @param {string} totp
 * @returns {Promise<MfaEnrolResponse>}
 */
export function enrolMfa(mfaToken, totp) {
  return request("POST", "/api/v1/auth/mfa/enrol", { body: { mfa_token: mfaToken, totp } });
}

/** @returns {Promise<Session>} */
export function getSession() {
  return request("GET", "/api/v1/auth/session");
}

// --- Passkeys ----------------------------------------------------------------------------------

/**
 * @param {import('./protocol.js').PasskeySignInStart} body
 * @returns {Promise<import('./protocol.js').PasskeyChallenge>}
 */
export function startPasskeySignIn(body) {
  return request("POST", "/api/v1/auth/passkey/start", { body });
}

/**
 * @param {import('./protocol.js').PasskeySignInFinish} body
 * @returns {Promise<LoginResponse>}
 */
export function finishPasskeySignIn(body) {
  return request("POST", "/api/v1/auth/passkey/finish", { body });
}

/** @returns {Promise<import('./protocol.js').PasskeySummary[]>} */
export function listPasskeys() {
  return request("GET", "/api/v1/account/passkeys");
}

/**
 * @param {string} currentPassword
 * @returns {Promise<import('./protocol.js').PasskeyChallenge>}
 */
export function startPasskeyRegistration(currentPassword) {
  return request("POST", "/api/v1/account/passkeys/registration", { body: { current_password: currentPassword } });
}

/**
 * @param {import('./protocol.js').PasskeyRegistrationFinish} body
 * @returns {Promise<import('./protocol.js').PasskeySummary>}
 */
export function finishPasskeyRegistration(body) {
  return request("POST", "/api/v1/account/passkeys", { body });
}

/**
 * @param {string} id
 * @param {string} name
 * @returns {Promise<import('./protocol.js').PasskeySummary>}
 */
export function renamePasskey(id, name) {
  return request("PATCH", `/api/v1/account/passkeys/${encodeURIComponent(id)}`, { body: { name } });
}

/**
 * Remove a passkey (the password is asked again: every other session ends).
 * @param {string} id
 * @param {string} currentPassword
 * @returns {Promise<void>}
 */
export function removePasskey(id, currentPassword) {
  return request("DELETE", `/api/v1/account/passkeys/${encodeURIComponent(id)}`, {
    body: { current_password: currentPassword },
  });
}

/**
 * The person did something in the page: the session's idle deadline moves forward.
 * @returns {Promise<Session>}
 */
export function reportActivity() {
  return request("POST", "/api/v1/auth/activity");
}

/** @returns {Promise<void>} */
export function logout() {
  return request("POST", "/api/v1/auth/logout");
}

/**
 * The signed-in doctor's recording public key (base64), or null when none is registered.
 * @returns {Promise<string | null>}
 */
export async function getRecordingKey() {
  /** @type {RecordingKeyBody} */
  const body = await request("GET", "/api/v1/account/recording-key");
  return body && typeof body.public_key === "string" ? body.public_key : null;
}

/**
 * Register (or replace) the signed-in doctor's recording public key: only the public key is sent.
 * @param {string} publicKey Standard base64 of the 32-byte X25519 key.
 * @returns {Promise<void>}
 */
export function setRecordingKey(publicKey) {
  return request("PUT", "/api/v1/account/recording-key", { body: { public_key: publicKey } });
}

// --- Consultations ----------------------------------------------------------------------------

/**
 * @param {CreateConsultationRequest} body
 * @returns {Promise<Consultation>}
 */
export function createConsultation(body) {
  return request("POST", "/api/v1/consultations", { body });
}

/** @returns {Promise<Consultation[]>} */
export function listConsultations() {
  return request("GET", "/api/v1/consultations");
}

/**
 * @param {string} id
 * @returns {Promise<Consultation>}
 */
export function getConsultation(id) {
  return request("GET", `/api/v1/consultations/${encodeURIComponent(id)}`);
}

/**
 * @param {string} id
 * @returns {Promise<Consultation>}
 */
export function endConsultation(id) {
  return request("POST", `/api/v1/consultations/${encodeURIComponent(id)}/end`);
}

/**
 * Issue a new invite link; the previous one stops working.
 * @param {string} id
 * @returns {Promise<Invite>}
 */
export function reissueInvite(id) {
  return request("POST", `/api/v1/consultations/${encodeURIComponent(id)}/invite`);
}

/**
 * @param {string} id
 * @returns {Promise<void>}
 */
export function revokeInvite(id) {
  return request("DELETE", `/api/v1/consultations/${encodeURIComponent(id)}/invite`);
}

/**
 * A named invite for one more person: its link is in the answer only.
 * @param {string} id
 * @param {import('./protocol.js').InviteKind} kind
 * @param {string} name
 * @returns {Promise<import('./protocol.js').IssuedInvite>}
 */
export function issueNamedInvite(id, kind, name) {
  return request("POST", `/api/v1/consultations/${encodeURIComponent(id)}/invites`, { body: { kind, name } });
}

/**
 * @param {string} id
 * @param {string} inviteId
 * @returns {Promise<void>}
 */
export function revokeNamedInvite(id, inviteId) {
  return request("DELETE", `/api/v1/consultations/${encodeURIComponent(id)}/invites/${encodeURIComponent(inviteId)}`);
}

/**
 * @param {string} id
 * @param {string} email
 * @returns {Promise<import('./protocol.js').Colleague>}
 */
export function addClinician(id, email) {
  return request("POST", `/api/v1/consultations/${encodeURIComponent(id)}/clinicians`, { body: { email } });
}

/**
 * @param {string} id
 * @param {string} userId
 * @returns {Promise<void>}
 */
export function removeClinician(id, userId) {
  return request("DELETE", `/api/v1/consultations/${encodeURIComponent(id)}/clinicians/${encodeURIComponent(userId)}`);
}

/**
 * Remove someone from the call for good.
 * @param {string} id
 * @param {string} participantId
 * @returns {Promise<void>}
 */
export function removeParticipant(id, participantId) {
  return request("POST", `/api/v1/consultations/${encodeURIComponent(id)}/participants/${encodeURIComponent(participantId)}/remove`);
}

/** @returns {Promise<import('./protocol.js').SharedConsultation[]>} */
export function sharedConsultations() {
  return request("GET", "/api/v1/consultations/shared");
}

/** @returns {Promise<WaitingPatient[]>} */
export function waitingRoom() {
  return request("GET", "/api/v1/waiting-room");
}

/**
 * @param {string} consultationId
 * @param {string} participantId
 * @returns {Promise<void>}
 */
export function admit(consultationId, participantId) {
  return request(
    "POST",
    `/api/v1/consultations/${encodeURIComponent(consultationId)}/participants/${encodeURIComponent(participantId)}/admit`,
  );
}

/**
 * @param {string} consultationId
 * @param {string} participantId
 * @returns {Promise<void>}
 */
export function decline(consultationId, participantId) {
  return request(
    "POST",
    `/api/v1/consultations/${encodeURIComponent(consultationId)}/participants/${encodeURIComponent(participantId)}/decline`,
  );
}

// --- Recordings -------------------------------------------------------------------------------

/**
 * A consultation's recordings (metadata only), oldest first.
 * @param {string} consultationId
 * @returns {Promise<Recording[]>}
 */
export async function listRecordings(consultationId) {
  /** @type {RecordingList} */
  const body = await request("GET", `/api/v1/consultations/${encodeURIComponent(consultationId)}/recordings`);
  return body.recordings;
}

/**
 * Where the browser downloads a recording as a playable file (a plain link: the session cookie
 * goes with it, and a GET needs no CSRF token). Refused for zero-knowledge recordings.
 * @param {string} recordingId
 * @returns {string}
 */
export function recordingExportUrl(recordingId) {
  return `/api/v1/recordings/${encodeURIComponent(recordingId)}/export`;
}

/**
 * Shred a recording: its key is destroyed, and nothing of it can be read any more.
 * @param {string} recordingId
 * @returns {Promise<void>}
 */
export function shredRecording(recordingId) {
  return request("DELETE", `/api/v1/recordings/${encodeURIComponent(recordingId)}`);
}

// --- Medical certificates --------------------------------------------------------------------

/**
 * Issue a certificate in a consultation (its clinicians only), signed as the organisation.
 * @param {string} consultationId
 * @param {import('./protocol.js').IssueCertificateRequest} body
 * @returns {Promise<import('./protocol.js').CertificateSummary>}
 */
export function issueCertificate(consultationId, body) {
  return request("POST", `/api/v1/consultations/${encodeURIComponent(consultationId)}/certificates`, { body });
}

/**
 * A consultation's certificates, with their claims, oldest first.
 * @param {string} consultationId
 * @returns {Promise<import('./protocol.js').CertificateSummary[]>}
 */
export async function listCertificates(consultationId) {
  /** @type {import('./protocol.js').CertificateList} */
  const body = await request("GET", `/api/v1/consultations/${encodeURIComponent(consultationId)}/certificates`);
  return body.certificates;
}

/**
 * Revoke a certificate, saying why: verifiers see it as revoked from then on.
 * @param {string} certificateId
 * @param {string} reason
 * @returns {Promise<import('./protocol.js').CertificateSummary>}
 */
export function revokeCertificate(certificateId, reason) {
  return request("POST", `/api/v1/certificates/${encodeURIComponent(certificateId)}/revoke`, { body: { reason } });
}

/**
 * The certificates the patient's invite link holds, newest first.
 * @param {string} invite
 * @returns {Promise<import('./protocol.js').HeldCertificate[]>}
 */
export async function heldCertificates(invite) {
  /** @type {import('./protocol.js').HeldCertificates} */
  const body = await request("POST", "/api/v1/certificates/held", { body: { token: invite } });
  return body.certificates;
}

/**
 * A presentation of a held certificate disclosing only `disclose`: its link and QR code.
 * @param {string} invite
 * @param {string} certificateId
 * @param {string[]} disclose
 * @returns {Promise<import('./protocol.js').Presentation>}
 */
export function presentCertificate(invite, certificateId, disclose) {
  return request("POST", `/api/v1/certificates/${encodeURIComponent(certificateId)}/presentation`, {
    body: { token: invite, disclose },
  });
}

/**
 * The same presentation as a printable PDF.
 * @param {string} invite
 * @param {string} certificateId
 * @param {string[]} disclose
 * @returns {Promise<Blob>}
 */
export async function certificatePdf(invite, certificateId, disclose) {
  let response;
  try {
    response = await fetch(`/api/v1/certificates/${encodeURIComponent(certificateId)}/presentation.pdf`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/pdf" },
      body: JSON.stringify({ token: invite, disclose }),
      credentials: "omit",
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "network", "The service could not be reached. Check your internet connection and try again.");
  }
  if (!response.ok) {
    let code = `http_${response.status}`;
    let message = `The PDF could not be made (HTTP ${response.status}).`;
    try {
      const body = await response.json();
      if (body?.error?.code) ({ code, message } = body.error);
    } catch {
      // Not JSON.
    }
    throw new ApiError(response.status, code, message);
  }
  return response.blob();
}

/**
 * Verify a presentation (or a verify link): what it proves, or why it does not.
 * @param {string} presentation
 * @returns {Promise<import('./protocol.js').VerificationResult>}
 */
export function verifyCertificate(presentation) {
  return request("POST", "/api/v1/certificates/verify", { body: { presentation } });
}

// --- Administration ---------------------------------------------------------------------------

/**
 * Security alerts (administrators only): open ones, or all with the acknowledged.
 * @param {"open" | "all"} state
 * @returns {Promise<import('./protocol.js').Alert[]>}
 */
export async function listAlerts(state) {
  /** @type {import('./protocol.js').AlertList} */
  const body = await request("GET", `/api/v1/admin/alerts?state=${state}`);
  return body.alerts;
}

/**
 * Acknowledge an alert: it closes; the rule raises a new one if the attack goes on.
 * @param {string} id
 * @returns {Promise<import('./protocol.js').Alert>}
 */
export function acknowledgeAlert(id) {
  return request("POST", `/api/v1/admin/alerts/${encodeURIComponent(id)}/acknowledge`);
}

// --- Patients ---------------------------------------------------------------------------------

/**
 * @param {string} invite
 * @returns {Promise<InviteInfo>}
 */
export function inspectInvite(invite) {
  return request("POST", "/api/v1/invites/inspect", { body: { invite } });
}

/**
 * @param {string} invite
 * @param {string} name
 * @returns {Promise<RedeemInviteResponse>}
 */
export function redeemInvite(invite, name) {
  return request("POST", "/api/v1/invites/redeem", { body: { invite, name } });
}

// --- ICE servers ------------------------------------------------------------------------------

/**
 * STUN/TURN servers: with the session cookie (doctor) or a participant token (patient).
 * @param {string} [participantToken]
 * @returns {Promise<IceServers>}
 */
export function iceServers(participantToken) {
  return request("GET", "/api/v1/ice-servers", participantToken ? { bearer: participantToken } : {});
}

/**
 * What a new `RTCPeerConnection` is configured with, from `GET /api/v1/ice-servers`.
 * @typedef {object} IceConfig
 * @property {RTCIceServer[]} iceServers
 * @property {RTCIceTransportPolicy} iceTransportPolicy `relay` when the service allows relay
 *   (TURN) candidates only, so that participants never learn each other's IP address.
 */

/**
 * Cache of the ICE configuration, fetched again when half the TURN credentials' lifetime has
 * passed (at least 5 s apart), and kept fresh while a call runs ({@link IceServerCache#keepFresh}). A failure keeps the last answer (its policy included: a service that asked for relay
 * only keeps getting it). Without any answer yet, a failure gives no servers and policy `all`
 * (host candidates still work on one network) rather than blocking the call; the next connection
 * asks again.
 */
export class IceServerCache {
  /** @param {string} [participantToken] */
  constructor(participantToken) {
    this.participantToken = participantToken;
    /** @type {IceConfig | null} */
    this.config = null;
    this.fetchedAt = 0;
    this.ttlMs = 0;
    /** @type {Promise<IceConfig> | null} */
    this.pending = null;
    /** Whether an answer (or the fallback) was handed out: a later answer renews it. */
    this.handedOut = false;
    /** @type {Set<(config: IceConfig) => void>} Told of every answer that renews one handed out. */
    this.renewals = new Set();
  }

  /** @returns {Promise<IceConfig>} */
  get() {
    if (this.config && Date.now() - this.fetchedAt < this.ttlMs / 2) return Promise.resolve(this.config);
    if (!this.pending) {
      this.pending = iceServers(this.participantToken)
        .then((answer) => {
          const servers = answer.ice_servers.map((s) => {
            /** @type {RTCIceServer} */
            const server = { urls: s.urls };
            if (s.username !== undefined) server.username = s.username;
            if (s.credential !== undefined) server.credential = s.credential;
            return server;
          });
          /** @type {IceConfig} */
          const config = {
            iceServers: servers,
            // Anything but an explicit "all" (or a service too old to send the field) is relay:
            // when in doubt, do not hand out addresses.
            iceTransportPolicy: answer.ice_transport_policy === undefined || answer.ice_transport_policy === "all" ? "all" : "relay",
          };
          this.config = config;
          this.fetchedAt = Date.now();
          this.ttlMs = Math.max(answer.ttl_secs, 10) * 1000;
          // Connections made with an earlier answer (or the fallback) take this one.
          if (this.handedOut) for (const renewed of this.renewals) renewed(config);
          this.handedOut = true;
          return config;
        })
        .catch((err) => {
          console.warn("Could not fetch ICE servers", err);
          // Fail closed: without the service's answer we cannot know whether it forbids sharing
          // addresses, so nothing but a relay is used (the call shows why it cannot connect, and
          // the next attempt asks again).
          this.handedOut = true;
          return this.config ?? { iceServers: [], iceTransportPolicy: /** @type {RTCIceTransportPolicy} */ ("relay") };
        })
        .finally(() => {
          this.pending = null;
        });
    }
    return this.pending;
  }

  /**
   * Keep the configuration fresh while a call runs: fetch it again at half the credentials'
   * lifetime (every 5 s while that fails) and hand each new answer to `onRenewed`. Running
   * connections take it with `setConfiguration`, so that an ICE restart after the first
   * credentials expired (a network change, a relay that restarted) allocates with valid ones.
   * @param {(config: IceConfig) => void} onRenewed
   * @returns {() => void} Stops it.
   */
  keepFresh(onRenewed) {
    let stopped = false;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let timer;
    // Every answer that renews one handed out reaches the running connections, whoever fetched
    // it (a new connection's `get()` may refresh the cache first), and so does the first answer
    // after a failed fetch (connections made on the fallback get servers).
    this.renewals.add(onRenewed);
    const schedule = () => {
      if (stopped) return;
      const due = this.config ? this.fetchedAt + this.ttlMs / 2 - Date.now() : 0;
      timer = setTimeout(async () => {
        await this.get();
        schedule();
      }, Math.max(due, 5_000));
    };
    schedule();
    return () => {
      stopped = true;
      clearTimeout(timer);
      this.renewals.delete(onRenewed);
    };
  }
}
