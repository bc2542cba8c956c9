// @ts-check
/**
 * The call screen shared by the doctor and patient pages: local video, one tile per other
 * participant (their video, name and role), mute, camera, hang up, the recording indicator, the
 * connection status line and the quality indicator; with end-to-end encryption, the security code
 * shared with each other participant and whether this person marked it as verified.
 *
 * Both pages carry the same markup (ids `local-video`, `remote-tiles`, `mute-button`,
 * `camera-button`, `hangup-button`, `recording-indicator`, `participant-recorder`, `call-status`,
 * `quality`, `quality-label`, `remote-placeholder`, `remote-sound`, and for end-to-end encryption
 * `e2ee-badge`, `e2ee-panel`, `e2ee-peers`, `e2ee-hint`). Each tile is a `remote-tile` with a
 * `remote-video`; each code a `e2ee-peer` row (its code is `e2ee-sas` when there is one other
 * participant, `e2ee-peer-sas` otherwise).
 */

import { announce, byId, h } from "./ui.js";
import { describeQuality, LABELS, monitorQuality } from "./stats.js";

/** @typedef {import('./protocol.js').RecordingState} RecordingState */
/** @typedef {import('./stats.js').Quality} Quality */
/** @typedef {import('./e2ee/call-e2ee.js').E2eeView} E2eeView */
/** @typedef {import('./protocol.js').Peer} Peer */

/** How each role is shown next to a name. */
const ROLE_LABELS = /** @type {Record<string, string>} */ ({
  doctor: "clinician",
  clinician: "clinician",
  patient: "patient",
  interpreter: "interpreter",
  companion: "family or carer",
});

/**
 * "Name (role)" for a participant, or the role alone.
 * @param {Peer} peer
 */
export function describePeer(peer) {
  const role = ROLE_LABELS[peer.role] ?? peer.role;
  return peer.name ? `${peer.name} (${role})` : `The ${role}`;
}

/** One other participant's tile: their video, their name and role, a note when no camera is on. */
class RemoteTile {
  /** @param {Peer} peer */
  constructor(peer) {
    this.video = h("video", { className: "remote-video", testid: "remote-video", attrs: { autoplay: "", playsinline: "" } });
    this.label = h("p", { className: "remote-name", testid: "remote-name" });
    this.note = h("p", { className: "tile-placeholder", testid: "tile-placeholder" });
    this.element = h("figure", { className: "remote-tile", testid: "remote-tile" }, [this.video, this.label, this.note]);
    this.element.dataset.peerId = peer.participant_id;
    this.paused = false;
    this.setPeer(peer);
  }

  /**
   * Their link is too weak for moving pictures: audio only, a picture every few seconds (the
   * picture stays on the tile, with a note over it).
   * @param {boolean} paused
   */
  setPaused(paused) {
    this.paused = paused;
    this.element.dataset.videoPaused = String(paused);
    if (paused) {
      this.note.hidden = false;
      this.note.textContent = `${this.peer ? describePeer(this.peer) : "They"}: weak connection — audio only, a picture every few seconds.`;
    } else if (this.hasVideo) {
      this.note.hidden = true;
      this.note.textContent = "";
    }
  }

  /** @param {Peer} peer */
  setPeer(peer) {
    this.peer = peer;
    const text = describePeer(peer);
    this.label.textContent = text;
    this.element.dataset.role = peer.role;
    this.video.setAttribute("aria-label", `Video of ${text}`);
  }

  /** Whether video shows. */
  get hasVideo() {
    const stream = this.video.srcObject;
    return stream instanceof MediaStream && stream.getVideoTracks().length > 0;
  }

  /**
   * @param {MediaStream} stream
   * @param {() => void} onAutoplayRefused
   */
  show(stream, onAutoplayRefused) {
    if (this.video.srcObject !== stream) this.video.srcObject = stream;
    const hasVideo = stream.getVideoTracks().length > 0;
    if (!this.paused || !hasVideo) {
      this.note.hidden = hasVideo;
      this.note.textContent = hasVideo ? "" : `${this.peer ? describePeer(this.peer) : "They"}: no camera on.`;
    }
    this.video.muted = false;
    this.video.play().catch((err) => {
      if (err instanceof DOMException && err.name === "NotAllowedError") {
        // Autoplay with sound refused: play muted and offer to turn the sound on.
        this.video.muted = true;
        this.video.play().catch(() => {});
        onAutoplayRefused();
      }
    });
  }

  dispose() {
    this.video.srcObject = null;
    this.element.remove();
  }
}

/**
 * Whose page shows a recording state: the doctor waits for the patient's consent; the patient is
 * asked for it (in the consent dialog).
 * @typedef {"doctor" | "patient"} Viewer
 */

/** What "Recording" starts with: decoration, hidden from screen readers. */
const RECORDING_DOT = "● ";

/** The badge colour of each recording state (`badge-<tone>`). */
const RECORDING_TONES = /** @type {Record<RecordingState, string>} */ ({
  live_only: "live",
  awaiting_consent: "pending",
  recording: "recorded",
  declined: "live",
  withdrawn: "live",
  failed: "failed",
});

/**
 * What a recording state says, in words.
 * @param {RecordingState | null} state null: a recorded consultation whose state the service has
 *   not told yet.
 * @param {Viewer} viewer
 * @param {string} [problem] What went wrong (with `failed`).
 * @returns {string}
 */
export function describeRecording(state, viewer, problem) {
  switch (state) {
    case "live_only":
      return "Live only — not recorded";
    case "awaiting_consent":
      return viewer === "doctor" ? "Waiting for the patient’s consent to record" : "Not recorded yet — your answer is needed";
    case "recording":
      return `${RECORDING_DOT}Recording`;
    case "declined":
      return "Not recorded — the patient declined";
    case "withdrawn":
      return "Recording stopped — consent withdrawn";
    case "failed":
      return problem ? `Recording failed: ${problem}` : "Recording failed";
    default:
      return "Recorded only with the patient’s consent";
  }
}

/**
 * Show a recording state on a badge: the words, the colour, and the raw state as `data-state`
 * (none while unknown).
 * @param {HTMLElement} badge
 * @param {RecordingState | null} state
 * @param {Viewer} viewer
 * @param {string} [problem]
 */
export function showRecordingState(badge, state, viewer, problem) {
  const text = describeRecording(state, viewer, problem);
  // Unchanged: leave the live region alone (rewriting it can make screen readers say it again).
  if (badge.textContent === text && (badge.dataset.state ?? null) === state) return;
  if (text.startsWith(RECORDING_DOT)) {
    const dot = h("span", { className: "recording-dot", text: RECORDING_DOT, attrs: { "aria-hidden": "true" } });
    badge.replaceChildren(dot, text.slice(RECORDING_DOT.length));
  } else {
    badge.textContent = text;
  }
  const tone = state ? RECORDING_TONES[state] : "pending";
  for (const t of new Set(Object.values(RECORDING_TONES))) badge.classList.toggle(`badge-${t}`, t === tone);
  if (state) badge.dataset.state = state;
  else delete badge.dataset.state;
}

/** The hint under the security code once keys are agreed. */
export const SAS_HINT =
  "Compare these numbers with the other person. If they match, nobody — not even the service — can see or hear this call.";

/** The hint under the security codes of a group call once keys are agreed. */
export const GROUP_SAS_HINT =
  "Each person you talk to has a code of their own with you: compare each one with that person. If they match, nobody — not even the service — can see or hear this call.";

export class CallView {
  /**
   * @param {{ onHangUp: () => void, viewer: Viewer, onShareScreen?: () => void }} options
   *   `onShareScreen`: the Share screen / Stop sharing button was pressed.
   */
  constructor({ onHangUp, viewer, onShareScreen }) {
    this.viewer = viewer;
    this.stage = /** @type {HTMLElement} */ (byId("remote-tiles", HTMLElement).parentElement);
    this.screenView = byId("screen-view", HTMLElement);
    this.screenVideo = byId("screen-video", HTMLVideoElement);
    this.screenName = byId("screen-name", HTMLElement);
    this.screenButton = byId("screen-button", HTMLButtonElement);
    /** @type {Map<string, { peer: Peer, stream: MediaStream }>} Screens shared, in the order they began. */
    this.screens = new Map();
    this.screenButton.addEventListener("click", () => onShareScreen?.());
    this.localVideo = byId("local-video", HTMLVideoElement);
    this.tiles = byId("remote-tiles", HTMLElement);
    /** @type {Map<string, RemoteTile>} By participant id. */
    this.tileOf = new Map();
    /** @type {Map<string, Peer>} Everyone shown or named, by participant id. */
    this.peers = new Map();
    /** @type {Map<string, string>} The code each participant was marked verified with. */
    this.verified = new Map();
    /** @type {E2eeView | null} */
    this.e2eeView = null;
    this.muteButton = byId("mute-button", HTMLButtonElement);
    this.cameraButton = byId("camera-button", HTMLButtonElement);
    this.hangUpButton = byId("hangup-button", HTMLButtonElement);
    this.recording = byId("recording-indicator", HTMLElement);
    this.recorderLabel = byId("participant-recorder", HTMLElement);
    this.status = byId("call-status", HTMLElement);
    this.quality = byId("quality", HTMLElement);
    /** How our video goes out while it is below full (made here: both pages get it). */
    this.videoStep = h("p", { className: "video-step", testid: "video-step", attrs: { role: "status" } });
    this.videoStep.hidden = true;
    this.quality.after(this.videoStep);
    this.qualityLabel = byId("quality-label", HTMLElement);
    this.qualityText = byId("quality-text", HTMLElement);
    this.placeholder = byId("remote-placeholder", HTMLElement);
    this.soundButton = byId("remote-sound", HTMLButtonElement);
    this.e2eeBadge = byId("e2ee-badge", HTMLElement);
    this.e2eePanel = byId("e2ee-panel", HTMLElement);
    this.e2eePeers = byId("e2ee-peers", HTMLElement);
    this.e2eeHint = byId("e2ee-hint", HTMLElement);
    /** @type {MediaStream | null} */
    this.localStream = null;
    /** @type {(() => void) | null} */
    this.stopQuality = null;

    this.muteButton.addEventListener("click", () => this.toggleTrack("audio"));
    this.cameraButton.addEventListener("click", () => this.toggleTrack("video"));
    this.hangUpButton.addEventListener("click", () => onHangUp());
    this.soundButton.addEventListener("click", () => {
      for (const tile of this.tileOf.values()) {
        tile.video.muted = false;
        tile.video.play().catch(() => {});
      }
      this.soundButton.hidden = true;
    });
  }

  /**
   * The recording indicator (one per call, on both pages; announced when it changes).
   * @param {RecordingState | null} state As the service last said; before it says anything, from
   *   the consultation's mode (`live_only`, or null for a recorded one).
   * @param {string} [problem] What went wrong (with `failed`).
   */
  setRecording(state, problem) {
    showRecordingState(this.recording, state, this.viewer, problem);
    this.recording.hidden = false;
  }

  /**
   * Whether the service's recorder is among the participants (the label next to the indicator).
   * @param {boolean} present
   */
  setRecorderPresent(present) {
    this.recorderLabel.hidden = !present;
  }

  /**
   * End-to-end encryption: the lock badge (only while everything is protected) and the security
   * code shared with each other participant, with its hint and a button to say it matched; null
   * for a call without it.
   * @param {E2eeView | null} view
   */
  setE2ee(view) {
    this.e2eeView = view;
    const badge = !!view && view.badge;
    if (badge !== !this.e2eeBadge.hidden) {
      this.e2eeBadge.hidden = !badge;
      if (badge) announce("The call is end-to-end encrypted.");
    }
    // One person's problem (said in the status line) hides nobody else's code.
    this.e2eePanel.hidden = !view || !view.linked || (!!view.problem && view.peers.every((p) => !p.sas));
    const peers = view ? view.peers : [];
    const agreed = peers.length > 0 && peers.every((p) => p.sas);
    this.e2eeHint.textContent = agreed ? (peers.length > 1 ? GROUP_SAS_HINT : SAS_HINT) : "Setting up end-to-end encryption…";
    this.e2eePanel.dataset.state = agreed ? "agreed" : "pending";
    // Forget what was verified with a code no longer in use (a new connection, a new code).
    for (const [peerId, sas] of this.verified) {
      if (!peers.some((p) => p.peerId === peerId && p.sas === sas)) this.verified.delete(peerId);
    }
    this.e2eePeers.replaceChildren(
      ...peers.map((p) => {
        const peer = this.peers.get(p.peerId);
        const who = peer ? describePeer(peer) : "the other participant";
        const sas = h("strong", { className: "e2ee-sas", text: p.sas ?? "…", testid: peers.length === 1 ? "e2ee-sas" : "e2ee-peer-sas" });
        const verified = !!p.sas && this.verified.get(p.peerId) === p.sas;
        const row = h("li", { className: "e2ee-peer", testid: "e2ee-peer" }, [
          h("span", { className: "e2ee-code", text: peers.length === 1 ? "Security code: " : `Security code with ${who}: ` }),
          sas,
        ]);
        row.dataset.peerId = p.peerId;
        row.dataset.state = verified ? "verified" : p.sas ? "agreed" : "pending";
        if (verified) {
          row.append(" ", h("span", { className: "badge badge-verified", text: "✓ Verified", testid: "e2ee-verified" }));
        } else if (p.sas) {
          const code = p.sas;
          const button = h("button", {
            className: "button small",
            text: "It matches",
            testid: "e2ee-verify",
            attrs: { type: "button", "aria-label": `The code matches what ${who} sees` },
          });
          button.addEventListener("click", () => {
            this.verified.set(p.peerId, code);
            announce(`Code with ${who} verified.`);
            this.setE2ee(this.e2eeView);
          });
          row.append(" ", button);
        }
        return row;
      }),
    );
  }

  /** @param {MediaStream | null} stream */
  setLocalStream(stream) {
    this.localStream = stream;
    this.localVideo.srcObject = stream;
    if (stream) this.localVideo.play().catch(() => {});
    const hasAudio = !!stream && stream.getAudioTracks().length > 0;
    const hasVideo = !!stream && stream.getVideoTracks().length > 0;
    this.muteButton.disabled = !hasAudio;
    this.cameraButton.disabled = !hasVideo;
    this.renderToggles();
  }

  /**
   * @private
   * @param {"audio" | "video"} kind
   */
  toggleTrack(kind) {
    const stream = this.localStream;
    if (!stream) return;
    const tracks = kind === "audio" ? stream.getAudioTracks() : stream.getVideoTracks();
    if (tracks.length === 0) return;
    const enable = !tracks[0].enabled;
    for (const track of tracks) track.enabled = enable;
    this.renderToggles();
    if (kind === "audio") announce(enable ? "Microphone on." : "Microphone muted.");
    else announce(enable ? "Camera on." : "Camera off.");
  }

  /** @private */
  renderToggles() {
    const stream = this.localStream;
    const hasAudio = !!stream && stream.getAudioTracks().length > 0;
    const hasVideo = !!stream && stream.getVideoTracks().length > 0;
    const audioOn = hasAudio && !!stream && stream.getAudioTracks().some((t) => t.enabled);
    const videoOn = hasVideo && !!stream && stream.getVideoTracks().some((t) => t.enabled);
    if (hasAudio) {
      this.muteButton.textContent = audioOn ? "Mute" : "Unmute";
      this.muteButton.setAttribute("aria-pressed", String(!audioOn));
    } else {
      this.muteButton.textContent = "No microphone";
      this.muteButton.removeAttribute("aria-pressed");
    }
    if (hasVideo) {
      this.cameraButton.textContent = videoOn ? "Camera off" : "Camera on";
      this.cameraButton.setAttribute("aria-pressed", String(!videoOn));
    } else {
      this.cameraButton.textContent = "No camera";
      this.cameraButton.removeAttribute("aria-pressed");
    }
    this.localVideo.hidden = !hasVideo;
    this.localVideo.classList.toggle("video-off", !videoOn);
  }

  /**
   * A participant's media, or null once their connection is gone (their tile goes with it).
   * @param {Peer} peer
   * @param {MediaStream | null} stream
   */
  setPeerStream(peer, stream) {
    const peerId = peer.participant_id;
    this.peers.set(peerId, peer);
    let tile = this.tileOf.get(peerId);
    if (!stream) {
      tile?.dispose();
      this.tileOf.delete(peerId);
    } else {
      if (!tile) {
        tile = new RemoteTile(peer);
        this.tileOf.set(peerId, tile);
        this.tiles.append(tile.element);
      }
      tile.setPeer(peer);
      tile.show(stream, () => {
        this.soundButton.hidden = false;
      });
    }
    if (!stream && this.screens.has(peerId)) this.setPeerScreen(peer, null);
    const count = this.tileOf.size;
    this.tiles.dataset.count = String(count);
    this.placeholder.hidden = count > 0;
    if (count === 0) this.soundButton.hidden = true;
    if (this.e2eeView) this.setE2ee(this.e2eeView);
  }

  /**
   * The screen a participant shares (null: they stopped). The latest one shows large, with the
   * cameras small beside it.
   * @param {Peer} peer
   * @param {MediaStream | null} stream
   */
  setPeerScreen(peer, stream) {
    const peerId = peer.participant_id;
    const before = this.shownScreen();
    this.screens.delete(peerId);
    if (stream) this.screens.set(peerId, { peer, stream });
    const shown = this.shownScreen();
    this.screenView.hidden = !shown;
    this.stage.classList.toggle("presenting", !!shown);
    if (!shown) {
      this.screenVideo.srcObject = null;
      if (before) announce(`${describePeer(before.peer)} stopped sharing their screen.`);
      return;
    }
    if (this.screenVideo.srcObject !== shown.stream) this.screenVideo.srcObject = shown.stream;
    this.screenVideo.play().catch(() => {});
    const who = describePeer(shown.peer);
    this.screenName.textContent = `${who} is sharing their screen`;
    this.screenVideo.setAttribute("aria-label", `Screen shared by ${who}`);
    this.screenView.dataset.peerId = shown.peer.participant_id;
    if (!before || before.peer.participant_id !== shown.peer.participant_id) announce(`${who} is sharing their screen.`);
  }

  /** @private */
  shownScreen() {
    let last = null;
    for (const entry of this.screens.values()) last = entry;
    return last;
  }

  /**
   * The Share screen button: whether this participant may share, and whether they do now.
   * @param {{ allowed: boolean, sharing: boolean }} state
   */
  setScreenSharing({ allowed, sharing }) {
    this.screenButton.hidden = !allowed;
    this.screenButton.textContent = sharing ? "Stop sharing" : "Share screen";
    this.screenButton.setAttribute("aria-pressed", String(sharing));
  }

  /**
   * How our camera's video goes out (the worst of our connections): nothing said at full.
   * @param {"full" | "reduced" | "low" | "audio-only"} step
   */
  showVideoStep(step) {
    const text =
      step === "audio-only"
        ? "Weak connection: audio only. Your camera sends a picture every few seconds."
        : step === "full"
          ? ""
          : "Weak connection: your video is sent at a lower quality to keep the sound clear.";
    this.videoStep.dataset.step = step;
    if (this.videoStep.textContent === text) return;
    this.videoStep.textContent = text;
    this.videoStep.hidden = !text;
    if (text) announce(text);
  }

  /**
   * Someone's video all but stopped while their audio goes on (their link is too weak), or moves
   * again.
   * @param {string} peerId
   * @param {boolean} paused
   */
  setRemoteVideoPaused(peerId, paused) {
    const tile = this.tileOf.get(peerId);
    if (!tile || tile.paused === paused) return;
    tile.setPaused(paused);
    if (paused && tile.peer) announce(`${describePeer(tile.peer)} has a weak connection: audio only for now.`);
  }

  /**
   * What the stage says while nobody's media shows.
   * @param {string} text
   */
  setPlaceholder(text) {
    this.placeholder.textContent = text;
  }

  /** Whether anyone's video is showing. */
  get hasRemoteVideo() {
    return [...this.tileOf.values()].some((tile) => tile.hasVideo);
  }

  /**
   * The status line above the videos; announced to screen readers.
   * @param {string} text Empty to clear it.
   * @param {"info" | "warning" | "error"} [kind]
   */
  setStatus(text, kind = "info") {
    if (this.status.textContent === text) return;
    this.status.textContent = text;
    this.status.hidden = !text;
    this.status.classList.toggle("status-warning", kind === "warning");
    this.status.classList.toggle("status-error", kind === "error");
    if (text) announce(text);
  }

  /** @param {() => RTCPeerConnection | null} getPc */
  startQuality(getPc) {
    this.stopQuality?.();
    this.stopQuality = monitorQuality(getPc, (q) => this.renderQuality(q));
  }

  /**
   * @private
   * @param {Quality | null} q
   */
  renderQuality(q) {
    this.qualityLabel.classList.remove("quality-good", "quality-fair", "quality-poor", "quality-unknown");
    if (!q) {
      this.quality.dataset.label = "none";
      this.qualityLabel.textContent = "Not connected";
      this.qualityLabel.classList.add("quality-unknown");
      this.qualityText.textContent = "";
      return;
    }
    this.quality.dataset.label = q.label;
    this.qualityLabel.textContent = LABELS[q.label];
    this.qualityLabel.classList.add(`quality-${q.label}`);
    this.qualityText.textContent = describeQuality(q);
  }

  /** Stop the quality monitor and release the videos (the caller stops the tracks). */
  stop() {
    this.stopQuality?.();
    this.stopQuality = null;
    this.renderQuality(null);
    for (const tile of this.tileOf.values()) tile.dispose();
    this.tileOf.clear();
    this.screens.clear();
    this.screenVideo.srcObject = null;
    this.screenView.hidden = true;
    this.stage.classList.remove("presenting");
    this.setScreenSharing({ allowed: false, sharing: false });
    this.peers.clear();
    this.verified.clear();
    this.tiles.dataset.count = "0";
    this.placeholder.hidden = false;
    this.localVideo.srcObject = null;
    this.soundButton.hidden = true;
    this.setE2ee(null);
    showRecordingState(this.recording, null, this.viewer);
    this.recording.hidden = true;
    this.setRecorderPresent(false);
  }
}
