#!/usr/bin/env bash
# `step.sh NAME COMMAND...`: one named, timed step of `make run` (and of a first
# `make venv`). COMMAND's own output (pip's progress) goes through as it comes.
set -uo pipefail
name=${1:?name}
shift
began=$(date +%s)
printf '==> %s\n' "$name"
"$@"
status=$?
elapsed=$(($(date +%s) - began))
if [ "$status" -eq 0 ]; then
  printf '    done in %d s\n' "$elapsed"
else
  printf '    FAILED (exit %d) after %d s: %s\n' "$status" "$elapsed" "$name" >&2
fi
exit "$status"
