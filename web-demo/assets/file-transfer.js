// @ts-check
/**
 * File transfer over the `consult-file` data channel: the same protocol as the native media core
 * (`crates/peer/src/file_transfer.rs`, the reference; keep the two in step).
 *
 * Wire format (reliable, ordered channel):
 *
 * - control messages are JSON text frames tagged by `type`: `offer` (id, name, size, mime,
 *   sha256), `accept` (id, offset), `reject` (id, reason), `ack` (id, offset), `done` (id),
 *   `complete` (id), `cancel` (id), `error` (id, reason);
 * - chunks are binary frames: 16 bytes of transfer id (the UUID's 32 hex digits as bytes), 8 bytes
 *   of offset (big-endian), then at most {@link CHUNK_BYTES} of data.
 *
 * The sender offers, waits for `accept`, sends the chunks from the accepted offset in order
 * without ever letting the channel's `bufferedAmount` grow past {@link MAX_BUFFERED_BYTES}, then
 * `done`, and waits for `complete` (or `error`). The receiver checks every chunk's offset and the
 * offered size, acknowledges every {@link ACK_EVERY_BYTES} and at the end, and on `done` checks the
 * size and the SHA-256 before it hands out the file. Nothing partial is ever handed out.
 *
 * This module has no DOM: {@link FileTransfers} reports every change of a transfer through
 * `onUpdate`, and the page shows it.
 */

/** @typedef {import('./messaging.js').ChannelLike} ChannelLike */

export const FILE_CHANNEL_LABEL = "consult-file";
/** Largest chunk payload. */
export const CHUNK_BYTES = 16 * 1024;
/** Bytes before the payload in a chunk frame: id and offset. */
export const CHUNK_HEADER_BYTES = 16 + 8;
/** The receiver acknowledges at least this often, and at the end. */
export const ACK_EVERY_BYTES = 256 * 1024;
/** Largest file sent or accepted. */
export const MAX_FILE_BYTES = 100 * 1024 * 1024;
/** Longest file name, in bytes of UTF-8. */
export const MAX_NAME_BYTES = 255;
/** The channel's `bufferedAmount` never goes past this. */
export const MAX_BUFFERED_BYTES = 64 * 1024;
/** `bufferedAmountLowThreshold` of the file channel: sending resumes when the queue drains to it. */
export const BUFFERED_LOW_BYTES = 32 * 1024;
/** Room kept free under {@link MAX_BUFFERED_BYTES} for control messages, which go at once. */
const CONTROL_RESERVE_BYTES = 2 * 1024;
/** More offers than this waiting for an answer are refused (`busy`). */
const MAX_PENDING_OFFERS = 20;

/**
 * Reasons of a failed transfer: the wire names of the native core, plus local ones
 * (`connection_lost`, `not_connected`).
 * @typedef {"declined" | "too_large" | "out_of_order" | "beyond_size" | "incomplete" | "hash_mismatch"
 *   | "cancelled_by_peer" | "cancelled" | "remote_error" | "invalid_offer" | "busy"
 *   | "connection_lost" | "not_connected"} FailReason
 */

/**
 * `offered`: incoming, waiting for Accept or Decline; `waiting`: outgoing, waiting for the other
 * side; `sending` / `receiving`: chunks flow; `verifying`: incoming, all bytes here, hash being
 * checked; `done`: verified (the only state with a file); `failed`: see `reason`.
 * @typedef {"offered" | "waiting" | "sending" | "receiving" | "verifying" | "done" | "failed"} TransferState
 */

/**
 * One transfer, as the page sees it.
 * @typedef {object} Transfer
 * @property {string} id Hyphenated lowercase UUID.
 * @property {"in" | "out"} direction
 * @property {string} name
 * @property {number} size
 * @property {string} mime
 * @property {string} sha256 Lowercase hex, as offered (incoming: verified once `done`).
 * @property {TransferState} state
 * @property {number} bytes Progress: bytes received in order, or bytes put on the channel.
 * @property {FailReason | ""} reason Why it failed (`failed` only).
 * @property {Blob | null} blob The verified file (incoming `done` only).
 */

/**
 * A control message.
 * @typedef {{ type: "offer", id: string, name: string, size: number, mime: string, sha256: string }
 *   | { type: "accept", id: string, offset: number }
 *   | { type: "reject", id: string, reason: string }
 *   | { type: "ack", id: string, offset: number }
 *   | { type: "done", id: string }
 *   | { type: "complete", id: string }
 *   | { type: "cancel", id: string }
 *   | { type: "error", id: string, reason: string }} Control
 */

/** Why a local request was refused, with a sentence for people. */
export class FileTransferError extends Error {
  /**
   * @param {"too_large" | "invalid_name" | "not_connected" | "unsupported" | "unreadable"} code
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.name = "FileTransferError";
    this.code = code;
  }
}

const encoder = new TextEncoder();

/**
 * Whether a file name may be sent or accepted: not empty, at most 255 bytes of UTF-8, not `.` or
 * `..`, no `/`, `\` or control character (Unicode Cc, as Rust's `char::is_control`).
 * @param {unknown} name
 * @returns {name is string}
 */
export function validFileName(name) {
  return (
    typeof name === "string" &&
    name.length > 0 &&
    encoder.encode(name).length <= MAX_NAME_BYTES &&
    name !== "." &&
    name !== ".." &&
    !/[/\\\u0000-\u001f\u007f-\u009f]/.test(name)
  );
}

/**
 * The 32 lowercase hex digits of a UUID in any of the usual spellings, or null.
 * @param {unknown} id
 * @returns {string | null}
 */
export function uuidHex(id) {
  if (typeof id !== "string") return null;
  const hex = id.trim().toLowerCase().replace(/^urn:uuid:/, "").replace(/^\{|\}$/g, "").replace(/-/g, "");
  return /^[0-9a-f]{32}$/.test(hex) ? hex : null;
}

/**
 * The hyphenated form of 32 hex digits (what the native core writes).
 * @param {string} hex
 */
export function hyphenated(hex) {
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * Encode a chunk frame.
 * @param {string} idHex 32 hex digits.
 * @param {number} offset
 * @param {Uint8Array} data At most {@link CHUNK_BYTES}.
 * @returns {Uint8Array<ArrayBuffer>}
 */
export function encodeChunk(idHex, offset, data) {
  const frame = new Uint8Array(CHUNK_HEADER_BYTES + data.length);
  for (let i = 0; i < 16; i++) frame[i] = parseInt(idHex.slice(2 * i, 2 * i + 2), 16);
  new DataView(frame.buffer).setBigUint64(16, BigInt(offset), false);
  frame.set(data, CHUNK_HEADER_BYTES);
  return frame;
}

/**
 * Decode a binary frame.
 * @param {ArrayBuffer} buffer
 * @returns {{ id: string, offset: number, data: Uint8Array } | { error: string }}
 */
export function decodeChunk(buffer) {
  if (buffer.byteLength < CHUNK_HEADER_BYTES) {
    return { error: `chunk of ${buffer.byteLength} bytes is shorter than its header` };
  }
  if (buffer.byteLength > CHUNK_HEADER_BYTES + CHUNK_BYTES) {
    return { error: `chunk of ${buffer.byteLength} bytes is over the limit` };
  }
  const bytes = new Uint8Array(buffer);
  let id = "";
  for (let i = 0; i < 16; i++) id += bytes[i].toString(16).padStart(2, "0");
  const offset = new DataView(buffer).getBigUint64(16, false);
  if (offset > BigInt(Number.MAX_SAFE_INTEGER)) return { error: "chunk offset out of range" };
  return { id, offset: Number(offset), data: bytes.subarray(CHUNK_HEADER_BYTES) };
}

/**
 * @param {unknown} value
 * @returns {value is number}
 */
function isOffset(value) {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

/**
 * Parse a text frame into a control message (fields checked, id normalised to 32 hex digits).
 * @param {string} text
 * @returns {Control | { error: string }}
 */
export function parseControl(text) {
  /** @type {any} */
  let value;
  try {
    value = JSON.parse(text);
  } catch {
    return { error: "bad control message: not JSON" };
  }
  if (!value || typeof value !== "object" || typeof value.type !== "string") {
    return { error: "bad control message: no type" };
  }
  const id = uuidHex(value.id);
  if (!id) return { error: `bad control message: ${value.type} without a valid id` };
  switch (value.type) {
    case "offer":
      if (typeof value.name !== "string" || !isOffset(value.size) || typeof value.mime !== "string" || typeof value.sha256 !== "string") {
        return { error: "bad control message: offer fields" };
      }
      return { type: "offer", id, name: value.name, size: value.size, mime: value.mime, sha256: value.sha256 };
    case "accept":
    case "ack":
      if (!isOffset(value.offset)) return { error: `bad control message: ${value.type} offset` };
      return { type: value.type, id, offset: value.offset };
    case "reject":
    case "error":
      if (typeof value.reason !== "string") return { error: `bad control message: ${value.type} reason` };
      return { type: value.type, id, reason: value.reason };
    case "done":
    case "complete":
    case "cancel":
      return { type: value.type, id };
    default:
      return { error: `bad control message: unknown type ${JSON.stringify(String(value.type).slice(0, 40))}` };
  }
}

/**
 * Lowercase hex SHA-256.
 * @param {ArrayBuffer} data
 * @returns {Promise<string>}
 */
export async function sha256Hex(data) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Wire reasons the native core knows in an `error` message; anything else is `remote_error`. */
const KNOWN_ERROR_REASONS = new Set(["too_large", "hash_mismatch", "out_of_order", "beyond_size", "incomplete", "invalid_offer"]);

/**
 * @typedef {object} Outgoing
 * @property {Transfer} transfer
 * @property {Uint8Array | null} data
 * @property {number | null} next Next byte to send; null until accepted.
 * @property {number} acked
 * @property {boolean} doneSent
 */

/**
 * @typedef {object} Incoming
 * @property {Transfer} transfer
 * @property {Uint8Array[]} chunks
 * @property {number} received
 * @property {number} lastAck
 */

/**
 * Every transfer of a call, both directions, over whichever file channel is current.
 */
export class FileTransfers {
  /**
   * @param {object} options
   * @param {() => ChannelLike | null} options.getChannel The open file channel to send on.
   * @param {(transfer: Transfer) => void} options.onUpdate A transfer appeared or changed.
   * @param {(message: string) => void} [options.onProtocolError] A frame that made no sense.
   */
  constructor({ getChannel, onUpdate, onProtocolError }) {
    this.getChannel = getChannel;
    this.onUpdate = onUpdate;
    this.onProtocolError = onProtocolError ?? ((message) => console.warn(`File transfer: ${message}`));
    /** @type {Map<string, Outgoing>} keyed by 32 hex digits */
    this.outgoing = new Map();
    /** @type {Map<string, Incoming>} */
    this.incoming = new Map();
    /** @type {ReturnType<typeof setInterval> | undefined} Backstop while chunks wait for room. */
    this.retryTimer = undefined;
  }

  /**
   * @private
   * @param {Transfer} transfer
   */
  emit(transfer) {
    try {
      this.onUpdate({ ...transfer });
    } catch (err) {
      console.error("File transfer view error", err);
    }
  }

  /**
   * Put a control message on the channel. False if there is no open channel.
   * @private
   * @param {Record<string, string | number>} message
   */
  sendControl(message) {
    const channel = this.getChannel();
    if (!channel || channel.readyState !== "open") return false;
    const wire = { ...message };
    if (typeof wire.id === "string") wire.id = hyphenated(/** @type {string} */ (uuidHex(wire.id)));
    try {
      channel.send(JSON.stringify(wire));
      return true;
    } catch (err) {
      console.warn("Could not send a file-transfer message", err);
      return false;
    }
  }

  /**
   * @private
   * @param {Outgoing | Incoming} entry
   * @param {FailReason} reason
   */
  fail(entry, reason) {
    const key = /** @type {string} */ (uuidHex(entry.transfer.id));
    this.outgoing.delete(key);
    this.incoming.delete(key);
    if ("chunks" in entry) entry.chunks = [];
    else entry.data = null;
    entry.transfer.state = "failed";
    entry.transfer.reason = reason;
    entry.transfer.blob = null;
    this.emit(entry.transfer);
  }

  // -------------------------------------------------------------------------------------------
  // Sending
  // -------------------------------------------------------------------------------------------

  /**
   * Offer a file to the other side. Resolves with the transfer once the offer is on the channel.
   * @param {File} file
   * @returns {Promise<Transfer>}
   */
  async offer(file) {
    if (!validFileName(file.name)) {
      throw new FileTransferError(
        "invalid_name",
        "This file name cannot be sent: rename the file (at most 255 bytes, without / or \\ or control characters).",
      );
    }
    if (file.size > MAX_FILE_BYTES) {
      throw new FileTransferError("too_large", `“${file.name}” is too large: files of up to 100 MB can be sent.`);
    }
    if (!globalThis.crypto || !crypto.subtle || typeof crypto.randomUUID !== "function") {
      throw new FileTransferError("unsupported", "This browser cannot send files here (it needs a secure connection).");
    }
    if (!this.getChannel()) throw new FileTransferError("not_connected", "Files can be sent once the call is connected.");
    /** @type {ArrayBuffer} */
    let buffer;
    try {
      buffer = await file.arrayBuffer();
    } catch {
      throw new FileTransferError("unreadable", `“${file.name}” could not be read.`);
    }
    const sha256 = await sha256Hex(buffer);
    const id = crypto.randomUUID();
    /** @type {Transfer} */
    const transfer = {
      id,
      direction: "out",
      name: file.name,
      size: buffer.byteLength,
      mime: file.type || "application/octet-stream",
      sha256,
      state: "waiting",
      bytes: 0,
      reason: "",
      blob: null,
    };
    const sent = this.sendControl({
      type: "offer",
      id,
      name: transfer.name,
      size: transfer.size,
      mime: transfer.mime,
      sha256,
    });
    if (!sent) throw new FileTransferError("not_connected", "The connection dropped; send the file again once the call is back.");
    this.outgoing.set(/** @type {string} */ (uuidHex(id)), { transfer, data: new Uint8Array(buffer), next: null, acked: 0, doneSent: false });
    this.emit(transfer);
    return { ...transfer };
  }

  /**
   * Send chunks while the channel has room (call again on `bufferedamountlow`).
   */
  pump() {
    const channel = this.getChannel();
    let busy = false;
    if (channel && channel.readyState === "open") {
      busy = this.pumpOn(channel);
    } else {
      busy = [...this.outgoing.values()].some((o) => o.next !== null);
    }
    if (busy && this.retryTimer === undefined) {
      this.retryTimer = setInterval(() => this.pump(), 250);
    } else if (!busy && this.retryTimer !== undefined) {
      clearInterval(this.retryTimer);
      this.retryTimer = undefined;
    }
  }

  /**
   * Round-robin between accepted outgoing transfers, one chunk at a time. True while chunks are
   * left waiting for room.
   * @private
   * @param {ChannelLike} channel
   */
  pumpOn(channel) {
    const limit = MAX_BUFFERED_BYTES - CONTROL_RESERVE_BYTES;
    for (;;) {
      let progressed = false;
      for (const [key, o] of this.outgoing) {
        if (o.next === null || !o.data) continue;
        if (o.next < o.transfer.size) {
          const end = Math.min(o.next + CHUNK_BYTES, o.transfer.size);
          if (channel.bufferedAmount + CHUNK_HEADER_BYTES + (end - o.next) > limit) return true;
          try {
            channel.send(encodeChunk(key, o.next, o.data.subarray(o.next, end)));
          } catch (err) {
            console.warn("Could not send a chunk", err);
            return true;
          }
          o.next = end;
          o.transfer.bytes = end;
          if (o.transfer.state !== "sending") o.transfer.state = "sending";
          this.emit(o.transfer);
          progressed = true;
        } else if (!o.doneSent) {
          if (!this.sendControl({ type: "done", id: key })) return true;
          o.doneSent = true;
          progressed = true;
        }
      }
      if (!progressed) return false;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Receiving
  // -------------------------------------------------------------------------------------------

  /**
   * Accept an offered file.
   * @param {string} id
   */
  accept(id) {
    const entry = this.incoming.get(uuidHex(id) ?? "");
    if (!entry || entry.transfer.state !== "offered") return;
    if (!this.sendControl({ type: "accept", id, offset: 0 })) {
      this.fail(entry, "not_connected");
      return;
    }
    entry.transfer.state = "receiving";
    this.emit(entry.transfer);
  }

  /**
   * Decline an offered file.
   * @param {string} id
   */
  decline(id) {
    const entry = this.incoming.get(uuidHex(id) ?? "");
    if (!entry || entry.transfer.state !== "offered") return;
    this.sendControl({ type: "reject", id, reason: "declined" });
    this.fail(entry, "declined");
  }

  /**
   * Cancel a transfer in either direction.
   * @param {string} id
   */
  cancel(id) {
    const key = uuidHex(id) ?? "";
    const entry = this.outgoing.get(key) ?? this.incoming.get(key);
    if (!entry) return;
    this.sendControl({ type: "cancel", id });
    this.fail(entry, "cancelled");
  }

  /**
   * A message from any file channel of the call.
   * @param {unknown} data A string (control) or an ArrayBuffer (chunk).
   */
  handleMessage(data) {
    if (typeof data === "string") {
      const control = parseControl(data);
      if ("error" in control) this.onProtocolError(control.error);
      else this.handleControl(control);
      return;
    }
    if (data instanceof ArrayBuffer) {
      const chunk = decodeChunk(data);
      if ("error" in chunk) this.onProtocolError(chunk.error);
      else this.handleChunk(chunk.id, chunk.offset, chunk.data);
      return;
    }
    this.onProtocolError("a frame of an unexpected kind");
  }

  /**
   * @private
   * @param {string} key
   * @param {number} offset
   * @param {Uint8Array} data
   */
  handleChunk(key, offset, data) {
    const entry = this.incoming.get(key);
    if (!entry || entry.transfer.state !== "receiving") {
      this.onProtocolError(`chunk for unknown or unaccepted transfer ${hyphenated(key)}`);
      return;
    }
    if (offset !== entry.received) {
      this.sendControl({ type: "error", id: key, reason: "out_of_order" });
      this.fail(entry, "out_of_order");
      return;
    }
    if (entry.received + data.length > entry.transfer.size) {
      this.sendControl({ type: "error", id: key, reason: "beyond_size" });
      this.fail(entry, "beyond_size");
      return;
    }
    entry.chunks.push(data.slice());
    entry.received += data.length;
    entry.transfer.bytes = entry.received;
    if (entry.received - entry.lastAck >= ACK_EVERY_BYTES || entry.received === entry.transfer.size) {
      entry.lastAck = entry.received;
      this.sendControl({ type: "ack", id: key, offset: entry.received });
    }
    this.emit(entry.transfer);
  }

  /**
   * @private
   * @param {Control} control
   */
  handleControl(control) {
    const key = control.id;
    switch (control.type) {
      case "offer":
        this.handleOffer(control);
        return;
      case "accept": {
        const o = this.outgoing.get(key);
        if (!o || o.next !== null) {
          this.onProtocolError(`accept for unknown transfer ${hyphenated(key)}`);
          return;
        }
        if (control.offset > o.transfer.size) {
          this.onProtocolError(`accept past the end of transfer ${hyphenated(key)}`);
          return;
        }
        o.next = control.offset;
        o.acked = control.offset;
        o.transfer.bytes = control.offset;
        o.transfer.state = "sending";
        this.emit(o.transfer);
        this.pump();
        return;
      }
      case "reject": {
        const o = this.outgoing.get(key);
        if (o) this.fail(o, control.reason === "too_large" ? "too_large" : control.reason === "busy" ? "busy" : "declined");
        return;
      }
      case "ack": {
        const o = this.outgoing.get(key);
        if (o && control.offset > o.acked && control.offset <= (o.next ?? 0)) o.acked = control.offset;
        return;
      }
      case "done":
        void this.handleDone(key);
        return;
      case "complete": {
        const o = this.outgoing.get(key);
        if (!o) return;
        this.outgoing.delete(key);
        o.data = null;
        o.transfer.state = "done";
        o.transfer.bytes = o.transfer.size;
        this.emit(o.transfer);
        return;
      }
      case "cancel": {
        const entry = this.outgoing.get(key) ?? this.incoming.get(key);
        if (entry) this.fail(entry, "cancelled_by_peer");
        return;
      }
      case "error": {
        const entry = this.outgoing.get(key) ?? this.incoming.get(key);
        if (entry) this.fail(entry, /** @type {FailReason} */ (KNOWN_ERROR_REASONS.has(control.reason) ? control.reason : "remote_error"));
        return;
      }
    }
  }

  /**
   * @private
   * @param {Extract<Control, { type: "offer" }>} offer
   */
  handleOffer(offer) {
    const key = offer.id;
    const id = hyphenated(key);
    if (this.outgoing.has(key)) {
      this.onProtocolError(`offer with the id of an outgoing transfer ${id}`);
      return;
    }
    const hashOk = /^[0-9a-fA-F]{64}$/.test(offer.sha256);
    /** @type {Transfer} */
    const transfer = {
      id,
      direction: "in",
      name: offer.name,
      size: offer.size,
      mime: offer.mime.slice(0, 200),
      sha256: offer.sha256.toLowerCase(),
      state: "offered",
      bytes: 0,
      reason: "",
      blob: null,
    };
    const previous = this.incoming.get(key);
    if (previous) {
      // Offered again (the native core re-offers the same id to resume): start over.
      this.fail(previous, "cancelled_by_peer");
    }
    if (!validFileName(offer.name) || !hashOk) {
      this.sendControl({ type: "error", id, reason: "invalid_offer" });
      this.onProtocolError(`invalid file offer ${id}`);
      return;
    }
    if (offer.size > MAX_FILE_BYTES) {
      this.sendControl({ type: "reject", id, reason: "too_large" });
      transfer.state = "failed";
      transfer.reason = "too_large";
      this.emit(transfer);
      return;
    }
    const pending = [...this.incoming.values()].filter((e) => e.transfer.state === "offered").length;
    if (pending >= MAX_PENDING_OFFERS) {
      this.sendControl({ type: "reject", id, reason: "busy" });
      return;
    }
    this.incoming.set(key, { transfer, chunks: [], received: 0, lastAck: 0 });
    this.emit(transfer);
  }

  /**
   * @private
   * @param {string} key
   */
  async handleDone(key) {
    const entry = this.incoming.get(key);
    if (!entry || entry.transfer.state !== "receiving") {
      this.onProtocolError(`done for unknown transfer ${hyphenated(key)}`);
      return;
    }
    if (entry.received < entry.transfer.size) {
      this.sendControl({ type: "error", id: key, reason: "incomplete" });
      this.fail(entry, "incomplete");
      return;
    }
    entry.transfer.state = "verifying";
    this.emit(entry.transfer);
    // Never typed as the sender says: a Blob URL opened in a tab must not render as HTML.
    const blob = new Blob(/** @type {BlobPart[]} */ (entry.chunks), { type: "application/octet-stream" });
    entry.chunks = [];
    let digest = "";
    try {
      digest = await sha256Hex(await blob.arrayBuffer());
    } catch (err) {
      console.warn("Could not hash a received file", err);
    }
    if (this.incoming.get(key) !== entry || entry.transfer.state !== "verifying") return; // cancelled meanwhile
    if (digest !== entry.transfer.sha256) {
      this.sendControl({ type: "error", id: key, reason: "hash_mismatch" });
      this.fail(entry, "hash_mismatch");
      return;
    }
    this.incoming.delete(key);
    this.sendControl({ type: "complete", id: key });
    entry.transfer.state = "done";
    entry.transfer.blob = blob;
    this.emit(entry.transfer);
  }

  // -------------------------------------------------------------------------------------------
  // Lifetime
  // -------------------------------------------------------------------------------------------

  /**
   * No file channel is left (it closed, or the peer connection was replaced): every transfer in
   * flight fails; partial data is dropped.
   */
  connectionLost() {
    for (const entry of [...this.outgoing.values(), ...this.incoming.values()]) this.fail(entry, "connection_lost");
    this.pump();
  }

  /** Forget everything quietly (the call is over). */
  clear() {
    this.outgoing.clear();
    this.incoming.clear();
    if (this.retryTimer !== undefined) clearInterval(this.retryTimer);
    this.retryTimer = undefined;
  }
}
