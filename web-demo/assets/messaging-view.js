// @ts-check
/**
 * The chat and file panels of the call screen (both pages carry the same markup: ids
 * `chat-list`, `chat-empty`, `chat-form`, `chat-input`, `chat-send`, `chat-send-error`,
 * `file-button`, `file-input`, `file-error`, `transfer-list`).
 *
 * Nothing received is ever opened automatically: an incoming file is offered with Accept and
 * Decline, and only after every byte arrived and its SHA-256 matched does a download link appear.
 */

import { Messaging } from "./messaging.js";
import { FileTransferError } from "./file-transfer.js";
import { announce, byId, formatBytes, h } from "./ui.js";

/** @typedef {import('./file-transfer.js').Transfer} Transfer */
/** @typedef {import('./file-transfer.js').FailReason} FailReason */

/**
 * A sentence for a failed transfer.
 * @param {FailReason | ""} reason
 * @param {"in" | "out"} direction
 * @param {string} who The other participant.
 */
function failureText(reason, direction, who) {
  switch (reason) {
    case "declined":
      return `${who} declined the file.`;
    case "too_large":
      return direction === "in" ? "Refused: the file is larger than 100 MB." : `${who} cannot take a file this large.`;
    case "busy":
      return `${who} has too many files waiting; try again later.`;
    case "cancelled":
      return "Cancelled.";
    case "cancelled_by_peer":
      return `${who} cancelled the transfer.`;
    case "hash_mismatch":
      return direction === "in"
        ? "The file did not arrive intact (its SHA-256 does not match) and was discarded."
        : "The file did not arrive intact at the other side (SHA-256 mismatch).";
    case "incomplete":
      return direction === "in" ? "The file arrived incomplete and was discarded." : "The file arrived incomplete at the other side.";
    case "out_of_order":
    case "beyond_size":
      return direction === "in"
        ? "The file arrived damaged (unexpected data) and was discarded."
        : "The transfer failed: the other side received unexpected data.";
    case "invalid_offer":
      return "The other side could not accept this file.";
    case "connection_lost":
      return "The connection dropped; the transfer stopped. Partial data was discarded.";
    case "not_connected":
      return "Not connected: the transfer could not start.";
    default:
      return "The transfer failed.";
  }
}

/** One row of the transfer list. */
class TransferRow {
  /**
   * @param {Transfer} t
   * @param {string} who The other participant, when the transfer began.
   * @param {{ accept: (id: string) => void, decline: (id: string) => void, cancel: (id: string) => void }} actions
   */
  constructor(t, who, actions) {
    this.who = who;
    /** @type {string | null} */
    this.url = null;
    this.progress = h("progress", {
      className: "transfer-progress",
      testid: "file-progress",
      attrs: { max: String(Math.max(1, t.size)), value: "0", "aria-label": `Progress of ${t.name}` },
    });
    this.status = h("p", { className: "transfer-status", testid: "file-status" });
    this.failed = h("p", { className: "transfer-failed", testid: "file-failed", attrs: { role: "alert" } });
    this.failed.hidden = true;
    this.acceptButton = h("button", {
      className: "button small primary",
      text: "Accept",
      testid: "file-accept",
      attrs: { type: "button", "aria-label": `Accept ${t.name}` },
    });
    this.declineButton = h("button", {
      className: "button small",
      text: "Decline",
      testid: "file-decline",
      attrs: { type: "button", "aria-label": `Decline ${t.name}` },
    });
    this.cancelButton = h("button", {
      className: "button small",
      text: "Cancel",
      testid: "file-cancel",
      attrs: { type: "button", "aria-label": `Cancel the transfer of ${t.name}` },
    });
    this.acceptButton.addEventListener("click", () => {
      actions.accept(t.id);
      this.cancelButton.focus();
    });
    this.declineButton.addEventListener("click", () => actions.decline(t.id));
    this.cancelButton.addEventListener("click", () => actions.cancel(t.id));
    this.actions = h("div", { className: "transfer-actions" }, [this.acceptButton, this.declineButton, this.cancelButton]);
    const meta = `${formatBytes(t.size)} · ${t.mime || "unknown type"}`;
    this.element = h("li", { className: `transfer transfer-${t.direction}`, testid: t.direction === "in" ? "file-offer" : "file-outgoing" }, [
      h("div", { className: "transfer-head" }, [
        h("span", { className: "transfer-direction", text: t.direction === "in" ? `From ${who}` : `To ${who}` }),
        h("span", { className: "transfer-name", text: t.name, testid: "file-name" }),
        h("span", { className: "transfer-meta", text: meta }),
      ]),
      this.progress,
      this.status,
      this.failed,
      this.actions,
    ]);
    this.element.dataset.id = t.id;
    this.element.dataset.direction = t.direction;
    this.element.dataset.name = t.name;
  }

  /** @param {Transfer} t */
  update(t) {
    this.element.dataset.state = t.state;
    const total = Math.max(1, t.size);
    this.progress.max = total;
    this.progress.value = t.state === "done" ? total : Math.min(t.bytes, total);
    const pct = Math.floor((100 * Math.min(t.bytes, t.size)) / total);
    const who = this.who;
    let status = "";
    switch (t.state) {
      case "offered":
        status = `${who} wants to send you this file. It is only saved if you accept it and then save it.`;
        break;
      case "waiting":
        status = `Waiting for ${who} to accept…`;
        break;
      case "sending":
        status = `Sending… ${pct}%`;
        break;
      case "receiving":
        status = `Receiving… ${pct}%`;
        break;
      case "verifying":
        status = "Checking the file…";
        break;
      case "done":
        status = t.direction === "in" ? "Received; SHA-256 verified." : `Sent; ${who} verified it.`;
        break;
      case "failed":
        status = "";
        break;
    }
    this.status.textContent = status;
    this.status.hidden = !status;
    this.progress.hidden = t.state === "failed" || t.state === "offered";
    this.acceptButton.hidden = t.state !== "offered";
    this.declineButton.hidden = t.state !== "offered";
    this.cancelButton.hidden = !["waiting", "sending", "receiving", "verifying"].includes(t.state);
    if (t.state === "failed") {
      this.failed.textContent = failureText(t.reason, t.direction, who);
      this.failed.hidden = false;
      this.element.dataset.reason = t.reason;
      if (this.actions.contains(document.activeElement)) this.element.focus();
    }
    if (t.state === "done" && t.direction === "in" && t.blob && !this.url) {
      this.url = URL.createObjectURL(t.blob);
      const link = h("a", {
        className: "button small primary",
        text: `Save ${t.name}`,
        testid: "file-download",
        attrs: { href: this.url, download: t.name, rel: "noopener" },
      });
      link.dataset.sha256 = t.sha256;
      link.dataset.name = t.name;
      const hadFocus = this.actions.contains(document.activeElement);
      this.actions.append(link);
      if (hadFocus) link.focus();
    }
  }

  /** Release the file's Blob URL. */
  dispose() {
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = null;
  }
}

export class MessagingView {
  /**
   * @param {{ peerName: (peerId: string) => string }} options `peerName`: what to call another
   *   participant, for labels.
   */
  constructor({ peerName }) {
    this.peerName = peerName;
    this.chatList = byId("chat-list", HTMLElement);
    this.chatEmpty = byId("chat-empty", HTMLElement);
    this.chatForm = byId("chat-form", HTMLFormElement);
    this.chatInput = byId("chat-input", HTMLInputElement);
    this.chatSend = byId("chat-send", HTMLButtonElement);
    this.chatError = byId("chat-send-error", HTMLElement);
    this.fileButton = byId("file-button", HTMLButtonElement);
    this.fileInput = byId("file-input", HTMLInputElement);
    this.fileError = byId("file-error", HTMLElement);
    this.transferList = byId("transfer-list", HTMLElement);
    /** @type {Map<string, TransferRow>} The latest row of each transfer, by participant and id. */
    this.rows = new Map();
    /** @type {Set<TransferRow>} Every row shown (their Blob URLs are released on reset). */
    this.allRows = new Set();

    this.messaging = new Messaging({
      onChat: (text, peerId) => this.addMessage(text, "in", peerId),
      onChatRefused: (why, peerId) => this.addRefused(why, peerId),
      onTransfer: (t, peerId) => this.showTransfer(t, peerId),
      onChannels: () => this.renderAvailability(),
    });

    this.chatForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.sendChat();
    });
    this.chatInput.addEventListener("input", () => {
      if (!this.chatError.hidden) this.showChatError(null);
    });
    this.fileButton.addEventListener("click", () => this.fileInput.click());
    this.fileInput.addEventListener("change", () => {
      const files = this.fileInput.files ? [...this.fileInput.files] : [];
      this.fileInput.value = "";
      for (const file of files) void this.sendFile(file);
    });
    this.renderAvailability();
  }

  /**
   * A data channel of the connection with a participant.
   * @param {import('./messaging.js').ChannelLike} channel
   * @param {string} peerId
   */
  addChannel(channel, peerId) {
    this.messaging.addChannel(channel, peerId);
  }

  /**
   * The connection with a participant closed or was replaced.
   * @param {string} peerId
   */
  connectionClosed(peerId) {
    this.messaging.connectionClosed(peerId);
  }

  /** The call is over: empty both panels and release received files. */
  reset() {
    this.messaging.clear();
    for (const row of this.allRows) row.dispose();
    this.allRows.clear();
    this.rows.clear();
    this.transferList.replaceChildren();
    this.chatList.replaceChildren();
    this.chatEmpty.hidden = false;
    this.chatInput.value = "";
    this.showChatError(null);
    this.showFileError(null);
    this.renderAvailability();
  }

  /** @private */
  renderAvailability() {
    const chat = this.messaging.chatOpen;
    const file = this.messaging.fileOpen;
    this.chatSend.disabled = !chat;
    this.chatSend.title = chat ? "" : "Available once the call is connected";
    this.fileButton.disabled = !file;
    this.fileButton.title = file ? "" : "Available once the call is connected";
    this.fileInput.disabled = !file;
  }

  /**
   * @private
   * @param {string | null} message
   */
  showChatError(message) {
    this.chatError.textContent = message ?? "";
    this.chatError.hidden = !message;
  }

  /**
   * @private
   * @param {string | null} message
   */
  showFileError(message) {
    this.fileError.textContent = message ?? "";
    this.fileError.hidden = !message;
  }

  /** @private */
  sendChat() {
    const text = this.chatInput.value;
    if (!text.trim()) {
      this.chatInput.focus();
      return;
    }
    const problem = this.messaging.sendChat(text);
    if (problem) {
      this.showChatError(problem);
      this.chatInput.focus();
      return;
    }
    this.showChatError(null);
    this.chatInput.value = "";
    this.addMessage(text, "out", null);
    this.chatInput.focus();
  }

  /**
   * @private
   * @param {HTMLElement} item
   */
  appendToChat(item) {
    this.chatEmpty.hidden = true;
    this.chatList.append(item);
    this.chatList.scrollTop = this.chatList.scrollHeight;
  }

  /**
   * @private
   * @param {string} text
   * @param {"in" | "out"} direction
   * @param {string | null} peerId Who sent it (null: this participant).
   */
  addMessage(text, direction, peerId) {
    const now = new Date();
    const time = h("time", {
      className: "chat-time",
      text: now.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" }),
      attrs: { datetime: now.toISOString() },
    });
    const who = direction === "out" || peerId === null ? "You" : this.peerName(peerId);
    const item = h("li", { className: `chat-message chat-${direction}`, testid: "chat-message" }, [
      h("span", { className: "chat-meta" }, [h("span", { className: "chat-who", text: who }), " ", time]),
      h("span", { className: "chat-text", text, testid: "chat-text" }),
    ]);
    item.dataset.direction = direction;
    if (peerId) item.dataset.from = peerId;
    this.appendToChat(item);
  }

  /**
   * @private
   * @param {string} why
   * @param {string} peerId
   */
  addRefused(why, peerId) {
    this.appendToChat(
      h("li", {
        className: "chat-refused",
        testid: "chat-refused",
        text: `A message from ${this.peerName(peerId)} could not be shown: ${why}.`,
      }),
    );
  }

  /**
   * @private
   * @param {File} file
   */
  async sendFile(file) {
    this.showFileError(null);
    try {
      await this.messaging.offerFile(file);
    } catch (err) {
      this.showFileError(err instanceof FileTransferError ? err.message : `“${file.name}” could not be sent.`);
      if (!(err instanceof FileTransferError)) console.error("Could not offer a file", err);
    }
  }

  /**
   * @private
   * @param {Transfer} t
   * @param {string} peerId Whom the transfer is with.
   */
  showTransfer(t, peerId) {
    const key = `${peerId} ${t.id}`;
    let row = this.rows.get(key);
    const finished = row && (row.element.dataset.state === "done" || row.element.dataset.state === "failed");
    if (!row || (finished && t.state !== row.element.dataset.state)) {
      // New, or the same id offered again after the earlier transfer ended: a row of its own.
      const who = this.peerName(peerId);
      const files = this.messaging.files(peerId);
      row = new TransferRow(t, who, {
        accept: (id) => files.accept(id),
        decline: (id) => files.decline(id),
        cancel: (id) => files.cancel(id),
      });
      row.element.tabIndex = -1;
      row.element.dataset.peer = peerId;
      this.rows.set(key, row);
      this.allRows.add(row);
      this.transferList.append(row.element);
      if (t.direction === "in" && t.state === "offered") {
        announce(`${who} wants to send you a file: ${t.name}, ${formatBytes(t.size)}. Accept or decline it under Files.`);
      }
    }
    const before = row.element.dataset.state;
    row.update(t);
    if (before !== t.state) {
      if (t.state === "done") announce(t.direction === "in" ? `${t.name} received and verified.` : `${t.name} sent.`);
      else if (t.state === "failed") announce(`${t.name}: ${row.failed.textContent}`);
    }
  }
}
