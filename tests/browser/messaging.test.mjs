// The chat and file-transfer protocol of the web demo (web-demo/assets/messaging.js and
// file-transfer.js), inside one headless Chromium page served by the service:
//
// - two RTCPeerConnections in the page where BOTH sides create `consult-chat` and `consult-file`
//   (the glare case): every message arrives exactly once, a 3 MB file arrives intact, and the
//   sender's `bufferedAmount` never goes past 64 KiB;
// - a receiver fed by hand (a fake channel) refuses what the native core refuses: chunks out of
//   order or past the offered size, a short file, a wrong SHA-256, an oversized offer, a bad name,
//   binary or over-long chat frames; nothing partial is ever handed out.
//
// Run: cd tests/browser && npm test   (or: node --test messaging.test.mjs)

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { cspViolations, launchParticipant, withService } from "./harness.mjs";

/**
 * Run `body` with a page of a fresh service's origin (any page will do: the modules are imported
 * from it), through `withService`.
 * @param {(page: import('./harness.mjs').Participant) => Promise<void>} body
 */
function withProtocolPage(body) {
  return withService({}, async ({ service, people }) => {
    const page = await launchParticipant("protocol page", { origin: service.url });
    people.push(page);
    await page.page.goto(`${service.url}/join`);
    await page.page.locator('[data-testid="no-link-message"]').waitFor({ state: "visible" });
    await body(page);
  });
}

describe("chat and file protocol in the page", { timeout: 180_000 }, () => {
  test("glare: both sides create the channels; chat once each way, a 3 MB file intact, bufferedAmount ≤ 64 KiB", { timeout: 90_000 }, async (t) => {
    await withProtocolPage(async (page) => {
      const result = await page.page.evaluate(async () => {
        const { Messaging } = await import("/assets/messaging.js");
        const { sha256Hex } = await import("/assets/file-transfer.js");
        /** @param {number} ms */
        const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
        /** @param {() => boolean} cond @param {number} ms @param {string} what */
        const until = async (cond, ms, what) => {
          const end = Date.now() + ms;
          while (!cond()) {
            if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
            await sleep(20);
          }
        };
        let maxBuffered = 0;
        /** @param {string} name */
        const side = (name) => {
          const pc = new RTCPeerConnection();
          /** @type {string[]} */
          const chats = [];
          /** @type {string[]} */
          const refused = [];
          /** @type {any[]} */
          const transfers = [];
          const messaging = new Messaging({
            onChat: (text) => chats.push(text),
            onChatRefused: (why) => refused.push(why),
            onTransfer: (t) => transfers.push(t),
            onChannels: () => {},
          });
          /** @param {RTCDataChannel} channel */
          const adopt = (channel) => {
            if (channel.label === "consult-file") {
              const send = channel.send.bind(channel);
              channel.send = (/** @type {any} */ data) => {
                send(data);
                maxBuffered = Math.max(maxBuffered, channel.bufferedAmount);
              };
            }
            messaging.addChannel(channel, "other");
          };
          pc.ondatachannel = ({ channel }) => adopt(channel);
          adopt(pc.createDataChannel("consult-chat", { ordered: true }));
          adopt(pc.createDataChannel("consult-file", { ordered: true }));
          return { name, pc, messaging, chats, refused, transfers };
        };
        const a = side("a");
        const b = side("b");
        a.pc.onicecandidate = ({ candidate }) => candidate && b.pc.addIceCandidate(candidate);
        b.pc.onicecandidate = ({ candidate }) => candidate && a.pc.addIceCandidate(candidate);
        await a.pc.setLocalDescription();
        await b.pc.setRemoteDescription(/** @type {RTCSessionDescription} */ (a.pc.localDescription));
        await b.pc.setLocalDescription();
        await a.pc.setRemoteDescription(/** @type {RTCSessionDescription} */ (b.pc.localDescription));
        // Four channels per side: two created, two announced by the other side.
        await until(
          () => a.messaging.peers.get("other")?.chatChannels.length === 2 && a.messaging.peers.get("other")?.fileChannels.length === 2 && b.messaging.peers.get("other")?.chatChannels.length === 2 && b.messaging.peers.get("other")?.fileChannels.length === 2,
          20_000,
          "four open channels on each side",
        );
        a.messaging.sendChat("from a");
        b.messaging.sendChat("from b");
        const data = new Uint8Array(3 * 1024 * 1024 + 12345);
        for (let i = 0; i < data.length; i += 65536) crypto.getRandomValues(data.subarray(i, Math.min(i + 65536, data.length)));
        const expected = await sha256Hex(data.buffer);
        await a.messaging.offerFile(new File([data], "scan.pdf", { type: "application/pdf" }));
        await until(() => b.transfers.some((t) => t.state === "offered"), 10_000, "the offer");
        const offered = b.transfers.find((t) => t.state === "offered");
        b.messaging.files("other").accept(offered.id);
        await until(() => b.transfers.some((t) => t.state === "done" || t.state === "failed"), 60_000, "the file");
        await until(() => a.transfers.some((t) => t.state === "done" || t.state === "failed"), 10_000, "the sender's completion");
        const done = b.transfers.find((t) => t.state === "done");
        const got = done ? await sha256Hex(await done.blob.arrayBuffer()) : null;
        await sleep(200); // a duplicate chat message would have arrived by now
        const out = {
          aChats: a.chats,
          bChats: b.chats,
          refused: [...a.refused, ...b.refused],
          offered: { name: offered.name, size: offered.size, mime: offered.mime, sha256: offered.sha256 },
          expected,
          got,
          size: data.length,
          receivedStates: [...new Set(b.transfers.map((t) => t.state))],
          sentStates: [...new Set(a.transfers.map((t) => t.state))],
          progressSteps: b.transfers.filter((t) => t.state === "receiving").length,
          maxBuffered,
          blobType: done ? done.blob.type : null,
        };
        a.pc.close();
        b.pc.close();
        return out;
      });
      t.diagnostic(`max bufferedAmount ${result.maxBuffered}, ${result.progressSteps} progress updates, ${result.size} bytes`);
      assert.deepEqual(result.aChats, ["from b"]);
      assert.deepEqual(result.bChats, ["from a"]);
      assert.deepEqual(result.refused, []);
      assert.deepEqual(result.offered, { name: "scan.pdf", size: result.size, mime: "application/pdf", sha256: result.expected });
      assert.equal(result.got, result.expected, "the received file's SHA-256");
      assert.deepEqual(result.receivedStates, ["offered", "receiving", "verifying", "done"]);
      assert.ok(result.sentStates.includes("done"), `sender states ${result.sentStates}`);
      assert.ok(result.progressSteps > 100, `receiver progress updates: ${result.progressSteps}`);
      assert.ok(result.maxBuffered > 0 && result.maxBuffered <= 64 * 1024, `max bufferedAmount ${result.maxBuffered}`);
      assert.equal(result.blobType, "application/octet-stream", "a received file is never typed as the sender says");
      assert.deepEqual(cspViolations(page), []);
    });
  });

  test("a receiver refuses what the native core refuses and never hands out partial data", { timeout: 60_000 }, async () => {
    await withProtocolPage(async (page) => {
      const result = await page.page.evaluate(async () => {
        const { Messaging } = await import("/assets/messaging.js");
        const { encodeChunk, sha256Hex, uuidHex } = await import("/assets/file-transfer.js");
        /** A channel that records what is sent and lets the test deliver frames. */
        const fake = (/** @type {string} */ label) => {
          /** @type {any} */
          const channel = {
            label,
            readyState: "open",
            bufferedAmount: 0,
            bufferedAmountLowThreshold: 0,
            binaryType: "blob",
            /** @type {any[]} */
            sent: [],
            /** @param {any} data */
            send(data) {
              this.sent.push(typeof data === "string" ? JSON.parse(data) : data);
            },
            close() {
              this.readyState = "closed";
            },
            onopen: null,
            onclose: null,
            onmessage: null,
            onerror: null,
            onbufferedamountlow: null,
          };
          return channel;
        };
        /** @type {Record<string, any>} */
        const results = {};
        const chatRefused = /** @type {string[]} */ ([]);
        /** @type {any[]} */
        let transfers = [];
        const messaging = new Messaging({
          onChat: () => {},
          onChatRefused: (why) => chatRefused.push(why),
          onTransfer: (t) => transfers.push(t),
          onChannels: () => {},
        });
        const chat = fake("consult-chat");
        const file = fake("consult-file");
        messaging.addChannel(chat, "peer");
        messaging.addChannel(file, "peer");
        /** @param {any} data */
        const deliver = (channel, data) => channel.onmessage({ data });
        const settle = () => new Promise((r) => setTimeout(r, 50));

        // Chat: binary frames and messages over 4096 bytes are refused; sending one is refused too.
        deliver(chat, new ArrayBuffer(4));
        deliver(chat, "x".repeat(4097));
        results.chatRefused = chatRefused.length;
        results.sendTooLong = messaging.sendChat("é".repeat(2049));
        results.chatSent = chat.sent.length;

        const body = new TextEncoder().encode("0123456789");
        const goodHash = await sha256Hex(body.buffer);
        /**
         * Offer as a lying sender would, accept, then run `steps`; returns the receiver's verdict.
         * @param {{ size: number, sha256?: string, name?: string }} offer
         * @param {(key: string, id: string) => void} steps
         */
        const scenario = async (offer, steps) => {
          transfers = [];
          file.sent = [];
          const id = crypto.randomUUID();
          const key = /** @type {string} */ (uuidHex(id));
          deliver(file, JSON.stringify({ type: "offer", id, name: offer.name ?? "x.bin", size: offer.size, mime: "a/b", sha256: offer.sha256 ?? goodHash }));
          if (transfers.some((t) => t.state === "offered")) messaging.files("peer").accept(id);
          steps(key, id);
          await settle();
          await settle();
          return {
            states: [...new Set(transfers.map((t) => t.state))],
            reason: transfers.length ? transfers[transfers.length - 1].reason : null,
            handedOut: transfers.some((t) => t.blob),
            sent: file.sent.filter((m) => !(m instanceof Uint8Array)).map((m) => `${m.type}${m.reason ? `:${m.reason}` : ""}${m.offset !== undefined ? `@${m.offset}` : ""}`),
            idsHyphenated: file.sent.every((m) => m instanceof Uint8Array || /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(m.id)),
          };
        };
        results.good = await scenario({ size: 10 }, (key, id) => {
          deliver(file, encodeChunk(key, 0, body.subarray(0, 4)).buffer);
          deliver(file, encodeChunk(key, 4, body.subarray(4)).buffer);
          deliver(file, JSON.stringify({ type: "done", id }));
        });
        results.beyond = await scenario({ size: 5 }, (key) => deliver(file, encodeChunk(key, 0, body).buffer));
        results.incomplete = await scenario({ size: 20 }, (key, id) => {
          deliver(file, encodeChunk(key, 0, body).buffer);
          deliver(file, JSON.stringify({ type: "done", id }));
        });
        results.hash = await scenario({ size: 10, sha256: "ab".repeat(32) }, (key, id) => {
          deliver(file, encodeChunk(key, 0, body).buffer);
          deliver(file, JSON.stringify({ type: "done", id }));
        });
        results.order = await scenario({ size: 10 }, (key) => deliver(file, encodeChunk(key, 5, body.subarray(5)).buffer));
        results.tooLarge = await scenario({ size: 100 * 1024 * 1024 + 1 }, () => {});
        results.badName = await scenario({ size: 10, name: "../etc/passwd" }, () => {});
        results.controlName = await scenario({ size: 10, name: "a\u0007b" }, () => {});
        results.longName = await scenario({ size: 10, name: "é".repeat(128) }, () => {});
        results.peerCancel = await scenario({ size: 10 }, (key, id) => {
          deliver(file, encodeChunk(key, 0, body.subarray(0, 4)).buffer);
          deliver(file, JSON.stringify({ type: "cancel", id }));
        });
        // A chunk nobody accepted and garbage are reported, not trusted.
        transfers = [];
        deliver(file, encodeChunk("00".repeat(16), 0, body).buffer);
        deliver(file, new ArrayBuffer(3));
        deliver(file, "not json");
        deliver(file, JSON.stringify({ type: "nope", id: crypto.randomUUID() }));
        results.garbageTransfers = transfers.length;
        // A name the sender may not use is refused locally.
        let refusedName = "";
        try {
          await messaging.offerFile(new File([body], "a/b.txt"));
        } catch (err) {
          refusedName = String(/** @type {any} */ (err).code);
        }
        results.refusedName = refusedName;
        return results;
      });
      assert.equal(result.chatRefused, 2, "binary and over-long chat frames are refused");
      assert.match(result.sendTooLong ?? "", /message too long/i);
      assert.equal(result.chatSent, 0);
      assert.deepEqual(result.good, { states: ["offered", "receiving", "verifying", "done"], reason: "", handedOut: true, sent: ["accept@0", "ack@10", "complete"], idsHyphenated: true });
      assert.deepEqual(result.beyond, { states: ["offered", "receiving", "failed"], reason: "beyond_size", handedOut: false, sent: ["accept@0", "error:beyond_size"], idsHyphenated: true });
      assert.deepEqual(result.incomplete, { states: ["offered", "receiving", "failed"], reason: "incomplete", handedOut: false, sent: ["accept@0", "error:incomplete"], idsHyphenated: true });
      assert.deepEqual(result.hash, { states: ["offered", "receiving", "verifying", "failed"], reason: "hash_mismatch", handedOut: false, sent: ["accept@0", "ack@10", "error:hash_mismatch"], idsHyphenated: true });
      assert.deepEqual(result.order, { states: ["offered", "receiving", "failed"], reason: "out_of_order", handedOut: false, sent: ["accept@0", "error:out_of_order"], idsHyphenated: true });
      assert.deepEqual(result.tooLarge, { states: ["failed"], reason: "too_large", handedOut: false, sent: ["reject:too_large"], idsHyphenated: true });
      for (const key of ["badName", "controlName", "longName"]) {
        assert.deepEqual(result[key], { states: [], reason: null, handedOut: false, sent: ["error:invalid_offer"], idsHyphenated: true }, key);
      }
      assert.deepEqual(result.peerCancel, { states: ["offered", "receiving", "failed"], reason: "cancelled_by_peer", handedOut: false, sent: ["accept@0"], idsHyphenated: true });
      assert.equal(result.garbageTransfers, 0);
      assert.equal(result.refusedName, "invalid_name");
    });
  });
});
