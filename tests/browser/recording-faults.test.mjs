// Recording when things go wrong, in two headless Chromium browsers (doctor and patient), the
// CLI and the doctor's recordings view:
//
// - the recorder killed mid-call: about 5 s into a recording the service (the recorder runs in its
//   process) gets SIGKILL; started again on the same data directory, it lists the recording as
//   `interrupted`, and the CLI (the doctor's session survives the restart) exports it up to its
//   last sealed chunk with a warning: VP8 and Opus, at least 3 s and at most the recorded time
//   + 1 s, that ffmpeg decodes without an error. The recordings view shows it, with its note, and
//   shreds it (Shred, confirmed: `DELETE` with the CSRF token);
// - the disk full: the service runs in a user and mount namespace (`unshare -rm`) where
//   `vault/media` is a 600 KiB tmpfs; the recording fills it within 30 s, both pages say the
//   recording failed and why, the call goes on (media decoded on both pages for 3 more s), the
//   audit log has `recording_failed` and `recording_stopped`, the recording is listed `failed`,
//   and it exports (the CLI run in the service's namespace, `nsenter`) with the same warning and
//   plays;
// - key rotation and shredding: a recorded call downloaded through the recordings view's link
//   plays; `consult keys rotate` is refused while the service runs; with the service stopped it
//   re-wraps the data key, and the export still plays; `consult recording shred` destroys the
//   key, the export then fails ("was shredded") and leaves no file, and the view (the service
//   started again) shows it shredded, with nothing to download or shred.
//
// What this test assumes of the service, besides what recording.test.mjs does: the export's
// warning `warning: recording <id> was cut short` on stderr for `failed` and `interrupted`
// recordings; the `recording` message `{"state":"failed","problem":"recording stopped: …; the call
// goes on unrecorded"}`; `consult audit export` (JSON lines with `action`, `consultation_id`);
// `consult keys rotate` ("the vault is in use by another process (stop the service first)"
// while it runs, "keys rotated: version N is current; M data keys re-wrapped; …" once stopped);
// `consult recording shred ID`; `GET /api/v1/recordings/{id}/export` with
// `Content-Disposition: attachment; filename="recording-<id>.webm"`.
// Needs ffmpeg and ffprobe, and for the disk-full test `unshare` and `nsenter` (util-linux) with
// user namespaces allowed: without them that test fails and says so.
//
// Run: cd tests/browser && node --test recording-faults.test.mjs

import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";

import {
  allowRecording,
  assertMediaKeepsFlowing,
  assertRecordingMedia,
  byTestId,
  exportAsClinician,
  indicatorText,
  inspectRecording,
  listRecordings,
  openRecordings,
  recordedCall,
  recordingRow,
  runCommand,
  runConsult,
  startCall,
  waitForOneRecording,
  waitForRecordingState,
  withService,
} from "./harness.mjs";

/** How long the recorder runs before the service is killed. */
const RECORD_BEFORE_KILL_MS = 5000;
/** The size of the disk-full test's `vault/media`. */
const MEDIA_DISK_SIZE = "600k";
/** How long the recording may take to fill it. */
const FILL_TIMEOUT_MS = 30_000;
/** How long the call must go on after the recording failed. */
const CALL_GOES_ON_MS = 3000;
/** How long the rotation test's call is recorded. */
const RECORDED_CALL_MS = 5000;
/** What the CLI says when it exports a recording that was cut short. */
const CUT_SHORT = /^warning: recording [0-9a-f-]{36} was cut short/m;

/**
 * The service inside a user and mount namespace of its own (`unshare -rm`) in which
 * `DATA/vault/media` is a tmpfs of `size`, which its recordings fill up; the CLI runs in that
 * namespace too (`nsenter`): nothing else sees what is on the tmpfs, and it is gone with the
 * service.
 * @param {string} size As `mount -o size=` takes it.
 * @returns {import('./harness.mjs').ServiceWrapper}
 */
function smallMediaDisk(size) {
  return {
    async start(argv, dataDir) {
      const media = join(dataDir, "vault", "media");
      await mkdir(media, { recursive: true });
      return ["unshare", "-rm", "sh", "-c", `mount -t tmpfs -o size=${size} tmpfs "$1" && shift && exec "$@"`, "sh", media, ...argv];
    },
    enter: (argv, pid) => ["nsenter", "-t", String(pid), "-U", "-m", "--preserve-credentials", ...argv],
  };
}

/** Fail (never skip) with a clear message when this machine cannot give the service a small disk. */
async function assertSmallDiskPossible() {
  const dir = await mkdtemp(join(tmpdir(), "consult-tmpfs-probe-"));
  try {
    const probe = await runCommand("unshare", ["-rm", "sh", "-c", `mount -t tmpfs -o size=${MEDIA_DISK_SIZE} tmpfs "$1"`, "sh", dir]).catch((err) => ({
      code: null,
      stdout: "",
      stderr: String(err),
    }));
    assert.equal(
      probe.code,
      0,
      "the disk-full test needs `unshare -rm` (util-linux, unprivileged user and mount namespaces) to mount a " +
        `${MEDIA_DISK_SIZE} tmpfs on the vault's media directory, and that failed here:\n${probe.stderr}${probe.stdout}`,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * The consultation's entries in the audit log (`consult audit export`).
 * @param {import('./harness.mjs').Service} service
 * @param {string} consultationId
 * @returns {Promise<any[]>}
 */
async function auditOf(service, consultationId) {
  const exported = await runConsult(service, ["audit", "export"]);
  assert.equal(exported.code, 0, `consult audit export failed:\n${exported.stderr}`);
  return exported.stdout
    .split("\n")
    .filter((line) => line.trim())
    .map((line) => JSON.parse(line))
    .filter((entry) => entry.consultation_id === consultationId);
}

describe("recording when things go wrong", { timeout: 900_000 }, () => {
  test("the recorder killed mid-call: after a restart the recording is interrupted, exports up to its last sealed chunk, and is shredded from the page", { timeout: 240_000 }, async (t) => {
    await withService({}, async (scope) => {
      const { service } = scope;
      const { doctor, patient, id } = await startCall(scope, { title: "Killed mid-call", mode: "recorded" });
      const allowed = await allowRecording(doctor, patient);
      await sleep(Math.max(0, allowed.since + RECORD_BEFORE_KILL_MS - Date.now()));

      // The recorder runs in the service's process: no chance to seal or close anything.
      await service.halt({ signal: "SIGKILL" });
      // Nothing can have been recorded before the consent or after the kill.
      const recordedMs = Date.now() - allowed.consentedAt;
      await service.restart();

      // The doctor's session survived: their page, on the service's new address, lists it.
      await doctor.page.goto(`${service.url}/#/`);
      const recording = await waitForOneRecording(doctor.page, id, "interrupted");
      const exported = await exportAsClinician(service, recording.id, doctor.page);
      t.diagnostic(`recorded ${recordedMs} ms before SIGKILL; ${JSON.stringify(recording)}; export: ${exported.stdout.trim()}; ${Math.round(exported.media?.durationMs ?? 0)} ms`);
      assert.equal(exported.code, 0, `consult recording export failed:\n${exported.stderr}${exported.stdout}`);
      assert.match(exported.stderr, CUT_SHORT);
      assert.ok(exported.media, `the export wrote its file (${exported.files.join(", ")})`);
      assertRecordingMedia(exported.media, { minMs: 3000, maxMs: recordedMs + 1000 });
      // Its row says what survived: the sealed chunks, and an end at its last frame (not at the
      // restart).
      assert.ok(recording.chunks >= 3, `chunks counted: ${recording.chunks}`);
      const lengthMs = Date.parse(recording.ended_at) - Date.parse(recording.started_at);
      assert.ok(lengthMs >= 3000 && lengthMs <= recordedMs + 1000, `length ${lengthMs} ms of ${recordedMs}`);

      // The recordings view: interrupted, with why; shredded from there.
      await openRecordings(doctor.page, service, id);
      const row = recordingRow(doctor.page, recording.id);
      assert.equal(await row.getAttribute("data-state"), "interrupted");
      assert.match((await row.locator('[data-testid="recording-note"]').textContent()) ?? "", /^The service stopped while recording/);
      assert.equal(await row.locator('[data-testid="recording-download"]').getAttribute("href"), `/api/v1/recordings/${recording.id}/export`);
      await row.locator('[data-testid="recording-shred"]').click();
      await row.locator('[data-testid="recording-shred-confirm"]').click();
      await doctor.page.locator(`[data-testid="recording-row"][data-id="${recording.id}"][data-state="shredded"]`).waitFor();
      assert.equal(await row.locator('[data-testid="recording-download"], [data-testid="recording-shred"]').count(), 0, "nothing left to download or shred");
      assert.deepEqual((await listRecordings(doctor.page, id)).map((r) => r.state), ["shredded"]);
      const gone = await exportAsClinician(service, recording.id, doctor.page);
      assert.notEqual(gone.code, 0, "a shredded recording does not export");
      assert.match(gone.stderr, /was shredded/);
    });
  });

  test("the disk full mid-call: both pages say the recording failed, the call goes on, what was sealed exports", { timeout: 240_000 }, async (t) => {
    await assertSmallDiskPossible();
    await withService({ wrapper: smallMediaDisk(MEDIA_DISK_SIZE) }, async (scope) => {
      const { service } = scope;
      const { doctor, patient, id } = await startCall(scope, { title: "Disk full", mode: "recorded" });
      const allowed = await allowRecording(doctor, patient);

      const failedAt = await Promise.all([doctor, patient].map((p) => waitForRecordingState(p.page, "failed", FILL_TIMEOUT_MS)));
      // Nothing can have been recorded before the consent or after both pages said it failed.
      const recordedMs = Math.max(...failedAt) - allowed.consentedAt;
      t.diagnostic(`the ${MEDIA_DISK_SIZE} disk was full after ${recordedMs} ms of recording`);
      for (const p of [doctor, patient]) {
        await byTestId(p.page, "recording-indicator").waitFor({ state: "visible" });
        assert.match(await indicatorText(p.page), /^Recording failed: recording stopped: .+; the call goes on unrecorded$/, `${p.label}: says why`);
        await p.page.waitForFunction(() => !(/** @type {any} */ (window).consultRecorderPc), null, { timeout: 5000 });
      }
      await assertMediaKeepsFlowing([doctor, patient], CALL_GOES_ON_MS);

      const actions = (await auditOf(service, id)).map((e) => e.action);
      assert.ok(actions.includes("recording_failed"), `recording_failed audited (${actions.join(", ")})`);
      assert.ok(actions.includes("recording_stopped"), `recording_stopped audited (${actions.join(", ")})`);
      const recording = await waitForOneRecording(doctor.page, id, "failed");
      const exported = await exportAsClinician(service, recording.id, doctor.page);
      t.diagnostic(`${JSON.stringify(recording)}; export: ${exported.stdout.trim()}; ${Math.round(exported.media?.durationMs ?? 0)} ms`);
      assert.equal(exported.code, 0, `consult recording export failed:\n${exported.stderr}${exported.stdout}`);
      assert.match(exported.stderr, CUT_SHORT);
      assert.ok(exported.media, `the export wrote its file (${exported.files.join(", ")})`);
      assertRecordingMedia(exported.media, { minMs: 3000, maxMs: recordedMs + 1000 });
    });
  });

  test("key rotation and shredding: downloaded from the page, rotated with the service stopped, still exports; shredded, it never does again", { timeout: 240_000 }, async (t) => {
    const dir = await mkdtemp(join(tmpdir(), "consult-recording-"));
    try {
      await withService({}, async (scope) => {
        const { service } = scope;
        const { doctor, id, recording, bounds } = await recordedCall(scope, { title: "Rotated, then shredded", recordMs: RECORDED_CALL_MS });

        // Downloaded the way the doctor does it: the link in the recordings view.
        await openRecordings(doctor.page, service, id);
        const row = recordingRow(doctor.page, recording.id);
        assert.equal(await row.getAttribute("data-state"), "complete");
        const [download] = await Promise.all([doctor.page.waitForEvent("download"), row.locator('[data-testid="recording-download"]').click()]);
        assert.equal(download.suggestedFilename(), `recording-${recording.id}.webm`);
        const downloaded = join(dir, "downloaded.webm");
        await download.saveAs(downloaded);
        const media = await inspectRecording(downloaded);
        t.diagnostic(`recorded ${bounds.shownMs} ms; downloaded: ${JSON.stringify(media.streams)}, ${Math.round(media.durationMs)} ms`);
        assertRecordingMedia(media, bounds);

        // Rotation needs the vault to itself.
        const refused = await runConsult(service, ["keys", "rotate"]);
        assert.notEqual(refused.code, 0, "no rotation while the service runs");
        assert.match(refused.stderr, /the vault is in use by another process \(stop the service first\)/);

        await service.halt();
        const rotated = await runConsult(service, ["keys", "rotate"]);
        assert.equal(rotated.code, 0, `consult keys rotate failed:\n${rotated.stderr}${rotated.stdout}`);
        const said = /^keys rotated: version (\d+) is current; (\d+) data keys re-wrapped; /m.exec(rotated.stdout);
        assert.ok(said, `what keys rotate says: ${rotated.stdout}`);
        assert.ok(Number(said[1]) >= 2, `a new key-encryption key version (${said[1]})`);
        assert.equal(Number(said[2]), 1, "the one recording's data key re-wrapped");
        t.diagnostic(rotated.stdout.trim());

        const afterRotation = await exportAsClinician(service, recording.id, doctor.page);
        assert.equal(afterRotation.code, 0, `consult recording export after the rotation failed:\n${afterRotation.stderr}${afterRotation.stdout}`);
        assert.doesNotMatch(afterRotation.stderr, CUT_SHORT, "a complete recording is not cut short");
        assert.ok(afterRotation.media, `the export wrote its file (${afterRotation.files.join(", ")})`);
        assertRecordingMedia(afterRotation.media, bounds);

        const shredded = await runConsult(service, ["recording", "shred", recording.id]);
        assert.equal(shredded.code, 0, `consult recording shred failed:\n${shredded.stderr}${shredded.stdout}`);
        const gone = await exportAsClinician(service, recording.id, doctor.page);
        assert.notEqual(gone.code, 0, "a shredded recording does not export");
        assert.match(gone.stderr, /was shredded/);
        assert.deepEqual(gone.files, [], "no file, whole or partial");

        // The page, once the service runs again: shredded, nothing to download or shred.
        await service.restart();
        await openRecordings(doctor.page, service, id);
        assert.equal(await row.getAttribute("data-state"), "shredded");
        assert.equal(await row.locator('[data-testid="recording-download"], [data-testid="recording-shred"]').count(), 0);
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
