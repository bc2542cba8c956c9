// Recording with the patient's consent, in two headless Chromium browsers (doctor and patient):
//
// - live only: both pages say "Live only — not recorded", no recorder ever joins, and the service
//   lists no recording afterwards;
// - recorded, the patient allows it: both pages show "● Recording", the send-only connection to the
//   recorder connects on both, and after the consultation the recording is complete, exports with
//   the CLI, and holds VP8 video and Opus audio as long as the call was recorded;
// - the patient withdraws mid-call: within a second both pages say so and neither sends to the
//   recorder any more; the recording is kept, flagged `withdrawn`, as long as the part recorded;
// - the patient declines: both pages say so, no recorder ever joins, nothing is recorded.
//
// What this test assumes of the service (align these names with the service side):
// - signaling: `{"type":"recording","state":…,"reasons":[…],"retention_days"?,"zero_knowledge",
//   "problem"?}` after `joined` and on every change; `{"type":"consent","recording":true|false}`
//   from the patient; a participant with `"role":"recorder"` in `joined.peers` / `admitted.peers` /
//   `peer_joined.peer` while recording, gone (`peer_left`) when it stops;
// - `POST /api/v1/consultations` with `"mode":"recorded"` is accepted (today: 400
//   `recording_unavailable`);
// - `GET /api/v1/consultations/{id}/recordings` (doctor's session) → `{"recordings":[{"id":…,
//   "state":"complete"|"withdrawn", …}]}`, `{"recordings":[]}` when nothing was recorded; a
//   recording may show another state while it is being finished: the test waits for the final one;
// - `consult recording export <RECORDING_ID> --out <FILE> --data-dir <DIR>` writes a file ffprobe
//   reads (named `.webm` here) with a `vp8` video and an `opus` audio stream, exit status 0.
// Needs ffmpeg and ffprobe (Debian's `ffmpeg` package; FFMPEG_BIN / FFPROBE_BIN to override).
//
// Run: cd tests/browser && node --test recording.test.mjs

import assert from "node:assert/strict";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";

import {
  allowRecording,
  announcedPeers,
  apiGet,
  assertRecordingMedia,
  byTestId,
  cpuMillis,
  cspViolations,
  endConsultation,
  exportAsClinician,
  exportRecording,
  indicatorText,
  inspectRecording,
  listRecordings,
  probeOf,
  recordingBounds,
  startCall,
  waitForOneRecording,
  waitForRecordingState,
  waitForRemoteMedia,
  withService,
} from "./harness.mjs";

/** How long the recorded call of the consent test runs. */
const RECORDED_CALL_MS = 8000;
/** How long the withdrawal test records before the patient stops it. */
const RECORD_BEFORE_WITHDRAWAL_MS = 4000;

/** @typedef {import('./harness.mjs').Watched} Watched */

/**
 * Nothing of this page ever met a recorder: the service announced none, the page never made a
 * connection to one, and the page shows none.
 * @param {Watched} p
 */
async function assertNoRecorderEver(p) {
  const recorders = announcedPeers(p.frames).filter((peer) => peer.role === "recorder");
  assert.deepEqual(recorders, [], `${p.label}: no recorder among the participants`);
  assert.deepEqual((await probeOf(p.page)).recorderPcs, [], `${p.label}: no connection to a recorder, ever`);
  assert.equal(await p.page.evaluate(() => /** @type {any} */ (window).consultRecorderPc ?? null), null);
  assert.ok(await byTestId(p.page, "participant-recorder").isHidden(), `${p.label}: no recorder shown`);
}

/**
 * The `consent` messages the patient's page sent, in order.
 * @param {Watched} patient
 */
function consentsSent(patient) {
  return patient.frames.filter((f) => f.direction === "out" && f.message?.type === "consent").map((f) => f.message.recording);
}

/**
 * Export a recording with the CLI, then look at it with ffprobe and decode it all with ffmpeg.
 * The operator alone is refused first.
 * @param {import('./harness.mjs').Service} service
 * @param {string} recordingId
 * @param {import("playwright-core").Page} doctorPage
 */
async function exportAndInspect(service, recordingId, doctorPage) {
  const dir = await mkdtemp(join(tmpdir(), "consult-recording-"));
  try {
    const file = join(dir, "recording.webm");
    // The operator alone may not export: refused, audited, and no file appears.
    const refused = await exportRecording(service, recordingId, file);
    assert.notEqual(refused.code, 0, "an export without the clinician's session is refused");
    assert.match(refused.stderr, /export refused: operators may list and shred recordings, never play or export them/);
    await assert.rejects(stat(file), "no file after a refused export");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  // The clinician's session (the HttpOnly cookie of the doctor's page) may.
  const exported = await exportAsClinician(service, recordingId, doctorPage);
  assert.equal(exported.code, 0, `consult recording export failed:\n${exported.stderr}${exported.stdout}`);
  assert.ok(exported.media, `the export wrote its file (${exported.files.join(", ")})`);
  return exported.media;
}

describe("recording with the patient's consent", { timeout: 900_000 }, () => {
  test("live only: both pages say so, no recorder ever joins, nothing is recorded", { timeout: 180_000 }, async (t) => {
    await withService({}, async (scope) => {
      const { doctor, patient, id } = await startCall(scope, { title: "Live only", mode: "live_only" });
      for (const p of [doctor, patient]) {
        await waitForRecordingState(p.page, "live_only");
        assert.equal(await indicatorText(p.page), "Live only — not recorded");
        assert.ok(
          p.frames.some((f) => f.direction === "in" && f.message?.type === "recording" && f.message.state === "live_only"),
          `${p.label}: the service said live_only`,
        );
      }
      const cpuAtStart = await cpuMillis(scope.service.pid);
      await sleep(5000);
      // The baseline for the recorded call's figure: the service's CPU with no recorder.
      t.diagnostic(`service CPU, live only: ${Math.round((await cpuMillis(scope.service.pid)) - cpuAtStart) / 5} ms per second of call`);
      for (const p of [doctor, patient]) await assertNoRecorderEver(p);
      assert.ok(await byTestId(patient.page, "consent-dialog").isHidden(), "the patient is not asked");
      assert.deepEqual(consentsSent(patient), []);

      await endConsultation(doctor.page, patient.page);
      const { status, body } = await apiGet(doctor.page, `/api/v1/consultations/${id}/recordings`);
      assert.equal(status, 200);
      assert.deepEqual(body, { recordings: [] });
      for (const p of [doctor, patient]) assert.deepEqual(cspViolations(p), []);
    });
  });

  test("recorded with consent: both pages record, the recorder connects, the export is the call", { timeout: 240_000 }, async (t) => {
    await withService({}, async (scope) => {
      const { doctor, patient, id } = await startCall(scope, { title: "Recorded", mode: "recorded" });
      await waitForRecordingState(doctor.page, "awaiting_consent");
      assert.equal(await indicatorText(doctor.page), "Waiting for the patient’s consent to record");

      // The question: an accessible modal, in plain words, focused.
      const dialog = byTestId(patient.page, "consent-dialog");
      await dialog.waitFor({ state: "visible" });
      assert.equal(await dialog.getAttribute("role"), "dialog");
      assert.equal(await dialog.getAttribute("aria-modal"), "true");
      assert.ok(await dialog.evaluate((el) => el.contains(document.activeElement)), "focus is in the dialog");
      const asked = (await dialog.textContent()) ?? "";
      const joined = patient.frames.find((f) => f.direction === "in" && f.message?.type === "joined")?.message;
      assert.ok(asked.includes(`${joined.consultation.doctor_name} would like to record this consultation.`), asked);
      const awaiting = patient.frames.find((f) => f.direction === "in" && f.message?.type === "recording" && f.message.state === "awaiting_consent")?.message;
      if (awaiting?.retention_days !== undefined) assert.ok(asked.includes(`kept for ${awaiting.retention_days} day`), asked);
      assert.match(asked, /You can stop the recording at any time, and saying no does not affect your care\./);
      // Nothing goes to a recorder before the answer.
      for (const p of [doctor, patient]) assert.deepEqual((await probeOf(p.page)).recorderPcs, [], `${p.label}: nothing before consent`);

      const allowed = await allowRecording(doctor, patient);
      const cpuAtStart = await cpuMillis(scope.service.pid);
      for (const p of [doctor, patient]) {
        assert.equal(await indicatorText(p.page), "● Recording");
        await byTestId(p.page, "participant-recorder").waitFor({ state: "visible" });
        assert.equal(await p.page.evaluate(() => /** @type {any} */ (window).consultPc !== /** @type {any} */ (window).consultRecorderPc), true);
      }
      await byTestId(patient.page, "recording-stop").waitFor({ state: "visible" });
      assert.deepEqual(consentsSent(patient), [true]);
      // The call itself goes on undisturbed next to the recorder's connection.
      await waitForRemoteMedia(patient.page);
      await waitForRemoteMedia(doctor.page);

      await sleep(Math.max(0, allowed.since + RECORDED_CALL_MS - Date.now()));
      // A figure, not a check: the service's CPU per second of a recorded 1:1 call (signaling
      // plus the recorder's two peers, SRTP and sealing).
      const cpuMs = (await cpuMillis(scope.service.pid)) - cpuAtStart;
      t.diagnostic(`service CPU while recording: ${Math.round(cpuMs / ((Date.now() - allowed.since) / 1000))} ms per second of call`);
      const bounds = recordingBounds(allowed, await endConsultation(doctor.page, patient.page));
      for (const p of [doctor, patient]) {
        assert.equal(await p.page.evaluate(() => /** @type {any} */ (window).consultRecorderPc ?? null), null, `${p.label}: recorder connection closed`);
      }

      const recording = await waitForOneRecording(doctor.page, id, "complete");
      const media = await exportAndInspect(scope.service, recording.id, doctor.page);
      t.diagnostic(`recorded ${bounds.shownMs} ms; export: ${JSON.stringify(media.streams)}, ${Math.round(media.durationMs)} ms`);
      assertRecordingMedia(media, bounds);
      for (const p of [doctor, patient]) assert.deepEqual(cspViolations(p), []);
    });
  });

  test("consent withdrawn mid-call: recording stops on both sides within a second; what was recorded stays, flagged", { timeout: 240_000 }, async (t) => {
    await withService({}, async (scope) => {
      const { doctor, patient, id } = await startCall(scope, { title: "Withdrawn", mode: "recorded" });
      const allowed = await allowRecording(doctor, patient);
      await sleep(Math.max(0, allowed.since + RECORD_BEFORE_WITHDRAWAL_MS - Date.now()));

      const stoppedAt = Date.now();
      await byTestId(patient.page, "recording-stop").click();
      let goneAt = stoppedAt;
      for (const p of [doctor, patient]) {
        const withdrawnAt = await waitForRecordingState(p.page, "withdrawn", 5000);
        goneAt = Math.max(goneAt, withdrawnAt);
        t.diagnostic(`${p.label}: withdrawn after ${withdrawnAt - stoppedAt} ms`);
        assert.ok(withdrawnAt - stoppedAt <= 1000, `${p.label}: withdrawn after ${withdrawnAt - stoppedAt} ms`);
        const probe = await probeOf(p.page);
        const gone = probe.recorderPcs.find((e) => !e.present && e.at >= stoppedAt);
        assert.ok(gone, `${p.label}: the recorder connection was closed (${JSON.stringify(probe.recorderPcs)})`);
        assert.ok(gone.at - stoppedAt <= 1000, `${p.label}: recorder connection closed after ${gone.at - stoppedAt} ms`);
        assert.equal(await p.page.evaluate(() => /** @type {any} */ (window).consultRecorderPc ?? null), null);
        assert.equal(await indicatorText(p.page), "Recording stopped — consent withdrawn");
        await byTestId(p.page, "participant-recorder").waitFor({ state: "hidden" });
      }
      assert.ok(await byTestId(patient.page, "recording-stop").isHidden(), "nothing left to stop");
      assert.deepEqual(consentsSent(patient), [true, false]);
      // Withdrawing stops the recording, not the call.
      await waitForRemoteMedia(patient.page);
      await waitForRemoteMedia(doctor.page);
      await sleep(2000);
      for (const p of [doctor, patient]) {
        assert.ok(!(await probeOf(p.page)).recorderPcs.some((e) => e.present && e.at > stoppedAt), `${p.label}: no new recorder connection`);
      }

      await endConsultation(doctor.page, patient.page);
      const recording = await waitForOneRecording(doctor.page, id, "withdrawn");
      const media = await exportAndInspect(scope.service, recording.id, doctor.page);
      const bounds = recordingBounds(allowed, { stoppedAt, goneAt });
      t.diagnostic(`recorded ${bounds.shownMs} ms before withdrawal; export: ${JSON.stringify(media.streams)}, ${Math.round(media.durationMs)} ms`);
      assertRecordingMedia(media, bounds);
    });
  });

  test("the patient declines: both pages say so, no recorder ever joins, nothing is recorded", { timeout: 180_000 }, async () => {
    await withService({}, async (scope) => {
      const { doctor, patient, id } = await startCall(scope, { title: "Declined", mode: "recorded" });
      const dialog = byTestId(patient.page, "consent-dialog");
      await dialog.waitFor({ state: "visible" });
      await byTestId(patient.page, "consent-decline").click();
      await dialog.waitFor({ state: "hidden" });
      for (const p of [doctor, patient]) {
        await waitForRecordingState(p.page, "declined");
        assert.equal(await indicatorText(p.page), "Not recorded — the patient declined");
      }
      assert.deepEqual(consentsSent(patient), [false]);
      await sleep(3000);
      for (const p of [doctor, patient]) await assertNoRecorderEver(p);
      assert.ok(await byTestId(patient.page, "recording-stop").isHidden());
      assert.ok(await dialog.isHidden(), "declining is final: not asked again");

      await endConsultation(doctor.page, patient.page);
      assert.deepEqual(await listRecordings(doctor.page, id), []);
    });
  });
});
