// @ts-check
/**
 * Connection quality from `RTCPeerConnection.getStats()`: round-trip time of the nominated
 * candidate pair, inbound packet loss and the inbound and outbound bitrates, each over the last
 * sampling interval, with a good / fair / poor verdict.
 */

/**
 * @typedef {object} Quality
 * @property {number | null} rttMs Round-trip time of the selected candidate pair.
 * @property {number | null} lossPct Inbound packets lost during the interval, in percent.
 * @property {number | null} inKbps Received bitrate during the interval.
 * @property {number | null} outKbps Sent bitrate during the interval.
 * @property {number} framesDecoded Video frames decoded so far.
 * @property {"good" | "fair" | "poor" | "unknown"} label
 */

/**
 * Cumulative counters of one sample, to difference with the next.
 * @typedef {object} Counters
 * @property {number} at Timestamp in ms.
 * @property {number} bytesIn
 * @property {number} bytesOut
 * @property {number} packetsIn
 * @property {number} packetsLost
 */

/**
 * @param {RTCStatsReport} report
 * @returns {any | null}
 */
function selectedCandidatePair(report) {
  /** @type {any} */
  let nominated = null;
  for (const stat of /** @type {Iterable<any>} */ (report.values())) {
    if (stat.type === "transport" && stat.selectedCandidatePairId) {
      const pair = report.get(stat.selectedCandidatePairId);
      if (pair) return pair;
    }
    if (stat.type === "candidate-pair" && stat.nominated && stat.state === "succeeded") {
      if (!nominated || (stat.bytesReceived ?? 0) > (nominated.bytesReceived ?? 0)) nominated = stat;
    }
  }
  return nominated;
}

/**
 * @param {number | null} rttMs
 * @param {number | null} lossPct
 * @returns {Quality["label"]}
 */
export function verdict(rttMs, lossPct) {
  if (rttMs === null && lossPct === null) return "unknown";
  const rtt = rttMs ?? 0;
  const loss = lossPct ?? 0;
  if (rtt <= 150 && loss <= 2) return "good";
  if (rtt <= 400 && loss <= 8) return "fair";
  return "poor";
}

/** Samples one peer connection; call `sample()` about once a second. */
export class QualitySampler {
  /** @param {RTCPeerConnection} pc */
  constructor(pc) {
    this.pc = pc;
    /** @type {Counters | null} */
    this.previous = null;
  }

  /** @returns {Promise<Quality>} */
  async sample() {
    const report = await this.pc.getStats();
    /** @type {Counters} */
    const now = { at: 0, bytesIn: 0, bytesOut: 0, packetsIn: 0, packetsLost: 0 };
    let framesDecoded = 0;
    for (const stat of /** @type {Iterable<any>} */ (report.values())) {
      now.at = Math.max(now.at, stat.timestamp ?? 0);
      if (stat.type === "inbound-rtp") {
        now.bytesIn += stat.bytesReceived ?? 0;
        now.packetsIn += stat.packetsReceived ?? 0;
        now.packetsLost += Math.max(0, stat.packetsLost ?? 0);
        if (stat.kind === "video") framesDecoded += stat.framesDecoded ?? 0;
      } else if (stat.type === "outbound-rtp") {
        now.bytesOut += stat.bytesSent ?? 0;
      }
    }
    const pair = selectedCandidatePair(report);
    const rttMs =
      pair && typeof pair.currentRoundTripTime === "number" ? Math.round(pair.currentRoundTripTime * 1000) : null;

    let lossPct = null;
    let inKbps = null;
    let outKbps = null;
    const prev = this.previous;
    if (prev && now.at > prev.at) {
      const seconds = (now.at - prev.at) / 1000;
      inKbps = Math.max(0, ((now.bytesIn - prev.bytesIn) * 8) / 1000 / seconds);
      outKbps = Math.max(0, ((now.bytesOut - prev.bytesOut) * 8) / 1000 / seconds);
      const lost = Math.max(0, now.packetsLost - prev.packetsLost);
      const received = Math.max(0, now.packetsIn - prev.packetsIn);
      lossPct = lost + received > 0 ? (100 * lost) / (lost + received) : null;
    }
    this.previous = now;
    return { rttMs, lossPct, inKbps, outKbps, framesDecoded, label: verdict(rttMs, lossPct) };
  }
}

/**
 * @param {number | null} kbps
 * @returns {string}
 */
function formatRate(kbps) {
  if (kbps === null) return "–";
  if (kbps >= 1000) return `${(kbps / 1000).toFixed(1)} Mbit/s`;
  return `${Math.round(kbps)} kbit/s`;
}

/**
 * One line for people: "RTT 12 ms · loss 0.0 % · in 1.2 Mbit/s · out 1.1 Mbit/s".
 * @param {Quality} q
 * @returns {string}
 */
export function describeQuality(q) {
  const rtt = q.rttMs === null ? "–" : `${q.rttMs} ms`;
  const loss = q.lossPct === null ? "–" : `${q.lossPct.toFixed(1)} %`;
  return `RTT ${rtt} · loss ${loss} · in ${formatRate(q.inKbps)} · out ${formatRate(q.outKbps)}`;
}

/** The label as shown. @type {Record<Quality["label"], string>} */
export const LABELS = { good: "Good", fair: "Fair", poor: "Poor", unknown: "Measuring…" };

/**
 * Sample `getPc()` every second and hand the result to `render` (with `null` while there is no
 * connection). Returns a function that stops it.
 * @param {() => RTCPeerConnection | null} getPc
 * @param {(quality: Quality | null) => void} render
 * @returns {() => void}
 */
export function monitorQuality(getPc, render) {
  /** @type {QualitySampler | null} */
  let sampler = null;
  let busy = false;
  const timer = setInterval(async () => {
    const pc = getPc();
    if (!pc || pc.connectionState === "closed") {
      sampler = null;
      render(null);
      return;
    }
    if (!sampler || sampler.pc !== pc) sampler = new QualitySampler(pc);
    if (busy) return;
    busy = true;
    try {
      render(await sampler.sample());
    } catch (err) {
      console.warn("getStats failed", err);
    } finally {
      busy = false;
    }
  }, 1000);
  return () => clearInterval(timer);
}
