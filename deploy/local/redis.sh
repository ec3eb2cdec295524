#!/usr/bin/env bash
# Makes sure a Redis server runs on loopback (auth's shared quota state); prints its URL.
#   deploy/local/redis.sh [PORT]
# Installs Debian's redis-server package when it is missing. The server keeps
# nothing on disk (quota state is minutes of buckets and leases; the ledger
# and the claims are in the SQL store) and runs as a daemon until stopped:
#   redis-cli -p PORT shutdown nosave
set -euo pipefail
# Not 6379: a Redis the machine runs for itself is left alone.
PORT=${1:-63790}
URL="redis://127.0.0.1:${PORT}/0"

if ! command -v redis-server >/dev/null; then
  echo "installing Redis (Debian package) ..." >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
fi

if redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null | grep -q PONG; then echo "$URL"; exit 0; fi
DIR=/tmp/maas-redis-$PORT
mkdir -p "$DIR"
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --dir "$DIR" --logfile "$DIR/server.log" --pidfile "$DIR/redis.pid" >&2
# Ready once it answers (it daemonizes before it listens).
for _ in $(seq 1 100); do
  if redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null | grep -q PONG; then echo "$URL"; exit 0; fi
  sleep 0.05
done
echo "redis-server on port $PORT did not answer; see $DIR/server.log" >&2
exit 1
