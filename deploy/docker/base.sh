#!/usr/bin/env bash
# The base image every image of the stack is built FROM: a Debian bookworm
# minbase made by mmdebstrap from Debian's own packages and `docker import`ed,
# because no image registry is reachable from where this runs.
#   bash deploy/docker/base.sh            # prints the image name it made or found
# (MAAS_BUILD_NO_CACHE=1 makes it again)
# Tagged with a hash of its recipe (suite, packages, options): an unchanged
# recipe reuses the image.
set -euo pipefail

SUITE=bookworm
MIRROR=${MAAS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# python3.11 (the torch wheel's cp311), venv for /opt/venv, TLS roots for pip,
# libgomp1 (torch's OpenMP runtime); no init: every service handles SIGTERM itself.
PACKAGES=python3,python3-venv,ca-certificates,libgomp1

# minbase: essential packages and apt only; docs and locales dropped, the apt lists
# kept out so the image carries no stale index (images that add packages update first).
OPTIONS=(--variant=minbase --include="$PACKAGES"
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*')

recipe=$(printf '%s\n' "$SUITE" "${OPTIONS[@]}" | sha256sum | cut -c1-12)
image=maas-base:$recipe

if [ "${MAAS_BUILD_NO_CACHE:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mmdebstrap "${OPTIONS[@]}" "$SUITE" "$tmp/rootfs.tar" "$MIRROR" >&2
docker import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' \
  "$tmp/rootfs.tar" "$image" >&2
docker tag "$image" maas-base:latest
# Older recipes' tags go (their layers stay while an image still uses them).
docker image ls maas-base --format '{{.Tag}}' | grep -vx -e "$recipe" -e latest \
  | sed 's/^/maas-base:/' | xargs -r docker rmi >/dev/null || true
echo "$image"
