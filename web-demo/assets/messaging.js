// @ts-check
/**
 * Chat and file transfer over the call's data channels, speaking the native media core's protocol
 * (`crates/peer/src/chat.rs`, `crates/peer/src/file_transfer.rs`):
 *
 * - `consult-chat` (reliable, ordered): one UTF-8 text frame per message, at most
 *   {@link MAX_CHAT_BYTES} bytes; binary frames and longer messages are refused;
 * - `consult-file` (reliable, ordered): see `file-transfer.js`.
 *
 * Channels are adopted by label, whoever created them (see `call.js` for who creates them). When
 * both sides created a channel with the same label (glare), both stay: messages are taken from
 * any of them, and sending uses the one opened most recently (which is also the one the native
 * core keeps).
 */

import { BUFFERED_LOW_BYTES, FILE_CHANNEL_LABEL, FileTransfers } from "./file-transfer.js";

/** @typedef {import('./file-transfer.js').Transfer} Transfer */

/**
 * What chat and files use of a data channel: an `RTCDataChannel`, or one sealed with end-to-end
 * encryption (`e2ee/sealed-channel.js`), which behaves the same.
 * @typedef {{
 *   readonly label: string,
 *   readonly readyState: RTCDataChannelState,
 *   readonly bufferedAmount: number,
 *   bufferedAmountLowThreshold: number,
 *   binaryType: BinaryType,
 *   onopen: ((ev: Event) => any) | null,
 *   onclose: ((ev: Event) => any) | null,
 *   onerror: ((ev: RTCErrorEvent) => any) | null,
 *   onbufferedamountlow: ((ev: Event) => any) | null,
 *   onmessage: ((ev: MessageEvent) => any) | null,
 *   send(data: string): void,
 *   send(data: ArrayBuffer): void,
 *   send(data: ArrayBufferView<ArrayBuffer>): void,
 *   close(): void,
 * }} ChannelLike
 */

export const CHAT_CHANNEL_LABEL = "consult-chat";
/** Largest chat message, in bytes of UTF-8. */
export const MAX_CHAT_BYTES = 4096;

const encoder = new TextEncoder();

/**
 * Why an outgoing chat message cannot go, or null if it can.
 * @param {string} text
 * @returns {string | null}
 */
export function checkChatMessage(text) {
  if (!text) return "Write a message first.";
  const bytes = encoder.encode(text).length;
  if (bytes > MAX_CHAT_BYTES) return `Message too long: ${bytes} bytes, at most ${MAX_CHAT_BYTES}. Shorten it or send it in parts.`;
  return null;
}

/**
 * An incoming chat frame: the text, or why it is refused.
 * @param {unknown} data
 * @returns {{ text: string } | { refused: string }}
 */
export function decodeChatMessage(data) {
  if (typeof data !== "string") return { refused: "it was not text" };
  const bytes = encoder.encode(data).length;
  if (bytes > MAX_CHAT_BYTES) return { refused: `it was too long (${bytes} bytes, at most ${MAX_CHAT_BYTES})` };
  if (!data) return { refused: "it was empty" };
  return { text: data };
}

/**
 * The chat and file channels of one call (of its current peer connection).
 */
export class Messaging {
  /**
   * @param {object} options
   * @param {(text: string) => void} options.onChat A message arrived.
   * @param {(why: string) => void} options.onChatRefused A message arrived that cannot be shown.
   * @param {(transfer: Transfer) => void} options.onTransfer A file transfer appeared or changed.
   * @param {() => void} options.onChannels Channels opened or closed (see `chatOpen`, `fileOpen`).
   */
  constructor({ onChat, onChatRefused, onTransfer, onChannels }) {
    this.onChat = onChat;
    this.onChatRefused = onChatRefused;
    this.onChannels = onChannels;
    /** @type {Set<ChannelLike>} Every channel adopted for the current connection. */
    this.channels = new Set();
    /** @type {ChannelLike[]} Open chat channels, in the order they opened. */
    this.chatChannels = [];
    /** @type {ChannelLike[]} Open file channels, in the order they opened. */
    this.fileChannels = [];
    this.files = new FileTransfers({
      getChannel: () => this.current(this.fileChannels),
      onUpdate: onTransfer,
    });
  }

  /**
   * The most recently opened channel of a list that is still open.
   * @private
   * @param {ChannelLike[]} list
   */
  current(list) {
    for (let i = list.length - 1; i >= 0; i--) {
      if (list[i].readyState === "open") return list[i];
    }
    return null;
  }

  /** Whether a chat message can be sent now. */
  get chatOpen() {
    return this.current(this.chatChannels) !== null;
  }

  /** Whether a file can be sent now. */
  get fileOpen() {
    return this.current(this.fileChannels) !== null;
  }

  /**
   * Take a channel of the current peer connection (created here or announced by `datachannel`).
   * Channels with other labels are closed.
   * @param {ChannelLike} channel
   */
  addChannel(channel) {
    const label = channel.label;
    if (label !== CHAT_CHANNEL_LABEL && label !== FILE_CHANNEL_LABEL) {
      console.warn(`Closing a data channel with an unknown label ${JSON.stringify(label)}`);
      channel.close();
      return;
    }
    if (this.channels.has(channel)) return;
    this.channels.add(channel);
    channel.binaryType = "arraybuffer";
    const list = label === CHAT_CHANNEL_LABEL ? this.chatChannels : this.fileChannels;
    const opened = () => {
      if (!this.channels.has(channel)) return;
      const at = list.indexOf(channel);
      if (at >= 0) list.splice(at, 1);
      list.push(channel);
      if (label === FILE_CHANNEL_LABEL) {
        channel.bufferedAmountLowThreshold = BUFFERED_LOW_BYTES;
        channel.onbufferedamountlow = () => this.files.pump();
      }
      this.onChannels();
      if (label === FILE_CHANNEL_LABEL) this.files.pump();
    };
    channel.onopen = opened;
    channel.onclose = () => {
      if (!this.channels.has(channel)) return;
      this.channels.delete(channel);
      const at = list.indexOf(channel);
      if (at >= 0) list.splice(at, 1);
      if (label === FILE_CHANNEL_LABEL && this.fileChannels.length === 0) this.files.connectionLost();
      this.onChannels();
    };
    channel.onerror = (event) => {
      const error = event.error;
      console.warn(`Data channel ${label} error`, error ? error.message : event);
    };
    channel.onmessage = (event) => {
      if (!this.channels.has(channel)) return;
      if (label === CHAT_CHANNEL_LABEL) {
        const message = decodeChatMessage(event.data);
        if ("text" in message) this.onChat(message.text);
        else this.onChatRefused(message.refused);
      } else {
        this.files.handleMessage(event.data);
      }
    };
    if (channel.readyState === "open") opened();
  }

  /**
   * Send a chat message. Returns null when it went, else why not (for the person writing).
   * @param {string} text
   * @returns {string | null}
   */
  sendChat(text) {
    const problem = checkChatMessage(text);
    if (problem) return problem;
    const channel = this.current(this.chatChannels);
    if (!channel) return "Not connected: the message can be sent once the call is connected.";
    try {
      channel.send(text);
    } catch (err) {
      console.warn("Could not send a chat message", err);
      return "The message could not be sent. Try again.";
    }
    return null;
  }

  /** Stop listening to every channel and forget them. */
  detachChannels() {
    for (const channel of this.channels) {
      channel.onopen = null;
      channel.onclose = null;
      channel.onmessage = null;
      channel.onerror = null;
      channel.onbufferedamountlow = null;
    }
    this.channels.clear();
    this.chatChannels = [];
    this.fileChannels = [];
  }

  /**
   * The peer connection was closed or replaced: forget its channels; transfers in flight fail.
   */
  connectionClosed() {
    this.detachChannels();
    this.files.connectionLost();
    this.onChannels();
  }

  /** The call is over: forget channels and transfers without reporting anything. */
  clear() {
    this.detachChannels();
    this.files.clear();
    this.onChannels();
  }
}
