// @ts-check
/**
 * The doctor's view of a consultation's recordings (`#/recordings/<consultation id>`, the section
 * `view-recordings` of `index.html`): each recording's state, start, length, size, retention date
 * and note, a download link for those the service can export, and shredding.
 *
 * Downloads are plain links to `GET /api/v1/recordings/{id}/export`: the browser saves the file
 * the service names, with the session cookie, and nothing passes through the page. A
 * zero-knowledge recording (of an end-to-end encrypted consultation) is SFrame ciphertext that
 * only the clinician's key file opens, so it is exported with the CLI instead.
 */

import * as api from "./api.js";
import { ApiError, asSentence } from "./api.js";
import {
  announce,
  byId,
  confirmInline,
  formatBytes,
  formatDateTime,
  formatDuration,
  h,
  replaceKeepingFocus,
  showError,
  showView,
} from "./ui.js";

/** @typedef {import('./protocol.js').Recording} Recording */
/** @typedef {import('./protocol.js').RecordingStatus} RecordingStatus */

/** What each state says in the list. */
const STATE_LABELS = /** @type {Record<RecordingStatus, string>} */ ({
  recording: "Recording now",
  complete: "Complete",
  withdrawn: "Consent withdrawn",
  failed: "Failed — cut short",
  interrupted: "Interrupted — cut short",
  shredded: "Shredded",
});

/** While one of the recordings is still being made, the list is fetched again this often. */
const REFRESH_WHILE_RECORDING_MS = 3000;

export class RecordingsView {
  /**
   * @param {{ onError: (err: unknown) => boolean }} options `onError`: the page's handling of an
   *   API error (a lost session); true when it took over.
   */
  constructor({ onError }) {
    this.onError = onError;
    this.view = byId("view-recordings", HTMLElement);
    this.heading = byId("recordings-heading", HTMLElement);
    this.summary = byId("recordings-summary", HTMLElement);
    this.error = byId("recordings-error", HTMLElement);
    this.list = byId("recordings-list", HTMLElement);
    this.tableWrap = byId("recordings-table-wrap", HTMLElement);
    this.rows = byId("recordings-rows", HTMLTableSectionElement);
    /** The consultation shown, or "" when the view is not. */
    this.consultationId = "";
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.timer = undefined;
  }

  /**
   * Show the recordings of a consultation.
   * @param {string} consultationId
   */
  async show(consultationId) {
    this.hide();
    this.consultationId = consultationId;
    this.list.dataset.testid = `recordings-${consultationId}`;
    this.list.dataset.state = "loading";
    this.heading.textContent = "Recordings";
    this.summary.textContent = "Loading…";
    showError(this.error, null);
    this.rows.replaceChildren();
    this.tableWrap.hidden = true;
    showView(this.view);
    try {
      const consultation = await api.getConsultation(consultationId);
      if (this.consultationId !== consultationId) return;
      this.heading.textContent = `Recordings of “${consultation.title || "Untitled consultation"}”`;
    } catch (err) {
      if (this.onError(err) || this.consultationId !== consultationId) return;
      // The list may still load (and says why it does not).
    }
    await this.load();
  }

  /** Stop refreshing (the page shows another view). */
  hide() {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.consultationId = "";
  }

  /** Fetch the list again and show it; again in a while if a recording is still being made. */
  async load() {
    const id = this.consultationId;
    clearTimeout(this.timer);
    try {
      const recordings = await api.listRecordings(id);
      if (this.consultationId !== id) return;
      this.render(recordings);
      if (recordings.some((r) => r.state === "recording")) {
        this.timer = setTimeout(() => this.load(), REFRESH_WHILE_RECORDING_MS);
      }
    } catch (err) {
      if (this.onError(err) || this.consultationId !== id) return;
      const denied = err instanceof ApiError && err.code === "access_denied";
      showError(this.error, denied ? "Only the consultation’s clinician can see its recordings." : `The recordings could not be loaded: ${err instanceof Error ? err.message : String(err)}`);
      this.summary.textContent = "";
      this.list.dataset.state = "error";
    }
  }

  /** @param {Recording[]} recordings */
  render(recordings) {
    /** @type {Map<string, Recording>} */
    const continuedBy = new Map();
    /** @type {Map<string, Recording>} */
    const byId = new Map();
    for (const r of recordings) {
      byId.set(r.id, r);
      if (r.continues) continuedBy.set(r.continues, r);
    }
    replaceKeepingFocus(this.rows, recordings.map((r) => this.renderRow(r, continuedBy, byId)));
    this.tableWrap.hidden = recordings.length === 0;
    const summary =
      recordings.length === 0
        ? "Nothing was recorded in this consultation."
        : "Recordings are encrypted at rest and shredded automatically on the date shown. Downloading one is logged.";
    // Unchanged on a refresh: leave the status region alone (screen readers would say it again).
    if (this.summary.textContent !== summary) this.summary.textContent = summary;
    this.list.dataset.state = "loaded";
  }

  /**
   * A recording interrupted and continued is one recording in segments: the first row has the
   * actions (download and shred take every segment), the later ones say what they continue.
   * @param {Recording} r
   * @param {Map<string, Recording>} continuedBy The segment that continues each recording.
   * @param {Map<string, Recording>} byId Every recording listed, by id.
   * @returns {HTMLTableRowElement}
   */
  renderRow(r, continuedBy, byId) {
    const started = formatDateTime(r.started_at);
    const stateCell = h("td", { className: "recording-state-cell" }, [h("span", { className: `status-pill recording-${r.state}`, text: STATE_LABELS[r.state] ?? r.state, testid: "recording-state" })]);
    if (r.note) stateCell.append(h("span", { className: "hint status-when", text: asSentence(r.note), testid: "recording-note" }));
    /** @type {Recording[]} */
    const later = [];
    for (let next = continuedBy.get(r.id); next && later.length < 64; next = continuedBy.get(next.id)) later.push(next);
    // The first segment has the actions; so does a later one whose predecessor is gone (shredded
    // while this one was being made, or not listed), so that what is left can always be shredded.
    const previous = r.continues ? byId.get(r.continues) : undefined;
    const first = !previous || previous.state === "shredded";
    if (!first) {
      stateCell.append(h("span", { className: "hint status-when", text: "Continues the interrupted recording above: downloaded and shredded with it.", testid: "recording-continues" }));
    } else if (later.length > 0) {
      stateCell.append(h("span", { className: "hint status-when", text: `Continued in ${later.length === 1 ? "the next segment" : `${later.length} more segments`}: one recording.`, testid: "recording-continued" }));
    }
    const length =
      r.state === "recording" ? "still recording" : r.ended_at ? formatDuration(Date.parse(r.ended_at) - Date.parse(r.started_at)) : "—";
    const actions = h("div", { className: "row-actions" });
    const readable = first && r.state !== "shredded" && r.state !== "recording" && later.every((s) => s.state !== "recording");
    const downloadable = readable && later.every((s) => s.state !== "shredded");
    if (r.zero_knowledge && r.state !== "shredded" && first) {
      actions.append(
        h("span", { className: "hint recording-e2ee-note", testid: "recording-e2ee-note" }, [
          "End-to-end encrypted: export with ",
          h("code", { text: "consult recording export … --key-file" }),
        ]),
      );
    } else if (downloadable) {
      const download = h("a", {
        className: "button small primary",
        text: "Download",
        testid: "recording-download",
        attrs: { href: api.recordingExportUrl(r.id), download: "", "aria-label": `Download the recording of ${started}` },
      });
      download.dataset.key = `download-${r.id}`;
      actions.append(download);
    }
    if (readable) {
      const shred = h("button", {
        className: "button small danger-outline",
        text: "Shred",
        testid: "recording-shred",
        attrs: { type: "button", "aria-label": `Shred the recording of ${started}` },
      });
      shred.dataset.key = `shred-${r.id}`;
      shred.addEventListener("click", () => this.shred(r, shred));
      actions.append(shred);
    }
    const row = h("tr", { testid: "recording-row" }, [
      stateCell,
      h("td", { text: started }),
      h("td", { className: "recording-figure", text: length }),
      h("td", { className: "recording-figure", text: formatBytes(r.bytes) }),
      h("td", { text: r.state === "shredded" ? "—" : formatDateTime(r.retain_until) }),
      h("td", { className: "actions-cell" }, [actions]),
    ]);
    row.dataset.id = r.id;
    row.dataset.state = r.state;
    return row;
  }

  /**
   * Shred a recording once the doctor confirms.
   * @param {Recording} r
   * @param {HTMLButtonElement} button
   */
  async shred(r, button) {
    const question = "Destroy it for good? This cannot be undone.";
    if (!(await confirmInline(button, question, "Shred", { testid: "recording-shred-confirm", danger: true }))) return;
    showError(this.error, null);
    try {
      await api.shredRecording(r.id);
      announce("Recording shredded.");
    } catch (err) {
      if (this.onError(err)) return;
      showError(this.error, `The recording was not shredded: ${err instanceof Error ? err.message : String(err)}`);
    }
    await this.load();
  }
}
