// @ts-check
/**
 * The doctor's certificates of a consultation (`#/certificates/<consultation id>`, the section
 * `view-certificates` of `index.html`): a form to sign a new one — kind, period, the patient's
 * name as confirmed, restrictions, an optional confidential diagnosis or note — and the
 * certificates issued so far, each with its claims, its state and a way to revoke it with a
 * reason. The service signs as the organisation with the clinician's name and licence number.
 */

import * as api from "./api.js";
import { ApiError } from "./api.js";
import { KIND_LABELS, claimLabel, claimText, day } from "./certificate-claims.js";
import { announce, byId, confirmInline, h, replaceKeepingFocus, showError, showView } from "./ui.js";

/** @typedef {import('./protocol.js').CertificateSummary} CertificateSummary */
/** @typedef {import('./protocol.js').CertificateKindName} CertificateKindName */

/** `YYYY-MM-DD` of a local date. */
function isoDay(date = new Date()) {
  const pad = (/** @type {number} */ n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

export class CertificatesView {
  /**
   * @param {{ onError: (err: unknown) => boolean }} options `onError`: the page's handling of an
   *   API error (a lost session); true when it took over.
   */
  constructor({ onError }) {
    this.onError = onError;
    this.view = byId("view-certificates", HTMLElement);
    this.heading = byId("certificates-heading", HTMLElement);
    this.form = byId("certificate-form", HTMLFormElement);
    this.kind = byId("certificate-kind", HTMLSelectElement);
    this.start = byId("certificate-start", HTMLInputElement);
    this.end = byId("certificate-end", HTMLInputElement);
    this.patient = byId("certificate-patient", HTMLInputElement);
    this.restrictions = byId("certificate-restrictions", HTMLTextAreaElement);
    this.diagnosis = byId("certificate-diagnosis", HTMLTextAreaElement);
    this.note = byId("certificate-note", HTMLTextAreaElement);
    this.formError = byId("certificate-form-error", HTMLElement);
    this.submit = byId("certificate-submit", HTMLButtonElement);
    this.listError = byId("certificate-list-error", HTMLElement);
    this.summary = byId("certificate-summary", HTMLElement);
    this.list = byId("issued-certificates", HTMLElement);
    /** The consultation shown, or "" when the view is not. */
    this.consultationId = "";
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.issue();
    });
  }

  /**
   * Show the certificates of a consultation, with the form.
   * @param {string} consultationId
   */
  async show(consultationId) {
    this.consultationId = consultationId;
    this.heading.textContent = "Certificates";
    this.form.reset();
    this.start.value = isoDay();
    this.end.value = isoDay();
    this.patient.value = "";
    showError(this.formError, null);
    showError(this.listError, null);
    this.list.replaceChildren();
    this.summary.textContent = "Loading…";
    showView(this.view);
    try {
      const consultation = await api.getConsultation(consultationId);
      if (this.consultationId !== consultationId) return;
      this.heading.textContent = `Certificates of “${consultation.title || "Untitled consultation"}”`;
    } catch (err) {
      if (this.onError(err) || this.consultationId !== consultationId) return;
    }
    await this.load();
  }

  hide() {
    this.consultationId = "";
  }

  async load() {
    const id = this.consultationId;
    try {
      const certificates = await api.listCertificates(id);
      if (this.consultationId !== id) return;
      replaceKeepingFocus(this.list, certificates.slice().reverse().map((c) => this.renderCertificate(c)));
      this.summary.textContent =
        certificates.length === 0
          ? "No certificate was issued in this consultation yet."
          : "Signed certificates, newest first. The patient’s link fetches each for a while after it is issued.";
    } catch (err) {
      if (this.onError(err) || this.consultationId !== id) return;
      this.summary.textContent = "";
      showError(this.listError, err instanceof ApiError ? err.message : "The certificates could not be loaded.");
    }
  }

  async issue() {
    showError(this.formError, null);
    /** @param {string} text */
    const optional = (text) => (text.trim() ? text.trim() : null);
    const kind = /** @type {CertificateKindName} */ (this.kind.value);
    if (!this.patient.value.trim()) {
      showError(this.formError, "Enter or confirm the patient’s name.");
      this.patient.focus();
      return;
    }
    if (kind === "free_text" && !this.note.value.trim()) {
      showError(this.formError, "A free-text certificate needs its text: write it in the note.");
      this.note.focus();
      return;
    }
    this.submit.disabled = true;
    try {
      await api.issueCertificate(this.consultationId, {
        kind,
        period_start: this.start.value,
        period_end: this.end.value,
        patient_name: this.patient.value.trim(),
        restrictions: optional(this.restrictions.value),
        diagnosis: optional(this.diagnosis.value),
        note: optional(this.note.value),
      });
      announce("The certificate is signed; the patient can fetch it now.");
      this.restrictions.value = "";
      this.diagnosis.value = "";
      this.note.value = "";
      await this.load();
    } catch (err) {
      if (this.onError(err)) return;
      showError(this.formError, err instanceof ApiError ? err.message : "The certificate could not be signed.");
    } finally {
      this.submit.disabled = false;
    }
  }

  /**
   * @param {CertificateSummary} c
   * @returns {HTMLElement}
   */
  renderCertificate(c) {
    const claims = (c.claims ?? []).map((claim) =>
      h("li", {}, [h("strong", { text: `${claimLabel(claim.name)}: ` }), claimText(claim)]),
    );
    const state =
      c.state === "revoked"
        ? h("p", {
            className: "badge badge-revoked",
            testid: "certificate-state",
            text: `Revoked ${day(c.revoked_at)}${c.revoke_reason ? `: ${c.revoke_reason}` : ""}`,
          })
        : h("p", { className: "badge", testid: "certificate-state", text: "Valid" });
    const item = h("li", { className: "certificate card", testid: "issued-certificate", attrs: { "data-id": c.id } }, [
      h("h3", { text: KIND_LABELS[c.kind] ?? c.kind }),
      state,
      h("p", {
        className: "hint",
        text: `Signed by ${c.issued_by} on ${day(c.issued_at)}; valid until ${day(c.valid_until)}.`,
      }),
      c.claims ? h("ul", { className: "claim-list" }, claims) : h("p", { className: "hint", text: "Its content was destroyed at the end of its retention." }),
    ]);
    if (c.state !== "revoked") {
      const reason = h("input", {
        testid: "revoke-reason",
        attrs: { type: "text", maxlength: "500", "aria-label": "Why it is revoked", placeholder: "Why (kept in the audit trail)" },
      });
      const revoke = h("button", { className: "button small danger-outline", text: "Revoke", testid: "revoke-certificate", attrs: { type: "button" } });
      revoke.dataset.key = `revoke-${c.id}`;
      const error = h("p", { className: "error", attrs: { role: "alert" } });
      error.hidden = true;
      revoke.addEventListener("click", async () => {
        if (!reason.value.trim()) {
          showError(error, "Say why it is revoked.");
          reason.focus();
          return;
        }
        if (!(await confirmInline(revoke, "Revoke this certificate for good?", "Revoke", { danger: true, testid: "confirm-revoke" }))) return;
        try {
          await api.revokeCertificate(c.id, reason.value.trim());
          announce("The certificate is revoked.");
          await this.load();
        } catch (err) {
          if (this.onError(err)) return;
          showError(error, err instanceof ApiError ? err.message : "The certificate could not be revoked.");
        }
      });
      item.append(h("div", { className: "revoke-row" }, [reason, revoke]), error);
    }
    return item;
  }
}
