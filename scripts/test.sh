#!/usr/bin/env bash
# Runs every test of Consult: Rust unit, integration and doc tests; the type check of the web demo;
# and the browser end-to-end tests in Debian's headless Chromium. Installs what it needs first
# (idempotently, quietly when already present). Builds once and reuses the build.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to install: $*" >&2; return 1; fi
}

# --- System packages: Chromium for the browser tests; libopus, libvpx, nasm (OpenH264's assembly)
# and pkg-config for the media core's codecs; coturn for the relay tests. ---------------------------
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v nasm >/dev/null || missing+=(nasm)
command -v turnserver >/dev/null || missing+=(coturn)
command -v g++ >/dev/null || missing+=(g++)
command -v ffprobe >/dev/null || missing+=(ffmpeg)
for pkg in libopus-dev libvpx-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
command -v node >/dev/null || missing+=(nodejs npm)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Rust: build everything once, then run every test against that build. --------------------
log "cargo build (all targets)"
cargo build --workspace --all-targets --locked --quiet
log "cargo test"
cargo test --workspace --locked

# --- Web demo: JSDoc types checked by tsc. -------------------------------------------------------
log "web demo type check"
(cd web-demo && npm ci --no-audit --no-fund --loglevel=error && npx --no-install tsc --noEmit -p .)

# --- Browser end to end: the real service, two or three real Chromiums. ---------------------
log "browser end-to-end tests"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
# The browser-to-native test needs the echo-bot example (built above with --all-targets): never skip it.
CONSULT_BIN="$PWD/target/debug/consult" ECHO_BOT_BIN="$PWD/target/debug/examples/echo-bot" \
  CONSULT_REQUIRE_NATIVE=1 npm --prefix tests/browser test
