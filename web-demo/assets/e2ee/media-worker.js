// @ts-check
/**
 * The page's side of one transform worker (`worker.js`): it starts the worker, gives senders and
 * receivers its transform (`RTCRtpScriptTransform`, or the streams of `createEncodedStreams()`
 * posted to it), tells it the payload types a connection negotiated, installs keys and waits for
 * the worker to confirm each, and keeps the worker's latest stats. One per peer connection: the
 * call's {@link import('./call-e2ee.js').E2eeLink} uses one both ways, the recorder's
 * {@link import('./recording-protection.js').RecordingProtection} one for sending only.
 */

/** @typedef {import('./protector.js').ProtectorConfig} ProtectorConfig */
/** @typedef {import('./sframe.js').Suite} Suite */

/** How long a key installation in the worker may take before the page gives up waiting for it. */
const INSTALL_TIMEOUT_MS = 5000;

/**
 * Which encoded-transform API this browser has.
 * @returns {"script-transform" | "encoded-streams" | null}
 */
export function transformApi() {
  if (typeof RTCRtpScriptTransform === "function") return "script-transform";
  const sender = /** @type {any} */ (globalThis.RTCRtpSender);
  if (sender && typeof sender.prototype.createEncodedStreams === "function") return "encoded-streams";
  return null;
}

/**
 * The peer connection's configuration needs for this browser: `encodedInsertableStreams` for
 * the older API (it must be set when the connection is made).
 */
export function transformConfiguration() {
  return transformApi() === "encoded-streams" ? { encodedInsertableStreams: true } : {};
}

/**
 * Payload type → frame format, from the `a=rtpmap` lines of SDPs (for frames whose metadata
 * carries no MIME type).
 * @param {(string | undefined)[]} sdps
 */
export function payloadTypesOf(sdps) {
  /** @type {Record<string, string>} */
  const map = {};
  for (const sdp of sdps) {
    for (const match of (sdp ?? "").matchAll(/^a=rtpmap:(\d+) (VP8|H264|opus)\//gim)) {
      map[match[1]] = match[2].toLowerCase();
    }
  }
  return map;
}

/**
 * A key for the worker: `send-key` protects from now on (the previous send key is dropped),
 * `receive-key` opens the other side's frames under `kid`.
 * @typedef {object} WorkerKey
 * @property {"send-key" | "receive-key"} kind
 * @property {bigint} kid The media KID.
 * @property {number} epoch
 * @property {Suite} suite
 * @property {CryptoKey} baseKey Non-extractable (HKDF).
 */

/**
 * One transform worker, seen from the page.
 */
export class MediaWorker {
  /**
   * A worker, or null when this browser cannot transform frames (then no media may flow).
   * @param {object} [options]
   * @param {string} [options.name] The worker's name (shown in developer tools).
   * @param {Partial<ProtectorConfig>} [options.config] The worker's protector settings.
   * @param {() => void} [options.onRotateWanted] The send counter nears its limit: start a new epoch.
   */
  static create(options = {}) {
    const api = transformApi();
    return api ? new MediaWorker(api, options) : null;
  }

  /**
   * @param {"script-transform" | "encoded-streams"} api
   * @param {object} options
   * @param {string} [options.name]
   * @param {Partial<ProtectorConfig>} [options.config]
   * @param {() => void} [options.onRotateWanted]
   * @private
   */
  constructor(api, { name = "consult-e2ee", config = {}, onRotateWanted = () => {} }) {
    this.api = api;
    this.onRotateWanted = onRotateWanted;
    this.closed = false;
    /** @type {any} The worker's latest stats (see `worker.js`), or null before the first. */
    this.stats = null;
    /** @type {Map<number, (installed: boolean) => void>} Installations the worker has not confirmed yet. */
    this.installs = new Map();
    this.nextInstall = 1;
    /** @type {WeakSet<RTCRtpSender | RTCRtpReceiver>} */
    this.transformed = new WeakSet();
    this.worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module", name });
    this.worker.onmessage = (event) => this.fromWorker(event.data);
    this.worker.onerror = (event) => console.error("E2EE worker error", event.message);
    // Before any key: the worker's protector is made anew with it.
    if (Object.keys(config).length > 0) this.worker.postMessage({ type: "config", config });
  }

  /**
   * Give a sender or receiver the worker's transform (once each). Do it before its first frame:
   * right after the transceiver is made, or in `track` for a receiver.
   * @param {RTCRtpSender | RTCRtpReceiver} endpoint
   * @param {"send" | "receive"} side
   * @param {"audio" | "video"} kind
   */
  attach(endpoint, side, kind) {
    if (this.closed || this.transformed.has(endpoint)) return;
    this.transformed.add(endpoint);
    const options = { side, kind };
    if (this.api === "script-transform") {
      endpoint.transform = new RTCRtpScriptTransform(this.worker, options);
    } else {
      const { readable, writable } = /** @type {any} */ (endpoint).createEncodedStreams();
      this.worker.postMessage({ type: "streams", side, kind, readable, writable }, [readable, writable]);
    }
  }

  /**
   * Attach the transform to every sender (and, unless `sendOnly`, every receiver) of a
   * connection that has none yet.
   * @param {RTCPeerConnection} pc
   * @param {{ sendOnly?: boolean }} [options]
   */
  attachAll(pc, { sendOnly = false } = {}) {
    for (const t of pc.getTransceivers()) {
      const kind = t.receiver.track.kind === "audio" ? "audio" : "video";
      this.attach(t.sender, "send", kind);
      if (!sendOnly) this.attach(t.receiver, "receive", kind);
    }
  }

  /**
   * Tell the worker the payload types of a connection's current descriptions (call it whenever
   * the connection is back to `stable`).
   * @param {RTCPeerConnection} pc
   */
  postCodecs(pc) {
    if (this.closed) return;
    const payloadTypes = payloadTypesOf([pc.currentLocalDescription?.sdp, pc.currentRemoteDescription?.sdp]);
    this.worker.postMessage({ type: "codecs", payloadTypes });
  }

  /**
   * Give a key to the worker; resolves once the worker can use it (or, after
   * {@link INSTALL_TIMEOUT_MS}, without it: false).
   * @param {WorkerKey} key
   * @returns {Promise<boolean>}
   */
  install(key) {
    if (this.closed) return Promise.resolve(false);
    const id = this.nextInstall++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.installs.delete(id);
        console.warn("E2EE: the worker did not confirm a key in time");
        resolve(false);
      }, INSTALL_TIMEOUT_MS);
      this.installs.set(id, (installed) => {
        clearTimeout(timer);
        resolve(installed);
      });
      this.worker.postMessage({ type: key.kind, id, kid: key.kid, epoch: key.epoch, suite: key.suite.id, baseKey: key.baseKey });
    });
  }

  /**
   * @private
   * @param {any} m
   */
  fromWorker(m) {
    if (!m || typeof m !== "object" || this.closed) return;
    if (m.type === "stats") {
      this.stats = m.stats;
    } else if (m.type === "installed") {
      this.installs.get(m.id)?.(true);
      this.installs.delete(m.id);
    } else if (m.type === "rotate-wanted") {
      this.onRotateWanted();
    }
  }

  /** Forget every key (key agreement stopped): frames are dropped until new keys come. */
  clearKeys() {
    if (!this.closed) this.worker.postMessage({ type: "clear" });
  }

  /** End the worker: its keys go with it. The last stats stay readable. */
  terminate() {
    if (this.closed) return;
    this.closed = true;
    this.worker.terminate();
    for (const done of this.installs.values()) done(false);
    this.installs.clear();
  }
}
