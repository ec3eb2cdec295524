#!/usr/bin/env bash
# Installs kustomize, pinned, into .tools/ (or $MAAS_TOOLS_DIR) and prints the
# binary's path. GitHub's releases are out of reach on some machines; Debian's
# package is a static binary (Depends: libc6 >= 2.34 only), so it is fetched
# from deb.debian.org, its sha256 checked, and unpacked without installing.
# Idempotent: a binary already unpacked is reused.
set -euo pipefail
VERSION=5.8.1+ds-1
SHA256=2f926a268932f0798020638188d6925e3de6065744f93a0b48a5c0e92dadeac9
URL="https://deb.debian.org/debian/pool/main/k/kustomize/kustomize_${VERSION}_amd64.deb"
cd "$(dirname "$0")/../.."
tools=${MAAS_TOOLS_DIR:-.tools}
dest="$tools/kustomize-$VERSION"
bin="$dest/usr/bin/kustomize"
if [[ ! -x "$bin" ]]; then
  [[ "$(uname -m)" == x86_64 ]] || { echo "kustomize.sh: the pinned package is amd64, this is $(uname -m)" >&2; exit 1; }
  mkdir -p "$tools"
  tmp=$(mktemp -d "$tools/.kustomize.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  curl -fsSL --retry 3 -o "$tmp/kustomize.deb" "$URL" || {
    echo "kustomize.sh: cannot fetch $URL" >&2; exit 1; }
  echo "$SHA256  $tmp/kustomize.deb" | sha256sum --quiet -c - || {
    echo "kustomize.sh: $URL does not have the pinned sha256 $SHA256" >&2; exit 1; }
  dpkg-deb -x "$tmp/kustomize.deb" "$tmp/root"
  # Renamed into place whole, so a concurrent run never sees half a binary;
  # one that got there first wins.
  mv -T "$tmp/root" "$dest" 2>/dev/null || [[ -x "$bin" ]]
fi
realpath "$bin"
