// Who else takes part, from the pages: the doctor invites an interpreter by name from the call's
// People panel, the interpreter's page says who the link is for and does not ask their name,
// the doctor admits them and both see and hear each other; the doctor then adds a colleague by
// email, the colleague finds the consultation under "Shared with you", joins, waits, is let in,
// and the two clinicians are in the call; revoking the interpreter's link put them out.
// This runs with an organisation's one-to-one policy (two places, the doctor included), so that
// a full consultation shows too; calls of four are in group-call.test.mjs.
//
// Run: cd tests/browser && node --test group.test.mjs   (environment: see README.md here)
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";

import {
  admitFromWaitingRoom,
  byTestId,
  createConsultation,
  freshTotp,
  launchParticipant,
  passDeviceCheck,
  signInDoctor,
  waitForRemoteMedia,
  withService,
} from "./harness.mjs";

describe("group consultations from the pages", { timeout: 240_000 }, () => {
  test("an interpreter by named invite, then a colleague by email, each waits and is let in", { timeout: 200_000 }, async () => {
    await withService({ args: ["--seed-load-clinicians", "1"], env: { CONSULT_POLICY__MAX_PARTICIPANTS: "2" } }, async ({ service, people }) => {
      const doctor = await launchParticipant("doctor", { origin: service.url });
      people.push(doctor);
      await signInDoctor(doctor.page, service);
      await createConsultation(doctor.page, "With an interpreter");
      await byTestId(doctor.page, "invite-done").click();
      // Two places (the doctor's and the patient link's): the patient link goes, to make room.
      const row = byTestId(doctor.page, "consultation-row").filter({ hasText: "With an interpreter" });
      await row.locator('[data-testid="revoke-button"]').click();
      await byTestId(doctor.page, "revoke-confirm").click();
      await row.locator('[data-testid="open-button"]').click();
      await byTestId(doctor.page, "people-panel").waitFor({ state: "visible" });
      await byTestId(doctor.page, "people-capacity").filter({ hasText: "1 of 2 places" }).waitFor();

      // A link for the interpreter, under the name the doctor chose.
      await byTestId(doctor.page, "invite-kind").selectOption("interpreter");
      await byTestId(doctor.page, "invite-name").fill("Ines Interpreter");
      await byTestId(doctor.page, "invite-person").click();
      await byTestId(doctor.page, "invite-person-issued").waitFor({ state: "visible" });
      const link = await byTestId(doctor.page, "invite-person-url").inputValue();
      assert.match(link, /\/join#.+/);
      await byTestId(doctor.page, "person-invite").filter({ hasText: "Ines Interpreter" }).waitFor();
      // Full now: nothing more can be promised.
      await byTestId(doctor.page, "people-capacity").filter({ hasText: "2 of 2 places" }).waitFor();
      assert.equal(await byTestId(doctor.page, "invite-person").isDisabled(), true);

      const interpreter = await launchParticipant("interpreter", { origin: service.url });
      people.push(interpreter);
      await interpreter.page.goto(link);
      const invitedAs = byTestId(interpreter.page, "landing-invited-as");
      await invitedAs.filter({ hasText: "Ines Interpreter, as the interpreter" }).waitFor();
      assert.equal(await byTestId(interpreter.page, "patient-name").inputValue(), "Ines Interpreter");
      assert.equal(await byTestId(interpreter.page, "patient-name").getAttribute("readonly"), "");
      await passDeviceCheck(interpreter.page, "Ines Interpreter");
      await byTestId(interpreter.page, "join-button").click();
      await byTestId(interpreter.page, "waiting-message").waitFor({ state: "visible" });
      await admitFromWaitingRoom(doctor.page, "Ines Interpreter");
      await waitForRemoteMedia(doctor.page);
      await waitForRemoteMedia(interpreter.page);

      // The interpreter's link is revoked from the People panel: they are put out.
      await byTestId(doctor.page, "person-invite").filter({ hasText: "Ines Interpreter" }).getByRole("button").click();
      await byTestId(doctor.page, "people-confirm").click();
      // Their page looks at the link again and finds it withdrawn.
      await byTestId(interpreter.page, "revoked-message").waitFor({ state: "visible", timeout: 15_000 });
      await byTestId(doctor.page, "people-capacity").filter({ hasText: "1 of 2 places" }).waitFor();

      // A colleague, by the email of their account.
      const [colleagueLogin] = JSON.parse(await readFile(join(service.dataDir, "load-credentials.json"), "utf8"));
      // An email nobody has is said so.
      await byTestId(doctor.page, "colleague-email").fill("nobody@example.org");
      await byTestId(doctor.page, "colleague-email").press("Enter");
      await byTestId(doctor.page, "people-error").filter({ hasText: "No clinician account" }).waitFor();
      await byTestId(doctor.page, "colleague-email").fill(colleagueLogin.email);
      await byTestId(doctor.page, "add-colleague").click();
      await byTestId(doctor.page, "person-colleague").waitFor();
      assert.equal(await byTestId(doctor.page, "colleague-email").isDisabled(), true, "full again");

      const colleague = await launchParticipant("colleague", { origin: service.url });
      people.push(colleague);
      await colleague.page.goto(`${service.url}/`);
      await byTestId(colleague.page, "login-email").fill(colleagueLogin.email);
      await byTestId(colleague.page, "login-password").fill(colleagueLogin.password);
      await byTestId(colleague.page, "login-totp").fill(await freshTotp(colleagueLogin.totp_secret));
      await byTestId(colleague.page, "login-submit").click();
      const shared = byTestId(colleague.page, "shared-item").filter({ hasText: "With an interpreter" });
      await shared.waitFor({ state: "visible" });
      await shared.locator('[data-testid="shared-join"]').click();
      await byTestId(colleague.page, "call-status").filter({ hasText: "let you in" }).waitFor();
      // The colleague manages nothing: no waiting room, no People panel, no End button.
      assert.equal(await byTestId(colleague.page, "people-panel").isVisible(), false);
      assert.equal(await byTestId(colleague.page, "end-button").isVisible(), false);
      await admitFromWaitingRoom(doctor.page, "Dr Load");
      await waitForRemoteMedia(doctor.page);
      await waitForRemoteMedia(colleague.page);
    });
  });
});
