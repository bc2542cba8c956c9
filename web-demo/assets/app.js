// @ts-check
/**
 * The doctor's app (`/`): sign in (with the second factor, enrolling it the first time), the
 * consultation list with its waiting rooms, invite links, the call view, and each consultation's
 * recordings.
 *
 * Routes live in the fragment: `#/` is the list, `#/c/<consultation id>` a consultation's call,
 * `#/recordings/<consultation id>` its recordings, `#/certificates/<consultation id>` its medical
 * certificates, `#/account` the passkeys, and `#/alerts` the
 * security alerts (administrators only).
 */

import * as api from "./api.js";
import { ApiError, IceServerCache } from "./api.js";
import { CallController, recorderPermit } from "./call.js";
import { PeopleView } from "./people-view.js";
import { AccountView } from "./account-view.js";
import { AlertsView } from "./alerts-view.js";
import { CallView, describePeer } from "./call-view.js";
import { RemoteScreens, ScreenShare } from "./screen-share.js";
import { E2eeCall } from "./e2ee/call-e2ee.js";
import { publicKeyOfKeyFile, RECORDING_KEY_FILE_MAX_BYTES, RecordingKeyError, recordingKeyFingerprint } from "./e2ee/recording-key.js";
import { MessagingView } from "./messaging-view.js";
import { openMedia, stopStream } from "./media.js";
import { RecordingsView } from "./recordings-view.js";
import { CertificatesView } from "./certificates-view.js";
import { IdleWatch } from "./idle-watch.js";
import { SignInForm } from "./sign-in-form.js";
import { SignalingClient } from "./signaling.js";
import { announce, byId, confirmInline, formatDateTime, h, listNames, replaceKeepingFocus, showError, showView, svgDataUrl, waitedFor } from "./ui.js";

/** @typedef {import('./protocol.js').Session} Session */
/** @typedef {import('./protocol.js').MfaEnrolment} MfaEnrolment */
/** @typedef {import('./protocol.js').Consultation} Consultation */
/** @typedef {import('./protocol.js').WaitingPatient} WaitingPatient */
/** @typedef {import('./protocol.js').ServerMessage} ServerMessage */
/** @typedef {import('./protocol.js').ConsultationMode} ConsultationMode */
/** @typedef {import('./protocol.js').RecordingMessage} RecordingMessage */
/** @typedef {import('./protocol.js').Peer} Peer */
/** @typedef {import('./call.js').MediaState} MediaState */
/** @typedef {import('./call.js').IceProblem} IceProblem */
/** @typedef {import('./e2ee/call-e2ee.js').E2eeProblem} E2eeProblem */

const views = {
  loading: byId("view-loading", HTMLElement),
  signin: byId("view-signin", HTMLElement),
  mfa: byId("view-mfa", HTMLElement),
  recovery: byId("view-recovery", HTMLElement),
  list: byId("view-list", HTMLElement),
  call: byId("view-call", HTMLElement),
  callOver: byId("view-call-over", HTMLElement),
};

/** @type {Session | null} */
let session = null;

// ---------------------------------------------------------------------------------------------
// Session
// ---------------------------------------------------------------------------------------------

/** @param {Session} s */
function setSession(s) {
  if (session && s.user.id !== session.user.id) {
    // Someone else signed in in another tab (the cookie is shared): this page is not theirs.
    signInAfresh();
    return;
  }
  session = s;
  idleWatch.watch(s);
  api.setCsrfToken(s.csrf_token);
  byId("user-name", HTMLElement).textContent = s.user.display_name;
  byId("alerts-link", HTMLElement).hidden = s.user.role !== "admin";
  byId("user-info", HTMLElement).hidden = false;
}

function clearSession() {
  session = null;
  idleWatch.stop();
  alertsView.hide();
  api.setCsrfToken(null);
  byId("user-info", HTMLElement).hidden = true;
}

/**
 * Handle an error from any request made while signed in: an ended session locks the page.
 * Returns true when it did.
 * @param {unknown} err
 */
function handleSessionLoss(err) {
  if (err instanceof ApiError && err.status === 401 && err.code === "unauthenticated") {
    lockPage(idleWatch.idlePassed() ? AWAY : SESSION_ENDED);
    return true;
  }
  return false;
}

const SESSION_ENDED = "Your session has ended. Sign in again to continue where you left off.";
const AWAY =
  "You were away, so Consult locked to keep your patients’ information private. Sign in again to continue where you left off.";

/**
 * A readable message for an API error.
 * @param {unknown} err
 * @returns {string}
 */
function messageOf(err) {
  if (err instanceof ApiError) return err.message;
  return "Something went wrong. Please try again.";
}

// ---------------------------------------------------------------------------------------------
// Sign in
// ---------------------------------------------------------------------------------------------

const signInForm = new SignInForm("login", {
  submitLabel: "Sign in",
  onAnswer: (answer) => {
    if (answer.status === "signed_in") {
      setSession(answer.session);
      announce(`Signed in as ${answer.session.user.display_name}.`);
      route();
    } else {
      showMfaEnrolment(answer.enrolment);
    }
  },
});

/** @param {string} [notice] */
function showSignIn(notice) {
  const noticeEl = byId("signin-notice", HTMLElement);
  noticeEl.textContent = notice ?? "";
  noticeEl.hidden = !notice;
  showView(views.signin, { focus: false });
  signInForm.reset();
}

// ---------------------------------------------------------------------------------------------
// Automatic logoff: the page locks and keeps what it showed until the same person signs in
// ---------------------------------------------------------------------------------------------

const main = byId("main", HTMLElement);
const lockScreen = byId("lock-screen", HTMLElement);
/** The account the locked page belongs to, while it is locked. */
let lockedUser = /** @type {import('./protocol.js').User | null} */ (null);
/** Where the page was when it locked. */
let lockedAt = { hash: "" };

const idleWatch = new IdleWatch({
  onSession: (s) => setSession(s),
  onExpired: () => lockPage(AWAY),
});

const unlockForm = new SignInForm("lock", {
  submitLabel: "Unlock",
  onAnswer: (answer) => {
    if (answer.status !== "signed_in" || !lockedUser || answer.session.user.id !== lockedUser.id) {
      // Not the person the page belongs to: start afresh, without what it showed.
      signInAfresh();
      return;
    }
    lockedUser = null;
    lockScreen.hidden = true;
    main.hidden = false;
    setSession(answer.session);
    announce("Unlocked.");
    // The list carries on as it was (a half-typed title kept); any other view loads again.
    if (!views.list.hidden && location.hash === lockedAt.hash && !answer.session.passkey_setup_required) {
      startListPolling();
    } else {
      route();
    }
  },
});

/**
 * The session ended (idle, signed out elsewhere, revoked): hide the page, keeping it, and ask the
 * same person to sign in again.
 * @param {string} reason
 */
function lockPage(reason) {
  if (lockedUser) return;
  if (!session) {
    showSignIn(reason);
    return;
  }
  lockedUser = session.user;
  lockedAt = { hash: location.hash };
  leaveCall({ tellService: false });
  stopListPolling();
  recordingsView.hide();
  // An invite link is a live credential: it is not kept behind the lock.
  hideInvitePanel();
  clearSession();
  for (const media of main.querySelectorAll("video, audio")) {
    if (media instanceof HTMLMediaElement) media.pause();
  }
  main.hidden = true;
  byId("lock-reason", HTMLElement).textContent = reason;
  unlockForm.email.value = lockedUser.email;
  lockScreen.hidden = false;
  unlockForm.reset();
  announce("Consult is locked.");
}

/** Leave the locked page for the sign-in page, dropping everything the page held. */
function signInAfresh() {
  history.replaceState(null, "", "/");
  location.reload();
}

byId("lock-switch", HTMLButtonElement).addEventListener("click", () => signInAfresh());

// ---------------------------------------------------------------------------------------------
// Second factor enrolment and recovery codes
// ---------------------------------------------------------------------------------------------

/** @type {MfaEnrolment | null} */
let enrolment = null;
const mfaForm = byId("mfa-form", HTMLFormElement);
const mfaCode = byId("mfa-code", HTMLInputElement);
const mfaError = byId("mfa-error", HTMLElement);
const mfaSubmit = byId("mfa-submit", HTMLButtonElement);

/** @param {MfaEnrolment} e */
function showMfaEnrolment(e) {
  enrolment = e;
  byId("mfa-qr", HTMLImageElement).src = svgDataUrl(e.qr_svg);
  byId("mfa-secret", HTMLElement).textContent = e.totp_secret.replace(/(.{4})/g, "$1 ").trim();
  mfaCode.value = "";
  showError(mfaError, null);
  showView(views.mfa);
}

mfaForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!enrolment) return;
  const code = mfaCode.value.replace(/\s+/g, "");
  if (!/^\d{6}$/.test(code)) {
    showError(mfaError, "Enter the six-digit code your authenticator app shows.");
    mfaCode.focus();
    return;
  }
  mfaSubmit.disabled = true;
  try {
    const answer = await api.enrolMfa(enrolment.mfa_token, code);
    enrolment = null;
    setSession(answer.session);
    showRecoveryCodes(answer.recovery_codes);
  } catch (err) {
    const apiCode = err instanceof ApiError ? err.code : "";
    if (apiCode === "invalid_totp" || apiCode === "totp_replayed") {
      showError(mfaError, "That code is not correct. Check that the app shows “Consult” and enter its current code.");
    } else if (err instanceof ApiError && (err.status === 401 || err.status === 410)) {
      showSignIn("Setting up took too long. Sign in again to restart.");
      return;
    } else {
      showError(mfaError, messageOf(err));
    }
    mfaCode.value = "";
    mfaCode.focus();
  } finally {
    mfaSubmit.disabled = false;
  }
});

/** @param {string[]} codes */
function showRecoveryCodes(codes) {
  const list = byId("recovery-codes", HTMLOListElement);
  list.replaceChildren(...codes.map((c) => h("li", {}, [h("code", { text: c })])));
  const copy = byId("copy-codes", HTMLButtonElement);
  copy.onclick = async () => {
    try {
      await navigator.clipboard.writeText(codes.join("\n"));
      announce("Recovery codes copied.");
      copy.textContent = "Copied";
    } catch {
      announce("Copying failed: select the codes and copy them yourself.");
    }
  };
  showView(views.recovery);
}

byId("codes-saved", HTMLButtonElement).addEventListener("click", () => {
  byId("recovery-codes", HTMLOListElement).replaceChildren();
  navigate("#/");
});

byId("signout-button", HTMLButtonElement).addEventListener("click", async () => {
  leaveCall({ tellService: true });
  stopListPolling();
  recordingsView.hide();
  try {
    await api.logout();
  } catch (err) {
    console.warn("Sign-out failed", err);
  }
  clearSession();
  history.replaceState(null, "", "/");
  showSignIn("You are signed out.");
});

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

/** @param {string} hash */
function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

window.addEventListener("hashchange", () => route());

function route() {
  if (!session) return;
  if (session.passkey_setup_required || location.hash === "#/account") {
    // A session that may only add a passkey sees nothing else.
    leaveCall({ tellService: true });
    stopListPolling();
    recordingsView.hide();
    alertsView.hide();
    if (location.hash !== "#/account") history.replaceState(null, "", "#/account");
    accountView.show({ setupRequired: session.passkey_setup_required });
    return;
  }
  accountView.hide();
  if (location.hash === "#/alerts" && session.user.role === "admin") {
    leaveCall({ tellService: true });
    stopListPolling();
    recordingsView.hide();
    alertsView.show();
    return;
  }
  alertsView.hide();
  const match = /^#\/(c|s)\/([0-9a-fA-F-]{36})$/.exec(location.hash);
  const recordings = /^#\/recordings\/([0-9a-fA-F-]{36})$/.exec(location.hash);
  const certificates = /^#\/certificates\/([0-9a-fA-F-]{36})$/.exec(location.hash);
  if (!certificates) certificatesView.hide();
  if (certificates) {
    leaveCall({ tellService: true });
    stopListPolling();
    recordingsView.hide();
    certificatesView.show(certificates[1]);
  } else if (match) {
    const id = match[2];
    stopListPolling();
    recordingsView.hide();
    if (!call || call.id !== id) {
      leaveCall({ tellService: true });
      openCall(id, match[1] === "s");
    }
  } else if (recordings) {
    leaveCall({ tellService: true });
    stopListPolling();
    recordingsView.show(recordings[1]);
  } else {
    leaveCall({ tellService: true });
    recordingsView.hide();
    showList();
  }
}

const recordingsView = new RecordingsView({ onError: (err) => handleSessionLoss(err) });

const certificatesView = new CertificatesView({ onError: (err) => handleSessionLoss(err) });

const alertsView = new AlertsView({ onError: (err) => handleSessionLoss(err) });

const accountView = new AccountView({
  onError: (err) => handleSessionLoss(err),
  onPasskeyAdded: async () => {
    try {
      setSession(await api.getSession());
      if (session) accountView.setSetupRequired(session.passkey_setup_required);
    } catch (err) {
      handleSessionLoss(err);
    }
  },
});

// ---------------------------------------------------------------------------------------------
// Consultation list
// ---------------------------------------------------------------------------------------------

const rowsBody = byId("consultation-rows", HTMLTableSectionElement);
const listError = byId("list-error", HTMLElement);
/** @type {ReturnType<typeof setInterval> | undefined} */
let listTimer = undefined;
/** @type {Map<string, WaitingPatient[]>} */
let waitingByConsultation = new Map();
/** @type {Set<string>} */
let knownIds = new Set();

function showList() {
  showView(views.list, { focus: document.activeElement === document.body });
  loadRecordingKey();
  startListPolling();
}

/** Load the list and poll its waiting rooms (polls do not keep the session alive). */
function startListPolling() {
  stopListPolling();
  loadList();
  pollWaitingRoom();
  listTimer = setInterval(pollWaitingRoom, 2000);
}

function stopListPolling() {
  if (listTimer !== undefined) clearInterval(listTimer);
  listTimer = undefined;
}

/** The consultations other clinicians shared with this account, each with a way to join. */
async function loadShared() {
  /** @type {import('./protocol.js').SharedConsultation[]} */
  let shared;
  try {
    shared = await api.sharedConsultations();
  } catch (err) {
    handleSessionLoss(err);
    return;
  }
  const open = shared.filter((c) => c.status === "open");
  byId("shared-panel", HTMLElement).hidden = open.length === 0;
  replaceKeepingFocus(
    byId("shared-list", HTMLUListElement),
    open.map((c) => {
      const join = h("button", {
        className: "button small primary",
        text: "Join",
        testid: "shared-join",
        attrs: { type: "button", "data-key": c.id, "aria-label": `Join ${c.title || "Untitled consultation"} with ${c.doctor_name}` },
      });
      join.addEventListener("click", () => navigate(`#/s/${c.id}`));
      return h("li", { className: "shared-item", testid: "shared-item" }, [
        h("span", { className: "row-title", text: c.title || "Untitled consultation" }),
        h("span", { className: "hint", text: ` — ${c.doctor_name}${c.e2ee ? ", end-to-end encrypted" : ""} ` }),
        join,
      ]);
    }),
  );
}

async function loadList() {
  void loadShared();
  try {
    const consultations = await api.listConsultations();
    consultations.sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at));
    knownIds = new Set(consultations.map((c) => c.id));
    waitingByConsultation = new Map(consultations.map((c) => [c.id, c.waiting]));
    renderRows(consultations);
    showError(listError, null);
  } catch (err) {
    if (!handleSessionLoss(err)) showError(listError, `The consultations could not be loaded: ${messageOf(err)}`);
  }
}

async function pollWaitingRoom() {
  try {
    const entries = await api.waitingRoom();
    /** @type {Map<string, WaitingPatient[]>} */
    const grouped = new Map();
    for (const e of entries) {
      const list = grouped.get(e.consultation_id) ?? [];
      list.push(e);
      grouped.set(e.consultation_id, list);
    }
    waitingByConsultation = grouped;
    if ([...grouped.keys()].some((id) => !knownIds.has(id))) {
      await loadList();
    } else {
      renderWaitingCells();
    }
  } catch (err) {
    handleSessionLoss(err);
  }
}

/** @param {import('./protocol.js').InviteStatus | null} invite */
function describeInvite(invite) {
  if (!invite) return "None";
  if (invite.revoked) return "Withdrawn";
  if (Date.parse(invite.expires_at) < Date.now()) return "Expired";
  if (invite.in_use) return "In use by the patient";
  return `Valid until ${formatDateTime(invite.expires_at)}`;
}

/** @param {Consultation[]} consultations */
function renderRows(consultations) {
  replaceKeepingFocus(rowsBody, consultations.map(renderRow));
  byId("list-empty", HTMLElement).hidden = consultations.length > 0;
  byId("table-wrap", HTMLElement).hidden = consultations.length === 0;
}

/**
 * @param {Consultation} c
 * @returns {HTMLTableRowElement}
 */
function renderRow(c) {
  const title = c.title || "Untitled consultation";
  const open = c.status === "open";
  const titleCell = h("td", {}, [
    h("span", { className: "row-title", text: title }),
    h("span", {
      className: `badge small ${c.mode === "live_only" ? "badge-live" : "badge-recorded"}`,
      text: c.mode === "live_only" ? "Live only" : "Recorded",
    }),
    c.e2ee ? h("span", { className: "badge small badge-e2ee", text: "End-to-end encrypted", testid: "row-e2ee" }) : "",
  ]);
  const statusCell = h("td", {}, [
    h("span", { className: `status-pill ${open ? "open" : "ended"}`, text: open ? "Open" : "Ended" }),
  ]);
  if (!open && c.ended_at) statusCell.append(h("span", { className: "hint status-when", text: formatDateTime(c.ended_at) }));
  const waitingCell = h("td", { className: "waiting-cell", testid: "waiting-cell" });
  waitingCell.dataset.consultationId = c.id;
  const actions = h("div", { className: "row-actions" });
  if (open) {
    const openButton = h("button", {
      className: "button small primary",
      text: "Open",
      testid: "open-button",
      attrs: { type: "button", "aria-label": `Open ${title}` },
    });
    openButton.dataset.key = `open-${c.id}`;
    openButton.addEventListener("click", () => navigate(`#/c/${c.id}`));
    const reissue = h("button", {
      className: "button small",
      text: "New link",
      testid: "reissue-button",
      attrs: { type: "button", "aria-label": `New invite link for ${title}` },
    });
    reissue.dataset.key = `reissue-${c.id}`;
    reissue.addEventListener("click", () => reissueInvite(c, reissue));
    const revoke = h("button", {
      className: "button small",
      text: "Withdraw link",
      testid: "revoke-button",
      attrs: { type: "button", "aria-label": `Withdraw the invite link of ${title}` },
    });
    revoke.dataset.key = `revoke-${c.id}`;
    revoke.disabled = !c.invite || c.invite.revoked;
    revoke.addEventListener("click", () => revokeInvite(c, revoke));
    const end = h("button", {
      className: "button small danger-outline",
      text: "End",
      testid: "end-row-button",
      attrs: { type: "button", "aria-label": `End ${title}` },
    });
    end.dataset.key = `end-${c.id}`;
    end.addEventListener("click", () => endFromList(c, end));
    actions.append(openButton, reissue, revoke, end);
  }
  // Open or ended: what was recorded stays until it is shredded.
  const recordings = h("a", {
    className: "button small",
    text: "Recordings",
    testid: "recordings-link",
    attrs: { href: `#/recordings/${c.id}`, "aria-label": `Recordings of ${title}` },
  });
  recordings.dataset.key = `recordings-${c.id}`;
  const certificates = h("a", {
    className: "button small",
    text: "Certificates",
    testid: "certificates-link",
    attrs: { href: `#/certificates/${c.id}`, "aria-label": `Certificates of ${title}` },
  });
  certificates.dataset.key = `certificates-${c.id}`;
  actions.append(recordings, certificates);
  const row = h("tr", { testid: "consultation-row" }, [
    titleCell,
    statusCell,
    h("td", { text: formatDateTime(c.created_at) }),
    h("td", { text: open ? describeInvite(c.invite) : "—" }),
    waitingCell,
    h("td", { className: "actions-cell" }, [actions]),
  ]);
  row.dataset.id = c.id;
  fillWaitingCell(waitingCell, waitingByConsultation.get(c.id) ?? []);
  return row;
}

/**
 * @param {HTMLElement} cell
 * @param {WaitingPatient[]} entries
 */
function fillWaitingCell(cell, entries) {
  if (entries.length === 0) {
    cell.replaceChildren(h("span", { className: "muted", text: "—" }));
    return;
  }
  cell.replaceChildren(
    ...entries.map((e) =>
      h("span", { className: `waiting-chip${e.connected ? "" : " offline"}`, testid: "list-waiting-entry" }, [
        h("span", { className: "dot", attrs: { "aria-hidden": "true" } }),
        `${e.name} · waiting ${waitedFor(e.waiting_since)}${e.connected ? "" : " (offline)"}`,
      ]),
    ),
  );
}

function renderWaitingCells() {
  for (const cell of rowsBody.querySelectorAll("td.waiting-cell")) {
    if (cell instanceof HTMLElement && cell.dataset.consultationId) {
      fillWaitingCell(cell, waitingByConsultation.get(cell.dataset.consultationId) ?? []);
    }
  }
}

// Create
const createForm = byId("create-form", HTMLFormElement);
const createTitle = byId("create-title", HTMLInputElement);
const createMode = byId("create-mode", HTMLSelectElement);
const createE2ee = byId("create-e2ee", HTMLInputElement);
const createSubmit = byId("create-submit", HTMLButtonElement);
const createError = byId("create-error", HTMLElement);

createForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const title = createTitle.value.trim();
  const mode = createMode.value === "recorded" ? "recorded" : "live_only";
  createSubmit.disabled = true;
  showError(createError, null);
  try {
    // Unticked means "the organisation's default", not "off": a policy that requires E2EE refuses `false`.
    const c = await api.createConsultation({ title: title || null, mode, ...(createE2ee.checked ? { e2ee: true } : {}) });
    createTitle.value = "";
    if (c.invite_url) showInvitePanel(c.id, c.title, c.invite_url, c.invite ? c.invite.expires_at : null);
    await loadList();
  } catch (err) {
    if (err instanceof ApiError && err.code === "recording_key_missing") {
      showError(createError, RECORDING_KEY_MISSING);
      recordingKey = null;
      renderRecordingKey();
    } else if (!handleSessionLoss(err)) {
      showError(createError, messageOf(err));
    }
  } finally {
    createSubmit.disabled = false;
  }
});

// Recording key: the public key recordings of end-to-end encrypted consultations are sealed to.
const RECORDING_KEY_MISSING =
  "This consultation cannot be recorded yet: it is end-to-end encrypted, and you have not registered a recording key. Register one under “Recording key”, below.";
const recordingKeyStatus = byId("recording-key-status", HTMLElement);
const recordingKeyFile = byId("recording-key-file", HTMLInputElement);
const recordingKeyError = byId("recording-key-error", HTMLElement);
const createRecordingKeyNote = byId("create-recording-key-note", HTMLElement);
/** @type {string | null | undefined} The registered recording public key (base64); null: none; undefined: not known. */
let recordingKey = undefined;

async function loadRecordingKey() {
  try {
    recordingKey = await api.getRecordingKey();
  } catch (err) {
    if (handleSessionLoss(err)) return;
    console.warn("Could not check the recording key", err);
    recordingKey = undefined;
  }
  renderRecordingKey();
}

function renderRecordingKey() {
  if (recordingKey) {
    recordingKeyStatus.dataset.state = "registered";
    recordingKeyStatus.replaceChildren(
      "Registered. Fingerprint: ",
      h("code", { text: recordingKeyFingerprint(recordingKey), testid: "recording-key-fingerprint" }),
      " (the start of the public key “consult recording keygen” printed). Choose another key file to replace it; keep the old one for the recordings made until then.",
    );
  } else if (recordingKey === null) {
    recordingKeyStatus.dataset.state = "missing";
    recordingKeyStatus.textContent = "No recording key registered: end-to-end encrypted consultations cannot be recorded until you register one.";
  } else {
    recordingKeyStatus.dataset.state = "unknown";
    recordingKeyStatus.textContent = "Whether you have a recording key registered could not be checked.";
  }
  updateCreateNote();
}

/** Say, next to the button, that a recorded end-to-end encrypted consultation needs a recording key. */
function updateCreateNote() {
  createRecordingKeyNote.hidden = !(createMode.value === "recorded" && createE2ee.checked && recordingKey === null);
}
createMode.addEventListener("change", updateCreateNote);
createE2ee.addEventListener("change", updateCreateNote);

// The key file is read here; only its public key goes to the service.
recordingKeyFile.addEventListener("change", async () => {
  const file = recordingKeyFile.files ? recordingKeyFile.files[0] : undefined;
  if (!file) return;
  showError(recordingKeyError, null);
  recordingKeyFile.disabled = true;
  try {
    if (file.size > RECORDING_KEY_FILE_MAX_BYTES) throw new RecordingKeyError("This file is too large to be a recording key file.");
    const publicKey = publicKeyOfKeyFile(await file.text());
    const replacing = !!recordingKey && recordingKey !== publicKey;
    await api.setRecordingKey(publicKey);
    recordingKey = publicKey;
    renderRecordingKey();
    if (createError.textContent === RECORDING_KEY_MISSING) showError(createError, null);
    announce(replacing ? "Recording key replaced. Keep the old key file: the recordings made until now need it." : "Recording key registered.");
  } catch (err) {
    if (err instanceof RecordingKeyError) showError(recordingKeyError, err.message);
    else if (!handleSessionLoss(err)) showError(recordingKeyError, `The recording key was not registered: ${messageOf(err)}`);
  } finally {
    recordingKeyFile.value = "";
    recordingKeyFile.disabled = false;
  }
});

// Invite panel
const invitePanel = byId("invite-panel", HTMLElement);
const inviteUrl = byId("invite-url", HTMLInputElement);
const copyInvite = byId("copy-invite", HTMLButtonElement);
let invitePanelConsultation = "";

/**
 * @param {string} id
 * @param {string | null} title
 * @param {string} url
 * @param {string | null} expiresAt
 */
function showInvitePanel(id, title, url, expiresAt) {
  invitePanelConsultation = id;
  byId("invite-heading", HTMLElement).textContent = `Invite link for “${title || "Untitled consultation"}”`;
  inviteUrl.value = url;
  byId("invite-expiry", HTMLElement).textContent = expiresAt ? `The link works until ${formatDateTime(expiresAt)}.` : "";
  copyInvite.textContent = "Copy invite link";
  invitePanel.hidden = false;
  copyInvite.focus();
  announce("Invite link created. Copy it and send it to your patient.");
}

copyInvite.addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(inviteUrl.value);
    copyInvite.textContent = "Copied ✓";
    announce("Invite link copied.");
  } catch {
    inviteUrl.focus();
    inviteUrl.select();
    announce("Copying is not possible here: the link is selected, copy it with Ctrl+C (⌘C on a Mac).");
  }
});
inviteUrl.addEventListener("focus", () => inviteUrl.select());

byId("start-call", HTMLButtonElement).addEventListener("click", () => {
  const id = invitePanelConsultation;
  hideInvitePanel();
  if (id) navigate(`#/c/${id}`);
});
byId("invite-done", HTMLButtonElement).addEventListener("click", () => {
  hideInvitePanel();
  createTitle.focus();
});

function hideInvitePanel() {
  invitePanel.hidden = true;
  inviteUrl.value = "";
  invitePanelConsultation = "";
}

/**
 * @param {Consultation} c
 * @param {HTMLButtonElement} button
 */
async function reissueInvite(c, button) {
  const active = c.invite && !c.invite.revoked && Date.parse(c.invite.expires_at) > Date.now();
  if (active && !(await confirmInline(button, "The current link stops working.", "Issue new link", { testid: "reissue-confirm" }))) return;
  try {
    const invite = await api.reissueInvite(c.id);
    showInvitePanel(c.id, c.title, invite.invite_url, invite.expires_at);
    await loadList();
  } catch (err) {
    if (!handleSessionLoss(err)) showError(listError, `No new link: ${messageOf(err)}`);
  }
}

/**
 * @param {Consultation} c
 * @param {HTMLButtonElement} button
 */
async function revokeInvite(c, button) {
  if (!(await confirmInline(button, "The patient can no longer use the link.", "Withdraw", { testid: "revoke-confirm", danger: true }))) return;
  try {
    await api.revokeInvite(c.id);
    if (invitePanelConsultation === c.id) hideInvitePanel();
    announce("Invite link withdrawn.");
    await loadList();
  } catch (err) {
    if (!handleSessionLoss(err)) showError(listError, `The link was not withdrawn: ${messageOf(err)}`);
  }
}

/**
 * @param {Consultation} c
 * @param {HTMLButtonElement} button
 */
async function endFromList(c, button) {
  if (!(await confirmInline(button, "End it for everyone?", "End consultation", { testid: "end-row-confirm", danger: true }))) return;
  try {
    await api.endConsultation(c.id);
    if (invitePanelConsultation === c.id) hideInvitePanel();
    announce("Consultation ended.");
    await loadList();
  } catch (err) {
    if (!handleSessionLoss(err)) showError(listError, `The consultation was not ended: ${messageOf(err)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Call
// ---------------------------------------------------------------------------------------------

/**
 * @typedef {object} ActiveCall
 * @property {string} id
 * @property {SignalingClient | null} signaling
 * @property {CallController | null} controller
 * @property {MediaStream | null} stream
 * @property {WaitingPatient[]} waiting
 * @property {number} waitingUpdates Waiting-room lists the service pushed, so that an older answer
 *   to a request cannot overwrite a newer push.
 * @property {ReturnType<typeof setInterval>} timer
 * @property {"connecting" | "open" | "reconnecting" | "closed"} signalingState
 * @property {MediaState} mediaState
 * @property {string} presenceNote
 * @property {IceProblem | null} iceProblem Why the connection cannot work, shown as an error.
 * @property {E2eeCall | null} e2ee End-to-end encryption, when the consultation has it.
 * @property {E2eeProblem | null} e2eeProblem Why an end-to-end encrypted call carries no media.
 * @property {ConsultationMode | null} mode Live only or recorded, once known.
 * @property {RecordingMessage | null} recording What the service last said about recording.
 * @property {boolean} over
 * @property {boolean} colleague This page joins another clinician's consultation (it was shared
 *   with this account): it waits to be admitted and manages nothing.
 * @property {boolean} admitted Whether this page is admitted (a doctor always is).
 */

/** @type {ActiveCall | null} */
let call = null;
const callView = new CallView({ onHangUp: () => hangUp(), viewer: "doctor", onShareScreen: () => void screenShare.toggle() });
const remoteScreens = new RemoteScreens((peer, stream) => callView.setPeerScreen(peer, stream));
const guestsShareScreen = byId("guests-share-screen", HTMLInputElement);
guestsShareScreen.addEventListener("change", () => {
  const active = call;
  // The service tells everyone (this page too); until then the box shows the request, and it
  // goes back to what is in effect when the request cannot go.
  if (!active || !active.signaling || !active.signaling.send({ type: "screen_sharing", guests_allowed: guestsShareScreen.checked })) {
    guestsShareScreen.checked = remoteScreens.guestsAllowed;
  }
});
const screenShare = new ScreenShare({
  controller: () => (call ? call.controller : null),
  onChange: (sharing) => callView.setScreenSharing({ allowed: true, sharing }),
  onError: (message) => showError(mediaError, message),
});
const messagingView = new MessagingView({
  peerName: (peerId) => {
    const peer = call && call.controller ? call.controller.peers.get(peerId) : undefined;
    return peer ? describePeer(peer) : "The other participant";
  },
});
const waitingList = byId("waiting-list", HTMLUListElement);
const waitingEmpty = byId("waiting-empty", HTMLElement);
const admitError = byId("admit-error", HTMLElement);
const mediaError = byId("media-error", HTMLElement);
const endButton = byId("end-button", HTMLButtonElement);
const waitingPanel = byId("waiting-panel", HTMLElement);
const peopleView = new PeopleView({ onError: (err) => handleSessionLoss(err) });

/** @param {string} id */
/**
 * @param {string} id
 * @param {boolean} [asColleague] The consultation was shared with this account by its doctor.
 */
async function openCall(id, asColleague = false) {
  /** @type {ActiveCall} */
  const active = {
    id,
    signaling: null,
    controller: null,
    stream: null,
    waiting: [],
    waitingUpdates: 0,
    timer: setInterval(() => updateWaitingTimes(), 1000),
    signalingState: "connecting",
    mediaState: "waiting",
    presenceNote: "",
    iceProblem: null,
    e2ee: null,
    e2eeProblem: null,
    mode: null,
    recording: null,
    over: false,
    colleague: asColleague,
    admitted: !asColleague,
  };
  call = active;
  waitingPanel.hidden = asColleague;
  endButton.hidden = asColleague;
  peopleView.show(null);
  byId("call-title", HTMLElement).textContent = "Consultation";
  showError(mediaError, null);
  showError(admitError, null);
  renderWaiting([]);
  callView.stop();
  callView.setPlaceholder(asColleague ? "Waiting for the others…" : "Waiting for your patient…");
  messagingView.reset();
  showView(views.call);

  /** @type {Consultation | import('./protocol.js').SharedConsultation} */
  let consultation;
  try {
    if (asColleague) {
      const shared = (await api.sharedConsultations()).find((c) => c.id === id);
      if (!shared) throw new ApiError(404, "not_found", "not shared with you");
      consultation = shared;
    } else {
      consultation = await api.getConsultation(id);
    }
  } catch (err) {
    if (handleSessionLoss(err)) return;
    clearInterval(active.timer);
    call = null;
    showCallOver(
      err instanceof ApiError && err.status === 404
        ? asColleague
          ? "This consultation is not shared with you (any more)."
          : "This consultation does not exist."
        : messageOf(err),
      "",
    );
    return;
  }
  if (call !== active) return;
  byId("call-title", HTMLElement).textContent = consultation.title || "Untitled consultation";
  active.mode = consultation.mode;
  renderRecording(active);
  if (consultation.status === "ended") {
    clearInterval(active.timer);
    call = null;
    showCallOver("The consultation has ended.", "ended-message");
    return;
  }
  if ("waiting" in consultation) {
    renderWaiting(consultation.waiting);
    peopleView.show(consultation);
  }

  const ice = new IceServerCache();
  ice.get(); // Fetch early: the connection starts the moment a patient is admitted.
  try {
    active.stream = await openMedia();
  } catch (err) {
    showError(mediaError, `${err instanceof Error ? err.message : String(err)} You can still admit the patient; they will not see or hear you.`);
  }
  if (call !== active) {
    stopStream(active.stream);
    return;
  }
  callView.setLocalStream(active.stream);
  // Clinicians share their screen (results, images) with everyone in the call.
  callView.setScreenSharing({ allowed: true, sharing: false });

  const controller = new CallController({
    send: (m) => (active.signaling ? active.signaling.send(m) : false),
    onMediaTrouble: () => active.signaling?.probe(),
    onNetworkChange: () => active.signaling?.reconnectNow(),
    getIceConfig: () => ice.get(),
    keepIceFresh: (onRenewed) => ice.keepFresh(onRenewed),
    localStream: active.stream,
    onRemoteStream: (stream, peer) => {
      if (call === active) callView.setPeerStream(peer, stream);
    },
    onRemoteScreen: (stream, peer) => {
      if (call === active) remoteScreens.take(peer, stream);
    },
    onMediaState: (state) => {
      active.mediaState = state;
      if (state === "connected") active.presenceNote = "";
      updateCallStatus();
    },
    onPeerPresence: (peer, online) => {
      active.presenceNote = online ? "" : `${peer.name || "The patient"}’s connection dropped — waiting for them to come back…`;
      updateCallStatus();
    },
    onPeerLeft: (peer, reason) => {
      const name = peer.name || "The patient";
      active.presenceNote =
        reason === "left" ? `${name} left the consultation.` : reason === "connection_lost" ? `${name} lost their connection.` : `${name} was removed.`;
      callView.setPlaceholder(active.presenceNote);
      updateCallStatus();
    },
    onDataChannel: (channel, peer) => {
      if (call === active) messagingView.addChannel(channel, peer.participant_id);
      else channel.close();
    },
    onConnectionClosed: (peer) => {
      if (call === active) messagingView.connectionClosed(peer.participant_id);
    },
    onIceProblem: (problem) => {
      active.iceProblem = problem;
      updateCallStatus();
    },
    onRecorder: (recorder) => {
      if (call === active) callView.setRecorderPresent(!!recorder);
    },
    onVideoStep: (step) => {
      if (call === active) callView.showVideoStep(step);
    },
    onRemoteVideoPaused: (peer, paused) => {
      if (call === active) callView.setRemoteVideoPaused(peer.participant_id, paused);
    },
  });
  active.controller = controller;
  renderRecording(active);
  callView.startQuality(() => controller.pc);

  const signaling = new SignalingClient({
    join: { type: "join", consultation_id: id },
    onMessage: (m) => onSignal(active, m),
    onState: (state) => {
      active.signalingState = state;
      updateCallStatus();
    },
  });
  active.signaling = signaling;
  signaling.start();
}

/**
 * @param {ActiveCall} active
 * @param {ServerMessage} m
 */
function onSignal(active, m) {
  if (call !== active || !active.controller) return;
  const controller = active.controller;
  switch (m.type) {
    case "joined":
      active.admitted = m.admitted;
      active.mode = m.consultation.mode;
      renderRecording(active);
      setUpE2ee(active, m);
      controller.joined(m);
      remoteScreens.setGuestsAllowed(m.consultation.guests_share_screen === true);
      guestsShareScreen.checked = m.consultation.guests_share_screen === true;
      if (m.resumed) announce("Reconnected.");
      refreshWaitingRoom(active);
      break;
    case "waiting_room":
      active.waitingUpdates += 1;
      renderWaiting(m.entries.filter((e) => e.consultation_id === active.id));
      // Someone took up (or let go of) a link: the people list says whether it is in use.
      void peopleView.refresh();
      break;
    case "peer_joined":
      if (m.peer.role !== "recorder") {
        active.presenceNote = "";
        announce(`${m.peer.name} joined the call.`);
      }
      controller.peerJoined(m.peer);
      break;
    case "peer_presence":
      controller.peerPresence(m.participant_id, m.online);
      break;
    case "screen_sharing":
      remoteScreens.setGuestsAllowed(m.guests_allowed);
      guestsShareScreen.checked = m.guests_allowed;
      break;
    case "peer_left":
      controller.peerLeft(m.participant_id, m.reason);
      break;
    case "description":
      controller.description(m.from, m.description);
      break;
    case "candidate":
      controller.candidate(m.from, m.candidate);
      break;
    case "recording":
      active.recording = m;
      renderRecording(active);
      break;
    case "consultation_ended":
      finishCall("The consultation has ended.", "ended-message");
      break;
    case "replaced":
      finishCall("This consultation was opened in another tab or window, so it was closed here.", "replaced-message", true);
      break;
    case "error":
      if (m.code === "doctor_busy") {
        showError(admitError, "You are already in a call in another consultation. Hang up there first.");
      } else if (m.code === "consultation_full") {
        // Only when the organisation lowered its limit below the places already promised.
        showError(admitError, "The call is full: nobody more can take part at once. They wait until someone leaves.");
      } else if (m.code === "unauthorized" && m.fatal) {
        // Signed out elsewhere, password changed, account disabled: the service closed the call.
        lockPage(SESSION_ENDED);
      } else if (m.fatal) {
        finishCall(
          m.code === "consultation_ended" ? "The consultation has ended." : `The call could not continue: ${m.message}`,
          m.code === "consultation_ended" ? "ended-message" : "call-error-message",
        );
      } else {
        console.warn("Signaling error", m.code, m.message);
      }
      break;
    case "admitted":
      // A colleague's page, let in by the consultation's doctor.
      active.admitted = true;
      announce("You were let in.");
      controller.admitted(m.peers);
      updateCallStatus();
      break;
    case "declined":
      finishCall("The clinician did not let you in this time.", "declined-message");
      break;
    case "pong":
      break;
  }
}

/**
 * Turn on end-to-end encryption when the consultation has it (before any connection is made;
 * a later `joined` after a signaling reconnect keeps the one there is).
 * @param {ActiveCall} active
 * @param {import('./protocol.js').JoinedMessage} joined
 */
function setUpE2ee(active, joined) {
  if (joined.consultation.e2ee !== true || active.e2ee || !active.controller) {
    if (!active.e2ee) callView.setE2ee(null);
    return;
  }
  active.e2ee = new E2eeCall({
    localId: joined.participant_id,
    onView: (view) => {
      if (call !== active) return;
      callView.setE2ee(view);
      if (active.e2eeProblem !== view.problem) {
        active.e2eeProblem = view.problem;
        updateCallStatus();
      }
    },
  });
  active.controller.setE2ee(active.e2ee);
}

/**
 * Show the recording state, and let media go to the recorder only while the service says the
 * consultation is being recorded.
 * @param {ActiveCall} active
 */
function renderRecording(active) {
  const state = active.recording ? active.recording.state : active.mode === "live_only" ? "live_only" : null;
  callView.setRecording(state, active.recording?.problem);
  active.controller?.allowRecorder(state === "recording" && active.recording ? recorderPermit(active.recording) : null);
}

/** @param {ActiveCall} active */
async function refreshWaitingRoom(active) {
  const pushedBefore = active.waitingUpdates;
  try {
    const entries = await api.waitingRoom();
    // A list the service pushed while this request was under way is newer than its answer
    // (a patient who joined meanwhile would otherwise vanish from the list).
    if (call === active && active.waitingUpdates === pushedBefore) {
      renderWaiting(entries.filter((e) => e.consultation_id === active.id));
    }
  } catch (err) {
    handleSessionLoss(err);
  }
}

/** What the doctor is told when the connection cannot work with the service's ICE configuration. */
const ICE_PROBLEMS = /** @type {Record<IceProblem, string>} */ ({
  "relay-not-configured":
    "The call cannot connect: this service only allows calls through a relay (TURN) server, and none is configured. Ask the service’s administrator to set one up.",
  "relay-unreachable":
    "The call cannot connect: the relay (TURN) server this service requires could not be reached. Check your network; if that does not help, tell the service’s administrator.",
});

/** What the doctor is told when an end-to-end encrypted call cannot carry media. */
const E2EE_PROBLEMS = /** @type {Record<E2eeProblem, string>} */ ({
  "browser-unsupported":
    "This consultation is end-to-end encrypted, and this browser cannot encrypt calls that way, so no audio or video is exchanged. Use an up-to-date Chrome, Edge or Safari.",
  "peer-unsupported":
    "This consultation is end-to-end encrypted, and your patient’s browser or app cannot encrypt calls that way, so no audio or video is exchanged. Ask them to use an up-to-date Chrome, Edge or Safari.",
  "keys-failed":
    "This consultation is end-to-end encrypted, and the encryption keys could not be agreed, so no audio or video is exchanged. Hang up and open the consultation again.",
  "key-check-failed":
    "End-to-end encryption stopped: your patient’s encryption key failed its security check (it was not the key their device had committed to). Someone may be intercepting this call, so no audio or video is exchanged. Hang up and reach your patient another way.",
  "peer-key-check-failed":
    "End-to-end encryption stopped: your patient’s device found that the encryption key it received was not the one committed to. Someone may be intercepting this call, so no audio or video is exchanged. Hang up and reach your patient another way.",
});

function updateCallStatus() {
  const active = call;
  if (!active) return;
  if (active.signalingState === "reconnecting") {
    callView.setStatus("Connection lost — reconnecting…", "warning");
    return;
  }
  if (!navigator.onLine) {
    callView.setStatus("Your device is offline. Connection lost — reconnecting…", "warning");
    return;
  }
  if (active.iceProblem) {
    callView.setStatus(ICE_PROBLEMS[active.iceProblem], "error");
    return;
  }
  if (active.e2eeProblem && active.mediaState !== "waiting") {
    callView.setStatus(E2EE_PROBLEMS[active.e2eeProblem], "error");
    return;
  }
  if (active.presenceNote) {
    callView.setStatus(active.presenceNote, "warning");
    return;
  }
  switch (active.mediaState) {
    case "waiting":
      callView.setStatus(
        active.signalingState !== "open"
          ? "Connecting…"
          : !active.admitted
            ? "Waiting for the consultation’s clinician to let you in."
            : active.colleague
              ? "Waiting for the others to join."
              : "Waiting for your patient. Admit them from the waiting room.",
      );
      break;
    case "connecting":
      callView.setStatus("Connecting the call…");
      break;
    case "reconnecting":
      callView.setStatus("Connection lost — reconnecting…", "warning");
      break;
    case "connected": {
      const names = (active.controller?.connectedPeers ?? []).map((p) => p.name).filter((n) => n);
      callView.setStatus(names.length > 0 ? `In the call with ${listNames(names)}.` : "In the call.");
      break;
    }
  }
}

window.addEventListener("online", () => {
  updateCallStatus();
  call?.controller?.restartIce();
});
window.addEventListener("offline", () => updateCallStatus());

/** @param {WaitingPatient[]} entries */
function renderWaiting(entries) {
  if (!call) return;
  const before = call.waiting.map((e) => `${e.participant_id}:${e.connected}`).join(",");
  const after = entries.map((e) => `${e.participant_id}:${e.connected}`).join(",");
  call.waiting = entries;
  waitingEmpty.hidden = entries.length > 0;
  if (before === after && waitingList.children.length === entries.length) {
    updateWaitingTimes();
    return;
  }
  const hadFocus = waitingList.contains(document.activeElement);
  waitingList.replaceChildren(
    ...entries.map((e) => {
      const admitButton = h("button", {
        className: "button small primary",
        text: "Admit",
        testid: "admit-button",
        attrs: { type: "button", "aria-label": `Admit ${e.name}` },
      });
      const declineButton = h("button", {
        className: "button small",
        text: "Decline",
        testid: "decline-button",
        attrs: { type: "button", "aria-label": `Decline ${e.name}` },
      });
      admitButton.addEventListener("click", () => admitPatient(e, admitButton));
      declineButton.addEventListener("click", () => declinePatient(e, declineButton));
      const time = h("span", { className: "waiting-time", testid: "waiting-time" });
      time.dataset.since = e.waiting_since;
      time.textContent = `waiting ${waitedFor(e.waiting_since)}`;
      const item = h("li", { className: "waiting-entry", testid: "waiting-entry" }, [
        h("div", { className: "waiting-who" }, [
          h("span", { className: "waiting-name", text: e.name, testid: "waiting-name" }),
          time,
          e.connected ? "" : h("span", { className: "muted", text: " · offline" }),
        ]),
        h("div", { className: "waiting-actions" }, [admitButton, declineButton]),
      ]);
      item.dataset.participantId = e.participant_id;
      return item;
    }),
  );
  if (entries.length > 0 && call.waiting.length > 0 && before !== after) {
    const newest = entries[entries.length - 1];
    if (!before.includes(newest.participant_id)) announce(`${newest.name} is waiting.`);
  }
  if (hadFocus) {
    const first = waitingList.querySelector("button");
    if (first instanceof HTMLElement) first.focus();
    else endButton.focus();
  }
}

function updateWaitingTimes() {
  for (const el of waitingList.querySelectorAll(".waiting-time")) {
    if (el instanceof HTMLElement && el.dataset.since) el.textContent = `waiting ${waitedFor(el.dataset.since)}`;
  }
}

/**
 * @param {WaitingPatient} entry
 * @param {HTMLButtonElement} button
 */
async function admitPatient(entry, button) {
  const active = call;
  if (!active) return;
  button.disabled = true;
  showError(admitError, null);
  try {
    await api.admit(active.id, entry.participant_id);
    announce(`${entry.name} admitted.`);
  } catch (err) {
    button.disabled = false;
    if (handleSessionLoss(err)) return;
    const code = err instanceof ApiError ? err.code : "";
    showError(
      admitError,
      code === "doctor_busy"
        ? "You are already in a call in another consultation. Hang up there first."
        : `${entry.name} could not be admitted: ${messageOf(err)}`,
    );
  }
}

/**
 * @param {WaitingPatient} entry
 * @param {HTMLButtonElement} button
 */
async function declinePatient(entry, button) {
  const active = call;
  if (!active) return;
  if (!(await confirmInline(button, `Decline ${entry.name}?`, "Decline", { testid: "decline-confirm", danger: true }))) return;
  showError(admitError, null);
  try {
    await api.decline(active.id, entry.participant_id);
    announce(`${entry.name} declined.`);
  } catch (err) {
    if (!handleSessionLoss(err)) showError(admitError, `${entry.name} could not be declined: ${messageOf(err)}`);
  }
}

endButton.addEventListener("click", async () => {
  const active = call;
  if (!active) return;
  if (!(await confirmInline(endButton, "End for everyone? The invite link stops working.", "Yes, end it", { testid: "end-confirm", danger: true }))) return;
  try {
    await api.endConsultation(active.id);
    // The service may have said so already (`consultation_ended`), and the doctor moved on
    // while the answer came back (it waits for the recorder to seal): show it only if this call
    // is still the page's.
    if (call === active) finishCall("The consultation has ended.", "ended-message");
  } catch (err) {
    if (!handleSessionLoss(err)) callView.setStatus(`The consultation was not ended: ${messageOf(err)}`, "error");
  }
});

function hangUp() {
  navigate("#/");
}

byId("back-button", HTMLButtonElement).addEventListener("click", () => navigate("#/"));

/**
 * Leave the current call (if any): hang up on the service, close the connection, release media.
 * @param {{ tellService: boolean }} options
 */
function leaveCall({ tellService }) {
  const active = call;
  if (!active) return;
  call = null;
  clearInterval(active.timer);
  if (active.signaling) {
    if (tellService) active.signaling.leave();
    else active.signaling.close();
  }
  screenShare.stop();
  remoteScreens.clear();
  active.controller?.close();
  active.e2ee?.close();
  peopleView.show(null);
  callView.stop();
  callView.setStatus("");
  messagingView.reset();
  stopStream(active.stream);
  /** @type {any} */ (window).consultPc = null;
}

/**
 * The call is over (ended, replaced, refused): show why, with a way back.
 * @param {string} message
 * @param {string} testid
 * @param {boolean} [canRetry]
 */
function finishCall(message, testid, canRetry = false) {
  const id = call ? call.id : "";
  leaveCall({ tellService: false });
  showCallOver(message, testid, canRetry ? id : "");
}

/**
 * @param {string} message
 * @param {string} testid
 * @param {string} [retryId]
 */
function showCallOver(message, testid, retryId = "") {
  const text = byId("call-over-message", HTMLElement);
  text.textContent = message;
  text.dataset.testid = testid || "call-over-message";
  const retry = byId("call-over-retry", HTMLButtonElement);
  retry.hidden = !retryId;
  retry.onclick = () => {
    if (retryId) openCall(retryId);
  };
  showView(views.callOver);
  announce(message);
}

byId("call-over-back", HTMLButtonElement).addEventListener("click", () => {
  if (location.hash === "#/") route();
  else navigate("#/");
});

// ---------------------------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------------------------

async function start() {
  const params = new URLSearchParams(location.search);
  const email = params.get("email");
  if (email) {
    signInForm.email.value = email;
    history.replaceState(null, "", `/${location.hash}`);
  }
  try {
    setSession(await api.getSession());
    route();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) showSignIn();
    else showSignIn(`The service could not be reached (${messageOf(err)}). Try again in a moment.`);
  }
}

start();
