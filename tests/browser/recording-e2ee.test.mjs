// Zero-knowledge recording of an end-to-end encrypted consultation, in two headless Chromium
// browsers (doctor and patient) and the CLI:
//
// - `consult recording keygen` makes two key files (the clinician's and another one);
// - the doctor's page says no recording key is registered, and says so next to the create button
//   when "Recorded" and "End-to-end encryption" are both chosen; creating it is refused;
// - the doctor registers the right key through the file input: only its public key is sent, the
//   page shows its fingerprint, the service has it; a file that is no key file is refused;
// - a consultation recorded and end-to-end encrypted: the call's own E2EE works (same security
//   code, media protected and opened both ways), the patient allows recording, both pages show
//   it, and each page's send-only connection to the recorder connects, sends VP8, and protects
//   every frame it sends under keys it announced, wrapped, in `recording_key` messages (the
//   patient's page rotates them every 2.5 s: `consult.e2eeRotateMs`);
// - after about 6 s the doctor ends it; the recording is `complete` and `zero_knowledge`;
// - the export: with the clinician's session but no key file, refused ("needs the clinician's
//   recording key"); with the other key file, refused ("does not open"); with the right one, a
//   WebM with VP8 and Opus as long as the recorded time (± 10 %) that ffmpeg decodes without an
//   error.
//
// What this test assumes of the service, besides what recording.test.mjs does:
// - `GET /api/v1/account/recording-key` → `{"public_key": <base64> | null}`; `PUT` with
//   `{"public_key": …}` → 204; `POST /api/v1/consultations` recorded + e2ee without a key → 400
//   `recording_key_missing`;
// - `recording` messages in state `recording` carry `recording_id` and, zero-knowledge,
//   `recording_key`; the list's entry has `"zero_knowledge": true`;
// - `consult recording keygen --out FILE --passphrase-file P` prints `recording public key: <b64>`
//   and writes `{"format":1,"kind":"consult-recording-key","public_key":…,…}`;
// - `consult recording export ID --out FILE --data-dir DIR --session-token-file T
//   [--key-file K --passphrase-file P]`.
// Needs ffmpeg and ffprobe (Debian's `ffmpeg` package; FFMPEG_BIN / FFPROBE_BIN to override).
//
// Run: cd tests/browser && node --test recording-e2ee.test.mjs

import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";

import {
  allowRecording,
  apiGet,
  assertRecordingMedia,
  byTestId,
  CONSULT_BIN,
  cspViolations,
  endConsultation,
  exportRecording,
  indicatorText,
  inspectRecording,
  launchWatched,
  openRecordings,
  protectedBothWays,
  recordingBounds,
  recordingRow,
  runCommand,
  sessionTokenFile,
  signInDoctor,
  startCall,
  waitForOneRecording,
  waitForRecordingState,
  waitForRemoteMedia,
  withService,
} from "./harness.mjs";

/** How long the consultation is recorded before the doctor ends it. */
const RECORDED_CALL_MS = 6000;
/** The patient's page starts a new recorder epoch this often (and the call's, by the same setting). */
const PATIENT_ROTATE_MS = 2500;

/**
 * @typedef {object} KeyFile
 * @property {string} file The key file `consult recording keygen` wrote.
 * @property {string} passphraseFile
 * @property {string} publicKey What it printed (base64).
 * @property {any} json The file's contents.
 */

/**
 * `consult recording keygen` into `dir`, with a passphrase file of its own.
 * @param {string} dir
 * @param {string} name
 * @param {string} passphrase
 * @returns {Promise<KeyFile>}
 */
async function keygen(dir, name, passphrase) {
  const passphraseFile = join(dir, `${name}.passphrase`);
  await writeFile(passphraseFile, passphrase, { mode: 0o600 });
  const file = join(dir, `${name}.json`);
  const made = await runCommand(CONSULT_BIN, ["recording", "keygen", "--out", file, "--passphrase-file", passphraseFile]);
  assert.equal(made.code, 0, `consult recording keygen failed:\n${made.stderr}${made.stdout}`);
  const printed = /recording public key: ([A-Za-z0-9+/]{43}=)/.exec(made.stdout + made.stderr);
  assert.ok(printed, `keygen prints the public key: ${made.stdout}${made.stderr}`);
  const json = JSON.parse(await readFile(file, "utf8"));
  assert.equal(json.kind, "consult-recording-key");
  assert.equal(json.format, 1);
  assert.equal(json.public_key, printed[1], "the key file holds the public key keygen printed");
  return { file, passphraseFile, publicKey: printed[1], json };
}

/**
 * The recorder connection's protection as the page sees it: what its RTP senders sent
 * (`getStats()`: video frames, audio packets, the video codec), then — read after the worker's
 * next stats, so that they cover every frame sent by then — the protection's snapshot.
 * @param {import('playwright-core').Page} page
 */
function recorderProtection(page) {
  return page.evaluate(async () => {
    const w = /** @type {any} */ (window);
    /** @type {RTCPeerConnection | null} */
    const pc = w.consultRecorderPc ?? null;
    if (!pc || !w.consultRecorderE2ee) return null;
    const report = await pc.getStats();
    const sent = { video: 0, audio: 0 };
    /** @type {string | null} */
    let videoCodec = null;
    report.forEach((/** @type {any} */ s) => {
      if (s.type !== "outbound-rtp") return;
      if (s.kind === "video") {
        sent.video += s.framesSent ?? 0;
        videoCodec = /** @type {any} */ (report).get(s.codecId)?.mimeType ?? videoCodec;
      } else if (s.kind === "audio") {
        sent.audio += s.packetsSent ?? 0;
      }
    });
    // The worker posts its stats every 500 ms.
    await new Promise((resolve) => setTimeout(resolve, 1200));
    return { sent, videoCodec, snapshot: w.consultRecorderE2ee.snapshot() };
  });
}

/**
 * The `recording_key` messages a page sent, in order.
 * @param {import('./harness.mjs').Watched} p
 */
function recordingKeysSent(p) {
  return p.frames.filter((f) => f.direction === "out" && f.message?.type === "recording_key").map((f) => f.message);
}

describe("zero-knowledge recording of an end-to-end encrypted consultation", { timeout: 600_000 }, () => {
  test("the clinician's key registered in the page; media to the recorder protected; only the right key file exports it", { timeout: 360_000 }, async (t) => {
    const keys = await mkdtemp(join(tmpdir(), "consult-recording-keys-"));
    try {
      await withService({}, async (scope) => {
        const right = await keygen(keys, "clinician", "correct horse battery staple");
        const wrong = await keygen(keys, "someone-else", "a different passphrase");
        assert.notEqual(right.publicKey, wrong.publicKey);

        const [doctor, patient] = await Promise.all([
          launchWatched(scope, "doctor"),
          launchWatched(scope, "patient", { storage: { "consult.e2eeRotateMs": String(PATIENT_ROTATE_MS) } }),
        ]);
        /** @type {{ url: string, method: string, body: string | null }[]} */
        const requests = [];
        doctor.page.on("request", (r) => requests.push({ url: r.url(), method: r.method(), body: r.postData() }));
        await signInDoctor(doctor.page, scope.service);

        // No key yet: the page says so, and says why a recorded E2EE consultation cannot be made.
        const status = byTestId(doctor.page, "recording-key-status");
        await doctor.page.locator('[data-testid="recording-key-status"][data-state="missing"]').waitFor();
        const note = byTestId(doctor.page, "create-recording-key-note");
        assert.ok(await note.isHidden(), "no note for a live-only consultation");
        await byTestId(doctor.page, "create-mode").selectOption("recorded");
        await byTestId(doctor.page, "create-e2ee").check();
        await note.waitFor({ state: "visible" });
        assert.match((await note.textContent()) ?? "", /register your recording key/);
        await byTestId(doctor.page, "create-title").fill("Refused without a key");
        await byTestId(doctor.page, "create-submit").click();
        const createError = byTestId(doctor.page, "create-error");
        await createError.waitFor({ state: "visible" });
        assert.match((await createError.textContent()) ?? "", /not registered a recording key/);
        assert.ok(await byTestId(doctor.page, "invite-panel").isHidden(), "nothing was created");

        // A file that is not a key file: refused in the page, nothing sent.
        const keyInput = byTestId(doctor.page, "recording-key-file");
        await keyInput.setInputFiles({ name: "notes.json", mimeType: "application/json", buffer: Buffer.from('{"kind":"notes"}') });
        const keyError = byTestId(doctor.page, "recording-key-error");
        await keyError.waitFor({ state: "visible" });
        assert.match((await keyError.textContent()) ?? "", /not a Consult recording key file/);

        // The right key file: only its public key goes to the service.
        await keyInput.setInputFiles(right.file);
        await doctor.page.locator('[data-testid="recording-key-status"][data-state="registered"]').waitFor();
        assert.equal(await byTestId(doctor.page, "recording-key-fingerprint").textContent(), right.publicKey.slice(0, 8));
        assert.ok(await keyError.isHidden(), "the earlier error is gone");
        assert.ok(await note.isHidden(), "nothing left to say next to the button");
        const puts = requests.filter((r) => r.method === "PUT" && new URL(r.url).pathname === "/api/v1/account/recording-key");
        assert.deepEqual(puts.map((r) => JSON.parse(r.body ?? "null")), [{ public_key: right.publicKey }], "one PUT, with the public key alone");
        for (const secret of [right.json.ciphertext, right.json.nonce, JSON.stringify(right.json.kdf)]) {
          if (typeof secret === "string" && secret.length > 8) {
            assert.ok(!requests.some((r) => (r.body ?? "").includes(secret)), "nothing of the sealed private key left the page");
          }
        }
        assert.deepEqual((await apiGet(doctor.page, "/api/v1/account/recording-key")).body, { public_key: right.publicKey });
        t.diagnostic(`recording key registered: ${(await status.textContent())?.trim()}`);

        // The consultation, recorded and end-to-end encrypted; the call's own E2EE works.
        const { id } = await startCall(scope, { title: "Recorded, end-to-end encrypted", mode: "recorded", e2ee: true, doctor, patient });
        const [d, p] = await protectedBothWays([doctor, patient]);
        assert.match(d.sas ?? "", /^\d{4} \d{4}$/, "the doctor sees a security code");
        assert.equal(p.sas, d.sas, "both see the same security code");
        await waitForRecordingState(doctor.page, "awaiting_consent");

        const allowed = await allowRecording(doctor, patient);
        /** @type {string | null} */
        let recordingId = null;
        for (const x of [doctor, patient]) {
          assert.equal(await indicatorText(x.page), "● Recording");
          const said = x.frames.filter((f) => f.direction === "in" && f.message?.type === "recording" && f.message.state === "recording").map((f) => f.message);
          assert.ok(said.length > 0, `${x.label}: the service said recording`);
          const last = said[said.length - 1];
          assert.equal(last.zero_knowledge, true, `${x.label}: zero-knowledge`);
          assert.equal(last.recording_key, right.publicKey, `${x.label}: the clinician's registered key`);
          assert.match(last.recording_id ?? "", /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i);
          recordingId ??= last.recording_id;
          assert.equal(last.recording_id, recordingId, "one recording");
        }
        // The call goes on, still end-to-end encrypted, next to the recorder's connection.
        await waitForRemoteMedia(patient.page);
        await waitForRemoteMedia(doctor.page);

        await sleep(Math.max(0, allowed.since + RECORDED_CALL_MS - Date.now()));
        for (const x of [doctor, patient]) {
          const seen = await recorderProtection(x.page);
          assert.ok(seen, `${x.label}: a protected connection to the recorder`);
          await sleep(300); // for playwright to report every message the page sent until then
          const { sent, videoCodec, snapshot } = seen;
          t.diagnostic(`${x.label}: recorder link sent ${JSON.stringify(sent)}, ${videoCodec}; protection ${JSON.stringify({ ...snapshot, worker: { send: snapshot.worker?.send } })}`);
          assert.equal(videoCodec, "video/VP8", `${x.label}: VP8 to the recorder`);
          const worker = snapshot.worker;
          for (const kind of /** @type {const} */ (["audio", "video"])) {
            const flow = worker.send[kind];
            assert.ok(flow.ok > 0, `${x.label}: ${kind} frames protected`);
            assert.equal(flow.unsupported, 0, `${x.label}: no ${kind} frame the format could not take`);
            assert.ok(flow.frames - flow.ok - flow.droppedWithoutKey <= 3, `${x.label}: every ${kind} frame protected or dropped (${JSON.stringify(flow)})`);
            assert.equal(flow.codec, kind === "audio" ? "opus" : "vp8");
          }
          // The transform saw every frame the senders sent (Chromium counts a video frame the transform
          // dropped as sent too), and each audio packet that left carried a protected frame.
          assert.ok(sent.video > 0 && sent.video <= worker.send.video.frames, `${x.label}: ${sent.video} video frames sent, ${worker.send.video.frames} through the transform`);
          assert.ok(sent.audio > 0 && sent.audio <= worker.send.audio.ok, `${x.label}: ${sent.audio} audio packets sent, ${worker.send.audio.ok} frames protected`);
          assert.deepEqual(worker.attached.receive, { audio: 0, video: 0 }, `${x.label}: send only`);

          // Each key was announced, wrapped, before use: KIDs of one tag, epochs 1, 2, …
          const announced = recordingKeysSent(x);
          assert.ok(announced.length >= 1, `${x.label}: a recording_key message`);
          const tag = Math.floor(announced[0].kid / 2 ** 24);
          assert.ok(tag >= 1 && tag <= 255, `${x.label}: tag ${tag}`);
          for (const [i, m] of announced.entries()) {
            assert.equal(m.recording_id, recordingId);
            assert.equal(m.suite, 4);
            assert.equal(m.kid, tag * 2 ** 24 + (i + 1), `${x.label}: KID of epoch ${i + 1}`);
            assert.equal(Buffer.from(m.wrapped, "base64").length, 32 + 16 + 16, "enc ‖ wrapped 16-byte key ‖ tag");
            assert.equal(Buffer.from(m.wrapped, "base64").toString("base64"), m.wrapped, "standard, padded base64");
          }
          // (The patient's page may have started another epoch since the snapshot.)
          assert.equal(announced[snapshot.keysSent - 1]?.kid, snapshot.kid, `${x.label}: protecting under the last key it announced`);
          assert.ok(worker.sendEpoch >= 1 && worker.sendEpoch <= snapshot.epoch, `${x.label}: the worker holds an announced key (epoch ${worker.sendEpoch})`);
          const refused = x.frames.filter((f) => f.direction === "in" && f.message?.type === "error").map((f) => f.message);
          assert.deepEqual(refused, [], `${x.label}: the service refused nothing`);
        }
        assert.ok(recordingKeysSent(patient).length >= 2, `the patient's page rotated its recorder key (${recordingKeysSent(patient).length} keys)`);

        const bounds = recordingBounds(allowed, await endConsultation(doctor.page, patient.page));
        const recording = await waitForOneRecording(doctor.page, id, "complete");
        assert.equal(recording.id, recordingId);
        assert.equal(recording.zero_knowledge, true, `a zero-knowledge recording: ${JSON.stringify(recording)}`);

        // The doctor's recordings view offers no download, and says how to export it instead; the
        // service would refuse the download anyway.
        await openRecordings(doctor.page, scope.service, id);
        const row = recordingRow(doctor.page, recording.id);
        assert.equal(await row.locator('[data-testid="recording-download"]').count(), 0, "no download link");
        assert.equal(
          (await row.locator('[data-testid="recording-e2ee-note"]').textContent())?.trim(),
          "End-to-end encrypted: export with consult recording export … --key-file",
        );
        const download = await apiGet(doctor.page, `/api/v1/recordings/${recording.id}/export`);
        assert.equal(download.status, 409, `the download is refused: ${JSON.stringify(download.body)}`);
        assert.equal(download.body?.error?.code, "needs_clinician_key");

        // The export needs the clinician's recording key, and only theirs opens it.
        const dir = await mkdtemp(join(tmpdir(), "consult-recording-"));
        try {
          const file = join(dir, "recording.webm");
          const session = ["--session-token-file", await sessionTokenFile(doctor.page, dir)];
          const withoutKey = await exportRecording(scope.service, recording.id, file, session);
          assert.notEqual(withoutKey.code, 0, "no export without the recording key");
          assert.match(withoutKey.stderr, /needs the clinician's recording key/);
          await assert.rejects(stat(file), "no file without the key");

          const withWrongKey = await exportRecording(scope.service, recording.id, file, [...session, "--key-file", wrong.file, "--passphrase-file", wrong.passphraseFile]);
          assert.notEqual(withWrongKey.code, 0, "no export with another key");
          assert.match(withWrongKey.stderr, /does not open/);
          await assert.rejects(stat(file), "no file with another key");

          const exported = await exportRecording(scope.service, recording.id, file, [...session, "--key-file", right.file, "--passphrase-file", right.passphraseFile]);
          assert.equal(exported.code, 0, `consult recording export failed:\n${exported.stderr}${exported.stdout}`);
          const media = await inspectRecording(file);
          t.diagnostic(`recorded ${bounds.shownMs} ms; export: ${JSON.stringify(media.streams)}, ${Math.round(media.durationMs)} ms`);
          assertRecordingMedia(media, bounds);
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
        for (const x of [doctor, patient]) assert.deepEqual(cspViolations(x), [], `${x.label}: no CSP violations`);
      });
    } finally {
      await rm(keys, { recursive: true, force: true });
    }
  });
});
