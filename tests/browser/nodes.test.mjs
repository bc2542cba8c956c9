// Two nodes of one deployment (PostgreSQL and Redis from Debian, started here on loopback): the
// doctor's page on one node, the patient's on the other. The patient's signaling is relayed to
// the node holding the consultation; the waiting room, the admission, the peer connection, media
// both ways and the end all work as on one node.
//
// Then the same two nodes behind nginx (no stickiness), both pages through it, and the node
// holding the call SIGKILLed: both pages take their places back on the other node through nginx —
// the same participant ids, still admitted, the same peer connection — and keep decoding. End-to-
// end encrypted: the same verification code, the badge on. Recorded: the recording on the dead
// node is interrupted, a recorder on the other continues it in a segment, both pages connect to
// it, and the download of the recording is one file with both segments that ffmpeg decodes.
//
// Run: cd tests/browser && node --test nodes.test.mjs   (environment: see README.md here)
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import {
  CONSULT_BIN,
  REPO_ROOT,
  admitFromWaitingRoom,
  allowRecording,
  assertBackOnTheSameConnection,
  assertMediaKeepsFlowing,
  assertRecordingMedia,
  createConsultation,
  endConsultation,
  inspectRecording,
  joinedSince,
  launchWatched,
  lineSplitter,
  listRecordings,
  openConsultation,
  patientJoin,
  protectedBothWays,
  runCommand,
  signInDoctor,
  startCall,
  terminate,
  waitForPlacesBack,
  waitForRecorderConnected,
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
      // Behind a load balancer (public_url) the node also says where it listens itself.
      const match = /Consult is running at\s+\S+ \(this node listens on (\S+)\)/.exec(line) ?? /Consult is running at\s+(\S+)/.exec(line);
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
    kill: () => terminate(child, 0, "SIGKILL"),
    diagnostics: () => `\n--- the second node ---\n${logs.slice(-100).join("\n")}`,
  };
}

/**
 * Debian's nginx on `port` in front of `origins`, round robin with no stickiness, WebSocket
 * upgrades passed on: what a load balancer does.
 * @param {number} port
 * @param {string[]} origins
 */
async function startNginx(port, origins) {
  const dir = await mkdtemp(join(tmpdir(), "consult-nginx-"));
  await chmod(dir, 0o755);
  for (const sub of ["body", "proxy", "fastcgi", "uwsgi", "scgi"]) {
    await mkdir(join(dir, sub));
    // nginx's workers run as another user.
    await chmod(join(dir, sub), 0o777);
  }
  const servers = origins.map((o) => `    server ${new URL(o).host} max_fails=1 fail_timeout=2s;`).join("\n");
  const conf = `daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  map $http_upgrade $connection_upgrade { default upgrade; '' close; }
  upstream consult {
${servers}
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://consult;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_connect_timeout 1s;
      proxy_read_timeout 1h;
      proxy_next_upstream error timeout http_502;
    }
  }
}
`;
  await writeFile(join(dir, "nginx.conf"), conf);
  const child = spawn("/usr/sbin/nginx", ["-c", join(dir, "nginx.conf"), "-p", dir], { stdio: "ignore" });
  await waitForPort(port);
  return {
    url: `http://127.0.0.1:${port}`,
    async stop() {
      await terminate(child, 2000);
      await rm(dir, { recursive: true, force: true });
    },
    diagnostics: () => "",
  };
}

/**
 * Which of `origins` holds the doctor's consultations now (its `consult_cluster_homes` is 1).
 * @param {string[]} origins
 * @param {string} token The metrics token.
 */
async function homeOf(origins, token) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const homes = [];
    for (const [i, origin] of origins.entries()) {
      const page = await fetch(`${origin}/metrics`, { headers: { authorization: `Bearer ${token}` } })
        .then((r) => r.text())
        .catch(() => "");
      if (Number(/^consult_cluster_homes (\d+)/m.exec(page)?.[1] ?? "0") >= 1) homes.push(i);
    }
    if (homes.length === 1) return homes[0];
    if (Date.now() > deadline) throw new Error(`no single home: ${JSON.stringify(homes)}`);
    await sleep(100);
  }
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

describe("a node dies mid-call behind the load balancer", { timeout: 480_000 }, () => {
  for (const e2ee of [false, true]) {
    test(`SIGKILL of the node holding a ${e2ee ? "live, end-to-end encrypted" : "recorded"} call: both pages resume on the other node through nginx on the same peer connection${e2ee ? " and keys" : ", and the recording goes on in a segment downloaded as one file"}`, { timeout: 240_000 }, async (t) => {
      const redis = await startRedis();
      const postgres = await startPostgres();
      const balancerPort = await freePort();
      const balancerUrl = `http://127.0.0.1:${balancerPort}`;
      try {
        const env = {
          CONSULT_CLUSTER__REDIS_URL: redis.url,
          CONSULT_DATABASE_URL: postgres.url,
          CONSULT_CLUSTER__LEASE: "1500ms",
          CONSULT_PUBLIC_URL: balancerUrl,
          CONSULT_TRUSTED_PROXIES: '["127.0.0.1"]',
        };
        await withService({ env }, async (scope) => {
          const second = scope.own(await startAnotherNode(scope.service, env));
          const origins = [scope.service.url, second.url];
          scope.own(await startNginx(balancerPort, origins));
          const front = { ...scope, service: { ...scope.service, url: balancerUrl } };
          const { doctor, patient, id } = await startCall(front, { title: "Failover", mode: e2ee ? "live_only" : "recorded", e2ee });
          const people = [doctor, patient];
          const codes = e2ee ? (await protectedBothWays(people)).map((s) => s.sas) : [];
          /** @type {any} */
          let first = null;
          if (!e2ee) {
            await allowRecording(doctor, patient);
            await sleep(4000);
            const rows = await listRecordings(doctor.page, id);
            assert.deepEqual(rows.map((/** @type {any} */ r) => r.state), ["recording"]);
            first = rows[0];
          }
          for (const p of people) {
            await p.page.evaluate(() => {
              (/** @type {any} */ (window)).consultPc.__beforeFailover = true;
            });
          }
          const firstJoined = people.map((p) => joinedSince(p.frames, 0).at(-1));

          const token = (await readFile(join(scope.service.dataDir, "keys", "metrics.token"), "utf8")).trim();
          const home = await homeOf(origins, token);
          if (home === 0) await scope.service.halt({ signal: "SIGKILL" });
          else await second.kill();
          const killedAt = Date.now();

          // Both pages rejoin by themselves, through nginx, on the node left.
          await waitForPlacesBack(people, killedAt, firstJoined);
          t.diagnostic(`both pages rejoined ${Date.now() - killedAt} ms after the node holding the call was killed`);
          await assertBackOnTheSameConnection(people, "__beforeFailover", e2ee ? codes : null);
          if (e2ee) {
            await endConsultation(doctor.page, patient.page);
            return;
          }

          // The recording goes on: a new segment, continuing the first, that both pages send to.
          const deadline = Date.now() + 30_000;
          /** @type {any[]} */
          let rows = [];
          for (;;) {
            rows = await listRecordings(doctor.page, id);
            if (rows.length === 2 && rows.some((r) => r.state === "recording")) break;
            assert.ok(Date.now() < deadline, `no continuation: ${JSON.stringify(rows)}`);
            await sleep(250);
          }
          const continuation = rows.find((r) => r.continues !== null);
          assert.equal(continuation?.continues, first.id, "the new recording continues the first");
          assert.equal(rows.find((r) => r.id === first.id)?.state, "interrupted");
          await Promise.all(people.map((p) => waitForRecorderConnected(p.page)));
          await sleep(4000);
          await endConsultation(doctor.page, patient.page);
          const ended = Date.now() + 20_000;
          while ((await listRecordings(doctor.page, id)).some((/** @type {any} */ r) => r.state === "recording")) {
            assert.ok(Date.now() < ended, "the recording did not stop");
            await sleep(250);
          }

          // The doctor downloads it once, from the first segment: both segments in one file.
          const session = (await doctor.page.context().cookies()).find((c) => c.name === "consult_session");
          assert.ok(session, "the doctor's session cookie");
          const response = await fetch(`${balancerUrl}/api/v1/recordings/${first.id}/export`, { headers: { authorization: `Bearer ${session.value}` } });
          assert.equal(response.status, 200, await response.clone().text());
          const dir = await mkdtemp(join(tmpdir(), "consult-failover-"));
          try {
            const file = join(dir, "recording.webm");
            await writeFile(file, Buffer.from(await response.arrayBuffer()));
            const media = await inspectRecording(file);
            // About 4 s before the kill and 4 s after the pages came back, and the gap between.
            assertRecordingMedia(media, { minMs: 7000, maxMs: 40_000 });
            const packets = await runCommand("ffprobe", ["-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time", "-of", "csv=p=0", file]);
            const times = packets.stdout.split("\n").map((l) => Number.parseFloat(l)).filter((n) => Number.isFinite(n));
            t.diagnostic(`the export: ${Math.round(media.durationMs)} ms, video from ${times[0]} s to ${times.at(-1)} s`);
            assert.ok(times[0] < 3 && times.at(-1) > media.durationMs / 1000 - 3, `the doctor's video in both segments: ${times[0]} s to ${times.at(-1)} s`);
          } finally {
            await rm(dir, { recursive: true, force: true });
          }
        });
      } finally {
        await redis.stop();
        await postgres.stop();
      }
    });
  }
});
