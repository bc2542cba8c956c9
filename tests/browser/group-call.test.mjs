// Four browsers in one end-to-end encrypted consultation — the doctor, a patient, an interpreter
// and a family member — in a full mesh: each page holds one connection with each of the three
// others, decodes everyone's video and receives everyone's audio, every frame through SFrame under
// the keys of its pair, and shows one security code per other participant, equal on both sides of
// each pair and different for every pair; a chat message reaches all three others. Then the family
// member hangs up: the three others keep their connections with each other (none is redone), their
// media keeps flowing, and they show two codes each. Screens: refused by the browser once (said,
// the call goes on), then the doctor's reaches the three others; the interpreter may share only
// once the doctor lets everyone, and stops when that is taken back.
//
// Figures (printed, not asserted): admission to an intact first frame from every other
// participant with three and with four in the call, the time until every remaining sender uses a
// new key after someone leaves (asserted: it does), and the longest video gap on the remaining
// connections meanwhile.
//
// Run: cd tests/browser && node --test group-call.test.mjs   (environment: see README.md here)
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  admitFromWaitingRoom,
  byTestId,
  createConsultation,
  e2eeSnapshot,
  launchParticipant,
  openConsultation,
  passDeviceCheck,
  sendChat,
  signInDoctor,
  waitForChat,
  withService,
} from "./harness.mjs";

/** How long a mesh may take to carry media between everyone (four browsers on two cores). */
const MESH_TIMEOUT_MS = 90_000;

const sleep = (/** @type {number} */ ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Per other participant (by id): the page's connection with them (`window.consultPcs`), what it
 * decoded, and the marker a test put on it.
 * @param {import('playwright-core').Page} page
 * @returns {Promise<Record<string, { state: string, framesDecoded: number, audioPackets: number, marker: string | null }>>}
 */
function meshStats(page) {
  return page.evaluate(async () => {
    /** @type {Record<string, RTCPeerConnection>} */
    const pcs = /** @type {any} */ (window).consultPcs ?? {};
    /** @type {Record<string, { state: string, framesDecoded: number, audioPackets: number, marker: string | null }>} */
    const out = {};
    for (const [peerId, pc] of Object.entries(pcs)) {
      const report = await pc.getStats();
      let framesDecoded = 0;
      let audioPackets = 0;
      report.forEach((s) => {
        if (s.type !== "inbound-rtp") return;
        if (s.kind === "video") framesDecoded += s.framesDecoded ?? 0;
        else audioPackets += s.packetsReceived ?? 0;
      });
      out[peerId] = { state: pc.connectionState, framesDecoded, audioPackets, marker: /** @type {any} */ (pc).__marker ?? null };
    }
    return out;
  });
}

/**
 * Every connection of a page as its negotiation stands: signaling state, and each section's
 * directions and the remote track's state (for a failure's message).
 * @param {import('playwright-core').Page} page
 */
function negotiationStates(page) {
  return page.evaluate(() =>
    Object.entries(/** @type {any} */ (window).consultPcs ?? {}).map(([peerId, pc]) => ({
      peerId: peerId.slice(0, 8),
      signaling: /** @type {RTCPeerConnection} */ (pc).signalingState,
      connection: /** @type {RTCPeerConnection} */ (pc).connectionState,
      sections: /** @type {RTCPeerConnection} */ (pc).getTransceivers().map((t) => `${t.mid}:${t.direction}/${t.currentDirection}:${t.receiver.track.kind}${t.receiver.track.muted ? " muted" : ""}${t.sender.track ? " sending" : ""}`),
    })),
  );
}

/**
 * Wait for every page's screen view to be in `state`; on a timeout, say how each page's
 * negotiations stand.
 * @param {{ page: import('playwright-core').Page, label: string }[]} people
 * @param {"visible" | "hidden"} state
 * @param {{ page: import('playwright-core').Page, label: string }[]} everyone
 */
async function waitForScreenViews(people, state, everyone) {
  try {
    for (const p of people) await byTestId(p.page, "screen-view").waitFor({ state, timeout: 30_000 });
  } catch (err) {
    const states = await Promise.all(everyone.map(async (p) => `${p.label}: ${JSON.stringify(await negotiationStates(p.page).catch((e) => String(e)))}`));
    throw new Error(`screen views not ${state}: ${err instanceof Error ? err.message : err}\n${states.join("\n")}`);
  }
}

/**
 * Wait until each page has `count` connections, all decoding video and receiving audio; returns
 * how long that took.
 * @param {{ label: string, page: import('playwright-core').Page }[]} people
 * @param {number} count Connections each page should have.
 */
async function waitForMesh(people, count) {
  const started = Date.now();
  /** @type {Record<string, unknown>} */
  let last = {};
  while (Date.now() - started < MESH_TIMEOUT_MS) {
    const all = await Promise.all(people.map((p) => meshStats(p.page)));
    last = Object.fromEntries(people.map((p, i) => [p.label, all[i]]));
    const done = all.every((links) => {
      const values = Object.values(links);
      return values.length === count && values.every((l) => l.state === "connected" && l.framesDecoded > 0 && l.audioPackets > 0);
    });
    if (done) return Date.now() - started;
    await sleep(100);
  }
  throw new Error(`no full mesh of ${count + 1} within ${MESH_TIMEOUT_MS} ms: ${JSON.stringify(last)}`);
}

/**
 * From the People panel: a link for someone else, under a name the doctor chooses.
 * @param {import('playwright-core').Page} page
 * @param {"interpreter" | "companion" | "patient"} kind
 * @param {string} name
 */
async function inviteByName(page, kind, name) {
  const before = (await byTestId(page, "invite-person-issued").isVisible()) ? await byTestId(page, "invite-person-url").inputValue() : "";
  await byTestId(page, "invite-kind").selectOption(kind);
  await byTestId(page, "invite-name").fill(name);
  await byTestId(page, "invite-person").click();
  await page.waitForFunction(
    (previous) => {
      const input = /** @type {HTMLInputElement | null} */ (document.querySelector('[data-testid="invite-person-url"]'));
      return !!input && input.value !== "" && input.value !== previous;
    },
    before,
  );
  return byTestId(page, "invite-person-url").inputValue();
}

/**
 * Open an invite, pass the device check and wait in the waiting room.
 * @param {import('playwright-core').Page} page
 * @param {string} url
 * @param {string} name Typed in unless the invite names its holder.
 */
async function joinByInvite(page, url, name) {
  await page.goto(url);
  await byTestId(page, "patient-name").waitFor({ state: "visible" });
  await passDeviceCheck(page, name);
  await byTestId(page, "join-button").click();
  await byTestId(page, "waiting-message").waitFor({ state: "visible" });
}

describe("a group consultation in four browsers", { timeout: 420_000 }, () => {
  test("doctor, patient, interpreter and family, end-to-end encrypted: everyone gets everyone; one leaves, the rest go on", { timeout: 400_000 }, async (t) => {
    await withService({ env: { CONSULT_POLICY__MAX_PARTICIPANTS: "4" } }, async ({ service, people }) => {
      // Four browsers on a machine that may have two cores: the fake cameras at 10 frames a
      // second (the call sends at most 15 to each of three anyway) and smaller windows, so the
      // machine is not starved for seconds at a time (at Chromium's 20 and 1280×800 it was:
      // 30–60 threads waiting to run, frozen videos and unanswered signaling probes).
      const light = { origin: service.url, cameraFps: 10, viewport: { width: 960, height: 600 } };
      const doctor = await launchParticipant("doctor", light);
      people.push(doctor);
      await signInDoctor(doctor.page, service);
      const patientUrl = await createConsultation(doctor.page, "Family and interpreter", { e2ee: true });
      await openConsultation(doctor.page);
      await byTestId(doctor.page, "people-capacity").filter({ hasText: "2 of 4 places" }).waitFor();
      const interpreterUrl = await inviteByName(doctor.page, "interpreter", "Ines Interpreter");
      const companionUrl = await inviteByName(doctor.page, "companion", "Carla Carer");
      await byTestId(doctor.page, "people-capacity").filter({ hasText: "4 of 4 places" }).waitFor();

      const [patient, interpreter, companion] = await Promise.all(
        ["patient", "interpreter", "family"].map((label) => launchParticipant(label, light)),
      );
      people.push(patient, interpreter, companion);
      await joinByInvite(patient.page, patientUrl, "Pat Patient");
      await joinByInvite(interpreter.page, interpreterUrl, "Ines Interpreter");
      await joinByInvite(companion.page, companionUrl, "Carla Carer");

      // Admitted one at a time; each admission grows the mesh.
      await admitFromWaitingRoom(doctor.page, "Pat Patient");
      await waitForMesh([doctor, patient], 1);
      await admitFromWaitingRoom(doctor.page, "Ines Interpreter");
      const threeMs = await waitForMesh([doctor, patient, interpreter], 2);
      await admitFromWaitingRoom(doctor.page, "Carla Carer");
      const everyone = [doctor, patient, interpreter, companion];
      const fourMs = await waitForMesh(everyone, 3);
      t.diagnostic(`admission to a decoded frame from every other participant: 3 in the call ${threeMs} ms, 4 in the call ${fourMs} ms`);

      // Every page's connections, by whom they are with: each page's own id is the one it lacks.
      const meshes = await Promise.all(everyone.map((p) => meshStats(p.page)));
      const ids = [...new Set(meshes.flatMap((m) => Object.keys(m)))];
      assert.equal(ids.length, 4, "four participants");
      const idOf = meshes.map((m) => {
        const own = ids.filter((id) => !(id in m));
        assert.equal(own.length, 1);
        return own[0];
      });

      // End-to-end encryption with each other participant: media protected and opened both ways,
      // one code per pair, equal on both sides, different for every pair; the badge is on.
      const snapshots = await Promise.all(
        everyone.map(async (p) => {
          const deadline = Date.now() + MESH_TIMEOUT_MS;
          for (;;) {
            const s = await e2eeSnapshot(p.page);
            const peers = s ? Object.values(s.peers) : [];
            const flowing = (/** @type {any} */ w) => !!w && ["send", "receive"].every((side) => ["audio", "video"].every((kind) => w[side][kind].ok > 0));
            if (s && s.badge && peers.length === 3 && peers.every((x) => /^\d{4} \d{4}$/.test(x.sas ?? "") && flowing(x.worker))) return s;
            if (Date.now() > deadline) throw new Error(`${p.label}: E2EE not up with everyone: ${JSON.stringify(s)}`);
            await sleep(200);
          }
        }),
      );
      /** @type {Set<string>} */
      const codes = new Set();
      for (let a = 0; a < 4; a++) {
        for (let b = a + 1; b < 4; b++) {
          const fromA = snapshots[a].peers[idOf[b]].sas;
          const fromB = snapshots[b].peers[idOf[a]].sas;
          assert.equal(fromA, fromB, `${everyone[a].label} and ${everyone[b].label} show the same code`);
          codes.add(fromA);
        }
      }
      assert.equal(codes.size, 6, `a different code for each of the six pairs: ${[...codes]}`);

      // The pages: a tile per other participant with name and role, a code per participant.
      const tiles = await byTestId(doctor.page, "remote-name").allTextContents();
      assert.deepEqual(tiles.sort(), ["Carla Carer (family or carer)", "Ines Interpreter (interpreter)", "Pat Patient (patient)"]);
      for (const p of everyone) {
        await byTestId(p.page, "remote-tile").nth(2).waitFor({ state: "visible" });
        assert.equal(await byTestId(p.page, "remote-tile").count(), 3, `${p.label}: three tiles`);
        assert.equal(await byTestId(p.page, "e2ee-peer").count(), 3, `${p.label}: three codes`);
      }
      // Four in the call: every page sends its camera to each of the three others at half size and
      // 15 frames a second (an encode per receiver), each copy with its share of the uplink.
      for (const p of everyone) {
        const shapes = await p.page.evaluate(() =>
          Object.values(/** @type {any} */ (window).consultPcs).flatMap((pc) =>
            /** @type {RTCPeerConnection} */ (pc)
              .getSenders()
              .filter((s) => s.track?.kind === "video" && s.track.contentHint !== "detail")
              .flatMap((s) => s.getParameters().encodings),
          ),
        );
        // (The link's own ladder may be lower still while the estimate ramps up: at most, never more.)
        const atMostReduced = (/** @type {any} */ e) => e.scaleResolutionDownBy >= 2 && e.maxFramerate <= 15 && e.maxBitrate <= 500_000;
        assert.ok(shapes.length === 3 && shapes.every(atMostReduced), `${p.label}: the camera's encodings ${JSON.stringify(shapes)}`);
      }
      // The doctor compares the code with the interpreter and says it matches: that one, and only
      // that one, shows as verified.
      const withInterpreter = doctor.page.locator(`[data-testid="e2ee-peer"][data-peer-id="${idOf[2]}"]`);
      assert.match((await withInterpreter.textContent()) ?? "", /Ines Interpreter/);
      assert.match((await withInterpreter.textContent()) ?? "", new RegExp(snapshots[0].peers[idOf[2]].sas));
      await withInterpreter.locator('[data-testid="e2ee-verify"]').click();
      await withInterpreter.locator('[data-testid="e2ee-verified"]').waitFor();
      assert.equal(await byTestId(doctor.page, "e2ee-verified").count(), 1, "only the code compared is verified");

      // A chat message reaches the three others, sealed per connection.
      await sendChat(doctor.page, "Hello everyone");
      for (const p of [patient, interpreter, companion]) await waitForChat(p.page, "in", "Hello everyone");

      // Screen sharing. A browser that refuses it: said in words, and the call goes on.
      await doctor.page.evaluate(() => {
        const original = navigator.mediaDevices.getDisplayMedia.bind(navigator.mediaDevices);
        /** @type {any} */ (window).__restoreDisplayMedia = () => (navigator.mediaDevices.getDisplayMedia = original);
        navigator.mediaDevices.getDisplayMedia = () => Promise.reject(new DOMException("Permission denied", "NotAllowedError"));
      });
      await byTestId(doctor.page, "screen-button").click();
      await byTestId(doctor.page, "media-error").filter({ hasText: "Screen sharing was not allowed" }).waitFor();
      assert.equal(await byTestId(doctor.page, "screen-button").textContent(), "Share screen");
      await waitForMesh(everyone, 3);
      // Shared for real: everyone else decodes it, large, from a video section of its own.
      await doctor.page.evaluate(() => /** @type {any} */ (window).__restoreDisplayMedia());
      await byTestId(doctor.page, "screen-button").click();
      await doctor.page.waitForFunction(() => {
        const button = document.querySelector('[data-testid="screen-button"]');
        const error = document.querySelector('[data-testid="media-error"]');
        return button?.textContent === "Stop sharing" || (error instanceof HTMLElement && !error.hidden);
      });
      assert.equal(await byTestId(doctor.page, "media-error").isVisible(), false, `the refusal's message is gone: ${await byTestId(doctor.page, "media-error").textContent()}`);
      assert.equal(await byTestId(doctor.page, "screen-button").textContent(), "Stop sharing");
      await waitForScreenViews([patient, interpreter, companion], "visible", everyone);
      for (const p of [patient, interpreter, companion]) {
        await p.page.waitForFunction(
          (doctorId) => {
            const video = /** @type {HTMLVideoElement | null} */ (document.querySelector('[data-testid="screen-video"]'));
            const view = document.querySelector('[data-testid="screen-view"]');
            return !!video && video.videoWidth > 0 && view instanceof HTMLElement && view.dataset.peerId === doctorId;
          },
          idOf[0],
          { timeout: 30_000 },
        );
        assert.match((await byTestId(p.page, "screen-name").textContent()) ?? "", /is sharing their screen/);
        const sections = await p.page.evaluate(async (doctorId) => {
          const pc = /** @type {any} */ (window).consultPcs[doctorId];
          /** @type {number[]} */
          const frames = [];
          (await pc.getStats()).forEach((/** @type {any} */ s) => {
            if (s.type === "inbound-rtp" && s.kind === "video") frames.push(s.framesDecoded ?? 0);
          });
          return frames;
        }, idOf[0]);
        assert.ok(sections.length === 2 && sections.every((f) => f > 0), `${p.label} decodes the doctor's camera and screen: ${sections}`);
      }
      const duringShare = await e2eeSnapshot(patient.page);
      assert.ok(duringShare.badge, "still end-to-end encrypted while the screen is shared");
      // Stopped from the page: it goes from everyone's stage.
      await byTestId(doctor.page, "screen-button").click();
      await waitForScreenViews([patient, interpreter, companion], "hidden", everyone);
      // Shared again, then stopped from the browser's own control (which ends the capture's track).
      await byTestId(doctor.page, "screen-button").click();
      await waitForScreenViews([patient], "visible", everyone);
      const ended = await doctor.page.evaluate(() => {
        for (const pc of Object.values(/** @type {any} */ (window).consultPcs ?? {})) {
          for (const sender of /** @type {RTCPeerConnection} */ (pc).getSenders()) {
            if (sender.track && sender.track.kind === "video" && sender.track.contentHint === "detail") {
              sender.track.dispatchEvent(new Event("ended"));
              return true;
            }
          }
        }
        return false;
      });
      assert.ok(ended, "the doctor's screen track was found");
      await byTestId(doctor.page, "screen-button").filter({ hasText: "Share screen" }).waitFor();
      await waitForScreenViews([patient, interpreter, companion], "hidden", everyone);

      // Only clinicians share unless the doctor lets everyone: the interpreter has no button, then
      // one; their screen reaches the others; taken back, it stops and goes from every stage.
      assert.equal(await byTestId(interpreter.page, "screen-button").isVisible(), false, "no button for a guest");
      await byTestId(doctor.page, "guests-share-screen").check();
      await byTestId(interpreter.page, "screen-button").waitFor({ state: "visible" });
      await byTestId(interpreter.page, "screen-button").click();
      await byTestId(interpreter.page, "screen-button").filter({ hasText: "Stop sharing" }).waitFor();
      for (const p of [doctor, patient, companion]) {
        await p.page.waitForFunction(
          (interpreterId) => {
            const view = document.querySelector('[data-testid="screen-view"]');
            const video = /** @type {HTMLVideoElement | null} */ (document.querySelector('[data-testid="screen-video"]'));
            return view instanceof HTMLElement && !view.hidden && view.dataset.peerId === interpreterId && !!video && video.videoWidth > 0;
          },
          idOf[2],
          { timeout: 30_000 },
        );
      }
      await byTestId(doctor.page, "guests-share-screen").uncheck();
      await byTestId(interpreter.page, "screen-button").waitFor({ state: "hidden" });
      await waitForScreenViews([doctor, patient, companion], "hidden", everyone);

      // The family member leaves. Mark the connections among the others first: none may be redone.
      const remaining = [doctor, patient, interpreter];
      for (const p of remaining) {
        await p.page.evaluate(() => {
          for (const pc of Object.values(/** @type {any} */ (window).consultPcs ?? {})) pc.__marker = "before the leave";
        });
      }
      // The longest gap between decoded frames on the remaining connections around the leave, and
      // the time from the leave reaching a page until it sends to every remaining participant
      // under a new key (a new epoch on every remaining pair).
      const sampling = remaining.map((p) =>
        p.page.evaluate(async (leaverId) => {
          /** @type {Record<string, { last: number, at: number, gap: number }>} */
          const seen = {};
          const sendEpoch = (/** @type {string} */ peerId) => /** @type {any} */ (window).consultE2ee?.snapshot()?.peers?.[peerId]?.epochs?.send ?? 0;
          /** @type {Record<string, { before: number, movedAt: number | null }>} */
          const epochs = {};
          /** @type {number | null} */
          let leftAt = null;
          // Sampled from before the leave until 5 s after it reached this page (10 s if a new key
          // is still missing then): a machine starved by four browsers may deliver the leave late,
          // and the window is about what follows it.
          const started = performance.now();
          const moved = () => Object.keys(epochs).length === 2 && Object.values(epochs).every((e) => e.movedAt !== null);
          const sampling = (/** @type {number} */ now) =>
            leftAt === null ? now < started + 30_000 : now < leftAt + 5000 || (!moved() && now < leftAt + 10_000);
          while (sampling(performance.now())) {
            const pcs = Object.entries(/** @type {any} */ (window).consultPcs ?? {});
            if (leftAt === null && !pcs.some(([peerId]) => peerId === leaverId)) leftAt = performance.now();
            for (const [peerId, pc] of pcs) {
              if (peerId === leaverId) continue;
              const epoch = (epochs[peerId] ??= { before: sendEpoch(peerId), movedAt: null });
              if (epoch.movedAt === null && sendEpoch(peerId) > epoch.before) epoch.movedAt = performance.now();
              let frames = 0;
              (await /** @type {RTCPeerConnection} */ (pc).getStats()).forEach((s) => {
                if (s.type === "inbound-rtp" && s.kind === "video") frames += s.framesDecoded ?? 0;
              });
              const now = performance.now();
              const entry = (seen[peerId] ??= { last: frames, at: now, gap: 0 });
              if (frames > entry.last) {
                entry.gap = Math.max(entry.gap, now - entry.at);
                entry.last = frames;
                entry.at = now;
              }
            }
            await new Promise((r) => setTimeout(r, 50));
          }
          return {
            gaps: Object.values(seen).map((e) => Math.max(e.gap, performance.now() - e.at)),
            leaveSeenMs: leftAt === null ? null : Math.round(leftAt - started),
            newKeys: Object.entries(epochs).map(([peerId, e]) => ({ peerId, before: e.before, after: sendEpoch(peerId), ms: e.movedAt === null || leftAt === null ? null : Math.max(0, e.movedAt - leftAt) })),
          };
        }, idOf[3]),
      );
      await sleep(1000);
      await byTestId(companion.page, "hangup-button").click();
      await byTestId(companion.page, "left-message").waitFor({ state: "visible" });
      const sampled = await Promise.all(sampling);
      const gaps = sampled.flatMap((s) => s.gaps);
      t.diagnostic(`longest video gap on the remaining connections while one left: ${Math.round(Math.max(...gaps))} ms`);
      // A new epoch with everyone who stays: each remaining page sends to both others under a newer key.
      for (const [i, s] of sampled.entries()) {
        assert.equal(s.newKeys.length, 2, `${remaining[i].label} sampled both others`);
        assert.ok(s.leaveSeenMs !== null, `${remaining[i].label} saw the leave`);
        for (const k of s.newKeys) assert.ok(k.ms !== null && k.after > k.before, `${remaining[i].label} sends to ${k.peerId} under a new key after the leave (seen ${s.leaveSeenMs} ms into sampling): ${JSON.stringify(k)}`);
      }
      const newKeyMs = sampled.flatMap((s) => s.newKeys.map((k) => k.ms ?? Infinity));
      t.diagnostic(`every remaining sender uses a new key ${Math.round(Math.max(...newKeyMs))} ms after the leave reached it (slowest of six)`);

      const deadline = Date.now() + 20_000;
      for (;;) {
        const after = await Promise.all(remaining.map((p) => meshStats(p.page)));
        const settled = after.every((links) => Object.keys(links).length === 2 && !(idOf[3] in links));
        if (settled) {
          for (const [i, links] of after.entries()) {
            for (const link of Object.values(links)) assert.equal(link.marker, "before the leave", `${remaining[i].label}: the connection was kept`);
          }
          break;
        }
        if (Date.now() > deadline) throw new Error(`the others still hold a connection with the one who left: ${JSON.stringify(after)}`);
        await sleep(200);
      }
      // Media keeps flowing among the three, two tiles and two codes each: every page decodes
      // new frames from both others. Within 10 s: on two cores starved by four browsers a
      // connection was seen frozen for 2 s and more around the leave (the longest gap above).
      const before = await Promise.all(remaining.map((p) => meshStats(p.page)));
      const flowingBy = Date.now() + 10_000;
      /** @type {Record<string, number>[]} */
      let stalled;
      for (;;) {
        await sleep(500);
        const later = await Promise.all(remaining.map((p) => meshStats(p.page)));
        stalled = later.map((links, i) =>
          Object.fromEntries(Object.entries(links).filter(([peerId, link]) => !(link.framesDecoded > before[i][peerId].framesDecoded)).map(([peerId, link]) => [peerId, link.framesDecoded])),
        );
        if (stalled.every((s) => Object.keys(s).length === 0) || Date.now() > flowingBy) break;
      }
      t.diagnostic(`every remaining page decoded new frames from both others ${10_000 - Math.max(0, flowingBy - Date.now())} ms after the check began (at most 10 s)`);
      for (const [i, s] of stalled.entries()) {
        assert.deepEqual(Object.keys(s), [], `${remaining[i].label} still decodes video from every other: stalled ${JSON.stringify(s)}`);
      }
      for (const [i] of remaining.entries()) {
        await byTestId(remaining[i].page, "remote-tile").nth(1).waitFor();
        assert.equal(await byTestId(remaining[i].page, "remote-tile").count(), 2);
        assert.equal(await byTestId(remaining[i].page, "e2ee-peer").count(), 2);
      }
    });
  });
});
