// @ts-check
/**
 * A chat or file data channel under end-to-end encryption: every message goes out as one
 * binary SFrame message (the Data format: a kind byte, 0 text or 1 binary, then the bytes;
 * KID stream 1) and every incoming one must be such a message under the remote's key.
 * Unprotected or refused messages are dropped and counted, never handed to chat or files.
 *
 * It looks to `messaging.js` and `file-transfer.js` like the `RTCDataChannel` it wraps (the
 * `ChannelLike` they use): `readyState` is "open" only once this side can protect (its send key
 * is in use), and `bufferedAmount` counts the messages still being encrypted, so the file
 * sender's flow control still holds. WebCrypto is asynchronous: sends and receives each go
 * through a queue, so that messages keep their order.
 */

import { utf8 } from "./bytes.js";

/**
 * What a sealed channel needs from the call's E2EE: the page's data protector.
 * @typedef {object} DataSealer
 * @property {() => boolean} canSend Whether our send key is in use.
 * @property {(binary: boolean, bytes: Uint8Array) => Promise<Uint8Array>} seal
 * @property {(bytes: Uint8Array) => Promise<{ binary: boolean, bytes: Uint8Array }>} open Throws when refused (counted there).
 * @property {() => void} refusedUnprotected Count an unprotected message.
 */

const decoder = new TextDecoder("utf-8", { fatal: true });

export class SealedChannel {
  /**
   * @param {RTCDataChannel} inner
   * @param {DataSealer} sealer
   */
  constructor(inner, sealer) {
    this.inner = inner;
    this.sealer = sealer;
    this.label = inner.label;
    /** @type {BinaryType} What this channel's `message` events carry for binary messages. */
    this.binaryType = "arraybuffer";
    inner.binaryType = "arraybuffer";
    /** Bytes given to `send` and not yet on the inner channel. */
    this.pendingBytes = 0;
    /** @type {Promise<void>} */
    this.sending = Promise.resolve();
    /** @type {Promise<void>} */
    this.receiving = Promise.resolve();
    this.openAnnounced = false;
    /** @type {((ev: Event) => any) | null} */
    this.onopen = null;
    /** @type {((ev: Event) => any) | null} */
    this.onclose = null;
    /** @type {((ev: RTCErrorEvent) => any) | null} */
    this.onerror = null;
    /** @type {((ev: Event) => any) | null} */
    this.onbufferedamountlow = null;
    /** @type {((ev: MessageEvent) => any) | null} */
    this.onmessage = null;

    inner.addEventListener("open", () => this.announceOpen());
    inner.addEventListener("close", (event) => this.onclose?.(event));
    inner.addEventListener("error", (event) => this.onerror?.(/** @type {RTCErrorEvent} */ (event)));
    inner.addEventListener("bufferedamountlow", (event) => this.onbufferedamountlow?.(event));
    inner.addEventListener("message", (event) => this.receive(event.data));
  }

  /** "open" only while the inner channel is open and our key is in use. */
  get readyState() {
    const state = this.inner.readyState;
    if (state === "open" && !this.sealer.canSend()) return "connecting";
    return state;
  }

  get bufferedAmount() {
    return this.inner.bufferedAmount + this.pendingBytes;
  }

  get bufferedAmountLowThreshold() {
    return this.inner.bufferedAmountLowThreshold;
  }

  set bufferedAmountLowThreshold(value) {
    this.inner.bufferedAmountLowThreshold = value;
  }

  /** Fire `open` once both the channel and our key are ready (call again when keys change). */
  announceOpen() {
    if (this.openAnnounced || this.readyState !== "open") return;
    this.openAnnounced = true;
    this.onopen?.(new Event("open"));
  }

  /**
   * Send a text (chat, file control) or binary (file chunk) message, protected.
   * @param {string | ArrayBuffer | ArrayBufferView} data
   */
  send(data) {
    if (this.readyState !== "open") throw new DOMException("The channel is not open for end-to-end encrypted messages", "InvalidStateError");
    const binary = typeof data !== "string";
    const bytes =
      typeof data === "string"
        ? utf8(data)
        : data instanceof ArrayBuffer
          ? new Uint8Array(data.slice(0))
          : new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
    this.pendingBytes += bytes.length;
    this.sending = this.sending.then(async () => {
      try {
        const sealed = await this.sealer.seal(binary, bytes);
        if (this.inner.readyState === "open") this.inner.send(/** @type {Uint8Array<ArrayBuffer>} */ (sealed));
      } catch (err) {
        console.warn(`Could not send an end-to-end encrypted message on ${this.label}`, err instanceof Error ? err.name : "");
      } finally {
        this.pendingBytes -= bytes.length;
      }
    });
  }

  /**
   * An incoming message of the inner channel: only protected binary messages pass.
   * @private
   * @param {unknown} data
   */
  receive(data) {
    if (!(data instanceof ArrayBuffer)) {
      this.sealer.refusedUnprotected();
      return;
    }
    const bytes = new Uint8Array(data);
    this.receiving = this.receiving.then(async () => {
      /** @type {{ binary: boolean, bytes: Uint8Array }} */
      let opened;
      try {
        opened = await this.sealer.open(bytes);
      } catch {
        return; // refused and counted by the sealer
      }
      /** @type {string | ArrayBuffer} */
      let payload;
      if (opened.binary) {
        payload = opened.bytes.slice().buffer;
      } else {
        try {
          payload = decoder.decode(opened.bytes);
        } catch {
          this.sealer.refusedUnprotected();
          return;
        }
      }
      this.onmessage?.(new MessageEvent("message", { data: payload }));
    });
  }

  close() {
    this.inner.close();
  }
}
