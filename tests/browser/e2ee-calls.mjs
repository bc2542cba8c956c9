// Two people in an end-to-end encrypted consultation in real browsers, for the E2EE suites: each
// prefers one video codec (the web demo's `consult.videoCodec` setting), and the page can be made
// an older browser (only `createEncodedStreams()`).

import {
  admitFromWaitingRoom,
  createE2eeConsultation,
  launchParticipant,
  openConsultation,
  patientJoin,
  signInDoctor,
} from "./harness.mjs";

/**
 * @typedef {object} CallOptions
 * @property {boolean} [encodedStreams] A browser that has only the older `createEncodedStreams()`
 *   API (no `RTCRtpScriptTransform`).
 * @property {Record<string, string>} [storage] More `localStorage` settings of the web demo (for
 *   example `consult.e2eeRotateMs`).
 */

/**
 * A participant whose pages prefer `codec` for video.
 * @param {string} label
 * @param {import('./harness.mjs').Service} service
 * @param {"vp8" | "h264"} codec
 * @param {CallOptions} [options]
 */
export async function launchWithCodec(label, service, codec, { encodedStreams = false, storage = {} } = {}) {
  const p = await launchParticipant(label, { origin: service.url, storage: { "consult.videoCodec": codec, ...storage } });
  if (encodedStreams) {
    await p.context.addInitScript(() => {
      delete (/** @type {any} */ (window)).RTCRtpScriptTransform;
    });
  }
  return p;
}

/**
 * The inbound video codec of the page's connection.
 * @param {import('playwright-core').Page} page
 */
export function inboundVideoCodec(page) {
  return page.evaluate(async () => {
    const pc = /** @type {RTCPeerConnection | null} */ (/** @type {any} */ (window).consultPc);
    if (!pc) return null;
    const report = await pc.getStats();
    let mime = null;
    report.forEach((/** @type {any} */ s) => {
      if (s.type === "inbound-rtp" && s.kind === "video" && s.codecId) mime = report.get(s.codecId)?.mimeType ?? null;
    });
    return mime;
  });
}

/**
 * The doctor signs in and opens a new E2EE consultation; the patient joins it and is admitted.
 * @param {import('./harness.mjs').Service} service
 * @param {import('./harness.mjs').Participant} doctor
 * @param {import('./harness.mjs').Participant} patient
 * @param {{ title: string, patientName: string }} names
 */
export async function joinE2eeCall(service, doctor, patient, { title, patientName }) {
  await signInDoctor(doctor.page, service);
  const inviteUrl = await createE2eeConsultation(doctor.page, title);
  await openConsultation(doctor.page);
  await patientJoin(patient.page, inviteUrl, patientName);
  await admitFromWaitingRoom(doctor.page, patientName);
  return inviteUrl;
}

/**
 * Doctor and patient, both preferring `codec`, in an E2EE consultation (admitted; media follows).
 * Both go into the scope's `people`.
 * @param {import('./harness.mjs').ServiceScope} scope
 * @param {"vp8" | "h264"} codec
 * @param {CallOptions} [options]
 */
export async function e2eeCall({ service, people }, codec, options = {}) {
  const doctor = await launchWithCodec(`doctor (${codec})`, service, codec, options);
  people.push(doctor);
  const patient = await launchWithCodec(`patient (${codec})`, service, codec, options);
  people.push(patient);
  const inviteUrl = await joinE2eeCall(service, doctor, patient, { title: `E2EE ${codec}`, patientName: "Pat Secure" });
  return { doctor, patient, inviteUrl };
}

/**
 * Print the worker's added latency per frame so that it can be read from the test output.
 * @param {string} who
 * @param {any} snapshot
 */
export function logLatency(who, snapshot) {
  const l = snapshot.worker.latency;
  const ms = (/** @type {number | null} */ v) => (v === null ? "n/a" : `${v.toFixed(3)} ms`);
  console.log(
    `E2EE worker latency (${who}): protect median ${ms(l.protect.median)} p99 ${ms(l.protect.p99)} mean ${ms(l.protect.mean)} (${l.protect.count} frames); ` +
      `unprotect median ${ms(l.unprotect.median)} p99 ${ms(l.unprotect.p99)} mean ${ms(l.unprotect.mean)} (${l.unprotect.count} frames)`,
  );
}
