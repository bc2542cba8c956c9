// @ts-check
/**
 * Zero-knowledge recording, the media part: the SFrame protection of one connection to the
 * recorder. Send only, and independent of the call's key schedule: the recorder never holds a
 * key of the call, and the other person never holds one of the recording.
 *
 * - Its own transform worker ({@link MediaWorker}: the same `worker.js`, frame formats and
 *   counters as the call — Opus whole, VP8 with its clear tag, H.264 in pieces — so the exporter
 *   opens them with `consult-e2ee`), on the senders only, attached before the first frame.
 *   Without a key installed the worker drops frames: nothing reaches the recorder in the clear.
 * - A random base key per epoch (suite 4, AES_128_GCM_SHA256_128: 16 bytes). KID =
 *   `tag << 24 | 0 << 16 | epoch`: the tag is random in 1..255, chosen once per connection; epochs
 *   count from 1.
 * - Before a key is used it is wrapped to the clinician's recording key (`recording-key.js`) and
 *   sent as `recording_key` on the signaling socket; only once that went out is it installed in
 *   the worker (`send-key`). A key that could not be sent is never used (tried again, with a new
 *   key, a second later); the page keeps no key bytes.
 * - A new epoch every 10 minutes (`localStorage["consult.e2eeRotateMs"]` for tests, as the call),
 *   when the worker's counter nears its limit (`consult.e2eeMaxCounter`), and after signaling came
 *   back (a key message may have gone down with the old socket).
 */

import { toBase64 } from "./bytes.js";
import { rotationOverrides } from "./call-e2ee.js";
import { MediaWorker, transformApi, transformConfiguration } from "./media-worker.js";
import { wrapEpochKey } from "./recording-key.js";
import { DEFAULT_SCHEDULE_CONFIG, kidOf, STREAM_MEDIA } from "./schedule.js";
import { importBaseKey, SUITES } from "./sframe.js";

/** @typedef {import('../protocol.js').ClientMessage} ClientMessage */

/** The SFrame suite of recorder media: AES_128_GCM_SHA256_128. */
export const RECORDING_SUITE = SUITES[4];
/** How soon a key that could not be sent (signaling down) is tried again. */
const RETRY_MS = 1000;
/** The KID has 16 bits for the epoch: never reuse one under another key. */
const MAX_EPOCH = 0xffff;

/**
 * Where the keys go, and what they are bound to.
 * @typedef {object} RecordingTarget
 * @property {string} recordingId The recording (UUID), from the `recording` message.
 * @property {string} participantId This participant (UUID), from `joined`.
 * @property {Uint8Array} recordingKey The clinician's X25519 recording public key (32 bytes).
 */

/**
 * A random recorder tag, 1..255, other than `avoid`'s (while any is left).
 * @param {ReadonlySet<number>} avoid
 */
function randomTag(avoid) {
  const byte = new Uint8Array(1);
  do crypto.getRandomValues(byte);
  while (byte[0] === 0 || (avoid.has(byte[0]) && avoid.size < 255));
  return byte[0];
}

/**
 * Sender protection of one connection to the recorder.
 */
export class RecordingProtection {
  /** Whether this browser can protect frames at all (else nothing may go to the recorder). */
  static get supported() {
    return transformApi() !== null;
  }

  /** The recorder connection's configuration needs (see {@link transformConfiguration}). */
  static configuration() {
    return transformConfiguration();
  }

  /**
   * Throws when this browser cannot transform frames: then there must be no connection.
   * @param {object} options
   * @param {RecordingTarget} options.target
   * @param {(message: ClientMessage) => boolean} options.send Send a signaling message; false when it could not go.
   * @param {ReadonlySet<number>} [options.avoidTags] Tags this participant used before in this
   *   recording (earlier connections to the recorder): a new tag keeps their KIDs apart.
   */
  constructor({ target, send, avoidTags = new Set() }) {
    this.target = target;
    this.send = send;
    const { rotateEveryMs, maxCounter } = rotationOverrides();
    this.rotateEveryMs = rotateEveryMs ?? DEFAULT_SCHEDULE_CONFIG.rotateEveryMs;
    this.maxCounter = maxCounter ?? null;
    const media = MediaWorker.create({
      name: "consult-recording",
      config: maxCounter ? { maxCounter } : {},
      onRotateWanted: () => this.rotate(),
    });
    if (!media) throw new Error("this browser cannot protect frames: no zero-knowledge recording");
    this.media = media;
    this.tag = randomTag(avoidTags);
    /** The epoch of the key in use (0: none yet). */
    this.epoch = 0;
    this.keysSent = 0;
    /** Keys that could not be wrapped or sent. */
    this.keyFailures = 0;
    this.closed = false;
    /** @type {RTCPeerConnection | null} */
    this.pc = null;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.timer = undefined;
    /** Whether a new epoch is already queued. */
    this.rotationQueued = false;
    /** @type {Promise<void>} One key change at a time. */
    this.queue = Promise.resolve();
    this.watchNegotiation = () => {
      if (this.pc && this.pc.signalingState === "stable") this.media.postCodecs(this.pc);
    };
  }

  /**
   * Protect every sender of the recorder's connection (call it right after its transceivers are
   * made, before negotiation) and start the first epoch.
   * @param {RTCPeerConnection} pc
   */
  attach(pc) {
    if (this.closed || this.pc) return;
    this.pc = pc;
    this.media.attachAll(pc, { sendOnly: true });
    pc.addEventListener("signalingstatechange", this.watchNegotiation);
    this.rotate();
  }

  /** Protect senders added to the connection since {@link RecordingProtection#attach} (a shared screen). */
  protectNewSenders() {
    if (!this.closed && this.pc) this.media.attachAll(this.pc, { sendOnly: true });
  }

  /** Start a new epoch (a key message, then the key); queued behind any key change under way. */
  rotate() {
    if (this.closed || this.rotationQueued) return this.queue;
    this.rotationQueued = true;
    this.queue = this.queue.then(async () => {
      this.rotationQueued = false;
      try {
        await this.nextEpoch();
      } catch (err) {
        this.keyFailures += 1;
        console.error("Recording: no key for the recorder", err);
      }
    });
    return this.queue;
  }

  /** @private */
  async nextEpoch() {
    if (this.closed) return;
    this.clearTimer();
    const epoch = this.epoch + 1;
    if (epoch > MAX_EPOCH) throw new Error("the recorder connection ran out of epochs");
    const kid = kidOf(this.tag, STREAM_MEDIA, epoch);
    const suite = RECORDING_SUITE;
    const bytes = crypto.getRandomValues(new Uint8Array(suite.keyBytes));
    let sent = false;
    /** @type {CryptoKey | null} */
    let baseKey = null;
    try {
      const { recordingId, participantId, recordingKey } = this.target;
      const wrapped = await wrapEpochKey(recordingKey, { recordingId, participantId, kid, suite: suite.id }, bytes);
      baseKey = await importBaseKey(bytes);
      if (this.closed) return;
      sent = this.send({ type: "recording_key", recording_id: recordingId, kid: Number(kid), suite: suite.id, wrapped: toBase64(wrapped) });
    } finally {
      bytes.fill(0);
    }
    if (!sent || !baseKey) {
      this.keyFailures += 1;
      console.warn("Recording: the key message could not be sent; trying again");
      this.timer = setTimeout(() => this.rotate(), RETRY_MS);
      return;
    }
    this.epoch = epoch;
    this.keysSent += 1;
    await this.media.install({ kind: "send-key", kid, epoch, suite, baseKey });
    if (!this.closed) this.timer = setTimeout(() => this.rotate(), Math.min(this.rotateEveryMs, 2 ** 31 - 1));
  }

  /** @private */
  clearTimer() {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** What tests and curious people may read (never a key). */
  snapshot() {
    return {
      tag: this.tag,
      epoch: this.epoch,
      kid: this.epoch > 0 ? Number(kidOf(this.tag, STREAM_MEDIA, this.epoch)) : null,
      suite: RECORDING_SUITE.id,
      keysSent: this.keysSent,
      keyFailures: this.keyFailures,
      rotation: { everyMs: this.rotateEveryMs, maxCounter: this.maxCounter },
      worker: this.media.stats,
    };
  }

  /** Stop: the worker ends, and its key with it. */
  close() {
    if (this.closed) return;
    this.closed = true;
    this.clearTimer();
    this.pc?.removeEventListener("signalingstatechange", this.watchNegotiation);
    this.media.terminate();
  }
}
