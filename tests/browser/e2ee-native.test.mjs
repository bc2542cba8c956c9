// End-to-end encryption between the web demo and the native media core: the doctor is headless
// Chromium, the patient the `echo-bot` example (crates/client/examples/echo-bot.rs), in a
// consultation created with "End-to-end encryption". Once with H.264 and once with VP8: both
// show the same security code, the browser decodes echo-bot's video and audio through its SFrame
// worker and shows the lock badge, echo-bot decodes the browser's 640x480 video and audio
// through its key schedule, both count frames protected and opened with no tampering, and a
// chat message and a file come back sealed. Then echo-bot with `--without-e2ee-keys` (a peer
// that cannot do E2EE): no media either way, and the page says why.
//
// Run: cd tests/browser && node --test e2ee-native.test.mjs
// Needs the service (CONSULT_BIN), echo-bot (ECHO_BOT_BIN; skipped without it unless
// CONSULT_REQUIRE_NATIVE=1) and /usr/bin/chromium.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";

import {
  acceptAndDownload,
  byTestId,
  doctorWithEchoBot,
  e2eeSnapshot,
  cspViolations,
  ECHO_BOT_MISSING,
  inboundStats,
  offerFile,
  sendChat,
  sha256Hex,
  waitForChat,
  withService,
} from "./harness.mjs";

describe("end-to-end encryption between the browser and the native echo-bot", { timeout: 600_000 }, () => {
  for (const codec of ["h264", "vp8"]) {
    test(`${codec}: equal codes, media both ways through SFrame, sealed chat and file`, { timeout: 240_000, skip: ECHO_BOT_MISSING }, async (t) => {
      await withService({}, async (scope) => {
        const { doctor, bot } = await doctorWithEchoBot(scope, { label: `doctor (${codec})`, title: `E2EE echo ${codec}`, e2ee: true, bot: { codec } });
        const page = doctor.page;

        // The same security code on both sides.
        const botSas = await bot.waitFor((e) => e.event === "e2ee_sas", 20_000, "e2ee_sas event");
        await page.waitForFunction(() => /^\d{4} \d{4}$/.test(document.querySelector('[data-testid="e2ee-sas"]')?.textContent ?? ""));
        assert.equal((await byTestId(page, "e2ee-sas").textContent()) ?? "", botSas.sas, "the browser and echo-bot show the same code");
        await bot.waitFor((e) => e.event === "e2ee_send_key", 20_000, "e2ee_send_key event");
        await bot.waitFor((e) => e.event === "e2ee_receive_key", 20_000, "e2ee_receive_key event");

        // The browser opens echo-bot's frames and decodes them; it protects its own.
        const deadline = Date.now() + 30_000;
        /** @type {any} */
        let media = null;
        /** @type {any} */
        let snapshot = null;
        while (Date.now() < deadline) {
          media = await inboundStats(page).catch((err) => ({ error: String(err) }));
          snapshot = await e2eeSnapshot(page).catch(() => null);
          const w = snapshot && snapshot.worker;
          if (media && media.framesDecoded > 0 && media.audioPackets > 0 && w && w.receive.video.ok > 0 && w.receive.audio.ok > 0 && w.send.video.ok > 0 && w.send.audio.ok > 0 && snapshot.badge) break;
          await sleep(250);
        }
        t.diagnostic(`browser inbound: ${JSON.stringify(media)}`);
        t.diagnostic(`browser e2ee: ${JSON.stringify(snapshot)}`);
        assert.ok(media && media.framesDecoded > 0 && media.audioPackets > 0, `the browser decodes echo-bot's media: ${JSON.stringify(media)}`);
        const w = snapshot.worker;
        assert.ok(w.receive.video.ok > 0 && w.receive.audio.ok > 0, "the browser opened echo-bot's video and audio frames");
        assert.ok(w.send.video.ok > 0 && w.send.audio.ok > 0, "the browser protected its video and audio frames");
        assert.equal(w.receive.video.codec, codec);
        assert.equal(w.rejected.tampered, 0, `no tampered frames: ${JSON.stringify(w.rejected)}`);
        assert.ok(snapshot.badge, "the lock badge shows");
        await byTestId(page, "e2ee-badge").waitFor({ state: "visible" });

        // echo-bot opens the browser's frames and decodes 640x480 video and audio.
        const stats = await bot.waitFor(
          (e) => e.event === "stats" && e.video_decoded > 0 && e.audio_decoded > 0 && e.width === 640 && e.height === 480,
          30_000,
          "stats line with decoded 640x480 video and decoded audio",
        );
        assert.equal(stats.codec, codec);
        const connection = await bot.waitFor((e) => e.event === "connection" && e.e2ee && e.e2ee.opened > 0 && e.e2ee.protected > 0, 20_000, "connection line with E2EE counts");
        t.diagnostic(`echo-bot e2ee: ${JSON.stringify(connection.e2ee)}`);
        assert.equal(connection.e2ee.rejected?.tampered ?? 0, 0, "echo-bot saw no tampered frame");

        // Chat and a file go through the sealed channels and come back.
        const text = `Sealed hello (${codec}) ✓`;
        await sendChat(page, text);
        await bot.waitFor((e) => e.event === "chat" && e.text === text, 20_000, `chat event ${JSON.stringify(text)}`);
        await waitForChat(page, "in", `echo: ${text}`);
        const name = `sealed-${codec}.bin`;
        const file = randomBytes(100_000);
        await offerFile(page, name, file);
        const received = await bot.waitFor((e) => e.event === "file_received" && e.name === name, 60_000, `file_received ${name}`);
        assert.equal(received.sha256, sha256Hex(file), "echo-bot received the file intact");
        await page.locator(`[data-testid="file-outgoing"][data-name="${name}"][data-state="done"]`).waitFor({ state: "visible" });
        const saved = await acceptAndDownload(page, name);
        assert.equal(sha256Hex(saved.bytes), sha256Hex(file), "the echoed file is intact");
        const data = (await e2eeSnapshot(page)).data;
        assert.ok(data.protected > 0 && data.opened > 0, `messages sealed both ways: ${JSON.stringify(data)}`);
        assert.equal(data.rejected.tampered + data.rejected.unprotected, 0);

        assert.deepEqual(cspViolations(doctor), [], "no Content-Security-Policy violations");
      });
    });
  }

  test("a peer that cannot do E2EE gets no media either way, and the page says why", { timeout: 180_000, skip: ECHO_BOT_MISSING }, async (t) => {
    await withService({}, async (scope) => {
      const { doctor, bot } = await doctorWithEchoBot(scope, {
        label: "doctor (vp8)",
        title: "E2EE echo vp8",
        e2ee: true,
        bot: { codec: "vp8", extraArgs: ["--without-e2ee-keys"] },
      });
      const page = doctor.page;
      await page.waitForFunction(
        () => /end-to-end encrypted.*cannot encrypt/i.test(document.querySelector('[data-testid="call-status"]')?.textContent ?? ""),
        null,
        { timeout: 30_000 },
      );
      const snapshot = await e2eeSnapshot(page);
      t.diagnostic(`browser e2ee: ${JSON.stringify(snapshot)}`);
      assert.equal(snapshot.problem, "peer-unsupported");
      assert.equal(snapshot.badge, false);
      assert.equal(snapshot.sas, null);
      assert.ok(await byTestId(page, "e2ee-badge").isHidden(), "no lock badge");
      const media = await inboundStats(page);
      assert.equal(media?.framesDecoded, 0, `the browser decoded nothing: ${JSON.stringify(media)}`);
      assert.equal(snapshot.worker.receive.video.ok, 0, "no frame opened");
      assert.equal(snapshot.worker.send.video.ok, 0, "nothing protected: no key");
      assert.ok(snapshot.worker.send.video.droppedWithoutKey > 0, "the browser's frames were dropped, not sent in the clear");
      const botStats = bot.events.filter((e) => e.event === "stats");
      assert.ok(botStats.every((e) => !(e.video_decoded > 0)), `echo-bot decoded no video: ${JSON.stringify(botStats.at(-1))}`);
    });
  });
});
