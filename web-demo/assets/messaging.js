// @ts-check
/**
 * Chat and file transfer over the call's data channels, speaking the native media core's protocol
 * (`crates/peer/src/chat.rs`, `crates/peer/src/file_transfer.rs`):
 *
 * - `consult-chat` (reliable, ordered): one UTF-8 text frame per message, at most
 *   {@link MAX_CHAT_BYTES} bytes; binary frames and longer messages are refused;
 * - `consult-file` (reliable, ordered): see `file-transfer.js`.
 *
 * In a group call there is one pair of channels per other participant (one connection each).
 * Channels are adopted by label, whoever created them (see `call.js` for who creates them). When
 * both sides created a channel with the same label (glare), both stay: messages are taken from
 * any of them, and sending uses the one opened most recently (which is also the one the native
 * core keeps).
 */

import { BUFFERED_LOW_BYTES, FILE_CHANNEL_LABEL, FileTransferError, FileTransfers } from "./file-transfer.js";

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
 * The chat and file channels with one other participant (of the current connection with them),
 * and the file transfers with them.
 */
class PeerChannels {
  /**
   * @param {(transfer: Transfer) => void} onTransfer
   */
  constructor(onTransfer) {
    /** @type {Set<ChannelLike>} Every channel adopted for the current connection. */
    this.channels = new Set();
    /** @type {ChannelLike[]} Open chat channels, in the order they opened. */
    this.chatChannels = [];
    /** @type {ChannelLike[]} Open file channels, in the order they opened. */
    this.fileChannels = [];
    this.files = new FileTransfers({
      getChannel: () => current(this.fileChannels),
      onUpdate: onTransfer,
    });
  }

  /** Stop listening to every channel and forget them. */
  detach() {
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
}

/**
 * The most recently opened channel of a list that is still open.
 * @param {ChannelLike[]} list
 */
function current(list) {
  for (let i = list.length - 1; i >= 0; i--) {
    if (list[i].readyState === "open") return list[i];
  }
  return null;
}

/**
 * The chat and file channels of one call: one set per other participant. A chat message goes to
 * everyone connected; a file is offered to each of them as a transfer of its own (each accepts or
 * declines for themselves).
 */
export class Messaging {
  /**
   * @param {object} options
   * @param {(text: string, peerId: string) => void} options.onChat A message arrived.
   * @param {(why: string, peerId: string) => void} options.onChatRefused A message arrived that cannot be shown.
   * @param {(transfer: Transfer, peerId: string) => void} options.onTransfer A file transfer appeared or changed.
   * @param {() => void} options.onChannels Channels opened or closed (see `chatOpen`, `fileOpen`).
   */
  constructor({ onChat, onChatRefused, onTransfer, onChannels }) {
    this.onChat = onChat;
    this.onChatRefused = onChatRefused;
    this.onTransfer = onTransfer;
    this.onChannels = onChannels;
    /** @type {Map<string, PeerChannels>} By participant id. */
    this.peers = new Map();
  }

  /**
   * @private
   * @param {string} peerId
   */
  peer(peerId) {
    let peer = this.peers.get(peerId);
    if (!peer) {
      peer = new PeerChannels((transfer) => this.onTransfer(transfer, peerId));
      this.peers.set(peerId, peer);
    }
    return peer;
  }

  /** Whether a chat message can be sent now (to at least one participant). */
  get chatOpen() {
    return this.chatPeers().length > 0;
  }

  /** Whether a file can be sent now (to at least one participant). */
  get fileOpen() {
    return this.filePeers().length > 0;
  }

  /** The participants a chat message would reach now. */
  chatPeers() {
    return [...this.peers].filter(([, p]) => current(p.chatChannels) !== null).map(([id]) => id);
  }

  /** The participants a file would be offered to now. */
  filePeers() {
    return [...this.peers].filter(([, p]) => current(p.fileChannels) !== null).map(([id]) => id);
  }

  /**
   * The file transfers with one participant.
   * @param {string} peerId
   */
  files(peerId) {
    return this.peer(peerId).files;
  }

  /**
   * Take a channel of the connection with a participant (created here or announced by
   * `datachannel`). Channels with other labels are closed.
   * @param {ChannelLike} channel
   * @param {string} peerId
   */
  addChannel(channel, peerId) {
    const label = channel.label;
    if (label !== CHAT_CHANNEL_LABEL && label !== FILE_CHANNEL_LABEL) {
      console.warn(`Closing a data channel with an unknown label ${JSON.stringify(label)}`);
      channel.close();
      return;
    }
    const peer = this.peer(peerId);
    if (peer.channels.has(channel)) return;
    peer.channels.add(channel);
    channel.binaryType = "arraybuffer";
    const list = label === CHAT_CHANNEL_LABEL ? peer.chatChannels : peer.fileChannels;
    const opened = () => {
      if (!peer.channels.has(channel)) return;
      const at = list.indexOf(channel);
      if (at >= 0) list.splice(at, 1);
      list.push(channel);
      if (label === FILE_CHANNEL_LABEL) {
        channel.bufferedAmountLowThreshold = BUFFERED_LOW_BYTES;
        channel.onbufferedamountlow = () => peer.files.pump();
      }
      this.onChannels();
      if (label === FILE_CHANNEL_LABEL) peer.files.pump();
    };
    channel.onopen = opened;
    channel.onclose = () => {
      if (!peer.channels.has(channel)) return;
      peer.channels.delete(channel);
      const at = list.indexOf(channel);
      if (at >= 0) list.splice(at, 1);
      if (label === FILE_CHANNEL_LABEL && peer.fileChannels.length === 0) peer.files.connectionLost();
      this.onChannels();
    };
    channel.onerror = (event) => {
      const error = event.error;
      console.warn(`Data channel ${label} error`, error ? error.message : event);
    };
    channel.onmessage = (event) => {
      if (!peer.channels.has(channel)) return;
      if (label === CHAT_CHANNEL_LABEL) {
        const message = decodeChatMessage(event.data);
        if ("text" in message) this.onChat(message.text, peerId);
        else this.onChatRefused(message.refused, peerId);
      } else {
        peer.files.handleMessage(event.data);
      }
    };
    if (channel.readyState === "open") opened();
  }

  /**
   * Send a chat message to everyone connected. Returns null when it went to all of them, else why
   * not (for the person writing).
   * @param {string} text
   * @returns {string | null}
   */
  sendChat(text) {
    const problem = checkChatMessage(text);
    if (problem) return problem;
    const channels = [...this.peers.values()].map((p) => current(p.chatChannels)).filter((c) => c !== null);
    if (channels.length === 0) return "Not connected: the message can be sent once the call is connected.";
    let failed = 0;
    for (const channel of channels) {
      try {
        channel.send(text);
      } catch (err) {
        console.warn("Could not send a chat message", err);
        failed += 1;
      }
    }
    if (failed === channels.length) return "The message could not be sent. Try again.";
    if (failed > 0) return "The message did not reach everyone. Try again.";
    return null;
  }

  /**
   * Offer a file to everyone connected, as one transfer each. Resolves with those transfers;
   * rejects (with a {@link FileTransferError}) when the file cannot go to anyone.
   * @param {File} file
   * @returns {Promise<{ peerId: string, transfer: Transfer }[]>}
   */
  async offerFile(file) {
    const peerIds = this.filePeers();
    if (peerIds.length === 0) throw new FileTransferError("not_connected", "Files can be sent once the call is connected.");
    /** @type {{ peerId: string, transfer: Transfer }[]} */
    const offered = [];
    /** @type {unknown} */
    let firstError = null;
    for (const peerId of peerIds) {
      try {
        offered.push({ peerId, transfer: await this.peer(peerId).files.offer(file) });
      } catch (err) {
        firstError ??= err;
      }
    }
    if (offered.length === 0) throw firstError;
    return offered;
  }

  /**
   * The connection with a participant was closed or replaced: forget its channels; transfers in
   * flight with them fail.
   * @param {string} peerId
   */
  connectionClosed(peerId) {
    const peer = this.peers.get(peerId);
    if (!peer) return;
    peer.detach();
    peer.files.connectionLost();
    this.onChannels();
  }

  /** The call is over: forget channels and transfers without reporting anything. */
  clear() {
    for (const peer of this.peers.values()) {
      peer.detach();
      peer.files.clear();
    }
    this.peers.clear();
    this.onChannels();
  }
}
