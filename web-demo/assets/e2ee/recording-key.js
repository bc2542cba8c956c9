// @ts-check
/**
 * Zero-knowledge recording, the key part: every SFrame base key of the media a client sends to
 * the recorder is wrapped to the clinician's recording public key with HPKE (RFC 9180, base mode;
 * X25519, HKDF-SHA256, AES-256-GCM, see `hpke.js`) before it is used, and sent as a
 * `recording_key` signaling message. The recorder stores it beside the ciphertext; only the
 * clinician's private key (their passphrase-protected key file) opens it, at export.
 *
 * - `info` = UTF-8 "consult recording epoch key v1";
 * - `aad` = recording id (16 bytes) ‖ sender's participant id (16) ‖ KID (u64) ‖ suite (u16),
 *   big-endian, the ids as the UUIDs' bytes in order;
 * - plaintext = the base key; the wire form is base64 of `enc (32) ‖ ciphertext ‖ tag (16)`.
 *
 * The Rust side opens the same bytes: `crates/e2ee/test-vectors/hpke.json` (`consult_epoch_key`)
 * was sealed here and is checked by `tests/browser/hpke-vectors.test.mjs`.
 *
 * Also here, for the doctor's page: reading the public key out of a key file written by
 * `consult recording keygen` (the rest of the file — the sealed private key — is never sent).
 */

import { concat, fromBase64, utf8 } from "./bytes.js";
import { ENC_BYTES, sealToBytes } from "./hpke.js";

/** @typedef {import('./hpke.js').SealOptions} SealOptions */

/** HPKE `info` of a wrapped recording key. */
export const RECORDING_KEY_INFO = utf8("consult recording epoch key v1");

/** `kind` of a key file written by `consult recording keygen`. */
export const RECORDING_KEY_FILE_KIND = "consult-recording-key";
/** The key file `format` this page reads. */
export const RECORDING_KEY_FILE_FORMAT = 1;
/** Larger files are not key files (one is well under 1 KiB). */
export const RECORDING_KEY_FILE_MAX_BYTES = 64 * 1024;

/** A recording key (or key file) that cannot be used; the message is for people. */
export class RecordingKeyError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "RecordingKeyError";
  }
}

/**
 * The 16 bytes of a UUID ("8-4-4-4-12" hex), in order.
 * @param {string} uuid
 */
export function uuidBytes(uuid) {
  if (!/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/.test(uuid)) {
    throw new RecordingKeyError(`not a UUID: ${JSON.stringify(uuid)}`);
  }
  const hex = uuid.replace(/-/g, "");
  const out = new Uint8Array(16);
  for (let i = 0; i < 16; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/**
 * What a wrapped key is bound to.
 * @typedef {object} EpochKeyContext
 * @property {string} recordingId The recording (from the `recording` message).
 * @property {string} participantId The sender: this participant.
 * @property {bigint} kid The SFrame KID the key is for.
 * @property {number} suite The SFrame cipher suite (4 or 5).
 */

/**
 * The HPKE `aad` of a wrapped key: recording id ‖ participant id ‖ KID (u64) ‖ suite (u16).
 * @param {EpochKeyContext} context
 */
export function recordingKeyAad({ recordingId, participantId, kid, suite }) {
  const tail = new Uint8Array(10);
  const view = new DataView(tail.buffer);
  view.setBigUint64(0, kid);
  view.setUint16(8, suite);
  return concat(uuidBytes(recordingId), uuidBytes(participantId), tail);
}

/**
 * Wrap an SFrame base key to the clinician's recording public key: `enc ‖ ciphertext`.
 * @param {Uint8Array} recordingPublicKey 32 bytes (X25519).
 * @param {EpochKeyContext} context
 * @param {Uint8Array} baseKey
 * @param {SealOptions} [opts] Only for test vectors (a fixed ephemeral key).
 */
export function wrapEpochKey(recordingPublicKey, context, baseKey, opts = {}) {
  return sealToBytes(recordingPublicKey, RECORDING_KEY_INFO, recordingKeyAad(context), baseKey, opts);
}

/**
 * The 32 bytes of a recording public key given as standard base64 (padded), as the service sends
 * it in `recording.recording_key` and as key files hold it.
 * @param {unknown} text
 */
export function parseRecordingPublicKey(text) {
  /** @type {Uint8Array} */
  let bytes;
  try {
    bytes = fromBase64(typeof text === "string" ? text : "");
  } catch {
    throw new RecordingKeyError("the recording key is not base64");
  }
  if (bytes.length !== ENC_BYTES) throw new RecordingKeyError(`a recording key is ${ENC_BYTES} bytes, not ${bytes.length}`);
  return bytes;
}

/**
 * The short fingerprint people compare: the first 8 characters of the base64 public key.
 * @param {string} publicKey
 */
export function recordingKeyFingerprint(publicKey) {
  return publicKey.slice(0, 8);
}

/**
 * The public key (base64) of a key file's text, checked; nothing else of the file is kept.
 * Throws {@link RecordingKeyError} with a message for people.
 * @param {string} text
 */
export function publicKeyOfKeyFile(text) {
  /** @type {any} */
  let file;
  try {
    file = JSON.parse(text);
  } catch {
    file = null;
  }
  if (!file || typeof file !== "object" || file.kind !== RECORDING_KEY_FILE_KIND) {
    throw new RecordingKeyError("This is not a Consult recording key file. Choose the file that “consult recording keygen” wrote.");
  }
  if (file.format !== RECORDING_KEY_FILE_FORMAT) {
    throw new RecordingKeyError(`This recording key file has format ${JSON.stringify(file.format)}, which this page cannot read.`);
  }
  try {
    parseRecordingPublicKey(file.public_key);
  } catch (err) {
    throw new RecordingKeyError(`The public key in this file cannot be used: ${err instanceof Error ? err.message : err}.`);
  }
  return /** @type {string} */ (file.public_key);
}
