// @ts-check
/**
 * A dedicated worker that ticks for the signaling heartbeat. Timers of a hidden page are throttled
 * (to once a minute after a few minutes in Chrome), which would let the service time a waiting
 * patient out; a worker's timers are not.
 *
 * Messages in: `{ intervalMs: number }` to (re)start, `{ stop: true }` to stop. Out: `"tick"`.
 */

/** @type {ReturnType<typeof setInterval> | undefined} */
let timer;

self.onmessage = (event) => {
  const data = event.data;
  if (timer !== undefined) clearInterval(timer);
  timer = undefined;
  if (data && typeof data.intervalMs === "number" && data.intervalMs > 0) {
    timer = setInterval(() => self.postMessage("tick"), data.intervalMs);
  }
};
