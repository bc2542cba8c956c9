// The service SIGKILLed mid-call and started again on its data directory (a crash, or a deploy):
// media never touched it and keeps flowing; both pages reconnect their signaling to it, take
// their places back — still admitted, under the same participant ids — and keep the peer
// connection they had; ending the consultation afterwards still reaches the patient.
//
// Run: cd tests/browser && node --test restart.test.mjs   (environment: see README.md here)
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { assertBackOnTheSameConnection, assertMediaKeepsFlowing, byTestId, endConsultation, joinedSince, protectedBothWays, startCall, waitForPlacesBack, withService } from "./harness.mjs";


describe("restart mid-call", { timeout: 240_000 }, () => {
  for (const e2ee of [false, true]) {
    test(`SIGKILL and restart${e2ee ? " (end-to-end encrypted)" : ""}: both pages come back into the call on the same peer connection${e2ee ? " and keys" : ""}, media never stops, and ending still reaches the patient`, { timeout: 180_000 }, async (t) => {
      await withService({}, async (scope) => {
        const { service } = scope;
        const { doctor, patient } = await startCall(scope, { title: "Restart mid-call", mode: "live_only", e2ee });
        const people = [doctor, patient];
        const codes = e2ee ? (await protectedBothWays(people)).map((s) => s.sas) : [];
        const before = await Promise.all(people.map((p) => p.page.evaluate(() => {
          const pc = /** @type {any} */ (window).consultPc;
          pc.__beforeRestart = true;
          return (/** @type {any} */ (window)).consultPc === pc;
        })));
        assert.deepEqual(before, [true, true], "both pages have a live peer connection");
        const firstJoined = people.map((p) => joinedSince(p.frames, 0).at(-1));

        await service.halt({ signal: "SIGKILL" });
        const killedAt = Date.now();
        // The outage: signaling is gone, media is not.
        await byTestId(doctor.page, "call-status").filter({ hasText: "Connection lost" }).waitFor({ timeout: 15_000 });
        await assertMediaKeepsFlowing(people, 2000);
        await service.restart({ samePort: true });

        // Both pages rejoin on their own: admitted, resumed, the same participant ids and peers.
        const again = await waitForPlacesBack(people, killedAt, firstJoined);
        for (const [i, p] of people.entries()) assert.equal(again[i].peers.length, 1, `${p.label}: the other is among the peers`);
        const backAt = Date.now();
        t.diagnostic(`both pages rejoined ${backAt - killedAt} ms after the SIGKILL`);
        await assertBackOnTheSameConnection(people, "__beforeRestart", e2ee ? codes : null);
        // No new admission was asked of the doctor: the waiting room stayed empty.
        const waiting = doctor.frames.filter((f) => f.direction === "in" && f.at >= killedAt && f.message?.type === "waiting_room");
        assert.ok(waiting.every((f) => f.message.entries.length === 0), "nobody back in the waiting room");

        await endConsultation(doctor.page, patient.page);
      });
    });
  }
});
