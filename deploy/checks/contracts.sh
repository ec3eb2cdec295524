#!/usr/bin/env bash
# Guards the contracts in protos/: `buf lint`, then `buf breaking` against the
# protos of the last landed main (rules in protos/buf.yaml).
# The baseline is where this branch left main: the merge base of HEAD and
# origin/main (a fresh clone) or main (a local checkout or worktree); on main
# itself, HEAD's first parent, so the change that landed last is checked.
# AGAINST=<git ref> overrides it.
set -euo pipefail
BUF=${1:?buf}
cd "$(dirname "$0")/../.."
"$BUF" lint protos
if [[ -z "${AGAINST:-}" ]]; then
  main=$(git rev-parse -q --verify origin/main || git rev-parse -q --verify main) || {
    echo "contracts: no origin/main or main to compare with; set AGAINST=<ref>" >&2; exit 1; }
  AGAINST=$(git merge-base HEAD "$main")
  if [[ "$AGAINST" == "$(git rev-parse HEAD)" ]]; then
    # A shallow clone (CI may make one) lacks the parent: fetch it once.
    git rev-parse -q --verify HEAD^ >/dev/null || git fetch -q --deepen=1 2>/dev/null || true
    AGAINST=$(git rev-parse -q --verify HEAD^) || {
      echo "contracts: HEAD has no parent (shallow clone?); fetch main's history or set AGAINST=<ref>" >&2
      exit 1; }
  fi
fi
base=$(mktemp -d)
trap 'rm -rf "$base"' EXIT
git archive "$AGAINST" protos | tar -x -C "$base"
# Contracts from before googleapis was vendored imported it from outside protos/.
[[ -e "$base/protos/google" ]] || cp -r protos/google "$base/protos/google"
"$BUF" breaking protos --against "$base/protos"
echo "contracts: buf lint and buf breaking against $(git rev-parse --short "$AGAINST") pass"
