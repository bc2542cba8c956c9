// The web demo's HPKE (web-demo/assets/e2ee/hpke.js) in Node: RFC 9180 Appendix A.1.1 byte for
// byte (crates/e2ee/test-vectors/hpke.json), a round trip with Consult's AES-256-GCM suite, and
// every kind of mismatch refused with a clear error. Then the zero-knowledge recording's key wrap
// (web-demo/assets/e2ee/recording-key.js): the `consult_epoch_key` vector, which the Rust side
// opens too, reproduced byte for byte, and the key-file and recording-key checks of the pages.
//
// Run: cd tests/browser && node --test hpke-vectors.test.mjs   (Node 20: WebCrypto with X25519)

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";

import { REPO_ROOT } from "./harness.mjs";

const E2EE = join(REPO_ROOT, "web-demo", "assets", "e2ee");
const { fromHex, toHex, utf8 } = await import(join(E2EE, "bytes.js"));
const hpke = await import(join(E2EE, "hpke.js"));
const recordingKey = await import(join(E2EE, "recording-key.js"));
const { kidOf, STREAM_MEDIA } = await import(join(E2EE, "schedule.js"));
const { toBase64 } = await import(join(E2EE, "bytes.js"));

const VECTORS = JSON.parse(readFileSync(join(REPO_ROOT, "crates", "e2ee", "test-vectors", "hpke.json"), "utf8"));
const A11 = VECTORS.rfc9180_a1_1;
const EPOCH_KEY = VECTORS.consult_epoch_key;

/**
 * The open must fail as an authentication failure, with a message that says so.
 * @param {Promise<unknown>} promise
 * @param {string} what
 */
async function refusedAsUnauthentic(promise, what) {
  await assert.rejects(
    promise,
    (/** @type {any} */ err) => err instanceof hpke.HpkeError && err.reason === "authentication" && /HPKE open failed/.test(err.message),
    what,
  );
}

describe("RFC 9180 Appendix A.1.1 (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM), base mode", () => {
  test("the vector file holds A.1.1 with every value of its length", () => {
    assert.match(A11.source, /RFC 9180.*A\.1\.1/);
    assert.deepEqual([A11.mode, A11.kem_id, A11.kdf_id, A11.aead_id], [0, hpke.KEM_ID, hpke.KDF_ID, hpke.AEAD_ID.AES_128_GCM]);
    const lengths = { ikmE: 32, pkEm: 32, skEm: 32, ikmR: 32, pkRm: 32, skRm: 32, enc: 32, shared_secret: 32, key_schedule_context: 65, secret: 32, key: 16, base_nonce: 12 };
    for (const [name, bytes] of Object.entries(lengths)) assert.equal(fromHex(A11[name]).length, bytes, name);
    const [first] = A11.encryptions;
    assert.equal(first.sequence_number, 0);
    assert.equal(fromHex(first.ct).length, fromHex(first.pt).length + hpke.TAG_BYTES);
  });

  test("DeriveKeyPair: ikmE and ikmR give skEm, pkEm, skRm and pkRm; the raw private keys import", async () => {
    for (const [ikm, sk, pk] of [["ikmE", "skEm", "pkEm"], ["ikmR", "skRm", "pkRm"]]) {
      const derived = await hpke.deriveKeyPair(fromHex(A11[ikm]));
      assert.equal(toHex(derived.publicKey), A11[pk], pk);
      const jwk = await crypto.subtle.exportKey("jwk", derived.privateKey);
      assert.equal(toHex(Buffer.from(jwk.d ?? "", "base64url")), A11[sk], sk);
      const imported = await hpke.importRecipientPrivateKey(fromHex(A11[sk]));
      assert.equal(toHex(await hpke.publicKeyOf(imported)), A11[pk], `${sk} imported`);
    }
  });

  test("enc, shared secret, key schedule, key, base nonce and nonce of sequence 0", async () => {
    const skE = await hpke.importRecipientPrivateKey(fromHex(A11.skEm));
    const skR = await hpke.importRecipientPrivateKey(fromHex(A11.skRm));
    const setup = await hpke.baseSetupForVectors(fromHex(A11.pkRm), skR, { privateKey: skE, publicKey: fromHex(A11.pkEm) }, fromHex(A11.info), A11.aead_id);
    assert.equal(toHex(setup.enc), A11.enc, "enc");
    assert.equal(toHex(setup.sharedSecret), A11.shared_secret, "shared secret (Encap)");
    assert.equal(toHex(setup.recipientSharedSecret), A11.shared_secret, "shared secret (Decap)");
    assert.equal(toHex(setup.keyScheduleContext), A11.key_schedule_context, "key_schedule_context");
    assert.equal(toHex(setup.secret), A11.secret, "secret");
    assert.equal(toHex(setup.key), A11.key, "key");
    assert.equal(toHex(setup.baseNonce), A11.base_nonce, "base_nonce");
    assert.equal(toHex(setup.nonce), A11.encryptions[0].nonce, "nonce of sequence 0");
  });

  test("seal with the fixed ephemeral key gives the ciphertext of sequence 0, and open returns the plaintext", async () => {
    const [first] = A11.encryptions;
    const skE = await hpke.importRecipientPrivateKey(fromHex(A11.skEm));
    const ephemeral = { privateKey: skE, publicKey: fromHex(A11.pkEm) };
    const opts = { aead: A11.aead_id, ephemeral };
    const { enc, ciphertext } = await hpke.seal(fromHex(A11.pkRm), fromHex(A11.info), fromHex(first.aad), fromHex(first.pt), opts);
    assert.equal(toHex(enc), A11.enc);
    assert.equal(toHex(ciphertext), first.ct);

    const skR = await hpke.importRecipientPrivateKey(fromHex(A11.skRm));
    const opened = await hpke.open(skR, fromHex(A11.enc), fromHex(A11.info), fromHex(first.aad), fromHex(first.ct), { aead: A11.aead_id });
    assert.equal(toHex(opened), first.pt);
    const wire = await hpke.sealToBytes(fromHex(A11.pkRm), fromHex(A11.info), fromHex(first.aad), fromHex(first.pt), opts);
    assert.equal(toHex(wire), A11.enc + first.ct, "wire form is enc ‖ ciphertext");
  });
});

describe("Consult's suite (AES-256-GCM): round trip and refusals", () => {
  const info = utf8("consult/hpke-test/v1");
  const aad = utf8("record 42");
  const plaintext = utf8("Consultation notes: nothing to report ✓");

  test("a generated recipient key pair: seal and open, and the private key can be saved", async () => {
    const recipient = await hpke.generateRecipientKeyPair();
    assert.equal(recipient.publicKey.length, 32);
    assert.equal(recipient.privateKey.extractable, true);
    assert.equal((await crypto.subtle.exportKey("pkcs8", recipient.privateKey)).byteLength, 48);
    assert.deepEqual(await hpke.publicKeyOf(recipient.privateKey), recipient.publicKey);

    const { enc, ciphertext } = await hpke.seal(recipient.publicKey, info, aad, plaintext);
    assert.equal(enc.length, hpke.ENC_BYTES);
    assert.equal(ciphertext.length, plaintext.length + hpke.TAG_BYTES);
    assert.deepEqual(await hpke.open(recipient.privateKey, enc, info, aad, ciphertext), plaintext);
    assert.deepEqual(await hpke.open(recipient.privateKey, enc, info, aad, ciphertext, { aead: hpke.DEFAULT_AEAD_ID }), plaintext);

    // Each seal has its own ephemeral key: the same message never seals the same way twice.
    const again = await hpke.seal(recipient.publicKey, info, aad, plaintext);
    assert.notEqual(toHex(again.enc), toHex(enc));
    assert.notEqual(toHex(again.ciphertext), toHex(ciphertext));

    // Empty plaintext, info and aad are allowed.
    const empty = new Uint8Array(0);
    const sealed = await hpke.sealToBytes(recipient.publicKey, empty, empty, empty);
    assert.equal(sealed.length, hpke.ENC_BYTES + hpke.TAG_BYTES);
    assert.deepEqual(await hpke.openFromBytes(recipient.privateKey, sealed, empty, empty), empty);

    // A saved (PKCS #8) key, imported back without extractability, opens with the public key given.
    const pkcs8 = await crypto.subtle.exportKey("pkcs8", recipient.privateKey);
    const restored = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "X25519" }, false, ["deriveBits"]);
    await assert.rejects(hpke.open(restored, enc, info, aad, ciphertext), /not extractable/);
    assert.deepEqual(await hpke.open(restored, enc, info, aad, ciphertext, { recipientPublicKey: recipient.publicKey }), plaintext);
  });

  test("AES-256-GCM and AES-128-GCM are separate suites: sealed under one, refused under the other", async () => {
    const recipient = await hpke.generateRecipientKeyPair();
    const { enc, ciphertext } = await hpke.seal(recipient.publicKey, info, aad, plaintext, { aead: hpke.AEAD_ID.AES_128_GCM });
    assert.deepEqual(await hpke.open(recipient.privateKey, enc, info, aad, ciphertext, { aead: hpke.AEAD_ID.AES_128_GCM }), plaintext);
    await refusedAsUnauthentic(hpke.open(recipient.privateKey, enc, info, aad, ciphertext), "AES-128 message opened as AES-256");
    await assert.rejects(hpke.seal(recipient.publicKey, info, aad, plaintext, { aead: 0x0003 }), RangeError, "ChaCha20Poly1305 is not implemented");
  });

  test("open refuses a flipped ciphertext byte, a wrong aad, a wrong info and a wrong private key", async () => {
    const recipient = await hpke.generateRecipientKeyPair();
    const { enc, ciphertext } = await hpke.seal(recipient.publicKey, info, aad, plaintext);

    for (const at of [0, 10, ciphertext.length - 1]) {
      const flipped = ciphertext.slice();
      flipped[at] ^= 0x01;
      await refusedAsUnauthentic(hpke.open(recipient.privateKey, enc, info, aad, flipped), `ciphertext byte ${at} flipped`);
    }
    await refusedAsUnauthentic(hpke.open(recipient.privateKey, enc, info, utf8("record 43"), ciphertext), "wrong aad");
    await refusedAsUnauthentic(hpke.open(recipient.privateKey, enc, info, new Uint8Array(0), ciphertext), "missing aad");
    await refusedAsUnauthentic(hpke.open(recipient.privateKey, enc, utf8("consult/hpke-test/v2"), aad, ciphertext), "wrong info");
    const stranger = await hpke.generateRecipientKeyPair();
    await refusedAsUnauthentic(hpke.open(stranger.privateKey, enc, info, aad, ciphertext), "wrong private key");
    // A changed enc is another ephemeral key: a different shared secret.
    const otherEnc = enc.slice();
    otherEnc[5] ^= 0x01;
    await refusedAsUnauthentic(hpke.open(recipient.privateKey, otherEnc, info, aad, ciphertext), "enc changed");

    // And the original still opens.
    assert.deepEqual(await hpke.open(recipient.privateKey, enc, info, aad, ciphertext), plaintext);
  });

  test("malformed input: wrong lengths and small-order public keys", async () => {
    const recipient = await hpke.generateRecipientKeyPair();
    const { enc, ciphertext } = await hpke.seal(recipient.publicKey, info, aad, plaintext);
    const malformed = (/** @type {any} */ err) => err instanceof hpke.HpkeError && err.reason === "malformed";

    await assert.rejects(hpke.open(recipient.privateKey, enc.subarray(0, 31), info, aad, ciphertext), malformed, "short enc");
    await assert.rejects(hpke.open(recipient.privateKey, enc, info, aad, ciphertext.subarray(0, 15)), malformed, "shorter than the tag");
    await assert.rejects(hpke.openFromBytes(recipient.privateKey, enc, info, aad), malformed, "enc without ciphertext");
    await assert.rejects(hpke.seal(recipient.publicKey.subarray(1), info, aad, plaintext), malformed, "short recipient key");
    await assert.rejects(hpke.importRecipientPrivateKey(new Uint8Array(31)), malformed, "short private key");

    // Small-order points (0 and 1) give an all-zero X25519 result: refused on both sides.
    for (const point of [new Uint8Array(32), Uint8Array.of(1, ...new Array(31).fill(0))]) {
      await assert.rejects(hpke.seal(point, info, aad, plaintext), malformed, `seal to small-order ${toHex(point.subarray(0, 1))}`);
      await assert.rejects(hpke.open(recipient.privateKey, point, info, aad, ciphertext), malformed, `enc of small order ${toHex(point.subarray(0, 1))}`);
    }
  });
});

describe("zero-knowledge recording: an SFrame base key wrapped to the clinician's recording key (consult_epoch_key)", () => {
  const v = EPOCH_KEY;
  const context = { recordingId: v.recording_id, participantId: v.participant_id, kid: BigInt(v.kid), suite: v.suite };

  test("the vector holds Consult's suite, a 16-byte suite-4 base key, and the KID of tag and epoch", () => {
    assert.deepEqual([v.mode, v.kem_id, v.kdf_id, v.aead_id], [0, hpke.KEM_ID, hpke.KDF_ID, hpke.AEAD_ID.AES_256_GCM]);
    const lengths = { skRm: 32, pkRm: 32, skEm: 32, pkEm: 32, base_key: 16, aad: 42 };
    for (const [name, bytes] of Object.entries(lengths)) assert.equal(fromHex(v[name]).length, bytes, name);
    assert.equal(v.suite, 4, "AES_128_GCM_SHA256_128");
    assert.equal(fromHex(v.wrapped).length, hpke.ENC_BYTES + 16 + hpke.TAG_BYTES, "enc ‖ ciphertext of the 16-byte key ‖ tag");
    assert.equal(v.kid, Number(kidOf(v.kid_tag, STREAM_MEDIA, v.kid_epoch)), "KID = tag << 24 | 0 << 16 | epoch");
    assert.equal(v.kid, v.kid_tag * 2 ** 24 + v.kid_epoch);
    assert.equal(v.info, toHex(utf8(v.info_text)));
    assert.equal(toHex(recordingKey.RECORDING_KEY_INFO), v.info, "the info the pages seal with");
  });

  test("the aad is recording id ‖ participant id ‖ KID (u64) ‖ suite (u16), big-endian", () => {
    const aad = recordingKey.recordingKeyAad(context);
    assert.equal(toHex(aad), v.aad);
    assert.equal(toHex(aad.subarray(0, 16)), v.recording_id.replace(/-/g, ""));
    assert.equal(toHex(aad.subarray(16, 32)), v.participant_id.replace(/-/g, ""));
    assert.equal(toHex(aad.subarray(32, 40)), v.kid.toString(16).padStart(16, "0"));
    assert.equal(toHex(aad.subarray(40)), "0004");
  });

  test("the pages' wrap with the fixed ephemeral key gives `wrapped`, and the recording key opens it", async () => {
    const skR = await hpke.importRecipientPrivateKey(fromHex(v.skRm));
    assert.equal(toHex(await hpke.publicKeyOf(skR)), v.pkRm);
    assert.equal(toBase64(fromHex(v.pkRm)), v.recording_key_base64);
    const pkR = recordingKey.parseRecordingPublicKey(v.recording_key_base64);
    assert.equal(toHex(pkR), v.pkRm, "the key as the service sends it");

    const skE = await hpke.importRecipientPrivateKey(fromHex(v.skEm));
    const ephemeral = { privateKey: skE, publicKey: fromHex(v.pkEm) };
    const wrapped = await recordingKey.wrapEpochKey(pkR, context, fromHex(v.base_key), { ephemeral });
    assert.equal(toHex(wrapped), v.wrapped);
    assert.equal(toBase64(wrapped), v.wrapped_base64);
    assert.equal(toHex(wrapped.subarray(0, hpke.ENC_BYTES)), v.pkEm, "enc is the ephemeral public key");

    const opened = await hpke.openFromBytes(skR, fromHex(v.wrapped), recordingKey.RECORDING_KEY_INFO, fromHex(v.aad));
    assert.equal(toHex(opened), v.base_key);

    // A real wrap has its own ephemeral key, and opens the same way.
    const fresh = await recordingKey.wrapEpochKey(pkR, context, fromHex(v.base_key));
    assert.notEqual(toHex(fresh), v.wrapped);
    assert.equal(toHex(await hpke.openFromBytes(skR, fresh, recordingKey.RECORDING_KEY_INFO, recordingKey.recordingKeyAad(context))), v.base_key);
  });

  test("bound to the recording, the sender, the KID and the suite: any other one does not open", async () => {
    const skR = await hpke.importRecipientPrivateKey(fromHex(v.skRm));
    const others = {
      "another recording": { ...context, recordingId: "0b8e7c1a-5d2f-4e63-9a41-7c3b2d1e0f9b" },
      "another sender": { ...context, participantId: v.recording_id },
      "another KID": { ...context, kid: context.kid + 1n },
      "another suite": { ...context, suite: 5 },
    };
    for (const [what, other] of Object.entries(others)) {
      await refusedAsUnauthentic(hpke.openFromBytes(skR, fromHex(v.wrapped), recordingKey.RECORDING_KEY_INFO, recordingKey.recordingKeyAad(other)), what);
    }
    await refusedAsUnauthentic(hpke.openFromBytes(skR, fromHex(v.wrapped), utf8("consult recording epoch key v2"), fromHex(v.aad)), "another info");
    const stranger = await hpke.generateRecipientKeyPair();
    await refusedAsUnauthentic(hpke.openFromBytes(stranger.privateKey, fromHex(v.wrapped), recordingKey.RECORDING_KEY_INFO, fromHex(v.aad)), "another recording key");
  });

  test("malformed ids and recording keys are refused before anything is sealed", async () => {
    for (const id of ["", "0b8e7c1a5d2f4e639a417c3b2d1e0f9a", "0b8e7c1a-5d2f-4e63-9a41-7c3b2d1e0f9", "zb8e7c1a-5d2f-4e63-9a41-7c3b2d1e0f9a"]) {
      assert.throws(() => recordingKey.uuidBytes(id), recordingKey.RecordingKeyError, JSON.stringify(id));
    }
    assert.throws(() => recordingKey.recordingKeyAad({ ...context, participantId: "patient" }), recordingKey.RecordingKeyError);
    for (const key of [undefined, null, "", "not base64!", toBase64(new Uint8Array(31)), toBase64(new Uint8Array(33)), v.recording_key_base64.replace(/=$/, "")]) {
      assert.throws(() => recordingKey.parseRecordingPublicKey(key), recordingKey.RecordingKeyError, JSON.stringify(key));
    }
    // A small-order point is no recording key: sealing to it fails rather than wrapping to nobody.
    await assert.rejects(recordingKey.wrapEpochKey(new Uint8Array(32), context, fromHex(v.base_key)), (/** @type {any} */ err) => err instanceof hpke.HpkeError && err.reason === "malformed");
  });

  test("a key file gives its public key only; anything else is refused with a message for people", () => {
    const keyFile = {
      format: 1,
      kind: "consult-recording-key",
      public_key: v.recording_key_base64,
      kdf: { algorithm: "argon2id", salt: "c2FsdA==", m_cost: 19456, t_cost: 2, p_cost: 1 },
      nonce: "AAAAAAAAAAAAAAAA",
      ciphertext: "c2VhbGVkIHByaXZhdGUga2V5",
    };
    assert.equal(recordingKey.publicKeyOfKeyFile(JSON.stringify(keyFile)), v.recording_key_base64);
    assert.equal(recordingKey.recordingKeyFingerprint(v.recording_key_base64), v.recording_key_base64.slice(0, 8));
    const refused = {
      "not JSON": "recording public key: " + v.recording_key_base64,
      "JSON of another kind": JSON.stringify({ ...keyFile, kind: "consult-session" }),
      "a later format": JSON.stringify({ ...keyFile, format: 2 }),
      "a short public key": JSON.stringify({ ...keyFile, public_key: toBase64(new Uint8Array(16)) }),
      "no public key": JSON.stringify({ ...keyFile, public_key: undefined }),
    };
    for (const [what, text] of Object.entries(refused)) {
      assert.throws(() => recordingKey.publicKeyOfKeyFile(text), (/** @type {any} */ err) => err instanceof recordingKey.RecordingKeyError && /[A-Z].*\.$/.test(err.message), what);
    }
  });
});
