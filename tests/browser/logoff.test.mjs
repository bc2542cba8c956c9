// Automatic logoff in the doctor's page: an unattended page locks after the idle timeout although it
// keeps polling the waiting rooms, the person's input keeps it open, and unlocking restores the same
// page without a reload. A session ended elsewhere locks the page in a call at once, and unlocking
// returns to the call.
//
// Run: cd tests/browser && npm test   (environment: see README.md here)

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import {
  byTestId,
  cspViolations,
  createConsultation,
  freshTotp,
  launchParticipant,
  runAdmitScenario,
  signInDoctor,
  waitForRemoteMedia,
  withService,
} from "./harness.mjs";

/** Short enough to watch, long enough for the steps between two inputs. */
const IDLE_TIMEOUT_SECS = 8;

/**
 * Unlock the page with the demo doctor's password and a fresh code.
 * @param {import('playwright-core').Page} page
 * @param {import('./harness.mjs').Service} service
 */
async function unlock(page, service) {
  assert.equal(await byTestId(page, "lock-email").inputValue(), service.credentials.email, "the lock names the account");
  await byTestId(page, "lock-password").fill(service.credentials.password);
  await byTestId(page, "lock-totp").fill(await freshTotp(service.credentials.totp_secret));
  await byTestId(page, "lock-submit").click();
  await byTestId(page, "lock-screen").waitFor({ state: "hidden" });
}

describe("automatic logoff", { timeout: 300_000 }, () => {
  test("an unattended page locks although it polls; input keeps it open; unlocking restores it without a reload", { timeout: 150_000 }, async (t) => {
    await withService({ env: { CONSULT_SESSION__IDLE_TIMEOUT: `${IDLE_TIMEOUT_SECS}s` } }, async ({ service, people }) => {
      const doctor = await launchParticipant("doctor", { origin: service.url });
      people.push(doctor);
      const { page } = doctor;
      /** @type {{ at: number, path: string, method: string }[]} */
      const requests = [];
      page.on("request", (r) => {
        const url = new URL(r.url());
        if (url.pathname.startsWith("/api/")) requests.push({ at: Date.now(), path: url.pathname, method: r.method() });
      });
      const count = (/** @type {string} */ path, since = 0, method = "") =>
        requests.filter((r) => r.path === path && r.at >= since && (!method || r.method === method)).length;

      await signInDoctor(page, service);
      await createConsultation(page, "Idle check");
      // What the page shows and holds: a row, a half-typed title, and a marker a reload would lose.
      assert.ok(await page.locator("#invite-panel").isVisible(), "the new invite link is shown");
      await byTestId(page, "create-title").fill("Half-typed title");
      await page.evaluate(() => {
        /** @type {any} */ (window).__sameDocument = true;
      });

      // The person moves the pointer once a second for 2.5 idle timeouts: the page stays open.
      const busySince = Date.now();
      for (let i = 0; i < IDLE_TIMEOUT_SECS * 2.5; i += 1) {
        await page.mouse.move(100 + (i % 2) * 50, 200);
        await sleep(1000);
      }
      assert.ok(await byTestId(page, "lock-screen").isHidden(), "input keeps the page open");
      const reports = count("/api/v1/auth/activity", busySince, "POST");
      t.diagnostic(`activity reports while busy for ${Date.now() - busySince} ms: ${reports}`);
      assert.ok(reports >= 4, `activity was reported (${reports} times)`);
      assert.ok(reports <= 12, `at most one report per quarter timeout (${reports} times)`);

      // Nobody touches it: the waiting-room polls go on, yet the page locks after the timeout.
      const idleSince = Date.now();
      await byTestId(page, "lock-screen").waitFor({ state: "visible", timeout: (IDLE_TIMEOUT_SECS + 10) * 1000 });
      const lockedAfterMs = Date.now() - idleSince;
      const pollsWhileIdle = count("/api/v1/waiting-room", idleSince);
      t.diagnostic(`locked ${lockedAfterMs} ms after the last input; ${pollsWhileIdle} polls meanwhile`);
      assert.ok(pollsWhileIdle >= 2, `the page kept polling while idle (${pollsWhileIdle} polls)`);
      // The service records activity to the second (and at most a tenth of the timeout apart).
      assert.ok(lockedAfterMs >= (IDLE_TIMEOUT_SECS - 2) * 1000, `not before the timeout (${lockedAfterMs} ms)`);
      assert.ok(await page.locator("#main").isHidden(), "the page's content is hidden");
      assert.match((await byTestId(page, "lock-reason").textContent()) ?? "", /You were away/);
      assert.ok(await byTestId(page, "user-name").isHidden(), "no one is shown as signed in");
      // The service agrees the session is over.
      const status = await page.evaluate(async () => (await fetch("/api/v1/auth/session")).status);
      assert.equal(status, 401);

      // Locked: no more polling.
      const lockedAt = Date.now();
      await sleep(3000);
      assert.equal(count("/api/v1/waiting-room", lockedAt), 0, "a locked page does not poll");

      // A wrong password is refused and the page stays locked.
      await byTestId(page, "lock-password").fill("not the password at all");
      await byTestId(page, "lock-totp").fill("000000");
      await byTestId(page, "lock-submit").click();
      await byTestId(page, "lock-error").waitFor({ state: "visible" });
      assert.match((await byTestId(page, "lock-error").textContent()) ?? "", /password is not correct/);
      assert.ok(await page.locator("#main").isHidden());

      await unlock(page, service);
      assert.ok(await page.evaluate(() => /** @type {any} */ (window).__sameDocument === true), "no reload");
      assert.equal(await byTestId(page, "create-title").inputValue(), "Half-typed title", "the draft is kept");
      assert.ok(await page.locator("#consultation-rows").getByText("Idle check").isVisible(), "the list is shown again");
      assert.ok(await page.locator("#invite-panel").isHidden(), "the invite link (a credential) was not kept behind the lock");
      assert.ok(await byTestId(page, "user-name").isVisible());
      const unlockedAt = Date.now();
      await sleep(2500);
      assert.ok(count("/api/v1/waiting-room", unlockedAt) >= 1, "polling resumed");
      assert.deepEqual(cspViolations(doctor), []);
    });
  });

  test("a session ended elsewhere locks the page in a call at once; unlocking returns to the call", { timeout: 180_000 }, async (t) => {
    await withService({}, async ({ service, people }) => {
      const scenario = await runAdmitScenario(service, { title: "Revocation", patientName: "Pat Revoked" });
      const { doctor, patient } = scenario;
      people.push(doctor, patient);
      const callUrl = doctor.page.url();

      // Another tab of the same browser signs out: the service ends the session and closes the
      // call's WebSocket; the page locks.
      const current = await doctor.context.request.get(`${service.url}/api/v1/auth/session`);
      const { csrf_token: csrf } = await current.json();
      const signedOutAt = Date.now();
      const out = await doctor.context.request.post(`${service.url}/api/v1/auth/logout`, { headers: { "X-CSRF-Token": csrf } });
      assert.equal(out.status(), 204);
      await byTestId(doctor.page, "lock-screen").waitFor({ state: "visible", timeout: 5000 });
      const lockMs = Date.now() - signedOutAt;
      t.diagnostic(`sign-out elsewhere to locked page in a call: ${lockMs} ms`);
      assert.ok(lockMs < 2000, `locked within a second or so (${lockMs} ms)`);
      assert.match((await byTestId(doctor.page, "lock-reason").textContent()) ?? "", /session has ended/);
      assert.ok(await doctor.page.locator("#main").isHidden());
      assert.equal(await doctor.page.evaluate(() => /** @type {any} */ (window).consultPc ?? null), null, "the call was left");

      await unlock(doctor.page, service);
      assert.equal(doctor.page.url(), callUrl, "back on the same consultation");
      await byTestId(doctor.page, "remote-video").waitFor({ state: "visible" });
      const media = await waitForRemoteMedia(doctor.page);
      t.diagnostic(`after unlocking: ${JSON.stringify(media)}`);
      assert.ok(media.framesDecoded > 0, "the doctor sees the patient again");
      assert.deepEqual(cspViolations(doctor), []);
    });
  });
});
