// A shared screen is recorded as a track of its own: in a recorded consultation between two
// headless Chromium browsers, once the patient consented, the doctor shares a screen for a few
// seconds and stops; the export (as the clinician, through the CLI) has the doctor's camera, the
// doctor's screen and the patient's camera, each named, beside both microphones, and ffmpeg
// decodes every frame.
//
// Run: cd tests/browser && node --test recording-screen.test.mjs   (environment: see README.md here)
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";

import {
  allowRecording,
  byTestId,
  endConsultation,
  exportRecording,
  FFPROBE_BIN,
  inspectRecording,
  runCommand,
  sessionTokenFile,
  startCall,
  waitForOneRecording,
  withService,
} from "./harness.mjs";

describe("recording a shared screen", { timeout: 240_000 }, () => {
  test("the doctor's screen is a track of its own in the export, named, and plays", { timeout: 220_000 }, async () => {
    await withService({}, async (scope) => {
      const { service } = scope;
      const { doctor, patient, id } = await startCall(scope, { title: "Results on screen", mode: "recorded" });
      await allowRecording(doctor, patient);
      await sleep(1500);
      await byTestId(doctor.page, "screen-button").click();
      await byTestId(doctor.page, "screen-button").filter({ hasText: "Stop sharing" }).waitFor();
      await byTestId(patient.page, "screen-view").waitFor({ state: "visible", timeout: 30_000 });
      // The recorder's connection carries it too (a third video section there).
      await doctor.page.waitForFunction(
        async () => {
          const pc = /** @type {RTCPeerConnection | null} */ (/** @type {any} */ (window).consultRecorderPc);
          if (!pc) return false;
          let sending = 0;
          (await pc.getStats()).forEach((s) => {
            if (s.type === "outbound-rtp" && s.kind === "video" && (s.framesEncoded ?? 0) > 0) sending += 1;
          });
          return sending === 2;
        },
        null,
        { timeout: 30_000, polling: 500 },
      );
      await sleep(4000);
      await byTestId(doctor.page, "screen-button").click();
      await byTestId(patient.page, "screen-view").waitFor({ state: "hidden", timeout: 20_000 });
      await sleep(1000);
      await endConsultation(doctor.page, patient.page);
      const recording = await waitForOneRecording(doctor.page, id, "complete");

      const dir = await mkdtemp(join(tmpdir(), "consult-screen-"));
      try {
        const token = await sessionTokenFile(doctor.page, dir);
        const file = join(dir, "recording.webm");
        const exported = await exportRecording(service, recording.id, file, ["--session-token-file", token]);
        assert.equal(exported.code, 0, exported.stderr);
        const media = await inspectRecording(file);
        assert.equal(media.decoded.code, 0, `ffmpeg decodes every frame: ${media.decoded.stderr}`);
        const kinds = media.streams.map((s) => s.codec_type).sort();
        assert.deepEqual(kinds, ["audio", "audio", "video", "video", "video"], JSON.stringify(media.streams));
        const probed = await runCommand(FFPROBE_BIN, ["-v", "error", "-show_entries", "stream_tags=title", "-of", "json", file]);
        const titles = JSON.parse(probed.stdout).streams.map((/** @type {any} */ s) => s.tags?.title ?? "");
        assert.equal(titles.filter((/** @type {string} */ t) => /\(doctor\) screen$/.test(t)).length, 1, JSON.stringify(titles));
        assert.equal(titles.filter((/** @type {string} */ t) => / video$/.test(t)).length, 2, JSON.stringify(titles));
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  });
});
