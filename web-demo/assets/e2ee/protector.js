// @ts-check
/**
 * Frame protection with the keys the schedule hands out: one send key with its counter, the
 * remote sender's receive keys with their replay windows, grace windows and erasure. The
 * reference is `KeySchedule::protect` / `unprotect` in `crates/e2ee/src/schedule.rs`.
 *
 * The browser splits what the Rust schedule does in one object: the media worker owns a
 * `FrameProtector` for KID stream 0 (audio and video share its counter), the page owns one for
 * stream 1 (chat and file messages), and the page's `KeySchedule` feeds both with keys. Each
 * protector applies the erasure rules itself: an older key lives on for `grace` after the first
 * frame under a newer epoch it opens, and at most `switchAfter + grace` after the newer key
 * arrived. No clock is read here: `now` (milliseconds, any monotonic origin) is an argument.
 */

import { protectFrame, parseProtected, openFrame, FormatError } from "./format.js";
import { SFrameKey, SFrameError } from "./sframe.js";

/** @typedef {import('./format.js').MediaFormat} MediaFormat */
/** @typedef {import('./sframe.js').Suite} Suite */

/**
 * Why an incoming frame or key message was refused (the Rust `Rejection` names; `unprotected`: a
 * message that came without SFrame at all).
 * @typedef {"tampered" | "replayed" | "unknown_kid" | "expired_kid" | "truncated" | "unprotected"
 *   | "key_from_stranger" | "key_replayed" | "key_malformed" | "key_undecryptable"
 *   | "commitment_mismatch" | "reveal_before_commitment"} Rejection
 */

/** Every frame rejection, for stats with all counters present. */
export const FRAME_REJECTIONS = /** @type {const} */ (["tampered", "replayed", "unknown_kid", "expired_kid", "truncated", "unprotected"]);

/**
 * Timing and limits, the Rust `ScheduleConfig` defaults.
 * @typedef {object} ProtectorConfig
 * @property {number} switchAfterMs A sender switches to an announced key this long after announcing it at the latest.
 * @property {number} graceMs How long older keys stay once a newer one is in use.
 * @property {number} maxCounter Ask for a new epoch when a counter reaches this.
 * @property {number} replayWindow Out-of-order tolerance of the replay check, in counter values.
 */

/** @type {Readonly<ProtectorConfig>} */
export const DEFAULT_PROTECTOR_CONFIG = Object.freeze({
  switchAfterMs: 1000,
  graceMs: 2000,
  maxCounter: 2 ** 32,
  replayWindow: 1024,
});

/** Erased KIDs remembered to tell "expired" from "unknown". */
const EXPIRED_KIDS_REMEMBERED = 64;

/** A frame was refused: count it and drop it. */
export class RejectedError extends Error {
  /** @param {Rejection} reason */
  constructor(reason) {
    super(`refused: ${reason}`);
    this.name = "RejectedError";
    this.reason = reason;
  }
}

/** No send key yet: drop the frame (never send it in the clear). */
export class NoSendKeyError extends Error {
  constructor() {
    super("no end-to-end key yet");
    this.name = "NoSendKeyError";
  }
}

/**
 * Counters seen under one key: the highest, and which of the `size` below it (as Rust's
 * `ReplayWindow`).
 */
export class ReplayWindow {
  /** @param {number} size */
  constructor(size) {
    this.size = size;
    /** @type {bigint | null} */
    this.highest = null;
    /** @type {Set<bigint>} */
    this.seen = new Set();
  }

  /** @param {bigint} ctr */
  isFresh(ctr) {
    if (this.highest === null || ctr > this.highest) return true;
    return this.highest - ctr < BigInt(this.size) && !this.seen.has(ctr);
  }

  /** @param {bigint} ctr */
  record(ctr) {
    this.seen.add(ctr);
    const high = this.highest === null || ctr > this.highest ? ctr : this.highest;
    this.highest = high;
    const floor = high - BigInt(this.size);
    if (this.seen.size > this.size + 1) {
      for (const seen of this.seen) if (seen < floor) this.seen.delete(seen);
    }
  }
}

/**
 * @typedef {object} ReceiveKey
 * @property {number} epoch
 * @property {SFrameKey} key
 * @property {ReplayWindow} seen
 * @property {number | null} expiresAt
 */

/**
 * Counts of one protector.
 * @typedef {object} ProtectorStats
 * @property {number} protected Frames protected.
 * @property {number} opened Frames opened.
 * @property {number} droppedWithoutKey Outgoing frames dropped because no key was ready.
 * @property {Record<typeof FRAME_REJECTIONS[number], number>} rejected
 * @property {number} sendEpoch Epoch of the send key (0: none).
 * @property {number} receiveEpoch Newest epoch of the remote installed (0: none).
 */

/**
 * One KID stream's send key and the remote's receive keys.
 */
export class FrameProtector {
  /** @param {Partial<ProtectorConfig>} [config] */
  constructor(config = {}) {
    this.config = { ...DEFAULT_PROTECTOR_CONFIG, ...config };
    /** @type {{ epoch: number, key: SFrameKey, ctr: bigint } | null} */
    this.send = null;
    /** @type {Map<bigint, ReceiveKey>} */
    this.receive = new Map();
    /** @type {bigint[]} */
    this.expired = [];
    /** Set when the counter reached `maxCounter`: the schedule should start a new epoch. */
    this.rotateWanted = false;
    /** @type {ProtectorStats} */
    this.stats = {
      protected: 0,
      opened: 0,
      droppedWithoutKey: 0,
      rejected: { tampered: 0, replayed: 0, unknown_kid: 0, expired_kid: 0, truncated: 0, unprotected: 0 },
      sendEpoch: 0,
      receiveEpoch: 0,
    };
  }

  /**
   * Switch to a new send key (the old one is dropped: forward secrecy). The counter restarts at 0.
   * @param {Suite} suite
   * @param {bigint} kid
   * @param {number} epoch
   * @param {CryptoKey | Uint8Array} baseKey
   */
  async setSendKey(suite, kid, epoch, baseKey) {
    const key = await SFrameKey.derive(suite, kid, baseKey);
    this.send = { epoch, key, ctr: 0n };
    this.rotateWanted = false;
    this.stats.sendEpoch = epoch;
  }

  /**
   * Install the remote's key for an epoch. Older keys expire at the latest once the remote
   * must have switched.
   * @param {Suite} suite
   * @param {bigint} kid
   * @param {number} epoch
   * @param {CryptoKey | Uint8Array} baseKey
   * @param {number} now
   */
  async addReceiveKey(suite, kid, epoch, baseKey, now) {
    const key = await SFrameKey.derive(suite, kid, baseKey);
    const deadline = now + this.config.switchAfterMs + this.config.graceMs;
    for (const old of this.receive.values()) old.expiresAt = old.expiresAt === null ? deadline : Math.min(old.expiresAt, deadline);
    this.receive.set(kid, { epoch, key, seen: new ReplayWindow(this.config.replayWindow), expiresAt: null });
    this.stats.receiveEpoch = Math.max(this.stats.receiveEpoch, epoch);
  }

  /** Forget every key (the connection closed). */
  clear() {
    this.send = null;
    for (const kid of [...this.receive.keys()]) this.erase(kid);
    this.stats.sendEpoch = 0;
    this.stats.receiveEpoch = 0;
  }

  /**
   * @private
   * @param {bigint} kid
   */
  erase(kid) {
    if (!this.receive.delete(kid)) return;
    this.expired.push(kid);
    if (this.expired.length > EXPIRED_KIDS_REMEMBERED) this.expired.shift();
  }

  /**
   * Erase keys whose time is up (also done on every frame; call it on a timer so that keys go
   * even when no frame comes).
   * @param {number} now
   */
  tick(now) {
    for (const [kid, k] of [...this.receive]) if (k.expiresAt !== null && now >= k.expiresAt) this.erase(kid);
  }

  /** Epochs of the receive keys held now, oldest first. */
  get receiveEpochs() {
    return [...this.receive.values()].map((k) => k.epoch).sort((a, b) => a - b);
  }

  /**
   * Protect an outgoing frame. Throws {@link NoSendKeyError} (drop it) or {@link FormatError}.
   * @param {MediaFormat} format
   * @param {Uint8Array} frame
   */
  async protect(format, frame) {
    const send = this.send;
    if (!send) {
      this.stats.droppedWithoutKey += 1;
      throw new NoSendKeyError();
    }
    // The counter is taken before the (asynchronous) encryption, so concurrent calls never share one.
    const ctr = send.ctr;
    send.ctr += 1n;
    if (send.ctr >= BigInt(this.config.maxCounter)) this.rotateWanted = true;
    const sealed = await protectFrame(format, send.key, ctr, frame);
    this.stats.protected += 1;
    return sealed;
  }

  /**
   * Open an incoming frame. Throws {@link RejectedError} (counted: drop the frame).
   * @param {MediaFormat} format
   * @param {Uint8Array} data
   * @param {number} now
   */
  async unprotect(format, data, now) {
    /** @type {import('./format.js').ParsedFrame} */
    let parsed;
    try {
      parsed = parseProtected(format, data);
    } catch {
      throw this.reject("truncated");
    }
    const kid = parsed.kid;
    const known = this.receive.get(kid);
    if (known && known.expiresAt !== null && now >= known.expiresAt) this.erase(kid);
    const entry = this.receive.get(kid);
    if (!entry) throw this.reject(this.expired.includes(kid) ? "expired_kid" : "unknown_kid");
    if (!entry.seen.isFresh(parsed.ctr)) throw this.reject("replayed");
    /** @type {Uint8Array} */
    let frame;
    try {
      frame = await openFrame(parsed, entry.key);
    } catch (err) {
      throw this.reject(err instanceof SFrameError ? "tampered" : err instanceof FormatError ? "truncated" : "tampered");
    }
    // Checked again: another frame with this counter may have been opened meanwhile.
    if (!entry.seen.isFresh(parsed.ctr)) throw this.reject("replayed");
    entry.seen.record(parsed.ctr);
    // The sender uses this epoch now: its older keys have a short grace left.
    const deadline = now + this.config.graceMs;
    for (const old of this.receive.values()) {
      if (old.epoch < entry.epoch) old.expiresAt = old.expiresAt === null ? deadline : Math.min(old.expiresAt, deadline);
    }
    this.stats.opened += 1;
    return frame;
  }

  /** Count a frame or message that arrived without protection (and was dropped). */
  noteUnprotected() {
    return this.reject("unprotected");
  }

  /**
   * @private
   * @param {typeof FRAME_REJECTIONS[number]} reason
   */
  reject(reason) {
    this.stats.rejected[reason] += 1;
    return new RejectedError(reason);
  }
}

/**
 * Protect a data-channel message: one kind byte (0 text, 1 binary), then the bytes.
 * @param {FrameProtector} protector
 * @param {boolean} binary
 * @param {Uint8Array} bytes
 */
export function protectMessage(protector, binary, bytes) {
  const plain = new Uint8Array(bytes.length + 1);
  plain[0] = binary ? 1 : 0;
  plain.set(bytes, 1);
  return protector.protect("data", plain);
}

/**
 * Open a protected data-channel message: whether it was binary, and its bytes.
 * @param {FrameProtector} protector
 * @param {Uint8Array} data
 * @param {number} now
 * @returns {Promise<{ binary: boolean, bytes: Uint8Array }>}
 */
export async function unprotectMessage(protector, data, now) {
  const plain = await protector.unprotect("data", data, now);
  if (plain.length === 0 || plain[0] > 1) {
    protector.stats.rejected.truncated += 1;
    throw new RejectedError("truncated");
  }
  return { binary: plain[0] === 1, bytes: plain.subarray(1) };
}
