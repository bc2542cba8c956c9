#!/usr/bin/env bash
# The hot paths against their ceilings, measured in one run on this machine, printed as one table:
# path, now, ceiling, ratio. Each ceiling is measured in the same criterion group as its path
# (the cipher a path is built on, or the independent stack it is compared with).
#
#   scripts/bench.sh            SFrame, vault and data channels (criterion, about 7 minutes)
#   scripts/bench.sh --table    the table of the last run again (or after running one group:
#                               `cargo bench -p consult-benches --bench e2ee`)
#
# Criterion's own reports stay in target/criterion (HTML per benchmark). The service's figures
# (recorded consultations per core, admissions per second) come from the load generator: see
# "Measuring" in the README.
set -euo pipefail
cd "$(dirname "$0")/.."

run=true
case "${1:-}" in
  --table) run=false ;;
  "") ;;
  *) echo "usage: scripts/bench.sh [--table]" >&2; exit 2 ;;
esac

if $run; then
  cargo bench --locked -p consult-benches --bench e2ee --bench vault -- --noplot >&2
  cargo bench --locked -p consult-benches --bench media -- --noplot file_transfer >&2
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
now = mean_ns("file_transfer", "16MiB_native-native (consult-file protocol)")
other = mean_ns("file_transfer", "16MiB_webrtc-rs-webrtc-rs (data channel)")
rows.append(("file transfer, 16 MiB, loopback", mib_s(size, now), f"webrtc-rs {mib_s(size, other)} (goal 3×)", f"{other / now:.2f}×"))

widths = [max(len(r[i]) for r in rows + [("path", "now", "ceiling")]) for i in range(3)]
print(f"| {'path':<{widths[0]}} | {'now':<{widths[1]}} | {'ceiling (same run)':<{widths[2]}} | ratio |")
print(f"|{'-' * (widths[0] + 2)}|{'-' * (widths[1] + 2)}|{'-' * (widths[2] + 2)}|-------|")
for name, now, ceiling, ratio in rows:
    print(f"| {name:<{widths[0]}} | {now:<{widths[1]}} | {ceiling:<{widths[2]}} | {ratio:>5} |")
EOF
