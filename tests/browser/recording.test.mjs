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
import { mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";

import {
  admitFromWaitingRoom,
  announcedPeers,
  apiGet,
  byTestId,
  CONSULT_BIN,
  createConsultation,
  cspViolations,
  endConsultation,
  launchParticipant,
  openConsultation,
  openConsultationId,
  patientJoin,
  runCommand,
  signInDoctor,
  waitForRemoteMedia,
  watchSignaling,
  withService,
} from "./harness.mjs";

const FFMPEG_BIN = process.env.FFMPEG_BIN ?? "ffmpeg";
const FFPROBE_BIN = process.env.FFPROBE_BIN ?? "ffprobe";

/** How long the recorded call of the consent test runs. */
const RECORDED_CALL_MS = 8000;
/** How long the withdrawal test records before the patient stops it. */
const RECORD_BEFORE_WITHDRAWAL_MS = 4000;

/**
 * @typedef {import('./harness.mjs').Participant & { frames: import('./harness.mjs').SignalFrame[] }} Watched
 *   A participant whose signaling is recorded and whose page notes every recording state and every
 *   recorder connection (see {@link installRecordingProbe}).
 */

/**
 * Runs in every document of a participant, before the page's scripts: notes each change of the
 * recording indicator's `data-state` and each assignment of `window.consultRecorderPc`, with
 * `Date.now()` (the same clock as the test's: one machine).
 */
function installRecordingProbe() {
  const w = /** @type {any} */ (window);
  /** @type {{ states: { state: string | null, at: number }[], recorderPcs: { present: boolean, at: number }[] }} */
  const probe = { states: [], recorderPcs: [] };
  w.__recordingProbe = probe;
  /** @type {RTCPeerConnection | null} */
  let recorderPc = null;
  Object.defineProperty(window, "consultRecorderPc", {
    configurable: true,
    get: () => recorderPc,
    set: (value) => {
      recorderPc = value ?? null;
      probe.recorderPcs.push({ present: !!recorderPc, at: Date.now() });
    },
  });
  document.addEventListener("DOMContentLoaded", () => {
    const indicator = document.querySelector('[data-testid="recording-indicator"]');
    if (!indicator) return;
    const note = () => {
      const state = indicator.getAttribute("data-state");
      const last = probe.states[probe.states.length - 1];
      if (!last || last.state !== state) probe.states.push({ state, at: Date.now() });
    };
    new MutationObserver(note).observe(indicator, { attributes: true, attributeFilter: ["data-state"] });
    note();
  });
}

/**
 * Launch a participant with the recording probe and a signaling watch, pushed into `people`.
 * @param {import('./harness.mjs').ServiceScope} scope
 * @param {string} label
 * @returns {Promise<Watched>}
 */
async function launchWatched({ service, people }, label) {
  const p = await launchParticipant(label, { origin: service.url });
  people.push(p);
  await p.context.addInitScript(installRecordingProbe);
  return { ...p, frames: watchSignaling(p.page) };
}

/**
 * @param {import('playwright-core').Page} page
 * @returns {Promise<{ states: { state: string | null, at: number }[], recorderPcs: { present: boolean, at: number }[] }>}
 */
function probeOf(page) {
  return page.evaluate(() => /** @type {any} */ (window).__recordingProbe);
}

/**
 * The doctor signed in with a new consultation open, the patient admitted, media flowing both ways.
 * @param {import('./harness.mjs').ServiceScope} scope
 * @param {{ title: string, mode: "live_only" | "recorded" }} options
 */
async function startCall(scope, { title, mode }) {
  const [doctor, patient] = await Promise.all([launchWatched(scope, "doctor"), launchWatched(scope, "patient")]);
  await signInDoctor(doctor.page, scope.service);
  const inviteUrl = await createConsultation(doctor.page, title, { mode });
  await openConsultation(doctor.page);
  const id = openConsultationId(doctor.page);
  await patientJoin(patient.page, inviteUrl, "Pat Example");
  await admitFromWaitingRoom(doctor.page, "Pat Example");
  await waitForRemoteMedia(patient.page);
  await waitForRemoteMedia(doctor.page);
  return { doctor, patient, id };
}

/**
 * Wait until the page's recording indicator shows `state`; returns when it first did.
 * @param {import('playwright-core').Page} page
 * @param {string} state
 * @param {number} [timeoutMs]
 */
async function waitForRecordingState(page, state, timeoutMs = 20_000) {
  await page.locator(`[data-testid="recording-indicator"][data-state="${state}"]`).waitFor({ state: "visible", timeout: timeoutMs });
  const reached = (await probeOf(page)).states.find((s) => s.state === state);
  if (!reached) throw new Error(`the probe missed the indicator's ${state}`);
  return reached.at;
}

/**
 * @param {import('playwright-core').Page} page
 * @returns {Promise<string>}
 */
async function indicatorText(page) {
  return ((await byTestId(page, "recording-indicator").textContent()) ?? "").trim();
}

/**
 * Wait until the page's connection to the recorder is connected.
 * @param {import('playwright-core').Page} page
 * @param {number} [timeoutMs]
 */
async function waitForRecorderConnected(page, timeoutMs = 20_000) {
  await page.waitForFunction(
    () => /** @type {any} */ (window).consultRecorderPc?.connectionState === "connected",
    null,
    { timeout: timeoutMs },
  );
}

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
 * The consultation's recordings, as the doctor lists them.
 * @param {import('playwright-core').Page} page
 * @param {string} consultationId
 * @returns {Promise<any[]>}
 */
async function listRecordings(page, consultationId) {
  const { status, body } = await apiGet(page, `/api/v1/consultations/${consultationId}/recordings`);
  assert.equal(status, 200, `GET recordings: ${status} ${JSON.stringify(body)}`);
  return body.recordings;
}

/**
 * Wait until the consultation has exactly one recording, in `state` (it may be finishing first).
 * @param {import('playwright-core').Page} page
 * @param {string} consultationId
 * @param {string} state
 * @param {number} [timeoutMs]
 */
async function waitForOneRecording(page, consultationId, state, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  /** @type {any} */
  let last = null;
  while (Date.now() < deadline) {
    last = await listRecordings(page, consultationId);
    if (last.length === 1 && last[0].state === state) return last[0];
    if (last.length > 1) break;
    await sleep(500);
  }
  throw new Error(`expected one recording in state ${state}; last answer ${JSON.stringify(last)}`);
}

/**
 * Export a recording with the CLI, then look at it with ffprobe and decode it all with ffmpeg.
 * @param {import('./harness.mjs').Service} service
 * @param {string} recordingId
 * @param {import("playwright-core").Page} doctorPage
 */
async function exportAndInspect(service, recordingId, doctorPage) {
  const dir = await mkdtemp(join(tmpdir(), "consult-recording-"));
  try {
    const file = join(dir, "recording.webm");
    const args = ["recording", "export", recordingId, "--out", file, "--data-dir", service.dataDir];
    // The operator alone may not export: refused, audited, and no file appears.
    const refused = await runCommand(CONSULT_BIN, args);
    assert.notEqual(refused.code, 0, "an export without the clinician's session is refused");
    assert.match(refused.stderr, /export refused: operators may list and shred recordings, never play or export them/);
    await assert.rejects(stat(file), "no file after a refused export");
    // The clinician's session (the HttpOnly cookie of the doctor's page) may.
    const cookie = (await doctorPage.context().cookies()).find((c) => c.name === "consult_session");
    assert.ok(cookie, "the doctor's session cookie");
    const tokenFile = join(dir, "session-token");
    await writeFile(tokenFile, cookie.value, { mode: 0o600 });
    const exported = await runCommand(CONSULT_BIN, [...args, "--session-token-file", tokenFile]);
    assert.equal(exported.code, 0, `consult recording export failed:\n${exported.stderr}${exported.stdout}`);
    const run = async (/** @type {string} */ bin, /** @type {string[]} */ args) => {
      try {
        return await runCommand(bin, args);
      } catch (err) {
        throw new Error(`${err instanceof Error ? err.message : err} (apt-get install ffmpeg, or set FFMPEG_BIN / FFPROBE_BIN)`);
      }
    };
    const probed = await run(FFPROBE_BIN, ["-v", "error", "-show_entries", "stream=codec_type,codec_name", "-show_entries", "format=duration", "-of", "json", file]);
    assert.equal(probed.code, 0, `ffprobe failed:\n${probed.stderr}`);
    const info = JSON.parse(probed.stdout);
    const decoded = await run(FFMPEG_BIN, ["-v", "error", "-xerror", "-i", file, "-f", "null", "-"]);
    return {
      streams: /** @type {{ codec_type: string, codec_name: string }[]} */ (info.streams ?? []),
      durationMs: Number(info.format?.duration) * 1000,
      decoded,
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * The export holds VP8 video and Opus audio, decodes without a single error, and lasts about
 * `expectedMs`.
 * @param {Awaited<ReturnType<typeof exportAndInspect>>} media
 * @param {number} expectedMs
 * @param {number} toleranceMs
 */
function assertRecordingMedia(media, expectedMs, toleranceMs) {
  const kinds = media.streams.map((s) => `${s.codec_type}/${s.codec_name}`);
  assert.ok(kinds.includes("video/vp8"), `a VP8 video stream (streams: ${kinds.join(", ")})`);
  assert.ok(kinds.includes("audio/opus"), `an Opus audio stream (streams: ${kinds.join(", ")})`);
  assert.ok(
    Math.abs(media.durationMs - expectedMs) <= toleranceMs,
    `duration ${Math.round(media.durationMs)} ms, recorded ${expectedMs} ms (± ${Math.round(toleranceMs)} ms)`,
  );
  assert.equal(media.decoded.code, 0, `ffmpeg decodes the whole file:\n${media.decoded.stderr}`);
  assert.equal(media.decoded.stderr, "", "ffmpeg reports no error");
}

/**
 * The patient allows recording: the dialog was asked properly, goes away, and both pages record,
 * each with its connection to the recorder up. Returns when both pages first showed `recording`.
 * @param {Watched} doctor
 * @param {Watched} patient
 */
async function allowRecording(doctor, patient) {
  const dialog = byTestId(patient.page, "consent-dialog");
  await dialog.waitFor({ state: "visible" });
  await byTestId(patient.page, "consent-allow").click();
  await dialog.waitFor({ state: "hidden" });
  const [doctorAt, patientAt] = await Promise.all([
    waitForRecordingState(doctor.page, "recording"),
    waitForRecordingState(patient.page, "recording"),
  ]);
  await Promise.all([waitForRecorderConnected(doctor.page), waitForRecorderConnected(patient.page)]);
  return Math.max(doctorAt, patientAt);
}

describe("recording with the patient's consent", { timeout: 900_000 }, () => {
  test("live only: both pages say so, no recorder ever joins, nothing is recorded", { timeout: 180_000 }, async () => {
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
      await sleep(5000);
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

      const recordingSince = await allowRecording(doctor, patient);
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

      await sleep(Math.max(0, recordingSince + RECORDED_CALL_MS - Date.now()));
      const endedAt = await endConsultation(doctor.page, patient.page);
      const recordedMs = endedAt - recordingSince;
      for (const p of [doctor, patient]) {
        assert.equal(await p.page.evaluate(() => /** @type {any} */ (window).consultRecorderPc ?? null), null, `${p.label}: recorder connection closed`);
      }

      const recording = await waitForOneRecording(doctor.page, id, "complete");
      const media = await exportAndInspect(scope.service, recording.id, doctor.page);
      t.diagnostic(`recorded ${recordedMs} ms; export: ${JSON.stringify(media.streams)}, ${Math.round(media.durationMs)} ms`);
      assertRecordingMedia(media, recordedMs, recordedMs * 0.1);
      for (const p of [doctor, patient]) assert.deepEqual(cspViolations(p), []);
    });
  });

  test("consent withdrawn mid-call: recording stops on both sides within a second; what was recorded stays, flagged", { timeout: 240_000 }, async (t) => {
    await withService({}, async (scope) => {
      const { doctor, patient, id } = await startCall(scope, { title: "Withdrawn", mode: "recorded" });
      const recordingSince = await allowRecording(doctor, patient);
      await sleep(Math.max(0, recordingSince + RECORD_BEFORE_WITHDRAWAL_MS - Date.now()));

      const stoppedAt = Date.now();
      await byTestId(patient.page, "recording-stop").click();
      for (const p of [doctor, patient]) {
        const withdrawnAt = await waitForRecordingState(p.page, "withdrawn", 5000);
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
      const recordedMs = stoppedAt - recordingSince;
      t.diagnostic(`recorded ${recordedMs} ms before withdrawal; export: ${JSON.stringify(media.streams)}, ${Math.round(media.durationMs)} ms`);
      assertRecordingMedia(media, recordedMs, 1500);
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
