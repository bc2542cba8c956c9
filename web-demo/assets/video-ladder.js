// @ts-check
/**
 * Video that steps down on a bad link and back up when it recovers, audio first throughout.
 *
 * Each connection's camera goes through four steps: full (the connection's bitrate, 30 fps),
 * reduced (half the width and height, 15 fps), low (a quarter, 8 fps), and audio only, where the
 * camera sends one picture every few seconds. Chromium adapts resolution and frame rate by itself
 * within the bitrate it has; the steps make that explicit and go further, so that on a link too
 * weak for moving pictures the audio keeps the room.
 *
 * `VideoLadder` is the decision alone (no browser API, unit-tested in `video-ladder.test.mjs`):
 * once a second it takes the send bandwidth estimate (`availableOutgoingBitrate` of the selected
 * candidate pair), the media we send (`outbound-rtp` bytes; data channels do not count), and the loss the other side reports
 * (`fractionLost` of `remote-inbound-rtp`); while a file goes out (data channels sending over
 * `FILE_SENDING_BPS`) only the loss counts,
 * steps down after two bad seconds in a row, and up one step after `holdMs` of good seconds, or
 * at once when the estimate is clearly enough for a higher step. For `HOLD_MS` after a step up
 * only loss can undo it: the estimate lags behind what is sent, and in audio only almost nothing
 * is sent. A step up that turns bad again
 * within `HOLD_MS` doubles the hold before the next try (at most `MAX_HOLD_MS`), so a link at
 * the edge does not flap; one that holds brings the hold back to `HOLD_MS`. In audio only the estimate cannot show that the link recovered (almost
 * nothing is sent), so the timed try is what brings video back.
 *
 * `SendLadder` applies a step to an `RTCRtpSender` (`setParameters`: `scaleResolutionDownBy`,
 * `maxFramerate`, `maxBitrate`, and in audio only `active` off, switched on for a moment every
 * `STILL_EVERY_MS` for a picture).
 */

/**
 * @typedef {object} VideoStep
 * @property {"full" | "reduced" | "low" | "audio-only"} name
 * @property {number} scaleResolutionDownBy
 * @property {number} maxFramerate
 * @property {number} minBps Below this estimate the step is too much for the link.
 * @property {number} maxBps Most this step sends (before the connection's own limit).
 */

/** @type {readonly VideoStep[]} From best to worst. */
export const VIDEO_STEPS = Object.freeze([
  { name: "full", scaleResolutionDownBy: 1, maxFramerate: 30, minBps: 450_000, maxBps: Infinity },
  { name: "reduced", scaleResolutionDownBy: 2, maxFramerate: 15, minBps: 220_000, maxBps: 400_000 },
  { name: "low", scaleResolutionDownBy: 4, maxFramerate: 8, minBps: 110_000, maxBps: 150_000 },
  { name: "audio-only", scaleResolutionDownBy: 4, maxFramerate: 2, minBps: 0, maxBps: 60_000 },
]);

/** The audio-only step's index. */
export const AUDIO_ONLY = VIDEO_STEPS.length - 1;

/** From this many receivers of one camera on, it goes at most at the reduced step's size and rate. */
export const GROUP_REDUCED_FROM = 3;

/**
 * The best step (an index into `VIDEO_STEPS`) a camera is sent at when it goes to this many
 * receivers. In a mesh each receiver gets an encode of its own, and decodes one from each of the
 * others: from three receivers on (a call of four) the camera goes at half the width and height and
 * 15 frames a second — a quarter of the pixels and half the frames for every encode and every
 * decode, so four people on ordinary laptops keep moving video. The bitrate each copy gets is
 * `videoBitrateFor`'s (`call.js`). This is a shape, not a judgement of the link:
 * the ladder still decides from the link, and the page explains only what the link does.
 * @param {number} receivers
 */
export function bestStepFor(receivers) {
  return receivers >= GROUP_REDUCED_FROM ? 1 : 0;
}
/** Loss (fraction, as reported by the other side) at which video steps down whatever the estimate. */
export const BAD_LOSS = 0.25;
/** Loss at or below which a second counts as good for stepping up. */
export const GOOD_LOSS = 0.15;
/** Bad seconds in a row before stepping down. */
export const BAD_SECONDS = 3;
/** Good time before trying one step up. */
export const HOLD_MS = 8_000;
/** Longest wait before trying again after failed tries. */
export const MAX_HOLD_MS = 32_000;
/** An estimate this many times a higher step's minimum moves there at once. */
export const CLEAR_MARGIN = 1.3;
/** In audio only, one picture this often. */
export const STILL_EVERY_MS = 4_000;
/**
 * How long the encoding stays on for that picture: at 2 frames a second, the key frame and two
 * small frames after it. A packet of the key frame lost under a tight cap is noticed only when a
 * later packet of the same stream arrives (then it is asked for again and resent); with the
 * encoding off right after the key frame, nothing came after it and the picture was lost.
 */
export const STILL_ON_MS = 1300;

/**
 * @typedef {object} LinkSample
 * @property {number | null} availableBps Send bandwidth estimate, bits per second.
 * @property {number | null} loss Loss the other side reports on our media (0..1).
 * @property {number | null} [sendingBps] What we send now, bits per second.
 * @property {number | null} [dataBps] What our data channels send now (a file), bits per second.
 */

/** Data channels sending more than this (bits per second) are sending a file, not chat. */
export const FILE_SENDING_BPS = 64_000;

/** An estimate above this many times what we send says nothing about the link's limit. */
export const APP_LIMITED_MARGIN = 1.2;

/** The decision: which step, from one sample a second. */
export class VideoLadder {
  /** @param {number} nowMs */
  constructor(nowMs) {
    this.step = 0;
    this.badSeconds = 0;
    this.goodSince = nowMs;
    this.holdMs = HOLD_MS;
    /** @type {number | null} When the last step up happened. */
    this.steppedUpAt = null;
  }

  /**
   * Take one sample; returns the step now in force (an index into `VIDEO_STEPS`).
   * @param {number} nowMs
   * @param {LinkSample} sample
   */
  update(nowMs, { availableBps: estimate, loss, sendingBps = null, dataBps = null }) {
    // While a file goes out the estimate judges nothing: the file takes what the video leaves
    // and the estimate moves with it. Loss still counts.
    const availableBps = dataBps !== null && dataBps > FILE_SENDING_BPS ? null : estimate;
    const step = VIDEO_STEPS[this.step];
    // Right after a step up the estimate lags (little was sent): only loss judges the try then.
    const trying = this.steppedUpAt !== null && nowMs - this.steppedUpAt < HOLD_MS;
    // A low estimate counts only while we send about as much as it says; when we send less it
    // only echoes what little we send (the estimate of an audio-only call stays low however good
    // the link has become).
    const pushing = sendingBps === null || (availableBps ?? 0) <= sendingBps * APP_LIMITED_MARGIN;
    const tooLittle = !trying && availableBps !== null && availableBps < step.minBps && pushing;
    const tooLossy = loss !== null && loss >= BAD_LOSS;
    if ((tooLittle || tooLossy) && this.step < AUDIO_ONLY) {
      this.badSeconds += 1;
      if (this.badSeconds >= BAD_SECONDS) {
        // Straight to the step the estimate allows (at least one down).
        let next = this.step + 1;
        while (availableBps !== null && next < AUDIO_ONLY && availableBps < VIDEO_STEPS[next].minBps) next += 1;
        // A try that did not hold: wait longer before the next.
        if (this.steppedUpAt !== null) this.holdMs = Math.min(MAX_HOLD_MS, this.holdMs * 2);
        this.step = next;
        this.badSeconds = 0;
        this.goodSince = nowMs;
        this.steppedUpAt = null;
      }
      return this.step;
    }
    this.badSeconds = 0;
    // A step up that held through its try, the estimate agreeing: the next waits the least again.
    if (this.steppedUpAt !== null && !trying) {
      this.steppedUpAt = null;
      this.holdMs = HOLD_MS;
    }
    if (loss !== null && loss > GOOD_LOSS) {
      this.goodSince = nowMs;
      return this.step;
    }
    if (this.step === 0) return this.step;
    // Clearly enough for a better step: go there now.
    let clear = this.step;
    while (clear > 0 && availableBps !== null && availableBps >= VIDEO_STEPS[clear - 1].minBps * CLEAR_MARGIN) clear -= 1;
    if (clear < this.step) return this.stepUpTo(nowMs, clear);
    if (nowMs - this.goodSince >= this.holdMs) return this.stepUpTo(nowMs, this.step - 1);
    return this.step;
  }

  /**
   * @private
   * @param {number} nowMs
   * @param {number} step
   */
  stepUpTo(nowMs, step) {
    this.step = step;
    this.goodSince = nowMs;
    this.steppedUpAt = nowMs;
    return this.step;
  }
}

/**
 * The send bandwidth estimate, the loss the other side reports on our media (the worse of audio
 * and video), the media bytes sent so far with their time, and the data channels' bytes sent so
 * far, from one `getStats()` report.
 * @param {RTCStatsReport} report
 * @returns {LinkSample & { bytesSent: number | null, dataBytesSent: number, at: number }}
 */
export function linkSample(report) {
  /** @type {number | null} */
  let availableBps = null;
  /** @type {number | null} */
  let loss = null;
  /** @type {number | null} */
  let bytesSent = null;
  let dataBytesSent = 0;
  let at = 0;
  report.forEach((/** @type {any} */ s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) {
      const pair = report.get(s.selectedCandidatePairId);
      if (pair && typeof pair.availableOutgoingBitrate === "number") availableBps = pair.availableOutgoingBitrate;
    }
    // Media only: a file going alongside does not count as what the video pushes.
    if (s.type === "outbound-rtp" && typeof s.bytesSent === "number") {
      bytesSent = (bytesSent ?? 0) + s.bytesSent + (s.headerBytesSent ?? 0);
      at = Math.max(at, s.timestamp ?? 0);
    }
    if (s.type === "data-channel" && typeof s.bytesSent === "number") dataBytesSent += s.bytesSent;
    if (s.type === "remote-inbound-rtp" && typeof s.fractionLost === "number") {
      loss = Math.max(loss ?? 0, s.fractionLost);
    }
  });
  return { availableBps, loss, bytesSent, dataBytesSent, at };
}

/**
 * A ladder applied to one connection's camera sender.
 */
export class SendLadder {
  /**
   * @param {RTCPeerConnection} pc
   * @param {() => RTCRtpSender | null} cameraSender The camera's sender (not a shared screen's).
   * @param {() => number} linkBps The connection's own video limit (shared among receivers).
   * @param {(step: VideoStep) => void} onStep A new step is in force.
   * @param {() => number} [bestStep] The best step the camera may go at on this connection
   *   ({@link bestStepFor} the number of receivers); the size and frame rate sent are the worse of
   *   it and the ladder's step.
   */
  constructor(pc, cameraSender, linkBps, onStep, bestStep = () => 0) {
    this.pc = pc;
    this.cameraSender = cameraSender;
    this.linkBps = linkBps;
    this.onStep = onStep;
    this.bestStep = bestStep;
    this.ladder = new VideoLadder(Date.now());
    this.applied = 0;
    this.busy = false;
    this.stopped = false;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.stillOff = null;
    this.lastStill = 0;
    /** @type {{ bytesSent: number, dataBytesSent: number, at: number } | null} */
    this.previousSent = null;
    /** Every change to the sender's parameters, one after the other (Chromium applies them
     * asynchronously; two at once would lose one). */
    this.changes = Promise.resolve();
  }

  /**
   * Change the camera sender's parameters after any change under way.
   * @private
   * @param {(parameters: RTCRtpSendParameters) => void} change
   */
  change(change) {
    this.changes = this.changes.then(async () => {
      const sender = this.cameraSender();
      if (!sender || this.stopped) return;
      const parameters = sender.getParameters();
      if (!parameters.encodings || parameters.encodings.length === 0) return;
      change(parameters);
      await sender.setParameters(parameters);
    });
    const done = this.changes;
    this.changes = this.changes.catch((err) => {
      if (!this.stopped) console.warn("Could not change the video's parameters", err);
    });
    return done;
  }

  /** Put the step in force (and the connection's limit) on the sender again. */
  reapply() {
    return this.apply(this.applied).catch(() => {});
  }

  /** The step in force. */
  get step() {
    return VIDEO_STEPS[this.applied];
  }

  /** Sample and apply; call once a second while connected. */
  async tick() {
    if (this.busy || this.stopped) return;
    this.busy = true;
    try {
      const sample = linkSample(await this.pc.getStats());
      const previous = this.previousSent;
      if (sample.bytesSent !== null && previous && sample.at > previous.at) {
        sample.sendingBps = ((sample.bytesSent - previous.bytesSent) * 8 * 1000) / (sample.at - previous.at);
      }
      if (previous && sample.at > previous.at) {
        sample.dataBps = ((sample.dataBytesSent - previous.dataBytesSent) * 8 * 1000) / (sample.at - previous.at);
      }
      this.previousSent = sample.bytesSent === null ? null : { bytesSent: sample.bytesSent, dataBytesSent: sample.dataBytesSent, at: sample.at };
      const now = Date.now();
      const step = this.ladder.update(now, sample);
      if (step !== this.applied) {
        console.info(`Video step: ${VIDEO_STEPS[step].name} (estimate ${sample.availableBps ?? "?"} bit/s, loss ${sample.loss ?? "?"})`);
        // In force once the sender took it (a refused change is tried again next second).
        await this.apply(step);
        this.applied = step;
        this.onStep(VIDEO_STEPS[step]);
      } else if (step === AUDIO_ONLY && now - this.lastStill >= STILL_EVERY_MS) {
        await this.still();
      }
    } catch (err) {
      if (!this.stopped) console.warn("Video step failed", err);
    } finally {
      this.busy = false;
    }
  }

  /**
   * Put a step's parameters on the sender. In audio only the first picture goes at once, and
   * the encoding is switched off after it.
   * @private
   * @param {number} index
   */
  async apply(index) {
    const step = VIDEO_STEPS[index];
    const shape = VIDEO_STEPS[Math.max(index, Math.min(this.bestStep(), AUDIO_ONLY))];
    await this.change((parameters) => {
      for (const encoding of parameters.encodings) {
        encoding.scaleResolutionDownBy = shape.scaleResolutionDownBy;
        encoding.maxFramerate = shape.maxFramerate;
        encoding.maxBitrate = Math.min(this.linkBps(), step.maxBps);
        encoding.active = true;
      }
    });
    if (index === AUDIO_ONLY) {
      this.lastStill = Date.now();
      this.armStillOff(index);
    }
  }

  /**
   * In audio only: the camera on for a moment, for one picture.
   * @private
   */
  async still() {
    this.lastStill = Date.now();
    await this.change((parameters) => {
      for (const encoding of parameters.encodings) encoding.active = true;
    });
    this.armStillOff(AUDIO_ONLY);
  }

  /**
   * A fresh picture now, whatever the step (the path changed or came back, and the other side's
   * decoder may be waiting for one): the encoding is switched off and on again, and Chromium
   * starts an encoding that is switched on with a key frame. In audio only it goes off again
   * after the picture, as after a still.
   */
  async freshPicture() {
    if (this.stopped) return;
    try {
      await this.change((parameters) => {
        for (const encoding of parameters.encodings) encoding.active = false;
      });
      await this.change((parameters) => {
        for (const encoding of parameters.encodings) encoding.active = true;
      });
    } catch {
      // Said by `change`; the other side asks for a picture itself in a few seconds.
      return;
    }
    if (this.applied === AUDIO_ONLY) {
      this.lastStill = Date.now();
      this.armStillOff(AUDIO_ONLY);
    }
  }

  /**
   * Switch the encoding off again after a picture, if audio only is still in force.
   * @private
   * @param {number} index The step the picture was for.
   */
  armStillOff(index) {
    if (this.stillOff !== null) clearTimeout(this.stillOff);
    this.stillOff = setTimeout(() => {
      this.stillOff = null;
      if (this.stopped || index !== AUDIO_ONLY) return;
      void this.change((parameters) => {
        if (this.applied !== AUDIO_ONLY) return;
        for (const encoding of parameters.encodings) encoding.active = false;
      }).catch(() => {});
    }, STILL_ON_MS);
  }

  /** Stop deciding (the connection closed); a change under way still finishes. */
  stop() {
    this.stopped = true;
    if (this.stillOff !== null) clearTimeout(this.stillOff);
  }
}
