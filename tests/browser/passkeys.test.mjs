// Passkeys in Chromium with a CDP virtual authenticator (a CTAP2 platform authenticator with
// user verification): register two from the account page, rename, sign in with one alone and as
// the second factor after the password; a cloned authenticator (its counter behind) is refused;
// a phishing site relaying the real page from another origin gets an answer the service refuses;
// removing a passkey works from the page.
//
// WebAuthn needs a domain name, so the pages are opened at http://localhost:<port> (the service
// offers passkeys there when it is reached at an address).
//
// Run: cd tests/browser && npm test   (environment: see README.md here)

import assert from "node:assert/strict";
import { createServer, request } from "node:http";
import { describe, test } from "node:test";

import { byTestId, cspViolations, launchParticipant, signInDoctor, withService } from "./harness.mjs";

/**
 * A CTAP2 authenticator on the page's browser, answering without a prompt as a person who
 * touched it and passed its fingerprint check would.
 * @param {import('playwright-core').CDPSession} cdp
 * @returns {Promise<string>} Its id.
 */
async function addAuthenticator(cdp) {
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2",
      transport: "internal",
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  return authenticatorId;
}

/**
 * @param {import('playwright-core').CDPSession} cdp
 * @param {string} authenticatorId
 */
async function credentialsOf(cdp, authenticatorId) {
  const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
  return credentials;
}

/**
 * A reverse proxy on another port of localhost, the way a phishing site relays the real pages:
 * it rewrites `Host` and `Origin` so the service sees nothing unusual — except inside what the
 * browser signs.
 * @param {string} target The service, like http://localhost:1234.
 * @returns {Promise<{ origin: string, close: () => Promise<void> }>}
 */
async function phishingProxy(target) {
  const upstream = new URL(target);
  const server = createServer((req, res) => {
    const headers = { ...req.headers, host: upstream.host };
    if (headers.origin) headers.origin = upstream.origin;
    if (headers.referer) headers.referer = `${upstream.origin}/`;
    const out = request(
      { host: "127.0.0.1", port: upstream.port, path: req.url, method: req.method, headers },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    out.on("error", () => res.destroy());
    req.pipe(out);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(undefined)));
  const address = server.address();
  if (!address || typeof address === "string") throw new Error("the proxy has no port");
  return {
    origin: `http://localhost:${address.port}`,
    close: () => new Promise((resolve) => server.close(() => resolve(undefined))),
  };
}

/**
 * @param {import('playwright-core').Page} page
 * @param {string} name
 * @param {string} password
 */
async function addPasskey(page, name, password) {
  await byTestId(page, "passkey-name").fill(name);
  await byTestId(page, "passkey-password").fill(password);
  await byTestId(page, "passkey-add").click();
  await page.locator(`[data-testid="passkey-item"][data-name="${name}"]`).waitFor({ state: "visible" });
}

/** @param {import('playwright-core').Page} page */
async function signOut(page) {
  await byTestId(page, "signout-button").click();
  await byTestId(page, "login-passkey").waitFor({ state: "visible" });
}

/**
 * Click "Sign in with a passkey" and wait for the list or an error.
 * @param {import('playwright-core').Page} page
 * @returns {Promise<string | null>} The error shown, or null when signed in.
 */
async function signInWithPasskey(page) {
  await byTestId(page, "login-passkey").click();
  await page
    .locator('[data-testid="create-title"]:visible, [data-testid="signin-error"]:visible')
    .first()
    .waitFor({ state: "visible" });
  if (await byTestId(page, "create-title").isVisible()) return null;
  return (await byTestId(page, "signin-error").textContent()) ?? "";
}

describe("passkeys", { timeout: 240_000 }, () => {
  test("register, rename, sign in alone and as second factor; a clone and a phishing origin are refused", { timeout: 200_000 }, async (t) => {
    await withService({}, async ({ service, people }) => {
      const origin = service.url.replace("127.0.0.1", "localhost");
      const doctor = await launchParticipant("doctor", { origin });
      people.push(doctor);
      const { page } = doctor;
      const cdp = await doctor.context.newCDPSession(page);
      await cdp.send("WebAuthn.enable", { enableUI: false });
      /** @type {string[]} */
      const refusals = [];
      page.on("response", async (r) => {
        if (r.url().endsWith("/api/v1/auth/passkey/finish") && r.status() !== 200) {
          refusals.push(JSON.parse(await r.text()).error.code);
        }
      });

      await signInDoctor(page, { ...service, url: origin });
      await byTestId(page, "account-link").click();
      await byTestId(page, "passkey-empty").waitFor({ state: "visible" });

      // Two passkeys, on two authenticators (one laptop, one phone).
      const laptop = await addAuthenticator(cdp);
      await addPasskey(page, "Laptop", service.credentials.password);
      const [laptopKey] = await credentialsOf(cdp, laptop);
      assert.ok(laptopKey.isResidentCredential, "a discoverable credential, for passwordless sign-in");
      await cdp.send("WebAuthn.removeVirtualAuthenticator", { authenticatorId: laptop });
      const phone = await addAuthenticator(cdp);
      // The password is asked again: a wrong one creates nothing.
      await byTestId(page, "passkey-name").fill("Phone");
      await byTestId(page, "passkey-password").fill("not the password at all");
      await byTestId(page, "passkey-add").click();
      await byTestId(page, "passkey-add-error").waitFor({ state: "visible" });
      assert.match((await byTestId(page, "passkey-add-error").textContent()) ?? "", /password is not correct/);
      assert.equal((await credentialsOf(cdp, phone)).length, 0);
      await addPasskey(page, "Phone", service.credentials.password);
      assert.equal(await byTestId(page, "passkey-item").count(), 2);

      // Renamed in place.
      const phoneItem = page.locator('[data-testid="passkey-item"][data-name="Phone"]');
      await phoneItem.locator('[data-testid="passkey-rename"]').click();
      await byTestId(page, "passkey-rename-input").fill("Work phone");
      await byTestId(page, "passkey-rename-save").click();
      await page.locator('[data-testid="passkey-item"][data-name="Work phone"]').waitFor({ state: "visible" });

      // Passwordless: nothing typed, the passkey names the account.
      await signOut(page);
      assert.equal(await signInWithPasskey(page), null);
      assert.ok(((await byTestId(page, "user-name").textContent()) ?? "").trim().length > 0, "signed in as someone");
      // Second factor: email and password, then the passkey instead of the app's code.
      await signOut(page);
      await byTestId(page, "login-email").fill(service.credentials.email);
      await byTestId(page, "login-password").fill(service.credentials.password);
      assert.equal(await signInWithPasskey(page), null);

      // A clone of the phone's key, made before these sign-ins: its counter is behind.
      const [phoneKey] = await credentialsOf(cdp, phone);
      t.diagnostic(`phone signCount after two sign-ins: ${phoneKey.signCount}`);
      assert.ok(phoneKey.signCount >= 2);
      await cdp.send("WebAuthn.removeVirtualAuthenticator", { authenticatorId: phone });
      const clone = await addAuthenticator(cdp);
      await cdp.send("WebAuthn.addCredential", { authenticatorId: clone, credential: { ...phoneKey, signCount: 0 } });
      await signOut(page);
      const cloned = await signInWithPasskey(page);
      assert.match(cloned ?? "", /counter went backwards/);
      assert.equal(refusals.at(-1), "passkey_cloned");
      await cdp.send("WebAuthn.removeVirtualAuthenticator", { authenticatorId: clone });

      // The real phone again (its counter ahead), through a phishing site on another origin.
      const real = await addAuthenticator(cdp);
      await cdp.send("WebAuthn.addCredential", {
        authenticatorId: real,
        credential: { ...phoneKey, signCount: phoneKey.signCount + 10 },
      });
      // (The same tab: the virtual authenticator belongs to it.)
      const proxy = await phishingProxy(origin);
      try {
        await page.goto(`${proxy.origin}/`);
        await byTestId(page, "login-passkey").waitFor({ state: "visible" });
        const phished = await signInWithPasskey(page);
        assert.match(phished ?? "", /made for another site/);
        assert.equal(refusals.at(-1), "passkey_wrong_origin");
        assert.ok(await byTestId(page, "create-title").isHidden(), "the phishing page is not signed in");
      } finally {
        await proxy.close();
      }
      // The same passkey at the real address signs in.
      await page.goto(`${origin}/`);
      await byTestId(page, "login-passkey").waitFor({ state: "visible" });
      assert.equal(await signInWithPasskey(page), null);

      // Removed from the page.
      await byTestId(page, "account-link").click();
      const laptopItem = page.locator('[data-testid="passkey-item"][data-name="Laptop"]');
      await laptopItem.locator('[data-testid="passkey-remove"]').click();
      await byTestId(page, "passkey-remove-password").fill(service.credentials.password);
      await byTestId(page, "passkey-remove-confirm").click();
      await laptopItem.waitFor({ state: "detached" });
      assert.equal(await byTestId(page, "passkey-item").count(), 1);
      t.diagnostic(`refused answers: ${refusals.join(", ")}`);
      assert.deepEqual(cspViolations(doctor), []);
    });
  });
});
