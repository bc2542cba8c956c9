#!/usr/bin/env bash
# The hot paths against their ceilings, measured in one run on this machine, printed as one table:
# path, now, ceiling, ratio. Each ceiling is measured in the same criterion group as its path
# (the cipher a path is built on, or the independent stack it is compared with).
#
#   scripts/bench.sh            SFrame, vault and data channels (criterion, about 7 minutes)
#   scripts/bench.sh --load     the service's rows only, from the load generator (release build
#                               of consult and consult-load, about 6 minutes): admissions a
#                               second at p99 < 100 ms, and recorded consultations per core
#   scripts/bench.sh --all      both
#   scripts/bench.sh --table    the table of the last runs again (or after running one group:
#                               `cargo bench -p consult-benches --bench e2ee`)
#
# Criterion's own reports stay in target/criterion (HTML per benchmark); the load generator's
# reports of the last --load run in target/load-bench.
set -euo pipefail
cd "$(dirname "$0")/.."

criterion=true
load=false
case "${1:-}" in
  --table) criterion=false ;;
  --load) criterion=false; load=true ;;
  --all) load=true ;;
  "") ;;
  *) echo "usage: scripts/bench.sh [--load | --all | --table]" >&2; exit 2 ;;
esac

if $criterion; then
  cargo bench --locked -p consult-benches --bench e2ee --bench vault -- --noplot >&2
  cargo bench --locked -p consult-benches --bench media -- --noplot file_transfer >&2
fi

if $load; then
  cargo build --locked --release -p consult-signaling -p consult-load >&2
  out="$PWD/target/load-bench"
  rm -rf "$out" && mkdir -p "$out"
  generator="$PWD/target/release/consult-load"
  # Admissions: a ladder of rates, each for six seconds of ramp-up (clinicians signed in
  # first), up to the first whose p99 admission is 100 ms or more. Every run starts its own
  # service on loopback and stops it.
  for rate in 100 150 200 250 300 400 500 600 700 800 1000; do
    mkdir -p "$out/admissions-$rate"
    (cd "$out/admissions-$rate" &&
      "$generator" --signaling-only -n $((rate * 6)) --ramp "$rate" --duration 2s >run.log 2>&1)
    p99=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["figures"]["admission_ms"]["p99"])' \
      "$out/admissions-$rate/consult-load-report/report.json")
    echo "admissions: $rate a second, p99 $p99 ms" >&2
    python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) < 100 else 1)' "$p99" || break
  done
  # Recording: 20 recorded 1:1 consultations held for 40 s; the service's CPU per consultation.
  mkdir -p "$out/recorded"
  (cd "$out/recorded" &&
    "$generator" --recorded -n 20 --ramp 4 --duration 40s --decode 0 >run.log 2>&1)
fi

python3 - <<'EOF'
import json, pathlib

root = pathlib.Path("target/criterion")

def mean_ns(group, function, parameter=None):
    path = root / group / function
    if parameter is not None:
        path = path / str(parameter)
    data = json.loads((path / "new" / "estimates.json").read_text())
    # What criterion prints: the slope of time against iterations when it sampled linearly.
    return (data.get("slope") or data["mean"])["point_estimate"]

def time(ns):
    return f"{ns / 1000:.2f} µs" if ns < 1e6 else f"{ns / 1e6:.2f} ms"

def gib_s(nbytes, ns):
    return f"{nbytes / ns * 1e9 / 2**30:.2f} GiB/s"

def mib_s(nbytes, ns):
    return f"{nbytes / ns * 1e9 / 2**20:.1f} MiB/s"

rows = []
# Criterion's rows, when it has run (not after `--load` alone on a fresh tree).
try:
    for name, size in [("SFrame protect+unprotect, 1 KiB Opus frame", ("opus", 1024)),
                       ("SFrame protect+unprotect, 10 KiB Opus frame", ("opus", 10240)),
                       ("SFrame protect+unprotect, 1 KiB H.264 frame", ("h264", 1024)),
                       ("SFrame protect+unprotect, 10 KiB H.264 frame", ("h264", 10240))]:
        now = mean_ns("sframe", size[0], size[1])
        ceiling = mean_ns("sframe", "aes_128_gcm", size[1])
        rows.append((name, time(now), f"AES-128-GCM seal+open {time(ceiling)}", f"{ceiling / now * 100:.0f}%"))
    now = mean_ns("vault", "chunks_in_place", 1048576)
    ceiling = mean_ns("vault", "aes_256_gcm", 1048576)
    rows.append(("vault sealing, 1 MiB chunks", gib_s(1048576, now), f"AES-256-GCM {gib_s(1048576, ceiling)}", f"{ceiling / now * 100:.0f}%"))
    size = 16 * 2**20
    other = mean_ns("file_transfer", "16MiB_webrtc-rs-webrtc-rs (data channel)")
    for name, function in [
            ("file transfer, 16 MiB, loopback, a thread per peer", "16MiB_native-native (consult-file protocol)"),
            ("  the same, one thread for both peers", "16MiB_native-native (one thread for both)"),
            ("  one thread, a system call a datagram (before)", "16MiB_native-native (one thread, a system call a datagram)")]:
        now = mean_ns("file_transfer", function)
        rows.append((name, mib_s(size, now), f"webrtc-rs {mib_s(size, other)} (goal 3×, 100 MiB/s)", f"{other / now:.2f}×"))
except FileNotFoundError:
    pass

load = pathlib.Path("target/load-bench")
def report(run):
    path = load / run / "consult-load-report" / "report.json"
    return json.loads(path.read_text()) if path.exists() else None

ladder = sorted((int(d.name.split("-")[1]), report(d.name)) for d in load.glob("admissions-*"))
ladder = [(rate, r["figures"]["admission_ms"]["p99"]) for rate, r in ladder if r]
if ladder:
    passed = [(rate, p99) for rate, p99 in ladder if p99 < 100]
    failed = [(rate, p99) for rate, p99 in ladder if p99 >= 100]
    now = f"{passed[-1][0]}/s (p99 {passed[-1][1]:.0f} ms)" if passed else f"under {ladder[0][0]}/s"
    if failed:
        now += f"; {failed[0][0]}/s: p99 {failed[0][1]:.0f} ms"
    rows.append(("admissions a second, p99 < 100 ms (SQLite)", now, "goal 1,000/s", f"{(passed[-1][0] if passed else 0) / 1000 * 100:.0f}%"))
recorded = report("recorded")
if recorded:
    per = recorded["service"]["cpu_percent_per_consultation"]
    rows.append(("recorded 1:1 consultations per core", f"{100 / per:.0f} ({per:.2f} % of a core each)", "goal 200", f"{100 / per / 200 * 100:.0f}%"))

widths = [max(len(r[i]) for r in rows + [("path", "now", "ceiling")]) for i in range(3)]
print(f"| {'path':<{widths[0]}} | {'now':<{widths[1]}} | {'ceiling (same run)':<{widths[2]}} | ratio |")
print(f"|{'-' * (widths[0] + 2)}|{'-' * (widths[1] + 2)}|{'-' * (widths[2] + 2)}|-------|")
for name, now, ceiling, ratio in rows:
    print(f"| {name:<{widths[0]}} | {now:<{widths[1]}} | {ceiling:<{widths[2]}} | {ratio:>5} |")
EOF
