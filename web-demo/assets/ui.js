// @ts-check
/**
 * Small DOM helpers shared by the pages: typed element lookup, view switching, the aria-live status
 * region, formatting, and an inline confirmation (instead of `confirm()`).
 */

/**
 * The element with this id, checked to be of the expected class.
 * @template {HTMLElement} T
 * @param {string} id
 * @param {new (...args: any[]) => T} type
 * @returns {T}
 */
export function byId(id, type) {
  const element = document.getElementById(id);
  if (!(element instanceof type)) throw new Error(`#${id} is missing or not a ${type.name}`);
  return element;
}

/**
 * Create an element.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {{ className?: string, text?: string, testid?: string, attrs?: Record<string, string> }} [props]
 * @param {(Node | string)[]} [children]
 * @returns {HTMLElementTagNameMap[K]}
 */
export function h(tag, props = {}, children = []) {
  const element = document.createElement(tag);
  if (props.className) element.className = props.className;
  if (props.text !== undefined) element.textContent = props.text;
  if (props.testid) element.dataset.testid = props.testid;
  if (props.attrs) for (const [k, v] of Object.entries(props.attrs)) element.setAttribute(k, v);
  element.append(...children);
  return element;
}

/**
 * Replace an element's children (a list rendered again), keeping the focus on the control with
 * the same `data-key` if it had it, so that keyboard users do not lose their place.
 * @param {HTMLElement} parent
 * @param {(Node | string)[]} children
 */
export function replaceKeepingFocus(parent, children) {
  const focused = document.activeElement;
  const key = focused instanceof HTMLElement && parent.contains(focused) ? focused.dataset.key : undefined;
  parent.replaceChildren(...children);
  if (!key) return;
  const again = parent.querySelector(`[data-key="${CSS.escape(key)}"]`);
  if (again instanceof HTMLElement) again.focus();
}

/**
 * Show one `.view` section of the page and hide the others; move focus to its heading so keyboard
 * and screen-reader users land in the new content.
 * @param {HTMLElement} view
 * @param {{ focus?: boolean }} [options]
 */
export function showView(view, options = {}) {
  for (const other of document.querySelectorAll(".view")) {
    if (other instanceof HTMLElement) other.hidden = other !== view;
  }
  if (options.focus !== false) {
    const heading = view.querySelector("h1, h2");
    if (heading instanceof HTMLElement) {
      if (!heading.hasAttribute("tabindex")) heading.tabIndex = -1;
      heading.focus({ preventScroll: false });
    }
  }
}

/**
 * Say something in the page's polite live region (`#live-status`).
 * @param {string} message
 */
export function announce(message) {
  const region = document.getElementById("live-status");
  if (!region) return;
  // Clearing first makes a repeated message be announced again.
  region.textContent = "";
  requestAnimationFrame(() => {
    region.textContent = message;
  });
}

/**
 * Show an error message in an element (`role="alert"`), or hide it with `null`.
 * @param {HTMLElement} element
 * @param {string | null} message
 */
export function showError(element, message) {
  element.textContent = message ?? "";
  element.hidden = !message;
}

/**
 * "m:ss" (or "h:mm:ss") of a duration.
 * @param {number} ms
 * @returns {string}
 */
export function formatDuration(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = String(total % 60).padStart(2, "0");
  return hours > 0 ? `${hours}:${String(minutes).padStart(2, "0")}:${seconds}` : `${minutes}:${seconds}`;
}

/**
 * How long since an RFC 3339 time, as "m:ss".
 * @param {string} since
 * @returns {string}
 */
export function waitedFor(since) {
  return formatDuration(Date.now() - Date.parse(since));
}

/**
 * "1.4 MB", "300 KB", "12 bytes".
 * @param {number} bytes
 * @returns {string}
 */
export function formatBytes(bytes) {
  if (bytes < 1000) return `${bytes} ${bytes === 1 ? "byte" : "bytes"}`;
  if (bytes < 1000 * 1000) return `${(bytes / 1000).toFixed(bytes < 10_000 ? 1 : 0)} KB`;
  return `${(bytes / 1000 / 1000).toFixed(1)} MB`;
}

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/**
 * @param {string | null | undefined} iso
 * @returns {string}
 */
export function formatDateTime(iso) {
  if (!iso) return "";
  const t = Date.parse(iso);
  return Number.isNaN(t) ? iso : dateTime.format(t);
}

/**
 * A `data:` URL for an SVG document (allowed by the CSP's `img-src data:`).
 * @param {string} svg
 * @returns {string}
 */
export function svgDataUrl(svg) {
  const bytes = new TextEncoder().encode(svg);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return `data:image/svg+xml;base64,${btoa(binary)}`;
}

/**
 * Ask for confirmation next to a button: the button is replaced by a question and two buttons
 * until the person answers. Resolves with the answer.
 * @param {HTMLButtonElement} button
 * @param {string} question
 * @param {string} confirmLabel
 * @param {{ testid?: string, danger?: boolean }} [options]
 * @returns {Promise<boolean>}
 */
export function confirmInline(button, question, confirmLabel, options = {}) {
  return new Promise((resolve) => {
    const yes = h("button", {
      className: options.danger ? "button danger" : "button primary",
      text: confirmLabel,
      testid: options.testid ?? "confirm-yes",
      attrs: { type: "button" },
    });
    const no = h("button", { className: "button", text: "Cancel", testid: "confirm-no", attrs: { type: "button" } });
    const box = h("span", { className: "confirm", attrs: { role: "group" } }, [
      h("span", { className: "confirm-question", text: question }),
      yes,
      no,
    ]);
    button.hidden = true;
    button.after(box);
    yes.focus();
    /** @param {boolean} answer */
    const done = (answer) => {
      box.remove();
      button.hidden = false;
      if (!answer) button.focus();
      resolve(answer);
    };
    yes.addEventListener("click", () => done(true));
    no.addEventListener("click", () => done(false));
    box.addEventListener("keydown", (event) => {
      if (event.key === "Escape") done(false);
    });
  });
}

/**
 * Names joined for a sentence: "A", "A and B", "A, B and C".
 * @param {string[]} names
 */
export function listNames(names) {
  if (names.length <= 1) return names[0] ?? "";
  return `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
}
