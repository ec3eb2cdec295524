#!/usr/bin/env bash
# Makes Docker usable for `make compose-test`, installing what is missing:
# Debian's docker.io and mmdebstrap, a running dockerd (started by hand where no
# service manager runs), and the compose v2 plugin, which bookworm lacks: sid's
# static build, fetched from deb.debian.org and checked against a pinned sha256.
#   bash deploy/docker/tools.sh     # exit 0: docker, compose and mmdebstrap work
# Exit 2 says plainly why Docker cannot be had here (callers may then skip).
set -euo pipefail

COMPOSE_DEB=docker-compose_2.40.3-3_amd64.deb
COMPOSE_SHA256=e7603d5e6df0f8404f7b03da478022b87d7b50644cffe68884b071e5cfc17fd3
MIRROR=${MAAS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PLUGINS=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins

cannot() { echo "compose-test: Docker cannot be used here: $*" >&2; exit 2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  as_root apt-get update -qq && as_root apt-get install -y -qq "${missing[@]}" >&2 \
    || cannot "apt-get install ${missing[*]} failed"
fi

if ! docker info >/dev/null 2>&1; then
  echo "starting dockerd (log: /tmp/dockerd.log)" >&2
  as_root sh -c 'nohup dockerd >/tmp/dockerd.log 2>&1 &' || cannot "dockerd could not be started"
  # dockerd takes a few seconds to open its socket; 30 s means it will not.
  for _ in $(seq 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || cannot "dockerd did not come up: $(tail -n 3 /tmp/dockerd.log 2>/dev/null)"
fi

if ! docker compose version >/dev/null 2>&1; then
  echo "installing the compose plugin from $COMPOSE_DEB" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  curl -fsSL -o "$tmp/$COMPOSE_DEB" "$MIRROR/pool/main/d/docker-compose/$COMPOSE_DEB" \
    || cannot "cannot fetch $COMPOSE_DEB from $MIRROR"
  echo "$COMPOSE_SHA256  $tmp/$COMPOSE_DEB" | sha256sum -c --quiet - \
    || cannot "$COMPOSE_DEB does not match its pinned sha256"
  dpkg-deb -x "$tmp/$COMPOSE_DEB" "$tmp/x"
  mkdir -p "$PLUGINS"
  install -m 0755 "$tmp/x/usr/libexec/docker/cli-plugins/docker-compose" "$PLUGINS/docker-compose"
  docker compose version >/dev/null 2>&1 || cannot "the compose plugin does not run"
fi
echo "docker $(docker version --format '{{.Server.Version}}'), $(docker compose version --short 2>/dev/null | sed 's/^/compose /')" >&2
