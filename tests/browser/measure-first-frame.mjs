// Measure the time from the doctor's click on "Admit" to the first remote video frame decoded on
// the patient's side, over several runs (a fresh service and data directory each run, because a
// TOTP code cannot be used twice).
//
// Run: cd tests/browser && node measure-first-frame.mjs [runs]   (default 5)

import { median, runAdmitScenario, withService } from "./harness.mjs";

const runs = Number(process.argv[2] ?? process.env.RUNS ?? 5);
if (!Number.isInteger(runs) || runs < 1) {
  console.error("usage: node measure-first-frame.mjs [runs]");
  process.exit(2);
}

/** @type {number[]} */
const values = [];
for (let i = 1; i <= runs; i++) {
  try {
    await withService({}, async ({ service, people }) => {
      const scenario = await runAdmitScenario(service, { title: `Measurement ${i}`, patientName: `Patient ${i}` });
      people.push(scenario.doctor, scenario.patient);
      values.push(scenario.firstFrameMs);
      console.log(
        `run ${i}/${runs}: FIRST_FRAME_MS=${scenario.firstFrameMs}` +
          (scenario.firstPaintMs !== null ? ` (first presented frame: ${scenario.firstPaintMs} ms)` : ""),
      );
    });
  } catch (err) {
    console.error(`run ${i}/${runs} failed: ${err instanceof Error ? err.stack ?? err.message : err}`);
    process.exitCode = 1;
  }
}

if (values.length > 0) {
  console.log(`FIRST_FRAME_MS values: ${values.join(", ")}`);
  console.log(`FIRST_FRAME_MS median: ${median(values)}`);
}
