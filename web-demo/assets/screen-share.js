// @ts-check
/**
 * Sharing this participant's screen with everyone in the call: `getDisplayMedia` (the browser
 * asks which screen, window or tab), then the call sends it on every connection in a video
 * section of its own, end-to-end protected like the camera when the call is. Stopped from the
 * page's button or from the browser's own "Stop sharing" control (the track ends). A refusal —
 * by the person, the browser or its policy — is said in words, and the call goes on.
 */

/** @typedef {import('./call.js').CallController} CallController */

/** @typedef {import('./protocol.js').Peer} Peer */

/** Roles that may always share a screen: the clinicians (the consultation's doctor and colleagues). */
const SHARING_ROLES = ["doctor", "clinician"];

/**
 * Whether a participant of this role may share a screen in the call now (a screen from anyone
 * else is not shown): clinicians always, everyone else while the doctor allows it.
 * @param {string} role
 * @param {boolean} guestsAllowed The doctor's choice (`guests_share_screen`, `screen_sharing`).
 */
export function mayShareScreen(role, guestsAllowed) {
  return SHARING_ROLES.includes(role) || (guestsAllowed && role !== "recorder");
}

/**
 * The screens others share, shown only while their sender may share one: a screen from a guest
 * goes from the stage the moment the doctor takes the permission back (and comes back if they
 * allow it again while it is still shared).
 */
export class RemoteScreens {
  /** @param {(peer: Peer, stream: MediaStream | null) => void} show */
  constructor(show) {
    this.show = show;
    this.guestsAllowed = false;
    /** @type {Map<string, { peer: Peer, stream: MediaStream }>} */
    this.shared = new Map();
  }

  /**
   * A participant's screen arrived (or stopped: null).
   * @param {Peer} peer
   * @param {MediaStream | null} stream
   */
  take(peer, stream) {
    if (stream) this.shared.set(peer.participant_id, { peer, stream });
    else this.shared.delete(peer.participant_id);
    this.show(peer, stream && mayShareScreen(peer.role, this.guestsAllowed) ? stream : null);
  }

  /**
   * The doctor's choice changed.
   * @param {boolean} allowed
   */
  setGuestsAllowed(allowed) {
    if (this.guestsAllowed === allowed) return;
    this.guestsAllowed = allowed;
    for (const { peer, stream } of this.shared.values()) this.show(peer, mayShareScreen(peer.role, allowed) ? stream : null);
  }

  /** The call is over. */
  clear() {
    this.shared.clear();
    this.guestsAllowed = false;
  }
}

/**
 * Why a screen could not be shared, in words for the person.
 * @param {unknown} err What `getDisplayMedia` threw.
 */
export function screenShareRefusal(err) {
  const name = err instanceof DOMException ? err.name : "";
  switch (name) {
    case "NotAllowedError":
      return "Screen sharing was not allowed (you cancelled it, or the browser refused it). The call goes on.";
    case "NotFoundError":
    case "NotReadableError":
    case "AbortError":
      return "No screen, window or tab could be captured. The call goes on.";
    default:
      return "Your screen could not be shared. The call goes on.";
  }
}

export class ScreenShare {
  /**
   * @param {object} options
   * @param {() => CallController | null} options.controller The call to share in, if any.
   * @param {(sharing: boolean) => void} options.onChange Sharing started or stopped.
   * @param {(message: string | null) => void} options.onError Why sharing failed (null: clear it).
   * @param {() => boolean} [options.mayShare] Whether this participant may share now (asked again
   *   once the browser's picker closes: the doctor may have taken it back meanwhile).
   */
  constructor({ controller, onChange, onError, mayShare = () => true }) {
    this.controller = controller;
    this.mayShare = mayShare;
    this.onChange = onChange;
    this.onError = onError;
    /** @type {MediaStream | null} */
    this.stream = null;
    this.starting = false;
  }

  /** Whether this browser can share a screen at all. */
  static get supported() {
    return !!navigator.mediaDevices && typeof navigator.mediaDevices.getDisplayMedia === "function";
  }

  /** Whether the screen is shared now. */
  get sharing() {
    return this.stream !== null;
  }

  /** Start sharing, or stop if sharing. */
  async toggle() {
    if (this.stream) {
      this.stop();
      return;
    }
    if (this.starting) return;
    this.onError(null);
    if (!ScreenShare.supported) {
      this.onError("This browser cannot share a screen. The call goes on.");
      return;
    }
    this.starting = true;
    // The call the person pressed the button in: a screen picked after it ended goes nowhere.
    const pressedIn = this.controller();
    /** @type {MediaStream} */
    let stream;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    } catch (err) {
      console.warn("Screen sharing refused", err);
      this.onError(screenShareRefusal(err));
      return;
    } finally {
      this.starting = false;
    }
    const track = stream.getVideoTracks()[0];
    const controller = this.controller();
    if (!track || !controller || controller !== pressedIn || !this.mayShare()) {
      for (const t of stream.getTracks()) t.stop();
      if (!track) this.onError(screenShareRefusal(null));
      return;
    }
    // The browser's own "Stop sharing" ends the track.
    track.addEventListener("ended", () => {
      if (this.stream === stream) this.stop();
    });
    this.stream = stream;
    void controller.shareScreen(stream);
    this.onChange(true);
  }

  /** Stop sharing (the capture ends, and every connection stops sending it). */
  stop() {
    const stream = this.stream;
    if (!stream) return;
    this.stream = null;
    for (const t of stream.getTracks()) t.stop();
    void this.controller()?.shareScreen(null);
    this.onChange(false);
  }
}
