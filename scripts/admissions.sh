#!/usr/bin/env bash
# Admissions at one rate, with the CPU each process spent per consultation: runs
# `consult-load --signaling-only -n <6 × RATE> --ramp RATE --duration 2s` (it starts its own
# service on loopback and stops it) and reads both processes' CPU time from /proc from the
# first join to the end of the run. Build first:
#   cargo build --release -p consult-signaling -p consult-load
# usage: scripts/admissions.sh RATE
set -euo pipefail
rate=${1:?usage: scripts/admissions.sh RATE}
root="$(cd "$(dirname "$0")/.." && pwd)"
generator="${LOAD_BIN:-$root/target/release/consult-load}"
run=$(mktemp -d)
trap 'rm -rf "$run"' EXIT
cd "$run"
"$generator" --signaling-only -n $((rate * 6)) --ramp "$rate" --duration 2s >run.log 2>&1 &
load=$!
until grep -q joining run.log 2>/dev/null; do
  kill -0 "$load" 2>/dev/null || { cat run.log >&2; exit 1; }
  sleep 0.1
done
service=$(pgrep -P "$load" -f "serve" | head -1)
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
s0=$(cpu "$service"); g0=$(cpu "$load")
until grep -q finishing run.log; do sleep 0.1; done
s1=$(cpu "$service"); g1=$(cpu "$load")
wait "$load" || true
python3 - "$s0" "$s1" "$g0" "$g1" $((rate * 6)) <<'PY'
import json, sys
s0, s1, g0, g1, n = map(float, sys.argv[1:])
report = json.load(open("consult-load-report/report.json"))
a = report["figures"]["admission_ms"]
print(f"{int(n / 6)}/s: service {(s1 - s0) / n * 1000:.2f} ms of CPU a consultation, "
      f"generator {(g1 - g0) / n * 1000:.2f} ms; admission p50 {a['p50']:.0f} ms, "
      f"p99 {a['p99']:.0f} ms; failed {report['counts'].get('failed')}")
PY
