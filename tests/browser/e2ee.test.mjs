// End-to-end encryption between two real browsers (headless Chromium): a consultation created
// with "End-to-end encryption", the doctor and the patient in the call, once with VP8 and once
// with H.264 (forced with the web demo's `consult.videoCodec` setting, which orders
// setCodecPreferences). Media decodes both ways through the SFrame transform worker, the lock
// badge shows on both sides, both show the same security code (SAS), the workers count frames
// protected and opened both ways with no tampering, and chat still works (sealed). Prints the
// worker's added latency per frame (`E2EE worker latency ...`).
//
// Then rotation: new epochs mid-call on both sides leave no gap over one second in the decoded
// video, and a reload of the patient's page (a leave and a join) brings a new epoch, a new
// code, and protected media again.
//
// Run: cd tests/browser && node --test e2ee.test.mjs   (CONSULT_BIN: a service with the e2ee flag)

import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";

import {
  byTestId,
  createE2eeConsultation,
  e2eeSnapshot,
  closeAll,
  cspViolations,
  diagnostics,
  inboundStats,
  launchParticipant,
  openConsultation,
  patientJoin,
  sendChat,
  signInDoctor,
  startService,
  STEP_TIMEOUT_MS,
  waitForChat,
  waitForRemoteMedia,
} from "./harness.mjs";

/**
 * A participant whose pages prefer `codec` for video; with `encodedStreams`, a browser that has
 * only the older `createEncodedStreams()` API (no `RTCRtpScriptTransform`).
 * @param {string} label
 * @param {import('./harness.mjs').Service} service
 * @param {"vp8" | "h264"} codec
 * @param {{ encodedStreams?: boolean }} [options]
 */
async function launchWithCodec(label, service, codec, { encodedStreams = false } = {}) {
  const p = await launchParticipant(label, { origin: service.url });
  await p.context.addInitScript((c) => localStorage.setItem("consult.videoCodec", c), codec);
  if (encodedStreams) {
    await p.context.addInitScript(() => {
      delete (/** @type {any} */ (window)).RTCRtpScriptTransform;
    });
  }
  return p;
}

/**
 * Wait until the page's E2EE snapshot satisfies `predicate`.
 * @param {import('playwright-core').Page} page
 * @param {(s: any) => boolean} predicate
 * @param {string} what
 * @param {number} [timeoutMs]
 */
async function waitForE2ee(page, predicate, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  let last = null;
  while (Date.now() < deadline) {
    last = await e2eeSnapshot(page).catch((err) => ({ error: String(err) }));
    if (last && !last.error && predicate(last)) return last;
    await sleep(200);
  }
  throw new Error(`E2EE: no ${what} within ${timeoutMs} ms; last ${JSON.stringify(last)}`);
}

/** Every flow of a worker carried protected (sent) or opened (received) frames. */
const allFlowsProtected = (/** @type {any} */ s) =>
  !!s.worker && ["send", "receive"].every((side) => ["audio", "video"].every((kind) => s.worker[side][kind].ok > 0));

/**
 * The inbound video codec of the page's connection.
 * @param {import('playwright-core').Page} page
 */
function inboundVideoCodec(page) {
  return page.evaluate(async () => {
    const pc = /** @type {RTCPeerConnection | null} */ (/** @type {any} */ (window).consultPc);
    if (!pc) return null;
    const report = await pc.getStats();
    let mime = null;
    report.forEach((/** @type {any} */ s) => {
      if (s.type === "inbound-rtp" && s.kind === "video" && s.codecId) mime = report.get(s.codecId)?.mimeType ?? null;
    });
    return mime;
  });
}

/**
 * Start sampling the page's decoded video frames every ~100 ms (`__frameTimes`: when the count grew).
 * @param {import('playwright-core').Page} page
 */
async function startGapProbe(page) {
  await page.evaluate(() => {
    const w = /** @type {any} */ (window);
    w.__frameTimes = [];
    w.__lastDecoded = -1;
    w.__gapProbe = setInterval(async () => {
      const pc = w.consultPc;
      if (!pc) return;
      try {
        const report = await pc.getStats();
        let decoded = 0;
        report.forEach((/** @type {any} */ s) => {
          if (s.type === "inbound-rtp" && s.kind === "video") decoded += s.framesDecoded ?? 0;
        });
        if (decoded > w.__lastDecoded) {
          w.__lastDecoded = decoded;
          w.__frameTimes.push(performance.now());
        }
      } catch {
        // The connection was replaced meanwhile.
      }
    }, 100);
  });
}

/**
 * Stop sampling; the longest time without a new decoded frame, and the number of samples.
 * @param {import('playwright-core').Page} page
 */
function stopGapProbe(page) {
  return page.evaluate(() => {
    const w = /** @type {any} */ (window);
    clearInterval(w.__gapProbe);
    /** @type {number[]} */
    const times = w.__frameTimes;
    let longest = 0;
    for (let i = 1; i < times.length; i++) longest = Math.max(longest, times[i] - times[i - 1]);
    return { longestGapMs: Math.round(longest), samples: times.length };
  });
}

/**
 * Doctor and patient in an E2EE consultation with media both ways.
 * @param {import('./harness.mjs').Service} service
 * @param {"vp8" | "h264"} codec
 * @param {{ encodedStreams?: boolean }} [options]
 */
async function e2eeCall(service, codec, options = {}) {
  const doctor = await launchWithCodec(`doctor (${codec})`, service, codec, options);
  const patient = await launchWithCodec(`patient (${codec})`, service, codec, options);
  await signInDoctor(doctor.page, service);
  const inviteUrl = await createE2eeConsultation(doctor.page, `E2EE ${codec}`);
  await openConsultation(doctor.page);
  await patientJoin(patient.page, inviteUrl, "Pat Secure");
  const entry = byTestId(doctor.page, "waiting-entry").filter({ hasText: "Pat Secure" });
  await entry.waitFor({ state: "visible" });
  await entry.locator('[data-testid="admit-button"]').click();
  return { doctor, patient, inviteUrl };
}

/**
 * Print the worker's added latency per frame so that it can be read from the test output.
 * @param {string} who
 * @param {any} snapshot
 */
function logLatency(who, snapshot) {
  const l = snapshot.worker.latency;
  const ms = (/** @type {number | null} */ v) => (v === null ? "n/a" : `${v.toFixed(3)} ms`);
  console.log(
    `E2EE worker latency (${who}): protect median ${ms(l.protect.median)} p99 ${ms(l.protect.p99)} mean ${ms(l.protect.mean)} (${l.protect.count} frames); ` +
      `unprotect median ${ms(l.unprotect.median)} p99 ${ms(l.unprotect.p99)} mean ${ms(l.unprotect.mean)} (${l.unprotect.count} frames)`,
  );
}

describe("end-to-end encrypted browser consultation", { timeout: 600_000 }, () => {
  for (const codec of /** @type {const} */ (["vp8", "h264"])) {
    test(`${codec}: media both ways through SFrame, badge on both sides, equal security codes`, { timeout: 180_000 }, async () => {
      /** @type {import('./harness.mjs').Service | null} */
      let service = null;
      /** @type {import('./harness.mjs').Participant[]} */
      let people = [];
      try {
        service = await startService();
        const { doctor, patient } = await e2eeCall(service, codec);
        people = [doctor, patient];
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
      } catch (err) {
        if (err instanceof Error) err.message += diagnostics(service, people);
        throw err;
      } finally {
        await closeAll(people);
        await service?.stop();
      }
    });
  }

  test("browsers with only createEncodedStreams() use it in the same worker", { timeout: 180_000 }, async () => {
    /** @type {import('./harness.mjs').Service | null} */
    let service = null;
    /** @type {import('./harness.mjs').Participant[]} */
    let people = [];
    try {
      service = await startService();
      const { doctor, patient } = await e2eeCall(service, "vp8", { encodedStreams: true });
      people = [doctor, patient];
      for (const p of people) await waitForRemoteMedia(p.page, 45_000);
      const [d, p] = await Promise.all(people.map((x) => waitForE2ee(x.page, (s) => allFlowsProtected(s) && s.badge, "protected media both ways")));
      for (const s of [d, p]) {
        assert.equal(s.api, "encoded-streams");
        assert.equal(s.worker.rejected.tampered, 0);
      }
      assert.equal(d.sas, p.sas);
      for (const x of people) assert.deepEqual(cspViolations(x), [], `${x.label}: no CSP violations`);
    } catch (err) {
      if (err instanceof Error) err.message += diagnostics(service, people);
      throw err;
    } finally {
      await closeAll(people);
      await service?.stop();
    }
  });

  test("a browser without encoded transforms gets no media, and both sides say why", { timeout: 180_000 }, async () => {
    /** @type {import('./harness.mjs').Service | null} */
    let service = null;
    /** @type {import('./harness.mjs').Participant[]} */
    let people = [];
    try {
      service = await startService();
      const doctor = await launchParticipant("doctor", { origin: service.url });
      const patient = await launchParticipant("patient (no transforms)", { origin: service.url });
      people = [doctor, patient];
      // An older browser: neither RTCRtpScriptTransform nor createEncodedStreams.
      await patient.context.addInitScript(() => {
        delete (/** @type {any} */ (window)).RTCRtpScriptTransform;
        delete (/** @type {any} */ (RTCRtpSender.prototype)).createEncodedStreams;
        delete (/** @type {any} */ (RTCRtpReceiver.prototype)).createEncodedStreams;
      });
      await signInDoctor(doctor.page, service);
      const inviteUrl = await createE2eeConsultation(doctor.page, "E2EE, old browser");
      await openConsultation(doctor.page);
      await patientJoin(patient.page, inviteUrl, "Pat Old");
      const entry = byTestId(doctor.page, "waiting-entry").filter({ hasText: "Pat Old" });
      await entry.waitFor({ state: "visible" });
      await entry.locator('[data-testid="admit-button"]').click();

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
    } catch (err) {
      if (err instanceof Error) err.message += diagnostics(service, people);
      throw err;
    } finally {
      await closeAll(people);
      await service?.stop();
    }
  });

  test("rotation mid-call leaves no video gap over one second; a leave and join starts a new epoch", { timeout: 240_000 }, async () => {
    /** @type {import('./harness.mjs').Service | null} */
    let service = null;
    /** @type {import('./harness.mjs').Participant[]} */
    let people = [];
    try {
      service = await startService();
      const { doctor, patient } = await e2eeCall(service, "vp8");
      people = [doctor, patient];
      for (const p of people) await waitForRemoteMedia(p.page, 45_000);
      for (const p of people) await waitForE2ee(p.page, (s) => allFlowsProtected(s) && s.badge, "protected media both ways");

      await startGapProbe(doctor.page);
      await startGapProbe(patient.page);
      await sleep(1500);
      for (let round = 0; round < 2; round++) {
        for (const [from, to] of [[doctor, patient], [patient, doctor]]) {
          const before = (await e2eeSnapshot(from.page)).epochs.send;
          await from.page.evaluate(() => /** @type {any} */ (window).consultE2ee.rotateNow());
          await waitForE2ee(from.page, (s) => s.epochs.send === before + 1 && s.worker.sendEpoch === before + 1, `${from.label} sending under epoch ${before + 1}`, 10_000);
          await waitForE2ee(to.page, (s) => s.epochs.receive === before + 1, `${to.label} holding epoch ${before + 1}`, 10_000);
          await sleep(1500);
        }
      }
      // Old keys go after the grace window: only the newest epoch is left in the receivers.
      for (const p of people) {
        const s = await waitForE2ee(p.page, (x) => x.worker.receiveEpochs.length === 1, "old receive keys erased", 10_000);
        assert.deepEqual(s.worker.receiveEpochs, [s.epochs.receive]);
        assert.equal(s.worker.rejected.tampered, 0);
      }
      await sleep(1000);
      for (const p of people) {
        const gap = await stopGapProbe(p.page);
        console.log(`E2EE rotation (${p.label}): longest time without a decoded frame ${gap.longestGapMs} ms over ${gap.samples} samples`);
        assert.ok(gap.samples > 20, `${p.label}: video kept decoding (${gap.samples} samples)`);
        assert.ok(gap.longestGapMs < 1000, `${p.label}: no video gap over one second during rotation (longest ${gap.longestGapMs} ms)`);
      }
      for (const p of people) assert.ok((await e2eeSnapshot(p.page)).badge, `${p.label}: the badge stayed`);

      // A leave and a join: the patient reloads and takes its place back on a new connection.
      const sasBefore = (await e2eeSnapshot(doctor.page)).sas;
      const doctorEpoch = (await e2eeSnapshot(doctor.page)).epochs.send;
      await patient.page.reload();
      await byTestId(patient.page, "remote-video").waitFor({ state: "visible", timeout: 30_000 });
      for (const p of people) await waitForRemoteMedia(p.page, 45_000);
      const after = await waitForE2ee(doctor.page, (s) => s.badge && s.sas && s.sas !== sasBefore && s.epochs.send > doctorEpoch, "a new epoch and code after the rejoin");
      const patientAfter = await waitForE2ee(patient.page, (s) => s.badge && allFlowsProtected(s), "protected media after the rejoin");
      assert.equal(patientAfter.sas, after.sas, "equal codes after the rejoin");
      for (const p of people) assert.deepEqual(cspViolations(p), [], `${p.label}: no CSP violations`);
    } catch (err) {
      if (err instanceof Error) err.message += diagnostics(service, people);
      throw err;
    } finally {
      await closeAll(people);
      await service?.stop();
    }
  });
});
