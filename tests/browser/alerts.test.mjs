// The administrator's security alerts in the browser: an administrator created with the CLI
// enrols through the pages (password, authenticator code, recovery codes); a guessing attack
// on invite links from outside raises an alert the admin page lists, with what and whom; the
// administrator acknowledges it from the page. A doctor sees no alerts link and gets no alerts.
//
// Run: cd tests/browser && node --test alerts.test.mjs

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  byTestId,
  cspViolations,
  freshTotp,
  launchParticipant,
  runConsult,
  signInDoctor,
  withService,
} from "./harness.mjs";

const ADMIN_EMAIL = "security@consult.localhost";
const ADMIN_PASSWORD = "a long admin password for the test";

/**
 * Enrol the account behind `enrolmentUrl`'s token through the pages, up to the consultation list.
 * @param {import('playwright-core').Page} page
 * @param {import('./harness.mjs').Service} service
 * @param {string} token
 */
async function enrolThroughThePages(page, service, token) {
  await page.goto(`${service.url}/enrol#${token}`);
  await byTestId(page, "enrol-password").fill(ADMIN_PASSWORD);
  await byTestId(page, "enrol-password2").fill(ADMIN_PASSWORD);
  await byTestId(page, "enrol-submit").click();
  await byTestId(page, "login-password").waitFor({ state: "visible" });
  assert.equal(await byTestId(page, "login-email").inputValue(), ADMIN_EMAIL);
  await byTestId(page, "login-password").fill(ADMIN_PASSWORD);
  await byTestId(page, "login-submit").click();
  await byTestId(page, "mfa-code").waitFor({ state: "visible" });
  await page.waitForFunction(() => (document.querySelector('[data-testid="mfa-secret"]')?.textContent ?? "").trim() !== "");
  const secret = ((await byTestId(page, "mfa-secret").textContent()) ?? "").replace(/\s+/g, "");
  assert.match(secret, /^[A-Z2-7]+$/, "the authenticator secret is shown");
  await byTestId(page, "mfa-code").fill(await freshTotp(secret));
  await byTestId(page, "mfa-submit").click();
  await byTestId(page, "codes-saved").click();
  await byTestId(page, "create-title").waitFor({ state: "visible" });
}

describe("security alerts for administrators", { timeout: 300_000 }, () => {
  test("an invite-guessing attack raises an alert the administrator sees and acknowledges on the page", { timeout: 240_000 }, async (t) => {
    await withService({}, async ({ service, people }) => {
      const created = await runConsult(service, ["admin", "create-user", "--role", "admin", "--email", ADMIN_EMAIL, "--name", "Security"]);
      assert.equal(created.code, 0, `consult admin create-user failed:\n${created.stderr}${created.stdout}`);
      const link = /\/enrol#(\S+)/.exec(created.stdout);
      assert.ok(link, `an enrolment link: ${created.stdout}`);

      const admin = await launchParticipant("admin");
      people.push(admin);
      await enrolThroughThePages(admin.page, service, link[1]);
      const alertsLink = byTestId(admin.page, "alerts-link");
      await alertsLink.waitFor({ state: "visible" });

      // Nothing yet.
      await alertsLink.click();
      await admin.page.waitForFunction(() => document.querySelector('[data-testid="alerts-summary"]')?.textContent === "No open alerts.");

      // The attack: made-up invite links from outside the browser.
      const attackStarted = Date.now();
      for (let n = 0; n < 20; n++) {
        const r = await fetch(`${service.url}/api/v1/invites/inspect`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ invite: `made-up-invite-${n}` }),
        });
        assert.equal(r.status, 410);
      }
      // The page refreshes on its own; reload to see it at once.
      await admin.page.reload();
      const row = admin.page.locator('[data-testid="alert-row"][data-rule="invite_guessing"][data-state="open"]');
      await row.waitFor({ state: "visible", timeout: 10_000 });
      t.diagnostic(`alert listed ${Date.now() - attackStarted} ms after the attack began`);
      assert.equal(await row.locator('[data-testid="alert-subject"]').textContent(), "address:127.0.0.1");
      assert.match((await row.locator('[data-testid="alert-summary"]').textContent()) ?? "", /^20 unknown invite links tried from 127\.0\.0\.1 within 5m$/);
      assert.equal(await admin.page.locator('[data-testid="alerts-summary"]').textContent(), "1 open alert.");

      await row.locator('[data-testid="alert-acknowledge"]').click();
      await admin.page.waitForFunction(() => document.querySelector('[data-testid="alerts-summary"]')?.textContent === "No open alerts.");
      assert.equal(await admin.page.locator('[data-testid="alert-row"]').count(), 0);
      await byTestId(admin.page, "alerts-show-all").check();
      await admin.page.locator('[data-testid="alert-row"][data-rule="invite_guessing"][data-state="acknowledged"]').waitFor();

      // A doctor has no alerts link, and the route shows them their list instead.
      const doctor = await launchParticipant("doctor");
      people.push(doctor);
      await signInDoctor(doctor.page, service);
      assert.ok(await byTestId(doctor.page, "alerts-link").isHidden(), "no alerts link for a doctor");
      await doctor.page.goto(`${service.url}/#/alerts`);
      await byTestId(doctor.page, "create-title").waitFor({ state: "visible" });
      assert.ok(await doctor.page.locator("#view-alerts").isHidden());
      const { status } = await doctor.page.evaluate(async () => {
        const r = await fetch("/api/v1/admin/alerts", { headers: { Accept: "application/json" } });
        return { status: r.status };
      });
      assert.equal(status, 403);

      for (const p of [admin, doctor]) assert.deepEqual(cspViolations(p), []);
    });
  });
});
