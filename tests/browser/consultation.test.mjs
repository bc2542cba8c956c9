// End-to-end test of a consultation in two headless Chromium browsers with fake devices:
// sign-in with TOTP, invite, device check, waiting room, admit, media both ways, a third device
// refused, end. Plus the browser-visible bad paths (wrong code, unknown invite). Chat both ways and
// a file from the patient to the doctor over the data channels.
//
// Run: cd tests/browser && npm install && npm test
// Needs the service binary (CONSULT_BIN, default target/debug/consult) and /usr/bin/chromium.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, test } from "node:test";

import {
  acceptAndDownload,
  byTestId,
  cspViolations,
  endConsultation,
  launchParticipant,
  offerFile,
  passDeviceCheck,
  runAdmitScenario,
  sendChat,
  sha256Hex,
  submitSignIn,
  waitForChat,
  withService,
  wrongTotp,
} from "./harness.mjs";

describe("consultation in the browser", { timeout: 300_000 }, () => {
  test("doctor admits a patient; video and audio flow both ways; a second device is refused; ending reaches the patient", { timeout: 180_000 }, async (t) => {
    await withService({}, async ({ service, people }) => {
      const scenario = await runAdmitScenario(service, { title: "Knee follow-up", patientName: "Pat Example" });
      const { doctor, patient } = scenario;
      people.push(doctor, patient);
      console.log(`FIRST_FRAME_MS=${scenario.firstFrameMs}`);
      t.diagnostic(`FIRST_FRAME_MS=${scenario.firstFrameMs} (first presented frame after ${scenario.firstPaintMs} ms)`);
      t.diagnostic(`patient inbound: ${JSON.stringify(scenario.patientMedia)}`);
      t.diagnostic(`doctor inbound: ${JSON.stringify(scenario.doctorMedia)}`);
      assert.ok(scenario.patientMedia.framesDecoded > 0, "patient decodes the doctor's video");
      assert.ok(scenario.patientMedia.audioPackets > 0, "patient receives the doctor's audio");
      assert.ok(scenario.doctorMedia.framesDecoded > 0, "doctor decodes the patient's video");
      assert.ok(scenario.doctorMedia.audioPackets > 0, "doctor receives the patient's audio");

      // Both call views show the remote video element playing, the badge and the quality line.
      for (const p of [doctor, patient]) {
        await byTestId(p.page, "remote-video").waitFor({ state: "visible" });
        await p.page.waitForFunction(() => {
          const v = /** @type {HTMLVideoElement | null} */ (document.querySelector('[data-testid="remote-video"]'));
          return !!v && v.videoWidth > 0 && v.readyState >= 2;
        });
        const recording = byTestId(p.page, "recording-indicator");
        assert.equal((await recording.textContent())?.trim(), "Live only — not recorded");
        assert.equal(await recording.getAttribute("data-state"), "live_only");
        await p.page.waitForFunction(
          () => /RTT \d+ ms/.test(document.querySelector('[data-testid="quality"]')?.textContent ?? ""),
          null,
          { timeout: 10_000 },
        );
        const label = await byTestId(p.page, "quality").getAttribute("data-label");
        assert.ok(["good", "fair", "poor"].includes(label ?? ""), `${p.label} quality label ${label}`);
      }

      // Chat both ways over the data channel (Enter sends).
      const fromPatient = "Hello doctor, the knee is much better.";
      const fromDoctor = "Good to hear — ünïcödé and emoji 👍 arrive intact.";
      await sendChat(patient.page, fromPatient);
      await waitForChat(doctor.page, "in", fromPatient);
      await sendChat(doctor.page, fromDoctor);
      await waitForChat(patient.page, "in", fromDoctor);
      // A message over 4096 bytes is refused before it is sent.
      await byTestId(doctor.page, "chat-input").fill("é".repeat(2049));
      await byTestId(doctor.page, "chat-send").click();
      await byTestId(doctor.page, "chat-send-error").waitFor({ state: "visible" });
      assert.match((await byTestId(doctor.page, "chat-send-error").textContent()) ?? "", /message too long/i);
      assert.equal(await byTestId(patient.page, "chat-message").count(), 2, "nothing more reached the patient");

      // A 300 KB file from the patient: the doctor accepts it, and the saved bytes match.
      const file = randomBytes(300_000);
      await offerFile(patient.page, "knee-photo.bin", file);
      const saved = await acceptAndDownload(doctor.page, "knee-photo.bin");
      t.diagnostic(`file: ${saved.bytes.length} bytes saved as ${saved.suggestedFilename}, sha256 ${saved.sha256}`);
      assert.equal(saved.sha256, sha256Hex(file), "the link's verified SHA-256 is the original's");
      assert.equal(saved.bytes.length, file.length);
      assert.equal(sha256Hex(saved.bytes), sha256Hex(file), "the saved bytes are the original's");
      assert.equal(saved.name, "knee-photo.bin");
      assert.equal(saved.suggestedFilename, "knee-photo.bin");
      assert.equal(saved.rel, "noopener");
      assert.match(saved.href, /^blob:/);
      await patient.page.locator('[data-testid="file-outgoing"][data-state="done"]').waitFor({ state: "visible" });
      // The other way, declined: nothing is saved, the doctor is told.
      await offerFile(doctor.page, "referral.pdf", randomBytes(5000), "application/pdf");
      const offered = patient.page.locator('[data-testid="file-offer"][data-name="referral.pdf"]');
      await offered.waitFor({ state: "visible" });
      assert.match((await offered.textContent()) ?? "", /5\.0 KB · application\/pdf/);
      await offered.locator('[data-testid="file-decline"]').click();
      const declined = doctor.page.locator('[data-testid="file-outgoing"][data-name="referral.pdf"] [data-testid="file-failed"]');
      await declined.waitFor({ state: "visible" });
      assert.match((await declined.textContent()) ?? "", /declined/);
      assert.equal(await offered.locator('[data-testid="file-download"]').count(), 0);

      // A third browser with the same link gets the "already in use" page.
      const intruder = await launchParticipant("third device", { origin: service.url });
      people.push(intruder);
      await intruder.page.goto(scenario.inviteUrl);
      const inUse = byTestId(intruder.page, "in-use-message");
      await intruder.page
        .locator('[data-testid="in-use-message"]:visible, [data-testid="patient-name"]:visible')
        .first()
        .waitFor({ state: "visible" });
      if (!(await inUse.isVisible())) {
        await passDeviceCheck(intruder.page, "Someone Else");
        await byTestId(intruder.page, "join-button").click();
      }
      await inUse.waitFor({ state: "visible" });
      assert.match((await inUse.textContent()) ?? "", /already in use on another device/);
      // ... and the patient is still in the call.
      assert.ok((await byTestId(patient.page, "ended-message").isHidden()), "patient still in the call");

      // The doctor ends the consultation; the patient sees it.
      await endConsultation(doctor.page, patient.page);
      assert.equal((await byTestId(patient.page, "ended-message").textContent())?.trim(), "The consultation has ended.");
      assert.equal(await patient.page.evaluate(() => /** @type {any} */ (window).consultPc ?? null), null);

      for (const p of [doctor, patient, intruder]) {
        assert.deepEqual(cspViolations(p), [], `${p.label}: no Content-Security-Policy violations`);
      }
    });
  });

  test("a wrong TOTP code shows an error and stays on sign-in", { timeout: 60_000 }, async () => {
    await withService({}, async ({ service, people }) => {
      const doctor = await launchParticipant("doctor (wrong code)", { origin: service.url });
      people.push(doctor);
      await submitSignIn(doctor.page, service, wrongTotp(service.credentials.totp_secret));
      const error = byTestId(doctor.page, "signin-error");
      await error.waitFor({ state: "visible" });
      assert.match((await error.textContent()) ?? "", /code is not correct/i);
      assert.ok(await byTestId(doctor.page, "login-submit").isVisible(), "still on the sign-in form");
      assert.ok(await byTestId(doctor.page, "create-title").isHidden(), "not signed in");
      assert.equal(await byTestId(doctor.page, "login-email").inputValue(), service.credentials.email);
      assert.deepEqual(cspViolations(doctor), []);
    });
  });

  test("an unknown invite shows the not-found page", { timeout: 60_000 }, async () => {
    await withService({}, async ({ service, people }) => {
      const patient = await launchParticipant("patient (bad link)", { origin: service.url });
      people.push(patient);
      await patient.page.goto(`${service.url}/join#this-is-not-a-valid-invite-token`);
      const notFound = byTestId(patient.page, "not-found-message");
      await notFound.waitFor({ state: "visible" });
      assert.match((await notFound.textContent()) ?? "", /link does not work/);
      assert.equal(new URL(patient.page.url()).hash, "", "the token is removed from the address bar");
      assert.ok(await byTestId(patient.page, "patient-name").isHidden());
      assert.deepEqual(cspViolations(patient), []);
    });
  });
});
