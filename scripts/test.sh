#!/usr/bin/env bash
# Runs every test of Consult: Rust unit, integration and doc tests; the type check of the web demo;
# and the browser end-to-end tests in Debian's headless Chromium. Installs what it needs first
# (idempotently, quietly when already present). Builds once and reuses the build.
#
#   scripts/test.sh           everything (what CI runs)
#   scripts/test.sh --quick   the inner loop: unit, sans-IO and API tests (no media end to end,
#                             no load runs, no browsers, no doc tests)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
case "${1:-}" in
  --quick) quick=true ;;
  "") ;;
  *) echo "usage: scripts/test.sh [--quick]" >&2; exit 2 ;;
esac

# Each phase's name and start, printed again as one table when the script ends (passed or not),
# so the last lines of a CI log say where its time went.
phases=()
log() {
  printf '\n==> %s (%ss)\n' "$*" "$SECONDS"
  phases+=("$SECONDS ${*%% (*}")
}
phase_times() {
  local i start name end
  printf '\n==> time per phase (s), %ss in all\n' "$SECONDS"
  for i in "${!phases[@]}"; do
    start=${phases[$i]%% *}
    name=${phases[$i]#* }
    end=$SECONDS
    [ $((i + 1)) -lt ${#phases[@]} ] && end=${phases[$((i + 1))]%% *}
    [ "$name" = "all tests passed" ] || printf '%6s  %s\n' "$((end - start))" "$name"
  done
}
cleanups=()
on_exit() {
  local c
  phase_times
  for c in "${cleanups[@]}"; do eval "$c" || true; done
}
trap on_exit EXIT

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to install: $*" >&2; return 1; fi
}

# --- System packages: Chromium for the browser tests; libopus, libvpx, nasm (OpenH264's assembly)
# and pkg-config for the media client's codecs (never the service's); coturn for the relay tests;
# promtool (Debian's prometheus) for the shipped alerting rules; PostgreSQL and Redis, what a
# deployment of several nodes runs on. -----------------------------------------------------------
missing=()
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v nasm >/dev/null || missing+=(nasm)
command -v g++ >/dev/null || missing+=(g++)
for pkg in libopus-dev libvpx-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# The service tests run deployments of several nodes on a real Redis (quick tier too), and back
# them up with restic, the backup engine `consult backup` drives.
command -v redis-server >/dev/null || missing+=(redis-server)
command -v restic >/dev/null || missing+=(restic)
# The emulated networks (consult-netem): namespaces, veth and tbf from iproute2, drops from nftables.
command -v ip >/dev/null && command -v tc >/dev/null || missing+=(iproute2)
command -v nft >/dev/null || missing+=(nftables)
# Medical certificates' PDFs are read back: their text (poppler) and their QR code (zbar).
command -v pdftotext >/dev/null || missing+=(poppler-utils)
command -v zbarimg >/dev/null || missing+=(zbar-tools)
if ! $quick; then
  command -v chromium >/dev/null || missing+=(chromium)
  command -v turnserver >/dev/null || missing+=(coturn)
  command -v ffprobe >/dev/null || missing+=(ffmpeg)
  command -v node >/dev/null || missing+=(nodejs npm)
  command -v python3 >/dev/null || missing+=(python3)
  command -v promtool >/dev/null || missing+=(prometheus)
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
  # The load balancer in front of a deployment's nodes.
  [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing+=(nginx-light)
  # The API fuzzing installs schemathesis into a virtual environment.
  python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The tools install unoptimised (`--debug`) and without incremental caches: they run for seconds
# and compile for minutes. Measured on 2 cores, one beside the other: cargo-nextest 436
# CPU-seconds against 1,004 optimised, cargo-deny 151 against 346; they run slower by about 1 s
# (nextest, 95 tests) and 4 s (cargo-deny's checks).
install_tools() { CARGO_INCREMENTAL=0 cargo install --debug --locked --quiet "$@"; }

# cargo-nextest runs the tests of every crate in parallel, each in its own process. It installs
# beside the build (nothing needs it before the build is done).
nextest_pid=
if ! command -v cargo-nextest >/dev/null; then
  log "installing cargo-nextest (beside the build)"
  nextest_log=$(mktemp)
  install_tools cargo-nextest >"$nextest_log" 2>&1 &
  nextest_pid=$!
fi
wait_for_nextest() {
  [ -n "$nextest_pid" ] || return 0
  if ! wait "$nextest_pid"; then cat "$nextest_log" >&2; echo "installing cargo-nextest failed" >&2; exit 1; fi
  nextest_pid=
}

# --- Rust: build everything once, then run every test against that build. --------------------
# The benchmarks (criterion, `cargo bench -p consult-benches`) are not tests: clippy checks that
# they build, and leaving them out here saves building criterion.
rust=(--workspace --exclude consult-benches --locked)
# A build from scratch (a clean clone, CI) gains nothing from incremental caches and pays to write
# them; a developer's later builds keep them.
if [ ! -d target/debug ] && [ -z "${CARGO_INCREMENTAL:-}" ]; then
  export CARGO_INCREMENTAL=0
fi
# The checking tools (cargo-deny, cargo-fuzz) and the fuzz targets (their own workspace, built
# with coverage instrumentation, unoptimised for the smoke run) build beside the workspace, at a
# lower priority (nice): nothing needs them until the Rust tests are done, so they take the CPU
# the build and the tests leave (linking, the build's narrow tail, tests waiting on the network).
if ! $quick; then
  tools=()
  command -v cargo-deny >/dev/null || tools+=(cargo-deny)
  command -v cargo-fuzz >/dev/null || tools+=(cargo-fuzz)
  tools_log=$(mktemp)
  (
    renice -n 10 -p "$BASHPID" >/dev/null
    if [ ${#tools[@]} -gt 0 ]; then install_tools "${tools[@]}"; fi
    cd fuzz && cargo fuzz build --dev -s none
  ) >"$tools_log" 2>&1 &
  tools_pid=$!
fi
# Garage (a replicated S3 store, from crates.io) for the object-storage tests: built once into
# target/tools, beside the workspace build (scripts/garage.sh install: unoptimised, only what
# the tests use).
if ! $quick; then
  garage_log=$(mktemp)
  scripts/garage.sh install >"$garage_log" 2>&1 &
  garage_pid=$!
fi
# The Node packages of the web demo and the browser tests install beside the build.
if ! $quick; then
  npm_log=$(mktemp)
  ( (cd web-demo && npm ci --no-audit --no-fund --loglevel=error) &&
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error) ) >"$npm_log" 2>&1 &
  npm_pid=$!
fi
log "cargo build (all targets)"
cargo build "${rust[@]}" --all-targets --quiet
wait_for_nextest
if $quick; then
  log "cargo nextest (quick tier)"
  cargo nextest run "${rust[@]}" --profile quick
  exit 0
fi
if ! wait "$garage_pid"; then cat "$garage_log" >&2; echo "installing Garage failed" >&2; exit 1; fi
rm -f "$garage_log"
log "cargo nextest"
cargo nextest run "${rust[@]}"
log "service tests again, on PostgreSQL"
# The same service tests, each on a fresh database of a throwaway PostgreSQL server on loopback.
# Left out: the command-line tests (they drive `consult` over a data directory and edit its
# SQLite file to play an attacker) and the dependency-tree checks; neither touches the query layer.
pg_run=$(mktemp -d)
chmod 755 "$pg_run"
pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pg_url=$(scripts/postgres.sh start "$pg_run/pg" "$pg_port")
cleanups+=('scripts/postgres.sh stop "$pg_run/pg"; rm -rf "$pg_run"')
# Selected from the whole workspace's build, not with `-p`: alone, the service crate resolves its
# features differently and is built a second time.
CONSULT_TEST_POSTGRES="$pg_url" cargo nextest run "${rust[@]}" \
  -E 'binary_id(consult-signaling::service) & not (test(/^cli::/) | test(/^dependencies::/))'
scripts/postgres.sh stop "$pg_run/pg"
log "doc tests"
cargo test "${rust[@]}" --doc --quiet
log "cargo-deny (licences, banned crates and duplicate versions, sources; advisories when reachable)"
if ! wait "$tools_pid"; then
  cat "$tools_log" >&2; echo "installing ${tools[*]} or building the fuzz targets failed" >&2; exit 1
fi
rm -f "$tools_log"
cargo deny check bans licenses sources
if timeout 60 cargo deny fetch db >/dev/null 2>&1; then
  cargo deny check advisories
else
  echo "advisories: the RustSec database (github.com) cannot be fetched from here; not checked"
fi
log "alerting rules (promtool)"
promtool check rules deploy/prometheus/consult-alerts.yml
(cd deploy/prometheus && promtool test rules consult-alerts.test.yml)
log "API fuzzing (schemathesis against the OpenAPI document)"
CONSULT_BIN="$PWD/target/debug/consult" tests/api-fuzz/run.sh 25
log "fuzzing smoke run (every cargo-fuzz target, 10 s each, two at a time)"
FUZZ_PROFILE=dev FUZZ_JOBS=2 scripts/fuzz.sh 10

# --- Web demo: JSDoc types checked by tsc, and its protocol types against the service's schemas. ---
if ! wait "$npm_pid"; then cat "$npm_log" >&2; echo "npm ci failed" >&2; exit 1; fi
rm -f "$npm_log"
log "web demo type check and protocol check"
(cd web-demo && npx --no-install tsc --noEmit -p . &&
  CONSULT_BIN="$PWD/../target/debug/consult" npm test --silent)

# --- Browser end to end: the real service, two or three real Chromiums. ---------------------
log "browser end-to-end tests"
# The browser-to-native test needs the echo-bot example (built above with --all-targets): never skip it.
CONSULT_BIN="$PWD/target/debug/consult" ECHO_BOT_BIN="$PWD/target/debug/examples/echo-bot" \
  CONSULT_REQUIRE_NATIVE=1 npm --prefix tests/browser test
log "all tests passed"
