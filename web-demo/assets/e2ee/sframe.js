// @ts-check
/**
 * SFrame (RFC 9605) with WebCrypto: the header, key and salt derivation, and AES-GCM sealing.
 * The Rust reference is `crates/e2ee/src/sframe.rs`; both read
 * `crates/e2ee/test-vectors/sframe.json`.
 *
 * - Header: `|X|K|Y|C|` then the KID bytes then the CTR bytes, each big-endian and minimal; a KID
 *   or CTR below 8 lives in the first byte itself (X or Y = 0).
 * - `secret = HKDF-Extract(salt = "", base_key)`;
 *   `key = HKDF-Expand(secret, "SFrame 1.0 Secret key " ‖ KID(u64) ‖ suite(u16), Nk)`,
 *   `salt = HKDF-Expand(secret, "SFrame 1.0 Secret salt " ‖ KID(u64) ‖ suite(u16), 12)`.
 *   WebCrypto's HKDF with an empty salt is exactly this: HKDF-Extract treats an empty salt as
 *   HashLen zero bytes (RFC 5869 section 2.2).
 * - `nonce = salt XOR CTR` (CTR left-padded to 12 bytes); AAD = `header ‖ metadata`; 16-byte tag.
 *
 * Suites 4 (`AES_128_GCM_SHA256_128`) and 5 (`AES_256_GCM_SHA512_128`) only, as in the Rust
 * crate: the AES-CTR-HMAC suites are not supported.
 *
 * KIDs and CTRs are `bigint` here (the header allows 64 bits, more than a JS number holds).
 */

import { buf, concat, utf8 } from "./bytes.js";

/**
 * @typedef {object} Suite
 * @property {4 | 5} id RFC 9605 cipher suite number.
 * @property {"SHA-256" | "SHA-512"} hash HKDF hash.
 * @property {16 | 32} keyBytes AEAD key length (Nk) and the length of base keys Consult makes.
 */

/** @type {Readonly<Record<4 | 5, Readonly<Suite>>>} */
export const SUITES = Object.freeze({
  4: Object.freeze({ id: 4, hash: "SHA-256", keyBytes: 16 }),
  5: Object.freeze({ id: 5, hash: "SHA-512", keyBytes: 32 }),
});

/** The suite Consult uses unless told otherwise. */
export const DEFAULT_SUITE = SUITES[4];

/** Nonce length (Nn) of both suites. */
export const NONCE_BYTES = 12;
/** Authentication tag length (Nt) of both suites. */
export const TAG_BYTES = 16;
/** Largest KID or CTR a header can carry. */
export const MAX_U64 = (1n << 64n) - 1n;

/**
 * The supported suite with this number, or null.
 * @param {unknown} id
 * @returns {Readonly<Suite> | null}
 */
export function suiteById(id) {
  return id === 4 || id === 5 ? SUITES[id] : null;
}

/** Why SFrame refused: the header or tag is missing, or authentication failed. */
export class SFrameError extends Error {
  /**
   * @param {"malformed" | "authentication"} reason
   * @param {string} message
   */
  constructor(reason, message) {
    super(message);
    this.name = "SFrameError";
    this.reason = reason;
  }
}

/**
 * Minimal big-endian bytes of a non-zero value (at most 8).
 * @param {bigint} value
 */
function minimalBytes(value) {
  /** @type {number[]} */
  const bytes = [];
  for (let v = value; v > 0n; v >>= 8n) bytes.unshift(Number(v & 0xffn));
  return bytes;
}

/**
 * Encode an SFrame header (RFC 9605 section 4.3).
 * @param {bigint} kid
 * @param {bigint} ctr
 * @returns {Uint8Array}
 */
export function encodeHeader(kid, ctr) {
  if (kid < 0n || kid > MAX_U64 || ctr < 0n || ctr > MAX_U64) throw new RangeError("KID and CTR are 64-bit unsigned");
  const kidBytes = kid < 8n ? [] : minimalBytes(kid);
  const ctrBytes = ctr < 8n ? [] : minimalBytes(ctr);
  const kidBits = kid < 8n ? Number(kid) << 4 : 0x80 | ((kidBytes.length - 1) << 4);
  const ctrBits = ctr < 8n ? Number(ctr) : 0x08 | (ctrBytes.length - 1);
  return Uint8Array.from([kidBits | ctrBits, ...kidBytes, ...ctrBytes]);
}

/**
 * Read the SFrame header at the start of `bytes`.
 * @param {Uint8Array} bytes
 * @returns {{ kid: bigint, ctr: bigint, length: number }}
 */
export function decodeHeader(bytes) {
  if (bytes.length < 1) throw new SFrameError("malformed", "no SFrame header");
  const config = bytes[0];
  const kidLength = config & 0x80 ? ((config >> 4) & 0x07) + 1 : 0;
  const ctrLength = config & 0x08 ? (config & 0x07) + 1 : 0;
  const length = 1 + kidLength + ctrLength;
  if (bytes.length < length) throw new SFrameError("malformed", "truncated SFrame header");
  let kid = kidLength ? 0n : BigInt((config >> 4) & 0x07);
  for (let i = 0; i < kidLength; i++) kid = (kid << 8n) | BigInt(bytes[1 + i]);
  let ctr = ctrLength ? 0n : BigInt(config & 0x07);
  for (let i = 0; i < ctrLength; i++) ctr = (ctr << 8n) | BigInt(bytes[1 + kidLength + i]);
  return { kid, ctr, length };
}

/**
 * `label ‖ KID (u64) ‖ suite (u16)`, the HKDF info of the key or the salt.
 * @param {"key" | "salt"} which
 * @param {bigint} kid
 * @param {Suite} suite
 */
function label(which, kid, suite) {
  const tail = new Uint8Array(10);
  const view = new DataView(tail.buffer);
  view.setBigUint64(0, kid);
  view.setUint16(8, suite.id);
  return concat(utf8(`SFrame 1.0 Secret ${which} `), tail);
}

/**
 * The base key as an HKDF key (raw bytes are imported, never kept by this module).
 * @param {Uint8Array | CryptoKey} baseKey
 */
async function hkdfKey(baseKey) {
  if (baseKey instanceof Uint8Array) {
    return crypto.subtle.importKey("raw", buf(baseKey), "HKDF", false, ["deriveBits", "deriveKey"]);
  }
  return baseKey;
}

/**
 * Import a base key for {@link SFrameKey.derive} (non-extractable, so it can be posted to a
 * worker without the bytes ever being readable again).
 * @param {Uint8Array} bytes
 */
export function importBaseKey(bytes) {
  return crypto.subtle.importKey("raw", buf(bytes), "HKDF", false, ["deriveBits", "deriveKey"]);
}

/**
 * The SFrame key and salt bytes of a KID, as RFC 9605 Appendix C lists them. For test vectors
 * only: {@link SFrameKey.derive} never lets the key out of WebCrypto.
 * @param {Suite} suite
 * @param {bigint} kid
 * @param {Uint8Array | CryptoKey} baseKey
 */
export async function deriveKeyAndSaltBytes(suite, kid, baseKey) {
  const base = await hkdfKey(baseKey);
  const params = (/** @type {"key" | "salt"} */ which) => ({ name: "HKDF", hash: suite.hash, salt: new Uint8Array(0), info: label(which, kid, suite) });
  const key = new Uint8Array(await crypto.subtle.deriveBits(params("key"), base, suite.keyBytes * 8));
  const salt = new Uint8Array(await crypto.subtle.deriveBits(params("salt"), base, NONCE_BYTES * 8));
  return { key, salt };
}

/**
 * `salt XOR CTR`, the CTR big-endian in the nonce's last 8 bytes.
 * @param {Uint8Array} salt
 * @param {bigint} ctr
 */
export function nonceFor(salt, ctr) {
  const nonce = new Uint8Array(NONCE_BYTES);
  new DataView(nonce.buffer).setBigUint64(NONCE_BYTES - 8, ctr);
  for (let i = 0; i < NONCE_BYTES; i++) nonce[i] ^= salt[i];
  return nonce;
}

/**
 * The SFrame key of one KID: seals (sender) and opens (receiver) frames under it.
 */
export class SFrameKey {
  /**
   * @param {Suite} suite
   * @param {bigint} kid
   * @param {CryptoKey} key AES-GCM, non-extractable.
   * @param {Uint8Array} salt
   * @private
   */
  constructor(suite, kid, key, salt) {
    this.suite = suite;
    this.kid = kid;
    /** @private */
    this.key = key;
    /** @private */
    this.salt = salt;
  }

  /**
   * Derive the key and salt of `kid` from a base key.
   * @param {Suite} suite
   * @param {bigint} kid
   * @param {Uint8Array | CryptoKey} baseKey
   */
  static async derive(suite, kid, baseKey) {
    const base = await hkdfKey(baseKey);
    const key = await crypto.subtle.deriveKey(
      { name: "HKDF", hash: suite.hash, salt: new Uint8Array(0), info: label("key", kid, suite) },
      base,
      { name: "AES-GCM", length: suite.keyBytes * 8 },
      false,
      ["encrypt", "decrypt"],
    );
    const salt = new Uint8Array(
      await crypto.subtle.deriveBits(
        { name: "HKDF", hash: suite.hash, salt: new Uint8Array(0), info: label("salt", kid, suite) },
        base,
        NONCE_BYTES * 8,
      ),
    );
    return new SFrameKey(suite, kid, key, salt);
  }

  /**
   * Protect `plaintext` under counter `ctr`, authenticating `metadata` too: `header ‖ ciphertext ‖ tag`
   * (the metadata is not included; the frame formats place it).
   * @param {bigint} ctr
   * @param {Uint8Array} metadata
   * @param {Uint8Array} plaintext
   */
  async seal(ctr, metadata, plaintext) {
    const header = encodeHeader(this.kid, ctr);
    const sealed = await crypto.subtle.encrypt(
      { name: "AES-GCM", iv: nonceFor(this.salt, ctr), additionalData: concat(header, metadata), tagLength: TAG_BYTES * 8 },
      this.key,
      buf(plaintext),
    );
    return concat(header, new Uint8Array(sealed));
  }

  /**
   * Open `header ‖ ciphertext ‖ tag` whose metadata is `metadata`. Throws {@link SFrameError}.
   * @param {Uint8Array} metadata
   * @param {Uint8Array} sframe
   * @returns {Promise<{ ctr: bigint, plaintext: Uint8Array }>}
   */
  async open(metadata, sframe) {
    const header = decodeHeader(sframe);
    if (sframe.length < header.length + TAG_BYTES) throw new SFrameError("malformed", "SFrame shorter than header and tag");
    if (header.kid !== this.kid) throw new SFrameError("authentication", "SFrame under another KID");
    try {
      const plaintext = await crypto.subtle.decrypt(
        {
          name: "AES-GCM",
          iv: nonceFor(this.salt, header.ctr),
          additionalData: concat(sframe.subarray(0, header.length), metadata),
          tagLength: TAG_BYTES * 8,
        },
        this.key,
        buf(sframe.subarray(header.length)),
      );
      return { ctr: header.ctr, plaintext: new Uint8Array(plaintext) };
    } catch {
      throw new SFrameError("authentication", "SFrame authentication failed");
    }
  }
}
