#!/usr/bin/env bash
# Makes sure a PostgreSQL server runs on loopback for the tests; prints its DSN.
#   deploy/local/postgres.sh [DATA_DIR] [PORT]
# Installs Debian's postgresql package when no server is on the machine. The
# server refuses to run as root, so as root it runs as the `postgres` user; its
# data lives under /tmp by default because a checkout may sit in a directory
# (such as /root) that the postgres user cannot enter.
set -euo pipefail
DATA=$(realpath -m "${1:-/tmp/maas-test-pg}")
PORT=${2:-54329}
DSN="postgresql://postgres@127.0.0.1:${PORT}/postgres"

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
BIN=$(find_bin)
if [ -z "$BIN" ]; then
  echo "installing PostgreSQL (Debian package) ..." >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  BIN=$(find_bin)
fi

as_owner() {
  # From /: the postgres user may not be allowed into the caller's directory.
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then echo "$DSN"; exit 0; fi
if [ ! -f "$DATA/PG_VERSION" ]; then
  mkdir -p "$DATA"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$DATA"
  as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 >/dev/null
fi
# Tests only: fsync stays on (the crash-safety test relies on it), the socket
# directory is the data directory so nothing outside it is touched.
as_owner "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w start \
  -o "-p $PORT -c listen_addresses=127.0.0.1 -k $DATA" >/dev/null
echo "$DSN"
