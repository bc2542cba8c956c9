#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets, libFuzzer through cargo-fuzz) for SECONDS each
# (default 60), starting from the committed seed corpus (fuzz/corpus/TARGET, never modified here;
# what the run finds goes to target/fuzz-corpus/TARGET). Exit 1 after a crash, whose input
# libFuzzer leaves in fuzz/artifacts/TARGET/ — turn it into a regression test.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#   FUZZ_RUNS=10000000 scripts/fuzz.sh 1800     # a campaign: 10 M executions or 30 min each
#   FUZZ_PROFILE=dev FUZZ_JOBS=2 scripts/fuzz.sh 10   # the test command's smoke run
#
# FUZZ_PROFILE=dev builds without optimisation (half the build time, fewer executions: for
# smoke runs); the default is optimised. FUZZ_JOBS targets run at once (default 1).
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
case "${FUZZ_PROFILE:-release}" in
  release) profile=(-O) ;;
  dev) profile=(--dev) ;;
  *) echo "FUZZ_PROFILE is release or dev" >&2; exit 2 ;;
esac
(cd fuzz && cargo fuzz build "${profile[@]}" -s none)

# One target: the summary lines only (executions, coverage, corpus, a crash), printed when it ends.
run_target() {
  local target=$1 found="target/fuzz-corpus/$1" out
  mkdir -p "$found" "fuzz/artifacts/$target"
  out=$( (cd fuzz && cargo fuzz run "${profile[@]}" -s none "$target" "../$found" "corpus/$target" -- \
      -max_total_time="$seconds" ${FUZZ_RUNS:+-runs="$FUZZ_RUNS"} -rss_limit_mb=2048 -timeout=10 \
      -print_final_stats=1 2>&1) \
    | grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE|==[0-9]+== ERROR|SUMMARY|thread '.*' panicked|Test unit written)" || true)
  printf '== %s (%ss)\n%s\n' "$target" "$seconds" "$out"
  if [ -n "$(ls -A "fuzz/artifacts/$target" 2>/dev/null)" ]; then
    echo "$target: crash input(s) in fuzz/artifacts/$target" >&2
    return 1
  fi
}

jobs="${FUZZ_JOBS:-1}"
failed=0
running=0
for target in "${targets[@]}"; do
  run_target "$target" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
exit "$failed"
