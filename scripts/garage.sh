#!/usr/bin/env bash
# Garage (crates.io `garage`, a self-hosted, zone-aware replicated S3 store) on loopback for the
# tests:
#
#   scripts/garage.sh install           `cargo install garage` into target/tools (once; ~3 min)
#   scripts/garage.sh start DIR N       N nodes, each in its own zone (dc1, dc2, …), replication
#                                       factor min(N, 3), one bucket `consult` and one key allowed
#                                       on it; prints shell assignments the tests read:
#                                       GARAGE_ENDPOINT (node 1's S3 API), GARAGE_REGION,
#                                       GARAGE_BUCKET, GARAGE_KEY_ID, GARAGE_SECRET
#   scripts/garage.sh stop DIR [I]      stop node I (1-based), or every node
#   scripts/garage.sh kill DIR I        kill node I at once (SIGKILL: a zone lost)
#   scripts/garage.sh pause DIR I       freeze node I (SIGSTOP): it takes connections, answers none
#   scripts/garage.sh resume DIR I      let it go on (SIGCONT)
#   scripts/garage.sh restart DIR I     start node I again (after `stop DIR I`)
#   scripts/garage.sh quota DIR SIZE    cap the bucket's size (`1MiB`, or `none`): a full store
#
# Every node keeps its metadata in SQLite and its blocks under DIR/nodeI. The key is imported
# with fresh random credentials, so nothing secret is fixed in the repository.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
tools="$here/target/tools"
garage="${GARAGE_BIN:-$tools/bin/garage}"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
g() { "$garage" -c "$dir/node$1/garage.toml" "${@:2}"; }

start_node() {
  local i=$1
  "$garage" -c "$dir/node$i/garage.toml" server >"$dir/node$i/server.log" 2>&1 &
  echo $! >"$dir/node$i/pid"
  local port
  port=$(cat "$dir/node$i/s3.port")
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    if ! kill -0 "$(cat "$dir/node$i/pid")" 2>/dev/null; then cat "$dir/node$i/server.log" >&2; return 1; fi
    sleep 0.1
  done
  echo "garage node $i did not listen on $port" >&2
  cat "$dir/node$i/server.log" >&2
  return 1
}

stop_node() {
  local pidfile="$dir/node$1/pid"
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  kill -CONT "$pid" 2>/dev/null || true
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

cmd=${1:-}
case "$cmd" in
  install)
    [ -x "$garage" ] && exit 0
    # The version whose command line this script speaks. Built for the tests, quickly rather
    # than fast or small: unoptimised (the tests move kilobytes), no LTO, and only the SQLite
    # metadata engine the nodes use (no LMDB, K2V or metrics). Measured one after the other on
    # 2 cores: 177 s (317 CPU-seconds), against 376 s (726) at opt-level 1 with every default
    # feature; the storage tests take 89 s against 86 s.
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_OPT_LEVEL=0 \
      CARGO_PROFILE_RELEASE_CODEGEN_UNITS=256 CARGO_PROFILE_RELEASE_DEBUG=false \
      CARGO_PROFILE_RELEASE_STRIP=true \
      cargo install --locked --quiet --root "$tools" garage --version 2.5.0 \
      --no-default-features --features bundled-libs,sqlite
    ;;
  start)
    dir=${2:?usage: $0 start DIR N}; nodes=${3:?usage: $0 start DIR N}
    [ -x "$garage" ] || { echo "no garage binary at $garage (scripts/garage.sh install)" >&2; exit 1; }
    factor=$((nodes < 3 ? nodes : 3))
    # Whatever fails from here, no node is left running.
    trap 'for n in "$dir"/node*/pid; do [ -f "$n" ] && kill -9 "$(cat "$n")" 2>/dev/null; done' ERR
    secret=$(hex 32)
    mkdir -p "$dir"
    for i in $(seq 1 "$nodes"); do
      mkdir -p "$dir/node$i"
      rpc=$(free_port); s3=$(free_port); admin=$(free_port)
      echo "$s3" >"$dir/node$i/s3.port"
      cat >"$dir/node$i/garage.toml" <<EOF
metadata_dir = "$dir/node$i/meta"
data_dir = "$dir/node$i/data"
db_engine = "sqlite"
replication_factor = $factor
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"
bootstrap_peers = []

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
EOF
      start_node "$i"
    done
    # One cluster: node 1 meets the others, then one node per zone holds a copy of everything.
    for i in $(seq 2 "$nodes"); do
      g 1 node connect "$(g "$i" node id -q)" >/dev/null
    done
    for i in $(seq 1 "$nodes"); do
      g 1 layout assign -z "dc$i" -c 1G "$(g "$i" node id -q | cut -c1-16)" >/dev/null
    done
    g 1 layout apply --version 1 >/dev/null
    key_id="GK$(hex 12)"; key_secret=$(hex 32)
    # The layout reaches every node within a moment: retry until the bucket can be made.
    made=false
    for _ in $(seq 1 50); do
      if g 1 bucket create consult >/dev/null 2>&1; then made=true; break; fi
      sleep 0.2
    done
    $made || { echo "garage: the bucket could not be created" >&2; g 1 bucket create consult >&2; exit 1; }
    g 1 key import --yes -n consult "$key_id" "$key_secret" >/dev/null
    g 1 bucket allow --read --write --owner consult --key consult >/dev/null
    echo "GARAGE_ENDPOINT=http://127.0.0.1:$(cat "$dir/node1/s3.port")"
    echo "GARAGE_REGION=garage"
    echo "GARAGE_BUCKET=consult"
    echo "GARAGE_KEY_ID=$key_id"
    echo "GARAGE_SECRET=$key_secret"
    ;;
  stop)
    dir=${2:?usage: $0 stop DIR [I]}
    if [ -n "${3:-}" ]; then stop_node "$3"; else
      for node in "$dir"/node*; do
        if [ -d "$node" ]; then stop_node "${node##*node}"; fi
      done
    fi
    ;;
  kill)
    dir=${2:?usage: $0 kill DIR I}; node=${3:?usage: $0 kill DIR I}
    if [ -f "$dir/node$node/pid" ]; then
      kill -9 "$(cat "$dir/node$node/pid")" 2>/dev/null || true
      rm -f "$dir/node$node/pid"
    fi
    ;;
  pause | resume)
    dir=${2:?usage: $0 $cmd DIR I}; node=${3:?usage: $0 $cmd DIR I}
    signal=$([ "$cmd" = pause ] && echo STOP || echo CONT)
    kill -s "$signal" "$(cat "$dir/node$node/pid")"
    ;;
  quota)
    dir=${2:?usage: $0 quota DIR SIZE}; size=${3:?usage: $0 quota DIR SIZE}
    g 1 bucket set-quotas --max-size "$size" consult >/dev/null
    ;;
  restart)
    dir=${2:?usage: $0 restart DIR I}
    start_node "${3:?usage: $0 restart DIR I}"
    ;;
  *) echo "usage: $0 install | start DIR N | stop DIR [I] | kill DIR I | pause DIR I | resume DIR I | restart DIR I" >&2; exit 2 ;;
esac
