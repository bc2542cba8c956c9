// The decisions of `assets/path-watch.js`: when a connection's silence makes the page look at its
// addresses, probe signaling, or send a fresh picture; when addresses count as changed.
// Run: node --test web-demo/path-watch.test.mjs
import assert from "node:assert/strict";
import { test } from "node:test";

import { AddressWatch, addressChange, LOOK_EVERY_MS, PathWatch, pauseAfterLookMs, QUIET_MS, SAMPLE_EVERY_MS, SILENT_MS } from "./assets/path-watch.js";

/**
 * Samples every `SAMPLE_EVERY_MS` from `start` with these byte counts; the events by time.
 * @param {PathWatch} watch
 * @param {number} start
 * @param {number[]} counts
 */
function feed(watch, start, counts) {
  /** @type {[number, string][]} */
  const events = [];
  counts.forEach((bytes, i) => {
    const at = start + i * SAMPLE_EVERY_MS;
    const event = watch.update(at, bytes);
    if (event) events.push([at, event]);
  });
  return events;
}

/** `n` samples of a count going up, from `from`. */
const flowing = (/** @type {number} */ from, /** @type {number} */ n) => Array.from({ length: n }, (_, i) => from + (i + 1) * 1000);
/** `n` samples of the same count. */
const still = (/** @type {number} */ bytes, /** @type {number} */ n) => Array.from({ length: n }, () => bytes);

test("bytes flowing say nothing", () => {
  const watch = new PathWatch(0);
  assert.deepEqual(feed(watch, 0, flowing(0, 40)), []);
  assert.equal(watch.isQuiet(10_000), false);
});

test("silence: silent once at SILENT_MS, quiet once at QUIET_MS, back once when bytes come after", () => {
  const watch = new PathWatch(0);
  // Heard at 0, then nothing for 3 s, then bytes again.
  const events = feed(watch, 0, [1000, ...still(1000, 12), 2000, 3000]);
  assert.deepEqual(events, [
    [SILENT_MS, "silent"],
    [QUIET_MS, "quiet"],
    [13 * SAMPLE_EVERY_MS, "back"],
  ]);
});

test("a pause shorter than SILENT_MS is no event, and does not count as back", () => {
  const watch = new PathWatch(0);
  const short = Math.floor(SILENT_MS / SAMPLE_EVERY_MS) - 1;
  assert.deepEqual(feed(watch, 0, [1000, ...still(1000, short), 2000, 3000]), []);
});

test("silent but not quiet, then bytes again: no fresh picture (a capped link has such gaps often)", () => {
  const watch = new PathWatch(0);
  const n = Math.floor(SILENT_MS / SAMPLE_EVERY_MS);
  const events = feed(watch, 0, [1000, ...still(1000, n), 5000]);
  assert.deepEqual(events.map(([, e]) => e), ["silent"]);
  const silent = new PathWatch(0);
  feed(silent, 0, [1000, ...still(1000, n)]);
  assert.equal(silent.isSilent(n * SAMPLE_EVERY_MS), true);
  assert.equal(silent.isQuiet(n * SAMPLE_EVERY_MS), false);
  silent.update((n + 1) * SAMPLE_EVERY_MS, 5000);
  assert.equal(silent.isSilent((n + 1) * SAMPLE_EVERY_MS), false);
});

test("each silence says its events again; quiet is reported while it lasts", () => {
  const watch = new PathWatch(0);
  const silence = still(1000, 9);
  const events = feed(watch, 0, [1000, ...silence, 2000, ...still(2000, 9), 3000]);
  assert.deepEqual(events.map(([, e]) => e), ["silent", "quiet", "back", "silent", "quiet", "back"]);
  const quiet = new PathWatch(0);
  feed(quiet, 0, [1000, ...still(1000, 9)]);
  assert.equal(quiet.isQuiet(9 * SAMPLE_EVERY_MS), true);
});

test("not connected in between: the first sample after starts afresh, with no event", () => {
  const watch = new PathWatch(0);
  feed(watch, 0, [1000, ...still(1000, 3)]);
  watch.reset();
  assert.equal(watch.isQuiet(100_000), false);
  // A count that went down (a new transport) or up: neither is an event.
  assert.equal(watch.update(100_000, 10), null);
  assert.equal(watch.update(100_250, 5000), null);
});

test("addresses: what is gone and what is added; unknown is never a change", () => {
  const a = new Set(["10.77.8.2", "127.0.0.1"]);
  const none = { gone: false, added: false };
  assert.deepEqual(addressChange(a, new Set(["127.0.0.1", "10.77.8.2"])), none);
  assert.deepEqual(addressChange(a, new Set(["10.77.9.2", "127.0.0.1"])), { gone: true, added: true }, "moved");
  assert.deepEqual(addressChange(a, new Set(["127.0.0.1"])), { gone: true, added: false }, "one gone");
  assert.deepEqual(addressChange(a, new Set(["10.77.8.2", "127.0.0.1", "fd00::2"])), { gone: false, added: true }, "one more");
  assert.deepEqual(addressChange(null, a), none);
  assert.deepEqual(addressChange(a, null), none);
  assert.deepEqual(addressChange(null, null), none);
});

/**
 * A watch whose looks see these sets one after the other: an array is a complete look, `{ short }`
 * one whose time ran out before gathering ended.
 * @param {(string[] | { short: string[] } | null)[]} looks
 */
async function watchThrough(looks) {
  let calls = 0;
  const watch = new AddressWatch(async () => {
    const look = looks[calls++];
    if (!look) return null;
    return Array.isArray(look) ? { addresses: new Set(look), complete: true } : { addresses: new Set(look.short), complete: false };
  });
  const changes = [];
  for (let i = 0; i < looks.length; i += 1) changes.push(await watch.check());
  assert.equal(calls, looks.length);
  return changes;
}

const NONE = { gone: false, added: false };

test("the watch: the first look records; a move is seen as the old address gone, then the new one added", async () => {
  const lo = "127.0.0.1";
  // The browser sees the old address go at once and learns of the new one later (as Chromium does).
  const changes = await watchThrough([[lo, "10.0.0.2"], [lo, "10.0.0.2"], [lo], [lo], [lo, "10.0.1.2"], [lo, "10.0.1.2"]]);
  assert.deepEqual(changes, [NONE, NONE, { gone: true, added: false }, NONE, { gone: false, added: true }, NONE]);
});

test("the watch: a look that came back short and the full one after are no change", async () => {
  const changes = await watchThrough([["127.0.0.1", "10.0.0.2"], [], ["127.0.0.1"], ["127.0.0.1", "10.0.0.2"]]);
  assert.deepEqual(changes, [NONE, { gone: true, added: false }, NONE, NONE]);
});

test("the watch: a short first look (a starved page) and the full ones after it are no change", async () => {
  const lo = "127.0.0.1";
  const changes = await watchThrough([{ short: [lo] }, { short: [lo, "fd00::2"] }, [lo, "fd00::2", "10.0.0.2"], [lo, "fd00::2", "10.0.0.2"]]);
  assert.deepEqual(changes, [NONE, NONE, NONE, NONE]);
});

test("the watch: after a complete look, a short look with a new address is a change (gathering held up by the gone interface)", async () => {
  const lo = "127.0.0.1";
  const changes = await watchThrough([[lo, "10.0.0.2"], { short: [lo] }, { short: [lo, "10.0.1.2"] }, { short: [lo, "10.0.1.2", "10.0.2.2"] }, [lo, "10.0.1.2", "10.0.2.2"]]);
  // The new baseline after the change is short: a further address counts only once a complete look is in.
  assert.deepEqual(changes, [NONE, { gone: true, added: false }, { gone: false, added: true }, NONE, NONE]);
});

test("the watch: hidden looks say nothing; moving back to an earlier network is a change again", async () => {
  const changes = await watchThrough([["10.0.0.2"], null, ["10.0.1.2"], ["10.0.1.2"], ["10.0.0.2"]]);
  assert.deepEqual(changes, [NONE, NONE, { gone: true, added: true }, NONE, { gone: true, added: true }]);
});

test("the watch: connections falling silent together share one look; a failed look is no change", async () => {
  let calls = 0;
  /** @type {(value: import('./assets/path-watch.js').AddressLook) => void} */
  let answer = () => {};
  const watch = new AddressWatch(() => {
    calls += 1;
    return new Promise((resolve) => {
      answer = resolve;
    });
  });
  const first = watch.check();
  const second = watch.check();
  answer({ addresses: new Set(["10.0.0.2"]), complete: true });
  assert.deepEqual(await Promise.all([first, second]), [NONE, NONE]);
  assert.equal(calls, 1);
  let failures = 0;
  const failing = new AddressWatch(() => {
    failures += 1;
    return Promise.reject(new Error("no"));
  });
  assert.deepEqual(await failing.check(), NONE);
  assert.deepEqual(await failing.check(), NONE);
  assert.equal(failures, 2);
});

test("looks are spaced out when they are slow: never more than a third of the time looking", () => {
  assert.equal(5 + pauseAfterLookMs(5), LOOK_EVERY_MS, "a quick look: the usual pace");
  assert.equal(50 + pauseAfterLookMs(50), LOOK_EVERY_MS);
  for (const lookMs of [100, 200, 400, 900, 3000]) {
    const pause = pauseAfterLookMs(lookMs);
    assert.ok(lookMs + pause >= LOOK_EVERY_MS, `${lookMs} ms: never faster than the usual pace`);
    assert.ok(lookMs / (lookMs + pause) <= 1 / 3 + 1e-9, `${lookMs} ms, then a pause of ${pause} ms`);
  }
});
