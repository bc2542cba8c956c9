// End-to-end encryption between two real browsers (headless Chromium): a consultation created
// with "End-to-end encryption", the doctor and the patient in the call, once with VP8 and once
// with H.264 (forced with the web demo's `consult.videoCodec` setting, which orders
// setCodecPreferences). Media decodes both ways through the SFrame transform worker, the lock
// badge shows on both sides, both show the same security code (SAS), the workers count frames
// protected and opened both ways with no tampering, and chat still works (sealed). Prints the
// worker's added latency per frame (`E2EE worker latency ...`). Then browsers with only the older
// `createEncodedStreams()`, and one with no encoded transforms at all (no media either way); and a
// patient whose key channel is tampered with (its hello carries another key than it committed to):
// end-to-end encryption stops, with the reason on both pages.
//
// The rotation suites, which assert real-time gaps, are in e2ee.test.mjs.
//
// Run: cd tests/browser && node --test e2ee-media.test.mjs   (CONSULT_BIN: a service with the e2ee flag)

import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";

import { e2eeCall, inboundVideoCodec, joinE2eeCall, logLatency } from "./e2ee-calls.mjs";
import {
  allFlowsProtected,
  byTestId,
  e2eeSnapshot,
  cspViolations,
  inboundStats,
  launchParticipant,
  protectedBothWays,
  sendChat,
  STEP_TIMEOUT_MS,
  waitForChat,
  waitForE2ee,
  waitForRemoteMedia,
  withService,
} from "./harness.mjs";

/** A valid X25519 public key that is nobody's in the call (from the shared test vectors). */
const OTHER_PUBLIC_KEY = Buffer.from("3b1f92d23819bb725c7d64b96b81134a0342b3fec537413f8b87bd1543b4b533", "hex").toString("base64");

describe("end-to-end encrypted browser consultation: media, codecs, older browsers", { timeout: 600_000 }, () => {
  for (const codec of /** @type {const} */ (["vp8", "h264"])) {
    test(`${codec}: media both ways through SFrame, badge on both sides, equal security codes`, { timeout: 180_000 }, async () => {
      await withService({}, async (scope) => {
        const { doctor, patient } = await e2eeCall(scope, codec);
        const people = [doctor, patient];
        for (const p of people) await waitForRemoteMedia(p.page, 45_000);

        for (const p of people) {
          await byTestId(p.page, "e2ee-badge").waitFor({ state: "visible", timeout: STEP_TIMEOUT_MS });
          assert.match((await byTestId(p.page, "e2ee-badge").textContent()) ?? "", /End-to-end encrypted/);
          assert.match((await byTestId(p.page, "e2ee-hint").textContent()) ?? "", /Compare these numbers/);
        }
        const doctorSas = (await byTestId(doctor.page, "e2ee-sas").textContent()) ?? "";
        const patientSas = (await byTestId(patient.page, "e2ee-sas").textContent()) ?? "";
        assert.match(doctorSas, /^\d{4} \d{4}$/, "the doctor sees a security code");
        assert.equal(patientSas, doctorSas, "both see the same security code");

        for (const p of people) {
          const s = await waitForE2ee(p.page, (x) => allFlowsProtected(x) && x.badge, "frames protected and opened both ways");
          assert.equal(s.api, "script-transform", "Chromium uses RTCRtpScriptTransform");
          assert.equal(s.sas, doctorSas);
          assert.equal(s.worker.rejected.tampered, 0, `no tampered frames: ${JSON.stringify(s.worker.rejected)}`);
          assert.equal(s.worker.receive.video.codec, codec, "the worker opened frames of the forced codec");
          assert.equal(s.worker.send.video.codec, codec, "the worker protected frames of the forced codec");
          assert.equal(await inboundVideoCodec(p.page), codec === "vp8" ? "video/VP8" : "video/H264");
          assert.ok(s.epochs.send >= 1 && s.epochs.receive >= 1, `keys both ways: ${JSON.stringify(s.epochs)}`);
          const media = await inboundStats(p.page);
          assert.ok(media && media.framesDecoded > 0 && media.audioPackets > 0, `${p.label} decodes video and gets audio: ${JSON.stringify(media)}`);
        }

        // Chat is sealed too, and still arrives both ways.
        await sendChat(doctor.page, "Hello, sealed");
        await waitForChat(patient.page, "in", "Hello, sealed");
        await sendChat(patient.page, "Sealed reply ✓");
        await waitForChat(doctor.page, "in", "Sealed reply ✓");
        for (const p of people) {
          const s = await e2eeSnapshot(p.page);
          assert.ok(s.data.protected >= 1 && s.data.opened >= 1, `${p.label} chat sealed both ways: ${JSON.stringify(s.data)}`);
          assert.equal(s.data.rejected.unprotected, 0);
        }

        // Let latency samples accumulate, then report them.
        await sleep(3000);
        for (const p of people) logLatency(`${codec}, ${p.label}`, await e2eeSnapshot(p.page));
        for (const p of people) assert.deepEqual(cspViolations(p), [], `${p.label}: no CSP violations`);
      });
    });
  }

  test("browsers with only createEncodedStreams() use it in the same worker", { timeout: 180_000 }, async () => {
    await withService({}, async (scope) => {
      const { doctor, patient } = await e2eeCall(scope, "vp8", { encodedStreams: true });
      const people = [doctor, patient];
      const [d, p] = await protectedBothWays(people);
      for (const s of [d, p]) {
        assert.equal(s.api, "encoded-streams");
        assert.equal(s.worker.rejected.tampered, 0);
      }
      assert.equal(d.sas, p.sas);
      for (const x of people) assert.deepEqual(cspViolations(x), [], `${x.label}: no CSP violations`);
    });
  });

  test("a key revealed that is not the one committed to stops E2EE, and both pages say why", { timeout: 180_000 }, async () => {
    await withService({}, async ({ service, people }) => {
      const doctor = await launchParticipant("doctor", { origin: service.url });
      people.push(doctor);
      const patient = await launchParticipant("patient (key swapped)", { origin: service.url });
      people.push(patient);
      // A middle on the patient's key channel: its hello carries another key than the one its
      // commitment named (what a middle that grinds a key after seeing the doctor's would send).
      await patient.context.addInitScript((otherKey) => {
        const send = RTCDataChannel.prototype.send;
        /** @this {RTCDataChannel} @param {any} data */
        RTCDataChannel.prototype.send = function (data) {
          if (this.label === "consult-e2ee" && typeof data === "string") {
            const message = JSON.parse(data);
            if (message.type === "hello") data = JSON.stringify({ ...message, public_key: otherKey });
          }
          return send.call(this, data);
        };
      }, OTHER_PUBLIC_KEY);
      await joinE2eeCall(service, doctor, patient, { title: "E2EE, swapped key", patientName: "Pat Swapped" });

      const status = (/** @type {RegExp} */ pattern) => (/** @type {import('./harness.mjs').Participant} */ p) =>
        p.page.waitForFunction((source) => new RegExp(source, "i").test(document.querySelector('[data-testid="call-status"]')?.textContent ?? ""), pattern.source, { timeout: 30_000 });
      await status(/patient.s encryption key failed its security check/)(doctor);
      await status(/doctor.s device found that the encryption key it received was not the one committed to/)(patient);
      const d = await e2eeSnapshot(doctor.page);
      const p = await e2eeSnapshot(patient.page);
      assert.equal(d.problem, "key-check-failed");
      assert.equal(p.problem, "peer-key-check-failed");
      for (const [x, s] of [[doctor, d], [patient, p]]) {
        assert.equal(s.sas, null, `${x.label}: no security code is shown`);
        assert.ok(await byTestId(x.page, "e2ee-badge").isHidden(), `${x.label}: no lock badge`);
        const media = await inboundStats(x.page);
        assert.equal(media?.framesDecoded ?? 0, 0, `${x.label} decoded no video: ${JSON.stringify(media)}`);
      }
      const later = await waitForE2ee(doctor.page, (s) => (s.worker?.send?.video?.droppedWithoutKey ?? 0) > 0, "the doctor's worker dropping frames");
      assert.equal(later.worker.send.video.ok, 0, "the doctor protected nothing: no key was ever agreed");
      assert.equal(later.problem, "key-check-failed", "the reason stays");
    });
  });

  test("a browser without encoded transforms gets no media, and both sides say why", { timeout: 180_000 }, async () => {
    await withService({}, async ({ service, people }) => {
      const doctor = await launchParticipant("doctor", { origin: service.url });
      people.push(doctor);
      const patient = await launchParticipant("patient (no transforms)", { origin: service.url });
      people.push(patient);
      // An older browser: neither RTCRtpScriptTransform nor createEncodedStreams.
      await patient.context.addInitScript(() => {
        delete (/** @type {any} */ (window)).RTCRtpScriptTransform;
        delete (/** @type {any} */ (RTCRtpSender.prototype)).createEncodedStreams;
        delete (/** @type {any} */ (RTCRtpReceiver.prototype)).createEncodedStreams;
      });
      await joinE2eeCall(service, doctor, patient, { title: "E2EE, old browser", patientName: "Pat Old" });

      const status = (/** @type {RegExp} */ pattern) => (/** @type {import('./harness.mjs').Participant} */ p) =>
        p.page.waitForFunction((source) => new RegExp(source, "i").test(document.querySelector('[data-testid="call-status"]')?.textContent ?? ""), pattern.source, { timeout: 30_000 });
      await status(/this browser cannot encrypt/)(patient);
      await status(/patient.s browser or app cannot encrypt/)(doctor);
      const d = await e2eeSnapshot(doctor.page);
      const p = await e2eeSnapshot(patient.page);
      assert.equal(p.problem, "browser-unsupported");
      assert.equal(p.api, null);
      assert.equal(d.problem, "peer-unsupported");
      assert.equal(d.sas, null, "no keys were agreed");
      for (const x of people) {
        assert.ok(await byTestId(x.page, "e2ee-badge").isHidden(), `${x.label}: no lock badge`);
        const media = await inboundStats(x.page);
        assert.equal(media?.framesDecoded ?? 0, 0, `${x.label} decoded no video: ${JSON.stringify(media)}`);
        assert.equal(media?.audioPackets ?? 0, 0, `${x.label} received no audio: ${JSON.stringify(media)}`);
      }
      assert.equal(d.worker.send.video.ok, 0, "the doctor protected nothing: no key");
      assert.ok(d.worker.send.video.droppedWithoutKey > 0, "the doctor's frames were dropped, not sent in the clear");
    });
  });
});
