// @ts-check
/**
 * The end-to-end key schedule of one participant in a 1:1 call, in the page: X25519 key
 * agreement over the `consult-e2ee` data channel, the transcript hash and the short
 * authentication string, per-sender base keys per epoch wrapped for the peer, acknowledgements,
 * rotation. The reference is `crates/e2ee/src/schedule.rs` (with `wire.rs` and `sas.rs`); the
 * format is specified in `crates/e2ee/src/lib.rs`.
 *
 * Sans-IO like the Rust one: `now` (milliseconds) is an argument, messages go out through
 * {@link KeySchedule#pollOutput} and come in through {@link KeySchedule#handleMessage}. Unlike
 * the Rust one it does not protect frames itself: it hands each key to whoever protects with it
 * (events `send-key` and `receive-key`: the media worker for KID stream 0, the page's
 * `FrameProtector` for stream 1), because in a browser media frames are handled in a worker.
 *
 * Each side commits to its key (`commit`: a hash of it) before it may see the other's, and reveals
 * it (`hello`) only once the other's commitment is in; a reveal that does not match, or comes
 * before its commitment, stops the agreement (`abort`, and an `aborted` event with the reason).
 *
 * Outputs come in one queue, in order. A `receive-key` event comes before the `ack` that answers
 * it, so that a driver that installs the key (in the worker) before sending what follows never
 * lets the remote switch to a key the worker does not have yet.
 */

import { buf, compareBytes, concat, fromBase64, toBase64, utf8 } from "./bytes.js";
import { DEFAULT_SUITE, importBaseKey, suiteById } from "./sframe.js";
import { RejectedError } from "./protector.js";

/** @typedef {import('./sframe.js').Suite} Suite */
/** @typedef {import('./protector.js').Rejection} Rejection */

/** Label of the data channel key messages travel on. */
export const E2EE_CHANNEL_LABEL = "consult-e2ee";
/** Protocol version in every key message (2: keys are committed to before they are revealed). */
export const E2EE_PROTOCOL_VERSION = 2;
/** Longest key message accepted, in bytes. */
export const MAX_KEY_MESSAGE_BYTES = 4096;
/** KID stream of audio and video frames. */
export const STREAM_MEDIA = 0;
/** KID stream of data-channel messages. */
export const STREAM_DATA = 1;

/** Every key-message rejection, for stats with all counters present. */
export const KEY_REJECTIONS = /** @type {const} */ ([
  "key_from_stranger",
  "key_replayed",
  "key_malformed",
  "key_undecryptable",
  "commitment_mismatch",
  "reveal_before_commitment",
]);

/**
 * Why a participant stopped the key agreement of a connection: the other side's key did not match
 * its commitment, or came before it.
 * @typedef {"commitment_mismatch" | "reveal_before_commitment"} AbortReason
 */

/** Every abort reason, as on the wire. */
export const ABORT_REASONS = /** @type {const} */ (["commitment_mismatch", "reveal_before_commitment"]);

/**
 * @typedef {object} ScheduleConfig
 * @property {Suite} suite Cipher suite of this sender's keys.
 * @property {number} rotateEveryMs Start a new epoch this often.
 * @property {number} switchAfterMs Switch to an announced key this long after announcing it, if not acknowledged sooner.
 */

/** @type {Readonly<ScheduleConfig>} */
export const DEFAULT_SCHEDULE_CONFIG = Object.freeze({
  suite: DEFAULT_SUITE,
  rotateEveryMs: 10 * 60 * 1000,
  switchAfterMs: 1000,
});

/**
 * A DTLS certificate fingerprint: lower-case hash name and digest.
 * @typedef {{ hash: string, digest: Uint8Array }} Fingerprint
 */

/**
 * Parse `sha-256 AB:CD:...` (with or without `a=fingerprint:`), or null.
 * @param {string} value
 * @returns {Fingerprint | null}
 */
export function parseFingerprint(value) {
  const text = value.trim().replace(/^a=fingerprint:/, "");
  const space = text.indexOf(" ");
  if (space < 0) return null;
  const pairs = text.slice(space + 1).trim().split(":");
  if (pairs.some((p) => !/^[0-9a-fA-F]{1,2}$/.test(p))) return null;
  return { hash: text.slice(0, space).toLowerCase(), digest: Uint8Array.from(pairs.map((p) => parseInt(p, 16))) };
}

/**
 * The DTLS fingerprint an SDP declares (the first `a=fingerprint` line: with BUNDLE there is one
 * certificate per connection), or null.
 * @param {string | undefined} sdp
 * @returns {Fingerprint | null}
 */
export function fingerprintFromSdp(sdp) {
  const line = (sdp ?? "").split(/\r?\n/).find((l) => l.startsWith("a=fingerprint:"));
  return line ? parseFingerprint(line) : null;
}

/** @param {Fingerprint} fp */
function fingerprintBytes(fp) {
  return concat(utf8(fp.hash), new Uint8Array([0]), fp.digest);
}

/**
 * `u16 length ‖ item` for each of two items, sorted bytewise.
 * @param {Uint8Array} a
 * @param {Uint8Array} b
 */
function sortedItems(a, b) {
  const [first, second] = compareBytes(a, b) <= 0 ? [a, b] : [b, a];
  return [first, second].map(lengthPrefixed);
}

/**
 * SHA-256 of the key-agreement transcript: the two fingerprints, then the two public keys, each
 * pair sorted so that both sides compute the same value.
 * @param {Fingerprint} localFingerprint
 * @param {Fingerprint} remoteFingerprint
 * @param {Uint8Array} localPublicKey
 * @param {Uint8Array} remotePublicKey
 */
export async function transcriptHash(localFingerprint, remoteFingerprint, localPublicKey, remotePublicKey) {
  const transcript = concat(
    utf8("consult-e2ee/transcript/v1"),
    ...sortedItems(fingerprintBytes(localFingerprint), fingerprintBytes(remoteFingerprint)),
    ...sortedItems(localPublicKey, remotePublicKey),
  );
  return new Uint8Array(await crypto.subtle.digest("SHA-256", transcript));
}

/**
 * `u16 length ‖ item`.
 * @param {Uint8Array} item
 */
function lengthPrefixed(item) {
  const length = new Uint8Array(2);
  new DataView(length.buffer).setUint16(0, item.length);
  return concat(length, item);
}

/**
 * SHA-256 of what a participant commits to before it may see the other's key: its id, the
 * sender's and then the receiver's DTLS fingerprint (as the sender sees them), and its public key,
 * each length-prefixed. Binding the fingerprints ties it to one connection.
 * @param {string} participant
 * @param {Fingerprint} senderFingerprint
 * @param {Fingerprint} receiverFingerprint
 * @param {Uint8Array} publicKey
 */
export async function commitmentOf(participant, senderFingerprint, receiverFingerprint, publicKey) {
  const input = concat(
    utf8("consult-e2ee/commit/v2"),
    lengthPrefixed(utf8(participant)),
    lengthPrefixed(fingerprintBytes(senderFingerprint)),
    lengthPrefixed(fingerprintBytes(receiverFingerprint)),
    lengthPrefixed(publicKey),
  );
  return new Uint8Array(await crypto.subtle.digest("SHA-256", input));
}

/**
 * SHA-256 of the two key-agreement public keys (sorted, length-prefixed): the salt of the wrap
 * keys. The DTLS fingerprints are deliberately left out of it: a middle that terminates DTLS and
 * relays the key messages unchanged still cannot unwrap anything (it has neither X25519 secret),
 * and the SAS, which does cover the fingerprints, exposes it.
 * @param {Uint8Array} localPublicKey
 * @param {Uint8Array} remotePublicKey
 */
export async function keyHash(localPublicKey, remotePublicKey) {
  const input = concat(utf8("consult-e2ee/keys/v1"), ...sortedItems(localPublicKey, remotePublicKey));
  return new Uint8Array(await crypto.subtle.digest("SHA-256", input));
}

/**
 * HKDF-SHA256 output.
 * @param {Uint8Array} salt
 * @param {Uint8Array} ikm
 * @param {string} info
 * @param {number} length Bytes.
 */
async function hkdfSha256(salt, ikm, info, length) {
  const key = await crypto.subtle.importKey("raw", buf(ikm), "HKDF", false, ["deriveBits"]);
  return new Uint8Array(await crypto.subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt: buf(salt), info: utf8(info) }, key, length * 8));
}

/**
 * The short authentication string of a transcript hash: "NNNN NNNN".
 * @param {Uint8Array} transcript
 */
export async function sasOf(transcript) {
  const okm = await hkdfSha256(new Uint8Array(0), transcript, "consult-e2ee/sas/v1", 5);
  let value = 0;
  for (const b of okm) value = value * 256 + b; // 40 bits: exact in a double
  const digits = String(value % 100_000_000).padStart(8, "0");
  return `${digits.slice(0, 4)} ${digits.slice(4)}`;
}

/**
 * `wrap_key(from→to)`: HKDF-SHA256(salt = key hash, ikm = X25519 shared secret, info).
 * @param {Uint8Array} shared
 * @param {Uint8Array} salt {@link keyHash} of the two public keys.
 * @param {string} from
 * @param {string} to
 */
export function wrapKeyBytes(shared, salt, from, to) {
  return hkdfSha256(salt, shared, `consult-e2ee/wrap/v1|${from}|${to}`, 32);
}

/**
 * The AAD of a wrapped key.
 * @param {string} from
 * @param {string} to
 * @param {number} epoch
 * @param {Suite} suite
 */
function keyAad(from, to, epoch, suite) {
  return utf8(`consult-e2ee/key/v1|${from}|${to}|${epoch}|${suite.id}`);
}

/**
 * The tag that names a sender in its KIDs: the first two bytes of SHA-256 of its hello key.
 * @param {Uint8Array} publicKey
 */
export async function senderTag(publicKey) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", buf(publicKey)));
  return (digest[0] << 8) | digest[1];
}

/**
 * `KID = sender_tag << 24 | stream << 16 | (epoch & 0xffff)`.
 * @param {number} tag
 * @param {number} stream
 * @param {number} epoch
 */
export function kidOf(tag, stream, epoch) {
  return (BigInt(tag) << 24n) | (BigInt(stream) << 16n) | BigInt(epoch & 0xffff);
}

/**
 * X25519 shared secret; throws when it is all zeros (a small-order public key: WebCrypto refuses
 * it, as Rust's `was_contributory` check does).
 * @param {CryptoKey} privateKey
 * @param {Uint8Array} remotePublic
 */
async function x25519(privateKey, remotePublic) {
  const remote = await crypto.subtle.importKey("raw", buf(remotePublic), { name: "X25519" }, true, []);
  const shared = new Uint8Array(await crypto.subtle.deriveBits({ name: "X25519", public: remote }, privateKey, 256));
  if (shared.every((b) => b === 0)) throw new Error("non-contributory X25519 result");
  return shared;
}

/** The DER prefix of a PKCS #8 X25519 private key before its 32 bytes (RFC 8410). */
const X25519_PKCS8_PREFIX = Uint8Array.from([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20]);

/**
 * The key agreement the shared test vectors pin down (as Rust's `schedule::vectors::agreement`):
 * public key, transcript hash, SAS, `wrap_key(from→to)` and the commitment of `from` to its key,
 * for a given secret and peer.
 * @param {Uint8Array} secret 32-byte X25519 private key.
 * @param {Uint8Array} remotePublic
 * @param {Fingerprint} localFingerprint
 * @param {Fingerprint} remoteFingerprint
 * @param {string} from
 * @param {string} to
 */
export async function agreementForVectors(secret, remotePublic, localFingerprint, remoteFingerprint, from, to) {
  const privateKey = await crypto.subtle.importKey("pkcs8", concat(X25519_PKCS8_PREFIX, secret), { name: "X25519" }, true, ["deriveBits"]);
  const jwk = await crypto.subtle.exportKey("jwk", privateKey);
  const publicKey = fromBase64((jwk.x ?? "").replace(/-/g, "+").replace(/_/g, "/").padEnd(44, "="));
  const transcript = await transcriptHash(localFingerprint, remoteFingerprint, publicKey, remotePublic);
  const shared = await x25519(privateKey, remotePublic);
  const salt = await keyHash(publicKey, remotePublic);
  return {
    publicKey,
    transcript,
    sas: await sasOf(transcript),
    wrapKey: await wrapKeyBytes(shared, salt, from, to),
    commitment: await commitmentOf(from, localFingerprint, remoteFingerprint, publicKey),
  };
}

// -------------------------------------------------------------------------------------------------
// Wire
// -------------------------------------------------------------------------------------------------

/**
 * A key-agreement message (byte strings are standard base64 with padding).
 * @typedef {{ type: "commit", participant: string, commitment: string }
 *   | { type: "hello", participant: string, public_key: string }
 *   | { type: "key", from: string, to: string, epoch: number, suite: number, nonce: string, wrapped: string }
 *   | { type: "ack", from: string, epoch: number }
 *   | { type: "abort", from: string, reason: AbortReason }} KeyMessage
 */

/** Field names of each message type, in wire order. */
const FIELDS = /** @type {const} */ ({
  commit: ["participant", "commitment"],
  hello: ["participant", "public_key"],
  key: ["from", "to", "epoch", "suite", "nonce", "wrapped"],
  ack: ["from", "epoch"],
  abort: ["from", "reason"],
});

/**
 * JSON text of a key message, fields in the order the Rust side writes them.
 * @param {KeyMessage} message
 */
export function encodeKeyMessage(message) {
  /** @type {Record<string, unknown>} */
  const out = { v: E2EE_PROTOCOL_VERSION, type: message.type };
  const fields = /** @type {readonly string[]} */ (FIELDS[message.type]);
  for (const field of fields) out[field] = /** @type {Record<string, unknown>} */ (message)[field];
  return JSON.stringify(out);
}

/**
 * Parse a key message, or null when it is too long, not JSON, another version, an unknown type,
 * or has missing, extra or mistyped fields (as serde with `deny_unknown_fields`).
 * @param {string} text
 * @returns {KeyMessage | null}
 */
export function decodeKeyMessage(text) {
  if (utf8(text).length > MAX_KEY_MESSAGE_BYTES) return null;
  /** @type {unknown} */
  let value;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) return null;
  const object = /** @type {Record<string, unknown>} */ (value);
  if (object.v !== E2EE_PROTOCOL_VERSION) return null;
  const type = object.type;
  if (typeof type !== "string" || !Object.hasOwn(FIELDS, type)) return null;
  const fields = /** @type {readonly string[]} */ (FIELDS[/** @type {keyof typeof FIELDS} */ (type)]);
  const keys = Object.keys(object).filter((k) => k !== "v" && k !== "type");
  if (keys.length !== fields.length || !fields.every((f) => keys.includes(f))) return null;
  const isU64 = (/** @type {unknown} */ n) => typeof n === "number" && Number.isSafeInteger(n) && n >= 0;
  for (const field of fields) {
    const v = object[field];
    const ok =
      field === "epoch"
        ? isU64(v)
        : field === "suite"
          ? isU64(v) && /** @type {number} */ (v) <= 0xffff
          : field === "reason"
            ? ABORT_REASONS.some((r) => r === v)
            : typeof v === "string";
    if (!ok) return null;
  }
  return /** @type {KeyMessage} */ (/** @type {unknown} */ (object));
}

// -------------------------------------------------------------------------------------------------
// The schedule
// -------------------------------------------------------------------------------------------------

/**
 * A key for the protectors: ours to send with (`send-key`, once switched to) or the remote's to
 * open with (`receive-key`). `baseKey` is a non-extractable HKDF key (it can be posted to a worker).
 * @typedef {object} KeyEvent
 * @property {"send-key" | "receive-key"} kind
 * @property {number} epoch
 * @property {Suite} suite
 * @property {CryptoKey} baseKey
 * @property {bigint} mediaKid KID stream 0.
 * @property {bigint} dataKid KID stream 1.
 */

/**
 * @typedef {{ type: "send", text: string }
 *   | { type: "event", event: KeyEvent | { kind: "sas", sas: string } | AbortedEvent }} ScheduleOutput
 */

/**
 * Key agreement on this connection stopped and its keys are gone: tell the person why.
 * @typedef {{ kind: "aborted", reason: AbortReason, byRemote: boolean }} AbortedEvent
 */

/**
 * @typedef {object} ScheduleStats
 * @property {Record<typeof KEY_REJECTIONS[number], number>} rejected
 * @property {number} sendEpoch Our epoch in use (0: none yet).
 * @property {number} announcedEpoch Our newest epoch announced (switched to or pending).
 * @property {number} receiveEpoch The remote's newest epoch installed.
 */

/**
 * @typedef {object} Connection
 * @property {string} remoteId
 * @property {Fingerprint} localFingerprint
 * @property {Fingerprint} remoteFingerprint
 * @property {CryptoKey} privateKey
 * @property {Uint8Array} publicKey
 * @property {Uint8Array | null} remoteCommitment The other side's commitment, once its `commit` arrived.
 * @property {{ remoteTag: number, localTag: number, sas: string, wrapOut: CryptoKey, wrapIn: CryptoKey } | null} agreed
 * @property {AbortReason | null} aborted Set when either side stopped the agreement.
 */

/**
 * @typedef {object} PendingSend
 * @property {KeyEvent} keys
 * @property {number} announcedAt
 */

/**
 * The key schedule of one participant (one per call; a connection at a time).
 */
export class KeySchedule {
  /**
   * @param {string} localId This participant's id from the signaling service.
   * @param {Partial<ScheduleConfig>} [config]
   */
  constructor(localId, config = {}) {
    this.localId = localId;
    this.config = { ...DEFAULT_SCHEDULE_CONFIG, ...config };
    /** @type {Connection | null} */
    this.conn = null;
    /** Our last epoch number (announced or in use); epochs go on across connections. */
    this.epoch = 0;
    /** @type {{ keys: KeyEvent, since: number } | null} */
    this.send = null;
    /** @type {PendingSend | null} */
    this.pending = null;
    this.rotateWanted = false;
    /** Highest remote epoch accepted on this connection. */
    this.remoteEpoch = 0;
    /** @type {ScheduleOutput[]} */
    this.outputs = [];
    /** @type {ScheduleStats} */
    this.stats = {
      rejected: {
        key_from_stranger: 0,
        key_replayed: 0,
        key_malformed: 0,
        key_undecryptable: 0,
        commitment_mismatch: 0,
        reveal_before_commitment: 0,
      },
      sendEpoch: 0,
      announcedEpoch: 0,
      receiveEpoch: 0,
    };
  }

  /**
   * A connection to `remoteId` is up and its `consult-e2ee` channel open: a fresh X25519 key
   * and our commitment to it (our hello follows once the other side's commitment is in). The
   * fingerprints are this connection's DTLS fingerprints, local and remote.
   * @param {number} _now
   * @param {string} remoteId
   * @param {Fingerprint} localFingerprint
   * @param {Fingerprint} remoteFingerprint
   */
  async connect(_now, remoteId, localFingerprint, remoteFingerprint) {
    const pair = /** @type {CryptoKeyPair} */ (await crypto.subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]));
    const publicKey = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
    const commitment = await commitmentOf(this.localId, localFingerprint, remoteFingerprint, publicKey);
    // Left only now, after the awaits, so that nothing of another connection slips in between.
    this.leave();
    this.conn = { remoteId, localFingerprint, remoteFingerprint, privateKey: pair.privateKey, publicKey, remoteCommitment: null, agreed: null, aborted: null };
    this.outputs.push({ type: "send", text: encodeKeyMessage({ type: "commit", participant: this.localId, commitment: toBase64(commitment) }) });
  }

  /** The remote left or the connection closed: forget it; the next connection starts a new epoch. */
  disconnect() {
    this.leave();
  }

  /** @private */
  leave() {
    if (this.conn || this.send) this.rotateWanted = true;
    // What was queued for the old connection must not go out on the next one.
    this.outputs = [];
    this.conn = null;
    this.send = null;
    this.pending = null;
    this.remoteEpoch = 0;
    this.stats.sendEpoch = 0;
    this.stats.receiveEpoch = 0;
  }

  /** The SAS of this connection, once both hellos are in. */
  get sas() {
    return this.conn && this.conn.agreed ? this.conn.agreed.sas : null;
  }

  /** Why key agreement on this connection stopped, or null. */
  get aborted() {
    return this.conn ? this.conn.aborted : null;
  }

  /** The remote participant of the current connection. */
  get remoteId() {
    return this.conn ? this.conn.remoteId : null;
  }

  /**
   * Start a new epoch now (test hook, and the protectors' counter limit).
   * @param {number} now
   */
  async rotate(now) {
    this.rotateWanted = true;
    await this.startEpochIfWanted(now);
  }

  /** Ask for a new epoch at the next timeout (a counter reached its limit). */
  requestRotation() {
    // An epoch already announced is the new key asked for: one rotation, not two.
    if (!this.pending) this.rotateWanted = true;
  }

  /**
   * Count a rejection and return the error to throw.
   * @private
   * @param {typeof KEY_REJECTIONS[number]} reason
   */
  reject(reason) {
    this.stats.rejected[reason] += 1;
    return new RejectedError(reason);
  }

  /**
   * A text message arrived on the `consult-e2ee` channel. Throws {@link RejectedError} (counted)
   * when it is refused; the call goes on.
   * @param {number} now
   * @param {string} text
   */
  async handleMessage(now, text) {
    const message = decodeKeyMessage(text);
    if (!message) throw this.reject("key_malformed");
    // Nothing more is agreed on a connection either side gave up on.
    if (this.conn && this.conn.aborted) throw this.reject("key_malformed");
    switch (message.type) {
      case "commit":
        return this.handleCommit(message.participant, message.commitment);
      case "hello":
        return this.handleHello(now, message.participant, message.public_key);
      case "key":
        return this.handleKey(now, message);
      case "ack":
        return this.handleAck(message.from, message.epoch);
      case "abort":
        return this.handleAbort(message.from, message.reason);
    }
  }

  /**
   * The other side's commitment: keep it, and reveal our key in return.
   * @private
   * @param {string} participant
   * @param {string} commitmentText
   */
  handleCommit(participant, commitmentText) {
    const conn = this.conn;
    if (!conn) throw this.reject("key_malformed");
    if (participant !== conn.remoteId) throw this.reject("key_from_stranger");
    if (conn.remoteCommitment) throw this.reject("key_replayed");
    /** @type {Uint8Array} */
    let commitment;
    try {
      commitment = fromBase64(commitmentText);
    } catch {
      throw this.reject("key_malformed");
    }
    if (commitment.length !== 32) throw this.reject("key_malformed");
    conn.remoteCommitment = commitment;
    // Their key is fixed now: ours may be revealed.
    this.outputs.push({ type: "send", text: encodeKeyMessage({ type: "hello", participant: this.localId, public_key: toBase64(conn.publicKey) }) });
  }

  /**
   * @private
   * @param {string} from
   * @param {AbortReason} reason
   */
  handleAbort(from, reason) {
    const conn = this.conn;
    if (!conn) throw this.reject("key_malformed");
    if (from !== conn.remoteId) throw this.reject("key_from_stranger");
    this.stopAgreement(conn, reason, true);
  }

  /**
   * We stop the agreement: tell the other side and the page; the error to throw.
   * @private
   * @param {Connection} conn
   * @param {AbortReason} reason
   */
  abort(conn, reason) {
    this.outputs.push({ type: "send", text: encodeKeyMessage({ type: "abort", from: this.localId, reason }) });
    this.stopAgreement(conn, reason, false);
    return this.reject(reason);
  }

  /**
   * Forget every key of this connection and accept nothing more on it.
   * @private
   * @param {Connection} conn
   * @param {AbortReason} reason
   * @param {boolean} byRemote
   */
  stopAgreement(conn, reason, byRemote) {
    conn.aborted = reason;
    conn.agreed = null;
    this.send = null;
    this.pending = null;
    this.remoteEpoch = 0;
    this.stats.sendEpoch = 0;
    this.stats.receiveEpoch = 0;
    this.outputs.push({ type: "event", event: { kind: "aborted", reason, byRemote } });
  }

  /**
   * @private
   * @param {number} now
   * @param {string} participant
   * @param {string} publicKeyText
   */
  async handleHello(now, participant, publicKeyText) {
    const conn = this.conn;
    if (!conn) throw this.reject("key_malformed");
    if (participant !== conn.remoteId) throw this.reject("key_from_stranger");
    if (conn.agreed) throw this.reject("key_replayed");
    const remoteCommitment = conn.remoteCommitment;
    if (!remoteCommitment) throw this.abort(conn, "reveal_before_commitment");
    /** @type {Uint8Array} */
    let remotePublic;
    try {
      remotePublic = fromBase64(publicKeyText);
    } catch {
      throw this.reject("key_malformed");
    }
    if (remotePublic.length !== 32) throw this.reject("key_malformed");
    /** @type {Uint8Array} */
    let shared;
    try {
      shared = await x25519(conn.privateKey, remotePublic);
    } catch {
      throw this.reject("key_malformed");
    }
    // Checked from our side: the other's id, its fingerprint as the sender's, ours as the
    // receiver's. A key chosen after seeing ours, or a commitment from another call, fails.
    const expected = await commitmentOf(conn.remoteId, conn.remoteFingerprint, conn.localFingerprint, remotePublic);
    if (this.conn !== conn || conn.aborted || conn.agreed) throw this.reject("key_replayed");
    if (compareBytes(expected, remoteCommitment) !== 0) {
      shared.fill(0);
      throw this.abort(conn, "commitment_mismatch");
    }
    const transcript = await transcriptHash(conn.localFingerprint, conn.remoteFingerprint, conn.publicKey, remotePublic);
    const salt = await keyHash(conn.publicKey, remotePublic);
    const importWrap = async (/** @type {string} */ from, /** @type {string} */ to, /** @type {KeyUsage} */ usage) => {
      const bytes = await wrapKeyBytes(shared, salt, from, to);
      const key = await crypto.subtle.importKey("raw", bytes, "AES-GCM", false, [usage]);
      bytes.fill(0);
      return key;
    };
    const wrapOut = await importWrap(this.localId, conn.remoteId, "encrypt");
    const wrapIn = await importWrap(conn.remoteId, this.localId, "decrypt");
    shared.fill(0);
    const sas = await sasOf(transcript);
    if (this.conn !== conn || conn.agreed || conn.aborted) return; // replaced or stopped meanwhile
    conn.agreed = { remoteTag: await senderTag(remotePublic), localTag: await senderTag(conn.publicKey), sas, wrapOut, wrapIn };
    this.outputs.push({ type: "event", event: { kind: "sas", sas } });
    // Someone joined: a new epoch, which only the participants of this call know.
    this.rotateWanted = true;
    await this.startEpochIfWanted(now);
  }

  /**
   * @private
   * @param {number} _now
   * @param {Extract<KeyMessage, { type: "key" }>} m
   */
  async handleKey(_now, m) {
    const conn = this.conn;
    if (!conn) throw this.reject("key_malformed");
    if (m.from !== conn.remoteId || m.to !== this.localId) throw this.reject("key_from_stranger");
    const agreed = conn.agreed;
    if (!agreed) throw this.reject("key_malformed");
    if (m.epoch <= this.remoteEpoch) throw this.reject("key_replayed");
    const suite = suiteById(m.suite);
    if (!suite) throw this.reject("key_malformed");
    /** @type {Uint8Array} */
    let nonce;
    /** @type {Uint8Array} */
    let wrapped;
    try {
      nonce = fromBase64(m.nonce);
      wrapped = fromBase64(m.wrapped);
    } catch {
      throw this.reject("key_malformed");
    }
    if (nonce.length !== 12) throw this.reject("key_malformed");
    /** @type {Uint8Array} */
    let base;
    try {
      base = new Uint8Array(
        await crypto.subtle.decrypt(
          { name: "AES-GCM", iv: buf(nonce), additionalData: keyAad(m.from, m.to, m.epoch, suite), tagLength: 128 },
          agreed.wrapIn,
          buf(wrapped),
        ),
      );
    } catch {
      throw this.reject("key_undecryptable");
    }
    if (base.length !== suite.keyBytes) {
      base.fill(0);
      throw this.reject("key_malformed");
    }
    const baseKey = await importBaseKey(base);
    base.fill(0);
    // Checked again after the awaits: two copies of one key message may race.
    if (this.conn !== conn || m.epoch <= this.remoteEpoch) throw this.reject("key_replayed");
    this.remoteEpoch = m.epoch;
    this.stats.receiveEpoch = m.epoch;
    const mediaKid = kidOf(agreed.remoteTag, STREAM_MEDIA, m.epoch);
    const dataKid = kidOf(agreed.remoteTag, STREAM_DATA, m.epoch);
    // The key event first: the driver installs it before it sends the ack.
    this.outputs.push({ type: "event", event: { kind: "receive-key", epoch: m.epoch, suite, baseKey, mediaKid, dataKid } });
    this.outputs.push({ type: "send", text: encodeKeyMessage({ type: "ack", from: this.localId, epoch: m.epoch }) });
  }

  /**
   * @private
   * @param {string} from
   * @param {number} epoch
   */
  handleAck(from, epoch) {
    const conn = this.conn;
    if (!conn) throw this.reject("key_malformed");
    if (from !== conn.remoteId) throw this.reject("key_from_stranger");
    if (this.pending && this.pending.keys.epoch === epoch) {
      this.switchToPending();
      return;
    }
    // An ack for the active epoch arriving after the switch timer: harmless.
    if (this.send && this.send.keys.epoch === epoch) return;
    throw this.reject("key_replayed");
  }

  /** @private */
  switchToPending() {
    const pending = this.pending;
    if (!pending) return;
    this.pending = null;
    // The old send key is dropped here (the protectors replace theirs): forward secrecy.
    this.send = { keys: pending.keys, since: pending.announcedAt };
    this.stats.sendEpoch = pending.keys.epoch;
    this.outputs.push({ type: "event", event: pending.keys });
  }

  /**
   * @private
   * @param {number} now
   */
  async startEpochIfWanted(now) {
    if (!this.rotateWanted || this.pending) return;
    const conn = this.conn;
    const agreed = conn ? conn.agreed : null;
    if (!conn || !agreed) return;
    const suite = this.config.suite;
    const base = crypto.getRandomValues(new Uint8Array(suite.keyBytes));
    const nonce = crypto.getRandomValues(new Uint8Array(12));
    const epoch = this.epoch + 1;
    const wrapped = new Uint8Array(
      await crypto.subtle.encrypt(
        { name: "AES-GCM", iv: nonce, additionalData: keyAad(this.localId, conn.remoteId, epoch, suite), tagLength: 128 },
        agreed.wrapOut,
        base,
      ),
    );
    const baseKey = await importBaseKey(base);
    base.fill(0);
    // Another epoch may have been started meanwhile (the awaits above let other calls run).
    if (this.conn !== conn || this.pending || this.epoch + 1 !== epoch) return;
    this.epoch = epoch;
    this.stats.announcedEpoch = epoch;
    this.rotateWanted = false;
    /** @type {KeyEvent} */
    const keys = {
      kind: "send-key",
      epoch,
      suite,
      baseKey,
      mediaKid: kidOf(agreed.localTag, STREAM_MEDIA, epoch),
      dataKid: kidOf(agreed.localTag, STREAM_DATA, epoch),
    };
    this.pending = { keys, announcedAt: now };
    this.outputs.push({
      type: "send",
      text: encodeKeyMessage({ type: "key", from: this.localId, to: conn.remoteId, epoch, suite: suite.id, nonce: toBase64(nonce), wrapped: toBase64(wrapped) }),
    });
  }

  /**
   * Run the timers due at `now`: switch to an announced key, rotate.
   * @param {number} now
   */
  async handleTimeout(now) {
    if (this.pending && now >= this.pending.announcedAt + this.config.switchAfterMs) this.switchToPending();
    // While an epoch waits for its acknowledgement the timer has done its work already.
    if (this.send && !this.pending && now >= this.send.since + this.config.rotateEveryMs) this.rotateWanted = true;
    await this.startEpochIfWanted(now);
  }

  /**
   * When {@link KeySchedule#handleTimeout} is next due, or null.
   * @returns {number | null}
   */
  nextTimeout() {
    /** @type {number[]} */
    const times = [];
    if (this.pending) times.push(this.pending.announcedAt + this.config.switchAfterMs);
    if (this.send && !this.pending) times.push(this.send.since + this.config.rotateEveryMs);
    if (this.rotateWanted && this.conn && this.conn.agreed && !this.pending) times.push(0);
    return times.length ? Math.min(...times) : null;
  }

  /**
   * The next output (a message to send or an event), or null.
   * @returns {ScheduleOutput | null}
   */
  pollOutput() {
    return this.outputs.shift() ?? null;
  }
}
