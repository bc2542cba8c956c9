// Helpers of the browser end-to-end test: start the service in demo mode, compute TOTP codes,
// launch headless Chromium with fake camera and microphone, and drive the doctor and patient pages.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, createHmac, randomBytes } from "node:crypto";
import { createSocket } from "node:dgram";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

/**
 * A `data` listener that hands complete lines (without the newline) to `onLine`, keeping a
 * partial last line until the rest arrives.
 * @param {(line: string) => void} onLine
 * @returns {(chunk: Buffer) => void}
 */
export function lineSplitter(onLine) {
  let buffer = "";
  return (chunk) => {
    buffer += chunk.toString("utf8");
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + 1);
      onLine(line);
    }
  };
}

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const CONSULT_BIN = process.env.CONSULT_BIN ?? join(REPO_ROOT, "target", "debug", "consult");
export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

/** Default bound of every single wait on a page, in ms. */
export const STEP_TIMEOUT_MS = 20_000;

// -------------------------------------------------------------------------------------------------
// The service
// -------------------------------------------------------------------------------------------------

/**
 * @typedef {object} DemoCredentials
 * @property {string} email
 * @property {string} password
 * @property {string} totp_secret
 * @property {string} url
 */

/**
 * @typedef {object} Service
 * @property {string} url Origin, without a trailing slash (a new port after each restart).
 * @property {DemoCredentials} credentials
 * @property {string} dataDir
 * @property {number | undefined} pid The service's process id (of the current run).
 * @property {string[]} logs Last lines of the service's output (every run's).
 * @property {(options?: { signal?: "SIGTERM" | "SIGKILL" }) => Promise<void>} halt End the process
 *   and keep the data directory: `SIGTERM` (the default) shuts down cleanly (SIGKILL after 5 s),
 *   `SIGKILL` is a crash. Resolves once it is gone.
 * @property {(options?: { samePort?: boolean }) => Promise<void>} restart Start it again (halting
 *   it first if it runs) on the same data directory, with the same environment and wrapper, on a
 *   new free port (`samePort`: the same address, so open pages reconnect to it); resolves once
 *   it runs. The doctor's sessions survive it.
 * @property {(argv: string[]) => string[]} enter The command line that runs `argv` where this
 *   service sees its data directory (inside its wrapper's namespace, if it has one; else `argv`).
 * @property {() => Promise<void>} stop End the process and delete the data directory.
 */

/**
 * A command the service runs inside, for example a mount namespace with a small tmpfs.
 * @typedef {object} ServiceWrapper
 * @property {(argv: string[], dataDir: string) => string[] | Promise<string[]>} start The command
 *   line that runs the service's own (`argv`) inside the wrapper.
 * @property {(argv: string[], pid: number) => string[]} [enter] The command line that runs `argv`
 *   next to the running service (process `pid`), seeing the files as it does: the CLI
 *   ({@link runConsult}) goes through it.
 */

const ANSI = /\x1b\[[0-9;]*m/g;

/**
 * CPU time (user + system, in milliseconds) a process has used so far, from /proc (Linux).
 * @param {number | undefined} pid
 */
export async function cpuMillis(pid) {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // utime and stime are fields 14 and 15 of the whole line (11 and 12 after the name), in ticks.
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
}

/**
 * Stop a child process: `signal` (SIGTERM), then SIGKILL if it is still running after `graceMs`.
 * Resolves once it is gone (or SIGKILL was sent).
 * @param {import('node:child_process').ChildProcess} child
 * @param {number} [graceMs]
 * @param {NodeJS.Signals} [signal]
 */
export async function terminate(child, graceMs = 5000, signal = "SIGTERM") {
  const gone = () => child.exitCode !== null || child.signalCode !== null;
  if (gone()) return;
  child.kill(signal);
  const deadline = Date.now() + graceMs;
  while (!gone() && Date.now() < deadline) await sleep(50);
  if (!gone()) child.kill("SIGKILL");
}

/**
 * Run a program to the end (no shell). Fails after `timeoutMs`.
 * @param {string} command
 * @param {string[]} args
 * @param {{ timeoutMs?: number }} [options]
 * @returns {Promise<{ code: number | null, stdout: string, stderr: string }>}
 */
export function runCommand(command, args, { timeoutMs = 60_000 } = {}) {
  return new Promise((res, rej) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, NO_COLOR: "1" } });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => (stdout += chunk));
    child.stderr.on("data", (chunk) => (stderr += chunk));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      rej(new Error(`${command} ${args.join(" ")}: no exit within ${timeoutMs} ms\n${stderr}`));
    }, timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      rej(new Error(`could not run ${command}: ${err.message}`));
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      res({ code, stdout, stderr });
    });
  });
}

/**
 * `consult ARGS --data-dir DIR` on the service's data directory, run to the end: where the service
 * sees it (inside its wrapper, see {@link ServiceWrapper}), whether the service runs or not.
 * @param {Service} service
 * @param {string[]} args For example `["keys", "rotate"]`.
 */
export function runConsult(service, args) {
  const [command, ...rest] = service.enter([CONSULT_BIN, ...args, "--data-dir", service.dataDir]);
  return runCommand(command, rest);
}

/**
 * Start `consult serve --demo` on a free port with a fresh data directory.
 * @param {{ timeoutMs?: number, env?: Record<string, string>, wrapper?: ServiceWrapper, args?: string[] }} [options]
 *   `env`: extra environment variables, for example `CONSULT_ICE__RELAY_ONLY: "true"` (`CONSULT_` +
 *   config path with `__`); `wrapper`: run it inside another command; `args`: more arguments of
 *   `consult serve`, for example `["--seed-load-clinicians", "1"]` (more clinician accounts, in
 *   `load-credentials.json` of the data directory).
 * @returns {Promise<Service>}
 */
export async function startService({ timeoutMs = 60_000, env = {}, wrapper, args: extraArgs = [], bind: firstBind = "127.0.0.1:0" } = {}) {
  const dataDir = await mkdtemp(join(tmpdir(), "consult-e2e-"));
  /** @type {string[]} */
  const logs = [];
  /** @type {import('node:child_process').ChildProcess | null} */
  let child = null;
  const killOnExit = () => {
    if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  };
  process.on("exit", killOnExit);

  /**
   * Start the process; resolves with the URL it prints.
   * @param {string} [bind] Where to listen (default: a free port).
   */
  const launch = async (bind = firstBind) => {
    const own = [CONSULT_BIN, "serve", "--demo", "--bind", bind, "--data-dir", dataDir, ...extraArgs];
    const [command, ...args] = wrapper ? await wrapper.start(own, dataDir) : own;
    const running = spawn(command, args, {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "info", NO_COLOR: "1", ...env },
    });
    child = running;
    /** @type {(url: string) => void} */
    let foundUrl = () => {};
    /** @type {(err: Error) => void} */
    let failed = () => {};
    const ready = new Promise((res, rej) => {
      foundUrl = res;
      failed = rej;
    });
    /** @param {string} stream */
    const reader = (stream) =>
      lineSplitter((raw) => {
        const line = raw.replace(ANSI, "");
        logs.push(`[${stream}] ${line}`);
        if (logs.length > 400) logs.shift();
        if (process.env.CONSULT_E2E_VERBOSE) process.stderr.write(`[consult ${stream}] ${line}\n`);
        // Behind a load balancer (public_url) the node also says where it listens itself.
        const match = /Consult is running at\s+\S+ \(this node listens on (\S+)\)/.exec(line) ?? /Consult is running at\s+(\S+)/.exec(line);
        if (match) foundUrl(match[1].replace(/[.,;)\]>]+$/, ""));
      });
    running.stdout.on("data", reader("stdout"));
    running.stderr.on("data", reader("stderr"));
    running.on("error", (err) => failed(new Error(`could not start ${command}: ${err.message}`)));
    running.on("exit", (code, signal) => {
      failed(new Error(`the service exited early (code ${code}, signal ${signal}):\n${logs.join("\n")}`));
    });
    let timer;
    const timeout = new Promise((_, rej) => {
      timer = setTimeout(
        () => rej(new Error(`no "Consult is running at" line within ${timeoutMs} ms:\n${logs.join("\n")}`)),
        timeoutMs,
      );
    });
    try {
      const printed = /** @type {string} */ (await Promise.race([ready, timeout]));
      service.url = new URL(printed).origin;
      service.pid = running.pid;
    } finally {
      clearTimeout(timer);
    }
  };

  /** @type {Service} */
  const service = {
    url: "",
    credentials: { email: "", password: "", totp_secret: "", url: "" },
    dataDir,
    pid: undefined,
    logs,
    async halt({ signal = "SIGTERM" } = {}) {
      const running = child;
      child = null;
      if (running) await terminate(running, 5000, signal);
    },
    async restart({ samePort = false } = {}) {
      await service.halt();
      logs.push("--- the service starts again on the same data directory ---");
      await launch(samePort ? new URL(service.url).host : undefined);
    },
    enter(argv) {
      if (!wrapper?.enter) return argv;
      if (!child || service.pid === undefined) throw new Error("the service is not running: nothing to enter");
      return wrapper.enter(argv, service.pid);
    },
    async stop() {
      await service.halt();
      process.removeListener("exit", killOnExit);
      if (!process.env.CONSULT_E2E_KEEP_DATA) await rm(dataDir, { recursive: true, force: true }).catch(() => {});
    },
  };
  try {
    await launch();
    service.credentials = await readCredentials(dataDir);
    return service;
  } catch (err) {
    await service.stop();
    throw err;
  }
}

/**
 * @param {string} dataDir
 * @returns {Promise<DemoCredentials>}
 */
async function readCredentials(dataDir) {
  const path = join(dataDir, "demo-credentials.json");
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      const parsed = JSON.parse(await readFile(path, "utf8"));
      for (const key of ["email", "password", "totp_secret"]) {
        if (typeof parsed[key] !== "string" || !parsed[key]) throw new Error(`${path} has no ${key}`);
      }
      return parsed;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`could not read ${path}: ${err}`);
      await sleep(100);
    }
  }
}

// -------------------------------------------------------------------------------------------------
// TURN server (coturn, for relay-only calls)
// -------------------------------------------------------------------------------------------------

export const TURNSERVER_BIN = process.env.TURNSERVER_BIN ?? "/usr/bin/turnserver";

/** The relay ports coturn hands out (`--min-port`/`--max-port`): every relay candidate is in here. */
export const TURN_RELAY_PORTS = Object.freeze({ min: 52000, max: 52999 });

/**
 * @typedef {object} TurnServer
 * @property {number} port The port it listens on (UDP and TCP).
 * @property {string} url `turn:<ip>:<port>?transport=udp`
 * @property {string} tcpUrl `turn:<ip>:<port>?transport=tcp`
 * @property {string | null} tlsUrl `turns:<ip>:<tls port>?transport=tcp`, when started with TLS
 * @property {string} secret The TURN REST shared secret (`--static-auth-secret`).
 * @property {string[]} logs Last lines of its output (`--verbose`: one line per allocation,
 *   permission and refused request).
 * @property {() => Promise<void>} stop
 */

/**
 * A UDP port on `ip` (127.0.0.1 by default) that was free a moment ago.
 * @param {string} [ip]
 * @returns {Promise<number>}
 */
function freeUdpPort(ip = "127.0.0.1") {
  return new Promise((res, rej) => {
    const socket = createSocket("udp4");
    socket.once("error", rej);
    socket.bind(0, ip, () => {
      const { port } = socket.address();
      socket.close(() => res(port));
    });
  });
}

/**
 * Whether a STUN Binding request to `ip`:`port` gets a Binding success response (RFC 5389).
 * @param {number} port
 * @param {number} timeoutMs
 * @param {string} [ip]
 * @returns {Promise<boolean>}
 */
function stunAnswers(port, timeoutMs, ip = "127.0.0.1") {
  return new Promise((res) => {
    const socket = createSocket("udp4");
    const transaction = randomBytes(12);
    const request = Buffer.concat([Buffer.from([0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]), transaction]);
    let done = false;
    /** @param {boolean} ok */
    const finish = (ok) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.close();
      res(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    socket.on("error", () => finish(false));
    socket.on("message", (msg) => {
      if (msg.length >= 20 && msg.readUInt16BE(0) === 0x0101 && msg.subarray(8, 20).equals(transaction)) finish(true);
    });
    socket.send(request, port, ip, (err) => {
      if (err) finish(false);
    });
  });
}

/**
 * Start coturn on `ip` (127.0.0.1 by default; a free port for UDP and TCP, a fresh temporary
 * directory for its pid file and user database) with TURN REST authentication and relay ports
 * `TURN_RELAY_PORTS`. Ready once it answers a STUN Binding request on its port.
 * @param {{ timeoutMs?: number, ip?: string, tls?: { cert: string, key: string, port: number }, again?: TurnServer }} [options]
 *   `tls`: also TURN over TLS on `port`, with this certificate chain and key (PEM files).
 *   `again`: the same server as this stopped one (its port and secret): a restart, which loses
 *   every allocation.
 * @returns {Promise<TurnServer>}
 */
export async function startTurnServer({ timeoutMs = 20_000, ip = "127.0.0.1", tls, again } = {}) {
  if (!existsSync(TURNSERVER_BIN)) {
    throw new Error(`no TURN server at ${TURNSERVER_BIN} (apt-get install coturn, or set TURNSERVER_BIN)`);
  }
  const secret = again?.secret ?? `consult-test-${randomBytes(12).toString("hex")}`;
  for (let attempt = 1; ; attempt += 1) {
    const port = again?.port ?? (await freeUdpPort(ip));
    const dir = await mkdtemp(join(tmpdir(), "consult-turn-"));
    const args = [
      "-n",
      "--verbose",
      `--listening-ip=${ip}`,
      `--relay-ip=${ip}`,
      `--listening-port=${port}`,
      "--use-auth-secret",
      `--static-auth-secret=${secret}`,
      "--realm=consult.test",
      ...(tls ? [`--cert=${tls.cert}`, `--pkey=${tls.key}`, `--tls-listening-port=${tls.port}`] : ["--no-tls"]),
      "--no-dtls",
      "--no-cli",
      // Without it coturn refuses every permission towards 127.0.0.1 (403 Forbidden IP), and all
      // the peers here are on 127.0.0.1.
      "--allow-loopback-peers",
      `--min-port=${TURN_RELAY_PORTS.min}`,
      `--max-port=${TURN_RELAY_PORTS.max}`,
      "--log-file=stdout",
      "--simple-log",
      `--pidfile=${join(dir, "pid")}`,
      `--userdb=${join(dir, "db")}`,
    ];
    const child = spawn(TURNSERVER_BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
    /** @type {string[]} */
    const logs = [];
    /** @type {string | null} */
    let exited = null;
    /** @param {string} stream */
    const reader = (stream) =>
      lineSplitter((raw) => {
        const line = raw.trimEnd();
        if (!line) return;
        logs.push(`[${stream}] ${line}`);
        if (logs.length > 2000) logs.shift();
        if (process.env.CONSULT_E2E_VERBOSE) process.stderr.write(`[turnserver ${stream}] ${line}\n`);
      });
    child.stdout.on("data", reader("stdout"));
    child.stderr.on("data", reader("stderr"));
    child.on("error", (err) => {
      exited = `could not start ${TURNSERVER_BIN}: ${err.message}`;
    });
    child.on("exit", (code, signal) => {
      exited = `turnserver exited (code ${code}, signal ${signal})`;
    });
    const killOnExit = () => {
      if (child.exitCode === null) child.kill("SIGKILL");
    };
    process.once("exit", killOnExit);
    const stop = async () => {
      process.removeListener("exit", killOnExit);
      await terminate(child);
      await rm(dir, { recursive: true, force: true }).catch(() => {});
    };

    const deadline = Date.now() + timeoutMs;
    let ready = false;
    while (!ready && !exited && Date.now() < deadline) {
      ready = await stunAnswers(port, 300, ip);
      if (!ready) await sleep(100);
    }
    if (ready && !exited) {
      const tlsUrl = tls ? `turns:${ip}:${tls.port}?transport=tcp` : null;
      return { port, url: `turn:${ip}:${port}?transport=udp`, tcpUrl: `turn:${ip}:${port}?transport=tcp`, tlsUrl, secret, logs, stop };
    }
    await stop();
    const why = exited ?? `no STUN answer on ${ip}:${port} within ${timeoutMs} ms`;
    if (attempt >= 3) throw new Error(`${why}; turnserver output:\n${logs.slice(-40).join("\n")}`);
  }
}

/**
 * The service's environment for relay-only calls through this TURN server.
 * @param {TurnServer} turn
 * @returns {Record<string, string>}
 */
export function relayOnlyServiceEnv(turn) {
  return {
    CONSULT_ICE__TURN_URLS: JSON.stringify([turn.url]),
    CONSULT_ICE__TURN_SHARED_SECRET: turn.secret,
    CONSULT_ICE__RELAY_ONLY: "true",
  };
}

// -------------------------------------------------------------------------------------------------
// TOTP (RFC 6238: HMAC-SHA1, 6 digits, 30 s steps, base32 secret)
// -------------------------------------------------------------------------------------------------

/**
 * @param {string} secret RFC 4648 base32, any case, spaces and padding ignored.
 * @returns {Buffer}
 */
export function base32Decode(secret) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  const clean = secret.toUpperCase().replace(/[\s=-]/g, "");
  let bits = 0;
  let value = 0;
  const out = [];
  for (const char of clean) {
    const index = alphabet.indexOf(char);
    if (index < 0) throw new Error(`not base32: ${char}`);
    value = (value << 5) | index;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

/**
 * The TOTP code of a time step.
 * @param {string} secret
 * @param {number} counter
 * @returns {string}
 */
export function hotp(secret, counter) {
  const message = Buffer.alloc(8);
  message.writeBigUInt64BE(BigInt(counter));
  const digest = createHmac("sha1", base32Decode(secret)).update(message).digest();
  const offset = digest[digest.length - 1] & 0x0f;
  const binary = digest.readUInt32BE(offset) & 0x7fffffff;
  return String(binary % 1_000_000).padStart(6, "0");
}

/**
 * @param {string} secret
 * @param {number} [timeMs]
 * @returns {string}
 */
export function totp(secret, timeMs = Date.now()) {
  return hotp(secret, Math.floor(timeMs / 30_000));
}

/** Time steps already used per secret: a code is accepted only once. */
const usedSteps = new Map();

/**
 * A code that is not about to expire and was not used by this process before (waits for the next
 * 30 s step when needed).
 * @param {string} secret
 * @returns {Promise<string>}
 */
export async function freshTotp(secret) {
  for (;;) {
    const now = Date.now();
    const step = Math.floor(now / 30_000);
    const left = (step + 1) * 30_000 - now;
    const used = usedSteps.get(secret) ?? new Set();
    if (left > 5000 && !used.has(step)) {
      used.add(step);
      usedSteps.set(secret, used);
      return hotp(secret, step);
    }
    await sleep(left + 300);
  }
}

/**
 * A six-digit code that is wrong now and in the neighbouring steps.
 * @param {string} secret
 * @returns {string}
 */
export function wrongTotp(secret) {
  const step = Math.floor(Date.now() / 30_000);
  const near = new Set([-2, -1, 0, 1, 2].map((d) => hotp(secret, step + d)));
  for (let n = 123456; ; n = (n + 111111) % 1_000_000) {
    const candidate = String(n).padStart(6, "0");
    if (!near.has(candidate)) return candidate;
  }
}

// -------------------------------------------------------------------------------------------------
// Browsers
// -------------------------------------------------------------------------------------------------

export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--use-fake-device-for-media-stream",
  "--use-fake-ui-for-media-stream",
  "--allow-loopback-in-peer-connection",
];

/**
 * @typedef {object} Participant
 * @property {import('playwright-core').Browser} browser
 * @property {import('playwright-core').BrowserContext} context
 * @property {import('playwright-core').Page} page
 * @property {string[]} console Console messages and page errors, for diagnostics.
 * @property {string} label
 */

/**
 * A fresh headless Chromium (its own temporary profile: playwright's `launch()` creates a new
 * `--user-data-dir` and deletes it on close) with one page.
 * @param {string} label For messages ("doctor", "patient").
 * @param {{ origin?: string, storage?: Record<string, string>, namespace?: string, trustSpki?: string, cameraFps?: number, viewport?: { width: number, height: number } }} [options]
 *   `storage`: the web demo's `localStorage` settings, set in every document before its scripts
 *   run (for example `consult.videoCodec`, `consult.e2eeRotateMs`). `namespace`: run Chromium in
 *   this network namespace (an emulated network's peer); `trustSpki`: trust TLS certificates with
 *   this public key (base64 SHA-256 of the SPKI), for a TURN server over TLS made by a test.
 *   `cameraFps`: the fake camera's frame rate (Chromium's default is 20); `viewport`: the page's
 *   size (1280×800 by default). Both for tests that run many browsers at once on two cores.
 * @returns {Promise<Participant>}
 */
export async function launchParticipant(label, options = {}) {
  let executablePath = CHROMIUM;
  const args = options.cameraFps
    ? CHROMIUM_ARGS.map((a) => (a === "--use-fake-device-for-media-stream" ? `${a}=fps=${options.cameraFps}` : a))
    : [...CHROMIUM_ARGS];
  // A TURN server's certificate trusted by its key alone (Chromium verifies TURN/TLS like any
  // TLS, and a test's own certificate chains to no root it knows).
  if (options.trustSpki) args.push(`--ignore-certificate-errors-spki-list=${options.trustSpki}`);
  /** @type {string | null} The wrapper script's directory, removed once Chromium started. */
  let wrapperDir = null;
  if (options.namespace) {
    // Chromium in a network namespace of an emulated network (consult-netem): started through
    // `ip netns exec`, and the service's plain-HTTP origin on the lab's address treated as
    // secure (camera, WebCrypto), as localhost is.
    const dir = await mkdtemp(join(tmpdir(), "consult-chromium-ns-"));
    wrapperDir = dir;
    executablePath = join(dir, "chromium");
    await writeFile(executablePath, `#!/bin/sh\nexec ip netns exec ${options.namespace} ${CHROMIUM} "$@"\n`, { mode: 0o755 });
    if (options.origin) args.push(`--unsafely-treat-insecure-origin-as-secure=${options.origin}`);
  }
  const browser = await chromium
    .launch({
      executablePath,
      headless: true,
      args,
      timeout: 60_000,
    })
    .finally(() => (wrapperDir ? rm(wrapperDir, { recursive: true, force: true }).catch(() => {}) : undefined));
  try {
    const context = await browser.newContext({ viewport: options.viewport ?? { width: 1280, height: 800 } });
    if (options.storage && Object.keys(options.storage).length > 0) {
      await context.addInitScript((entries) => {
        for (const [key, value] of Object.entries(entries)) localStorage.setItem(key, value);
      }, options.storage);
    }
    if (options.origin) {
      await context
        .grantPermissions(["camera", "microphone", "clipboard-read", "clipboard-write"], { origin: options.origin })
        .catch(() => context.grantPermissions(["camera", "microphone"], { origin: options.origin }));
    }
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_TIMEOUT_MS);
    /** @type {string[]} */
    const consoleLines = [];
    page.on("console", (m) => consoleLines.push(`[${label} console.${m.type()}${process.env.CONSULT_EMULATED_LOG ? ` ${new Date().toISOString().slice(11, 23)}` : ""}] ${m.text()}`));
    page.on("pageerror", (e) => consoleLines.push(`[${label} pageerror] ${e.message}`));
    return { browser, context, page, console: consoleLines, label };
  } catch (err) {
    await browser.close().catch(() => {});
    throw err;
  }
}

/**
 * Close browsers, ignoring errors (for `finally`).
 * @param {(Participant | null | undefined)[]} participants
 */
export async function closeAll(participants) {
  await Promise.all(
    participants.map(async (p) => {
      if (!p) return;
      await Promise.race([p.browser.close().catch(() => {}), sleep(10_000)]);
    }),
  );
}

/**
 * Content-Security-Policy violations reported on a page's console.
 * @param {Participant} p
 */
export function cspViolations(p) {
  return p.console.filter((line) => /Content Security Policy|Refused to (apply|load|execute|evaluate|connect)/i.test(line));
}

/**
 * @param {import('playwright-core').Page} page
 * @param {string} testid
 */
export function byTestId(page, testid) {
  return page.locator(`[data-testid="${testid}"]`);
}

/**
 * @typedef {object} SignalFrame
 * @property {"in" | "out"} direction `in`: from the service.
 * @property {number} at `Date.now()` when playwright saw it.
 * @property {any} message The parsed JSON (null if it was not JSON).
 */

/**
 * Every signaling message the page sends and receives from now on (on every WebSocket it opens,
 * reconnections included), in order. Start it before the page joins.
 * @param {import('playwright-core').Page} page
 * @returns {SignalFrame[]}
 */
export function watchSignaling(page) {
  /** @type {SignalFrame[]} */
  const frames = [];
  /**
   * @param {"in" | "out"} direction
   * @param {string | Buffer} payload
   */
  const note = (direction, payload) => {
    let message = null;
    try {
      message = JSON.parse(payload.toString());
    } catch {
      // Not JSON.
    }
    frames.push({ direction, at: Date.now(), message });
  };
  page.on("websocket", (ws) => {
    if (!ws.url().endsWith("/api/v1/signal")) return;
    ws.on("framereceived", ({ payload }) => note("in", payload));
    ws.on("framesent", ({ payload }) => note("out", payload));
  });
  return frames;
}

/**
 * Every participant the service announced to a page (`joined.peers`, `admitted.peers`,
 * `peer_joined.peer`), from what {@link watchSignaling} collected.
 * @param {SignalFrame[]} frames
 * @returns {{ participant_id: string, role: string, name: string }[]}
 */
export function announcedPeers(frames) {
  return frames
    .filter((f) => f.direction === "in" && f.message)
    .flatMap((f) => f.message.peers ?? (f.message.peer ? [f.message.peer] : []));
}

// -------------------------------------------------------------------------------------------------
// Doctor
// -------------------------------------------------------------------------------------------------

/**
 * Fill and submit the sign-in form.
 * @param {import('playwright-core').Page} page
 * @param {Service} service
 * @param {string} code
 */
export async function submitSignIn(page, service, code) {
  await page.goto(`${service.url}/`);
  await byTestId(page, "login-email").waitFor({ state: "visible" });
  await byTestId(page, "login-email").fill(service.credentials.email);
  await byTestId(page, "login-password").fill(service.credentials.password);
  await byTestId(page, "login-totp").fill(code);
  await byTestId(page, "login-submit").click();
}

/**
 * Sign the demo doctor in with a fresh TOTP code.
 * @param {import('playwright-core').Page} page
 * @param {Service} service
 */
export async function signInDoctor(page, service) {
  await submitSignIn(page, service, await freshTotp(service.credentials.totp_secret));
  await byTestId(page, "create-title").waitFor({ state: "visible" });
}

/**
 * Create a consultation; returns its invite link.
 * @param {import('playwright-core').Page} page
 * @param {string} title
 * @param {{ mode?: "live_only" | "recorded", e2ee?: boolean }} [options] `mode`: the *Recording*
 *   choice (the form's default, live only, without it); `e2ee`: tick *End-to-end encryption*.
 * @returns {Promise<string>}
 */
export async function createConsultation(page, title, { mode, e2ee = false } = {}) {
  await byTestId(page, "create-title").fill(title);
  if (mode) await byTestId(page, "create-mode").selectOption(mode);
  if (e2ee) await byTestId(page, "create-e2ee").check();
  await byTestId(page, "create-submit").click();
  await byTestId(page, "invite-panel").waitFor({ state: "visible" });
  const inviteUrl = await byTestId(page, "invite-url").inputValue();
  if (!/\/join#.+/.test(inviteUrl)) throw new Error(`unexpected invite link ${JSON.stringify(inviteUrl)}`);
  return inviteUrl;
}

/**
 * Open the consultation from the invite panel and wait until the doctor is connected to signaling.
 * @param {import('playwright-core').Page} page
 */
export async function openConsultation(page) {
  await byTestId(page, "start-call").click();
  await byTestId(page, "local-video").waitFor({ state: "visible" });
  await page.waitForFunction(
    () => (document.querySelector('[data-testid="call-status"]')?.textContent ?? "").includes("Admit them"),
    null,
    { timeout: STEP_TIMEOUT_MS },
  );
}

/**
 * The id of the consultation the doctor's page has open (its route is `#/c/<id>`).
 * @param {import('playwright-core').Page} page
 * @returns {string}
 */
export function openConsultationId(page) {
  const match = /#\/c\/([0-9a-fA-F-]{36})$/.exec(page.url());
  if (!match) throw new Error(`the doctor's page has no consultation open: ${page.url()}`);
  return match[1];
}

/**
 * End the consultation from the doctor's call view (End consultation, then confirm) and wait until
 * both pages say it has ended. Returns `stoppedAt`, just before the confirmation was clicked, and
 * `goneAt`, when both pages said it had ended.
 * @param {import('playwright-core').Page} doctorPage
 * @param {import('playwright-core').Page} patientPage
 */
export async function endConsultation(doctorPage, patientPage) {
  await byTestId(doctorPage, "end-button").click();
  const confirm = byTestId(doctorPage, "end-confirm");
  await confirm.waitFor({ state: "visible" });
  const stoppedAt = Date.now();
  await confirm.click();
  await byTestId(patientPage, "ended-message").waitFor({ state: "visible", timeout: 15_000 });
  await byTestId(doctorPage, "ended-message").waitFor({ state: "visible", timeout: 15_000 });
  return { stoppedAt, goneAt: Date.now() };
}

/**
 * A GET of the service's API from the page (its session cookie, same origin), parsed as JSON.
 * @param {import('playwright-core').Page} page
 * @param {string} path For example `/api/v1/consultations`.
 * @returns {Promise<{ status: number, body: any }>}
 */
export function apiGet(page, path) {
  return page.evaluate(async (url) => {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    const text = await response.text();
    let body = text;
    try {
      body = JSON.parse(text);
    } catch {
      // Not JSON: keep the text for the message.
    }
    return { status: response.status, body };
  }, path);
}

/**
 * Admit the participant with this name from the doctor's waiting room.
 * @param {import('playwright-core').Page} page
 * @param {string} name
 */
export async function admitFromWaitingRoom(page, name) {
  const entry = byTestId(page, "waiting-entry").filter({ hasText: name });
  await entry.waitFor({ state: "visible" });
  await entry.locator('[data-testid="admit-button"]').click();
}

// -------------------------------------------------------------------------------------------------
// Patient
// -------------------------------------------------------------------------------------------------

/**
 * Open the invite, enter the name, pass the device check (camera preview playing) and join the
 * waiting room.
 * @param {import('playwright-core').Page} page
 * @param {string} inviteUrl
 * @param {string} name
 */
export async function patientJoin(page, inviteUrl, name) {
  await page.goto(inviteUrl);
  await byTestId(page, "patient-name").waitFor({ state: "visible" });
  await passDeviceCheck(page, name);
  await byTestId(page, "join-button").click();
  await byTestId(page, "waiting-message").waitFor({ state: "visible" });
}

/**
 * From the landing page: enter the name (unless the invite names its holder), wait for the camera
 * preview and the device lists.
 * @param {import('playwright-core').Page} page
 * @param {string} name
 */
export async function passDeviceCheck(page, name) {
  // A named invite fills the name in, read-only: it is the clinician's choice.
  const nameInput = byTestId(page, "patient-name");
  if ((await nameInput.getAttribute("readonly")) === null) await nameInput.fill(name);
  await byTestId(page, "name-continue").click();
  await byTestId(page, "device-preview").waitFor({ state: "visible" });
  await page.waitForFunction(
    () => {
      const video = /** @type {HTMLVideoElement | null} */ (document.querySelector('[data-testid="device-preview"]'));
      const cameras = document.querySelectorAll('[data-testid="camera-select"] option').length;
      return !!video && video.videoWidth > 0 && cameras > 0;
    },
    null,
    { timeout: STEP_TIMEOUT_MS },
  );
}

// -------------------------------------------------------------------------------------------------
// Media checks
// -------------------------------------------------------------------------------------------------

/**
 * Inbound RTP counters of the page's live connection (`window.consultPc`).
 * @param {import('playwright-core').Page} page
 * @returns {Promise<{ pc: boolean, state?: string, framesDecoded: number, videoBytes: number, audioPackets: number, audioBytes: number } | null>}
 */
export function inboundStats(page) {
  return page.evaluate(async () => {
    /** @type {RTCPeerConnection | null} */
    const pc = /** @type {any} */ (window).consultPc ?? null;
    if (!pc) return { pc: false, framesDecoded: 0, videoBytes: 0, audioPackets: 0, audioBytes: 0 };
    const report = await pc.getStats();
    let framesDecoded = 0;
    let videoBytes = 0;
    let audioPackets = 0;
    let audioBytes = 0;
    report.forEach((/** @type {any} */ s) => {
      if (s.type !== "inbound-rtp") return;
      if (s.kind === "video") {
        framesDecoded += s.framesDecoded ?? 0;
        videoBytes += s.bytesReceived ?? 0;
      } else if (s.kind === "audio") {
        audioPackets += s.packetsReceived ?? 0;
        audioBytes += s.bytesReceived ?? 0;
      }
    });
    return { pc: true, state: pc.connectionState, framesDecoded, videoBytes, audioPackets, audioBytes };
  });
}

/**
 * Wait until the page decodes remote video and receives remote audio.
 * @param {import('playwright-core').Page} page
 * @param {number} [timeoutMs]
 */
export async function waitForRemoteMedia(page, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  let last = null;
  while (Date.now() < deadline) {
    last = await inboundStats(page).catch((err) => ({ error: String(err) }));
    if (last && "framesDecoded" in last && last.framesDecoded > 0 && last.audioPackets > 0 && last.audioBytes > 0) {
      return last;
    }
    await sleep(200);
  }
  throw new Error(`no remote media within ${timeoutMs} ms; last stats ${JSON.stringify(last)}`);
}

/**
 * The call goes on: each page decodes remote media now, and every second for `ms` it has decoded
 * more video frames and received more audio packets than the second before, its connection
 * still connected.
 * @param {Participant[]} people
 * @param {number} ms
 */
export async function assertMediaKeepsFlowing(people, ms) {
  let last = await Promise.all(people.map((p) => waitForRemoteMedia(p.page)));
  for (let second = 1; second <= Math.ceil(ms / 1000); second += 1) {
    await sleep(1000);
    const now = await Promise.all(people.map((p) => inboundStats(p.page)));
    people.forEach((p, i) => {
      const [before, after] = [last[i], now[i]];
      const what = `${p.label}, second ${second}: ${JSON.stringify(before)} → ${JSON.stringify(after)}`;
      assert.equal(after?.state, "connected", `the call is connected (${what})`);
      assert.ok((after?.framesDecoded ?? 0) > (before?.framesDecoded ?? 0), `remote video still decoding (${what})`);
      assert.ok((after?.audioPackets ?? 0) > (before?.audioPackets ?? 0), `remote audio still arriving (${what})`);
    });
    last = now;
  }
}


/**
 * @typedef {object} CandidateInfo
 * @property {string} candidateType `host`, `srflx`, `prflx` or `relay`.
 * @property {string} address
 * @property {number} port
 * @property {string} protocol
 * @property {string | null} relayProtocol Local relay candidates: how the browser talks to TURN.
 * @property {string | null} url Local candidates: the STUN/TURN server they came from.
 */

/**
 * @typedef {object} IceStats
 * @property {boolean} pc Whether the page has a live connection.
 * @property {string | null} policy The connection's `getConfiguration().iceTransportPolicy`.
 * @property {string | null} connectionState
 * @property {{ via: "transport" | "candidate-pair", id: string, state: string, nominated: boolean, bytesSent: number, bytesReceived: number, local: CandidateInfo | null, remote: CandidateInfo | null } | null} selected
 *   The selected candidate pair: the `transport` report's `selectedCandidatePairId`, or else the
 *   nominated, succeeded `candidate-pair` that carried the most bytes.
 * @property {CandidateInfo[]} localCandidates Every local candidate in `getStats()`.
 * @property {CandidateInfo[]} remoteCandidates Every remote candidate in `getStats()`.
 * @property {{ id: string, state: string, nominated: boolean, bytesSent: number, bytesReceived: number, local: CandidateInfo | null, remote: CandidateInfo | null }[]} trafficPairs
 *   Every candidate pair that carried bytes either way (media may arrive on another pair than the
 *   selected one when the other side picked a different pair).
 */

/**
 * ICE view of the page's live connection (`window.consultPc`): policy, selected pair, candidates.
 * @param {import('playwright-core').Page} page
 * @returns {Promise<IceStats>}
 */
export function iceStats(page) {
  return page.evaluate(async () => {
    /** @type {RTCPeerConnection | null} */
    const pc = /** @type {any} */ (window).consultPc ?? null;
    if (!pc) return { pc: false, policy: null, connectionState: null, selected: null, localCandidates: [], remoteCandidates: [], trafficPairs: [] };
    const report = await pc.getStats();
    /** @param {any} c */
    const info = (c) =>
      c
        ? {
            candidateType: c.candidateType,
            address: c.address ?? c.ip ?? "",
            port: c.port,
            protocol: c.protocol,
            relayProtocol: c.relayProtocol ?? null,
            url: c.url ?? null,
          }
        : null;
    /** @type {any[]} */
    const localCandidates = [];
    /** @type {any[]} */
    const remoteCandidates = [];
    /** @type {any[]} */
    const trafficPairs = [];
    /** @type {any} */
    let pair = null;
    /** @type {"transport" | "candidate-pair"} */
    let via = "transport";
    report.forEach((/** @type {any} */ s) => {
      if (s.type === "local-candidate") localCandidates.push(info(s));
      else if (s.type === "remote-candidate") remoteCandidates.push(info(s));
      else if (s.type === "transport" && s.selectedCandidatePairId && !pair) pair = report.get(s.selectedCandidatePairId) ?? null;
      else if (s.type === "candidate-pair" && ((s.bytesSent ?? 0) > 0 || (s.bytesReceived ?? 0) > 0)) {
        trafficPairs.push({
          id: s.id,
          state: s.state,
          nominated: !!s.nominated,
          bytesSent: s.bytesSent ?? 0,
          bytesReceived: s.bytesReceived ?? 0,
          local: info(report.get(s.localCandidateId)),
          remote: info(report.get(s.remoteCandidateId)),
        });
      }
    });
    if (!pair) {
      via = "candidate-pair";
      report.forEach((/** @type {any} */ s) => {
        if (s.type !== "candidate-pair" || !s.nominated || s.state !== "succeeded") return;
        const bytes = (s.bytesSent ?? 0) + (s.bytesReceived ?? 0);
        if (bytes > 0 && (!pair || bytes > (pair.bytesSent ?? 0) + (pair.bytesReceived ?? 0))) pair = s;
      });
    }
    return {
      pc: true,
      policy: pc.getConfiguration().iceTransportPolicy ?? null,
      connectionState: pc.connectionState,
      selected: pair
        ? {
            via,
            id: pair.id,
            state: pair.state,
            nominated: !!pair.nominated,
            bytesSent: pair.bytesSent ?? 0,
            bytesReceived: pair.bytesReceived ?? 0,
            local: info(report.get(pair.localCandidateId)),
            remote: info(report.get(pair.remoteCandidateId)),
          }
        : null,
      localCandidates,
      remoteCandidates,
      trafficPairs,
    };
  });
}

/**
 * Wait until the page's connection has a selected candidate pair that carried bytes both ways
 * (or only sent them, with `bothWays: false`: the other side may send on another pair).
 * @param {import('playwright-core').Page} page
 * @param {{ timeoutMs?: number, bothWays?: boolean }} [options]
 * @returns {Promise<IceStats>}
 */
export async function waitForSelectedPair(page, { timeoutMs = 15_000, bothWays = true } = {}) {
  const deadline = Date.now() + timeoutMs;
  /** @type {any} */
  let last = null;
  while (Date.now() < deadline) {
    last = await iceStats(page).catch((err) => ({ error: String(err) }));
    const selected = last && last.selected;
    if (selected && selected.local && selected.remote && selected.bytesSent > 0 && (!bothWays || selected.bytesReceived > 0)) return last;
    await sleep(250);
  }
  throw new Error(`no selected candidate pair with traffic${bothWays ? " both ways" : ""} within ${timeoutMs} ms; last ${JSON.stringify(last)}`);
}

/**
 * Record, in the doctor's page, the time of the first click on an Admit button.
 * @param {import('playwright-core').Page} page
 */
export async function installAdmitClickProbe(page) {
  await page.evaluate(() => {
    const w = /** @type {any} */ (window);
    w.__admitClickAt = null;
    document.addEventListener(
      "click",
      (event) => {
        const target = /** @type {Element | null} */ (event.target);
        if (w.__admitClickAt === null && target && target.closest('[data-testid="admit-button"]')) {
          w.__admitClickAt = Date.now();
        }
      },
      true,
    );
  });
}

/**
 * Record, in the patient's page, when the first remote video frame was decoded (getStats polled
 * every 50 ms) and when it was first presented (requestVideoFrameCallback).
 * @param {import('playwright-core').Page} page
 */
export async function installFirstFrameProbe(page) {
  await page.evaluate(() => {
    const w = /** @type {any} */ (window);
    w.__firstFrameAt = null;
    w.__connectedAt = null;
    w.__firstPaintAt = null;
    const timer = setInterval(async () => {
      const pc = w.consultPc;
      if (!pc || w.__firstFrameAt !== null) return;
      if (w.__connectedAt === null && pc.connectionState === "connected") w.__connectedAt = Date.now();
      try {
        const report = await pc.getStats();
        report.forEach((/** @type {any} */ s) => {
          if (w.__firstFrameAt === null && s.type === "inbound-rtp" && s.kind === "video" && (s.framesDecoded ?? 0) > 0) {
            w.__firstFrameAt = Date.now();
            clearInterval(timer);
          }
        });
      } catch {
        // The connection was replaced meanwhile; try again.
      }
    }, 50);
    const video = /** @type {HTMLVideoElement | null} */ (document.querySelector('[data-testid="remote-video"]'));
    if (video && "requestVideoFrameCallback" in video) {
      video.requestVideoFrameCallback(() => {
        w.__firstPaintAt = Date.now();
      });
    }
  });
}

/**
 * The whole admit scenario: doctor signs in, creates a consultation and opens it; the patient opens
 * the invite, passes the device check and waits; the doctor admits; both sides get media.
 * Returns the participants (still open: close them) and the measured times.
 * @param {Service} service
 * @param {{ title?: string, patientName?: string, doctor?: { namespace?: string, trustSpki?: string }, patient?: { namespace?: string, trustSpki?: string } }} [options]
 *   `doctor`, `patient`: more options for each one's browser (a network namespace).
 */
export async function runAdmitScenario(service, options = {}) {
  const title = options.title ?? "Knee follow-up";
  const patientName = options.patientName ?? "Pat Example";
  /** @type {Participant | null} */
  let doctor = null;
  /** @type {Participant | null} */
  let patient = null;
  try {
    [doctor, patient] = await Promise.all([
      launchParticipant("doctor", { origin: service.url, ...(options.doctor ?? {}) }),
      launchParticipant("patient", { origin: service.url, ...(options.patient ?? {}) }),
    ]);
    await signInDoctor(doctor.page, service);
    const inviteUrl = await createConsultation(doctor.page, title);
    await openConsultation(doctor.page);

    await patientJoin(patient.page, inviteUrl, patientName);

    const entry = byTestId(doctor.page, "waiting-entry").filter({ hasText: patientName });
    await entry.waitFor({ state: "visible" });
    await installAdmitClickProbe(doctor.page);
    await installFirstFrameProbe(patient.page);
    await entry.locator('[data-testid="admit-button"]').click();

    const patientMedia = await waitForRemoteMedia(patient.page);
    const doctorMedia = await waitForRemoteMedia(doctor.page);

    const deadline = Date.now() + 10_000;
    let firstFrameAt = null;
    while (Date.now() < deadline) {
      firstFrameAt = await patient.page.evaluate(() => /** @type {any} */ (window).__firstFrameAt);
      if (firstFrameAt) break;
      await sleep(50);
    }
    const admitClickAt = await doctor.page.evaluate(() => /** @type {any} */ (window).__admitClickAt);
    const firstPaintAt = await patient.page.evaluate(() => /** @type {any} */ (window).__firstPaintAt);
    const connectedAt = await patient.page.evaluate(() => /** @type {any} */ (window).__connectedAt);
    if (!admitClickAt || !firstFrameAt) {
      throw new Error(`timing probes incomplete: admit click ${admitClickAt}, first frame ${firstFrameAt}`);
    }
    return {
      doctor,
      patient,
      inviteUrl,
      patientName,
      patientMedia,
      doctorMedia,
      firstFrameMs: firstFrameAt - admitClickAt,
      connectMs: connectedAt ? connectedAt - admitClickAt : null,
      firstPaintMs: firstPaintAt ? firstPaintAt - admitClickAt : null,
    };
  } catch (err) {
    await closeAll([doctor, patient]);
    if (err instanceof Error) {
      err.message += diagnostics(service, [doctor, patient]);
    }
    throw err;
  }
}

/**
 * Service log and browser consoles, appended to a failure message.
 * @param {Service | null} service
 * @param {(Participant | null)[]} participants
 */
export function diagnostics(service, participants) {
  const parts = [];
  for (const p of participants) {
    if (p && p.console.length) parts.push(`--- ${p.label} console ---\n${p.console.slice(-60).join("\n")}`);
  }
  if (service) parts.push(`--- service log (tail) ---\n${service.logs.slice(-80).join("\n")}`);
  return parts.length ? `\n${parts.join("\n")}` : "";
}

/**
 * Something a test runs next to the service: stopped when the test ends, its output appended to a
 * failure message. An {@link EchoBot} is one.
 * @typedef {object} Companion
 * @property {() => Promise<void>} [stop]
 * @property {() => string} [diagnostics] Text for a failure message (empty when there is nothing).
 */

/**
 * What {@link withService} hands to a test.
 * @typedef {object} ServiceScope
 * @property {Service} service The service, started for this test.
 * @property {Participant[]} people Push every participant launched: each is closed when the test
 *   ends, and its console goes into a failure message.
 * @property {<T extends Companion>(companion: T) => T} own Register a companion (echo-bot…) and
 *   return it: it is stopped when the test ends (before the browsers close, the last registered
 *   first), and its diagnostics go into a failure message.
 */

/**
 * Run `body` with a fresh service (`startService(options)`), then clean up whatever happens: stop
 * the companions, close the participants in `people`, stop the service. A failure's message gets
 * the participants' consoles and the service log, then each companion's diagnostics, then
 * `options.diagnostics()` (for what outlives the test, such as a TURN server shared by a file).
 * @template T
 * @param {{ timeoutMs?: number, env?: Record<string, string>, wrapper?: ServiceWrapper, args?: string[], diagnostics?: () => string }} options
 * @param {(scope: ServiceScope) => Promise<T>} body
 * @returns {Promise<T>}
 */
export async function withService({ diagnostics: moreDiagnostics, ...serviceOptions }, body) {
  /** @type {Service | null} */
  let service = null;
  /** @type {Participant[]} */
  const people = [];
  /** @type {Companion[]} */
  const companions = [];
  try {
    service = await startService(serviceOptions);
    return await body({
      service,
      people,
      own(companion) {
        companions.push(companion);
        return companion;
      },
    });
  } catch (err) {
    if (err instanceof Error) {
      err.message += diagnostics(service, people) + companions.map((c) => c.diagnostics?.() ?? "").join("") + (moreDiagnostics?.() ?? "");
    }
    throw err;
  } finally {
    for (const companion of [...companions].reverse()) await companion.stop?.().catch(() => {});
    await closeAll(people);
    await service?.stop();
  }
}

/**
 * @param {number[]} values
 */
export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

// -------------------------------------------------------------------------------------------------
// Chat and files (data channels)
// -------------------------------------------------------------------------------------------------

/**
 * Send a chat message from the call view (typed, then Enter) and wait until it shows as sent.
 * @param {import('playwright-core').Page} page
 * @param {string} text
 */
export async function sendChat(page, text) {
  await page.locator('[data-testid="chat-send"]:enabled').waitFor({ state: "visible" });
  await byTestId(page, "chat-input").fill(text);
  await byTestId(page, "chat-input").press("Enter");
  await waitForChat(page, "out", text);
}

/**
 * Wait for a chat message with exactly this text in the page's chat list.
 * @param {import('playwright-core').Page} page
 * @param {"in" | "out"} direction
 * @param {string} text
 * @param {number} [timeoutMs]
 */
export async function waitForChat(page, direction, text, timeoutMs = STEP_TIMEOUT_MS) {
  await page.waitForFunction(
    ([dir, want]) =>
      [...document.querySelectorAll(`[data-testid="chat-message"][data-direction="${dir}"] [data-testid="chat-text"]`)].some(
        (el) => el.textContent === want,
      ),
    [direction, text],
    { timeout: timeoutMs },
  );
}

/**
 * Pick a file in the page's "Send a file" input (once the file channel is open).
 * @param {import('playwright-core').Page} page
 * @param {string} name
 * @param {Buffer} buffer
 * @param {string} [mimeType]
 */
export async function offerFile(page, name, buffer, mimeType = "application/octet-stream") {
  await page.locator('[data-testid="file-button"]:enabled').waitFor({ state: "visible" });
  await byTestId(page, "file-input").setInputFiles({ name, mimeType, buffer });
}

/**
 * The SHA-256 (hex) of a buffer.
 * @param {Uint8Array} data
 */
export function sha256Hex(data) {
  return createHash("sha256").update(data).digest("hex");
}

/**
 * Accept the incoming file offer with this name, wait for the verified download link, and save it
 * the way a person would (a click on the link). Returns the link's attributes and the saved bytes.
 * @param {import('playwright-core').Page} page
 * @param {string} name
 * @param {number} [timeoutMs]
 */
export async function acceptAndDownload(page, name, timeoutMs = 60_000) {
  const row = page.locator(`[data-testid="file-offer"][data-name="${name}"]`).last();
  await row.waitFor({ state: "visible", timeout: timeoutMs });
  await row.locator('[data-testid="file-accept"]').click();
  const link = row.locator('[data-testid="file-download"]');
  try {
    await link.waitFor({ state: "visible", timeout: timeoutMs });
  } catch (err) {
    const state = await row.evaluate((el) => ({ state: el.getAttribute("data-state"), reason: el.getAttribute("data-reason"), text: el.textContent }));
    throw new Error(`no download link for ${name}: ${JSON.stringify(state)} (${err})`);
  }
  const attributes = await link.evaluate((el) => ({
    sha256: el.getAttribute("data-sha256") ?? "",
    name: el.getAttribute("data-name") ?? "",
    download: el.getAttribute("download") ?? "",
    rel: el.getAttribute("rel") ?? "",
    href: el.getAttribute("href") ?? "",
  }));
  const [download] = await Promise.all([page.waitForEvent("download", { timeout: timeoutMs }), link.click()]);
  const path = await download.path();
  const bytes = await readFile(path);
  return { ...attributes, suggestedFilename: download.suggestedFilename(), bytes };
}

// -------------------------------------------------------------------------------------------------
// The native echo-bot (crates/client/examples/echo-bot.rs)
// -------------------------------------------------------------------------------------------------

export const ECHO_BOT_BIN = process.env.ECHO_BOT_BIN ?? join(REPO_ROOT, "target", "debug", "examples", "echo-bot");

/**
 * The `skip` of a test that needs echo-bot: false when it is there or required
 * (`CONSULT_REQUIRE_NATIVE=1`: then `startEchoBot` fails with a clear message), else the note.
 * @type {false | string}
 */
export const ECHO_BOT_MISSING =
  existsSync(ECHO_BOT_BIN) || process.env.CONSULT_REQUIRE_NATIVE === "1"
    ? false
    : `no echo-bot at ${ECHO_BOT_BIN} (cargo build -p consult-client --examples, or set ECHO_BOT_BIN)`;

/**
 * @typedef {object} EchoBot
 * @property {any[]} events Every JSON line printed so far, in order.
 * @property {string[]} output The last lines of stdout and stderr, for diagnostics.
 * @property {(predicate: (event: any) => boolean, timeoutMs: number, what: string) => Promise<any>} waitFor
 * @property {() => Promise<void>} stop
 * @property {() => string} diagnostics The tail of its output, for a failure message.
 */

/** JSON events echo-bot prints every second: only the latest few are kept in `output`. */
const PERIODIC_EVENTS = ["stats", "connection"];

/**
 * Start echo-bot with `--json` and collect its events.
 * @param {string} inviteUrl
 * @param {{ name?: string, codec?: string, seconds?: number, extraArgs?: string[], namespace?: string }} [options] `codec`:
 *   `--codec` (both codecs offered without it); `seconds`: `--seconds` (default 600); `extraArgs`:
 *   more flags (for example `--without-e2ee-keys`); `namespace`: run it in this network namespace.
 * @returns {EchoBot}
 */
export function startEchoBot(inviteUrl, { name = "Echo bot", codec, seconds = 600, extraArgs = [], namespace } = {}) {
  if (!existsSync(ECHO_BOT_BIN)) {
    throw new Error(
      `echo-bot is required${process.env.CONSULT_REQUIRE_NATIVE === "1" ? " (CONSULT_REQUIRE_NATIVE=1)" : ""} but there is no ${ECHO_BOT_BIN}: ` +
        "build it with cargo build -p consult-client --examples, or set ECHO_BOT_BIN",
    );
  }
  const args = ["--invite", inviteUrl, "--name", name, ...(codec ? ["--codec", codec] : []), "--seconds", String(seconds), "--json", ...extraArgs];
  // In an emulated network's namespace when asked (consult-netem), through `ip netns exec`.
  const [command, commandArgs] = namespace ? ["ip", ["netns", "exec", namespace, ECHO_BOT_BIN, ...args]] : [ECHO_BOT_BIN, args];
  const child = spawn(command, commandArgs, {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn", NO_COLOR: "1" },
  });
  /** @type {any[]} */
  const events = [];
  /** @type {string[]} */
  const output = [];
  /** @type {string | null} */
  let exited = null;
  /** @param {string} stream */
  const reader = (stream) =>
    lineSplitter((raw) => {
      const line = raw.trimEnd();
      if (!line) return;
      if (process.env.CONSULT_E2E_VERBOSE) process.stderr.write(`[echo-bot ${stream}] ${line}\n`);
      /** @type {any} */
      let event = null;
      if (stream === "stdout" && line.startsWith("{")) {
        try {
          event = JSON.parse(line);
          events.push(event);
        } catch {
          // Not JSON after all: only in the output.
        }
      }
      // The per-second lines would drown everything else: keep only the latest few of each.
      const periodic = event && PERIODIC_EVENTS.includes(event.event) ? event.event : null;
      const marker = `"event":"${periodic}"`;
      if (!periodic || output.filter((l) => l.includes(marker)).length < 3) output.push(`[${stream}] ${line}`);
      else output.splice(output.findLastIndex((l) => l.includes(marker)), 1, `[${stream}] ${line}`);
      if (output.length > 300) output.shift();
    });
  child.stdout.on("data", reader("stdout"));
  child.stderr.on("data", reader("stderr"));
  child.on("error", (err) => {
    exited = `could not start ${ECHO_BOT_BIN}: ${err.message}`;
  });
  child.on("exit", (code, signal) => {
    exited = `echo-bot exited (code ${code}, signal ${signal})`;
  });
  const killOnExit = () => {
    if (child.exitCode === null) child.kill("SIGKILL");
  };
  process.once("exit", killOnExit);

  return {
    events,
    output,
    async waitFor(predicate, timeoutMs, what) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = events.find(predicate);
        if (found) return found;
        if (exited) throw new Error(`${exited} before ${what}`);
        if (Date.now() > deadline) throw new Error(`echo-bot: no ${what} within ${timeoutMs} ms`);
        await sleep(100);
      }
    },
    async stop() {
      process.removeListener("exit", killOnExit);
      await terminate(child);
    },
    diagnostics() {
      return `\n--- echo-bot output (tail) ---\n${output.slice(-80).join("\n")}`;
    },
  };
}

/**
 * The doctor signed in with a new consultation open, and echo-bot joined through its invite,
 * admitted and connected. The doctor goes into the scope's `people`, echo-bot is owned by it.
 * @param {ServiceScope} scope
 * @param {{ label: string, title: string, e2ee?: boolean, bot?: Parameters<typeof startEchoBot>[1], doctor?: { namespace?: string } }} options
 *   `label`: the doctor's; `e2ee`: an end-to-end encrypted consultation; `bot`: echo-bot's options
 *   (its name defaults to "Echo bot"); `doctor`: more options for the doctor's browser.
 */
export async function doctorWithEchoBot({ service, people, own }, { label, title, e2ee = false, bot: botOptions = {}, doctor: doctorOptions = {} }) {
  const doctor = await launchParticipant(label, { origin: service.url, ...doctorOptions });
  people.push(doctor);
  await signInDoctor(doctor.page, service);
  const inviteUrl = await createConsultation(doctor.page, title, { e2ee });
  await openConsultation(doctor.page);
  const name = botOptions.name ?? "Echo bot";
  const bot = own(startEchoBot(inviteUrl, { ...botOptions, name }));
  await bot.waitFor((e) => e.event === "joined", 30_000, "joined event");
  await admitFromWaitingRoom(doctor.page, name);
  await bot.waitFor((e) => e.event === "admitted" || (e.event === "joined" && e.admitted), 20_000, "admitted event");
  await bot.waitFor((e) => e.event === "connected", 30_000, "connected event");
  return { doctor, bot, inviteUrl };
}

/**
 * Create an end-to-end encrypted consultation; returns its invite link.
 * @param {import('playwright-core').Page} page
 * @param {string} title
 */
export function createE2eeConsultation(page, title) {
  return createConsultation(page, title, { e2ee: true });
}

/**
 * The page's E2EE debugging view (`window.consultE2ee.snapshot()`), or null.
 * @param {import('playwright-core').Page} page
 * @returns {Promise<any>}
 */
export function e2eeSnapshot(page) {
  return page.evaluate(() => {
    const hook = /** @type {any} */ (window).consultE2ee;
    return hook ? hook.snapshot() : null;
  });
}

/**
 * Wait until the page's E2EE snapshot satisfies `predicate`.
 * @param {import('playwright-core').Page} page
 * @param {(s: any) => boolean} predicate
 * @param {string} what
 * @param {number} [timeoutMs]
 */
export async function waitForE2ee(page, predicate, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  let last = null;
  while (Date.now() < deadline) {
    last = await e2eeSnapshot(page).catch((err) => ({ error: String(err) }));
    if (last && !last.error && predicate(last)) return last;
    await sleep(200);
  }
  throw new Error(`E2EE: no ${what} within ${timeoutMs} ms; last ${JSON.stringify(last)}`);
}

/** Every flow of a worker carried protected (sent) or opened (received) frames. */
export const allFlowsProtected = (/** @type {any} */ s) =>
  !!s.worker && ["send", "receive"].every((side) => ["audio", "video"].every((kind) => s.worker[side][kind].ok > 0));

/**
 * Wait until each page decodes remote media and its worker protects and opens frames both ways
 * with the badge on; returns their snapshots.
 * @param {Participant[]} people
 */
export async function protectedBothWays(people) {
  for (const p of people) await waitForRemoteMedia(p.page, 45_000);
  return Promise.all(people.map((p) => waitForE2ee(p.page, (s) => allFlowsProtected(s) && s.badge, "protected media both ways")));
}

// -------------------------------------------------------------------------------------------------
// Recording
// -------------------------------------------------------------------------------------------------

export const FFMPEG_BIN = process.env.FFMPEG_BIN ?? "ffmpeg";
export const FFPROBE_BIN = process.env.FFPROBE_BIN ?? "ffprobe";

/**
 * @typedef {Participant & { frames: SignalFrame[] }} Watched A participant whose signaling is
 *   recorded and whose page notes every recording state and every recorder connection (see
 *   {@link installRecordingProbe}).
 */

/**
 * @typedef {object} RecordingProbe
 * @property {{ state: string | null, at: number }[]} states Each change of the indicator's `data-state`.
 * @property {{ present: boolean, at: number }[]} recorderPcs Each assignment of `window.consultRecorderPc`.
 */

/**
 * Runs in every document of a participant, before the page's scripts: notes each change of the
 * recording indicator's `data-state` and each assignment of `window.consultRecorderPc`, with
 * `Date.now()` (the same clock as the test's: one machine).
 */
function installRecordingProbe() {
  const w = /** @type {any} */ (window);
  /** @type {RecordingProbe} */
  const probe = { states: [], recorderPcs: [] };
  w.__recordingProbe = probe;
  /** @type {RTCPeerConnection | null} */
  let recorderPc = null;
  Object.defineProperty(window, "consultRecorderPc", {
    configurable: true,
    get: () => recorderPc,
    set: (value) => {
      recorderPc = value ?? null;
      probe.recorderPcs.push({ present: !!recorderPc, at: Date.now() });
    },
  });
  document.addEventListener("DOMContentLoaded", () => {
    const indicator = document.querySelector('[data-testid="recording-indicator"]');
    if (!indicator) return;
    const note = () => {
      const state = indicator.getAttribute("data-state");
      const last = probe.states[probe.states.length - 1];
      if (!last || last.state !== state) probe.states.push({ state, at: Date.now() });
    };
    new MutationObserver(note).observe(indicator, { attributes: true, attributeFilter: ["data-state"] });
    note();
  });
}

/**
 * Launch a participant with the recording probe and a signaling watch, pushed into `people`.
 * @param {ServiceScope} scope
 * @param {string} label
 * @param {{ storage?: Record<string, string> }} [options] As for {@link launchParticipant}.
 * @returns {Promise<Watched>}
 */
export async function launchWatched({ service, people }, label, { storage } = {}) {
  const p = await launchParticipant(label, { origin: service.url, ...(storage ? { storage } : {}) });
  people.push(p);
  await p.context.addInitScript(installRecordingProbe);
  return { ...p, frames: watchSignaling(p.page) };
}

/**
 * @param {import('playwright-core').Page} page
 * @returns {Promise<RecordingProbe>}
 */
export function probeOf(page) {
  return page.evaluate(() => /** @type {any} */ (window).__recordingProbe);
}

/**
 * The doctor signed in with a new consultation open, the patient admitted, media flowing both ways.
 * @param {ServiceScope} scope
 * @param {{ title: string, mode: "live_only" | "recorded", e2ee?: boolean, doctor?: Watched, patient?: Watched }} options
 *   `doctor`, `patient`: participants launched already (with {@link launchWatched}); the doctor
 *   may be signed in already.
 */
export async function startCall(scope, { title, mode, e2ee = false, ...launched }) {
  const [doctor, patient] = await Promise.all([launched.doctor ?? launchWatched(scope, "doctor"), launched.patient ?? launchWatched(scope, "patient")]);
  if (!(await byTestId(doctor.page, "create-title").isVisible())) await signInDoctor(doctor.page, scope.service);
  const inviteUrl = await createConsultation(doctor.page, title, { mode, e2ee });
  await openConsultation(doctor.page);
  const id = openConsultationId(doctor.page);
  await patientJoin(patient.page, inviteUrl, "Pat Example");
  await admitFromWaitingRoom(doctor.page, "Pat Example");
  await waitForRemoteMedia(patient.page);
  await waitForRemoteMedia(doctor.page);
  return { doctor, patient, id };
}

/**
 * The `joined` messages a page received after `since`.
 * @param {SignalFrame[]} frames
 * @param {number} since
 */
export const joinedSince = (frames, since) => frames.filter((f) => f.direction === "in" && f.at >= since && f.message?.type === "joined").map((f) => f.message);

/**
 * After the service went away at `since`: wait (30 s at most) until every page of `people` was
 * told `joined` again, and check each took its place back — the participant id it had in
 * `before` (its last `joined` before), still admitted, resumed. Returns those `joined` messages.
 * @param {{ label: string, frames: SignalFrame[] }[]} people
 * @param {number} since
 * @param {any[]} before
 */
export async function waitForPlacesBack(people, since, before) {
  const again = [];
  for (const [i, p] of people.entries()) {
    const deadline = Date.now() + 30_000;
    while (joinedSince(p.frames, since).length === 0) {
      assert.ok(Date.now() < deadline, `${p.label}: no joined after the service went`);
      await sleep(100);
    }
    const joined = joinedSince(p.frames, since)[0];
    assert.equal(joined.participant_id, before[i].participant_id, `${p.label}: the same participant id`);
    assert.equal(joined.admitted, true, `${p.label}: still admitted`);
    assert.equal(joined.resumed, true, `${p.label}: the place was resumed`);
    again.push(joined);
  }
  return again;
}

/**
 * Both pages are back in the call as they were: *In the call* shown, the same
 * `RTCPeerConnection` (the one marked `window.consultPc[marker]` before), media still decoded both
 * ways, and — end to end encrypted, with the verification `codes` from before — the same codes
 * with the badge on.
 * @param {{ page: import('playwright-core').Page }[]} people
 * @param {string} marker
 * @param {string[] | null} codes
 */
export async function assertBackOnTheSameConnection(people, marker, codes) {
  for (const p of people) {
    await byTestId(p.page, "call-status").filter({ hasText: "In the call" }).waitFor({ timeout: 20_000 });
  }
  const same = await Promise.all(people.map((p) => p.page.evaluate((m) => Boolean((/** @type {any} */ (window)).consultPc?.[m]), marker)));
  assert.deepEqual(same, people.map(() => true), "no page made a new peer connection");
  await assertMediaKeepsFlowing(/** @type {any} */ (people), 2000);
  if (codes) {
    const after = await Promise.all(people.map((p) => e2eeSnapshot(p.page)));
    assert.deepEqual(after.map((s) => s.sas), codes, "the same verification code: no new key agreement");
    assert.ok(after.every((s) => s.badge), "end-to-end encryption stayed on");
  }
}

/**
 * Wait until the page's recording indicator shows `state`; returns when it first did.
 * @param {import('playwright-core').Page} page
 * @param {string} state
 * @param {number} [timeoutMs]
 */
export async function waitForRecordingState(page, state, timeoutMs = 20_000) {
  await page.locator(`[data-testid="recording-indicator"][data-state="${state}"]`).waitFor({ state: "visible", timeout: timeoutMs });
  const reached = (await probeOf(page)).states.find((s) => s.state === state);
  if (!reached) throw new Error(`the probe missed the indicator's ${state}`);
  return reached.at;
}

/**
 * @param {import('playwright-core').Page} page
 * @returns {Promise<string>}
 */
export async function indicatorText(page) {
  return ((await byTestId(page, "recording-indicator").textContent()) ?? "").trim();
}

/**
 * Wait until the page's connection to the recorder is connected.
 * @param {import('playwright-core').Page} page
 * @param {number} [timeoutMs]
 */
export async function waitForRecorderConnected(page, timeoutMs = 20_000) {
  await page.waitForFunction(
    () => /** @type {any} */ (window).consultRecorderPc?.connectionState === "connected",
    null,
    { timeout: timeoutMs },
  );
}

/**
 * The patient allows recording: the dialog was asked properly, goes away, and both pages record,
 * each with its connection to the recorder up. Returns `consentedAt`, just before the patient's
 * click (no media can be recorded earlier), `shownAt`, when both pages first showed `recording`,
 * and `since`, when both pages' connections to the recorder were up (media flows to it from then).
 * @param {Watched} doctor
 * @param {Watched} patient
 * @returns {Promise<{ consentedAt: number, shownAt: number, since: number }>}
 */
export async function allowRecording(doctor, patient) {
  const dialog = byTestId(patient.page, "consent-dialog");
  await dialog.waitFor({ state: "visible" });
  const consentedAt = Date.now();
  await byTestId(patient.page, "consent-allow").click();
  await dialog.waitFor({ state: "hidden" });
  const [doctorAt, patientAt] = await Promise.all([
    waitForRecordingState(doctor.page, "recording"),
    waitForRecordingState(patient.page, "recording"),
  ]);
  await Promise.all([waitForRecorderConnected(doctor.page), waitForRecorderConnected(patient.page)]);
  return { consentedAt, shownAt: Math.max(doctorAt, patientAt), since: Date.now() };
}

/**
 * What {@link assertRecordingMedia} expects of a recording the test watched: at least 90% of the
 * time both pages sent media to the recorder (`shownMs`, from `since`, when both connections to
 * it were up, to `stoppedAt`, when the test asked it to stop), at most the whole span it could
 * have run (from the consent click to `goneAt`, when both pages showed it had stopped) plus half a
 * second of frame and timestamp slack. The pages learn of the recording after the recorder has
 * started and of its end after it has ended, and the recorder's connections take time to come
 * up; on a loaded machine each gap reaches hundreds of milliseconds, so neither end is exact.
 * @param {{ consentedAt: number, since: number }} allowed
 * @param {{ stoppedAt: number, goneAt: number }} stopped
 */
export function recordingBounds(allowed, { stoppedAt, goneAt }) {
  const shownMs = stoppedAt - allowed.since;
  return { shownMs, minMs: shownMs * 0.9, maxMs: goneAt - allowed.consentedAt + 500 };
}

/**
 * A recorded consultation from beginning to end: the call, the patient allows recording, about
 * `recordMs` of it is recorded, the doctor ends it, and its one recording is `complete`.
 * `bounds`: what its export may last ({@link recordingBounds}).
 * @param {ServiceScope} scope
 * @param {{ title: string, recordMs: number }} options
 */
export async function recordedCall(scope, { title, recordMs }) {
  const { doctor, patient, id } = await startCall(scope, { title, mode: "recorded" });
  const allowed = await allowRecording(doctor, patient);
  await sleep(Math.max(0, allowed.since + recordMs - Date.now()));
  const ended = await endConsultation(doctor.page, patient.page);
  const recording = await waitForOneRecording(doctor.page, id, "complete");
  return { doctor, patient, id, recording, bounds: recordingBounds(allowed, ended) };
}

/**
 * The consultation's recordings, as the doctor lists them.
 * @param {import('playwright-core').Page} page
 * @param {string} consultationId
 * @returns {Promise<any[]>}
 */
export async function listRecordings(page, consultationId) {
  const { status, body } = await apiGet(page, `/api/v1/consultations/${consultationId}/recordings`);
  if (status !== 200) throw new Error(`GET recordings: ${status} ${JSON.stringify(body)}`);
  return body.recordings;
}

/**
 * Wait until the consultation has exactly one recording, in `state` (it may be finishing first).
 * @param {import('playwright-core').Page} page
 * @param {string} consultationId
 * @param {string} state
 * @param {number} [timeoutMs]
 */
export async function waitForOneRecording(page, consultationId, state, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  /** @type {any} */
  let last = null;
  while (Date.now() < deadline) {
    last = await listRecordings(page, consultationId);
    if (last.length === 1 && last[0].state === state) return last[0];
    if (last.length > 1) break;
    await sleep(500);
  }
  throw new Error(`expected one recording in state ${state}; last answer ${JSON.stringify(last)}`);
}

/**
 * From the doctor's consultation list (loaded from `service.url`), open a consultation's
 * recordings through its *Recordings* link; resolves once the view has loaded them.
 * @param {import('playwright-core').Page} page
 * @param {Service} service
 * @param {string} consultationId
 */
export async function openRecordings(page, service, consultationId) {
  await page.goto(`${service.url}/#/`);
  const row = page.locator(`[data-testid="consultation-row"][data-id="${consultationId}"]`);
  await row.locator('[data-testid="recordings-link"]').click();
  await page.locator(`[data-testid="recordings-${consultationId}"][data-state="loaded"]`).waitFor();
}

/**
 * A recording's row in the recordings view (`data-state`: its state).
 * @param {import('playwright-core').Page} page
 * @param {string} recordingId
 */
export function recordingRow(page, recordingId) {
  return page.locator(`[data-testid="recording-row"][data-id="${recordingId}"]`);
}

/**
 * Write the doctor's session token (the HttpOnly session cookie of their page) to a file only the
 * owner reads, for the CLI's `--session-token-file`; returns its path.
 * @param {import('playwright-core').Page} doctorPage
 * @param {string} dir
 */
export async function sessionTokenFile(doctorPage, dir) {
  const cookie = (await doctorPage.context().cookies()).find((c) => c.name === "consult_session");
  if (!cookie) throw new Error("the doctor's page has no session cookie");
  const file = join(dir, "session-token");
  await writeFile(file, cookie.value, { mode: 0o600 });
  return file;
}

/**
 * `consult recording export ID --out FILE --data-dir DIR [args…]`, run to the end (through
 * {@link runConsult}).
 * @param {Service} service
 * @param {string} recordingId
 * @param {string} file
 * @param {string[]} [args] More arguments (`--session-token-file`, `--key-file`, `--passphrase-file`).
 */
export function exportRecording(service, recordingId, file, args = []) {
  return runConsult(service, ["recording", "export", recordingId, "--out", file, ...args]);
}

/**
 * Export a recording with the CLI as the consultation's clinician (the session of the doctor's
 * page) into a temporary directory, removed again. `media`: what {@link inspectRecording} finds in
 * the file when the export succeeded; `files`: what the export left in the directory (the file
 * alone, or nothing).
 * @param {Service} service
 * @param {string} recordingId
 * @param {import('playwright-core').Page} doctorPage
 */
export async function exportAsClinician(service, recordingId, doctorPage) {
  const dir = await mkdtemp(join(tmpdir(), "consult-recording-"));
  try {
    const token = await sessionTokenFile(doctorPage, dir);
    const file = join(dir, "recording.webm");
    const exported = await exportRecording(service, recordingId, file, ["--session-token-file", token]);
    const files = (await readdir(dir)).filter((name) => join(dir, name) !== token);
    const media = exported.code === 0 && files.includes("recording.webm") ? await inspectRecording(file) : null;
    return { ...exported, files, media };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Look at an exported recording with ffprobe (streams, duration) and decode it all with ffmpeg.
 * @param {string} file
 */
export async function inspectRecording(file) {
  const run = async (/** @type {string} */ bin, /** @type {string[]} */ args) => {
    try {
      return await runCommand(bin, args);
    } catch (err) {
      throw new Error(`${err instanceof Error ? err.message : err} (apt-get install ffmpeg, or set FFMPEG_BIN / FFPROBE_BIN)`);
    }
  };
  const probed = await run(FFPROBE_BIN, ["-v", "error", "-show_entries", "stream=codec_type,codec_name", "-show_entries", "format=duration", "-of", "json", file]);
  if (probed.code !== 0) throw new Error(`ffprobe failed:\n${probed.stderr}`);
  const info = JSON.parse(probed.stdout);
  // `-enc_time_base -1`: the null output keeps the file's millisecond timestamps. Without it
  // ffmpeg (5.1) gives the null output a time base of 1 / the frame rate it guesses (20 fps for
  // the fake camera) and complains "non monotonically increasing dts to muxer" whenever two frames
  // of the variable-rate WebRTC video, 47–49 ms apart, round to the same tick: about one export in
  // three on a busy machine, with strictly increasing timestamps in the file. Decoding errors are
  // reported as before.
  const decoded = await run(FFMPEG_BIN, ["-v", "error", "-xerror", "-i", file, "-enc_time_base", "-1", "-f", "null", "-"]);
  return {
    streams: /** @type {{ codec_type: string, codec_name: string }[]} */ (info.streams ?? []),
    durationMs: Number(info.format?.duration) * 1000,
    decoded,
  };
}

/**
 * The export holds VP8 video and Opus audio, decodes without a single error, and lasts from
 * `minMs` to `maxMs`.
 * @param {Awaited<ReturnType<typeof inspectRecording>>} media
 * @param {{ minMs: number, maxMs: number }} duration
 */
export function assertRecordingMedia(media, { minMs, maxMs }) {
  const kinds = media.streams.map((s) => `${s.codec_type}/${s.codec_name}`);
  assert.ok(kinds.includes("video/vp8"), `a VP8 video stream (streams: ${kinds.join(", ")})`);
  assert.ok(kinds.includes("audio/opus"), `an Opus audio stream (streams: ${kinds.join(", ")})`);
  assert.ok(
    media.durationMs >= minMs && media.durationMs <= maxMs,
    `duration ${Math.round(media.durationMs)} ms, expected ${Math.round(minMs)} to ${Math.round(maxMs)} ms`,
  );
  assert.equal(media.decoded.code, 0, `ffmpeg decodes the whole file:\n${media.decoded.stderr}`);
  assert.equal(media.decoded.stderr, "", "ffmpeg reports no error");
}
