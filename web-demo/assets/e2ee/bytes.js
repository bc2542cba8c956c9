// @ts-check
/**
 * Byte helpers shared by the E2EE modules (page, worker and the Node test suite): no DOM, no
 * globals but `TextEncoder`.
 */

const encoder = new TextEncoder();

/**
 * UTF-8 bytes of a string.
 * @param {string} text
 */
export function utf8(text) {
  return encoder.encode(text);
}

/**
 * One array holding every part in order.
 * @param {...Uint8Array} parts
 */
export function concat(...parts) {
  let length = 0;
  for (const part of parts) length += part.length;
  const out = new Uint8Array(length);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/**
 * Lower-case hex of bytes.
 * @param {Uint8Array} bytes
 */
export function toHex(bytes) {
  let out = "";
  for (const b of bytes) out += b.toString(16).padStart(2, "0");
  return out;
}

/**
 * Bytes of a hex string (throws on odd length or a non-hex digit).
 * @param {string} hex
 */
export function fromHex(hex) {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) throw new Error("not a hex string");
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/**
 * Standard base64 (with padding) of bytes.
 * @param {Uint8Array} bytes
 */
export function toBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

/**
 * Bytes of standard base64 (throws on anything else).
 * @param {string} text
 */
export function fromBase64(text) {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) throw new Error("not base64");
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

/**
 * Whether two byte arrays are equal (not constant-time: for public values only).
 * @param {Uint8Array} a
 * @param {Uint8Array} b
 */
export function bytesEqual(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Compare bytewise, like Rust's `Ord` for byte slices: negative, zero or positive.
 * @param {Uint8Array} a
 * @param {Uint8Array} b
 */
export function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

/**
 * `bytes` as a view WebCrypto accepts under TypeScript's `BufferSource` (an ArrayBuffer-backed
 * Uint8Array; copies only when the bytes live in a SharedArrayBuffer).
 * @param {Uint8Array} bytes
 * @returns {Uint8Array<ArrayBuffer>}
 */
export function buf(bytes) {
  return bytes.buffer instanceof ArrayBuffer ? /** @type {Uint8Array<ArrayBuffer>} */ (bytes) : new Uint8Array(bytes);
}
