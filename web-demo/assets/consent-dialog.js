// @ts-check
/**
 * The patient's recording question (`consent-dialog` in `join.html`): a modal dialog that says
 * in plain words what recording means, with two answers of equal weight. It cannot be dismissed
 * without an answer (Escape does nothing): nothing is recorded until the patient allows it, and
 * the page asks again only if the service still waits for an answer after a reconnect.
 */

import { byId } from "./ui.js";

export class ConsentDialog {
  /** @param {{ onAnswer: (allow: boolean) => void }} options */
  constructor({ onAnswer }) {
    this.dialog = byId("consent-dialog", HTMLDialogElement);
    this.request = byId("consent-request", HTMLElement);
    this.storage = byId("consent-storage", HTMLElement);
    byId("consent-allow", HTMLButtonElement).addEventListener("click", () => onAnswer(true));
    byId("consent-decline", HTMLButtonElement).addEventListener("click", () => onAnswer(false));
    // The question stays until it is answered: Escape does not dismiss it.
    this.dialog.addEventListener("cancel", (event) => event.preventDefault());
  }

  /**
   * Ask (or keep asking, with the newest details).
   * @param {{ doctorName: string, retentionDays?: number | undefined }} details
   */
  open({ doctorName, retentionDays }) {
    this.request.textContent = `${doctorName} would like to record this consultation.`;
    const kept =
      retentionDays === undefined
        ? "kept for a limited time"
        : `kept for ${retentionDays} ${retentionDays === 1 ? "day" : "days"}`;
    this.storage.textContent = `The recording is encrypted and ${kept}, then destroyed. Only your care team can open it.`;
    if (this.dialog.open) return;
    this.dialog.showModal();
    // The question first, not one of the answers: a stray Enter must not decide.
    this.dialog.focus();
  }

  close() {
    if (this.dialog.open) this.dialog.close();
  }
}
