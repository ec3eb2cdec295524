"""The static compose check: the real file passes; copies broken in one place
each fail with a problem that names what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.checks.compose import ComposeCheck, compose_problems, main
from services.inference.settings import InferenceSettings
from services.router.settings import RouterSettings
from tests.deploy.support import REPO, copy_with, named

FILES = [
    "docker-compose.yml",
    "Dockerfile",
    "deploy/docker/infra.Dockerfile",
    "deploy/prometheus.yml",
    "deploy/otel-collector.yaml",
]
COMPOSE = "docker-compose.yml"


def test_the_real_compose_file_has_no_problems() -> None:
    assert compose_problems(REPO / COMPOSE) == []
    assert main([str(REPO / COMPOSE)]) == 0


# (file edited, text there, its replacement, parts of the expected problem)
BROKEN = {
    "a flag that does not exist": (
        COMPOSE,
        '"--router-address", "router:50053"',
        '"--router-adress", "router:50053"',
        ["gateway", "unrecognized arguments: --router-adress"],
    ),
    "a wrong port": (
        COMPOSE,
        "MAAS_GATEWAY_AUTH_ADDRESS: dns:///auth:50052",
        "MAAS_GATEWAY_AUTH_ADDRESS: dns:///auth:50062",
        ["gateway", "dns:///auth:50062", "auth listens on 9464, 50052, not 50062"],
    ),
    "a missing healthcheck": (
        COMPOSE,
        '      test: ["CMD", "python", "-m", "deploy.runtime.healthcheck", "127.0.0.1:50055", '
        '"maas.v1.Anomaly"]\n',
        "",
        ["anomaly: no healthcheck"],
    ),
    "a health check on another port": (
        COMPOSE,
        '"127.0.0.1:50055", "maas.v1.Anomaly"',
        '"127.0.0.1:50056", "maas.v1.Anomaly"',
        ["anomaly", "healthcheck probes port 50056", "not its gRPC port 50055"],
    ),
    "a health check of a service the server does not run": (
        COMPOSE,
        '"127.0.0.1:50055", "maas.v1.Anomaly"',
        '"127.0.0.1:50055", "maas.v1.Anomalies"',
        ["anomaly", "'maas.v1.Anomalies'", "serves maas.v1.Anomaly"],
    ),
    "a value the setting does not take": (
        COMPOSE,
        '"--max-num-seqs", "256"',
        '"--max-num-seqs", "lots"',
        ["inference-gpu", "--max-num-seqs", "valid integer"],
    ),
    "an env var that is no setting": (
        COMPOSE,
        "MAAS_ROUTER_TELEMETRY__PROMETHEUS_PORT",
        "MAAS_ROUTER_TELEMETRY__PROMETHEUS_PROT",
        ["router", "MAAS_ROUTER_TELEMETRY__PROMETHEUS_PROT: no such setting of services.router"],
    ),
    "an env var of another service": (
        COMPOSE,
        "MAAS_ANOMALY_TELEMETRY__OTLP_ENDPOINT",
        "MAAS_AUTH_TELEMETRY__OTLP_ENDPOINT",
        ["anomaly", "services.anomaly reads only MAAS_ANOMALY_* variables"],
    ),
    "a module that does not exist": (
        COMPOSE,
        '"-m", "services.anomaly", "--host"',
        '"-m", "services.anomly", "--host"',
        ["anomaly", "python -m services.anomly`: no such module"],
    ),
    "an address naming no service": (
        COMPOSE,
        '"--router-address", "router:50053"',
        '"--router-address", "routr:50053"',
        ["gateway", "routr is no service of this file"],
    ),
    "a service only its own container can reach": (
        COMPOSE,
        '"services.anomaly", "--host", "0.0.0.0"',
        '"services.anomaly", "--host", "127.0.0.1"',
        ["anomaly: listens on 127.0.0.1"],
    ),
    "a stop grace no longer than the server's": (
        COMPOSE,
        "  stop_grace_period: 15s\n\nx-engine",
        "  stop_grace_period: 10s\n\nx-engine",
        ["router", "stop_grace_period (10s) is not longer than its own grace period (10s)"],
    ),
    "a dependency that does not exist": (
        COMPOSE,
        "postgres: { condition: service_healthy }",
        "postgress: { condition: service_healthy }",
        ["auth", "depends on 'postgress', which is no service"],
    ),
    "a volume that is not declared": (
        COMPOSE,
        "  gateway-outbox: {}",
        "  gateway-state: {}",
        ["gateway: mounts volume gateway-outbox, which `volumes:` lacks"],
    ),
    "a build target that does not exist": (
        COMPOSE,
        "target: control\n",
        "target: mass\n",
        ["gateway", "build target 'mass' is no stage of Dockerfile"],
    ),
    "a build arg the Dockerfile does not declare": (
        COMPOSE,
        "ENGINE: ${MAAS_ENGINE:-cpu}",
        "ENGIN: ${MAAS_ENGINE:-cpu}",
        ["inference-cpu", "build arg ENGIN is declared by no ARG"],
    ),
    "the engine installed into the control plane's image": (
        "Dockerfile",
        "pip install -r /tmp/control.txt",
        "pip install -r /tmp/control.txt torch",
        ["gateway", "installs the inference engine (stage control-deps)", "no torch"],
    ),
    "the control plane built from the engine's image": (
        COMPOSE,
        "    target: control\n",
        "    target: engine\n",
        ["router: runs services.router from an image that installs the inference engine"],
    ),
    "a gateway without the mesh's service token": (
        COMPOSE,
        "    MAAS_GATEWAY_SERVICE_TOKEN: ${MAAS_SERVICE_TOKEN:?set a service token}\n",
        "",
        ["gateway", "has no service token, which the mesh's other services hold"],
    ),
    "an internal service open beyond loopback": (
        COMPOSE,
        "      MAAS_ROUTER_SERVICE_TOKEN: ${MAAS_SERVICE_TOKEN:?set a service token}\n",
        "",
        ["router", "host '0.0.0.0' is beyond loopback", "service_token or mutual TLS"],
    ),
    "an operator token too short to be safe": (
        COMPOSE,
        "      MAAS_AUTH_ADMIN_TOKEN: ${MAAS_AUTH_ADMIN_TOKEN:?set an admin token}\n",
        "      MAAS_AUTH_ADMIN_TOKEN: admin\n",
        ["auth", "MAAS_AUTH_ADMIN_TOKEN", "at least 32 characters"],
    ),
    "a gateway port published where it does not listen": (
        COMPOSE,
        '"--http-port", "8000"',
        '"--http-port", "8080"',
        ["gateway", "publishes port 8000, where it does not listen"],
    ),
    "a gpu service without a GPU": (
        COMPOSE,
        "driver: nvidia",
        "driver: amd",
        ["inference-gpu", "reserves no NVIDIA device"],
    ),
    "a section of the wrong shape": (
        COMPOSE,
        'ports: ["9090:9090"]',
        "ports: 9090",
        ["prometheus: malformed (TypeError"],
    ),
    "a file that is not YAML": (
        COMPOSE,
        "services:\n",
        "services: [\n",
        ["docker-compose.yml: cannot be read as YAML"],
    ),
    "a service Prometheus does not scrape": (
        "deploy/prometheus.yml",
        '"anomaly:9464", ',
        "",
        ["anomaly: Prometheus does not scrape it"],
    ),
    "Prometheus scraping a gRPC port": (
        "deploy/prometheus.yml",
        '"router:9464"',
        '"router:50053"',
        ["prometheus", "port 50053 of router is not its metrics port (9464)"],
    ),
    "the collector exporting to a port nothing listens on": (
        "deploy/otel-collector.yaml",
        "jaeger:4317",
        "jaeger:4318",
        ["otel-collector", "jaeger:4318", "jaeger listens on 4317, 13133, 16686, not 4318"],
    ),
}

# Rules that ask the same of the Kubernetes manifests (tests/deploy/test_check_k8s.py).
BROKEN.update(
    {
        "an address of another service than the one called": (
            COMPOSE,
            "MAAS_GATEWAY_AUTH_ADDRESS: dns:///auth:50052",
            "MAAS_GATEWAY_AUTH_ADDRESS: dns:///anomaly:50055",
            ["gateway", "auth_address dns:///anomaly:50055", "anomaly runs services.anomaly, "
             "not services.auth"],
        ),
        "an address on the called service's metrics port": (
            COMPOSE,
            '"--router-address", "router:50053"',
            '"--router-address", "router:9464"',
            ["gateway", "router_address router:9464", "port 9464 of router is not its gRPC port "
             "(50053)"],
        ),
        "a CPU engine holding a GPU": (
            COMPOSE,
            "profiles: [gpu]",
            "profiles: [cpu]",
            ["inference-gpu", "reserves an NVIDIA device but runs the CPU engine"],
        ),
    }
)  # fmt: skip

# Keys compose-spec does not know, as `docker compose config` would refuse them.
BROKEN.update(
    {
        "a misspelt depends_on": (
            COMPOSE,
            "  depends_on:\n    router: { condition: service_healthy }",
            "  depend_on:\n    router: { condition: service_healthy }",
            ["services.gateway: unknown key 'depend_on' (compose-spec)"],
        ),
        "a misspelt stop_grace_period": (
            COMPOSE,
            '/var/lib/postgresql/data"]\n    stop_grace_period: 30s',
            '/var/lib/postgresql/data"]\n    stop_grace_perod: 30s',
            ["services.postgres: unknown key 'stop_grace_perod' (compose-spec)"],
        ),
        "a value of the wrong type": (
            COMPOSE,
            '/var/lib/postgresql/data"]\n    stop_grace_period: 30s',
            '/var/lib/postgresql/data"]\n    stop_grace_period: [30s]',
            ["services.postgres.stop_grace_period", "is not of type 'string'", "compose-spec"],
        ),
    }
)


# The console serves HTTP only: its readiness is a GET of its sign-in page.
BROKEN.update(
    {
        "the console asked for gRPC health": (
            COMPOSE,
            '"deploy.runtime.http_ready", "http://127.0.0.1:8080/signin"',
            '"deploy.runtime.healthcheck", "127.0.0.1:8080"',
            ["console", "healthcheck asks gRPC health; services.console serves HTTP only"],
        ),
        "the console's readiness on another page": (
            COMPOSE,
            '"http://127.0.0.1:8080/signin"',
            '"http://127.0.0.1:8080/"',
            ["console", "healthcheck GETs /; services.console is ready when /signin answers"],
        ),
        "the console's readiness on another port": (
            COMPOSE,
            '"http://127.0.0.1:8080/signin"',
            '"http://127.0.0.1:8000/signin"',
            ["console", "healthcheck probes port 8000, not its HTTP port 8080"],
        ),
        "the console's readiness elsewhere": (
            COMPOSE,
            '"http://127.0.0.1:8080/signin"',
            '"http://gateway:8080/signin"',
            ["console", "healthcheck probes gateway:8080, not this container"],
        ),
        "a gRPC service asked over HTTP": (
            COMPOSE,
            '"deploy.runtime.healthcheck", "127.0.0.1:50053", "maas.v1.Router"',
            '"deploy.runtime.http_ready", "http://127.0.0.1:50053/"',
            ["router", "healthcheck is HTTP; services.router answers gRPC health"],
        ),
        "the console dialling a wrong port": (
            COMPOSE,
            "MAAS_CONSOLE_ROUTER_ADDRESS: router:50053",
            "MAAS_CONSOLE_ROUTER_ADDRESS: router:50054",
            ["console", "router:50054"],
        ),
        "the console without the service token": (
            COMPOSE,
            "      MAAS_CONSOLE_SERVICE_TOKEN: ${MAAS_SERVICE_TOKEN:?set a service token}\n",
            "",
            ["console", "has no service token"],
        ),
        "the embedding model on a runner vLLM has not": (
            COMPOSE,
            '"--runner", "pooling",\n              "--kv-cache-memory-bytes"',
            '"--runner", "embed",\n              "--kv-cache-memory-bytes"',
            ["inference-embed-cpu", "runner"],
        ),
        "the gpu profile's embedding model on a runner vLLM has not": (
            COMPOSE,
            '"--runner", "pooling",\n              "--gpu-memory-utilization"',
            '"--runner", "embed",\n              "--gpu-memory-utilization"',
            ["inference-embed-gpu", "runner"],
        ),
        "the router naming a model service that is not there": (
            COMPOSE,
            '"inference-embed:50054"]',
            '"inference-embedding:50054"]',
            [
                "router",
                "inference-embedding:50054",
                "inference-embedding is no service of this file",
            ],
        ),
        "the router not told of the embedding model": (
            COMPOSE,
            """'["inference:50054", "inference-embed:50054"]'""",
            """'["inference:50054"]'""",
            ["inference-embed-cpu", "the router's --replicas names none of its addresses"],
        ),
        "Prometheus not scraping the embedding model": (
            "deploy/prometheus.yml",
            '"inference-embed:9464", ',
            "",
            ["inference-embed-cpu: Prometheus does not scrape it"],
        ),
    }
)


# The chat replicas' adapter settings, on the CPU (the GPU's block reads the same).
CPU_ADAPTERS = (
    "      VLLM_TARGET_DEVICE: cpu\n"
    "      # Tenants' private adapters held loaded at once (MAAS_ADAPTER_SLOTS=0: none),\n"
    "      # fetched on a miss from auth's registry: any replica the name resolves to.\n"
    "      MAAS_INFERENCE_ADAPTER_SLOTS: ${MAAS_ADAPTER_SLOTS:-2}\n"
    "      MAAS_INFERENCE_REGISTRY_ADDRESS: dns:///auth:50052\n"
)
BROKEN.update(
    {
        "adapter slots with no registry": (
            COMPOSE,
            CPU_ADAPTERS,
            CPU_ADAPTERS.replace("      MAAS_INFERENCE_REGISTRY_ADDRESS: dns:///auth:50052\n", ""),
            ["inference-cpu", "adapter_slots 2 needs registry_address"],
        ),
        "the registry at the router": (
            COMPOSE,
            CPU_ADAPTERS,
            CPU_ADAPTERS.replace("dns:///auth:50052", "dns:///router:50053"),
            ["inference-cpu: registry_address dns:///router:50053",
             "runs services.router, not services.auth"],
        ),
        "adapter slots on the embedding model": (
            COMPOSE,
            '      OMP_NUM_THREADS: "1"\n',
            '      OMP_NUM_THREADS: "1"\n      MAAS_INFERENCE_ADAPTER_SLOTS: "2"\n',
            ["inference-embed-cpu", "adapter_slots 2 on an embedding (pooling) model"],
        ),
    }
)  # fmt: skip


def test_the_embedding_model_serves_beside_the_chat_model_and_the_router_names_both() -> None:
    check = ComposeCheck(REPO / COMPOSE)
    assert check.run() == []
    runs = {
        name: service.container.invocation.settings
        for name, service in check.services.items()
        if service.container.invocation is not None
        and service.container.invocation.module == "services.inference"
    }
    embed, chat = runs["inference-embed-cpu"], runs["inference-cpu"]
    assert isinstance(embed, InferenceSettings) and isinstance(chat, InferenceSettings)
    assert (embed.model, embed.runner) == ("/models/tiny-embed", "pooling")
    assert chat.model == "/models/tiny-llama" and chat.runner != "pooling"
    # Tenants' private adapters on the chat model, fetched from every auth replica.
    gpu = check.services["inference-gpu"].container.invocation
    assert gpu is not None and isinstance(gpu.settings, InferenceSettings)
    for replica in (chat, gpu.settings):
        assert replica.adapter_slots == 2
        assert replica.registry_address == "dns:///auth:50052"
    assert embed.adapter_slots == 0
    # Beside the chat model: the same profile, image and models volume.
    specs = {name: check.services[name].spec for name in ("inference-cpu", "inference-embed-cpu")}
    for key in ("profiles", "image", "volumes"):
        assert specs["inference-cpu"][key] == specs["inference-embed-cpu"][key], key
    router = check.services["router"].container.invocation
    assert router is not None and isinstance(router.settings, RouterSettings)
    assert router.settings.replicas == ["inference:50054", "inference-embed:50054"]
    assert "inference-embed" in check.services["inference-embed-cpu"].names


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_copy_fails_naming_the_problem(case: str, tmp_path: Path) -> None:
    edit, old, new, expected = BROKEN[case]
    root = copy_with(tmp_path, FILES, edit, old, new)
    problems = compose_problems(root / COMPOSE)
    assert named(problems, *expected), problems


def test_main_fails_on_a_broken_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit, old, new, _ = BROKEN["a missing healthcheck"]
    root = copy_with(tmp_path, FILES, edit, old, new)
    assert main([str(root / COMPOSE)]) == 1
    assert "anomaly: no healthcheck" in capsys.readouterr().err
