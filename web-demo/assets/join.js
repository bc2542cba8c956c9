// @ts-check
/**
 * The patient's page (`/join#<invite>`): invite landing, name, device check, waiting room, call.
 *
 * The invite comes in the fragment (never sent to the service in a URL) and is removed from the
 * address bar at once. Once redeemed, the participant token is kept in sessionStorage so that a
 * reload of this tab takes back the same place.
 */

import * as api from "./api.js";
import { ApiError, IceServerCache } from "./api.js";
import { CallController, recorderPermit } from "./call.js";
import { CallView, describePeer, showRecordingState } from "./call-view.js";
import { RemoteScreens, ScreenShare } from "./screen-share.js";
import { ConsentDialog } from "./consent-dialog.js";
import { HeldCertificatesPanel } from "./held-certificates.js";
import { E2eeCall, transformApi } from "./e2ee/call-e2ee.js";
import { MessagingView } from "./messaging-view.js";
import { deviceIdOf, fillDeviceSelect, LevelMeter, listDevices, openMedia, stopStream } from "./media.js";
import { SignalingClient } from "./signaling.js";
import { announce, byId, formatDateTime, listNames, showError, showView } from "./ui.js";

/** @typedef {import('./protocol.js').InviteInfo} InviteInfo */
/** @typedef {import('./protocol.js').ConsultationMode} ConsultationMode */
/** @typedef {import('./protocol.js').ServerMessage} ServerMessage */
/** @typedef {import('./protocol.js').RecordingMessage} RecordingMessage */
/** @typedef {import('./call.js').MediaState} MediaState */
/** @typedef {import('./call.js').IceProblem} IceProblem */
/** @typedef {import('./e2ee/call-e2ee.js').E2eeProblem} E2eeProblem */

/**
 * What sessionStorage keeps for this tab.
 * @typedef {object} StoredPlace
 * @property {string} token Participant token.
 * @property {string} participantId
 * @property {string} name
 * @property {InviteInfo} invite
 */

const INVITE_KEY = "consult.invite";
const PLACE_KEY = "consult.place";

const views = {
  loading: byId("view-loading", HTMLElement),
  landing: byId("view-landing", HTMLElement),
  devices: byId("view-devices", HTMLElement),
  waiting: byId("view-waiting", HTMLElement),
  call: byId("view-call", HTMLElement),
  notice: byId("view-notice", HTMLElement),
};

/** @type {string} */
let invite = "";
/** @type {InviteInfo | null} */
let info = null;
let patientName = "";
/** @type {MediaStream | null} */
let stream = null;
/** @type {LevelMeter | null} */
let meter = null;
/** @type {SignalingClient | null} */
let signaling = null;
/** @type {CallController | null} */
let controller = null;
/** @type {"connecting" | "open" | "reconnecting" | "closed"} */
let signalingState = "closed";
/** @type {MediaState} */
let mediaState = "waiting";
let presenceNote = "";
/** @type {IceProblem | null} Why the connection cannot work, shown as an error. */
let iceProblem = null;
let inCall = false;
/** @type {E2eeCall | null} End-to-end encryption, when the consultation has it. */
let e2ee = null;
/** @type {E2eeProblem | null} Why an end-to-end encrypted call carries no media. */
let e2eeProblem = null;
/** @type {RecordingMessage | null} What the service last said about recording. */
let recording = null;
/** @type {boolean | null} The patient's answer to the recording question in this page, if any. */
let consentAnswer = null;
/** Whether that answer could not be sent (signaling was down): it goes again after the next `joined`. */
let consentUndelivered = false;

// ---------------------------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------------------------

/** @returns {StoredPlace | null} */
function loadPlace() {
  try {
    const raw = sessionStorage.getItem(PLACE_KEY);
    return raw ? /** @type {StoredPlace} */ (JSON.parse(raw)) : null;
  } catch {
    return null;
  }
}

/** @param {StoredPlace | null} place */
function savePlace(place) {
  try {
    if (place) sessionStorage.setItem(PLACE_KEY, JSON.stringify(place));
    else sessionStorage.removeItem(PLACE_KEY);
  } catch {
    // Storage unavailable (private mode): a reload then starts over.
  }
}

/** Forget everything about this consultation (it is over for this tab). */
function forgetAll() {
  savePlace(null);
  try {
    sessionStorage.removeItem(INVITE_KEY);
  } catch {
    // Ignore.
  }
}

// ---------------------------------------------------------------------------------------------
// Notices
// ---------------------------------------------------------------------------------------------

const heldCertificates = new HeldCertificatesPanel();

const NOTICE_IDS = [
  "not-found-message",
  "no-link-message",
  "expired-message",
  "revoked-message",
  "ended-message",
  "in-use-message",
  "declined-message",
  "left-message",
  "replaced-message",
  "error-message",
];

const NOTICE_TITLES = /** @type {Record<string, string>} */ ({
  "not-found-message": "This link does not work",
  "no-link-message": "Video consultation",
  "expired-message": "This link has expired",
  "revoked-message": "This link was withdrawn",
  "ended-message": "Video consultation",
  "in-use-message": "This link is already in use",
  "declined-message": "You were not let in",
  "left-message": "You left the consultation",
  "replaced-message": "Opened somewhere else",
  "error-message": "Something went wrong",
});

/**
 * Show one of the full-page notices.
 * @param {string} id
 * @param {{ text?: string, retry?: () => void }} [options]
 */
function showNotice(id, options = {}) {
  // Once the consultation is over, the link fetches the patient's certificates.
  if (["ended-message", "left-message"].includes(id)) heldCertificates.show(invite);
  else heldCertificates.hide();
  for (const other of NOTICE_IDS) byId(other, HTMLElement).hidden = other !== id;
  if (options.text) byId(id, HTMLElement).textContent = options.text;
  byId("notice-heading", HTMLElement).textContent = NOTICE_TITLES[id] ?? "Video consultation";
  byId("notice-close-hint", HTMLElement).hidden = !["ended-message", "left-message", "declined-message"].includes(id);
  const retry = byId("notice-retry", HTMLButtonElement);
  retry.hidden = !options.retry;
  retry.onclick = options.retry ?? null;
  showView(views.notice);
}

/**
 * The notice for an invite error, or null if it is not one.
 * @param {unknown} err
 * @returns {string | null}
 */
function inviteNotice(err) {
  if (!(err instanceof ApiError)) return null;
  switch (err.code) {
    case "invite_not_found":
      return "not-found-message";
    case "invite_expired":
      return "expired-message";
    case "invite_revoked":
      return "revoked-message";
    case "consultation_ended":
      return "ended-message";
    case "invite_in_use":
      return "in-use-message";
    default:
      return err.status === 404 ? "not-found-message" : null;
  }
}

/** @param {ConsultationMode} mode */
function modeBadge(mode) {
  return mode === "live_only" ? "Live only — not recorded" : "Recorded only with your consent";
}

/**
 * @param {HTMLElement} badge
 * @param {ConsultationMode} mode
 */
function setBadge(badge, mode) {
  badge.textContent = modeBadge(mode);
  badge.classList.toggle("badge-live", mode === "live_only");
  badge.classList.toggle("badge-recorded", mode !== "live_only");
}

// ---------------------------------------------------------------------------------------------
// Landing and name
// ---------------------------------------------------------------------------------------------

const nameForm = byId("name-form", HTMLFormElement);
const nameInput = byId("patient-name", HTMLInputElement);
const nameError = byId("name-error", HTMLElement);

/** @param {string} [notice] Shown above the name field (why the patient is back here). */
async function showLanding(notice) {
  showView(views.loading, { focus: false });
  const noticeEl = byId("landing-notice", HTMLElement);
  noticeEl.textContent = notice ?? "";
  noticeEl.hidden = !notice;
  try {
    info = await api.inspectInvite(invite);
  } catch (err) {
    const notice = inviteNotice(err);
    if (notice) {
      if (notice !== "in-use-message") forgetAll();
      showNotice(notice);
    } else {
      showNotice("error-message", {
        text: `Your link could not be checked: ${err instanceof Error ? err.message : String(err)}`,
        retry: () => showLanding(),
      });
    }
    return;
  }
  byId("landing-heading", HTMLElement).textContent = `Video consultation with ${info.doctor_name}`;
  setBadge(byId("landing-mode", HTMLElement), info.mode);
  byId("landing-mode-text", HTMLElement).textContent =
    info.mode === "live_only"
      ? "Nothing of this consultation is recorded: the video goes directly between you and your doctor, encrypted."
      : "Your doctor would like to record this consultation. You will be asked first: nothing is recorded unless you allow it, and saying no does not affect your care.";
  const e2eeNote = byId("landing-e2ee", HTMLElement);
  e2eeNote.hidden = !info.e2ee;
  e2eeNote.classList.toggle("error", !!info.e2ee && !transformApi());
  e2eeNote.textContent = !info.e2ee
    ? ""
    : transformApi()
      ? "This consultation is end-to-end encrypted: only the people in the call can see and hear it, not even the service."
      : "This consultation is end-to-end encrypted, and this browser cannot do that: you would not see or hear your doctor. Please open the link in an up-to-date Chrome, Edge or Safari.";
  byId("landing-expiry", HTMLElement).textContent = `This link works until ${formatDateTime(info.expires_at)}.`;
  // A named invite is for one person, under the name the clinician chose: it is not asked.
  const invitedAs = byId("landing-invited-as", HTMLElement);
  invitedAs.hidden = !info.name;
  invitedAs.textContent = info.name ? `This invitation is for ${info.name}, ${INVITE_KINDS[info.kind ?? "patient"]}.` : "";
  nameInput.value = info.name ?? nameInput.value;
  nameInput.readOnly = !!info.name;
  showView(views.landing, { focus: false });
  if (info.name) byId("name-continue", HTMLButtonElement).focus();
  else nameInput.focus();
}

/** How the invitation names who it is for. */
const INVITE_KINDS = /** @type {Record<import('./protocol.js').InviteKind, string>} */ ({
  patient: "as a patient",
  interpreter: "as the interpreter",
  companion: "as a family member or carer",
});

nameForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = nameInput.value.trim();
  if (!name) {
    showError(nameError, "Enter your name, so that your doctor knows who is waiting.");
    nameInput.focus();
    return;
  }
  if (name.length > 80) {
    showError(nameError, "Use at most 80 characters.");
    nameInput.focus();
    return;
  }
  showError(nameError, null);
  patientName = name;
  showDeviceCheck();
});

// ---------------------------------------------------------------------------------------------
// Device check
// ---------------------------------------------------------------------------------------------

const preview = byId("device-preview", HTMLVideoElement);
const previewPlaceholder = byId("preview-placeholder", HTMLElement);
const cameraSelect = byId("camera-select", HTMLSelectElement);
const micSelect = byId("mic-select", HTMLSelectElement);
const deviceErrorBox = byId("device-error-box", HTMLElement);
const deviceError = byId("device-error", HTMLElement);
const joinButton = byId("join-button", HTMLButtonElement);
const joinError = byId("join-error", HTMLElement);

/** Whether the device check follows a reload of an already redeemed place. */
let resuming = false;

function showDeviceCheck() {
  showError(joinError, null);
  joinButton.disabled = false;
  joinButton.textContent = resuming ? "Rejoin consultation" : "Join consultation";
  showView(views.devices);
  startPreview({});
}

/** @param {import('./media.js').DeviceChoice} choice */
async function startPreview(choice) {
  stopMeter();
  stopStream(stream);
  stream = null;
  preview.srcObject = null;
  deviceErrorBox.hidden = true;
  try {
    stream = await openMedia(choice);
  } catch (err) {
    deviceError.textContent = `${err instanceof Error ? err.message : String(err)} You can still join, but your doctor will not see or hear you.`;
    deviceErrorBox.hidden = false;
    previewPlaceholder.hidden = false;
    previewPlaceholder.textContent = "No camera";
    await refreshDeviceLists();
    return;
  }
  const hasVideo = stream.getVideoTracks().length > 0;
  preview.srcObject = hasVideo ? stream : null;
  previewPlaceholder.hidden = hasVideo;
  previewPlaceholder.textContent = "No camera found — your doctor will only hear you";
  if (hasVideo) preview.play().catch(() => {});
  meter = new LevelMeter(stream, byId("mic-meter-fill", HTMLElement), byId("mic-meter", HTMLElement));
  await refreshDeviceLists();
}

async function refreshDeviceLists() {
  try {
    const { cameras, microphones } = await listDevices();
    fillDeviceSelect(cameraSelect, cameras, deviceIdOf(stream, "video"), "Camera");
    fillDeviceSelect(micSelect, microphones, deviceIdOf(stream, "audio"), "Microphone");
  } catch (err) {
    console.warn("enumerateDevices failed", err);
  }
}

function stopMeter() {
  meter?.stop();
  meter = null;
}

cameraSelect.addEventListener("change", () =>
  startPreview({ videoDeviceId: cameraSelect.value || undefined, audioDeviceId: micSelect.value || undefined }),
);
micSelect.addEventListener("change", () =>
  startPreview({ videoDeviceId: cameraSelect.value || undefined, audioDeviceId: micSelect.value || undefined }),
);
byId("device-retry", HTMLButtonElement).addEventListener("click", () => startPreview({}));
byId("devices-back", HTMLButtonElement).addEventListener("click", () => {
  stopMeter();
  stopStream(stream);
  stream = null;
  if (resuming) {
    leave();
    return;
  }
  showView(views.landing);
});

joinButton.addEventListener("click", async () => {
  joinButton.disabled = true;
  showError(joinError, null);
  const existing = loadPlace();
  if (existing) {
    stopMeter();
    enterWaiting(existing);
    return;
  }
  joinButton.textContent = "Joining…";
  try {
    const answer = await api.redeemInvite(invite, patientName);
    info = answer.invite;
    /** @type {StoredPlace} */
    const place = { token: answer.participant_token, participantId: answer.participant_id, name: patientName, invite: answer.invite };
    savePlace(place);
    stopMeter();
    enterWaiting(place);
  } catch (err) {
    joinButton.disabled = false;
    joinButton.textContent = "Join consultation";
    const notice = inviteNotice(err);
    if (notice) {
      stopMeter();
      stopStream(stream);
      stream = null;
      if (notice !== "in-use-message") forgetAll();
      showNotice(notice);
    } else if (err instanceof ApiError && (err.status === 400 || err.status === 422)) {
      showError(joinError, err.message);
    } else {
      showError(joinError, `You could not join: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// Waiting room and call
// ---------------------------------------------------------------------------------------------

const callView = new CallView({ onHangUp: () => leave(), viewer: "patient", onShareScreen: () => void screenShare.toggle() });
/** Screens others share, shown while their sender may share one. */
const remoteScreens = new RemoteScreens((peer, stream) => callView.setPeerScreen(peer, stream));
/** This page's screen: it may share one while the doctor allows it. */
const screenShare = new ScreenShare({
  controller: () => controller,
  onChange: (sharing) => callView.setScreenSharing({ allowed: remoteScreens.guestsAllowed, sharing }),
  onError: (message) => showError(byId("media-error", HTMLElement), message),
  mayShare: () => remoteScreens.guestsAllowed,
});

/**
 * The doctor's choice of whether everyone may share a screen: the button shows or goes (a share
 * under way stops), and guests' screens show or go.
 * @param {boolean} allowed
 */
function setGuestsShareScreen(allowed) {
  remoteScreens.setGuestsAllowed(allowed);
  if (!allowed && screenShare.sharing) screenShare.stop();
  callView.setScreenSharing({ allowed: allowed && inCall, sharing: screenShare.sharing });
}
const messagingView = new MessagingView({
  peerName: (peerId) => {
    const peer = controller ? controller.peers.get(peerId) : undefined;
    if (!peer || (peer.role === "doctor" && !peer.name)) return doctorName();
    return describePeer(peer);
  },
});
const waitingMessage = byId("waiting-message", HTMLElement);
const waitingStatus = byId("waiting-status", HTMLElement);

function doctorName() {
  return info ? info.doctor_name : "your doctor";
}

/** @param {StoredPlace} place */
function enterWaiting(place) {
  info = place.invite;
  patientName = place.name;
  waitingMessage.textContent = `Waiting for ${doctorName()} to let you in…`;
  waitingStatus.textContent = "Connecting…";
  showView(views.waiting);
  renderRecording();

  const ice = new IceServerCache(place.token);
  ice.get(); // Fetch early: the connection starts the moment the doctor admits.
  const localStream = stream;
  messagingView.reset();
  /** @type {CallController} */
  const created = new CallController({
    send: (m) => (signaling ? signaling.send(m) : false),
    onMediaTrouble: () => signaling?.probe(),
    onNetworkChange: () => signaling?.reconnectNow(),
    getIceConfig: () => ice.get(),
    keepIceFresh: (onRenewed) => ice.keepFresh(onRenewed),
    localStream,
    onRemoteScreen: (screen, peer) => {
      if (controller === created) remoteScreens.take(peer, screen);
    },
    onRemoteStream: (remote, peer) => {
      if (controller === created) callView.setPeerStream(peer.role === "doctor" && !peer.name ? { ...peer, name: doctorName() } : peer, remote);
    },
    onMediaState: (state) => {
      mediaState = state;
      if (state === "connected") presenceNote = "";
      updateStatus();
    },
    onPeerPresence: (peer, online) => {
      presenceNote = online ? "" : `${peer.name || doctorName()}’s connection dropped — waiting for them to come back…`;
      updateStatus();
    },
    onPeerLeft: (peer, reason) => {
      const who = peer.name || doctorName();
      presenceNote =
        reason === "connection_lost"
          ? `${who} lost their connection. Please wait here: they may come back.`
          : `${who} left the call. Please wait here: they may come back.`;
      callView.setPlaceholder(presenceNote);
      updateStatus();
    },
    onDataChannel: (channel, peer) => {
      if (controller === created) messagingView.addChannel(channel, peer.participant_id);
      else channel.close();
    },
    onConnectionClosed: (peer) => {
      if (controller === created) messagingView.connectionClosed(peer.participant_id);
    },
    onIceProblem: (problem) => {
      if (controller !== created) return;
      iceProblem = problem;
      updateStatus();
    },
    onRecorder: (recorder) => {
      if (controller === created) callView.setRecorderPresent(!!recorder);
    },
    onVideoStep: (step) => {
      if (controller === created) callView.showVideoStep(step);
    },
    onRemoteVideoPaused: (peer, paused) => {
      if (controller === created) callView.setRemoteVideoPaused(peer.participant_id, paused);
    },
  });
  controller = created;
  signalingState = "connecting";
  signaling = new SignalingClient({
    join: { type: "join", token: place.token },
    onMessage: onSignal,
    onState: (state) => {
      signalingState = state;
      updateStatus();
    },
  });
  signaling.start();
}

/** @param {ServerMessage} m */
function onSignal(m) {
  const c = controller;
  if (!c) return;
  switch (m.type) {
    case "joined":
      if (info) info = { ...info, doctor_name: m.consultation.doctor_name, mode: m.consultation.mode };
      setUpE2ee(c, m);
      c.joined(m);
      if (consentUndelivered && consentAnswer !== null) sendConsent(consentAnswer);
      if (m.admitted) enterCall();
      else {
        waitingMessage.textContent = `Waiting for ${m.consultation.doctor_name} to let you in…`;
        updateStatus();
      }
      setGuestsShareScreen(m.consultation.guests_share_screen === true);
      break;
    case "admitted":
      enterCall();
      c.admitted(m.peers);
      break;
    case "declined":
      finish("declined-message");
      break;
    case "peer_joined":
      if (m.peer.role !== "recorder") presenceNote = "";
      c.peerJoined(m.peer);
      break;
    case "peer_presence":
      c.peerPresence(m.participant_id, m.online);
      break;
    case "screen_sharing":
      setGuestsShareScreen(m.guests_allowed);
      break;
    case "peer_left":
      c.peerLeft(m.participant_id, m.reason);
      break;
    case "description":
      c.description(m.from, m.description);
      break;
    case "candidate":
      c.candidate(m.from, m.candidate);
      break;
    case "recording":
      recording = m;
      renderRecording();
      break;
    case "consultation_ended":
      finish("ended-message");
      break;
    case "replaced":
      finish("replaced-message", { keepPlace: true, retry: () => resume() });
      break;
    case "error":
      if (!m.fatal) {
        console.warn("Signaling error", m.code, m.message);
      } else if (m.code === "consultation_ended") {
        finish("ended-message");
      } else if (m.code === "unauthorized" || m.code === "forbidden") {
        // The place is gone (removed, or the link was withdrawn): look at the link again.
        const wasInCall = inCall;
        finish(null, { keepPlace: true });
        savePlace(null);
        if (invite) {
          nameInput.value = patientName;
          showLanding(
            wasInCall
              ? "Your connection was lost for too long. Join again and your doctor can let you back in."
              : "Your place in the waiting room was lost. Join again to wait for your doctor.",
          );
        } else {
          showNotice("not-found-message");
        }
      } else {
        finish("error-message", { keepPlace: true, text: `The connection was refused: ${m.message}`, retry: () => resume() });
      }
      break;
    case "waiting_room":
    case "pong":
      break;
  }
}

/**
 * Turn on end-to-end encryption when the consultation has it (before any connection is made;
 * a later `joined` after a signaling reconnect keeps the one there is).
 * @param {CallController} c
 * @param {import('./protocol.js').JoinedMessage} joined
 */
function setUpE2ee(c, joined) {
  if (joined.consultation.e2ee !== true || e2ee) return;
  const created = new E2eeCall({
    localId: joined.participant_id,
    onView: (view) => {
      if (e2ee !== created) return;
      callView.setE2ee(view);
      if (e2eeProblem !== view.problem) {
        e2eeProblem = view.problem;
        updateStatus();
      }
    },
  });
  e2ee = created;
  c.setE2ee(created);
}

function enterCall() {
  if (inCall) return;
  inCall = true;
  byId("call-title", HTMLElement).textContent = `Video consultation with ${doctorName()}`;
  renderRecording();
  callView.setLocalStream(stream);
  callView.setPlaceholder("Connecting…");
  callView.startQuality(() => (controller ? controller.pc : null));
  callView.setScreenSharing({ allowed: remoteScreens.guestsAllowed, sharing: false });
  showView(views.call);
  announce(`${doctorName()} let you in.`);
}

// ---------------------------------------------------------------------------------------------
// Recording: the question, the indicator, and stopping
// ---------------------------------------------------------------------------------------------

const consentDialog = new ConsentDialog({ onAnswer: (allow) => sendConsent(allow) });
const waitingRecordingBadge = byId("waiting-mode", HTMLElement);
const stopRecordingButton = byId("recording-stop", HTMLButtonElement);
// At once, without a confirmation: stopping must be as easy as allowing was.
stopRecordingButton.addEventListener("click", () => sendConsent(false));

/**
 * Answer the recording question, or withdraw (`false` while recording). Refusing takes effect in
 * this page at once: its media stops going to the recorder before the service has answered.
 * @param {boolean} allow
 */
function sendConsent(allow) {
  consentAnswer = allow;
  consentUndelivered = !(signaling && signaling.send({ type: "consent", recording: allow }));
  if (consentUndelivered) console.warn("Not connected: the recording answer goes when the connection is back");
  renderRecording();
}

/**
 * Show the recording state (waiting room and call), ask when the service asks, and let this
 * page's media go to the recorder only while it records and the patient has not said no here.
 */
function renderRecording() {
  const mode = info ? info.mode : "live_only";
  const state = recording ? recording.state : mode === "live_only" ? "live_only" : null;
  const problem = recording?.problem;
  showRecordingState(waitingRecordingBadge, state, "patient", problem);
  callView.setRecording(state, problem);
  controller?.allowRecorder(state === "recording" && recording && consentAnswer !== false ? recorderPermit(recording) : null);
  stopRecordingButton.hidden = state !== "recording";
  stopRecordingButton.disabled = consentAnswer === false;
  if (state === "awaiting_consent" && consentAnswer === null && signaling) {
    consentDialog.open({ doctorName: doctorName(), retentionDays: recording?.retention_days });
  } else {
    consentDialog.close();
  }
}

/** What the patient is told when an end-to-end encrypted call cannot carry media. */
const E2EE_PROBLEMS = /** @type {Record<E2eeProblem, string>} */ ({
  "browser-unsupported":
    "This consultation is end-to-end encrypted, and this browser cannot encrypt calls that way, so no audio or video is exchanged. Please open the link in an up-to-date Chrome, Edge or Safari.",
  "peer-unsupported":
    "This consultation is end-to-end encrypted, and your doctor’s browser or app cannot encrypt calls that way, so no audio or video is exchanged. Please tell your clinic.",
  "keys-failed":
    "This consultation is end-to-end encrypted, and the encryption keys could not be agreed, so no audio or video is exchanged. Please leave and open the link again.",
  "key-check-failed":
    "End-to-end encryption stopped: your doctor’s encryption key failed its security check (it was not the key their device had committed to). Someone may be intercepting this call, so no audio or video is exchanged. Please leave and call your clinic.",
  "peer-key-check-failed":
    "End-to-end encryption stopped: your doctor’s device found that the encryption key it received was not the one committed to. Someone may be intercepting this call, so no audio or video is exchanged. Please leave and call your clinic.",
});

/** What the patient is told when the connection cannot work with the service's ICE configuration. */
const ICE_PROBLEMS = /** @type {Record<IceProblem, string>} */ ({
  "relay-not-configured":
    "The call cannot connect: this service sends calls through a relay server, and none is set up. Please tell your clinic.",
  "relay-unreachable":
    "The call cannot connect: the relay server for calls could not be reached. Check your internet connection; if that does not help, please tell your clinic.",
});

function updateStatus() {
  if (!inCall) {
    waitingStatus.textContent =
      signalingState === "reconnecting"
        ? "Connection lost — reconnecting…"
        : signalingState === "open"
          ? "Keep this page open. Your doctor has been told you are here."
          : "Connecting…";
    waitingStatus.classList.toggle("status-warning", signalingState === "reconnecting");
    return;
  }
  if (signalingState === "reconnecting" || !navigator.onLine) {
    callView.setStatus("Connection lost — reconnecting…", "warning");
  } else if (iceProblem) {
    callView.setStatus(ICE_PROBLEMS[iceProblem], "error");
  } else if (e2eeProblem && mediaState !== "waiting") {
    callView.setStatus(E2EE_PROBLEMS[e2eeProblem], "error");
  } else if (presenceNote) {
    callView.setStatus(presenceNote, "warning");
  } else if (mediaState === "reconnecting") {
    callView.setStatus("Connection lost — reconnecting…", "warning");
  } else if (mediaState === "connecting") {
    callView.setStatus(`Connecting to ${doctorName()}…`);
  } else if (mediaState === "waiting") {
    callView.setStatus(`Waiting for ${doctorName()}…`);
  } else {
    const names = (controller?.connectedPeers ?? []).map((p) => (p.role === "doctor" ? p.name || doctorName() : p.name)).filter((n) => n);
    callView.setStatus(`In the call with ${names.length > 0 ? listNames(names) : doctorName()}.`);
  }
}

window.addEventListener("online", () => {
  updateStatus();
  controller?.restartIce();
});
window.addEventListener("offline", () => updateStatus());

/**
 * End this tab's part: close everything and show a notice (or nothing with `null`).
 * @param {string | null} notice
 * @param {{ keepPlace?: boolean, text?: string, retry?: () => void, leave?: boolean }} [options]
 */
function finish(notice, options = {}) {
  if (signaling) {
    if (options.leave) signaling.leave();
    else signaling.close();
  }
  signaling = null;
  screenShare.stop();
  remoteScreens.clear();
  controller?.close();
  controller = null;
  e2ee?.close();
  e2ee = null;
  e2eeProblem = null;
  callView.stop();
  messagingView.reset();
  stopMeter();
  stopStream(stream);
  stream = null;
  inCall = false;
  presenceNote = "";
  iceProblem = null;
  mediaState = "waiting";
  recording = null;
  consentAnswer = null;
  consentUndelivered = false;
  consentDialog.close();
  stopRecordingButton.hidden = true;
  /** @type {any} */ (window).consultPc = null;
  if (!options.keepPlace) forgetAll();
  if (notice) {
    /** @type {{ text?: string, retry?: () => void }} */
    const noticeOptions = {};
    if (options.text) noticeOptions.text = options.text;
    if (options.retry) noticeOptions.retry = options.retry;
    showNotice(notice, noticeOptions);
  }
}

/** Hang up (or leave the waiting room) for good. */
function leave() {
  finish("left-message", { leave: true });
}

byId("waiting-leave", HTMLButtonElement).addEventListener("click", () => leave());

/** Take the stored place back: camera first (quietly when allowed), then the waiting room or call. */
async function resume() {
  const place = loadPlace();
  if (!place) {
    start();
    return;
  }
  info = place.invite;
  patientName = place.name;
  resuming = true;
  showView(views.loading, { focus: false });
  try {
    stream = await openMedia();
  } catch {
    // Ask on the device check page, which explains the problem.
    showDeviceCheck();
    return;
  }
  enterWaiting(place);
}

// ---------------------------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------------------------

function start() {
  let fromLink = "";
  try {
    fromLink = decodeURIComponent(location.hash.replace(/^#/, "")).trim();
  } catch {
    fromLink = location.hash.replace(/^#/, "").trim();
  }
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  let stored = "";
  try {
    stored = sessionStorage.getItem(INVITE_KEY) ?? "";
  } catch {
    stored = "";
  }
  if (fromLink && fromLink !== stored) {
    // A new link: forget any place taken with an older one in this tab.
    savePlace(null);
    try {
      sessionStorage.setItem(INVITE_KEY, fromLink);
    } catch {
      // Ignore.
    }
  }
  invite = fromLink || stored;
  if (loadPlace()) {
    resume();
  } else if (invite) {
    showLanding();
  } else {
    showNotice("no-link-message");
  }
}

// A new link opened in this tab while it shows a notice or the landing page: start over with it.
window.addEventListener("hashchange", () => {
  if (!location.hash || location.hash === "#") return;
  if (signaling) {
    // In the waiting room or a call: keep it, and keep the token out of the address bar.
    history.replaceState(null, "", location.pathname + location.search);
    return;
  }
  stopMeter();
  stopStream(stream);
  stream = null;
  resuming = false;
  start();
});

start();
