// @ts-check
/**
 * Automatic logoff in the page: what the person does keeps the session, nothing else does.
 *
 * The service ends a session that sees no activity for `session.idle_timeout` (15 minutes by
 * default). Polls and heartbeats never count as activity, so the page tells the service when the
 * person acts without changing anything: any key, click, touch, scroll or pointer movement is
 * reported with `POST /api/v1/auth/activity`, at most once a minute (or a quarter of the idle
 * timeout, if shorter; a trailing report keeps the last input of a busy interval). When the idle deadline the service gave has passed, the page asks
 * for its session (`GET`, which extends nothing): gone means it locks; still there (a call in
 * progress, or another tab's activity) means a new deadline to watch.
 */

import * as api from "./api.js";
import { ApiError } from "./api.js";

/** @typedef {import('./protocol.js').Session} Session */

/** What counts as the person doing something. */
const INPUT_EVENTS = ["pointerdown", "pointermove", "keydown", "wheel", "touchstart"];

/** How often, at most, the page reports activity. */
export const ACTIVITY_REPORT_INTERVAL_MS = 60_000;

/** How often, at least, the page may report activity (however short the timeout). */
const MIN_REPORT_INTERVAL_MS = 1000;

/** Check the session this long after the deadline, so that the service has passed it too. */
const CHECK_MARGIN_MS = 500;
/** The earliest a check follows the previous one (a page clock ahead of the service's). */
const MIN_CHECK_DELAY_MS = 1000;
/** The next check when the service still holds the session but the page's clock says expired. */
const SKEWED_CHECK_DELAY_MS = 5000;
/** How far the page's clock may be behind the service's when telling why a session ended. */
const IDLE_CLOCK_SLACK_MS = 5000;
/** The next check when the service could not be reached. */
const UNREACHABLE_CHECK_DELAY_MS = 10_000;

export class IdleWatch {
  /**
   * @param {{ onSession: (session: Session) => void, onExpired: () => void,
   *           reportIntervalMs?: number }} options
   *   `onSession`: the service answered with the session (a new idle deadline, a new CSRF token);
   *   `onExpired`: the session is gone — lock the page.
   */
  constructor({ onSession, onExpired, reportIntervalMs = ACTIVITY_REPORT_INTERVAL_MS }) {
    this.onSession = onSession;
    this.onExpired = onExpired;
    this.maxReportIntervalMs = reportIntervalMs;
    this.reportIntervalMs = reportIntervalMs;
    /** The longest time to the deadline seen: about the idle timeout. */
    this.idleSpanMs = 0;
    this.watching = false;
    /** Epoch ms of the idle deadline. */
    this.deadline = 0;
    this.lastReportAt = 0;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.reportTimer = undefined;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.checkTimer = undefined;
    this.onInput = () => this.inputSeen();
    this.onVisible = () => {
      if (this.watching && document.visibilityState === "visible" && Date.now() >= this.deadline) this.check();
    };
  }

  /**
   * Start (or keep) watching a session; a session from any answer of the service moves the
   * deadline.
   * @param {Session} session
   */
  watch(session) {
    if (!this.watching) {
      this.watching = true;
      // Signing in was activity: the next input within the interval need not be reported.
      this.lastReportAt = Date.now();
      for (const type of INPUT_EVENTS) window.addEventListener(type, this.onInput, { capture: true, passive: true });
      document.addEventListener("visibilitychange", this.onVisible);
    }
    this.deadline = Date.parse(session.idle_expires_at);
    // Report often enough for a short timeout too: four times per timeout. The longest time
    // left seen is the timeout (a deadline just moved), whatever the service's granularity.
    this.idleSpanMs = Math.max(this.idleSpanMs, this.deadline - Date.now());
    if (this.idleSpanMs > 0) {
      this.reportIntervalMs = Math.min(this.maxReportIntervalMs, Math.max(MIN_REPORT_INTERVAL_MS, this.idleSpanMs / 4));
    }
    this.scheduleCheck(this.deadline - Date.now() + CHECK_MARGIN_MS);
  }

  /**
   * Whether the idle deadline has passed (give or take the clocks' difference): a session found
   * ended now most likely ended for that.
   */
  idlePassed() {
    return this.deadline > 0 && Date.now() >= this.deadline - IDLE_CLOCK_SLACK_MS;
  }

  /** Stop watching: signed out, or locked. */
  stop() {
    this.watching = false;
    for (const type of INPUT_EVENTS) window.removeEventListener(type, this.onInput, { capture: true });
    document.removeEventListener("visibilitychange", this.onVisible);
    clearTimeout(this.reportTimer);
    clearTimeout(this.checkTimer);
    this.reportTimer = undefined;
    this.checkTimer = undefined;
  }

  /** @private */
  inputSeen() {
    if (!this.watching || this.reportTimer !== undefined) return;
    const wait = Math.max(0, this.lastReportAt + this.reportIntervalMs - Date.now());
    this.reportTimer = setTimeout(() => this.report(), wait);
  }

  /** @private */
  async report() {
    this.lastReportAt = Date.now();
    try {
      const session = await api.reportActivity();
      this.reportTimer = undefined;
      if (this.watching) this.onSession(session);
    } catch (err) {
      this.reportTimer = undefined;
      if (this.watching && err instanceof ApiError && err.status === 401) this.expired();
      // Otherwise (unreachable): the next input tries again.
    }
  }

  /**
   * @private
   * @param {number} delayMs
   */
  scheduleCheck(delayMs) {
    clearTimeout(this.checkTimer);
    this.checkTimer = setTimeout(() => this.check(), Math.max(MIN_CHECK_DELAY_MS, delayMs));
  }

  /** @private */
  async check() {
    clearTimeout(this.checkTimer);
    this.checkTimer = undefined;
    try {
      const session = await api.getSession();
      if (!this.watching) return;
      this.onSession(session);
      if (Date.parse(session.idle_expires_at) <= Date.now()) this.scheduleCheck(SKEWED_CHECK_DELAY_MS);
    } catch (err) {
      if (!this.watching) return;
      if (err instanceof ApiError && err.status === 401) this.expired();
      else this.scheduleCheck(UNREACHABLE_CHECK_DELAY_MS);
    }
  }

  /** @private */
  expired() {
    this.stop();
    this.onExpired();
  }
}
