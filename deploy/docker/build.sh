#!/usr/bin/env bash
# Builds every image of the compose stack, each FROM the Debian base image
# (deploy/docker/base.sh), with BuildKit so that pip reaches PyPI through this
# machine's CA bundle given as a build secret, never as a layer:
#   bash deploy/docker/build.sh            # the engine's torch from the PyTorch CPU index
#   TORCH_WHEELS=/opt/wheels bash deploy/docker/build.sh   # from a local wheel folder
# Prints each image's build time and size. MAAS_ENGINE=gpu builds the GPU engine;
# MAAS_BUILD_NO_CACHE=1 rebuilds every layer (a cold build's time).
set -euo pipefail
cd "$(dirname "$0")/../.."

ENGINE=${MAAS_ENGINE:-cpu}
CA=${PIP_CA:-/etc/ssl/certs/ca-certificates.crt}
# docker.io's 20.10 client builds with BuildKit itself; newer clients need the
# buildx plugin for it, which Debian's stable lacks: use whichever works.
DOCKER=docker
if ! docker buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; fi
export DOCKER_BUILDKIT=1

secret=()
[ -s "$CA" ] && secret=(--secret "id=pipca,src=$CA")

# The engine's local torch wheels must be inside the build context: linked (or
# copied) into deploy/docker/wheels, which git ignores.
wheels_arg=()
if [ -n "${TORCH_WHEELS:-}" ]; then
  for wheel in "$TORCH_WHEELS"/torch-*.whl; do
    [ -e "$wheel" ] || { echo "no torch wheel in $TORCH_WHEELS" >&2; exit 1; }
    ln -f "$wheel" deploy/docker/wheels/ 2>/dev/null || cp -f "$wheel" deploy/docker/wheels/
  done
  wheels_arg=(--build-arg TORCH_WHEELS=deploy/docker/wheels)
fi

timed() {  # NAME COMMAND...: runs it, quietly unless it fails, and prints its time
  local name=$1 start log
  shift
  start=$(date +%s)
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "build of $name failed" >&2
    exit 1
  fi
  rm -f "$log"
  printf '  %-16s built in %4ss\n' "$name" "$(($(date +%s) - start))"
}

total=$(date +%s)
base_start=$(date +%s)
base_log=$(mktemp)
base=$(bash deploy/docker/base.sh 2>"$base_log") || { tail -n 40 "$base_log" >&2; exit 1; }
rm -f "$base_log"
printf '  %-16s built in %4ss (%s)\n' "maas-base" "$(($(date +%s) - base_start))" "$base"
build_args=(--build-arg "BASE_IMAGE=$base")
[ "${MAAS_BUILD_NO_CACHE:-0}" = 1 ] && build_args+=(--no-cache)
timed maas-control $DOCKER build "${secret[@]}" "${build_args[@]}" --target control -t maas-control .
timed "maas-engine:$ENGINE" $DOCKER build "${secret[@]}" "${build_args[@]}" "${wheels_arg[@]}" \
  --build-arg "ENGINE=$ENGINE" --target engine -t "maas-engine:$ENGINE" .
for target in postgres redis prometheus; do
  timed "maas-$target" $DOCKER build "${build_args[@]}" -f deploy/docker/infra.Dockerfile \
    --target "$target" -t "maas-$target" deploy/docker
done
# Every rebuild leaves the image it replaced and its build layers behind: about
# 4.5 GB a run, which filled this machine's disk after a dozen runs and then
# failed CI's install. Drop the superseded images; keep only as much build
# cache as one warm rebuild needs (MAAS_BUILD_CACHE, default 12 GB).
docker image prune -f >/dev/null 2>&1 || true
docker builder prune -f --keep-storage "${MAAS_BUILD_CACHE:-12gb}" >/dev/null 2>&1 || true
echo "all images built in $(($(date +%s) - total))s; sizes:"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' \
  | grep -E '^maas-(base|control|engine|postgres|redis|prometheus):' | grep -vE '^maas-(base|engine):latest' | sed 's/^/  /' || true
