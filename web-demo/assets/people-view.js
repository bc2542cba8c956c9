// @ts-check
/**
 * Who else takes part, as the doctor manages it beside the call (the panel `people-panel` of
 * `index.html`): a link of their own for each extra person — a patient, an interpreter, a family
 * member or carer — under the name the doctor chooses, and colleagues added by their sign-in
 * email; each is listed with a way to take it back (revoking a link disconnects whoever holds
 * it; removing a colleague puts them out of the call). How many places are promised, out of the
 * organisation's limit, is shown. Everyone invited waits in the waiting room and is admitted on
 * their own.
 */

import * as api from "./api.js";
import { ApiError } from "./api.js";
import { announce, byId, confirmInline, h, replaceKeepingFocus, showError } from "./ui.js";

/** @typedef {import('./protocol.js').Consultation} Consultation */
/** @typedef {import('./protocol.js').InviteKind} InviteKind */

/** How each kind of invite is named on the page. */
const KINDS = /** @type {Record<InviteKind, string>} */ ({
  patient: "patient",
  interpreter: "interpreter",
  companion: "family member or carer",
});

export class PeopleView {
  /**
   * @param {{ onError: (err: unknown) => boolean }} options `onError`: the page's handling of an
   *   API error (a lost session), true when it took over.
   */
  constructor({ onError }) {
    this.onError = onError;
    this.panel = byId("people-panel", HTMLElement);
    this.list = byId("people-list", HTMLUListElement);
    this.capacity = byId("people-capacity", HTMLElement);
    this.error = byId("people-error", HTMLElement);
    this.inviteForm = byId("invite-person-form", HTMLFormElement);
    this.inviteKind = byId("invite-kind", HTMLSelectElement);
    this.inviteName = byId("invite-name", HTMLInputElement);
    this.issued = byId("invite-person-issued", HTMLElement);
    this.issuedUrl = byId("invite-person-url", HTMLInputElement);
    this.colleagueForm = byId("add-colleague-form", HTMLFormElement);
    this.colleagueEmail = byId("colleague-email", HTMLInputElement);
    /** @type {string | null} The consultation shown. */
    this.consultationId = null;
    this.inviteForm.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.invite();
    });
    this.colleagueForm.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.addColleague();
    });
    byId("copy-person-url", HTMLButtonElement).addEventListener("click", () => {
      this.issuedUrl.select();
      void navigator.clipboard?.writeText(this.issuedUrl.value).then(
        () => announce("Link copied."),
        () => {},
      );
    });
  }

  /**
   * Show the panel for a consultation (the doctor's own), or hide it (`null`: a colleague's
   * page, where only its doctor manages who takes part).
   * @param {Consultation | null} consultation
   */
  show(consultation) {
    this.panel.hidden = !consultation;
    this.consultationId = consultation ? consultation.id : null;
    this.issued.hidden = true;
    this.issuedUrl.value = "";
    showError(this.error, null);
    if (consultation) this.render(consultation);
  }

  /** Read the consultation again and show it. */
  async refresh() {
    const id = this.consultationId;
    if (!id) return;
    try {
      const consultation = await api.getConsultation(id);
      if (this.consultationId === id) this.render(consultation);
    } catch (err) {
      if (!this.onError(err)) showError(this.error, `Could not load who takes part: ${messageOf(err)}`);
    }
  }

  /**
   * @private
   * @param {Consultation} c
   */
  render(c) {
    const invites = c.invites ?? [];
    const colleagues = c.clinicians ?? [];
    const max = c.max_participants ?? 2;
    // Counted by the service, with the rule it enforces.
    const promised = c.places_taken ?? 1;
    this.capacity.textContent = `${promised} of ${max} places taken (you included).`;
    const full = promised >= max;
    this.inviteForm.querySelectorAll("input, select, button").forEach((el) => {
      /** @type {HTMLInputElement} */ (el).disabled = full;
    });
    this.colleagueForm.querySelectorAll("input, button").forEach((el) => {
      /** @type {HTMLInputElement} */ (el).disabled = full;
    });
    if (full) this.capacity.textContent += " Revoke a link or remove a colleague to invite someone else.";
    const items = [
      ...invites.map((invite) =>
        h("li", { className: "person", testid: "person-invite" }, [
          h("span", { className: "person-name", text: invite.name }),
          h("span", { className: "hint", text: ` — ${KINDS[invite.kind]}, ${invite.in_use ? "link in use" : "link not used yet"}` }),
          this.button(
            "Revoke link",
            `Revoke ${invite.name}’s link`,
            `${invite.name} is disconnected and the link stops working.`,
            () => api.revokeNamedInvite(c.id, invite.id),
            `${invite.name}’s link was revoked.`,
          ),
        ]),
      ),
      ...colleagues.map((colleague) =>
        h("li", { className: "person", testid: "person-colleague" }, [
          h("span", { className: "person-name", text: colleague.name }),
          h("span", { className: "hint", text: " — colleague" }),
          this.button(
            "Remove",
            `Remove ${colleague.name}`,
            `${colleague.name} is disconnected and can no longer join.`,
            () => api.removeClinician(c.id, colleague.user_id),
            `${colleague.name} was removed.`,
          ),
        ]),
      ),
    ];
    replaceKeepingFocus(this.list, items);
  }

  /**
   * A button that takes something back, after an inline confirmation; the focus goes to the
   * panel's heading afterwards (the row it was in is gone).
   * @private
   * @param {string} label
   * @param {string} ariaLabel
   * @param {string} question What confirming does.
   * @param {() => Promise<void>} action
   * @param {string} done Announced once it is done.
   */
  button(label, ariaLabel, question, action, done) {
    const button = h("button", { className: "button small", text: label, attrs: { type: "button", "aria-label": ariaLabel, "data-key": ariaLabel } });
    button.addEventListener("click", async () => {
      if (!(await confirmInline(button, question, label, { testid: "people-confirm", danger: true }))) return;
      button.disabled = true;
      try {
        await action();
        announce(done);
        showError(this.error, null);
      } catch (err) {
        if (!this.onError(err)) showError(this.error, messageOf(err));
      }
      await this.refresh();
      byId("people-heading", HTMLElement).focus();
    });
    return button;
  }

  /** @private */
  async invite() {
    const id = this.consultationId;
    const name = this.inviteName.value.trim();
    if (!id) return;
    if (!name) {
      showError(this.error, "Enter the name of the person you invite: everyone in the call will see it.");
      this.inviteName.focus();
      return;
    }
    try {
      const kind = /** @type {InviteKind} */ (this.inviteKind.value);
      const issued = await api.issueNamedInvite(id, kind, name);
      this.issuedUrl.value = issued.invite_url;
      this.issued.hidden = false;
      this.inviteName.value = "";
      showError(this.error, null);
      announce(`A link for ${issued.invite.name} was created. Send it to them: it is shown only now.`);
    } catch (err) {
      if (!this.onError(err)) showError(this.error, messageOf(err));
    }
    await this.refresh();
  }

  /** @private */
  async addColleague() {
    const id = this.consultationId;
    const email = this.colleagueEmail.value.trim();
    if (!id || !email) return;
    try {
      const added = await api.addClinician(id, email);
      this.colleagueEmail.value = "";
      showError(this.error, null);
      announce(`${added.name} was added. They find this consultation under “Shared with you”.`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) showError(this.error, "No clinician account has that email.");
      else if (!this.onError(err)) showError(this.error, messageOf(err));
    }
    await this.refresh();
  }
}

/** @param {unknown} err */
function messageOf(err) {
  return err instanceof Error ? err.message : String(err);
}
