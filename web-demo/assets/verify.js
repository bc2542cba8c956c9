// @ts-check
/**
 * `/verify`: anyone checks a medical certificate. The presentation comes from the link (the part
 * after `#`, which the browser never sends to a server in the address) or is pasted; the service
 * checks the issuer's signature, every disclosed claim, the validity and the revocation status,
 * and the page shows exactly what it proved.
 */

import * as api from "./api.js";
import { ApiError } from "./api.js";
import { KIND_LABELS, claimLabel, claimText, day } from "./certificate-claims.js";
import { announce, byId, h, showError } from "./ui.js";

/** @typedef {import('./protocol.js').VerificationResult} VerificationResult */

const form = byId("verify-form", HTMLFormElement);
const input = byId("verify-input", HTMLTextAreaElement);
const error = byId("verify-error", HTMLElement);
const submit = byId("verify-submit", HTMLButtonElement);
const result = byId("verify-result", HTMLElement);
const outcome = byId("verify-outcome", HTMLElement);
const reason = byId("verify-reason", HTMLElement);
const facts = byId("verify-facts", HTMLElement);
const nothingElse = byId("verify-nothing-else", HTMLElement);

/** What each outcome says. */
const OUTCOMES = {
  valid: "Valid certificate",
  revoked: "Revoked — this certificate is no longer valid",
  invalid: "Not a valid certificate",
};

/**
 * @param {string} term
 * @param {string} text
 * @param {string} testid
 */
function fact(term, text, testid) {
  return [h("dt", { text: term }), h("dd", { text, testid })];
}

/** @param {VerificationResult} found */
function show(found) {
  result.hidden = false;
  result.dataset.outcome = found.outcome;
  outcome.textContent = OUTCOMES[found.outcome];
  reason.hidden = !found.reason;
  reason.textContent = found.reason ? `Why: ${found.reason}.` : "";
  /** @type {Node[]} */
  const rows = [];
  if (found.outcome !== "invalid") {
    if (found.issuer) rows.push(...fact("Issued by", found.issuer, "verify-issuer"));
    if (found.kind) rows.push(...fact("Certificate", KIND_LABELS[found.kind] ?? found.kind, "verify-kind"));
    if (found.issued_at) rows.push(...fact("Issued", day(found.issued_at), "verify-issued"));
    if (found.valid_until) rows.push(...fact("Valid until", day(found.valid_until), "verify-valid-until"));
    for (const claim of found.disclosed ?? []) {
      rows.push(...fact(claimLabel(claim.name), claimText(claim), `verify-claim-${claim.name}`));
    }
  }
  facts.replaceChildren(...rows);
  nothingElse.hidden = found.outcome === "invalid";
  outcome.focus();
  announce(OUTCOMES[found.outcome]);
}

/** @param {string} text */
async function check(text) {
  error.hidden = true;
  if (!text.trim()) {
    showError(error, "Paste the link or the code from the certificate.");
    input.focus();
    return;
  }
  submit.disabled = true;
  try {
    show(await api.verifyCertificate(text.trim()));
  } catch (err) {
    result.hidden = true;
    showError(
      error,
      err instanceof ApiError ? err.message : "The certificate could not be checked. Try again.",
    );
  } finally {
    submit.disabled = false;
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  void check(input.value);
});

function fromLink() {
  const text = location.hash.replace(/^#/, "").trim();
  if (!text) return;
  input.value = `${location.origin}${location.pathname}#${text}`;
  void check(text);
}

window.addEventListener("hashchange", fromLink);
fromLink();
