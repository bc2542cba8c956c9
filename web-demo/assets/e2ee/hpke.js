// @ts-check
/**
 * HPKE (RFC 9180), base mode, single-shot: seal a message to a recipient's X25519 public key, and
 * open it with the private key. Only WebCrypto primitives are composed here: X25519 for the KEM,
 * HMAC-SHA256 for HKDF, AES-GCM for the AEAD. Checked against RFC 9180 Appendix A.1.1 by
 * `tests/browser/hpke-vectors.test.mjs` (vectors in `crates/e2ee/test-vectors/hpke.json`).
 *
 * Suite: KEM DHKEM(X25519, HKDF-SHA256) (0x0020), KDF HKDF-SHA256 (0x0001), AEAD AES-256-GCM
 * (0x0002). AES-128-GCM (0x0001) is accepted too, for the RFC's vectors.
 *
 * ```js
 * const { privateKey, publicKey } = await generateRecipientKeyPair();
 * const sealed = await sealToBytes(publicKey, utf8("consult/example/v1"), aad, plaintext);
 * const opened = await openFromBytes(privateKey, sealed, utf8("consult/example/v1"), aad);
 * ```
 *
 * - HKDF is built on HMAC rather than WebCrypto's "HKDF" because RFC 9180 needs Extract and
 *   Expand separately (LabeledExtract's output is a key schedule value and a salt), and WebCrypto
 *   only offers the two together.
 * - Each message has its own ephemeral key, so the sequence number is always 0 and the nonce is
 *   `base_nonce` itself; the XOR is kept to read as section 5.2 does.
 * - Wire form of {@link sealToBytes}: `enc (32 bytes) ‖ ciphertext ‖ tag (16 bytes)`.
 */

import { buf, concat, fromBase64, utf8 } from "./bytes.js";

/** DHKEM(X25519, HKDF-SHA256). */
export const KEM_ID = 0x0020;
/** HKDF-SHA256. */
export const KDF_ID = 0x0001;
/** AEAD identifiers this module implements. */
export const AEAD_ID = Object.freeze({ AES_128_GCM: 0x0001, AES_256_GCM: 0x0002 });
/** The AEAD Consult seals with. */
export const DEFAULT_AEAD_ID = AEAD_ID.AES_256_GCM;

/** Length of `enc` and of an X25519 public key (Nenc = Npk). */
export const ENC_BYTES = 32;
/** Length of an X25519 private key (Nsk). */
export const PRIVATE_KEY_BYTES = 32;
/** AES-GCM authentication tag length (Nt). */
export const TAG_BYTES = 16;
/** AES-GCM nonce length (Nn). */
const NONCE_BYTES = 12;
/** HKDF-SHA256 output length (Nh), also DHKEM's shared secret length (Nsecret). */
const HASH_BYTES = 32;
/** mode_base (RFC 9180 section 5). */
const MODE_BASE = 0x00;

/** AEAD key length (Nk) by AEAD identifier. */
const AEAD_KEY_BYTES = Object.freeze({ [AEAD_ID.AES_128_GCM]: 16, [AEAD_ID.AES_256_GCM]: 32 });

/** The DER prefix of a PKCS #8 X25519 private key before its 32 bytes (RFC 8410). */
const X25519_PKCS8_PREFIX = Uint8Array.from([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20]);

/**
 * An X25519 key pair: the private key stays in WebCrypto, the public key is its 32 raw bytes.
 * @typedef {object} X25519KeyPair
 * @property {CryptoKey} privateKey
 * @property {Uint8Array} publicKey
 */

/**
 * @typedef {object} SealOptions
 * @property {number} [aead] AEAD identifier ({@link AEAD_ID}); {@link DEFAULT_AEAD_ID} when absent.
 * @property {X25519KeyPair} [ephemeral] A fixed ephemeral key pair, for test vectors only: a
 *   reused ephemeral key makes every message to the same recipient share one key and nonce.
 */

/**
 * @typedef {object} OpenOptions
 * @property {number} [aead] AEAD identifier ({@link AEAD_ID}); {@link DEFAULT_AEAD_ID} when absent.
 * @property {Uint8Array} [recipientPublicKey] The recipient's public key; needed only when the
 *   private key is not extractable (otherwise it is read from the private key).
 */

/** Why HPKE refused: malformed input (lengths, an unusable public key), or authentication failed. */
export class HpkeError extends Error {
  /**
   * @param {"malformed" | "authentication"} reason
   * @param {string} message
   */
  constructor(reason, message) {
    super(message);
    this.name = "HpkeError";
    this.reason = reason;
  }
}

// --- Encoding and labels (RFC 9180 sections 4 and 5.1) --------------------------------------------

/**
 * `n` as `width` big-endian bytes (I2OSP).
 * @param {number} n
 * @param {number} width
 */
function i2osp(n, width) {
  const out = new Uint8Array(width);
  for (let i = width - 1, v = n; i >= 0 && v > 0; i--, v = Math.floor(v / 256)) out[i] = v % 256;
  return out;
}

const HPKE_V1 = utf8("HPKE-v1");
/** suite_id of the KEM's own derivations: `"KEM" ‖ I2OSP(kem_id, 2)`. */
const KEM_SUITE_ID = concat(utf8("KEM"), i2osp(KEM_ID, 2));

/**
 * suite_id of the key schedule: `"HPKE" ‖ kem_id ‖ kdf_id ‖ aead_id`.
 * @param {number} aeadId
 */
function hpkeSuiteId(aeadId) {
  return concat(utf8("HPKE"), i2osp(KEM_ID, 2), i2osp(KDF_ID, 2), i2osp(aeadId, 2));
}

/**
 * AEAD key length of a supported AEAD (throws on any other identifier).
 * @param {number} aeadId
 */
function aeadKeyBytes(aeadId) {
  const nk = aeadId === AEAD_ID.AES_128_GCM || aeadId === AEAD_ID.AES_256_GCM ? AEAD_KEY_BYTES[aeadId] : undefined;
  if (nk === undefined) throw new RangeError(`unsupported HPKE AEAD id ${aeadId}`);
  return nk;
}

// --- HKDF-SHA256 over HMAC (RFC 5869), labeled as RFC 9180 section 4 ------------------------------

/**
 * HMAC-SHA256(key, data).
 * @param {Uint8Array} key
 * @param {Uint8Array} data
 */
async function hmac(key, data) {
  const hmacKey = await crypto.subtle.importKey("raw", buf(key), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await crypto.subtle.sign("HMAC", hmacKey, buf(data)));
}

/**
 * HKDF-Extract. An empty salt is HashLen zero bytes (RFC 5869 section 2.2); WebCrypto refuses
 * zero-length HMAC keys, and HMAC pads any key to its block with zeros, so this is the same.
 * @param {Uint8Array} salt
 * @param {Uint8Array} ikm
 */
function extract(salt, ikm) {
  return hmac(salt.length > 0 ? salt : new Uint8Array(HASH_BYTES), ikm);
}

/**
 * HKDF-Expand: `T(i) = HMAC(prk, T(i-1) ‖ info ‖ i)`, the first `length` bytes of `T(1) ‖ T(2) ‖ …`.
 * @param {Uint8Array} prk
 * @param {Uint8Array} info
 * @param {number} length
 */
async function expand(prk, info, length) {
  if (length > 255 * HASH_BYTES) throw new RangeError("HKDF-Expand output too long");
  const out = new Uint8Array(length);
  let t = new Uint8Array(0);
  for (let i = 1, at = 0; at < length; i++) {
    t = await hmac(prk, concat(t, info, Uint8Array.of(i)));
    out.set(t.subarray(0, Math.min(t.length, length - at)), at);
    at += t.length;
  }
  t.fill(0);
  return out;
}

/**
 * LabeledExtract(salt, label, ikm) = Extract(salt, "HPKE-v1" ‖ suite_id ‖ label ‖ ikm).
 * @param {Uint8Array} suiteId
 * @param {Uint8Array} salt
 * @param {string} label
 * @param {Uint8Array} ikm
 */
function labeledExtract(suiteId, salt, label, ikm) {
  return extract(salt, concat(HPKE_V1, suiteId, utf8(label), ikm));
}

/**
 * LabeledExpand(prk, label, info, L) = Expand(prk, I2OSP(L, 2) ‖ "HPKE-v1" ‖ suite_id ‖ label ‖ info, L).
 * @param {Uint8Array} suiteId
 * @param {Uint8Array} prk
 * @param {string} label
 * @param {Uint8Array} info
 * @param {number} length
 */
function labeledExpand(suiteId, prk, label, info, length) {
  return expand(prk, concat(i2osp(length, 2), HPKE_V1, suiteId, utf8(label), info), length);
}

// --- DHKEM(X25519, HKDF-SHA256) (RFC 9180 sections 4.1 and 7.1) -----------------------------------

/**
 * Import a recipient's X25519 private key from its 32 raw bytes (WebCrypto imports private X25519
 * keys only as PKCS #8 or JWK, so the PKCS #8 wrapper is built around them). Extractable, as
 * {@link generateRecipientKeyPair}'s.
 * @param {Uint8Array} raw32
 */
export async function importRecipientPrivateKey(raw32) {
  if (raw32.length !== PRIVATE_KEY_BYTES) throw new HpkeError("malformed", `an X25519 private key is ${PRIVATE_KEY_BYTES} bytes`);
  return crypto.subtle.importKey("pkcs8", concat(X25519_PKCS8_PREFIX, raw32), { name: "X25519" }, true, ["deriveBits"]);
}

/**
 * A fresh recipient key pair. The private key is extractable (as `pkcs8` or `jwk`) so that it can
 * be saved, wrapped under a passphrase.
 * @returns {Promise<X25519KeyPair>}
 */
export async function generateRecipientKeyPair() {
  return generateX25519(true);
}

/**
 * @param {boolean} extractable
 * @returns {Promise<X25519KeyPair>}
 */
async function generateX25519(extractable) {
  const pair = /** @type {CryptoKeyPair} */ (await crypto.subtle.generateKey({ name: "X25519" }, extractable, ["deriveBits"]));
  return { privateKey: pair.privateKey, publicKey: new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey)) };
}

/**
 * The raw public key of an extractable X25519 private key (read from its JWK `x`).
 * @param {CryptoKey} privateKey
 */
export async function publicKeyOf(privateKey) {
  if (!privateKey.extractable) throw new Error("the X25519 private key is not extractable: pass its public key along");
  const jwk = await crypto.subtle.exportKey("jwk", privateKey);
  const publicKey = fromBase64((jwk.x ?? "").replace(/-/g, "+").replace(/_/g, "/").padEnd(44, "="));
  if (publicKey.length !== ENC_BYTES) throw new Error("no X25519 public key in the private key's JWK");
  return publicKey;
}

/**
 * DeriveKeyPair(ikm) of DHKEM(X25519, HKDF-SHA256) (section 7.1.3): a deterministic key pair
 * from at least 32 bytes of secret input keying material.
 * @param {Uint8Array} ikm
 * @returns {Promise<X25519KeyPair>}
 */
export async function deriveKeyPair(ikm) {
  const dkpPrk = await labeledExtract(KEM_SUITE_ID, new Uint8Array(0), "dkp_prk", ikm);
  const sk = await labeledExpand(KEM_SUITE_ID, dkpPrk, "sk", new Uint8Array(0), PRIVATE_KEY_BYTES);
  try {
    const privateKey = await importRecipientPrivateKey(sk);
    return { privateKey, publicKey: await publicKeyOf(privateKey) };
  } finally {
    dkpPrk.fill(0);
    sk.fill(0);
  }
}

/**
 * DH(sk, pk): the X25519 shared secret. A public key WebCrypto refuses, or one of small order
 * (an all-zero result, which section 7.1.4 requires to be rejected), is malformed input.
 * @param {CryptoKey} privateKey
 * @param {Uint8Array} publicKey
 */
async function dh(privateKey, publicKey) {
  if (publicKey.length !== ENC_BYTES) throw new HpkeError("malformed", `an X25519 public key is ${ENC_BYTES} bytes`);
  let shared;
  try {
    const remote = await crypto.subtle.importKey("raw", buf(publicKey), { name: "X25519" }, true, []);
    shared = new Uint8Array(await crypto.subtle.deriveBits({ name: "X25519", public: remote }, privateKey, 256));
  } catch (err) {
    throw new HpkeError("malformed", `X25519 with this public key failed: ${err instanceof Error ? err.message : err}`);
  }
  if (shared.every((b) => b === 0)) throw new HpkeError("malformed", "X25519 with this public key gives zero (a small-order point)");
  return shared;
}

/**
 * ExtractAndExpand(dh, kem_context): the KEM shared secret.
 * @param {Uint8Array} dhResult
 * @param {Uint8Array} kemContext
 */
async function extractAndExpand(dhResult, kemContext) {
  const eaePrk = await labeledExtract(KEM_SUITE_ID, new Uint8Array(0), "eae_prk", dhResult);
  try {
    return await labeledExpand(KEM_SUITE_ID, eaePrk, "shared_secret", kemContext, HASH_BYTES);
  } finally {
    eaePrk.fill(0);
  }
}

/**
 * Encap(pkR): `enc` and the shared secret, under a fresh ephemeral key (or a given one).
 * @param {Uint8Array} recipientPublicKey
 * @param {X25519KeyPair} [ephemeral]
 */
async function encap(recipientPublicKey, ephemeral) {
  const { privateKey, publicKey: enc } = ephemeral ?? (await generateX25519(false));
  const dhResult = await dh(privateKey, recipientPublicKey);
  try {
    return { enc, sharedSecret: await extractAndExpand(dhResult, concat(enc, recipientPublicKey)) };
  } finally {
    dhResult.fill(0);
  }
}

/**
 * Decap(enc, skR): the shared secret.
 * @param {Uint8Array} enc
 * @param {CryptoKey} recipientPrivateKey
 * @param {Uint8Array} [recipientPublicKey] Read from the private key when absent.
 */
async function decap(enc, recipientPrivateKey, recipientPublicKey) {
  const dhResult = await dh(recipientPrivateKey, enc);
  try {
    const pkRm = recipientPublicKey ?? (await publicKeyOf(recipientPrivateKey));
    return await extractAndExpand(dhResult, concat(enc, pkRm));
  } finally {
    dhResult.fill(0);
  }
}

// --- Key schedule and AEAD (RFC 9180 sections 5.1 and 5.2) -----------------------------------------

/**
 * KeySchedule of mode_base (psk and psk_id empty): the AEAD key and base nonce, with the values
 * on the way for the test vectors. The exporter secret is not derived: nothing exports.
 * @param {number} aeadId
 * @param {Uint8Array} sharedSecret
 * @param {Uint8Array} info
 */
async function keySchedule(aeadId, sharedSecret, info) {
  const nk = aeadKeyBytes(aeadId);
  const suiteId = hpkeSuiteId(aeadId);
  const empty = new Uint8Array(0);
  const pskIdHash = await labeledExtract(suiteId, empty, "psk_id_hash", empty);
  const infoHash = await labeledExtract(suiteId, empty, "info_hash", info);
  const keyScheduleContext = concat(Uint8Array.of(MODE_BASE), pskIdHash, infoHash);
  const secret = await labeledExtract(suiteId, sharedSecret, "secret", empty);
  const key = await labeledExpand(suiteId, secret, "key", keyScheduleContext, nk);
  const baseNonce = await labeledExpand(suiteId, secret, "base_nonce", keyScheduleContext, NONCE_BYTES);
  return { keyScheduleContext, secret, key, baseNonce };
}

/**
 * ComputeNonce(seq) = base_nonce XOR I2OSP(seq, Nn).
 * @param {Uint8Array} baseNonce
 * @param {number} seq
 */
function computeNonce(baseNonce, seq) {
  const nonce = i2osp(seq, NONCE_BYTES);
  for (let i = 0; i < NONCE_BYTES; i++) nonce[i] ^= baseNonce[i];
  return nonce;
}

/** The only sequence number a single-shot context uses. */
const SINGLE_SHOT_SEQ = 0;

/**
 * The AEAD key (non-extractable) and nonce of a single-shot context; wipes the key schedule's bytes.
 * @param {number} aeadId
 * @param {Uint8Array} sharedSecret
 * @param {Uint8Array} info
 * @param {KeyUsage} usage
 */
async function singleShotContext(aeadId, sharedSecret, info, usage) {
  const { secret, key, baseNonce } = await keySchedule(aeadId, sharedSecret, info);
  try {
    const aesKey = await crypto.subtle.importKey("raw", buf(key), "AES-GCM", false, [usage]);
    return { aesKey, nonce: computeNonce(baseNonce, SINGLE_SHOT_SEQ) };
  } finally {
    for (const bytes of [sharedSecret, secret, key, baseNonce]) bytes.fill(0);
  }
}

// --- Single-shot API (RFC 9180 section 6.1) -----------------------------------------------------------

/**
 * Seal `plaintext` to the holder of `recipientPublicKey`, binding `info` (the application's
 * context, which both sides must agree on) and authenticating `aad`.
 * @param {Uint8Array} recipientPublicKey 32 raw bytes.
 * @param {Uint8Array} info
 * @param {Uint8Array} aad
 * @param {Uint8Array} plaintext
 * @param {SealOptions} [opts]
 * @returns {Promise<{ enc: Uint8Array, ciphertext: Uint8Array }>} `ciphertext` ends with the 16-byte tag.
 */
export async function seal(recipientPublicKey, info, aad, plaintext, opts = {}) {
  const aeadId = opts.aead ?? DEFAULT_AEAD_ID;
  aeadKeyBytes(aeadId); // an unsupported AEAD throws before any key work
  const { enc, sharedSecret } = await encap(recipientPublicKey, opts.ephemeral);
  const { aesKey, nonce } = await singleShotContext(aeadId, sharedSecret, info, "encrypt");
  const ciphertext = await crypto.subtle.encrypt({ name: "AES-GCM", iv: nonce, additionalData: buf(aad), tagLength: TAG_BYTES * 8 }, aesKey, buf(plaintext));
  return { enc, ciphertext: new Uint8Array(ciphertext) };
}

/**
 * Open what {@link seal} sealed. Throws {@link HpkeError}: `malformed` for a wrong-length `enc`
 * or ciphertext or an unusable `enc`, `authentication` when the ciphertext, `aad`, `info` or key
 * does not match.
 * @param {CryptoKey} recipientPrivateKey
 * @param {Uint8Array} enc
 * @param {Uint8Array} info
 * @param {Uint8Array} aad
 * @param {Uint8Array} ciphertext
 * @param {OpenOptions} [opts]
 * @returns {Promise<Uint8Array>} The plaintext.
 */
export async function open(recipientPrivateKey, enc, info, aad, ciphertext, opts = {}) {
  const aeadId = opts.aead ?? DEFAULT_AEAD_ID;
  aeadKeyBytes(aeadId); // an unsupported AEAD throws before any key work
  if (enc.length !== ENC_BYTES) throw new HpkeError("malformed", `HPKE enc must be ${ENC_BYTES} bytes, not ${enc.length}`);
  if (ciphertext.length < TAG_BYTES) throw new HpkeError("malformed", "HPKE ciphertext shorter than its tag");
  const sharedSecret = await decap(enc, recipientPrivateKey, opts.recipientPublicKey);
  const { aesKey, nonce } = await singleShotContext(aeadId, sharedSecret, info, "decrypt");
  try {
    const plaintext = await crypto.subtle.decrypt({ name: "AES-GCM", iv: nonce, additionalData: buf(aad), tagLength: TAG_BYTES * 8 }, aesKey, buf(ciphertext));
    return new Uint8Array(plaintext);
  } catch {
    throw new HpkeError("authentication", "HPKE open failed: the ciphertext, aad, info or private key does not match");
  }
}

/**
 * {@link seal}, as one byte string: `enc ‖ ciphertext`.
 * @param {Uint8Array} recipientPublicKey
 * @param {Uint8Array} info
 * @param {Uint8Array} aad
 * @param {Uint8Array} plaintext
 * @param {SealOptions} [opts]
 */
export async function sealToBytes(recipientPublicKey, info, aad, plaintext, opts = {}) {
  const { enc, ciphertext } = await seal(recipientPublicKey, info, aad, plaintext, opts);
  return concat(enc, ciphertext);
}

/**
 * {@link open} of `enc ‖ ciphertext` as {@link sealToBytes} writes it.
 * @param {CryptoKey} recipientPrivateKey
 * @param {Uint8Array} sealed
 * @param {Uint8Array} info
 * @param {Uint8Array} aad
 * @param {OpenOptions} [opts]
 */
export function openFromBytes(recipientPrivateKey, sealed, info, aad, opts = {}) {
  if (sealed.length < ENC_BYTES + TAG_BYTES) return Promise.reject(new HpkeError("malformed", "HPKE message shorter than enc and tag"));
  return open(recipientPrivateKey, sealed.subarray(0, ENC_BYTES), info, aad, sealed.subarray(ENC_BYTES), opts);
}

/**
 * The values RFC 9180 Appendix A lists for a base-mode setup: `enc` and the shared secret of
 * both sides, the key schedule context, secret, key, base nonce, and the nonce of sequence 0.
 * For test vectors only: seal and open never let the key bytes out.
 * @param {Uint8Array} recipientPublicKey
 * @param {CryptoKey} recipientPrivateKey
 * @param {X25519KeyPair} ephemeral
 * @param {Uint8Array} info
 * @param {number} aeadId
 */
export async function baseSetupForVectors(recipientPublicKey, recipientPrivateKey, ephemeral, info, aeadId) {
  const { enc, sharedSecret } = await encap(recipientPublicKey, ephemeral);
  const recipientSharedSecret = await decap(enc, recipientPrivateKey);
  const schedule = await keySchedule(aeadId, sharedSecret, info);
  return { enc, sharedSecret, recipientSharedSecret, ...schedule, nonce: computeNonce(schedule.baseNonce, SINGLE_SHOT_SEQ) };
}
