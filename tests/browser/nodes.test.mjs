// Two nodes of one deployment (PostgreSQL and Redis from Debian, started here on loopback): the
// doctor's page on one node, the patient's on the other. The patient's signaling is relayed to
// the node holding the consultation; the waiting room, the admission, the peer connection, media
// both ways and the end all work as on one node.
//
// Run: cd tests/browser && node --test nodes.test.mjs   (environment: see README.md here)
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { chmod, mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import {
  CONSULT_BIN,
  REPO_ROOT,
  admitFromWaitingRoom,
  assertMediaKeepsFlowing,
  createConsultation,
  endConsultation,
  launchWatched,
  lineSplitter,
  openConsultation,
  patientJoin,
  signInDoctor,
  terminate,
  waitForRemoteMedia,
  withService,
} from "./harness.mjs";

/** A free TCP port on loopback. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = /** @type {import('node:net').AddressInfo} */ (server.address());
      server.close(() => resolve(port));
    });
  });
}

/** @param {number} port */
async function waitForPort(port) {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const open = await new Promise((resolve) => {
      const socket = connect(port, "127.0.0.1", () => {
        socket.end();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port}`);
    await sleep(50);
  }
}

/** Debian's redis-server on a free port, nothing kept on disk. */
async function startRedis() {
  const port = await freePort();
  const child = spawn("redis-server", ["--bind", "127.0.0.1", "--port", String(port), "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  await waitForPort(port);
  return { url: `redis://127.0.0.1:${port}/`, stop: () => terminate(child, 2000) };
}

/** A throwaway PostgreSQL server (scripts/postgres.sh). */
async function startPostgres() {
  const dir = await mkdtemp(join(tmpdir(), "consult-pg-"));
  await chmod(dir, 0o755);
  const script = join(REPO_ROOT, "scripts", "postgres.sh");
  const url = execFileSync(script, ["start", join(dir, "pg"), String(await freePort())], { encoding: "utf8" }).trim();
  return {
    url,
    async stop() {
      try {
        execFileSync(script, ["stop", join(dir, "pg")]);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  };
}

/**
 * Another node on the first one's data directory and environment; resolves with its URL.
 * @param {import('./harness.mjs').Service} first
 * @param {Record<string, string>} env
 */
async function startAnotherNode(first, env) {
  /** @type {string[]} */
  const logs = [];
  const child = spawn(CONSULT_BIN, ["serve", "--bind", "127.0.0.1:0", "--data-dir", first.dataDir], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: "info", NO_COLOR: "1", ...env },
  });
  /** @type {NodeJS.Timeout | undefined} */
  let timer;
  const url = await new Promise((resolve, reject) => {
    const reader = lineSplitter((line) => {
      logs.push(line);
      if (logs.length > 400) logs.shift();
      const match = /Consult is running at\s+(\S+)/.exec(line);
      if (match) resolve(new URL(match[1]).origin);
    });
    child.stdout.on("data", reader);
    child.stderr.on("data", lineSplitter((line) => logs.push(line)));
    child.once("exit", (code) => reject(new Error(`the second node exited (${code}):\n${logs.join("\n")}`)));
    timer = setTimeout(() => reject(new Error(`the second node did not start:\n${logs.join("\n")}`)), 60_000);
  }).finally(() => clearTimeout(timer));
  return {
    url: /** @type {string} */ (url),
    stop: () => terminate(child, 5000),
    diagnostics: () => `\n--- the second node ---\n${logs.slice(-100).join("\n")}`,
  };
}

describe("two nodes", { timeout: 180_000 }, () => {
  test("the doctor on one node, the patient on another: waiting room, admission, media both ways and the end cross nodes", { timeout: 150_000 }, async (t) => {
    const redis = await startRedis();
    const postgres = await startPostgres();
    try {
      const env = { CONSULT_CLUSTER__REDIS_URL: redis.url, CONSULT_DATABASE_URL: postgres.url, CONSULT_CLUSTER__LEASE: "1500ms" };
      await withService({ env }, async (scope) => {
        const second = scope.own(await startAnotherNode(scope.service, env));
        const doctor = await launchWatched(scope, "doctor");
        const patient = await launchWatched({ ...scope, service: { ...scope.service, url: second.url } }, "patient");
        await signInDoctor(doctor.page, scope.service);
        const inviteUrl = await createConsultation(doctor.page, "Across nodes", { mode: "live_only" });
        await openConsultation(doctor.page);
        // The patient opens the link on the other node.
        const elsewhere = inviteUrl.replace(scope.service.url, second.url);
        assert.notEqual(elsewhere, inviteUrl, "the link points at the second node");
        await patientJoin(patient.page, elsewhere, "Pat Example");
        await admitFromWaitingRoom(doctor.page, "Pat Example");
        await waitForRemoteMedia(patient.page);
        await waitForRemoteMedia(doctor.page);
        await assertMediaKeepsFlowing([doctor, patient], 2000);

        // The patient's connection really crossed: the second node relays it.
        const token = (await readFile(join(scope.service.dataDir, "keys", "metrics.token"), "utf8")).trim();
        const page = await (await fetch(`${second.url}/metrics`, { headers: { authorization: `Bearer ${token}` } })).text();
        const relayed = Number(/^consult_ws_relayed_sockets (\d+)/m.exec(page)?.[1] ?? "0");
        assert.ok(relayed >= 1, `the second node relays the patient's signaling (${relayed})`);
        t.diagnostic(`relayed connections on the second node: ${relayed}`);

        await endConsultation(doctor.page, patient.page);
      });
    } finally {
      await redis.stop();
      await postgres.stop();
    }
  });
});
