// @ts-check
/**
 * End-to-end encryption of a call in the page: one {@link E2eeCall} per call, which owns one key
 * schedule per other participant (keys are agreed per pair: in a group call every pair of
 * participants has its own keys, its own security code and its own epochs, which go on across the
 * pair's connections), and one {@link E2eeLink} per peer connection (its transform worker, its
 * `consult-e2ee` channels, the data protector of its chat and file channels).
 *
 * Why per pair in a group (a full mesh, where every connection carries its own copy of each frame
 * anyway): nobody can forge another member's frames (with one group key anyone could), no counter
 * is shared across connections, someone who joins gets keys only from then on, and someone who
 * leaves never held the keys of the pairs they were not part of — what the others send after they
 * left is under keys they never had. Verification is per pair: each participant compares one code
 * with each other participant.
 *
 * What the link does to a connection (`call.js` calls it):
 * - every sender and receiver, including ones added later, gets the worker's transform
 *   (`RTCRtpScriptTransform`, or `createEncodedStreams()` posted to the same worker);
 * - video is negotiated as VP8 or H.264 only (the codecs with an E2EE frame format);
 * - the `consult-e2ee` channel carries the key schedule; chat and file channels are wrapped in
 *   {@link SealedChannel}s.
 *
 * The lock badge shows only while every flowing track, both ways, is protected: each kind this
 * side sends was protected within {@link RECENT_MS}, and each kind that arrives was opened within
 * it. When the browser cannot transform frames, or no hello comes from the peer within
 * {@link HELLO_TIMEOUT_MS} of connecting, the call carries no media and says why.
 */

import { MediaWorker, transformApi, transformConfiguration } from "./media-worker.js";
import { DEFAULT_PROTECTOR_CONFIG, FrameProtector, protectMessage, unprotectMessage, RejectedError } from "./protector.js";
import { DEFAULT_SCHEDULE_CONFIG, fingerprintFromSdp, KeySchedule } from "./schedule.js";
import { SealedChannel } from "./sealed-channel.js";

/** @typedef {import('./schedule.js').KeyEvent} KeyEvent */
/** @typedef {import('./schedule.js').ScheduleConfig} ScheduleConfig */
/** @typedef {import('./protector.js').ProtectorConfig} ProtectorConfig */

/** A flow counts as protected when its last protected (or opened) frame is at most this old. */
const RECENT_MS = 2000;
/** How long after connecting the peer's hello may take before the call is refused as not E2EE. */
export const HELLO_TIMEOUT_MS = 10_000;
/** How long a key channel may be open before both DTLS fingerprints are known. */
const FINGERPRINT_WAIT_MS = 5000;

/**
 * Why an E2EE call carries no media: `browser-unsupported` (no encoded-transform API here),
 * `peer-unsupported` (no hello from the other side), `keys-failed` (keys could not be agreed),
 * `key-check-failed` (the other side's key did not match its commitment, or came before it:
 * someone may be in the middle), `peer-key-check-failed` (the other side found that of ours).
 * @typedef {"browser-unsupported" | "peer-unsupported" | "keys-failed" | "key-check-failed" | "peer-key-check-failed"} E2eeProblem
 */

/**
 * What the page shows about one other participant.
 * @typedef {object} E2eePeerView
 * @property {string} peerId
 * @property {boolean} linked A connection to this participant exists (keys are being agreed or are).
 * @property {string | null} sas "1234 5678" once keys are agreed with this participant.
 * @property {boolean} badge Every flowing track both ways with this participant is protected, now.
 * @property {E2eeProblem | null} problem
 */

/**
 * What the page shows.
 * @typedef {object} E2eeView
 * @property {boolean} enabled
 * @property {boolean} linked A connection to another participant exists.
 * @property {string | null} sas With exactly one other participant: the code, once agreed; else null.
 * @property {boolean} badge There is a connection, and every flowing track of every connection,
 *   both ways, is protected, now.
 * @property {E2eeProblem | null} problem The first problem of any connection (or this browser's).
 * @property {E2eePeerView[]} peers One per connection, in the order they were made.
 */

export { transformApi };

/** Video codecs with an E2EE frame format, and what travels with them. */
const E2EE_VIDEO_CODECS = ["video/vp8", "video/h264", "video/rtx", "video/red", "video/ulpfec", "video/flexfec-03"];

/**
 * The video codec a developer or test asked for (`localStorage["consult.videoCodec"]`: `vp8` or
 * `h264`), or null.
 * @returns {"vp8" | "h264" | null}
 */
export function preferredVideoCodec() {
  try {
    const value = localStorage.getItem("consult.videoCodec");
    return value === "vp8" || value === "h264" ? value : null;
  } catch {
    return null;
  }
}

/**
 * Faster rotation a developer or test asked for, read when a call starts:
 * `localStorage["consult.e2eeRotateMs"]` (start a new epoch this often, in ms) and
 * `localStorage["consult.e2eeMaxCounter"]` (ask for a new epoch when a send counter reaches this).
 * Each must be a whole number from 1 up to the default (10 minutes, 2^32): a setting can only make
 * keys change more often. Anything else is ignored.
 * @returns {{ rotateEveryMs?: number, maxCounter?: number }}
 */
export function rotationOverrides() {
  /**
   * @param {string} key
   * @param {number} max
   */
  const read = (key, max) => {
    try {
      const text = localStorage.getItem(key);
      const value = text !== null && /^[0-9]{1,10}$/.test(text) ? Number(text) : NaN;
      return value >= 1 && value <= max ? value : undefined;
    } catch {
      return undefined;
    }
  };
  const rotateEveryMs = read("consult.e2eeRotateMs", DEFAULT_SCHEDULE_CONFIG.rotateEveryMs);
  const maxCounter = read("consult.e2eeMaxCounter", DEFAULT_PROTECTOR_CONFIG.maxCounter);
  return { ...(rotateEveryMs ? { rotateEveryMs } : {}), ...(maxCounter ? { maxCounter } : {}) };
}

/**
 * Restrict a video transceiver to the codecs with an E2EE format (with E2EE) and put the
 * preferred codec first (when one is set). Without either, nothing changes.
 * @param {RTCRtpTransceiver} transceiver
 * @param {boolean} e2ee
 * @param {"vp8" | "h264" | null} [preferred] The codec to put first; by default the one a developer
 *   or test asked for ({@link preferredVideoCodec}).
 */
export function applyVideoCodecPreferences(transceiver, e2ee, preferred = preferredVideoCodec()) {
  if (!e2ee && !preferred) return;
  const capabilities = RTCRtpReceiver.getCapabilities("video");
  if (!capabilities || typeof transceiver.setCodecPreferences !== "function") return;
  let codecs = capabilities.codecs;
  if (e2ee) codecs = codecs.filter((c) => E2EE_VIDEO_CODECS.includes(c.mimeType.toLowerCase()));
  if (preferred) {
    const first = `video/${preferred}`;
    codecs = [...codecs.filter((c) => c.mimeType.toLowerCase() === first), ...codecs.filter((c) => c.mimeType.toLowerCase() !== first)];
  }
  try {
    transceiver.setCodecPreferences(codecs);
  } catch (err) {
    console.warn("Could not set the video codec preferences", err);
  }
}

/**
 * End-to-end encryption of one call (one participant's page).
 */
export class E2eeCall {
  /**
   * @param {object} options
   * @param {string} options.localId This participant's id.
   * @param {(view: E2eeView) => void} options.onView A code, badge or problem changed.
   * @param {Partial<ScheduleConfig>} [options.config] Over the defaults and {@link rotationOverrides}.
   */
  constructor({ localId, onView, config }) {
    this.localId = localId;
    this.onView = onView;
    const { maxCounter, ...scheduleOverrides } = rotationOverrides();
    /** @type {Partial<ScheduleConfig>} */
    this.scheduleConfig = { ...scheduleOverrides, ...config };
    /** @type {Map<string, KeySchedule>} One per other participant, kept across their connections. */
    this.schedules = new Map();
    /** @type {Partial<ProtectorConfig>} Of every link's protectors: the worker's and the page's. */
    this.protectorConfig = maxCounter ? { maxCounter } : {};
    this.api = transformApi();
    /** @type {Map<string, E2eeLink>} The live link to each participant. */
    this.links = new Map();
    /** @type {Map<string, E2eePeerView>} What is shown per participant with a link. */
    this.peerViews = new Map();
    /** @type {E2eeView} */
    this.view = { enabled: true, linked: false, sas: null, badge: false, problem: this.api ? null : "browser-unsupported", peers: [] };
    this.closed = false;
    /**
     * @type {Map<string, Promise<void>>} Per participant, serializes everything that touches
     * their schedule, across their connections: a replaced connection's late work must never
     * interleave with its successor's. Participants do not wait for each other (one connection
     * still waiting for its fingerprints holds up no other pair).
     */
    this.queues = new Map();
    this.exposeHook();
    // After the constructor returns, so that the caller has its reference to this call.
    queueMicrotask(() => {
      if (!this.closed) this.onView(this.copyView());
    });
  }

  /** Whether media may flow at all: the browser can protect it. */
  get canTransform() {
    return this.api !== null;
  }

  /**
   * The key schedule with one participant (made on first use, kept across their connections).
   * @param {string} peerId
   */
  scheduleFor(peerId) {
    let schedule = this.schedules.get(peerId);
    if (!schedule) {
      schedule = new KeySchedule(this.localId, this.scheduleConfig);
      this.schedules.set(peerId, schedule);
    }
    return schedule;
  }

  /**
   * A new peer connection: its E2EE (the previous link with the same participant, if any, is over).
   * @param {RTCPeerConnection} pc
   * @param {string} peerId
   */
  newLink(pc, peerId) {
    this.links.get(peerId)?.close();
    const link = new E2eeLink(this, pc, peerId, this.scheduleFor(peerId));
    this.links.set(peerId, link);
    this.peerViews.set(peerId, { peerId, linked: true, sas: null, badge: false, problem: this.api ? null : "browser-unsupported" });
    this.refresh();
    return link;
  }

  /**
   * A link ended (closed or replaced).
   * @param {E2eeLink} link
   */
  linkClosed(link) {
    if (this.links.get(link.peerId) !== link) return;
    this.links.delete(link.peerId);
    this.peerViews.delete(link.peerId);
    this.refresh();
  }

  /**
   * A participant left the call: their schedule is forgotten with its keys (should they come back,
   * keys are agreed afresh, with a new code).
   * @param {string} peerId
   */
  forgetPeer(peerId) {
    this.links.get(peerId)?.close();
    this.schedules.get(peerId)?.disconnect();
    this.schedules.delete(peerId);
    this.queues.delete(peerId);
  }

  /**
   * Someone joined or left: the keys with everyone else start a new epoch, so that the keys in use
   * change with the call's membership. (Keys are per pair: who left never held the others' keys and
   * who joins gets none of the earlier ones; this keeps "a new epoch whenever someone joins or
   * leaves" true of every pair as well.) A link still agreeing keys starts with a fresh epoch anyway.
   * @param {string} changed The participant who joined or left.
   */
  newEpochWithEveryoneBut(changed) {
    for (const link of this.links.values()) {
      if (link.peerId !== changed && link.schedule.sas !== null) void link.rotateNow();
    }
  }

  /**
   * What changed about one participant's link.
   * @param {E2eeLink} link
   * @param {Partial<E2eePeerView>} change
   */
  updatePeer(link, change) {
    if (this.links.get(link.peerId) !== link) return;
    const before = this.peerViews.get(link.peerId);
    if (!before) return;
    this.peerViews.set(link.peerId, { ...before, ...change, peerId: link.peerId });
    this.refresh();
  }

  /**
   * The view from the links' views; told to the page when it changed.
   * @private
   */
  refresh() {
    const peers = [...this.peerViews.values()];
    const browserProblem = this.api ? null : "browser-unsupported";
    /** @type {E2eeView} */
    const next = {
      enabled: true,
      linked: peers.length > 0,
      sas: peers.length === 1 ? peers[0].sas : null,
      badge: peers.length > 0 && peers.every((p) => p.badge),
      problem: browserProblem ?? peers.find((p) => p.problem)?.problem ?? null,
      peers,
    };
    if (JSON.stringify(next) === JSON.stringify(this.view)) return;
    this.view = next;
    if (!this.closed) this.onView(this.copyView());
  }

  /** @private */
  copyView() {
    return { ...this.view, peers: this.view.peers.map((p) => ({ ...p })) };
  }

  /**
   * Run `task` after every task queued before it for the same participant's schedule.
   * @param {string} peerId
   * @param {() => Promise<void>} task
   */
  enqueue(peerId, task) {
    const queued = (this.queues.get(peerId) ?? Promise.resolve()).then(task).catch((err) => {
      if (!(err instanceof RejectedError)) console.error("E2EE error", err);
    });
    this.queues.set(peerId, queued);
    return queued;
  }

  /** Start a new epoch now with everyone (the test hook; the schedules also rotate by themselves). */
  async rotateNow() {
    await Promise.all([...this.links.values()].map((link) => link.rotateNow()));
  }

  /**
   * What tests and curious people may read (never a key): per participant, and for the first
   * link at the top level (a 1:1 call has just that one).
   */
  snapshot() {
    /** @type {Record<string, ReturnType<E2eeLink["snapshot"]>>} */
    const peers = {};
    for (const [peerId, link] of this.links) peers[peerId] = link.snapshot();
    const first = [...this.links.values()][0] ?? null;
    const firstSnapshot = first ? peers[first.peerId] : null;
    return {
      enabled: true,
      api: this.api,
      sas: this.view.sas,
      badge: this.view.badge,
      problem: this.view.problem,
      epochs: firstSnapshot ? firstSnapshot.epochs : { send: 0, announced: 0, receive: 0 },
      keyRejections: firstSnapshot ? firstSnapshot.keyRejections : {},
      rotation: {
        everyMs: first ? first.schedule.config.rotateEveryMs : new KeySchedule(this.localId, this.scheduleConfig).config.rotateEveryMs,
        maxCounter: this.protectorConfig.maxCounter ?? DEFAULT_PROTECTOR_CONFIG.maxCounter,
      },
      data: firstSnapshot ? firstSnapshot.data : null,
      worker: firstSnapshot ? firstSnapshot.worker : null,
      peers,
    };
  }

  /** @private */
  exposeHook() {
    const call = this;
    /** @type {any} */ (window).consultE2ee = Object.freeze({
      get enabled() {
        return !call.closed;
      },
      snapshot: () => (call.closed ? null : call.snapshot()),
      rotateNow: () => call.rotateNow(),
    });
  }

  close() {
    this.closed = true;
    for (const link of [...this.links.values()]) link.close();
    this.links.clear();
    for (const schedule of this.schedules.values()) schedule.disconnect();
    this.schedules.clear();
    const w = /** @type {any} */ (window);
    if (w.consultE2ee && w.consultE2ee.enabled === false) w.consultE2ee = null;
  }
}

/**
 * End-to-end encryption of one peer connection.
 */
export class E2eeLink {
  /**
   * @param {E2eeCall} call
   * @param {RTCPeerConnection} pc
   * @param {string} peerId
   * @param {KeySchedule} schedule The key schedule with this participant.
   */
  constructor(call, pc, peerId, schedule) {
    this.call = call;
    this.pc = pc;
    this.peerId = peerId;
    this.schedule = schedule;
    this.closed = false;
    /** The transform worker of this connection's media, both ways (null: this browser has none). */
    this.media = call.api ? MediaWorker.create({ config: call.protectorConfig, onRotateWanted: () => this.requestRotation() }) : null;
    this.data = new FrameProtector(call.protectorConfig);
    /** @type {Set<RTCDataChannel>} */
    this.keyChannels = new Set();
    /** @type {RTCDataChannel[]} Open key channels, in the order they opened. */
    this.openKeyChannels = [];
    /** @type {Set<SealedChannel>} */
    this.sealed = new Set();
    this.connected = false;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.scheduleTimer = undefined;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.helloTimer = undefined;
    this.watchConnection = () => this.connectionChanged();
    pc.addEventListener("connectionstatechange", this.watchConnection);
    this.watchNegotiation = () => this.postCodecs();
    pc.addEventListener("signalingstatechange", this.watchNegotiation);
    this.badgeTimer = setInterval(() => this.refreshBadge(), 500);
  }

  /** Whether this link's media can be protected (else no media may flow). */
  get canTransform() {
    return this.media !== null && !this.media.closed;
  }

  /** The worker's latest stats (its last ones once the link is closed), or null. */
  get workerStats() {
    return this.media ? this.media.stats : null;
  }

  /**
   * The peer connection's configuration needs for this browser: `encodedInsertableStreams` for
   * the older API (it must be set when the connection is made).
   */
  static configuration() {
    return transformConfiguration();
  }

  /**
   * Give a sender or receiver the worker's transform (once each).
   * @param {RTCRtpSender | RTCRtpReceiver} endpoint
   * @param {"send" | "receive"} side
   * @param {"audio" | "video"} kind
   */
  attach(endpoint, side, kind) {
    if (!this.closed) this.media?.attach(endpoint, side, kind);
  }

  /** Attach transforms to every sender and receiver of the connection that has none yet. */
  attachAll() {
    if (!this.closed) this.media?.attachAll(this.pc);
  }

  /**
   * A `consult-e2ee` channel of this connection (created here or announced).
   * @param {RTCDataChannel} channel
   */
  takeKeyChannel(channel) {
    // Without a way to protect media, no hello: the other side then tells its person why.
    if (this.closed || !this.media || this.keyChannels.has(channel)) return;
    this.keyChannels.add(channel);
    const opened = () => {
      if (this.closed) return;
      this.openKeyChannels = [...this.openKeyChannels.filter((c) => c !== channel), channel];
      if (!this.connected) {
        this.connected = true;
        this.enqueue(() => this.connectSchedule());
      }
    };
    channel.onopen = opened;
    channel.onclose = () => {
      this.openKeyChannels = this.openKeyChannels.filter((c) => c !== channel);
    };
    channel.onmessage = (event) => {
      if (this.closed) return;
      const text = event.data;
      if (typeof text !== "string") {
        // Binary frames are not key messages: count as malformed through the schedule.
        this.enqueue(() => this.handleKeyMessage(""));
        return;
      }
      this.enqueue(() => this.handleKeyMessage(text));
    };
    if (channel.readyState === "open") opened();
  }

  /**
   * Wrap a chat or file channel of this connection.
   * @param {RTCDataChannel} channel
   */
  seal(channel) {
    const sealed = new SealedChannel(channel, {
      canSend: () => !this.closed && this.data.send !== null,
      seal: (binary, bytes) => protectMessage(this.data, binary, bytes),
      open: (bytes) => unprotectMessage(this.data, bytes, performance.now()),
      refusedUnprotected: () => {
        this.data.noteUnprotected();
        console.warn(`Refused a message on ${channel.label} that was not end-to-end encrypted`);
      },
    });
    this.sealed.add(sealed);
    return sealed;
  }

  /** Whether this is the live link with its participant. */
  get current() {
    return !this.closed && this.call.links.get(this.peerId) === this;
  }

  /**
   * @private
   * @param {Partial<E2eePeerView>} change
   */
  update(change) {
    this.call.updatePeer(this, change);
  }

  /**
   * Queue schedule work of this link; it is skipped once the link is closed or replaced.
   * @private
   * @param {() => Promise<void>} task
   */
  enqueue(task) {
    return this.call.enqueue(this.peerId, async () => {
      if (!this.current) return;
      await task();
    });
  }

  /**
   * This connection's DTLS fingerprints, local and remote, from its session descriptions.
   * @private
   */
  fingerprints() {
    return {
      local: fingerprintFromSdp(this.pc.currentLocalDescription?.sdp ?? this.pc.localDescription?.sdp),
      remote: fingerprintFromSdp(this.pc.currentRemoteDescription?.sdp ?? this.pc.remoteDescription?.sdp),
    };
  }

  /** @private */
  async connectSchedule() {
    let { local, remote } = this.fingerprints();
    // Both descriptions are normally set long before a channel opens; if not yet, wait a little
    // (key messages queued behind this task wait too, so none is refused for coming early).
    for (let waited = 0; (!local || !remote) && waited < FINGERPRINT_WAIT_MS && !this.closed; waited += 100) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      ({ local, remote } = this.fingerprints());
    }
    if (this.closed) return;
    if (!local || !remote) {
      console.error(
        `E2EE: no DTLS fingerprint (local ${!!local}, remote ${!!remote}; signaling ${this.pc.signalingState}, ` +
          `descriptions ${!!this.pc.currentLocalDescription}/${!!this.pc.localDescription} ${!!this.pc.currentRemoteDescription}/${!!this.pc.remoteDescription}, closed ${this.closed})`,
      );
      this.update({ problem: "keys-failed" });
      return;
    }
    await this.schedule.connect(performance.now(), this.peerId, local, remote);
    // Closed meanwhile: the close already disconnected the schedule, and this hello must not go.
    if (this.closed) {
      this.schedule.disconnect();
      return;
    }
    await this.drain();
  }

  /**
   * @private
   * @param {string} text
   */
  async handleKeyMessage(text) {
    try {
      await this.schedule.handleMessage(performance.now(), text);
    } catch (err) {
      if (err instanceof RejectedError) console.warn(`E2EE: key message refused (${err.reason})`);
      else throw err;
    } finally {
      await this.drain();
    }
  }

  /** Start a new epoch now. */
  rotateNow() {
    return this.enqueue(async () => {
      await this.schedule.rotate(performance.now());
      await this.drain();
    });
  }

  /**
   * Carry out the schedule's outputs in order: keys are installed before what follows goes out.
   * @private
   */
  async drain() {
    const schedule = this.schedule;
    for (let out = schedule.pollOutput(); out; out = schedule.pollOutput()) {
      if (this.closed) return;
      if (out.type === "send") {
        // Always the earliest key channel still open: when both sides created one (glare), every
        // message still goes on one channel, so they arrive in the order they were sent (a reveal
        // on a second channel could overtake its commitment on the first, and be refused).
        const channel = this.openKeyChannels[0];
        if (channel && channel.readyState === "open") channel.send(out.text);
        continue;
      }
      const event = out.event;
      if (event.kind === "sas") {
        if (this.helloTimer !== undefined) clearTimeout(this.helloTimer);
        this.update({ sas: event.sas, problem: this.call.api ? null : "browser-unsupported" });
      } else if (event.kind === "aborted") {
        if (this.helloTimer !== undefined) clearTimeout(this.helloTimer);
        console.error(`E2EE: key agreement stopped (${event.reason}, ${event.byRemote ? "by the other side" : "here"})`);
        // Whatever keys went to the protectors go too: nothing is sent or opened on this connection.
        this.media?.clearKeys();
        this.data.clear();
        this.update({ sas: null, badge: false, problem: event.byRemote ? "peer-key-check-failed" : "key-check-failed" });
      } else if (event.kind === "send-key") {
        await this.install(event);
        await this.data.setSendKey(event.suite, event.dataKid, event.epoch, event.baseKey);
        for (const s of this.sealed) s.announceOpen();
      } else {
        await this.install(event);
        await this.data.addReceiveKey(event.suite, event.dataKid, event.epoch, event.baseKey, performance.now());
      }
    }
    this.armScheduleTimer();
  }

  /**
   * Give a key to the worker and wait until it can use it.
   * @private
   * @param {KeyEvent} event
   */
  async install(event) {
    await this.media?.install({ kind: event.kind, kid: event.mediaKid, epoch: event.epoch, suite: event.suite, baseKey: event.baseKey });
  }

  /** @private */
  armScheduleTimer() {
    if (this.scheduleTimer !== undefined) clearTimeout(this.scheduleTimer);
    this.scheduleTimer = undefined;
    if (this.closed) return;
    const at = this.schedule.nextTimeout();
    if (at === null) return;
    // Timers may fire late, never early; cap the wait so a sleeping tab catches up soon after.
    const wait = Math.min(Math.max(0, at - performance.now()), 60_000);
    this.scheduleTimer = setTimeout(() => {
      this.enqueue(async () => {
        await this.schedule.handleTimeout(performance.now());
        await this.drain();
      });
    }, wait);
  }

  /** @private */
  requestRotation() {
    if (this.closed) return;
    this.schedule.requestRotation();
    this.enqueue(async () => {
      await this.schedule.handleTimeout(performance.now());
      await this.drain();
    });
  }

  /** @private */
  connectionChanged() {
    if (this.closed) return;
    // This browser's own shortcoming (no worker) is the reason shown then, not the other side's.
    if (this.media && this.pc.connectionState === "connected" && this.helloTimer === undefined && !this.schedule.sas) {
      this.helloTimer = setTimeout(() => {
        if (this.current && !this.schedule.sas && !this.schedule.aborted) {
          console.warn("E2EE: no key agreement with the other side");
          this.update({ problem: "peer-unsupported" });
        }
      }, HELLO_TIMEOUT_MS);
    }
  }

  /** @private */
  postCodecs() {
    if (this.closed || !this.media || this.pc.signalingState !== "stable") return;
    this.media.postCodecs(this.pc);
    this.attachAll();
  }

  /** @private */
  refreshBadge() {
    if (!this.current) return;
    if (this.data.rotateWanted) this.requestRotation();
    this.data.tick(performance.now());
    this.update({ badge: this.allProtected() });
  }

  /**
   * Whether every flowing track, both ways, is protected now.
   * @private
   */
  allProtected() {
    const stats = this.workerStats;
    if (!stats || !this.schedule.sas || this.pc.connectionState !== "connected") return false;
    const recent = (/** @type {number | null} */ ago) => ago !== null && ago < RECENT_MS;
    /** @type {("audio" | "video")[]} */
    const kinds = ["audio", "video"];
    // Sending: every kind with a live local track was protected recently.
    const sending = this.pc.getSenders().filter((s) => s.track && s.track.readyState === "live");
    if (sending.length === 0 && this.pc.getSenders().some((s) => s.track)) return false;
    for (const s of sending) {
      const kind = s.track && s.track.kind === "audio" ? "audio" : "video";
      if (!recent(stats.send[kind].lastOkAgoMs)) return false;
    }
    // Receiving: every kind that arrives was opened recently, and something arrives.
    let receiving = 0;
    for (const kind of kinds) {
      const flow = stats.receive[kind];
      if (!recent(flow.lastFrameAgoMs)) continue;
      if (!recent(flow.lastOkAgoMs)) return false;
      receiving += 1;
    }
    return receiving > 0;
  }

  /** What tests and curious people may read of this link (never a key). */
  snapshot() {
    return {
      sas: this.schedule.sas,
      epochs: { send: this.schedule.stats.sendEpoch, announced: this.schedule.stats.announcedEpoch, receive: this.schedule.stats.receiveEpoch },
      keyRejections: { ...this.schedule.stats.rejected },
      data: this.dataStats(),
      worker: this.workerStats,
    };
  }

  /** Counters of the chat and file channels. */
  dataStats() {
    return {
      protected: this.data.stats.protected,
      opened: this.data.stats.opened,
      rejected: { ...this.data.stats.rejected },
      sendEpoch: this.data.stats.sendEpoch,
      receiveEpochs: this.data.receiveEpochs,
    };
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.badgeTimer);
    if (this.scheduleTimer !== undefined) clearTimeout(this.scheduleTimer);
    if (this.helloTimer !== undefined) clearTimeout(this.helloTimer);
    this.pc.removeEventListener("connectionstatechange", this.watchConnection);
    this.pc.removeEventListener("signalingstatechange", this.watchNegotiation);
    for (const channel of this.keyChannels) {
      channel.onopen = null;
      channel.onclose = null;
      channel.onmessage = null;
    }
    this.keyChannels.clear();
    this.openKeyChannels = [];
    this.sealed.clear();
    this.data.clear();
    // Ending the worker erases its keys with it.
    this.media?.terminate();
    if (this.call.links.get(this.peerId) === this) this.schedule.disconnect();
    this.call.linkClosed(this);
  }
}
