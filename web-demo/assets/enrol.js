// @ts-check
/**
 * Account enrolment (`/enrol#<token>`): set the password, then continue to sign-in (which starts
 * the second-factor enrolment) with the email filled in.
 */

import * as api from "./api.js";
import { ApiError } from "./api.js";
import { byId, showError, showView } from "./ui.js";

const MIN_LENGTH = 12;

const form = byId("enrol-form", HTMLFormElement);
const password = byId("enrol-password", HTMLInputElement);
const repeat = byId("enrol-password2", HTMLInputElement);
const error = byId("enrol-error", HTMLElement);
const submit = byId("enrol-submit", HTMLButtonElement);

let token = "";
try {
  token = decodeURIComponent(location.hash.replace(/^#/, "")).trim();
} catch {
  token = location.hash.replace(/^#/, "").trim();
}
// Keep the one-time token out of the address bar, history and screenshots.
if (location.hash) history.replaceState(null, "", location.pathname + location.search);

/** @param {string} message */
function showInvalid(message) {
  byId("enrol-invalid-message", HTMLElement).textContent = message;
  showView(byId("view-enrol-invalid", HTMLElement));
}

if (!token) {
  showInvalid("Open the enrolment link from your invitation email to set your password.");
} else {
  password.focus();
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const first = password.value;
  const second = repeat.value;
  if (first.length < MIN_LENGTH) {
    showError(error, `The password needs at least ${MIN_LENGTH} characters (it has ${first.length}).`);
    password.focus();
    return;
  }
  if (first !== second) {
    showError(error, "The two passwords are not the same.");
    repeat.value = "";
    repeat.focus();
    return;
  }
  showError(error, null);
  submit.disabled = true;
  submit.textContent = "Saving…";
  try {
    const answer = await api.enrol(token, first);
    password.value = "";
    repeat.value = "";
    location.assign(`/?email=${encodeURIComponent(answer.email)}`);
  } catch (err) {
    submit.disabled = false;
    submit.textContent = "Set password";
    if (err instanceof ApiError && (err.status === 404 || err.status === 410 || err.status === 401)) {
      showInvalid("This enrolment link is not valid any more (it was used already or has expired). Ask your administrator for a new one.");
    } else if (err instanceof ApiError && (err.status === 400 || err.status === 422)) {
      showError(error, err.message);
      password.focus();
    } else {
      showError(error, err instanceof Error ? err.message : String(err));
    }
  }
});
