#!/usr/bin/env bash
# Generates maas/v1 (messages, gRPC stubs and .pyi stubs) under OUT_ROOT.
# The proto root is protos/, so generated imports read `from maas.v1 import ...`.
set -euo pipefail
PY=${1:?python}; OUT=${2:?out root}
mkdir -p "$OUT/maas/v1"
# protos/ holds every import but protobuf's own well-known types (which protoc
# ships); protos/google/ is vendored and not generated here: its Python code is
# googleapis-common-protos (a grpcio-status dependency).
"$PY" -m grpc_tools.protoc -Iprotos \
  --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
  --plugin=protoc-gen-mypy_grpc="$(dirname "$PY")/protoc-gen-mypy_grpc" --mypy_grpc_out="$OUT" \
  protos/maas/v1/*.proto
printf '"""Generated from protos/maas/v1 by `make protos`; do not edit."""\n' > "$OUT/maas/v1/__init__.py"
