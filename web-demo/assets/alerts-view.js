// @ts-check
/**
 * The administrator's security alerts (`#/alerts`, the section `view-alerts` of `index.html`):
 * open alerts first — severity, what the rule saw, about whom, when, how many times — each
 * acknowledged in place; acknowledged ones on request. Refreshed while the page is shown.
 */

import * as api from "./api.js";
import { ApiError } from "./api.js";
import { announce, byId, formatDateTime, h, replaceKeepingFocus, showError, showView } from "./ui.js";

/** @typedef {import('./protocol.js').Alert} Alert */

/** How often the list is fetched again while it is shown. */
const REFRESH_MS = 10_000;

/** What each rule is called on the page. */
const RULE_NAMES = new Map([
  ["credential_stuffing", "Credential stuffing"],
  ["password_spraying", "Password spraying"],
  ["second_factor_guessing", "Second factor guessed"],
  ["invite_guessing", "Invite links guessed"],
  ["cross_consultation", "Messages to other consultations"],
  ["refused_exports", "Recording exports refused"],
  ["export_burst", "Many recording exports"],
]);

export class AlertsView {
  /**
   * @param {{ onError: (err: unknown) => boolean }} options `onError`: the page's handling of an
   *   API error (a lost session), true when it took over.
   */
  constructor({ onError }) {
    this.onError = onError;
    this.view = byId("view-alerts", HTMLElement);
    this.rows = byId("alert-rows", HTMLTableSectionElement);
    this.summary = byId("alerts-summary", HTMLElement);
    this.error = byId("alerts-error", HTMLElement);
    this.showAll = byId("alerts-show-all", HTMLInputElement);
    /** @type {ReturnType<typeof setInterval> | undefined} */
    this.timer = undefined;
    this.showAll.addEventListener("change", () => this.load());
  }

  show() {
    showView(this.view);
    this.load();
    clearInterval(this.timer);
    this.timer = setInterval(() => this.load(), REFRESH_MS);
  }

  hide() {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** @private */
  async load() {
    try {
      const alerts = await api.listAlerts(this.showAll.checked ? "all" : "open");
      showError(this.error, null);
      this.render(alerts);
    } catch (err) {
      if (this.onError(err)) return;
      const forbidden = err instanceof ApiError && err.status === 403;
      showError(this.error, forbidden ? "Only administrators can see security alerts." : `The alerts could not be loaded: ${messageOf(err)}`);
    }
  }

  /**
   * @private
   * @param {Alert[]} alerts
   */
  render(alerts) {
    const open = alerts.filter((a) => !a.acknowledged_at).length;
    this.summary.textContent =
      open === 0 ? "No open alerts." : open === 1 ? "1 open alert." : `${open} open alerts.`;
    replaceKeepingFocus(
      this.rows,
      alerts.map((alert) => this.row(alert)),
    );
  }

  /**
   * @private
   * @param {Alert} alert
   */
  row(alert) {
    const actions = h("td");
    if (alert.acknowledged_at) {
      actions.append(h("span", { className: "hint", text: `Acknowledged ${formatDateTime(alert.acknowledged_at)}` }));
    } else {
      const button = h("button", {
        className: "button small",
        text: "Acknowledge",
        testid: "alert-acknowledge",
        attrs: { type: "button", "data-key": `ack-${alert.id}`, "aria-label": `Acknowledge: ${alert.summary}` },
      });
      button.addEventListener("click", () => this.acknowledge(alert, /** @type {HTMLButtonElement} */ (button)));
      actions.append(button);
    }
    const row = h("tr", { testid: "alert-row", attrs: { "data-id": alert.id, "data-rule": alert.rule, "data-state": alert.acknowledged_at ? "acknowledged" : "open" } }, [
      h("td", {}, [h("span", { className: `badge severity-${alert.severity}`, text: alert.severity })]),
      h("td", {}, [h("strong", { text: RULE_NAMES.get(alert.rule) ?? alert.rule }), h("br"), h("span", { className: "hint", text: alert.summary, testid: "alert-summary" })]),
      h("td", { text: alert.subject, testid: "alert-subject" }),
      h("td", { text: formatDateTime(alert.raised_at) }),
      h("td", { text: formatDateTime(alert.last_seen_at) }),
      h("td", { text: String(alert.firings), testid: "alert-firings" }),
      actions,
    ]);
    return row;
  }

  /**
   * @private
   * @param {Alert} alert
   * @param {HTMLButtonElement} button
   */
  async acknowledge(alert, button) {
    button.disabled = true;
    try {
      await api.acknowledgeAlert(alert.id);
      announce(`Alert acknowledged: ${RULE_NAMES.get(alert.rule) ?? alert.rule}`);
    } catch (err) {
      if (this.onError(err)) return;
      // Acknowledged meanwhile (another administrator): the list says so once reloaded.
      if (!(err instanceof ApiError && err.status === 409)) {
        showError(this.error, `The alert could not be acknowledged: ${messageOf(err)}`);
      }
    }
    await this.load();
  }
}

/** @param {unknown} err */
function messageOf(err) {
  return err instanceof Error ? err.message : String(err);
}
