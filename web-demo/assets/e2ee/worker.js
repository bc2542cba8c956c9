// @ts-check
/**
 * The encoded-transform worker of one peer connection: protects every outgoing audio and video
 * frame with SFrame and opens every incoming one, with the keys the page's key schedule posts
 * (KID stream 0: audio and video share this worker's counter).
 *
 * Frames arrive through `RTCRtpScriptTransform` (`rtctransform` events) or, where only the older
 * API exists, as the streams of `createEncodedStreams()` posted by the page (`streams` message).
 *
 * - Sending: no key yet, an unknown codec, or a frame the format cannot take → the frame is
 *   dropped, never sent in the clear.
 * - Receiving: tampered, replayed, truncated, or under an unknown or expired KID → dropped and
 *   counted, never passed to the decoder.
 *
 * Messages from the page: `config`, `codecs` (payload type → codec, from the SDP, for frames
 * whose metadata has no MIME type), `send-key`, `receive-key` (answered with `installed`),
 * `clear`, `streams`. To the page, every {@link STATS_EVERY_MS}: `stats` (counts per direction
 * and kind, rejections, how often a new epoch was asked for, the added latency of protect and
 * unprotect), and `rotate-wanted` when the counter nears its limit. Keys never leave this worker, and nothing here logs them.
 */

import { FrameProtector, NoSendKeyError, RejectedError, FRAME_REJECTIONS } from "./protector.js";
import { suiteById } from "./sframe.js";

/** @typedef {import('./format.js').MediaFormat} MediaFormat */
/** @typedef {"send" | "receive"} Side */
/** @typedef {"audio" | "video"} Kind */

/**
 * The parts of an encoded frame used here (RTCEncodedAudioFrame / RTCEncodedVideoFrame).
 * @typedef {{ data: ArrayBuffer, type?: string, getMetadata(): { mimeType?: string, payloadType?: number } }} EncodedFrame
 */

/** How often stats go to the page. */
const STATS_EVERY_MS = 500;
/** Latency samples kept per operation (the last ones). */
const LATENCY_SAMPLES = 2000;

/** @type {any} */
const scope = self;

let protector = new FrameProtector();
/** Whether the page was told that the counter nears its limit (once per send key). */
let rotationAsked = false;
/** How often the page was told so. */
let rotationsAsked = 0;
/** @type {Map<number, MediaFormat>} */
let payloadTypes = new Map();

/**
 * Counts of one direction and kind.
 * @typedef {object} FlowStats
 * @property {number} frames Frames seen.
 * @property {number} ok Protected (send) or opened (receive).
 * @property {number} droppedWithoutKey Send: dropped because no key was ready.
 * @property {number} rejected Receive: refused (see the reasons in `rejected`).
 * @property {number} unsupported Dropped: codec without an E2EE format, or a frame the format cannot take.
 * @property {string} codec The last frame's format.
 * @property {number | null} lastOkAt
 * @property {number | null} lastFrameAt
 */

/** @returns {FlowStats} */
const flow = () => ({ frames: 0, ok: 0, droppedWithoutKey: 0, rejected: 0, unsupported: 0, codec: "", lastOkAt: null, lastFrameAt: null });

/** @type {Record<Side, Record<Kind, FlowStats>>} */
const flows = {
  send: { audio: flow(), video: flow() },
  receive: { audio: flow(), video: flow() },
};

/** Transforms attached so far, per side and kind (a sender or receiver each). */
const attached = { send: { audio: 0, video: 0 }, receive: { audio: 0, video: 0 } };

/** Ring buffers of the added latency per frame, in ms. */
const latency = { protect: /** @type {number[]} */ ([]), unprotect: /** @type {number[]} */ ([]) };

/**
 * @param {number[]} samples
 * @param {number} value
 */
function sample(samples, value) {
  samples.push(value);
  if (samples.length > LATENCY_SAMPLES) samples.shift();
}

/**
 * Median and 99th percentile (nearest rank) of the samples, and their mean, in ms. Without
 * cross-origin isolation `performance.now()` is coarsened to 0.1 ms, so a median of 0.1 means
 * "at most about that"; the mean over many frames is finer.
 * @param {number[]} samples
 */
function summary(samples) {
  if (samples.length === 0) return { count: 0, median: null, p99: null, mean: null };
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = (/** @type {number} */ q) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
  const mean = sorted.reduce((sum, v) => sum + v, 0) / sorted.length;
  return { count: sorted.length, median: rank(0.5), p99: rank(0.99), mean };
}

/**
 * The frame format of a frame: audio is always wholly encrypted (`opus`); video by its MIME type
 * or payload type; null for a codec without an E2EE format (VP9, AV1: never negotiated with E2EE).
 * @param {EncodedFrame} frame
 * @param {Kind} kind
 * @returns {MediaFormat | null}
 */
function formatOf(frame, kind) {
  if (kind === "audio") return "opus";
  const metadata = frame.getMetadata();
  const mime = (metadata.mimeType ?? "").toLowerCase();
  if (mime === "video/vp8") return "vp8";
  if (mime === "video/h264") return "h264";
  if (mime) return null;
  return metadata.payloadType !== undefined ? payloadTypes.get(metadata.payloadType) ?? null : null;
}

/**
 * The frame's new payload as an ArrayBuffer of exactly its length.
 * @param {Uint8Array} bytes
 */
function exactBuffer(bytes) {
  return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? /** @type {ArrayBuffer} */ (bytes.buffer) : bytes.slice().buffer;
}

/**
 * A TransformStream that protects (send) or opens (receive) every frame of one kind.
 * @param {Side} side
 * @param {Kind} kind
 */
function frameTransform(side, kind) {
  const counts = flows[side][kind];
  return new TransformStream({
    /**
     * @param {EncodedFrame} frame
     * @param {TransformStreamDefaultController<EncodedFrame>} controller
     */
    async transform(frame, controller) {
      counts.frames += 1;
      counts.lastFrameAt = performance.now();
      const format = formatOf(frame, kind);
      if (!format) {
        counts.unsupported += 1;
        return;
      }
      counts.codec = format;
      const data = new Uint8Array(frame.data);
      const started = performance.now();
      try {
        if (side === "send") {
          const sealed = await protector.protect(format, data);
          sample(latency.protect, performance.now() - started);
          frame.data = exactBuffer(sealed);
          if (protector.rotateWanted && !rotationAsked) {
            rotationAsked = true;
            rotationsAsked += 1;
            scope.postMessage({ type: "rotate-wanted" });
          }
        } else {
          const opened = await protector.unprotect(format, data, performance.now());
          sample(latency.unprotect, performance.now() - started);
          frame.data = exactBuffer(opened);
        }
      } catch (err) {
        if (err instanceof NoSendKeyError) counts.droppedWithoutKey += 1;
        else if (err instanceof RejectedError) counts.rejected += 1;
        else counts.unsupported += 1;
        return;
      }
      counts.ok += 1;
      counts.lastOkAt = performance.now();
      controller.enqueue(frame);
    },
  });
}

/**
 * Run one sender's or receiver's frames through the transform.
 * @param {ReadableStream<EncodedFrame>} readable
 * @param {WritableStream<EncodedFrame>} writable
 * @param {{ side?: unknown, kind?: unknown }} options
 */
function attach(readable, writable, options) {
  const side = options.side === "send" ? "send" : options.side === "receive" ? "receive" : null;
  const kind = options.kind === "audio" ? "audio" : options.kind === "video" ? "video" : null;
  if (!side || !kind) return;
  attached[side][kind] += 1;
  readable.pipeThrough(frameTransform(side, kind)).pipeTo(writable).catch(() => {
    // The sender or receiver went away (track replaced, connection closed).
  });
}

// RTCRtpScriptTransform: one event per sender or receiver given a transform.
scope.onrtctransform = (/** @type {any} */ event) => {
  const transformer = event.transformer;
  attach(transformer.readable, transformer.writable, transformer.options ?? {});
};

scope.onmessage = async (/** @type {MessageEvent} */ event) => {
  const m = event.data;
  if (!m || typeof m !== "object") return;
  switch (m.type) {
    case "config":
      protector = new FrameProtector(m.config);
      break;
    case "codecs":
      payloadTypes = new Map(Object.entries(m.payloadTypes).map(([pt, codec]) => [Number(pt), /** @type {MediaFormat} */ (codec)]));
      break;
    case "send-key": {
      const suite = suiteById(m.suite);
      if (suite) await protector.setSendKey(suite, m.kid, m.epoch, m.baseKey);
      rotationAsked = false;
      scope.postMessage({ type: "installed", id: m.id });
      break;
    }
    case "receive-key": {
      const suite = suiteById(m.suite);
      if (suite) await protector.addReceiveKey(suite, m.kid, m.epoch, m.baseKey, performance.now());
      scope.postMessage({ type: "installed", id: m.id });
      break;
    }
    case "clear":
      protector.clear();
      break;
    case "streams":
      attach(m.readable, m.writable, m);
      break;
  }
};

/** Everything the page shows and tests read; times as "ms ago" (the page has its own clock). */
function stats() {
  const now = performance.now();
  const ago = (/** @type {number | null} */ t) => (t === null ? null : Math.round(now - t));
  /** @param {FlowStats} f */
  const view = (f) => ({ ...f, lastOkAt: undefined, lastFrameAt: undefined, lastOkAgoMs: ago(f.lastOkAt), lastFrameAgoMs: ago(f.lastFrameAt) });
  /** @type {Record<string, number>} */
  const rejected = {};
  for (const reason of FRAME_REJECTIONS) rejected[reason] = protector.stats.rejected[reason];
  return {
    send: { audio: view(flows.send.audio), video: view(flows.send.video) },
    receive: { audio: view(flows.receive.audio), video: view(flows.receive.video) },
    attached,
    rejected,
    droppedWithoutKey: protector.stats.droppedWithoutKey,
    sendEpoch: protector.stats.sendEpoch,
    receiveEpochs: protector.receiveEpochs,
    rotationsAsked,
    latency: { protect: summary(latency.protect), unprotect: summary(latency.unprotect) },
  };
}

setInterval(() => {
  protector.tick(performance.now());
  scope.postMessage({ type: "stats", stats: stats() });
}, STATS_EVERY_MS);
