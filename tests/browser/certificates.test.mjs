// Medical certificates across the three pages: after a call the doctor signs a sick note with a
// confidential diagnosis; the patient's page offers it at once and the patient discloses only the
// period (the signing clinician is always shown) as a link, a QR code and a PDF; an employer, in a
// browser of their own, opens the link and sees the period and the clinician but not the
// diagnosis; the doctor revokes it; the same link now says revoked.
//
// Run: cd tests/browser && npm test   (environment: see README.md here)

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";

import {
  byTestId,
  cspViolations,
  endConsultation,
  launchParticipant,
  openConsultationId,
  runAdmitScenario,
  withService,
} from "./harness.mjs";

/** `YYYY-MM-DD`, `days` from today (local time, as the date inputs take it). */
function isoDay(days = 0) {
  const d = new Date(Date.now() + days * 86_400_000);
  const pad = (/** @type {number} */ n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

describe("medical certificates", { timeout: 240_000 }, () => {
  test("doctor signs after the call; patient discloses only the period; employer verifies; revoked shows", { timeout: 200_000 }, async (t) => {
    await withService({}, async ({ service, people }) => {
      const scenario = await runAdmitScenario(service, { title: "Sick note", patientName: "Ana Silva" });
      const { doctor, patient } = scenario;
      people.push(doctor, patient);
      const consultationId = openConsultationId(doctor.page);
      await endConsultation(doctor.page, patient.page);

      // The doctor signs a certificate from the consultation list.
      await doctor.page.evaluate(() => {
        location.hash = "#/";
      });
      const row = byTestId(doctor.page, "consultation-row").filter({ hasText: "Sick note" });
      await row.locator('[data-testid="certificates-link"]').click();
      await byTestId(doctor.page, "certificate-kind").selectOption("unfit_for_work");
      await byTestId(doctor.page, "certificate-start").fill(isoDay(-2));
      await byTestId(doctor.page, "certificate-end").fill(isoDay(2));
      await byTestId(doctor.page, "certificate-patient").fill("Ana Silva");
      await byTestId(doctor.page, "certificate-restrictions").fill("No lifting");
      await byTestId(doctor.page, "certificate-diagnosis").fill("Influenza A");
      const signedAt = Date.now();
      await byTestId(doctor.page, "certificate-submit").click();
      const issued = byTestId(doctor.page, "issued-certificate");
      await issued.waitFor({ state: "visible" });
      t.diagnostic(`signed in ${Date.now() - signedAt} ms`);
      assert.match((await issued.textContent()) ?? "", /Influenza A/, "the doctor sees the diagnosis");
      assert.equal(await byTestId(doctor.page, "certificate-state").textContent(), "Valid");

      // The patient's page, still on "the consultation has ended", offers it without a reload.
      const held = byTestId(patient.page, "held-certificate");
      await held.waitFor({ state: "visible", timeout: 20_000 });
      t.diagnostic(`on the patient's page ${Date.now() - signedAt} ms after signing`);
      assert.match((await held.textContent()) ?? "", /Unfit for work/);
      // Only the period is ticked (the clinician always shown); the diagnosis is not.
      assert.ok(await held.locator('[data-testid="disclose-period"]').isChecked());
      assert.ok(!(await held.locator('[data-testid="disclose-diagnosis"]').isChecked()));
      assert.ok(!(await held.locator('[data-testid="disclose-patient_name"]').isChecked()));
      assert.ok(!(await held.locator('[data-testid="disclose-restrictions"]').isChecked()));
      assert.ok(await held.locator('[data-testid="disclose-clinician_name"]').isDisabled());
      await held.locator('[data-testid="make-link"]').click();
      const linkField = held.locator('[data-testid="presentation-link"]');
      await linkField.waitFor({ state: "visible" });
      const link = await linkField.inputValue();
      assert.ok(link.startsWith(`${service.url.replace(/\/$/, "")}/verify#`), link);
      const qr = held.locator('[data-testid="presentation-qr"]');
      assert.ok(await qr.evaluate((img) => /** @type {HTMLImageElement} */ (img).naturalWidth > 0), "the QR code is drawn");
      t.diagnostic(`presentation link ${link.length} characters; ${await held.locator('[data-testid="presentation-qr-note"]').textContent()}`);

      // The printable PDF carries the period and the clinician, not the diagnosis.
      const dir = await mkdtemp(join(tmpdir(), "consult-certificate-"));
      try {
        const [download] = await Promise.all([
          patient.page.waitForEvent("download"),
          held.locator('[data-testid="download-pdf"]').click(),
        ]);
        const pdfPath = join(dir, "certificate.pdf");
        await download.saveAs(pdfPath);
        assert.equal((await readFile(pdfPath)).subarray(0, 5).toString(), "%PDF-");
        const text = execFileSync("pdftotext", ["-layout", pdfPath, "-"], { encoding: "utf8" });
        assert.match(text, /Unfit for work/);
        assert.ok(text.includes(`${isoDay(-2)} to ${isoDay(2)}`), text);
        assert.match(text, /Dr Demo/);
        assert.doesNotMatch(text, /Influenza|No lifting|Ana Silva/);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }

      // An employer, in a browser of their own, opens the link.
      const employer = await launchParticipant("employer", {});
      people.push(employer);
      await employer.page.goto(link);
      const outcome = byTestId(employer.page, "verify-outcome");
      await employer.page.waitForFunction(
        () => (document.querySelector('[data-testid="verify-outcome"]')?.textContent ?? "") !== "",
      );
      assert.equal(await outcome.textContent(), "Valid certificate");
      assert.equal(await byTestId(employer.page, "verify-kind").textContent(), "Unfit for work");
      assert.equal(await byTestId(employer.page, "verify-claim-period").textContent(), `${isoDay(-2)} to ${isoDay(2)}`);
      assert.equal(await byTestId(employer.page, "verify-claim-clinician_name").textContent(), "Dr Demo");
      assert.equal(await byTestId(employer.page, "verify-issuer").textContent(), service.url.replace(/\/$/, ""));
      const shown = (await byTestId(employer.page, "verify-result").textContent()) ?? "";
      assert.doesNotMatch(shown, /Influenza|Diagnosis|No lifting|Ana Silva/, "nothing undisclosed is shown");
      assert.equal(await byTestId(employer.page, "verify-claim-diagnosis").count(), 0);

      // The doctor revokes it.
      const revokeRow = byTestId(doctor.page, "issued-certificate");
      await revokeRow.locator('[data-testid="revoke-reason"]').fill("issued with the wrong dates");
      await revokeRow.locator('[data-testid="revoke-certificate"]').click();
      await byTestId(doctor.page, "confirm-revoke").click();
      await doctor.page.waitForFunction(
        () => (document.querySelector('[data-testid="certificate-state"]')?.textContent ?? "").startsWith("Revoked"),
      );

      // The same link now says revoked.
      await employer.page.reload();
      await employer.page.waitForFunction(
        () => (document.querySelector('[data-testid="verify-outcome"]')?.textContent ?? "").startsWith("Revoked"),
      );
      assert.equal(await outcome.textContent(), "Revoked — this certificate is no longer valid");

      // A link cut short (a QR code read in part) is refused with the reason.
      await employer.page.goto(link.slice(0, Math.floor(link.length * 0.6)));
      await employer.page.waitForFunction(
        () => (document.querySelector('[data-testid="verify-outcome"]')?.textContent ?? "").startsWith("Not a valid"),
      );
      assert.match((await byTestId(employer.page, "verify-reason").textContent()) ?? "", /malformed|signature/);

      for (const p of [doctor, patient, employer]) assert.deepEqual(cspViolations(p), [], p.label);
    });
  });
});
