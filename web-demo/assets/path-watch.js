// @ts-check
/**
 * How a page learns soon that its network changed under a call.
 *
 * A page cannot see its interfaces, and the browser tells it nothing when an address goes: no
 * event fires, the connection stays "connected" for seconds, sends still count as sent. What it
 * can see is that nothing arrives any more. So each connection samples the bytes it received a
 * few times a second (`PathWatch`, the decision alone, unit-tested in `path-watch.test.mjs`):
 *
 * - after `SILENT_MS` of nothing the page looks at which addresses this device has now
 *   (`hostAddresses`: a throwaway connection gathers host candidates, asks no server and sends
 *   nothing), and again every `LOOK_EVERY_MS` while the silence lasts (`AddressWatch`). Once a
 *   look shows an address the last one did not have, the browser knows the new network: the
 *   call reconnects signaling and restarts ICE right away (a restart before that would gather
 *   on the old network only);
 * - after `QUIET_MS` of nothing the signaling connection is probed, as before: the path may be
 *   gone some other way;
 * - when bytes come again after at least `QUIET_MS` of nothing (a link that was down), the other
 *   side's decoder has most likely lost pictures too, so the camera sends a fresh one rather than
 *   wait for the other side to ask (Chromium asks only after 3 s without a decodable frame).
 *   Not after shorter gaps: a link under a tight cap has them often, and a key frame each time
 *   would choke it further.
 */

/** While a connection is silent, this device's addresses are looked at this often. */
export const LOOK_EVERY_MS = 250;

/**
 * How long to pause after a look that took `lookMs` before the next one: the rest of
 * `LOOK_EVERY_MS`, or twice the look's time if that is longer. On a busy machine a look (a
 * connection made, gathered and closed: calls that wait on the browser's WebRTC threads) can
 * take hundreds of milliseconds, and a starved page hears nothing for a while on every
 * connection, so it looks again and again: paced like this, looking never takes more than a
 * third of the page's time.
 * @param {number} lookMs
 */
export function pauseAfterLookMs(lookMs) {
  return Math.max(LOOK_EVERY_MS - lookMs, 2 * lookMs);
}

/** At most this long of looking per silence (the signaling probe and ICE take over after). */
export const LOOK_FOR_MS = 10_000;

/** Nothing received for this long: check whether this device's addresses changed. */
export const SILENT_MS = 500;

/**
 * Nothing received for this long: the path is in trouble even if the addresses are the same; the
 * browser may take several more seconds to call the connection disconnected. Audio alone sends
 * dozens of packets a second, and RTCP flows even in silence.
 */
export const QUIET_MS = 2000;

/** How often a connected connection samples what it received. */
export const SAMPLE_EVERY_MS = 250;

/**
 * @typedef {"silent" | "quiet" | "back"} PathEvent
 * `silent`: nothing for `SILENT_MS`; `quiet`: nothing for `QUIET_MS`; `back`: bytes again after
 * at least `QUIET_MS` of nothing. Each at most once per silence.
 */

/** The received-bytes decision of one connection (no browser API). */
export class PathWatch {
  /** @param {number} now Milliseconds. */
  constructor(now) {
    /** @type {number | null} The last sample's count (null: none yet, or not connected). */
    this.bytes = null;
    this.lastHeardAt = now;
    this.saidSilent = false;
    this.saidQuiet = false;
  }

  /**
   * A sample of a connected connection.
   * @param {number} now Milliseconds.
   * @param {number} bytesReceived Everything the connection received so far (its transports').
   * @returns {PathEvent | null}
   */
  update(now, bytesReceived) {
    if (this.bytes === null || bytesReceived !== this.bytes) {
      const wasQuiet = this.bytes !== null && this.saidQuiet;
      this.bytes = bytesReceived;
      this.lastHeardAt = now;
      this.saidSilent = false;
      this.saidQuiet = false;
      return wasQuiet ? "back" : null;
    }
    const silentFor = now - this.lastHeardAt;
    if (silentFor >= QUIET_MS && !this.saidQuiet) {
      this.saidQuiet = true;
      this.saidSilent = true;
      return "quiet";
    }
    if (silentFor >= SILENT_MS && !this.saidSilent) {
      this.saidSilent = true;
      return "silent";
    }
    return null;
  }

  /** The connection is not connected: start afresh when it is. */
  reset() {
    this.bytes = null;
    this.saidSilent = false;
    this.saidQuiet = false;
  }

  /**
   * Connected and nothing received for `SILENT_MS` or more.
   * @param {number} now
   */
  isSilent(now) {
    return this.bytes !== null && now - this.lastHeardAt >= SILENT_MS;
  }

  /**
   * Connected and nothing received for `QUIET_MS` or more.
   * @param {number} now
   */
  isQuiet(now) {
    return this.bytes !== null && now - this.lastHeardAt >= QUIET_MS;
  }
}

/**
 * @typedef {object} AddressChange
 * @property {boolean} gone An address of the earlier look is not in the later one.
 * @property {boolean} added The later look has an address the earlier one did not.
 */

/**
 * How this device's addresses changed between two looks. Unknown (null, hidden behind mDNS
 * names) on either side is no change.
 * @param {ReadonlySet<string> | null} before
 * @param {ReadonlySet<string> | null} after
 * @returns {AddressChange}
 */
export function addressChange(before, after) {
  if (!before || !after) return { gone: false, added: false };
  return {
    gone: [...before].some((address) => !after.has(address)),
    added: [...after].some((address) => !before.has(address)),
  };
}

/**
 * How long a look at this device's addresses may take. Host candidates come within milliseconds;
 * gathering itself may go on longer (an interface that is gone can hold it up).
 */
const LOOK_MS = 300;

/** @type {Promise<RTCCertificate | null> | null} */
let certificateForLooks = null;

/**
 * One DTLS certificate for every look's throwaway connection (made once; without it each
 * connection would make a key of its own). Null if the browser cannot make one.
 */
function lookCertificate() {
  certificateForLooks ??= RTCPeerConnection.generateCertificate(/** @type {EcKeyGenParams} */ ({ name: "ECDSA", namedCurve: "P-256" })).catch(() => null);
  return certificateForLooks;
}

/**
 * What one look at this device's addresses saw.
 * @typedef {object} AddressLook
 * @property {Set<string>} addresses
 * @property {boolean} complete Gathering ended within the look's time. An incomplete look may lack
 *   addresses the device has (a starved machine gathers slowly; a gone interface can hold
 *   gathering up), so it is never the baseline that a new address is judged against.
 */

/**
 * The IP addresses this device can send UDP from now, as the browser's ICE agent sees them: a
 * throwaway connection with no ICE server gathers host candidates (nothing is sent anywhere, and
 * the addresses stay in this page). Only UDP candidates count: each is a socket bound to its
 * address, so an address that is gone from the device is gone from the look at once, even while
 * the browser's list of networks still has it (Chromium on Linux learns of a change about two
 * seconds late). Null when the browser hides addresses behind mDNS names (a page without camera
 * or microphone permission) or gathering fails.
 * @returns {Promise<AddressLook | null>}
 */
export async function hostAddresses() {
  /** @type {RTCPeerConnection | null} */
  let pc = null;
  try {
    const certificate = await lookCertificate();
    pc = new RTCPeerConnection({ iceServers: [], ...(certificate ? { certificates: [certificate] } : {}) });
    const gathering = pc;
    /** @type {Set<string>} */
    const addresses = new Set();
    let hidden = false;
    /** @type {Promise<boolean>} Whether gathering ended (else the look's time did). */
    const done = new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), LOOK_MS);
      gathering.onicecandidate = ({ candidate }) => {
        if (!candidate) {
          clearTimeout(timer);
          resolve(true);
          return;
        }
        const address = candidate.address;
        if (candidate.type !== "host" || candidate.protocol !== "udp" || !address) return;
        if (address.endsWith(".local")) hidden = true;
        else addresses.add(address);
      };
    });
    pc.createDataChannel("addresses");
    await pc.setLocalDescription();
    const complete = await done;
    return hidden ? null : { addresses, complete };
  } catch {
    return null;
  } finally {
    pc?.close();
  }
}

/**
 * This device's addresses, looked at again whenever asked (while a connection is silent): says how
 * they changed. An address counts as added once, when it is new to every look since the last
 * addition, so a look that came back short (a slow machine) and the full one after it do not
 * make a change; and only once a complete look is among those, so a short first look (the
 * baseline taken while a starved page gathers slowly) does not make the full one after it a
 * change either. One look at a time (connections falling silent together share it).
 */
export class AddressWatch {
  /** @param {() => Promise<AddressLook | null>} [look] */
  constructor(look = hostAddresses) {
    this.look = look;
    /** @type {Set<string> | null} The last look that saw addresses. */
    this.last = null;
    /** @type {Set<string> | null} Every address seen since the last addition (and in it). */
    this.known = null;
    /** Whether a complete look is among those that make `known`. */
    this.knownComplete = false;
    /** @type {Promise<AddressChange> | null} */
    this.looking = null;
  }

  /**
   * Look now (the first look only records what there is; a look that fails sees nothing).
   * @returns {Promise<AddressChange>} `gone`: since the last look; `added`: see the class.
   */
  check() {
    if (this.looking) return this.looking;
    this.looking = this.look()
      .catch(() => null)
      .then((look) => {
        const now = look?.addresses ?? null;
        const change = {
          gone: addressChange(this.last, now).gone,
          added: this.knownComplete && addressChange(this.known, now).added,
        };
        if (look && now) {
          this.last = now;
          if (change.added || !this.known) {
            this.known = new Set(now);
            this.knownComplete = look.complete;
          } else {
            this.known = new Set([...this.known, ...now]);
            this.knownComplete ||= look.complete;
          }
        }
        return change;
      })
      .finally(() => {
        this.looking = null;
      });
    return this.looking;
  }
}
