// @ts-check
/**
 * The patient's certificates, on the page the consultation ends on (and whenever the invite link
 * is opened again, for as long as the service lets it fetch them): each certificate's claims as
 * checkboxes — the patient chooses what to show (the period at first; the diagnosis never unless
 * they tick it; the signing clinician always) — then a link and its QR code to send or show, or a
 * printable PDF carrying the code.
 *
 * While the page is open it looks for new certificates every few seconds for half an hour, so a
 * certificate the doctor signs after the call appears without reloading.
 */

import * as api from "./api.js";
import { ApiError } from "./api.js";
import { KIND_LABELS, claimLabel, claimText, day } from "./certificate-claims.js";
import { announce, byId, h, showError, svgDataUrl } from "./ui.js";

/** @typedef {import('./protocol.js').HeldCertificate} HeldCertificate */

/** Ticked at first: what an employer usually needs. */
const SHOWN_BY_DEFAULT = new Set(["period"]);
/**
 * Shown in every presentation this page makes: who signed it, which any reader needs to trust
 * it. (They are disclosures like the others in the certificate itself, so a wallet could leave
 * them out.)
 */
const ALWAYS_SHOWN = new Set(["clinician_name", "clinician_licence"]);
/** Claims marked as confidential next to their checkbox. */
const CONFIDENTIAL = new Set(["diagnosis", "note"]);
/** How often, and for how long, the page looks for new certificates. */
const POLL_MS = 5000;
const POLL_FOR_MS = 30 * 60 * 1000;

export class HeldCertificatesPanel {
  constructor() {
    this.panel = byId("certificates", HTMLElement);
    this.list = byId("certificate-list", HTMLElement);
    this.error = byId("certificates-error", HTMLElement);
    /** The invite link's token, while shown. */
    this.invite = "";
    /** Ids of the certificates rendered, to render only what is new. */
    this.shown = new Set();
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.timer = undefined;
    this.until = 0;
  }

  /**
   * Show the certificates `invite` holds, and keep looking for new ones for a while.
   * @param {string} invite
   */
  show(invite) {
    if (!invite) return;
    if (this.invite !== invite) {
      this.invite = invite;
      this.shown.clear();
      this.list.replaceChildren();
    }
    this.until = Date.now() + POLL_FOR_MS;
    void this.refresh();
  }

  hide() {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.panel.hidden = true;
  }

  async refresh() {
    clearTimeout(this.timer);
    /** @type {HeldCertificate[]} */
    let held = [];
    try {
      held = await api.heldCertificates(this.invite);
      this.error.hidden = true;
    } catch (err) {
      // A link that fetches nothing (withdrawn, unknown) shows no panel at all.
      if (err instanceof ApiError && err.status === 410) {
        this.hide();
        return;
      }
      showError(this.error, err instanceof ApiError ? err.message : "Your certificates could not be fetched.");
    }
    // A certificate no longer handed out (revoked, or past the link's time): its card says so
    // and makes nothing more.
    if (this.error.hidden) {
      const current = new Set(held.map((c) => c.id));
      for (const card of this.list.querySelectorAll("[data-id]")) {
        if (!(card instanceof HTMLElement) || current.has(card.dataset.id ?? "") || card.dataset.gone) continue;
        card.dataset.gone = "true";
        for (const button of card.querySelectorAll("button")) /** @type {HTMLButtonElement} */ (button).disabled = true;
        card.querySelector(".presentation")?.setAttribute("hidden", "");
        card.append(h("p", { className: "notice", testid: "certificate-gone", text: "Your clinic revoked this certificate, or this link no longer fetches it." }));
      }
    }
    const fresh = held.filter((c) => !this.shown.has(c.id));
    for (const certificate of fresh.reverse()) {
      this.shown.add(certificate.id);
      this.list.prepend(this.render(certificate));
    }
    if (fresh.length) announce(fresh.length === 1 ? "Your doctor issued a certificate." : "Your doctor issued certificates.");
    this.panel.hidden = this.shown.size === 0 && this.error.hidden;
    if (Date.now() < this.until) this.timer = setTimeout(() => void this.refresh(), POLL_MS);
  }

  /**
   * @param {HeldCertificate} certificate
   * @returns {HTMLElement}
   */
  render(certificate) {
    const id = certificate.id;
    const period = certificate.claims.find((c) => c.name === "period");
    const title = `${KIND_LABELS[certificate.kind] ?? certificate.kind}${period ? `, ${claimText(period)}` : ""}`;
    const boxes = certificate.claims.map((claim) => {
      const box = h("input", {
        testid: `disclose-${claim.name}`,
        attrs: { type: "checkbox", id: `disclose-${id}-${claim.name}`, value: claim.name },
      });
      box.checked = SHOWN_BY_DEFAULT.has(claim.name) || ALWAYS_SHOWN.has(claim.name);
      box.disabled = ALWAYS_SHOWN.has(claim.name);
      const label = h("label", { attrs: { for: box.id } }, [
        h("strong", { text: `${claimLabel(claim.name)}: ` }),
        claimText(claim),
        ...(CONFIDENTIAL.has(claim.name) ? [h("span", { className: "hint-inline", text: " (confidential)" })] : []),
        ...(ALWAYS_SHOWN.has(claim.name) ? [h("span", { className: "hint-inline", text: " (always shown: who signed it)" })] : []),
      ]);
      return h("li", { className: "disclose-choice" }, [box, label]);
    });
    const chosen = () => boxes.flatMap((li) => {
      const box = li.querySelector("input");
      return box?.checked ? [box.value] : [];
    });
    const error = h("p", { className: "error", testid: "presentation-error", attrs: { role: "alert" } });
    error.hidden = true;
    const linkField = h("input", { testid: "presentation-link", attrs: { type: "text", readonly: "", "aria-label": "Link to this certificate" } });
    const qr = h("img", { className: "presentation-qr", testid: "presentation-qr", attrs: { alt: "QR code of the link" } });
    const qrNote = h("p", { className: "hint", testid: "presentation-qr-note" });
    const copy = h("button", { className: "button small", text: "Copy link", attrs: { type: "button" } });
    copy.addEventListener("click", () => {
      void navigator.clipboard?.writeText(linkField.value).then(() => announce("Link copied."));
    });
    const output = h("div", { className: "presentation", testid: "presentation" }, [
      h("div", { className: "copy-row" }, [linkField, copy]),
      qr,
      qrNote,
    ]);
    output.hidden = true;

    const makeLink = h("button", { className: "button primary", text: "Make a link and QR code", testid: "make-link", attrs: { type: "button" } });
    makeLink.addEventListener("click", async () => {
      error.hidden = true;
      makeLink.disabled = true;
      try {
        const shown = await api.presentCertificate(this.invite, id, chosen());
        linkField.value = shown.link;
        qr.src = svgDataUrl(shown.qr_svg);
        qrNote.textContent = `Anyone with this link or code sees only what you ticked (QR version ${shown.qr_version}).`;
        output.hidden = false;
        announce("The link and QR code are ready.");
      } catch (err) {
        showError(error, err instanceof ApiError ? err.message : "The link could not be made.");
      } finally {
        makeLink.disabled = false;
      }
    });
    const pdf = h("button", { className: "button", text: "Download PDF", testid: "download-pdf", attrs: { type: "button" } });
    pdf.addEventListener("click", async () => {
      error.hidden = true;
      pdf.disabled = true;
      try {
        const blob = await api.certificatePdf(this.invite, id, chosen());
        const url = URL.createObjectURL(blob);
        const a = h("a", { attrs: { href: url, download: "medical-certificate.pdf" } });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 60_000);
      } catch (err) {
        showError(error, err instanceof ApiError ? err.message : "The PDF could not be made.");
      } finally {
        pdf.disabled = false;
      }
    });

    const state = certificate.state === "revoked"
      ? [h("span", { className: "badge badge-revoked", text: "Revoked", testid: "certificate-revoked" })]
      : [];
    return h("li", { className: "certificate card", testid: "held-certificate", attrs: { "data-id": id } }, [
      h("h3", { text: title }, state),
      h("p", { className: "hint", text: `Issued ${day(certificate.issued_at)}; valid until ${day(certificate.valid_until)}.` }),
      h("fieldset", {}, [
        h("legend", { text: "Choose what to show" }),
        h("ul", { className: "disclose-list" }, boxes),
      ]),
      h("div", { className: "actions" }, [makeLink, pdf]),
      error,
      output,
    ]);
  }
}
