// @ts-check
/**
 * The call screen shared by the doctor and patient pages: local and remote video, mute, camera,
 * hang up, the recording indicator, the connection status line and the quality indicator.
 *
 * Both pages carry the same markup (ids `local-video`, `remote-video`, `mute-button`,
 * `camera-button`, `hangup-button`, `recording-indicator`, `participant-recorder`, `call-status`,
 * `quality`, `quality-label`, `remote-placeholder`, `remote-sound`, and for end-to-end encryption
 * `e2ee-badge`, `e2ee-panel`, `e2ee-sas`, `e2ee-hint`).
 */

import { announce, byId, h } from "./ui.js";
import { describeQuality, LABELS, monitorQuality } from "./stats.js";

/** @typedef {import('./protocol.js').RecordingState} RecordingState */
/** @typedef {import('./stats.js').Quality} Quality */
/** @typedef {import('./e2ee/call-e2ee.js').E2eeView} E2eeView */

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

export class CallView {
  /** @param {{ onHangUp: () => void, viewer: Viewer }} options */
  constructor({ onHangUp, viewer }) {
    this.viewer = viewer;
    this.localVideo = byId("local-video", HTMLVideoElement);
    this.remoteVideo = byId("remote-video", HTMLVideoElement);
    this.muteButton = byId("mute-button", HTMLButtonElement);
    this.cameraButton = byId("camera-button", HTMLButtonElement);
    this.hangUpButton = byId("hangup-button", HTMLButtonElement);
    this.recording = byId("recording-indicator", HTMLElement);
    this.recorderLabel = byId("participant-recorder", HTMLElement);
    this.status = byId("call-status", HTMLElement);
    this.quality = byId("quality", HTMLElement);
    this.qualityLabel = byId("quality-label", HTMLElement);
    this.qualityText = byId("quality-text", HTMLElement);
    this.placeholder = byId("remote-placeholder", HTMLElement);
    this.remoteName = byId("remote-name", HTMLElement);
    this.soundButton = byId("remote-sound", HTMLButtonElement);
    this.e2eeBadge = byId("e2ee-badge", HTMLElement);
    this.e2eePanel = byId("e2ee-panel", HTMLElement);
    this.e2eeSas = byId("e2ee-sas", HTMLElement);
    this.e2eeHint = byId("e2ee-hint", HTMLElement);
    /** @type {MediaStream | null} */
    this.localStream = null;
    /** @type {(() => void) | null} */
    this.stopQuality = null;

    this.muteButton.addEventListener("click", () => this.toggleTrack("audio"));
    this.cameraButton.addEventListener("click", () => this.toggleTrack("video"));
    this.hangUpButton.addEventListener("click", () => onHangUp());
    this.soundButton.addEventListener("click", () => {
      this.remoteVideo.muted = false;
      this.remoteVideo.play().catch(() => {});
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
   * code with its hint; null for a call without it.
   * @param {E2eeView | null} view
   */
  setE2ee(view) {
    const badge = !!view && view.badge;
    if (badge !== !this.e2eeBadge.hidden) {
      this.e2eeBadge.hidden = !badge;
      if (badge) announce("The call is end-to-end encrypted.");
    }
    this.e2eePanel.hidden = !view || !view.linked || !!view.problem;
    const sas = view ? view.sas : null;
    this.e2eeSas.textContent = sas ?? "…";
    this.e2eeHint.textContent = sas ? SAS_HINT : "Setting up end-to-end encryption…";
    this.e2eePanel.dataset.state = sas ? "agreed" : "pending";
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
   * @param {MediaStream | null} stream
   * @param {string} [placeholderText] Shown while there is no remote video.
   * @param {string} [name] The other participant's name, shown over their video.
   */
  setRemoteStream(stream, placeholderText, name = "") {
    if (this.remoteVideo.srcObject !== stream) this.remoteVideo.srcObject = stream;
    const hasVideo = !!stream && stream.getVideoTracks().length > 0;
    this.placeholder.hidden = hasVideo;
    if (stream && !hasVideo) this.placeholder.textContent = name ? `${name} has no camera on.` : "No video.";
    else if (placeholderText && (!stream || !this.placeholder.textContent)) this.placeholder.textContent = placeholderText;
    this.remoteName.textContent = name;
    this.remoteName.hidden = !stream || !name;
    this.remoteVideo.setAttribute("aria-label", name ? `Video of ${name}` : "Remote video");
    if (!stream) {
      this.soundButton.hidden = true;
      return;
    }
    this.remoteVideo.muted = false;
    this.remoteVideo.play().catch((err) => {
      if (err instanceof DOMException && err.name === "NotAllowedError") {
        // Autoplay with sound refused: play muted and offer to turn the sound on.
        this.remoteVideo.muted = true;
        this.remoteVideo.play().catch(() => {});
        this.soundButton.hidden = false;
      }
    });
  }

  /** @param {string} text */
  setPlaceholder(text) {
    this.placeholder.textContent = text;
  }

  /** Whether remote video is showing. */
  get hasRemoteVideo() {
    const stream = this.remoteVideo.srcObject;
    return stream instanceof MediaStream && stream.getVideoTracks().length > 0;
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
    this.remoteVideo.srcObject = null;
    this.remoteName.hidden = true;
    this.localVideo.srcObject = null;
    this.soundButton.hidden = true;
    this.setE2ee(null);
    showRecordingState(this.recording, null, this.viewer);
    this.recording.hidden = true;
    this.setRecorderPresent(false);
  }
}
