#!/usr/bin/env bash
# API fuzzing: schemathesis (PyPI) against the service's own OpenAPI document
# (/api/v1/openapi.json), as a signed-in clinician and as a patient, with every check on: no
# 5xx, every status code and body as documented, schema-valid requests accepted and invalid ones
# refused. Starts `consult serve --demo` on a free loopback port with a fresh data directory,
# and stops it afterwards.
#
#   tests/api-fuzz/run.sh [EXAMPLES]    examples per operation and phase (default 25)
#
# CONSULT_BIN: the service binary (default target/debug/consult). Schemathesis is installed once
# into target/schemathesis (a virtual environment; needs python3 with venv).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
examples="${1:-25}"
consult="${CONSULT_BIN:-$root/target/debug/consult}"
venv="$root/target/schemathesis"
version="4.32.5"

# Every package pinned (constraints.txt); the stamp says which pins the environment holds.
pins="$(sha256sum "$here/constraints.txt" | cut -d' ' -f1)"
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$version" || [ "$(cat "$venv/pins" 2>/dev/null)" != "$pins" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -c "$here/constraints.txt" "schemathesis==$version"
  echo "$pins" >"$venv/pins"
fi

data="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
"$consult" serve --demo --bind "127.0.0.1:$port" --data-dir "$data" >"$data/service.log" 2>&1 &
service=$!
cleanup() {
  kill "$service" 2>/dev/null || true
  wait "$service" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
for _ in $(seq 100); do
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('$base/healthz', timeout=1)" 2>/dev/null; then break; fi
  sleep 0.1
done
eval "$(python3 "$here/session.py" "$base" "$data")"

# Run from the scratch directory: schemathesis keeps a cache (.schemathesis/) where it runs.
# One worker: with two threads, Python 3.11's ast (Hypothesis describes its strategies with it)
# fails now and then with "AST constructor recursion depth mismatch" (CPython gh-106905).
st() {
  (cd "$data" && "$venv/bin/st" --config-file "$here/schemathesis.toml" run "$base/api/v1/openapi.json" \
    --checks all --max-examples "$examples" --seed 20261204 --workers 1 --no-color \
    --request-timeout 30 "$@")
}
status=0
echo "== as the clinician: every operation but sign-out (it would end the session under test)"
st -H "Authorization: Bearer $DOCTOR_TOKEN" --exclude-path /api/v1/auth/logout || status=1
echo "== as the patient: the operations a patient's token opens"
st -H "Authorization: Bearer $PATIENT_TOKEN" --include-path /api/v1/ice-servers || status=1
if grep -q "panicked" "$data/service.log"; then
  echo "the service panicked:" >&2
  grep -A5 "panicked" "$data/service.log" >&2
  status=1
fi
exit "$status"
