// @ts-check
/**
 * How a medical certificate's kind and claims read for people, the same on the doctor's page,
 * the patient's page and the verify page.
 */

/** @typedef {import('./protocol.js').CertificateKindName} CertificateKindName */
/** @typedef {import('./protocol.js').CertificateClaim} CertificateClaim */

/** The kinds, for people. */
export const KIND_LABELS = /** @type {Record<CertificateKindName, string>} */ ({
  unfit_for_work: "Unfit for work",
  attendance: "Attended a consultation",
  fit_to_travel: "Fit to travel",
  free_text: "Medical certificate",
});

/** The claims, for people, in the order they are shown. */
export const CLAIM_LABELS = /** @type {Record<string, string>} */ ({
  period: "Period",
  patient_name: "Patient",
  clinician_name: "Clinician",
  clinician_licence: "Clinician’s licence number",
  restrictions: "Restrictions",
  diagnosis: "Diagnosis",
  note: "Note",
});

/**
 * A claim's value as text.
 * @param {CertificateClaim} claim
 * @returns {string}
 */
export function claimText(claim) {
  if (claim.name === "period" && claim.value && typeof claim.value === "object") {
    const { start, end } = /** @type {{ start?: string, end?: string }} */ (claim.value);
    return start === end ? `${start}` : `${start} to ${end}`;
  }
  return typeof claim.value === "string" ? claim.value : JSON.stringify(claim.value);
}

/**
 * A claim's label.
 * @param {string} name
 * @returns {string}
 */
export function claimLabel(name) {
  return CLAIM_LABELS[name] ?? name;
}

/**
 * A date (RFC 3339) as the day it falls on, for people.
 * @param {string | null | undefined} iso
 * @returns {string}
 */
export function day(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime())
    ? iso
    : date.toLocaleDateString(undefined, { year: "numeric", month: "long", day: "numeric" });
}
