#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the tests (Debian's postgresql package):
#
#   scripts/postgres.sh start DIR PORT   initialise a cluster in DIR (if new) and start it; prints
#                                        the URL the tests take: postgres://consult@127.0.0.1:PORT/postgres
#   scripts/postgres.sh stop DIR         stop it (DIR stays; remove it to forget everything)
#
# Trust authentication on 127.0.0.1 only, a socket directory inside DIR, and durability settings
# off (fsync, synchronous commit): a test cluster that loses nothing but what a crash of this
# machine would lose, and starts in a second. initdb refuses to run as root: as root, the cluster
# belongs to the `postgres` user the package creates.
set -euo pipefail

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$bin" ] || { echo "PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2; }
case "$cmd" in
  start)
    port=${3:?usage: $0 start DIR PORT}
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_owner "$bin/initdb" -D "$dir/data" -U consult --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start -o \
      "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir \
       -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    echo "postgres://consult@127.0.0.1:$port/postgres"
    ;;
  stop)
    [ -f "$dir/data/postmaster.pid" ] && as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  *) echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
