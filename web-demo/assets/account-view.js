// @ts-check
/**
 * The doctor's account page (`#/account`, the section `view-account` of `index.html`): the
 * passkeys — each with its name, when it was added and last used, renamed or removed in place —
 * and adding one (a name and the password again, then the browser's passkey prompt).
 *
 * Under an organisation policy that requires a passkey, a session opened without one lands
 * here and can do nothing else until a passkey is added.
 */

import * as api from "./api.js";
import { ApiError } from "./api.js";
import { PasskeyCancelled, passkeysAvailable, registerPasskey } from "./passkeys.js";
import { announce, byId, formatDateTime, h, replaceKeepingFocus, showError, showView } from "./ui.js";

/** @typedef {import('./protocol.js').PasskeySummary} PasskeySummary */

export class AccountView {
  /**
   * @param {{ onError: (err: unknown) => boolean, onPasskeyAdded: () => void }} options
   *   `onError`: the page's handling of an API error (a lost session), true when it took over;
   *   `onPasskeyAdded`: a passkey was registered (the session may have lost a restriction).
   */
  constructor({ onError, onPasskeyAdded }) {
    this.onError = onError;
    this.onPasskeyAdded = onPasskeyAdded;
    this.view = byId("view-account", HTMLElement);
    this.list = byId("passkey-list", HTMLUListElement);
    this.empty = byId("passkey-empty", HTMLElement);
    this.listError = byId("passkey-list-error", HTMLElement);
    this.form = byId("passkey-add-form", HTMLFormElement);
    this.name = byId("passkey-name", HTMLInputElement);
    this.password = byId("passkey-password", HTMLInputElement);
    this.addError = byId("passkey-add-error", HTMLElement);
    this.add = byId("passkey-add", HTMLButtonElement);
    this.setupNotice = byId("passkey-setup-notice", HTMLElement);
    this.back = byId("account-back", HTMLAnchorElement);
    this.unavailable = byId("passkey-unavailable", HTMLElement);
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.addPasskey();
    });
  }

  /**
   * Show the page.
   * @param {{ setupRequired: boolean }} options `setupRequired`: the session may only add a passkey.
   */
  show({ setupRequired }) {
    this.setSetupRequired(setupRequired);
    const available = passkeysAvailable();
    this.unavailable.hidden = available;
    this.form.hidden = !available;
    showError(this.addError, null);
    showView(this.view);
    this.load();
  }

  hide() {
    this.password.value = "";
  }

  /** @param {boolean} required */
  setSetupRequired(required) {
    this.setupNotice.hidden = !required;
    this.back.hidden = required;
  }

  /** @private */
  async load() {
    try {
      this.render(await api.listPasskeys());
      showError(this.listError, null);
    } catch (err) {
      if (!this.onError(err)) showError(this.listError, `The passkeys could not be loaded: ${messageOf(err)}`);
    }
  }

  /**
   * @private
   * @param {PasskeySummary[]} passkeys
   */
  render(passkeys) {
    this.empty.hidden = passkeys.length > 0;
    replaceKeepingFocus(
      this.list,
      passkeys.map((p) => this.item(p)),
    );
  }

  /**
   * @private
   * @param {PasskeySummary} passkey
   */
  item(passkey) {
    const used = passkey.last_used_at ? `last used ${formatDateTime(passkey.last_used_at)}` : "not used yet";
    const name = h("strong", { className: "passkey-name", text: passkey.name, testid: "passkey-item-name" });
    const rename = h("button", {
      className: "button small",
      text: "Rename",
      testid: "passkey-rename",
      attrs: { type: "button", "data-key": `rename-${passkey.id}`, "aria-label": `Rename ${passkey.name}` },
    });
    const remove = h("button", {
      className: "button small danger",
      text: "Remove",
      testid: "passkey-remove",
      attrs: { type: "button", "data-key": `remove-${passkey.id}`, "aria-label": `Remove ${passkey.name}` },
    });
    const error = h("p", { className: "error", testid: "passkey-item-error", attrs: { role: "alert" } });
    error.hidden = true;
    const item = h("li", { className: "passkey-item", testid: "passkey-item", attrs: { "data-name": passkey.name } }, [
      name,
      h("span", { className: "hint-inline", text: ` added ${formatDateTime(passkey.created_at)}, ${used}` }),
      h("span", { className: "actions" }, [rename, remove]),
      error,
    ]);
    rename.addEventListener("click", () => this.rename(passkey, item, error));
    remove.addEventListener("click", () => this.remove(passkey, item, error));
    return item;
  }

  /**
   * Rename in place: the name becomes a field until saved or cancelled.
   * @private
   * @param {PasskeySummary} passkey
   * @param {HTMLLIElement} item
   * @param {HTMLElement} error
   */
  rename(passkey, item, error) {
    const input = h("input", {
      testid: "passkey-rename-input",
      attrs: { type: "text", maxlength: "60", "aria-label": "New name", value: passkey.name },
    });
    const save = h("button", { className: "button small primary", text: "Save", testid: "passkey-rename-save", attrs: { type: "submit" } });
    const cancel = h("button", { className: "button small", text: "Cancel", attrs: { type: "button" } });
    const form = h("form", { className: "inline-form" }, [input, save, cancel]);
    item.replaceChildren(form, error);
    input.focus();
    input.select();
    cancel.addEventListener("click", () => this.load());
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        await api.renamePasskey(passkey.id, input.value);
        announce("Passkey renamed.");
        this.load();
      } catch (err) {
        if (!this.onError(err)) showError(error, messageOf(err));
      }
    });
  }

  /**
   * Remove after the password, asked in place (every other session of the account ends).
   * @private
   * @param {PasskeySummary} passkey
   * @param {HTMLLIElement} item
   * @param {HTMLElement} error
   */
  remove(passkey, item, error) {
    const password = h("input", {
      testid: "passkey-remove-password",
      attrs: { type: "password", autocomplete: "current-password", "aria-label": "Your password" },
    });
    const confirm = h("button", {
      className: "button small danger",
      text: "Remove",
      testid: "passkey-remove-confirm",
      attrs: { type: "submit" },
    });
    const cancel = h("button", { className: "button small", text: "Cancel", attrs: { type: "button" } });
    const form = h("form", { className: "inline-form" }, [
      h("span", { text: `Remove “${passkey.name}”? Your other sessions will be signed out. Your password:` }),
      password,
      confirm,
      cancel,
    ]);
    item.replaceChildren(form, error);
    password.focus();
    cancel.addEventListener("click", () => this.load());
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (!password.value) {
        showError(error, "Enter your password.");
        password.focus();
        return;
      }
      confirm.disabled = true;
      try {
        await api.removePasskey(passkey.id, password.value);
        announce(`Passkey ${passkey.name} removed.`);
        this.load();
      } catch (err) {
        password.value = "";
        confirm.disabled = false;
        if (err instanceof ApiError && err.code === "invalid_credentials") {
          showError(error, "The password is not correct.");
          password.focus();
        } else if (!this.onError(err)) {
          showError(error, messageOf(err));
        }
      }
    });
  }

  /** @private */
  async addPasskey() {
    const name = this.name.value.trim();
    if (!name) {
      showError(this.addError, "Give the passkey a name you will recognise, like “Work laptop”.");
      this.name.focus();
      return;
    }
    if (!this.password.value) {
      showError(this.addError, "Enter your password.");
      this.password.focus();
      return;
    }
    showError(this.addError, null);
    this.add.disabled = true;
    try {
      const added = await registerPasskey(name, this.password.value);
      this.password.value = "";
      this.name.value = "";
      announce(`Passkey ${added.name} added.`);
      this.onPasskeyAdded();
      this.load();
    } catch (err) {
      if (err instanceof ApiError && err.code === "invalid_credentials") {
        this.password.value = "";
        showError(this.addError, "The password is not correct.");
        this.password.focus();
      } else if (err instanceof PasskeyCancelled) {
        showError(this.addError, "No passkey was created. Try again when your device asks.");
      } else if (!this.onError(err)) {
        showError(this.addError, messageOf(err));
      }
    } finally {
      this.add.disabled = false;
    }
  }
}

/**
 * @param {unknown} err
 * @returns {string}
 */
function messageOf(err) {
  return err instanceof ApiError ? err.message : "Something went wrong. Please try again.";
}
