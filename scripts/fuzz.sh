#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets, libFuzzer through cargo-fuzz) for SECONDS each
# (default 60), starting from the committed seed corpus (fuzz/corpus/TARGET, never modified here;
# what the run finds goes to target/fuzz-corpus/TARGET). Exit 1 on the first crash, whose input
# libFuzzer leaves in fuzz/artifacts/TARGET/ — turn it into a regression test.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#   FUZZ_RUNS=10000000 scripts/fuzz.sh 1800     # a campaign: 10 M executions or 30 min each
#
# Builds with the stable toolchain and no sanitizer (`-s none`; AddressSanitizer needs nightly):
# Rust's own checks still turn memory errors into panics. Installs cargo-fuzz if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
if ! command -v cargo-fuzz >/dev/null; then
  cargo install --locked --quiet cargo-fuzz
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi
(cd fuzz && cargo fuzz build -O -s none)
for target in "${targets[@]}"; do
  found="target/fuzz-corpus/$target"
  mkdir -p "$found" "fuzz/artifacts/$target"
  echo "== $target (${seconds}s)"
  # Only the summary lines: executions, coverage, corpus.
  if ! (cd fuzz && cargo fuzz run -O -s none "$target" "../$found" "corpus/$target" -- \
      -max_total_time="$seconds" ${FUZZ_RUNS:+-runs="$FUZZ_RUNS"} -rss_limit_mb=2048 -timeout=10 \
      -print_final_stats=1 2>&1) \
      | grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE|==[0-9]+== ERROR|SUMMARY|thread '.*' panicked|Test unit written)" ; then
    :
  fi
  if [ -n "$(ls -A "fuzz/artifacts/$target" 2>/dev/null)" ]; then
    echo "$target: crash input(s) in fuzz/artifacts/$target" >&2
    exit 1
  fi
done
