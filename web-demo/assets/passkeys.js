// @ts-check
/**
 * Passkeys in the browser: the WebAuthn ceremonies the service starts (`navigator.credentials`
 * with the options it sends, binary fields base64url in its JSON) and their answers sent back as
 * WebAuthn JSON, for signing in and for registering one.
 */

import * as api from "./api.js";

/** @typedef {import('./protocol.js').PasskeyChallenge} PasskeyChallenge */
/** @typedef {import('./protocol.js').LoginResponse} LoginResponse */
/** @typedef {import('./protocol.js').PasskeySummary} PasskeySummary */

/** Whether this browser can use passkeys here (a secure context with WebAuthn). */
export function passkeysAvailable() {
  return window.isSecureContext && typeof PublicKeyCredential === "function" && !!navigator.credentials;
}

/** The person closed the browser's passkey prompt, or no passkey of this site was there. */
export class PasskeyCancelled extends Error {
  constructor() {
    super("No passkey was used. Try again, or sign in another way.");
    this.name = "PasskeyCancelled";
  }
}

/**
 * @param {string} text base64url, unpadded
 * @returns {ArrayBuffer}
 */
function fromBase64Url(text) {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return bytes.buffer;
}

/**
 * @param {ArrayBuffer | null} buffer
 * @returns {string | null}
 */
function toBase64Url(buffer) {
  if (!buffer) return null;
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/**
 * A copy without `null` members (WebAuthn dictionaries take absent, not null).
 * @param {any} value
 * @returns {any}
 */
function withoutNulls(value) {
  if (Array.isArray(value)) return value.map(withoutNulls);
  if (value && typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value)
        .filter(([, v]) => v !== null && v !== undefined)
        .map(([k, v]) => [k, withoutNulls(v)]),
    );
  }
  return value;
}

/**
 * @param {any} list
 * @returns {PublicKeyCredentialDescriptor[] | undefined}
 */
function descriptors(list) {
  if (!Array.isArray(list)) return undefined;
  return list.map((d) => ({ ...d, id: fromBase64Url(d.id) }));
}

/**
 * Run a browser call that shows the passkey prompt; a refusal by the person becomes
 * `PasskeyCancelled`.
 * @template T
 * @param {() => Promise<T>} prompt
 * @returns {Promise<T>}
 */
async function asking(prompt) {
  try {
    return await prompt();
  } catch (err) {
    if (err instanceof DOMException && (err.name === "NotAllowedError" || err.name === "AbortError")) {
      throw new PasskeyCancelled();
    }
    throw err;
  }
}

/**
 * Answer a sign-in ceremony with a passkey of this site.
 * @param {PasskeyChallenge} challenge
 * @returns {Promise<any>} The `PublicKeyCredential` as WebAuthn JSON.
 */
async function answerSignIn(challenge) {
  const publicKey = withoutNulls(challenge.options.publicKey);
  publicKey.challenge = fromBase64Url(publicKey.challenge);
  publicKey.allowCredentials = descriptors(publicKey.allowCredentials);
  const credential = await asking(() => navigator.credentials.get({ publicKey }));
  if (!(credential instanceof PublicKeyCredential)) throw new PasskeyCancelled();
  const response = /** @type {AuthenticatorAssertionResponse} */ (credential.response);
  return {
    id: credential.id,
    rawId: toBase64Url(credential.rawId),
    type: credential.type,
    response: {
      authenticatorData: toBase64Url(response.authenticatorData),
      clientDataJSON: toBase64Url(response.clientDataJSON),
      signature: toBase64Url(response.signature),
      userHandle: toBase64Url(response.userHandle),
    },
    extensions: {},
  };
}

/**
 * Sign in with a passkey: as the second factor after `email` and `password`, or, without them,
 * with whichever passkey of this site the person picks.
 * @param {{ email?: string, password?: string }} [factors]
 * @returns {Promise<LoginResponse>}
 */
export async function signInWithPasskey(factors = {}) {
  const challenge = await api.startPasskeySignIn(factors);
  const credential = await answerSignIn(challenge);
  return api.finishPasskeySignIn({ ceremony: challenge.ceremony, credential });
}

/**
 * Register a new passkey for the signed-in account.
 * @param {string} name What the person calls it.
 * @param {string} password The account's password (asked again).
 * @returns {Promise<PasskeySummary>}
 */
export async function registerPasskey(name, password) {
  const challenge = await api.startPasskeyRegistration(password);
  const publicKey = withoutNulls(challenge.options.publicKey);
  publicKey.challenge = fromBase64Url(publicKey.challenge);
  publicKey.user = { ...publicKey.user, id: fromBase64Url(publicKey.user.id) };
  publicKey.excludeCredentials = descriptors(publicKey.excludeCredentials);
  const credential = await asking(() => navigator.credentials.create({ publicKey }));
  if (!(credential instanceof PublicKeyCredential)) throw new PasskeyCancelled();
  const response = /** @type {AuthenticatorAttestationResponse} */ (credential.response);
  const answer = {
    id: credential.id,
    rawId: toBase64Url(credential.rawId),
    type: credential.type,
    response: {
      attestationObject: toBase64Url(response.attestationObject),
      clientDataJSON: toBase64Url(response.clientDataJSON),
    },
    extensions: {},
  };
  return api.finishPasskeyRegistration({ ceremony: challenge.ceremony, name, credential: answer });
}
