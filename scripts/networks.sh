#!/usr/bin/env bash
# The figures of calls on emulated networks in one run: native↔native (`consult-e2e`'s
# `emulated` tests), then browser↔browser and browser↔native (`tests/browser/emulated.test.mjs`),
# back to back on this machine, printed as one table grouped by network (README, "Calls on bad
# networks"). As root (network namespaces); builds what it needs. Both suites assert their
# outcomes as in the full test command; this only gathers the rows they print.
#
#   scripts/networks.sh               every network
#   CONSULT_NETWORKS=loss,weak scripts/networks.sh   the browser networks whose names contain these
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "scripts/networks.sh: run as root (network namespaces)" >&2; exit 2; fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

cargo build --locked --quiet -p consult-signaling -p consult-netem -p consult-client --examples
echo "==> native↔native (cargo nextest run -p consult-e2e -E 'test(/^emulated::/)')" >&2
cargo nextest run --locked -p consult-e2e -E 'test(/^emulated::/)' --no-capture -j 1 \
  >"$out/native.log" 2>&1 || { tail -50 "$out/native.log" >&2; exit 1; }
echo "==> browsers (tests/browser/emulated.test.mjs)" >&2
(cd tests/browser && { [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; }) >&2
(cd tests/browser && CONSULT_BIN="$PWD/../../target/debug/consult" \
  ECHO_BOT_BIN="$PWD/../../target/debug/examples/echo-bot" CONSULT_EMULATED_ROWS="$out/browser-rows.txt" \
  node --test emulated.test.mjs) >"$out/browser.log" 2>&1 || { tail -80 "$out/browser.log" >&2; exit 1; }

python3 - "$out/native.log" "$out/browser-rows.txt" <<'PY'
import re, sys
rows = []
for path in sys.argv[1:]:
    for line in open(path, encoding="utf-8", errors="replace"):
        line = re.sub(r"^#\s*", "", line.strip())
        if re.match(r"^\| (native|browser)↔", line) and line not in rows:
            rows.append(line)
def network(row):
    name = row.split("|")[2].strip().lower()
    return re.sub(r"[^a-z0-9]+", " ", name.split("(")[0]).strip()
order = []
for row in rows:
    if network(row) not in order:
        order.append(network(row))
print("| path | network | figures … |")
print("|---|---|---|")
for key in order:
    for row in rows:
        if network(row) == key:
            print(row)
PY
