// End-to-end encryption between two real browsers (headless Chromium), rotation: new epochs
// mid-call on both sides leave no gap over one second in the decoded video, and a reload of the
// patient's page (a leave and a join) brings a new epoch, a new code, and protected media again.
// And rotation by itself, with the pages' test settings (`consult.e2eeRotateMs`,
// `consult.e2eeMaxCounter`): a call on a 3 s timer, and one with a counter limit of 150 frames, go
// through new epochs on both sides with the badge on, the same code, no tampered or expired frame
// and no video gap over one second. These assert real-time gaps, so run.mjs runs this file alone.
//
// Run: cd tests/browser && node --test e2ee.test.mjs   (CONSULT_BIN: a service with the e2ee flag)

import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";

import { e2eeCall } from "./e2ee-calls.mjs";
import {
  allFlowsProtected,
  byTestId,
  cspViolations,
  e2eeSnapshot,
  protectedBothWays,
  waitForE2ee,
  waitForRemoteMedia,
  withService,
} from "./harness.mjs";

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
 * Stop the pages' gap probes; print and check the longest time without a decoded frame.
 * @param {import('./harness.mjs').Participant[]} people
 * @param {string} what What went on meanwhile ("rotation").
 */
async function assertNoVideoGap(people, what) {
  for (const p of people) {
    const gap = await stopGapProbe(p.page);
    console.log(`E2EE ${what} (${p.label}): longest time without a decoded frame ${gap.longestGapMs} ms over ${gap.samples} samples`);
    assert.ok(gap.samples > 20, `${p.label}: video kept decoding (${gap.samples} samples)`);
    assert.ok(gap.longestGapMs < 1000, `${p.label}: no video gap over one second during ${what} (longest ${gap.longestGapMs} ms)`);
  }
}

/**
 * @typedef {object} E2eeSample
 * @property {number} at Milliseconds since the watch started.
 * @property {number} send The epoch this side sends under.
 * @property {boolean} badge
 * @property {string | null} sas
 */

/**
 * Sample each page's send epoch, badge and code every ~200 ms for `durationMs`.
 * @param {import('./harness.mjs').Participant[]} people
 * @param {number} durationMs
 * @returns {Promise<E2eeSample[][]>} One timeline per participant.
 */
async function watchE2ee(people, durationMs) {
  const started = Date.now();
  /** @type {E2eeSample[][]} */
  const timelines = people.map(() => []);
  while (Date.now() - started < durationMs) {
    for (const [i, p] of people.entries()) {
      const s = await e2eeSnapshot(p.page);
      timelines[i].push({ at: Date.now() - started, send: s.epochs.send, badge: s.badge, sas: s.sas });
    }
    await sleep(200);
  }
  return timelines;
}

/**
 * Calls that rotate by themselves, with the same settings on both pages (read when the call
 * starts). `timer`: a new epoch every 3 s, the counter limit left at 2^32. `counter`: a new epoch
 * once 150 frames went under one key (audio and video share the worker's counter: about every
 * 2 s), the timer left at 10 minutes.
 */
const SELF_ROTATION = /** @type {const} */ ([
  {
    cause: "timer",
    storage: { "consult.e2eeRotateMs": "3000" },
    rotation: { everyMs: 3000, maxCounter: 2 ** 32 },
    watchMs: 10_000,
    minNewEpochs: 2,
    // One epoch per expiry: 10 s of a 3 s timer is at most four (a second epoch per expiry was a bug).
    maxNewEpochs: 4,
  },
  {
    cause: "counter limit",
    storage: { "consult.e2eeMaxCounter": "150" },
    rotation: { everyMs: 600_000, maxCounter: 150 },
    watchMs: 6_000,
    minNewEpochs: 1,
  },
]);

describe("end-to-end encrypted browser consultation", { timeout: 600_000 }, () => {
  test("rotation mid-call leaves no video gap over one second; a leave and join starts a new epoch", { timeout: 240_000 }, async () => {
    await withService({}, async (scope) => {
      const { doctor, patient } = await e2eeCall(scope, "vp8");
      const people = [doctor, patient];
      await protectedBothWays(people);

      for (const p of people) await startGapProbe(p.page);
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
      await assertNoVideoGap(people, "rotation");
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
    });
  });

  for (const run of SELF_ROTATION) {
    test(`rotation by itself (${run.cause}): new epochs both ways, badge on, same code, no tampered or expired frame, no video gap over one second`, { timeout: 60_000 }, async () => {
      await withService({}, async (scope) => {
        const { doctor, patient } = await e2eeCall(scope, "vp8", { storage: run.storage });
        const people = [doctor, patient];
        const start = await protectedBothWays(people);
        for (const [i, s] of start.entries()) assert.deepEqual(s.rotation, run.rotation, `${people[i].label}: the rotation settings in effect`);
        const sas = start[0].sas;
        assert.equal(start[1].sas, sas, "equal codes");

        for (const p of people) await startGapProbe(p.page);
        const timelines = await watchE2ee(people, run.watchMs);
        await assertNoVideoGap(people, `${run.cause} rotation`);

        for (const [i, p] of people.entries()) {
          const other = people[1 - i];
          const timeline = timelines[i];
          const first = timeline[0].send;
          const last = timeline[timeline.length - 1].send;
          const switches = timeline.filter((x, j) => j > 0 && x.send !== timeline[j - 1].send).map((x) => x.at);
          const s = await e2eeSnapshot(p.page);
          console.log(
            `E2EE ${run.cause} rotation (${p.label}): send epoch ${first} -> ${last} in ${run.watchMs} ms, switches seen at ${switches.join(", ")} ms; ` +
              `counter asked for ${s.worker.rotationsAsked} epochs; rejected ${JSON.stringify(s.worker.rejected)}`,
          );
          assert.ok(last - first >= run.minNewEpochs, `${p.label}: at least ${run.minNewEpochs} new epochs by the ${run.cause} (${first} -> ${last})`);
          if (run.maxNewEpochs !== undefined) {
            assert.ok(last - first <= run.maxNewEpochs, `${p.label}: at most ${run.maxNewEpochs} new epochs by the ${run.cause} (${first} -> ${last})`);
          }
          assert.ok(timeline.every((x, j) => j === 0 || x.send >= timeline[j - 1].send), `${p.label}: epochs only go up`);
          const off = timeline.filter((x) => !x.badge).map((x) => x.at);
          assert.deepEqual(off, [], `${p.label}: the badge stayed on (off at ${off.join(", ")} ms)`);
          assert.ok(timeline.every((x) => x.sas === sas), `${p.label}: the code did not change`);
          await waitForE2ee(other.page, (x) => x.epochs.receive >= last, `${other.label} holding epoch ${last}`, 5000);
          assert.equal(s.worker.rejected.tampered, 0, `${p.label}: no tampered frames`);
          assert.equal(s.worker.rejected.expired_kid, 0, `${p.label}: no frame under an expired key`);
          if (run.cause === "timer") assert.equal(s.worker.rotationsAsked, 0, `${p.label}: the counter asked for no epoch`);
          else {
            // The worker reports its counts every 500 ms: an ask just before the watch ended may not be in this snapshot yet.
            await waitForE2ee(p.page, (x) => x.worker.rotationsAsked >= last - first, `${p.label}: the counter asked for every new epoch (${last - first})`, 3000);
          }
        }
        for (const p of people) assert.deepEqual(cspViolations(p), [], `${p.label}: no CSP violations`);
      });
    });
  }
});
