// Interoperability of the web demo with the native media core: the doctor is headless Chromium,
// the patient is the `echo-bot` example (crates/client/examples/echo-bot.rs) joining through the
// invite link. Once with H.264 and once with VP8 (echo-bot's `--codec` forces it both ways):
// video and audio decode on both sides, a chat message comes back as "echo: ...", and a file sent
// by the browser comes back under the same name with the same SHA-256.
//
// Run: cd tests/browser && npm test   (or: node --test native.test.mjs)
// Needs the service (CONSULT_BIN, default target/debug/consult), echo-bot (ECHO_BOT_BIN, default
// target/debug/examples/echo-bot: cargo build -p consult-client --examples) and /usr/bin/chromium.
// Without the echo-bot binary the tests are skipped (with a note), unless CONSULT_REQUIRE_NATIVE=1.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";

import {
  acceptAndDownload,
  cspViolations,
  doctorWithEchoBot,
  ECHO_BOT_MISSING,
  inboundStats,
  offerFile,
  sendChat,
  sha256Hex,
  waitForChat,
  withService,
} from "./harness.mjs";

/**
 * The doctor page's inbound and outbound video codecs (from the `codecId` of the RTP reports; of
 * several streams of a kind, the one with the most frames).
 * @param {import('playwright-core').Page} page
 */
function videoCodecs(page) {
  return page.evaluate(async () => {
    /** @type {RTCPeerConnection | null} */
    const pc = /** @type {any} */ (window).consultPc ?? null;
    if (!pc) return null;
    const report = await pc.getStats();
    /** @type {any} */
    const out = { inbound: null, outbound: null };
    report.forEach((/** @type {any} */ s) => {
      if (s.kind !== "video" || (s.type !== "inbound-rtp" && s.type !== "outbound-rtp")) return;
      const codec = s.codecId ? report.get(s.codecId) : null;
      const entry = {
        mimeType: codec ? codec.mimeType : null,
        fmtp: codec ? codec.sdpFmtpLine ?? null : null,
        frames: s.type === "inbound-rtp" ? s.framesDecoded ?? 0 : s.framesEncoded ?? 0,
        width: s.frameWidth ?? null,
        height: s.frameHeight ?? null,
      };
      // More than one stream of a kind (a stream that never carried frames beside the one
      // that does): the one with the most frames.
      const key = s.type === "inbound-rtp" ? "inbound" : "outbound";
      if (!out[key] || entry.frames > out[key].frames) out[key] = entry;
    });
    return out;
  });
}

/**
 * The data channels of the doctor page's connection (label, id, state, messages each way), from
 * `getStats()`: shows whether both sides created channels (glare) and which ones carried traffic.
 * @param {import('playwright-core').Page} page
 */
function dataChannelStats(page) {
  return page.evaluate(async () => {
    /** @type {RTCPeerConnection | null} */
    const pc = /** @type {any} */ (window).consultPc ?? null;
    if (!pc) return [];
    const report = await pc.getStats();
    /** @type {any[]} */
    const channels = [];
    report.forEach((/** @type {any} */ s) => {
      if (s.type === "data-channel") {
        channels.push({ label: s.label, id: s.dataChannelIdentifier, state: s.state, sent: s.messagesSent, received: s.messagesReceived });
      }
    });
    return channels;
  });
}

describe("browser doctor with the native echo-bot as the patient", { timeout: 600_000 }, () => {
  for (const codec of ["h264", "vp8"]) {
    const mime = codec === "h264" ? "video/H264" : "video/VP8";
    test(`${codec}: media both ways, chat echo and file echo`, { timeout: 240_000, skip: ECHO_BOT_MISSING }, async (t) => {
      await withService({}, async (scope) => {
        const { doctor, bot } = await doctorWithEchoBot(scope, { label: `doctor (${codec})`, title: `Echo test ${codec}`, bot: { codec } });

        // The browser decodes the native video and receives its audio, with the forced codec.
        const deadline = Date.now() + 30_000;
        /** @type {any} */
        let media = null;
        /** @type {any} */
        let codecs = null;
        while (Date.now() < deadline) {
          media = await inboundStats(doctor.page).catch((err) => ({ error: String(err) }));
          codecs = await videoCodecs(doctor.page).catch((err) => ({ error: String(err) }));
          if (media && media.framesDecoded > 0 && media.audioPackets > 0 && codecs && codecs.inbound && codecs.inbound.mimeType) break;
          await sleep(250);
        }
        t.diagnostic(`browser inbound: ${JSON.stringify(media)}`);
        t.diagnostic(`browser video codecs: ${JSON.stringify(codecs)}`);
        assert.ok(media && media.framesDecoded > 0, `the browser decodes echo-bot's video: ${JSON.stringify(media)}`);
        assert.ok(media.audioPackets > 0, `the browser receives echo-bot's audio: ${JSON.stringify(media)}`);
        assert.equal(codecs?.inbound?.mimeType, mime, "inbound video codec");
        if (codecs?.outbound?.mimeType) assert.equal(codecs.outbound.mimeType, mime, "outbound video codec");

        // echo-bot decodes the browser's 640x480 video and its audio.
        const stats = await bot.waitFor(
          (e) => e.event === "stats" && e.video_decoded > 0 && e.audio_decoded > 0 && e.width === 640 && e.height === 480,
          30_000,
          "stats line with decoded 640x480 video and decoded audio",
        );
        t.diagnostic(`echo-bot stats: ${JSON.stringify(stats)}`);
        assert.equal(stats.codec, codec, "echo-bot decoded the forced codec");

        // Chat: the message comes back prefixed.
        const text = `Hello from Chromium (${codec}) — ünïcödé ✓`;
        await sendChat(doctor.page, text);
        await bot.waitFor((e) => e.event === "chat" && e.text === text, 20_000, `chat event ${JSON.stringify(text)}`);
        await waitForChat(doctor.page, "in", `echo: ${text}`);

        // A 200 KB file goes to echo-bot and comes back under the same name.
        const name = `echo-${codec}.bin`;
        const file = randomBytes(200_000);
        const hash = sha256Hex(file);
        await offerFile(doctor.page, name, file);
        const received = await bot.waitFor((e) => e.event === "file_received" && e.name === name, 60_000, `file_received ${name}`);
        assert.equal(received.sha256, hash, "echo-bot received the file intact");
        assert.equal(received.size, file.length);
        await doctor.page.locator(`[data-testid="file-outgoing"][data-name="${name}"][data-state="done"]`).waitFor({ state: "visible" });
        const saved = await acceptAndDownload(doctor.page, name);
        const sent = await bot.waitFor((e) => e.event === "file_sent" && e.name === name, 10_000, `file_sent ${name}`);
        assert.equal(sent.sha256, hash);
        assert.equal(saved.sha256, hash, "the echoed file's verified SHA-256 is the original's");
        assert.equal(sha256Hex(saved.bytes), hash, "the saved echoed bytes are the original's");
        assert.equal(saved.suggestedFilename, name);

        t.diagnostic(`browser data channels: ${JSON.stringify(await dataChannelStats(doctor.page))}`);
        const pageWarnings = doctor.console.filter((line) => /console\.(warn|error)\]|pageerror/.test(line) && !/status of 401/.test(line));
        if (pageWarnings.length) t.diagnostic(`doctor page warnings: ${JSON.stringify(pageWarnings)}`);
        const warnings = bot.events.filter((e) => e.event === "warning" || e.event === "chat_rejected" || e.event === "file_failed");
        if (warnings.length) t.diagnostic(`echo-bot warnings: ${JSON.stringify(warnings)}`);
        assert.deepEqual(cspViolations(doctor), [], "no Content-Security-Policy violations");
      });
    });
  }
});
