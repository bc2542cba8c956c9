// Relay-only calls: coturn on 127.0.0.1 (TURN REST credentials, relay ports 52000-52999) and the
// service with `ice.relay_only = true`, so `GET /api/v1/ice-servers` says
// `"ice_transport_policy": "relay"`. Then
//  (a) doctor browser <-> patient browser: media both ways, and on both sides the selected
//      candidate pair is relay <-> relay (ports of coturn's relay range); no other candidate is
//      gathered or received at all;
//  (b) doctor browser <-> native echo-bot: the browser decodes echo-bot's video over a pair whose
//      local candidate is a relay one, and echo-bot's own selected pair is relay <-> relay;
//  (c) relay only without a usable TURN server: the pages say so in the call status instead of
//      hanging in "Connecting…", and still gather no candidate but relay ones.
//
// Run: cd tests/browser && npm test   (or: node --test relay.test.mjs)
// Needs the service (CONSULT_BIN), coturn (`turnserver`, TURNSERVER_BIN, default
// /usr/bin/turnserver), /usr/bin/chromium and for (b) echo-bot (ECHO_BOT_BIN; skipped with a note
// when missing, unless CONSULT_REQUIRE_NATIVE=1).

import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, test } from "node:test";

import {
  admitFromWaitingRoom,
  byTestId,
  createConsultation,
  cspViolations,
  doctorWithEchoBot,
  ECHO_BOT_MISSING,
  iceStats,
  inboundStats,
  launchParticipant,
  openConsultation,
  patientJoin,
  relayOnlyServiceEnv,
  runAdmitScenario,
  signInDoctor,
  startTurnServer,
  STEP_TIMEOUT_MS,
  TURN_RELAY_PORTS,
  waitForSelectedPair,
  withService,
} from "./harness.mjs";

/** @param {number} port */
function inRelayRange(port) {
  return Number.isInteger(port) && port >= TURN_RELAY_PORTS.min && port <= TURN_RELAY_PORTS.max;
}

/**
 * The port of `host:port` or `[v6]:port`.
 * @param {string} address
 */
function portOf(address) {
  const match = /:(\d+)$/.exec(address.trim());
  return match ? Number(match[1]) : NaN;
}

/**
 * The coturn log lines about requests (allocations, permissions, refusals).
 * @param {import('./harness.mjs').TurnServer} turn
 */
function turnRequestLines(turn) {
  return turn.logs.filter((line) => /incoming packet|session \d+: (new|closed|usage)/.test(line));
}

/**
 * `withService` options for a relay-only service through this TURN server; a failure's message
 * gets the tail of the TURN server's log.
 * @param {import('./harness.mjs').TurnServer} turn
 */
function relayOnly(turn) {
  return {
    env: relayOnlyServiceEnv(turn),
    diagnostics: () => `\n--- turnserver log (tail) ---\n${turn.logs.slice(-60).join("\n")}`,
  };
}

/**
 * The selected pair of a page is relay on its side (and the connection was made relay only).
 * @param {import('./harness.mjs').IceStats} stats
 * @param {string} label
 */
function assertLocalRelay(stats, label) {
  assert.equal(stats.policy, "relay", `${label}: the RTCPeerConnection's iceTransportPolicy`);
  const selected = stats.selected;
  assert.ok(selected && selected.local && selected.remote, `${label}: a selected candidate pair: ${JSON.stringify(stats)}`);
  assert.equal(selected.local.candidateType, "relay", `${label}: local candidate of the selected pair: ${JSON.stringify(selected)}`);
  assert.ok(inRelayRange(selected.local.port), `${label}: local relay port ${selected.local.port} in ${TURN_RELAY_PORTS.min}-${TURN_RELAY_PORTS.max}`);
  assert.ok(selected.bytesSent > 0, `${label}: the selected pair carries traffic: ${JSON.stringify(selected)}`);
  for (const c of stats.localCandidates) {
    assert.equal(c.candidateType, "relay", `${label}: only relay candidates are gathered: ${JSON.stringify(stats.localCandidates)}`);
  }
  for (const p of stats.trafficPairs) {
    assert.ok(
      p.local?.candidateType === "relay" && p.remote?.candidateType === "relay" && inRelayRange(p.local.port) && inRelayRange(p.remote.port),
      `${label}: every pair that carried bytes is relay <-> relay: ${JSON.stringify(stats.trafficPairs)}`,
    );
  }
}

/**
 * The other side of the selected pair is a relay candidate too, and every candidate the other side
 * sent is one.
 * @param {import('./harness.mjs').IceStats} stats
 * @param {string} label
 */
function assertRemoteRelay(stats, label) {
  const remote = stats.selected?.remote;
  assert.ok(remote, `${label}: the selected pair has a remote candidate`);
  assert.equal(remote.candidateType, "relay", `${label}: remote candidate of the selected pair: ${JSON.stringify(stats.selected)}`);
  assert.ok(inRelayRange(remote.port), `${label}: remote relay port ${remote.port} in ${TURN_RELAY_PORTS.min}-${TURN_RELAY_PORTS.max}`);
  for (const c of stats.remoteCandidates) {
    assert.ok(c.candidateType === "relay" && inRelayRange(c.port), `${label}: the other side sent only relay candidates: ${JSON.stringify(stats.remoteCandidates)}`);
  }
}

describe("relay-only calls through a TURN server (coturn on 127.0.0.1)", { timeout: 900_000 }, () => {
  // One TURN server for all; a fresh service per test (the demo doctor stays "in a call" in an
  // earlier test's consultation until its patient's grace period ends, and could not admit).
  /** @type {import('./harness.mjs').TurnServer | null} */
  let turn = null;

  before(async () => {
    turn = await startTurnServer();
  });

  after(async () => {
    await turn?.stop();
  });

  test("doctor and patient browsers: media both ways over relay <-> relay", { timeout: 180_000 }, async (t) => {
    assert.ok(turn);
    await withService(relayOnly(turn), async ({ service, people }) => {
      const scenario = await runAdmitScenario(service, { title: "Relay check", patientName: "Pat Relay" });
      const { doctor, patient } = scenario;
      people.push(doctor, patient);
      t.diagnostic(`patient inbound: ${JSON.stringify(scenario.patientMedia)}`);
      t.diagnostic(`doctor inbound: ${JSON.stringify(scenario.doctorMedia)}`);
      assert.ok(scenario.patientMedia.framesDecoded > 0, "patient decodes the doctor's video");
      assert.ok(scenario.patientMedia.audioPackets > 0, "patient receives the doctor's audio");
      assert.ok(scenario.doctorMedia.framesDecoded > 0, "doctor decodes the patient's video");
      assert.ok(scenario.doctorMedia.audioPackets > 0, "doctor receives the patient's audio");

      // What the service hands out: relay only, with this TURN server and REST credentials.
      const answer = await doctor.page.evaluate(async () => (await fetch("/api/v1/ice-servers")).json());
      t.diagnostic(`GET /api/v1/ice-servers (doctor): ${JSON.stringify({ ...answer, ice_servers: answer.ice_servers.map((/** @type {any} */ s) => ({ ...s, credential: s.credential ? "…" : undefined })) })}`);
      assert.equal(answer.ice_transport_policy, "relay");
      assert.ok(
        answer.ice_servers.some((/** @type {any} */ s) => s.urls.includes(turn?.url) && /^\d+:/.test(s.username ?? "") && s.credential),
        `the TURN server with REST credentials: ${JSON.stringify(answer.ice_servers.map((/** @type {any} */ s) => s.urls))}`,
      );

      for (const p of [doctor, patient]) {
        const stats = await waitForSelectedPair(p.page);
        t.diagnostic(`${p.label} selected pair (${stats.selected?.via}): ${JSON.stringify(stats.selected)}`);
        t.diagnostic(`${p.label} candidates: local ${JSON.stringify(stats.localCandidates)} remote ${JSON.stringify(stats.remoteCandidates)}`);
        assertLocalRelay(stats, p.label);
        assertRemoteRelay(stats, p.label);
      }

      const requests = turnRequestLines(turn);
      const allocations = requests.filter((l) => /ALLOCATE processed, success/.test(l)).length;
      const permissions = requests.filter((l) => /CREATE_PERMISSION processed, success/.test(l)).length;
      t.diagnostic(`turnserver: ${allocations} allocations, ${permissions} permissions granted`);
      assert.ok(allocations >= 2, `coturn logged an allocation for each browser:\n${requests.slice(-30).join("\n")}`);
      for (const p of [doctor, patient]) assert.deepEqual(cspViolations(p), [], `${p.label}: no Content-Security-Policy violations`);
    });
  });

  test("doctor browser and native echo-bot: relay on both sides", { timeout: 180_000, skip: ECHO_BOT_MISSING }, async (t) => {
    assert.ok(turn);
    await withService(relayOnly(turn), async (scope) => {
      const { doctor, bot } = await doctorWithEchoBot(scope, { label: "doctor (echo-bot)", title: "Relay echo test", bot: { seconds: 120 } });

      // The browser decodes echo-bot's video (and gets its audio).
      const deadline = Date.now() + 30_000;
      /** @type {any} */
      let media = null;
      while (Date.now() < deadline) {
        media = await inboundStats(doctor.page).catch((err) => ({ error: String(err) }));
        if (media && media.framesDecoded > 0 && media.audioPackets > 0) break;
        await sleep(250);
      }
      t.diagnostic(`browser inbound: ${JSON.stringify(media)}`);
      assert.ok(media && media.framesDecoded > 0, `the browser decodes echo-bot's video: ${JSON.stringify(media)}`);
      assert.ok(media.audioPackets > 0, `the browser receives echo-bot's audio: ${JSON.stringify(media)}`);

      // The browser's side: relay <-> relay. (echo-bot may send on another pair than the one the
      // browser nominated, between other relay allocations: every pair with traffic is checked.)
      const stats = await waitForSelectedPair(doctor.page, { bothWays: false });
      t.diagnostic(`browser selected pair (${stats.selected?.via}): ${JSON.stringify(stats.selected)}`);
      t.diagnostic(`browser candidates: local ${JSON.stringify(stats.localCandidates)} remote ${JSON.stringify(stats.remoteCandidates)}`);
      t.diagnostic(`browser pairs with traffic: ${JSON.stringify(stats.trafficPairs.map((p) => `${p.local?.port} -> ${p.remote?.port}: sent ${p.bytesSent}, received ${p.bytesReceived}${p.nominated ? ", nominated" : ""}`))}`);
      assertLocalRelay(stats, "browser");
      assert.ok(stats.trafficPairs.some((p) => p.bytesReceived > 0), `the browser receives on some pair: ${JSON.stringify(stats.trafficPairs)}`);
      assertRemoteRelay(stats, "browser");

      // echo-bot's side: its selected pair (`local -> remote`) is between two relay addresses.
      const line = await bot.waitFor((e) => e.event === "connection" && typeof e.pair === "string" && e.pair.includes("->"), 20_000, "connection event with a selected pair");
      t.diagnostic(`echo-bot connection: ${JSON.stringify(line)}`);
      const pairs = bot.events.filter((e) => e.event === "connection" && typeof e.pair === "string").map((e) => e.pair);
      for (const pair of new Set(pairs)) {
        const [local, remote] = pair.split("->").map((/** @type {string} */ a) => a.trim());
        assert.ok(local && remote, `echo-bot pair ${JSON.stringify(pair)}`);
        assert.ok(inRelayRange(portOf(local)), `echo-bot's local address ${local} is a relay port (pair ${pair})`);
        assert.ok(inRelayRange(portOf(remote)), `echo-bot's remote address ${remote} is a relay port (pair ${pair})`);
      }
      // The two sides' views fit: echo-bot's local address is a relay candidate the browser got
      // from it, its remote address one of the browser's own relay candidates.
      const [botLocal, botRemote] = line.pair.split("->").map((/** @type {string} */ a) => portOf(a));
      const browserLocal = stats.localCandidates.map((c) => c.port);
      const browserRemote = stats.remoteCandidates.map((c) => c.port);
      t.diagnostic(`echo-bot pair ports ${botLocal} -> ${botRemote}; browser local relay ports ${browserLocal}, remote ${browserRemote}; browser selected ${stats.selected?.local?.port} -> ${stats.selected?.remote?.port}`);
      assert.ok(browserRemote.includes(botLocal), `echo-bot's local address ${botLocal} is one of the browser's remote candidates ${browserRemote}`);
      assert.ok(browserLocal.includes(botRemote), `echo-bot's remote address ${botRemote} is one of the browser's relay candidates ${browserLocal}`);

      const warnings = bot.events.filter((e) => e.event === "warning");
      if (warnings.length) t.diagnostic(`echo-bot warnings: ${JSON.stringify(warnings)}`);
      assert.deepEqual(cspViolations(doctor), [], "no Content-Security-Policy violations");
    });
  });

  test("relay only without a usable TURN server: the call status says so", { timeout: 120_000 }, async (t) => {
    assert.ok(turn);
    await withService(relayOnly(turn), async ({ service, people }) => {
      const [doctor, patient] = await Promise.all([
        launchParticipant("doctor (no TURN)", { origin: service.url }),
        launchParticipant("patient (TURN unreachable)", { origin: service.url }),
      ]);
      people.push(doctor, patient);
      // The doctor's page is told "relay" with no TURN server at all; the patient's page gets a
      // TURN server on a port nothing listens on (the port of this service's HTTP listener: TCP,
      // so UDP there is closed).
      const deadTurn = `turn:127.0.0.1:${new URL(service.url).port}?transport=udp`;
      await doctor.context.route("**/api/v1/ice-servers", (route) =>
        route.fulfill({ status: 200, contentType: "application/json", body: JSON.stringify({ ice_servers: [], ice_transport_policy: "relay", ttl_secs: 600 }) }),
      );
      await patient.context.route("**/api/v1/ice-servers", async (route) => {
        const real = await (await route.fetch()).json();
        const servers = real.ice_servers.map((/** @type {any} */ s) => ({ ...s, urls: [deadTurn] }));
        await route.fulfill({ status: 200, contentType: "application/json", body: JSON.stringify({ ...real, ice_servers: servers }) });
      });

      await signInDoctor(doctor.page, service);
      const inviteUrl = await createConsultation(doctor.page, "No relay");
      await openConsultation(doctor.page);
      await patientJoin(patient.page, inviteUrl, "Pat NoRelay");
      await admitFromWaitingRoom(doctor.page, "Pat NoRelay");

      /**
       * @param {import('./harness.mjs').Participant} p
       * @param {RegExp} pattern
       * @param {number} timeoutMs
       */
      const errorStatus = async (p, pattern, timeoutMs) => {
        const status = p.page.locator('[data-testid="call-status"].status-error');
        try {
          await status.waitFor({ state: "visible", timeout: timeoutMs });
          await p.page.waitForFunction(
            ([source]) => new RegExp(source).test(document.querySelector('[data-testid="call-status"]')?.textContent ?? ""),
            [pattern.source],
            { timeout: STEP_TIMEOUT_MS },
          );
        } catch (err) {
          const text = await byTestId(p.page, "call-status").textContent().catch(() => null);
          throw new Error(`${p.label}: no error status matching ${pattern} (status ${JSON.stringify(text)}): ${err}`);
        }
        return (await status.textContent()) ?? "";
      };
      const doctorText = await errorStatus(doctor, /only allows calls through a relay \(TURN\) server, and none is configured/, STEP_TIMEOUT_MS);
      t.diagnostic(`doctor status: ${doctorText}`);
      // The browser gives a TURN allocation up only after ~40 s; the page says so after 10 s.
      const patientText = await errorStatus(patient, /relay server for calls could not be reached/, 45_000);
      t.diagnostic(`patient status: ${patientText}`);

      for (const p of [doctor, patient]) {
        const stats = await iceStats(p.page);
        t.diagnostic(`${p.label}: ${JSON.stringify({ policy: stats.policy, state: stats.connectionState, local: stats.localCandidates, remote: stats.remoteCandidates })}`);
        assert.equal(stats.policy, "relay", `${p.label}: iceTransportPolicy`);
        assert.notEqual(stats.connectionState, "connected", `${p.label}: not connected`);
        assert.deepEqual(stats.localCandidates, [], `${p.label}: no candidate gathered (no host or server-reflexive address handed out)`);
      }
      assert.ok(doctor.console.some((l) => /no TURN server is configured/.test(l)), "the doctor's console names the cause");
    });
  });

  test("TURN credentials that expire mid-call: the pages renew them in their running connections, so the call survives a relay restart after the first ones expired", { timeout: 240_000 }, async (t) => {
    // Its own TURN server (restarted mid-call), and credentials valid for 16 s. coturn keeps an
    // allocation made with valid credentials after they expire, but checks every new one: once
    // it restarts (25 s after connecting, long after the first credentials expired) the call
    // can only go on if the pages allocate again with renewed credentials.
    let own = await startTurnServer();
    try {
      const ttlSecs = 16;
      const options = {
        env: { ...relayOnlyServiceEnv(own), CONSULT_ICE__TURN_CREDENTIAL_TTL: `${ttlSecs}s` },
        diagnostics: () => `\n--- turnserver log (tail) ---\n${own.logs.slice(-60).join("\n")}`,
      };
      await withService(options, async ({ service, people }) => {
        const scenario = await runAdmitScenario(service, { title: "Renewal", patientName: "Pat Renewal" });
        const { doctor, patient } = scenario;
        people.push(doctor, patient);
        /** The expiry (Unix seconds) in the TURN username of each page's running connection. */
        const expiries = () =>
          Promise.all(
            [doctor, patient].map((p) =>
              p.page.evaluate(() => {
                /** @type {RTCPeerConnection | null} */
                const pc = /** @type {any} */ (window).consultPc ?? null;
                const username = pc?.getConfiguration().iceServers?.[0]?.username ?? "";
                return Number(/^(\d+):/.exec(username)?.[1] ?? NaN);
              }),
            ),
          );
        const first = await expiries();
        t.diagnostic(`first credentials expire in ${first.map((e) => e - Math.floor(Date.now() / 1000))} s`);
        for (const e of first) assert.ok(Number.isFinite(e), "the connection holds TURN REST credentials");

        await sleep(25_000);
        const renewed = await expiries();
        const now = Math.floor(Date.now() / 1000);
        t.diagnostic(`25 s later: the first credentials expired ${first.map((e) => now - e)} s ago; the renewed ones expire in ${renewed.map((e) => e - now)} s`);
        first.forEach((e, i) => {
          assert.ok(e < now, "the first credentials have expired");
          assert.ok(renewed[i] > now, "the running connection holds renewed credentials");
        });

        // The same connections must come back (not new ones made by the pages).
        await Promise.all([doctor, patient].map((p) => p.page.evaluate(() => ((/** @type {any} */ (window).consultPc).__renewalMark = true))));
        const allocationsBefore = own.logs.filter((l) => /ALLOCATE processed, success/.test(l)).length;
        await own.stop();
        const restartedAt = Date.now();
        own = await startTurnServer({ again: own });
        t.diagnostic(`turnserver restarted on port ${own.port} (${allocationsBefore} allocations before)`);

        // Both pages notice the dead relay, restart ICE and allocate with the renewed credentials:
        // video decodes again on both sides, over relay <-> relay.
        const before = await Promise.all([doctor, patient].map((p) => inboundStats(p.page)));
        const deadline = Date.now() + 90_000;
        /** @type {(number | null)[]} */
        const backAfter = [null, null];
        let last = before;
        while (backAfter.some((b) => b === null) && Date.now() < deadline) {
          await sleep(500);
          last = await Promise.all([doctor, patient].map((p) => inboundStats(p.page)));
          last.forEach((s, i) => {
            if (backAfter[i] === null && s?.state === "connected" && (s?.framesDecoded ?? 0) > (before[i]?.framesDecoded ?? 0) + 30) backAfter[i] = Date.now() - restartedAt;
          });
        }
        const requests = turnRequestLines(own);
        t.diagnostic(`video decoding again after the restart: doctor ${backAfter[0]} ms, patient ${backAfter[1]} ms`);
        assert.ok(
          backAfter.every((b) => b !== null),
          `video decodes again on both sides within 90 s of the relay restart: ${JSON.stringify({ before, last })}\n${requests.slice(-30).join("\n")}`,
        );
        const allocations = requests.filter((l) => /ALLOCATE processed, success/.test(l)).length;
        assert.ok(allocations >= 2, `the restarted relay granted both pages new allocations:\n${requests.slice(-30).join("\n")}`);
        for (const p of [doctor, patient]) {
          const stats = await waitForSelectedPair(p.page);
          assertLocalRelay(stats, p.label);
          assert.equal(
            await p.page.evaluate(() => /** @type {any} */ (window).consultPc?.__renewalMark === true),
            true,
            `${p.label}: the call came back on the same RTCPeerConnection`,
          );
        }
      });
    } finally {
      await own.stop();
    }
  });
});
