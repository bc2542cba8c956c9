// Signaling lost mid-negotiation: an offer that went with a replaced socket is sent again.
//
// A page that hears nothing for a while (a starved machine, a network change) opens a new
// signaling socket at once; the service may take the new one before it has seen the old one
// close. Whatever was in flight on the old socket is lost, among it, perhaps, the offer that adds
// or removes a shared screen's section on a connection that is up: without a resend the screen
// would never show (or never go). Both ways are checked, with the sockets routed through the
// test (playwright's `routeWebSocket`) so that exactly the offer is lost and the old socket's
// server side stays open until the new one has joined:
//
// - the doctor's screen offer to the patient is dropped on its way in; the patient's socket is
//   replaced; the service tells the doctor the patient is back (`peer_presence` online, although
//   the patient never looked offline), the doctor sends the same offer again, and the patient
//   shows the screen;
// - the doctor's offer that stops the screen is dropped on its way out; the doctor's socket is
//   replaced; once joined again the doctor sends its unanswered offer again, and the screen goes
//   from the patient's stage.
//
// The old sockets closing afterwards take no one's place.
//
// Run: cd tests/browser && node --test signaling-loss.test.mjs   (environment: see README.md here)

import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";

import { byTestId, launchWatched, startCall, withService } from "./harness.mjs";

/**
 * @typedef {object} RoutedSocket One signaling socket of a page, through the test.
 * @property {import('playwright-core').WebSocketRoute} page The page's side.
 * @property {import('playwright-core').WebSocketRoute} server The service's side.
 * @property {boolean} pageClosed The test closed the page's side (the service's stays open).
 */

/**
 * Route a page's signaling sockets through the test. `drop` decides, per message, whether it is
 * lost; `log` collects every message that passed, by direction.
 * @param {import('playwright-core').Page} page
 */
async function routeSignaling(page) {
  const routed = {
    /** @type {RoutedSocket[]} */
    sockets: [],
    /** @type {(direction: "in" | "out", message: any) => boolean} */
    drop: () => false,
    /** @type {{ direction: "in" | "out", socket: RoutedSocket, message: any }[]} */
    log: [],
    /** @type {any[]} */
    dropped: [],
  };
  /** @param {string | Buffer} raw */
  const parse = (raw) => {
    try {
      return JSON.parse(raw.toString());
    } catch {
      return null;
    }
  };
  await page.routeWebSocket(/\/api\/v1\/signal$/, (ws) => {
    const server = ws.connectToServer();
    /** @type {RoutedSocket} */
    const socket = { page: ws, server, pageClosed: false };
    routed.sockets.push(socket);
    /**
     * @param {"in" | "out"} direction
     * @param {string | Buffer} raw
     * @param {(raw: string | Buffer) => void} forward
     */
    const pass = (direction, raw, forward) => {
      const message = parse(raw);
      if (routed.drop(direction, message)) {
        routed.dropped.push(message);
        return;
      }
      routed.log.push({ direction, socket, message });
      forward(raw);
    };
    ws.onMessage((raw) => pass("out", raw, (m) => server.send(m)));
    server.onMessage((raw) => {
      if (!socket.pageClosed) pass("in", raw, (m) => ws.send(m));
    });
    // Closing is forwarded both ways, except the page's side closed by the test.
    ws.onClose((code, reason) => {
      if (!socket.pageClosed) server.close({ code, reason });
    });
    server.onClose((code, reason) => {
      if (!socket.pageClosed) ws.close({ code, reason });
    });
  });
  return routed;
}

/**
 * Close the page's side of its current socket and keep the service's side open: the page opens a
 * new one, which the service takes while the old one still looks alive. Returns the old socket.
 * @param {Awaited<ReturnType<typeof routeSignaling>>} routed
 */
async function replacePageSocket(routed) {
  const old = routed.sockets.at(-1);
  assert.ok(old, "a socket to replace");
  old.pageClosed = true;
  await old.page.close({ code: 4000, reason: "test: this side went" });
  const deadline = Date.now() + 20_000;
  while (!routed.log.some((l) => l.direction === "in" && l.socket !== old && l.message?.type === "joined" && l.message.resumed)) {
    assert.ok(Date.now() < deadline, "the page joined again on a new socket");
    await sleep(100);
  }
  return old;
}

/**
 * @param {any} message
 * @param {"offer" | "answer"} kind
 */
const isDescription = (message, kind) => message?.type === "description" && message.description?.type === kind;

/**
 * The doctor's screen button is clicked and the offer it makes is lost on one of the routed
 * sockets (`direction` as seen from that page); then 3 s pass for anything else to happen.
 * @param {Awaited<ReturnType<typeof routeSignaling>>} routed
 * @param {"in" | "out"} direction
 * @param {import('playwright-core').Page} doctorPage
 * @param {string} buttonAfter What the button says once clicked.
 */
async function loseTheOffer(routed, direction, doctorPage, buttonAfter) {
  const before = routed.dropped.length;
  routed.drop = (d, message) => d === direction && isDescription(message, "offer");
  await byTestId(doctorPage, "screen-button").click();
  await byTestId(doctorPage, "screen-button").filter({ hasText: buttonAfter }).waitFor();
  const deadline = Date.now() + 20_000;
  while (routed.dropped.length === before) {
    assert.ok(Date.now() < deadline, `the doctor made an offer (${buttonAfter})`);
    await sleep(100);
  }
  routed.drop = () => false;
  await sleep(3000);
}

/**
 * The doctor's connection with the patient: its signaling state.
 * @param {import('playwright-core').Page} page
 */
const signalingState = (page) => page.evaluate(() => /** @type {RTCPeerConnection} */ (/** @type {any} */ (window).consultPc)?.signalingState);

describe("signaling lost mid-negotiation", { timeout: 240_000 }, () => {
  test("a screen's offer lost with a replaced socket is sent again: the screen shows, then goes", { timeout: 200_000 }, async () => {
    await withService({}, async (scope) => {
      const [doctor, patient] = await Promise.all([launchWatched(scope, "doctor"), launchWatched(scope, "patient")]);
      const toPatient = await routeSignaling(patient.page);
      const fromDoctor = await routeSignaling(doctor.page);
      await startCall(scope, { title: "Signaling loss", mode: "live_only", doctor, patient });
      const doctorIn = () => fromDoctor.log.filter((l) => l.direction === "in").map((l) => l.message);

      // 1. The screen's offer to the patient is lost on its way in.
      await loseTheOffer(toPatient, "in", doctor.page, "Stop sharing");
      assert.equal(await byTestId(patient.page, "screen-view").isVisible(), false, "the offer was lost: no screen yet");
      assert.equal(await signalingState(doctor.page), "have-local-offer", "the doctor still waits for an answer");

      // The patient's socket is replaced; the service tells the doctor, who offers again.
      const presenceBefore = doctorIn().filter((m) => m?.type === "peer_presence").length;
      const oldPatientSocket = await replacePageSocket(toPatient);
      await byTestId(patient.page, "screen-view").waitFor({ state: "visible", timeout: 20_000 });
      await patient.page.waitForFunction(() => {
        const video = /** @type {HTMLVideoElement | null} */ (document.querySelector('[data-testid="screen-video"]'));
        return !!video && video.videoWidth > 0;
      });
      const presence = doctorIn().filter((m) => m?.type === "peer_presence").slice(presenceBefore);
      assert.ok(presence.some((m) => m.online === true), `the doctor was told the patient is back: ${JSON.stringify(presence)}`);
      assert.ok(presence.every((m) => m.online === true), "the patient never looked offline");
      await doctor.page.waitForFunction(() => /** @type {any} */ (window).consultPc?.signalingState === "stable", null, { timeout: 10_000 });

      // A stray answer with no offer outstanding (the same answer again, out of order): ignored,
      // the connection kept.
      await doctor.page.evaluate(() => {
        /** @type {any} */ (window).consultPc.__beforeStrayAnswer = true;
      });
      const answer = fromDoctor.log.filter((l) => l.direction === "in" && isDescription(l.message, "answer")).at(-1);
      assert.ok(answer, "the doctor got the patient's answer");
      fromDoctor.sockets.at(-1)?.page.send(JSON.stringify(answer.message));
      await sleep(1000);
      const kept = await doctor.page.evaluate(() => {
        const pc = /** @type {any} */ (window).consultPc;
        return { same: pc?.__beforeStrayAnswer === true, state: pc?.signalingState, connection: pc?.connectionState };
      });
      assert.deepEqual(kept, { same: true, state: "stable", connection: "connected" }, "a stray answer changes nothing");

      // 2. The doctor's offer that stops the screen is lost on its way out.
      await loseTheOffer(fromDoctor, "out", doctor.page, "Share screen");
      assert.equal(await byTestId(patient.page, "screen-view").isVisible(), true, "the offer was lost: the screen is still shown");
      // The doctor's socket is replaced; joined again, the doctor sends its unanswered offer.
      const offersBefore = toPatient.log.filter((l) => l.direction === "in" && isDescription(l.message, "offer")).length;
      const oldDoctorSocket = await replacePageSocket(fromDoctor);
      await byTestId(patient.page, "screen-view").waitFor({ state: "hidden", timeout: 20_000 });
      await doctor.page.waitForFunction(() => /** @type {any} */ (window).consultPc?.signalingState === "stable", null, { timeout: 10_000 });
      const offersAfter = toPatient.log.filter((l) => l.direction === "in" && isDescription(l.message, "offer")).slice(offersBefore);
      assert.equal(offersAfter.length, 1, "the lost offer reached the patient once, sent again");
      assert.match(offersAfter[0].message.description.sdp, /a=inactive/, "the offer that stops the screen");

      // The old sockets close at last: nobody's place goes with them, and the call goes on.
      // (The service may have closed them already, having replaced them.)
      await Promise.all([oldPatientSocket, oldDoctorSocket].map((old) => old.server.close().catch(() => {})));
      await sleep(2000);
      for (const p of [doctor, patient]) {
        await byTestId(p.page, "call-status").filter({ hasText: "In the call" }).waitFor({ timeout: 10_000 });
      }
      const after = doctorIn().filter((m) => m?.type === "peer_presence" || m?.type === "peer_left");
      assert.ok(after.every((m) => m.type === "peer_presence" && m.online === true), `the patient never left: ${JSON.stringify(after)}`);
      const frames = await patient.page.evaluate(async () => {
        let decoded = 0;
        (await /** @type {RTCPeerConnection} */ (/** @type {any} */ (window).consultPc).getStats()).forEach((/** @type {any} */ s) => {
          if (s.type === "inbound-rtp" && s.kind === "video") decoded += s.framesDecoded ?? 0;
        });
        return decoded;
      });
      assert.ok(frames > 0, "the patient decodes the doctor's video");
    });
  });
});
