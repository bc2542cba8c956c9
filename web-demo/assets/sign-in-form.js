// @ts-check
/**
 * A sign-in form: email, password, and the second factor (a code from the authenticator app, or
 * a recovery code) — or a passkey: after the email and password as the second factor, or alone
 * (the passkey names the account). The doctor's page has two — the sign-in view, and the lock screen that asks
 * the same person to sign in again after automatic logoff — that differ only in their element ids
 * and in what happens once signed in.
 */

import * as api from "./api.js";
import { ApiError } from "./api.js";
import { PasskeyCancelled, passkeysAvailable, signInWithPasskey } from "./passkeys.js";
import { byId, showError } from "./ui.js";

/** @typedef {import('./protocol.js').LoginRequest} LoginRequest */
/** @typedef {import('./protocol.js').LoginResponse} LoginResponse */

export class SignInForm {
  /**
   * @param {string} prefix The elements are `<prefix>-form`, `-email`, `-password`, `-totp`,
   *   `-recovery`, `-totp-group`, `-recovery-group`, `-toggle-recovery`, `-error`, `-submit` and
   *   `-passkey` (the passkey button).
   * @param {{ onAnswer: (answer: LoginResponse) => void, submitLabel: string }} options
   */
  constructor(prefix, { onAnswer, submitLabel }) {
    this.form = byId(`${prefix}-form`, HTMLFormElement);
    this.email = byId(`${prefix}-email`, HTMLInputElement);
    this.password = byId(`${prefix}-password`, HTMLInputElement);
    this.totp = byId(`${prefix}-totp`, HTMLInputElement);
    this.recovery = byId(`${prefix}-recovery`, HTMLInputElement);
    this.totpGroup = byId(`${prefix}-totp-group`, HTMLElement);
    this.recoveryGroup = byId(`${prefix}-recovery-group`, HTMLElement);
    this.toggle = byId(`${prefix}-toggle-recovery`, HTMLButtonElement);
    this.error = byId(`${prefix}-error`, HTMLElement);
    this.submit = byId(`${prefix}-submit`, HTMLButtonElement);
    this.passkey = byId(`${prefix}-passkey`, HTMLButtonElement);
    this.passkey.hidden = !passkeysAvailable();
    this.passkey.addEventListener("click", () => this.signInWithPasskey());
    this.submitLabel = submitLabel;
    this.onAnswer = onAnswer;
    this.useRecovery = false;
    this.toggle.addEventListener("click", () => this.setUseRecovery(!this.useRecovery));
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.signIn();
    });
  }

  /** Empty the secrets and the error; focus the first field to fill. */
  reset() {
    showError(this.error, null);
    this.clearSecrets();
    (this.email.value ? this.password : this.email).focus();
  }

  clearSecrets() {
    this.password.value = "";
    this.totp.value = "";
    this.recovery.value = "";
  }

  /**
   * @private
   * @param {boolean} on
   */
  setUseRecovery(on) {
    this.useRecovery = on;
    this.totpGroup.hidden = on;
    this.recoveryGroup.hidden = !on;
    this.toggle.textContent = on ? "Use a code from the authenticator app instead" : "Use a recovery code instead";
    (on ? this.recovery : this.totp).focus();
  }

  /** @private */
  async signIn() {
    const email = this.email.value.trim();
    const password = this.password.value;
    if (!email || !password) {
      showError(this.error, "Enter your email and password.");
      (email ? this.password : this.email).focus();
      return;
    }
    /** @type {LoginRequest} */
    const body = { email, password };
    const code = this.totp.value.replace(/\s+/g, "");
    const recovery = this.recovery.value.trim();
    if (this.useRecovery) {
      if (recovery) body.recovery_code = recovery;
    } else if (code) {
      if (!/^\d{6}$/.test(code)) {
        showError(this.error, "The code has six digits.");
        this.totp.focus();
        return;
      }
      body.totp = code;
    }
    showError(this.error, null);
    this.submit.disabled = true;
    this.submit.textContent = "Signing in…";
    try {
      const answer = await api.login(body);
      this.clearSecrets();
      this.onAnswer(answer);
    } catch (err) {
      this.showFailure(err);
    } finally {
      this.submit.disabled = false;
      this.submit.textContent = this.submitLabel;
    }
  }

  /**
   * With the email and password filled in, the passkey is the second factor; without them it
   * signs in alone.
   * @private
   */
  async signInWithPasskey() {
    const email = this.email.value.trim();
    const password = this.password.value;
    const factors = email && password ? { email, password } : {};
    showError(this.error, null);
    this.passkey.disabled = true;
    try {
      const answer = await signInWithPasskey(factors);
      this.clearSecrets();
      this.onAnswer(answer);
    } catch (err) {
      this.showFailure(err);
    } finally {
      this.passkey.disabled = false;
    }
  }

  /**
   * @private
   * @param {unknown} err
   */
  showFailure(err) {
    const code = err instanceof ApiError ? err.code : "";
    /** @type {HTMLInputElement} */
    let focus = this.password;
    let message;
    switch (code) {
      case "invalid_credentials":
        message = this.email.readOnly ? "The password is not correct." : "The email or password is not correct.";
        this.password.value = "";
        break;
      case "mfa_required":
        message = this.useRecovery
          ? "Enter one of your recovery codes."
          : "Enter the six-digit code from your authenticator app.";
        focus = this.useRecovery ? this.recovery : this.totp;
        break;
      case "invalid_totp":
        if (this.useRecovery) {
          // The service answers a wrong recovery code like a wrong app code.
          message = "That recovery code is not correct or was already used.";
          focus = this.recovery;
        } else {
          message = "That code is not correct. Enter the code your authenticator app shows now.";
          this.totp.value = "";
          focus = this.totp;
        }
        break;
      case "totp_replayed":
        message = "That code was already used. Wait for the next code and enter it.";
        this.totp.value = "";
        focus = this.totp;
        break;
      case "too_many_attempts": {
        const secs = err instanceof ApiError ? err.retryAfterSecs : null;
        message = secs
          ? `Too many attempts. Try again in ${secs > 90 ? `${Math.ceil(secs / 60)} minutes` : `${secs} seconds`}.`
          : "Too many attempts. Wait a few minutes and try again.";
        break;
      }
      default:
        if (err instanceof PasskeyCancelled) message = err.message;
        else message = err instanceof ApiError ? err.message : "Something went wrong. Please try again.";
    }
    showError(this.error, message);
    focus.focus();
  }
}
