// @ts-check
/**
 * The signaling WebSocket (`/api/v1/signal`): sends `join` on every (re)connection, keeps the
 * connection alive with `ping`, and reconnects with exponential back-off after a drop, resuming the
 * same place by sending the same `join` again (the service holds it for a grace period).
 */

import { PROTOCOL_VERSION } from "./protocol.js";

/** @typedef {import('./protocol.js').ClientMessage} ClientMessage */
/** @typedef {import('./protocol.js').ServerMessage} ServerMessage */

/**
 * `connecting`: first connection under way; `open`: joined; `reconnecting`: lost, trying again;
 * `closed`: for good (hung up, replaced, ended, refused).
 * @typedef {"connecting" | "open" | "reconnecting" | "closed"} SignalingState
 */

/** How long a liveness probe waits for any answer before the socket is taken for dead. */
const PROBE_TIMEOUT_MS = 1500;

/** Fatal error codes after which reconnecting can help. */
const RETRYABLE_FATAL = new Set(["heartbeat_timeout", "internal", "rate_limited"]);

/** Messages after which the service closes the connection and a reconnect must not follow. */
const TERMINAL = new Set(["consultation_ended", "replaced", "declined"]);

const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 15_000;

export class SignalingClient {
  /**
   * @param {object} options
   * @param {Extract<ClientMessage, { type: "join" }>} options.join The `join` message to (re)send.
   * @param {(message: ServerMessage) => void} options.onMessage Every message from the service.
   * @param {(state: SignalingState, detail?: string) => void} [options.onState]
   * @param {string} [options.url] Defaults to `/api/v1/signal` on this origin.
   */
  constructor({ join, onMessage, onState, url }) {
    this.join = join;
    this.onMessage = onMessage;
    this.onState = onState ?? (() => {});
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    this.url = url ?? `${scheme}//${location.host}/api/v1/signal`;
    /** @type {WebSocket | null} */
    this.ws = null;
    /** @type {SignalingState} */
    this.state = "connecting";
    this.attempt = 0;
    this.stopped = false;
    this.joined = false;
    /** @type {ReturnType<typeof setInterval> | undefined} */
    this.heartbeat = undefined;
    /** @type {Worker | null | undefined} Heartbeat ticker; null when workers are unavailable. */
    this.worker = undefined;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.retryTimer = undefined;
    this.lastMessageAt = 0;
    /** @type {ReturnType<typeof setTimeout> | undefined} A liveness probe waiting for an answer. */
    this.probeTimer = undefined;
    this.heartbeatMs = 15_000;
    this.onOnline = () => {
      if (this.state === "reconnecting" && this.retryTimer !== undefined) {
        clearTimeout(this.retryTimer);
        this.retryTimer = undefined;
        this.connect();
      }
    };
    window.addEventListener("online", this.onOnline);
  }

  /**
   * Check at once that the connection is alive: a media connection just dropped, and the network
   * may have changed under this socket too (a socket from an address that is gone hears nothing
   * until TCP gives up, minutes later). A ping goes out; if nothing at all is heard within
   * `PROBE_TIMEOUT_MS`, the socket is closed and a new one opened right away (a page too busy to
   * run its timer on time waits once more first). Once joined again, the call restarts ICE on
   * every connection that is down, and sends again any offer still unanswered.
   */
  probe() {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || !this.joined || this.probeTimer !== undefined) return;
    const sentAt = Date.now();
    this.rawSend({ type: "ping" });
    /**
     * @param {number} due When the timer was meant to fire.
     * @param {boolean} mayWaitAgain
     */
    const check = (due, mayWaitAgain) => {
      this.probeTimer = undefined;
      if (this.ws !== ws || this.lastMessageAt >= sentAt) return;
      // The timer itself came late: this page was too busy to run it (a starved machine), and
      // the answer may be queued behind it. Once, it waits that long again before deciding.
      if (mayWaitAgain && Date.now() - due > PROBE_TIMEOUT_MS / 2) {
        const again = Date.now() + PROBE_TIMEOUT_MS;
        this.probeTimer = setTimeout(() => check(again, false), PROBE_TIMEOUT_MS);
        return;
      }
      console.warn("No answer from the signaling service (the network may have changed); reconnecting now");
      this.replaceConnection("probe unanswered", "no answer from the signaling service");
    };
    this.probeTimer = setTimeout(() => check(sentAt + PROBE_TIMEOUT_MS, true), PROBE_TIMEOUT_MS);
  }

  /**
   * This device's network changed (its addresses did): the socket belongs to an address that may
   * be gone, so a new one is opened now instead of waiting for the old one to fall silent. The
   * same place is resumed with the same `join`.
   */
  reconnectNow() {
    if (this.stopped) return;
    if (this.retryTimer !== undefined) {
      clearTimeout(this.retryTimer);
      this.retryTimer = undefined;
    }
    this.replaceConnection("network changed", "this device's network changed");
  }

  /**
   * Close the current socket (if any) and open a new one at once.
   * @private
   * @param {string} closeReason Sent in the close frame.
   * @param {string} detail Said with the `reconnecting` state.
   */
  replaceConnection(closeReason, detail) {
    const ws = this.ws;
    this.ws = null;
    this.stopHeartbeat();
    if (this.probeTimer !== undefined) clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
    if (ws && (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING)) ws.close(4000, closeReason);
    this.attempt = 0;
    this.setState("reconnecting", detail);
    this.connect();
  }

  /** Open the connection (once; later connections are made by the client itself). */
  start() {
    this.connect();
  }

  /** @private */
  connect() {
    if (this.stopped) return;
    this.joined = false;
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      console.error("WebSocket could not be created", err);
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.rawSend(this.join);
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws) return;
      this.lastMessageAt = Date.now();
      /** @type {ServerMessage} */
      let message;
      try {
        if (typeof event.data !== "string") return;
        message = JSON.parse(event.data);
      } catch (err) {
        console.warn("Unreadable signaling message", err);
        return;
      }
      this.handle(message, ws);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.stopHeartbeat();
      if (this.stopped) {
        this.setState("closed");
      } else {
        console.info(`Signaling closed (code ${event.code}); reconnecting`);
        this.scheduleReconnect();
      }
    };
    ws.onerror = () => {
      // A close event follows; reconnecting is handled there.
    };
  }

  /**
   * @private
   * @param {ServerMessage} message
   * @param {WebSocket} ws
   */
  handle(message, ws) {
    if (message.type === "joined") {
      this.joined = true;
      this.attempt = 0;
      this.startHeartbeat(message.heartbeat_interval_ms);
      this.setState("open");
    } else if (TERMINAL.has(message.type)) {
      this.stopped = true;
    } else if (message.type === "error" && message.fatal) {
      if (!RETRYABLE_FATAL.has(message.code)) this.stopped = true;
    }
    try {
      this.onMessage(message);
    } finally {
      if (this.stopped && this.ws === ws && message.type !== "joined") {
        // The service closes the connection after these; make sure it is closed on our side too.
        setTimeout(() => {
          if (ws.readyState === WebSocket.OPEN) ws.close(1000);
        }, 1000);
      }
    }
  }

  /**
   * @private
   * @param {number} intervalMs
   */
  startHeartbeat(intervalMs) {
    this.stopHeartbeat();
    this.heartbeatMs = Math.max(1000, intervalMs || 15_000);
    this.lastMessageAt = Date.now();
    const tick = () => this.beat();
    // Tick from a worker when possible: a hidden tab's own timers are throttled.
    if (this.worker === undefined) {
      try {
        this.worker = new Worker("/assets/heartbeat-worker.js");
        this.worker.onerror = () => {
          this.worker?.terminate();
          this.worker = null;
          if (this.heartbeat === undefined && this.ws) this.heartbeat = setInterval(tick, this.heartbeatMs);
        };
      } catch {
        this.worker = null;
      }
    }
    if (this.worker) {
      this.worker.onmessage = tick;
      this.worker.postMessage({ intervalMs: this.heartbeatMs });
    } else {
      this.heartbeat = setInterval(tick, this.heartbeatMs);
    }
  }

  /** @private */
  beat() {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    // Nothing heard (not even a pong) for two and a half intervals: the connection is dead even
    // if the browser has not noticed. Close it and reconnect.
    if (Date.now() - this.lastMessageAt > this.heartbeatMs * 2.5) {
      console.warn("No answer from the signaling service; reconnecting");
      this.ws = null;
      this.stopHeartbeat();
      ws.close(4000, "heartbeat lost");
      this.scheduleReconnect();
      return;
    }
    this.rawSend({ type: "ping" });
  }

  /** @private */
  stopHeartbeat() {
    if (this.heartbeat !== undefined) clearInterval(this.heartbeat);
    this.heartbeat = undefined;
    if (this.worker) this.worker.postMessage({ stop: true });
  }

  /** @private */
  scheduleReconnect() {
    if (this.stopped) {
      this.setState("closed");
      return;
    }
    const base = Math.min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * 2 ** this.attempt);
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    this.attempt += 1;
    this.setState("reconnecting", `retry in ${delay} ms`);
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.connect();
    }, delay);
  }

  /**
   * @private
   * @param {SignalingState} state
   * @param {string} [detail]
   */
  setState(state, detail) {
    if (this.state === state && state !== "reconnecting") return;
    this.state = state;
    this.onState(state, detail);
  }

  /**
   * @private
   * @param {ClientMessage} message
   * @returns {boolean}
   */
  rawSend(message) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify({ v: PROTOCOL_VERSION, ...message }));
    return true;
  }

  /**
   * Send a message once joined. Messages sent while disconnected are dropped: after a reconnect,
   * the call renegotiates (ICE restart) instead of replaying stale descriptions.
   * @param {ClientMessage} message
   * @returns {boolean} Whether it was sent.
   */
  send(message) {
    if (!this.joined) return false;
    return this.rawSend(message);
  }

  /** Hang up: tell the service, then close for good. */
  leave() {
    this.rawSend({ type: "leave" });
    this.close();
  }

  /** Close for good without telling the service (it keeps the place for its grace period). */
  close() {
    this.stopped = true;
    this.stopHeartbeat();
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    window.removeEventListener("online", this.onOnline);
    if (this.probeTimer !== undefined) clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
    if (this.worker) this.worker.terminate();
    this.worker = null;
    const ws = this.ws;
    this.ws = null;
    if (ws && (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING)) ws.close(1000);
    this.setState("closed");
  }
}
