// Runs every browser test file (`*.test.mjs`): first the suites that assert real-time figures
// (no video gap over one second while keys rotate) alone, so a neighbour's CPU cannot fail
// them; then every other file two at a time. A new file lands in the second group by itself,
// so none is ever left out. Exits non-zero if any test failed.
//
// Run: cd tests/browser && npm test   (environment: see README.md here)
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";

/** Files that measure timing and must not share the machine with another browser test. */
const ALONE = ["e2ee.test.mjs"];

const here = dirname(fileURLToPath(import.meta.url));
const files = readdirSync(here)
  .filter((f) => f.endsWith(".test.mjs"))
  .sort();
const alone = files.filter((f) => ALONE.includes(f));
const together = files.filter((f) => !ALONE.includes(f));

let failed = false;
for (const [concurrency, group] of [
  [1, alone],
  [2, together],
]) {
  if (group.length === 0) continue;
  const run = spawnSync(process.execPath, ["--test", `--test-concurrency=${concurrency}`, ...group], {
    cwd: here,
    stdio: "inherit",
  });
  failed ||= run.status !== 0;
}
process.exit(failed ? 1 : 0);
