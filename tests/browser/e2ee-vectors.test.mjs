// The web demo's end-to-end encryption modules (web-demo/assets/e2ee/) in Node, against the test
// vectors the Rust crate reads too (crates/e2ee/test-vectors/sframe.json): RFC 9605 Appendix C
// (headers; suites 4 and 5), Consult's codec frame formats and key agreement; then a whole key
// schedule between two participants, and every kind of bad input rejected and counted.
//
// Run: cd tests/browser && node --test e2ee-vectors.test.mjs   (Node 20: WebCrypto with X25519)

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";

import { REPO_ROOT } from "./harness.mjs";

const E2EE = join(REPO_ROOT, "web-demo", "assets", "e2ee");
const { fromHex, toHex, toBase64 } = await import(join(E2EE, "bytes.js"));
const sframe = await import(join(E2EE, "sframe.js"));
const format = await import(join(E2EE, "format.js"));
const { FrameProtector, RejectedError, protectMessage, unprotectMessage } = await import(join(E2EE, "protector.js"));
const schedule = await import(join(E2EE, "schedule.js"));
const { SealedChannel } = await import(join(E2EE, "sealed-channel.js"));

const VECTORS = JSON.parse(readFileSync(join(REPO_ROOT, "crates", "e2ee", "test-vectors", "sframe.json"), "utf8"));

/**
 * The entries of one of Consult's own vector arrays (written by the Rust crate): required.
 * @param {string} name
 * @returns {any[]}
 */
function consultVectors(name) {
  const list = VECTORS[name];
  assert.ok(Array.isArray(list) && list.length > 0, `sframe.json has ${name} vectors`);
  return list;
}

/** @param {any} fp */
const fingerprintOf = (fp) => ({ hash: fp.hash, digest: fromHex(fp.digest) });

describe("RFC 9605 test vectors", () => {
  test("every header encoding of Appendix C.1 encodes and decodes byte for byte", () => {
    assert.ok(VECTORS.rfc9605_header.length >= 289, "all header vectors present");
    for (const v of VECTORS.rfc9605_header) {
      const kid = BigInt(v.kid);
      const ctr = BigInt(v.ctr);
      assert.equal(toHex(sframe.encodeHeader(kid, ctr)), v.encoded, `encode kid ${v.kid} ctr ${v.ctr}`);
      const decoded = sframe.decodeHeader(fromHex(v.encoded));
      assert.deepEqual(decoded, { kid, ctr, length: v.encoded.length / 2 }, `decode ${v.encoded}`);
    }
  });

  test("suites 4 and 5 of Appendix C.4: key, salt, nonce, ciphertext and decryption", async () => {
    assert.deepEqual(VECTORS.rfc9605_sframe.map((/** @type {any} */ v) => v.cipher_suite), [4, 5]);
    for (const v of VECTORS.rfc9605_sframe) {
      const suite = sframe.suiteById(v.cipher_suite);
      const kid = BigInt(v.kid);
      const ctr = BigInt(v.ctr);
      const base = fromHex(v.base_key);
      const { key, salt } = await sframe.deriveKeyAndSaltBytes(suite, kid, base);
      assert.equal(toHex(key), v.sframe_key, `suite ${v.cipher_suite} key`);
      assert.equal(toHex(salt), v.sframe_salt, `suite ${v.cipher_suite} salt`);
      assert.equal(toHex(sframe.nonceFor(salt, ctr)), v.nonce, `suite ${v.cipher_suite} nonce`);
      const k = await sframe.SFrameKey.derive(suite, kid, base);
      const sealed = await k.seal(ctr, fromHex(v.metadata), fromHex(v.pt));
      assert.equal(toHex(sealed), v.ct, `suite ${v.cipher_suite} ciphertext`);
      assert.ok(v.aad.startsWith(toHex(sframe.encodeHeader(kid, ctr))), "the AAD starts with the header");
      const opened = await k.open(fromHex(v.metadata), fromHex(v.ct));
      assert.equal(toHex(opened.plaintext), v.pt);
      assert.equal(opened.ctr, ctr);
      await assert.rejects(k.open(fromHex(v.metadata.replace(/^../, "00")), fromHex(v.ct)), /authentication/);
    }
  });
});

describe("Consult's shared vectors", () => {
  test("codec frame formats (consult_frames): protect gives exactly `protected`, unprotect gives back `frame`", async () => {
    const frames = consultVectors("consult_frames");
    const formats = new Set();
    for (const v of frames) {
      formats.add(v.format);
      const suite = sframe.suiteById(v.suite);
      const kid = BigInt(v.kid);
      const ctr = BigInt(v.ctr);
      const key = await sframe.SFrameKey.derive(suite, kid, fromHex(v.base_key));
      const sealed = await format.protectFrame(v.format, key, ctr, fromHex(v.frame));
      assert.equal(toHex(sealed), v.protected, `${v.name}: protected bytes`);
      const parsed = format.parseProtected(v.format, fromHex(v.protected));
      assert.equal(parsed.kid, kid, `${v.name}: KID`);
      assert.equal(parsed.ctr, ctr, `${v.name}: CTR`);
      assert.equal(toHex(await format.openFrame(parsed, key)), v.frame, `${v.name}: opened frame`);
    }
    for (const f of ["opus", "vp8", "h264", "data"]) assert.ok(formats.has(f), `a ${f} vector`);
  });

  test("key agreement (consult_schedule): public key, commitment, transcript hash, SAS and wrap key", async () => {
    const cases = consultVectors("consult_schedule");
    for (const v of cases) {
      const got = await schedule.agreementForVectors(
        fromHex(v.secret_a),
        fromHex(v.public_key_b),
        fingerprintOf(v.fingerprint_a),
        fingerprintOf(v.fingerprint_b),
        v.from,
        v.to,
      );
      assert.equal(toHex(got.publicKey), v.public_key_a, "public key of secret_a");
      assert.equal(toHex(got.transcript), v.transcript_hash, "transcript hash");
      assert.equal(got.sas, v.sas, "SAS");
      assert.match(got.sas, /^\d{4} \d{4}$/);
      assert.equal(toHex(got.wrapKey), v.wrap_key, "wrap key");
      assert.equal(toHex(got.commitment), v.commitment_a, "a's commitment to its key");
      // The other side's view of the same transcript (its values first) is the same.
      const other = await schedule.transcriptHash(fingerprintOf(v.fingerprint_b), fingerprintOf(v.fingerprint_a), fromHex(v.public_key_b), fromHex(v.public_key_a));
      assert.equal(toHex(other), v.transcript_hash, "transcript hash from b's side");
    }
  });
});

describe("frame formats", () => {
  const base = Uint8Array.from({ length: 16 }, (_, i) => i);

  test("H.264: parameter sets and slice-header starts stay clear, no start code is emulated", async () => {
    const key = await sframe.SFrameKey.derive(sframe.SUITES[4], 0x12340001n, base);
    const bytes = [0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80];
    bytes.push(0, 0, 1, 0x65, 0xb8, 0x00, 0x00, 0x03, 0x00, 0x00); // a slice whose clear part ends in zeros
    for (let i = 0; i < 3000; i++) bytes.push(i % 7 === 0 ? 0 : 4 + (i % 5));
    bytes.push(0, 0, 1, 0x41, 0x9a); // a tiny slice
    bytes.push(0, 0, 1, 0x41, 0x9a, 1, 2, 3, 4, 5, 6, 7, 8, 9);
    const frame = Uint8Array.from(bytes);
    assert.equal(format.splitAnnexB(frame).length, 5);
    for (let ctr = 0n; ctr < 200n; ctr++) {
      const sealed = await format.protectFrame("h264", key, ctr, frame);
      assert.deepEqual(sealed.subarray(0, 19), frame.subarray(0, 19), "SPS and PPS in the clear");
      const units = format.splitAnnexB(sealed);
      assert.equal(units.length, 5, "no start code emulated in the ciphertext");
      for (const u of units) assert.notEqual(sealed[u.end - 1], 0, "no unit ends in a zero byte");
      assert.deepEqual(sealed.subarray(units[2].start, units[2].start + 7), frame.subarray(22, 29), "slice header start in the clear");
      const parsed = format.parseProtected("h264", sealed);
      assert.deepEqual(await format.openFrame(parsed, key), frame);
    }
  });

  test("VP8 keeps the frame tag (and a keyframe's size) clear; Opus and data are wholly encrypted", async () => {
    const key = await sframe.SFrameKey.derive(sframe.SUITES[5], 7n, new Uint8Array(32).fill(3));
    const keyframe = Uint8Array.from([0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01, 9, 9, 9, 9]);
    const delta = Uint8Array.from([0x31, 0x04, 0x00, 5, 5, 5, 5, 5]);
    for (const [f, frame, clear] of /** @type {const} */ ([["vp8", keyframe, 10], ["vp8", delta, 3], ["opus", Uint8Array.from([0xfc, 1, 2, 3]), 0], ["data", Uint8Array.from([0, 104, 105]), 0]])) {
      const sealed = await format.protectFrame(f, key, 9n, frame);
      assert.deepEqual(sealed.subarray(0, clear), frame.subarray(0, clear));
      assert.equal(sealed.length, frame.length + sframe.encodeHeader(7n, 9n).length + sframe.TAG_BYTES);
      assert.deepEqual(await format.openFrame(format.parseProtected(f, sealed), key), frame);
    }
    await assert.rejects(format.protectFrame("vp8", key, 0n, Uint8Array.from([0x10, 2])), /shorter/);
    await assert.rejects(format.protectFrame("h264", key, 0n, Uint8Array.from([0x65, 1, 2])), /start code/);
    await assert.rejects(format.protectFrame("h264", key, 0n, Uint8Array.from([0, 0, 1, 0x67, 1, 2])), /no unit to protect/);
  });
});

// -------------------------------------------------------------------------------------------------
// A whole schedule between two participants
// -------------------------------------------------------------------------------------------------

/**
 * One participant: its schedule, and the protectors a page gives its keys to (media: the
 * worker's; data: the page's).
 * @param {string} id
 * @param {Partial<import('../../web-demo/assets/e2ee/schedule.js').ScheduleConfig>} [config]
 */
function participant(id, config) {
  const media = new FrameProtector();
  const data = new FrameProtector();
  return {
    id,
    schedule: new schedule.KeySchedule(id, config),
    media,
    data,
    sas: /** @type {string | null} */ (null),
    /** @type {import('../../web-demo/assets/e2ee/schedule.js').AbortedEvent | null} */
    aborted: null,
    sent: /** @type {string[]} */ ([]),
  };
}

/**
 * Drain a participant's outputs as a page does: install keys, then pass messages on.
 * @param {ReturnType<typeof participant>} p
 * @param {number} now
 * @returns {Promise<string[]>} the messages to deliver to the other side.
 */
async function drain(p, now) {
  /** @type {string[]} */
  const out = [];
  for (let o = p.schedule.pollOutput(); o; o = p.schedule.pollOutput()) {
    if (o.type === "send") {
      out.push(o.text);
      p.sent.push(o.text);
    } else if (o.event.kind === "sas") {
      p.sas = o.event.sas;
    } else if (o.event.kind === "aborted") {
      p.aborted = o.event;
      p.media.clear();
      p.data.clear();
    } else if (o.event.kind === "send-key") {
      await p.media.setSendKey(o.event.suite, o.event.mediaKid, o.event.epoch, o.event.baseKey);
      await p.data.setSendKey(o.event.suite, o.event.dataKid, o.event.epoch, o.event.baseKey);
    } else {
      await p.media.addReceiveKey(o.event.suite, o.event.mediaKid, o.event.epoch, o.event.baseKey, now);
      await p.data.addReceiveKey(o.event.suite, o.event.dataKid, o.event.epoch, o.event.baseKey, now);
    }
  }
  return out;
}

/**
 * Shuttle messages both ways until both sides are quiet.
 * @param {ReturnType<typeof participant>} a
 * @param {ReturnType<typeof participant>} b
 * @param {number} now
 * @param {{ refused?: string[] }} [options] Collect refusals here instead of failing on them.
 */
async function settle(a, b, now, { refused } = {}) {
  for (let moved = true; moved; ) {
    moved = false;
    for (const [from, to] of [[a, b], [b, a]]) {
      for (const text of await drain(from, now)) {
        moved = true;
        try {
          await to.schedule.handleMessage(now, text);
        } catch (err) {
          if (!refused || !(err instanceof RejectedError)) throw err;
          refused.push(err.reason);
        }
      }
    }
  }
}

/**
 * Alice and Bob connected, their commitments crossed; each has its hello queued.
 * @returns {Promise<{ alice: ReturnType<typeof participant>, bob: ReturnType<typeof participant>, aliceHello: string, bobHello: string }>}
 */
async function committedPair() {
  const alice = participant("alice");
  const bob = participant("bob");
  await alice.schedule.connect(0, "bob", FP_A, FP_B);
  await bob.schedule.connect(0, "alice", FP_B, FP_A);
  const [aliceCommit] = await drain(alice, 0);
  const [bobCommit] = await drain(bob, 0);
  assert.equal(JSON.parse(aliceCommit).type, "commit", "a commitment goes first, alone");
  await bob.schedule.handleMessage(0, aliceCommit);
  await alice.schedule.handleMessage(0, bobCommit);
  const [aliceHello] = await drain(alice, 0);
  const [bobHello] = await drain(bob, 0);
  assert.equal(JSON.parse(aliceHello).type, "hello", "the key once the other's commitment is in");
  return { alice, bob, aliceHello, bobHello };
}

/** A valid X25519 public key other than anyone's in the call (the test vectors' B). */
const OTHER_PUBLIC_KEY = toBase64(fromHex("3b1f92d23819bb725c7d64b96b81134a0342b3fec537413f8b87bd1543b4b533"));

const FP_A = { hash: "sha-256", digest: new Uint8Array(32).fill(0xaa) };
const FP_B = { hash: "sha-256", digest: new Uint8Array(32).fill(0xbb) };

/** Alice and Bob connected and agreed, at time 0. */
async function agreedPair() {
  const alice = participant("alice");
  const bob = participant("bob");
  await alice.schedule.connect(0, "bob", FP_A, FP_B);
  await bob.schedule.connect(0, "alice", FP_B, FP_A);
  await settle(alice, bob, 0);
  return { alice, bob };
}

/** @param {Promise<unknown>} promise @param {string} reason */
async function rejectsWith(promise, reason) {
  await assert.rejects(promise, (err) => err instanceof RejectedError && err.reason === reason, `rejected as ${reason}`);
}

describe("key schedule", () => {
  test("two participants agree keys over their channel: equal SAS, frames and messages both ways", async () => {
    const { alice, bob } = await agreedPair();
    assert.match(alice.sas ?? "", /^\d{4} \d{4}$/);
    assert.equal(alice.sas, bob.sas, "both show the same SAS");
    assert.equal(alice.schedule.stats.sendEpoch, 1);
    assert.equal(bob.schedule.stats.receiveEpoch, 1);
    for (const [from, to] of [[alice, bob], [bob, alice]]) {
      const opus = Uint8Array.from([0xfc, 1, 2, 3, 4]);
      const sealed = await from.media.protect("opus", opus);
      assert.deepEqual(await to.media.unprotect("opus", sealed, 0), opus);
      const message = await protectMessage(from.data, false, new TextEncoder().encode("hello"));
      const opened = await unprotectMessage(to.data, message, 0);
      assert.equal(opened.binary, false);
      assert.equal(new TextDecoder().decode(opened.bytes), "hello");
    }
    // Media and data use distinct KIDs (stream 0 and 1) of the same epoch.
    const media = format.parseProtected("opus", await alice.media.protect("opus", Uint8Array.of(1)));
    const data = format.parseProtected("data", await alice.data.protect("data", Uint8Array.of(0)));
    assert.equal(media.kid + (1n << 16n), data.kid);
    assert.equal(media.kid & 0xffffn, 1n, "epoch 1");
  });

  test("a man in the middle who swaps the DTLS certificates is caught by the commitments", async () => {
    // The middle terminates DTLS with each side (each sees the middle's fingerprint) and relays
    // the key messages unchanged: each commitment names the certificates its sender saw, so
    // both checks fail, both sides stop, and no key is agreed.
    const alice = participant("alice");
    const bob = participant("bob");
    const middleToAlice = { hash: "sha-256", digest: new Uint8Array(32).fill(0xcc) };
    const middleToBob = { hash: "sha-256", digest: new Uint8Array(32).fill(0xdd) };
    await alice.schedule.connect(0, "bob", FP_A, middleToAlice);
    await bob.schedule.connect(0, "alice", FP_B, middleToBob);
    /** @type {string[]} */
    const refused = [];
    await settle(alice, bob, 0, { refused });
    assert.ok(refused.includes("commitment_mismatch"), `refused: ${refused}`);
    for (const p of [alice, bob]) {
      assert.equal(p.schedule.aborted, "commitment_mismatch");
      assert.equal(p.sas, null, `${p.id} shows no code`);
      assert.equal(p.aborted?.reason, "commitment_mismatch");
      assert.equal(p.schedule.stats.sendEpoch, 0);
    }
  });

  test("a reveal that differs from its commitment stops both sides, with the reason, and erases their keys", async () => {
    const { alice, bob, bobHello } = await committedPair();
    // Bob's hello is swapped for one with another key (chosen after seeing Alice's, say).
    const forged = JSON.stringify({ ...JSON.parse(bobHello), public_key: OTHER_PUBLIC_KEY });
    await rejectsWith(alice.schedule.handleMessage(0, forged), "commitment_mismatch");
    assert.equal(alice.schedule.stats.rejected.commitment_mismatch, 1);
    const [abort] = await drain(alice, 0);
    assert.equal(abort, '{"v":2,"type":"abort","from":"alice","reason":"commitment_mismatch"}');
    assert.deepEqual(alice.aborted, { kind: "aborted", reason: "commitment_mismatch", byRemote: false });
    await bob.schedule.handleMessage(0, abort);
    await drain(bob, 0);
    assert.deepEqual(bob.aborted, { kind: "aborted", reason: "commitment_mismatch", byRemote: true });
    // Nothing more on this connection, not even the genuine hello; nothing can be sent.
    await rejectsWith(alice.schedule.handleMessage(0, bobHello), "key_malformed");
    assert.equal(alice.schedule.sas, null);
    await assert.rejects(alice.media.protect("opus", Uint8Array.of(1)));
    // A new connection agrees afresh.
    await alice.schedule.connect(10, "bob", FP_A, FP_B);
    await bob.schedule.connect(10, "alice", FP_B, FP_A);
    await settle(alice, bob, 10);
    assert.equal(alice.schedule.aborted, null);
    assert.ok(alice.sas && alice.sas === bob.sas);
  });

  test("a commitment replayed from another call never matches", async () => {
    // The middle recorded Bob's commitment and hello from an earlier call (other certificates).
    const earlier = await committedPair();
    const earlierCommit = earlier.bob.sent.find((m) => JSON.parse(m).type === "commit") ?? "";
    const alice = participant("alice");
    const otherCall = { hash: "sha-256", digest: new Uint8Array(32).fill(0x11) };
    await alice.schedule.connect(0, "bob", otherCall, FP_B);
    await drain(alice, 0);
    await alice.schedule.handleMessage(0, earlierCommit);
    await rejectsWith(alice.schedule.handleMessage(0, earlier.bobHello), "commitment_mismatch");
    assert.equal(alice.schedule.aborted, "commitment_mismatch");
  });

  test("a hello before a commitment stops the agreement", async () => {
    const alice = participant("alice");
    await alice.schedule.connect(0, "bob", FP_A, FP_B);
    await drain(alice, 0);
    const early = schedule.encodeKeyMessage({ type: "hello", participant: "bob", public_key: OTHER_PUBLIC_KEY });
    await rejectsWith(alice.schedule.handleMessage(0, early), "reveal_before_commitment");
    const [abort] = await drain(alice, 0);
    assert.equal(abort, '{"v":2,"type":"abort","from":"alice","reason":"reveal_before_commitment"}');
    assert.equal(alice.aborted?.reason, "reveal_before_commitment");
  });

  test("a second commitment, a stranger's commitment or abort: refused, and agreement goes on", async () => {
    const { alice, bob } = await committedPair();
    const commit = (/** @type {string} */ who, /** @type {number} */ length) =>
      schedule.encodeKeyMessage({ type: "commit", participant: who, commitment: toBase64(new Uint8Array(length).fill(1)) });
    await rejectsWith(alice.schedule.handleMessage(0, commit("bob", 32)), "key_replayed");
    await rejectsWith(alice.schedule.handleMessage(0, commit("mallory", 32)), "key_from_stranger");
    const fresh = participant("alice");
    await fresh.schedule.connect(0, "bob", FP_A, FP_B);
    await rejectsWith(fresh.schedule.handleMessage(0, commit("bob", 31)), "key_malformed");
    await rejectsWith(alice.schedule.handleMessage(0, schedule.encodeKeyMessage({ type: "abort", from: "mallory", reason: "commitment_mismatch" })), "key_from_stranger");
    await rejectsWith(alice.schedule.handleMessage(0, '{"v":2,"type":"abort","from":"bob","reason":"bored"}'), "key_malformed");
    assert.equal(alice.schedule.aborted, null);
    // The hellos queued in committedPair went nowhere: deliver them now.
    await alice.schedule.handleMessage(0, bob.sent.find((m) => JSON.parse(m).type === "hello") ?? "");
    await bob.schedule.handleMessage(0, alice.sent.find((m) => JSON.parse(m).type === "hello") ?? "");
    await settle(alice, bob, 0);
    assert.ok(alice.sas && alice.sas === bob.sas);
  });

  test("a man in the middle who also swaps the X25519 keys makes the two SAS differ", async () => {
    // The middle runs its own schedule towards each side (its own hello to each).
    const alice = participant("alice");
    const bob = participant("bob");
    const middleAsBob = participant("bob");
    const middleAsAlice = participant("alice");
    await alice.schedule.connect(0, "bob", FP_A, FP_B);
    await middleAsBob.schedule.connect(0, "alice", FP_B, FP_A);
    await bob.schedule.connect(0, "alice", FP_B, FP_A);
    await middleAsAlice.schedule.connect(0, "bob", FP_A, FP_B);
    await settle(alice, middleAsBob, 0);
    await settle(middleAsAlice, bob, 0);
    assert.ok(alice.sas && bob.sas);
    assert.notEqual(alice.sas, bob.sas, "different codes even with the real certificates in the SDP");
  });

  test("rotation: a new epoch switches on ack, old receive keys are erased after the grace window", async () => {
    const { alice, bob } = await agreedPair();
    const old = await alice.media.protect("opus", Uint8Array.of(1, 2));
    await alice.schedule.rotate(100);
    await settle(alice, bob, 100);
    assert.equal(alice.schedule.stats.sendEpoch, 2, "switched on ack");
    assert.deepEqual(bob.media.receiveEpochs, [1, 2]);
    // Bob still opens an epoch-1 frame in flight, then the first epoch-2 frame starts the grace.
    assert.deepEqual(await bob.media.unprotect("opus", old, 150), Uint8Array.of(1, 2));
    const fresh = await alice.media.protect("opus", Uint8Array.of(3));
    assert.deepEqual(await bob.media.unprotect("opus", fresh, 200), Uint8Array.of(3));
    bob.media.tick(200 + bob.media.config.graceMs);
    assert.deepEqual(bob.media.receiveEpochs, [2], "epoch 1 erased after the grace window");
    // The timer: a new epoch after rotateEveryMs, without an ack it switches after switchAfterMs.
    const every = alice.schedule.config.rotateEveryMs;
    await alice.schedule.handleTimeout(100 + every);
    await drain(alice, 100 + every); // the key message is lost
    assert.equal(alice.schedule.stats.announcedEpoch, 3);
    assert.equal(alice.schedule.stats.sendEpoch, 2, "not before the ack or switchAfter");
    await alice.schedule.handleTimeout(100 + every + alice.schedule.config.switchAfterMs);
    await drain(alice, 100 + every + 1000);
    assert.equal(alice.schedule.stats.sendEpoch, 3, "switched after switchAfterMs");
  });

  test("a counter reaching its limit asks for a new epoch", async () => {
    const alice = participant("alice");
    const bob = participant("bob");
    alice.media = new FrameProtector({ maxCounter: 3 });
    await alice.schedule.connect(0, "bob", FP_A, FP_B);
    await bob.schedule.connect(0, "alice", FP_B, FP_A);
    await settle(alice, bob, 0);
    for (let i = 0; i < 3; i++) await alice.media.protect("opus", Uint8Array.of(i));
    assert.equal(alice.media.rotateWanted, true);
    alice.schedule.requestRotation();
    await alice.schedule.handleTimeout(10);
    await settle(alice, bob, 10);
    assert.equal(alice.schedule.stats.sendEpoch, 2);
    assert.equal(alice.media.rotateWanted, false);
    assert.equal(format.parseProtected("opus", await alice.media.protect("opus", Uint8Array.of(9))).ctr, 0n, "counter restarts");
  });
});

describe("bad input is rejected, counted, and the call goes on", () => {
  test("a tampered, truncated, replayed, unknown-KID or expired-KID frame", async () => {
    const { alice, bob } = await agreedPair();
    const vp8 = Uint8Array.from([0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01, ...new Array(200).fill(7)]);
    const good = await alice.media.protect("vp8", vp8);

    // A changed byte in the clear part, the ciphertext or the tag fails authentication.
    for (const at of [5, 20, good.length - 1]) {
      const tampered = good.slice();
      tampered[at] ^= 0x01;
      await rejectsWith(bob.media.unprotect("vp8", tampered, 0), "tampered");
    }
    assert.equal(bob.media.stats.rejected.tampered, 3);
    // A changed frame tag or header names another layout or KID: refused all the same.
    for (const at of [0, 11]) {
      const tampered = good.slice();
      tampered[at] ^= 0x01;
      await assert.rejects(bob.media.unprotect("vp8", tampered, 0), RejectedError, `byte ${at} changed`);
    }

    // Cut inside the clear part or the header: truncated; cut inside the ciphertext: the tag fails.
    for (const cut of [0, 5, 10, 11]) await rejectsWith(bob.media.unprotect("vp8", good.subarray(0, cut), 0), "truncated");
    await rejectsWith(bob.media.unprotect("vp8", good.subarray(0, good.length - 10), 0), "tampered");
    assert.ok(bob.media.stats.rejected.truncated >= 4);

    assert.deepEqual(await bob.media.unprotect("vp8", good, 0), vp8, "the original still opens");
    await rejectsWith(bob.media.unprotect("vp8", good, 0), "replayed");
    assert.equal(bob.media.stats.rejected.replayed, 1);

    const unknownBefore = bob.media.stats.rejected.unknown_kid;
    const stranger = await sframe.SFrameKey.derive(sframe.SUITES[4], 0x77770001n, new Uint8Array(16));
    await rejectsWith(bob.media.unprotect("opus", await format.protectFrame("opus", stranger, 0n, Uint8Array.of(1)), 0), "unknown_kid");
    assert.equal(bob.media.stats.rejected.unknown_kid, unknownBefore + 1);

    // Epoch 1 expires once epoch 2 is in use and the grace window is over.
    const epoch1 = await alice.media.protect("opus", Uint8Array.of(1));
    await alice.schedule.rotate(10);
    await settle(alice, bob, 10);
    await bob.media.unprotect("opus", await alice.media.protect("opus", Uint8Array.of(2)), 20);
    await rejectsWith(bob.media.unprotect("opus", epoch1, 20 + bob.media.config.graceMs), "expired_kid");
    assert.equal(bob.media.stats.rejected.expired_kid, 1);

    // The call goes on: frames still open, and nothing refused was counted as opened.
    const next = Uint8Array.of(4, 5, 6);
    assert.deepEqual(await bob.media.unprotect("opus", await alice.media.protect("opus", next), 30), next);
    assert.equal(bob.media.stats.opened, 3);
  });

  test("a data message that is tampered, replayed or of an unknown kind", async () => {
    const { alice, bob } = await agreedPair();
    const message = await protectMessage(alice.data, true, Uint8Array.of(1, 2, 3));
    const tampered = message.slice();
    tampered[tampered.length - 1] ^= 0x80;
    await rejectsWith(unprotectMessage(bob.data, tampered, 0), "tampered");
    const opened = await unprotectMessage(bob.data, message, 0);
    assert.equal(opened.binary, true);
    await rejectsWith(unprotectMessage(bob.data, message, 0), "replayed");
    await rejectsWith(unprotectMessage(bob.data, await alice.data.protect("data", Uint8Array.of(7, 1)), 0), "truncated");
    // A media frame is not a data message (another KID).
    await rejectsWith(unprotectMessage(bob.data, await alice.media.protect("opus", Uint8Array.of(0, 1)), 0), "unknown_kid");
  });

  test("a key message from someone not in the call, replayed from an earlier epoch, or malformed", async () => {
    const { alice, bob } = await agreedPair();
    const key1 = alice.sent.find((m) => JSON.parse(m).type === "key" && JSON.parse(m).epoch === 1);
    assert.ok(key1);
    await alice.schedule.rotate(10);
    await settle(alice, bob, 10);
    const key2 = alice.sent.find((m) => JSON.parse(m).type === "key" && JSON.parse(m).epoch === 2);
    assert.ok(key2);

    const stats = bob.schedule.stats.rejected;
    await rejectsWith(bob.schedule.handleMessage(20, key1), "key_replayed");
    await rejectsWith(bob.schedule.handleMessage(20, key2), "key_replayed");
    assert.equal(stats.key_replayed, 2);

    const fromMallory = JSON.stringify({ ...JSON.parse(key2), from: "mallory", epoch: 9 });
    await rejectsWith(bob.schedule.handleMessage(20, fromMallory), "key_from_stranger");
    const toSomeoneElse = JSON.stringify({ ...JSON.parse(key2), to: "carol", epoch: 9 });
    await rejectsWith(bob.schedule.handleMessage(20, toSomeoneElse), "key_from_stranger");
    const helloFromMallory = schedule.encodeKeyMessage({ type: "hello", participant: "mallory", public_key: toBase64(new Uint8Array(32).fill(9)) });
    await rejectsWith(bob.schedule.handleMessage(20, helloFromMallory), "key_from_stranger");
    await rejectsWith(bob.schedule.handleMessage(20, schedule.encodeKeyMessage({ type: "ack", from: "mallory", epoch: 1 })), "key_from_stranger");
    assert.equal(stats.key_from_stranger, 4);

    // A second hello on the same connection is a replay; a newer epoch under a wrong key does not open.
    const secondHello = alice.sent.find((m) => JSON.parse(m).type === "hello");
    await rejectsWith(bob.schedule.handleMessage(20, secondHello ?? ""), "key_replayed");
    const forged = JSON.stringify({ ...JSON.parse(key2), epoch: 3 });
    await rejectsWith(bob.schedule.handleMessage(20, forged), "key_undecryptable");

    for (const bad of ["nope", "[]", '{"v":1,"type":"ack","from":"alice","epoch":1}', '{"v":2,"type":"ack","from":"alice"}', '{"v":2,"type":"teleport"}', '{"v":2,"type":"ack","from":"alice","epoch":1,"extra":1}', `{"v":2,"type":"ack","from":"${"a".repeat(5000)}","epoch":1}`]) {
      await rejectsWith(bob.schedule.handleMessage(20, bad), "key_malformed");
    }
    assert.equal(stats.key_malformed, 7);

    // Nothing of that disturbed the call.
    assert.equal(bob.schedule.stats.receiveEpoch, 2);
    const frame = Uint8Array.of(1, 2, 3);
    assert.deepEqual(await bob.media.unprotect("opus", await alice.media.protect("opus", frame), 30), frame);
  });

  test("key messages encode exactly as the Rust side writes them", () => {
    assert.equal(schedule.encodeKeyMessage({ type: "hello", participant: "p1", public_key: "AAAA" }), '{"v":2,"type":"hello","participant":"p1","public_key":"AAAA"}');
    assert.equal(schedule.encodeKeyMessage({ type: "commit", participant: "p1", commitment: "AAAA" }), '{"v":2,"type":"commit","participant":"p1","commitment":"AAAA"}');
    assert.equal(schedule.encodeKeyMessage({ type: "abort", from: "p1", reason: "commitment_mismatch" }), '{"v":2,"type":"abort","from":"p1","reason":"commitment_mismatch"}');
    assert.deepEqual(schedule.decodeKeyMessage('{"v":2,"type":"ack","from":"a","epoch":3}'), { v: 2, type: "ack", from: "a", epoch: 3 });
  });
});

describe("sealed chat and file channels", () => {
  /**
   * A stand-in for an RTCDataChannel: records what is sent, and lets the test deliver messages.
   * @param {string} label
   */
  function fakeChannel(label) {
    const target = new EventTarget();
    return Object.assign(target, {
      label,
      readyState: /** @type {RTCDataChannelState} */ ("open"),
      bufferedAmount: 0,
      bufferedAmountLowThreshold: 0,
      binaryType: "blob",
      /** @type {unknown[]} */
      sent: [],
      /** @param {unknown} data */
      send(data) {
        this.sent.push(data);
      },
      close() {},
      /** @param {unknown} data */
      deliver(data) {
        target.dispatchEvent(new MessageEvent("message", { data }));
      },
    });
  }

  /**
   * A sealed channel of one participant, and what it handed to chat and files.
   * @param {ReturnType<typeof participant>} p
   * @param {ReturnType<typeof fakeChannel>} inner
   */
  function sealedOf(p, inner) {
    let refused = 0;
    const sealed = new SealedChannel(/** @type {any} */ (inner), {
      canSend: () => p.data.send !== null,
      seal: (/** @type {boolean} */ binary, /** @type {Uint8Array} */ bytes) => protectMessage(p.data, binary, bytes),
      open: (/** @type {Uint8Array} */ bytes) => unprotectMessage(p.data, bytes, 0),
      refusedUnprotected: () => {
        refused += 1;
        p.data.noteUnprotected();
      },
    });
    /** @type {unknown[]} */
    const received = [];
    sealed.onmessage = (event) => received.push(event.data);
    return { sealed, received, refused: () => refused };
  }

  test("messages go sealed and arrive in order, text as text and binary as bytes; unprotected ones are refused", async () => {
    const alice = participant("alice");
    const bob = participant("bob");
    const aliceInner = fakeChannel("consult-chat");
    const a = sealedOf(alice, aliceInner);
    assert.equal(a.sealed.readyState, "connecting", "not open before our key is in use");
    assert.throws(() => a.sealed.send("too early"), /not open/);

    await alice.schedule.connect(0, "bob", FP_A, FP_B);
    await bob.schedule.connect(0, "alice", FP_B, FP_A);
    await settle(alice, bob, 0);
    assert.equal(a.sealed.readyState, "open");

    const texts = Array.from({ length: 20 }, (_, i) => `message ${i} ✓`);
    for (const t of texts) a.sealed.send(t);
    a.sealed.send(Uint8Array.of(1, 2, 3));
    assert.ok(a.sealed.bufferedAmount > 0, "bytes being encrypted count as buffered");
    await a.sealed.sending;
    assert.equal(a.sealed.bufferedAmount, 0);
    assert.equal(aliceInner.sent.length, 21);
    for (const wire of aliceInner.sent) {
      assert.ok(wire instanceof Uint8Array, "only binary SFrame messages on the wire");
      assert.ok(!Buffer.from(/** @type {Uint8Array} */ (wire)).toString("utf8").includes("message"), "no plaintext on the wire");
    }

    const b = sealedOf(bob, fakeChannel("consult-chat"));
    const bobInner = /** @type {any} */ (b.sealed).inner;
    for (const wire of aliceInner.sent) bobInner.deliver(/** @type {Uint8Array} */ (wire).slice().buffer);
    bobInner.deliver("an unprotected text message");
    bobInner.deliver(aliceInner.sent[0] instanceof Uint8Array ? aliceInner.sent[0].slice().buffer : null); // replayed
    await b.sealed.receiving;
    assert.deepEqual(b.received.slice(0, 20), texts, "text in order");
    assert.deepEqual(new Uint8Array(/** @type {ArrayBuffer} */ (b.received[20])), Uint8Array.of(1, 2, 3));
    assert.equal(b.received.length, 21, "nothing refused was handed on");
    assert.equal(b.refused(), 1);
    assert.equal(bob.data.stats.rejected.unprotected, 1);
    assert.equal(bob.data.stats.rejected.replayed, 1);
  });
});

describe("DTLS fingerprints from SDP", () => {
  test("the first a=fingerprint line, hash name lower-cased", () => {
    const sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\na=fingerprint:SHA-256 0A:ff:10\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 0A:FF:10\r\n";
    const fp = schedule.fingerprintFromSdp(sdp);
    assert.equal(fp?.hash, "sha-256");
    assert.deepEqual(fp?.digest, Uint8Array.of(0x0a, 0xff, 0x10));
    assert.equal(schedule.fingerprintFromSdp("v=0\r\n"), null);
    assert.equal(schedule.parseFingerprint("sha-256"), null);
    assert.equal(schedule.parseFingerprint("sha-256 ZZ:01"), null);
  });
});
