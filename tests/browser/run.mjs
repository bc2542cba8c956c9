// Runs every browser test file (`*.test.mjs`): first the suites that assert real-time figures
// (no video gap over one second while keys rotate) alone, so a neighbour's CPU cannot fail
// them; then every other file two at a time, never two heavy ones together (the recording
// suites: a recorder in the service, two browsers and ffmpeg each, whose exported durations
// are checked against the time recorded; and the browser with the native echo-bot). A heavy file starts whenever no other heavy one runs,
// the light files fill the other place. A new file lands among the light ones by itself, so
// none is ever left out. Each file's output is printed when it ends. Exits non-zero if any test
// failed.
//
// Run: cd tests/browser && npm test   (environment: see README.md here)
import { spawn, spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * Files that measure timing and must not share the machine with another browser test: E2EE's
 * real-time figures, consent withdrawal reaching both pages within a second (150–260 ms
 * alone; 1.0–2.5 s seen beside another browser suite on 2 cores), and the group call (four
 * browsers with E2EE, and its first-frame figures).
 */
const ALONE = ["e2ee.test.mjs", "group-call.test.mjs", "recording.test.mjs"];
/**
 * Files that load the machine most: at most one of them at a time. The recording suites, and
 * the browser with the native echo-bot (its H.264 case decoded no video when it shared the
 * machine with a recording suite), and the calls through emulated networks (their figures).
 */
const HEAVY = ["recording.test.mjs", "recording-faults.test.mjs", "recording-e2ee.test.mjs", "recording-screen.test.mjs", "e2ee-native.test.mjs", "emulated.test.mjs"];
/** Files run at once outside the ALONE group. */
const CONCURRENCY = 2;

const here = dirname(fileURLToPath(import.meta.url));
const files = readdirSync(here)
  .filter((f) => f.endsWith(".test.mjs"))
  .sort();

let failed = false;
for (const file of files.filter((f) => ALONE.includes(f))) {
  const run = spawnSync(process.execPath, ["--test", file], { cwd: here, stdio: "inherit" });
  failed ||= run.status !== 0;
}

/**
 * Run one file, its output gathered and printed when it ends.
 * @param {string} file
 * @returns {Promise<boolean>} Whether it passed.
 */
function runFile(file) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--test", file], { cwd: here, stdio: ["ignore", "pipe", "pipe"] });
    /** @type {Buffer[]} */
    const output = [];
    child.stdout.on("data", (chunk) => output.push(chunk));
    child.stderr.on("data", (chunk) => output.push(chunk));
    child.on("close", (code) => {
      process.stdout.write(`\n# ---- ${file} (exit ${code}) ----\n`);
      process.stdout.write(Buffer.concat(output));
      resolve(code === 0);
    });
  });
}

const heavy = files.filter((f) => HEAVY.includes(f) && !ALONE.includes(f));
const light = files.filter((f) => !HEAVY.includes(f) && !ALONE.includes(f));
let heavyRunning = false;

/** The next file that may start now, if any (at most one heavy file at a time). */
function next() {
  if (!heavyRunning && heavy.length > 0) {
    heavyRunning = true;
    return { file: /** @type {string} */ (heavy.shift()), isHeavy: true };
  }
  if (light.length > 0) return { file: /** @type {string} */ (light.shift()), isHeavy: false };
  return null;
}

/** @type {Set<Promise<void>>} */
const running = new Set();
for (;;) {
  while (running.size < CONCURRENCY) {
    const pick = next();
    if (!pick) break;
    const task = runFile(pick.file).then((ok) => {
      failed ||= !ok;
      if (pick.isHeavy) heavyRunning = false;
      running.delete(task);
    });
    running.add(task);
  }
  if (running.size === 0) break;
  await Promise.race(running);
}
process.exit(failed ? 1 : 0);
