"""The static Kubernetes check: the real manifests pass; copies broken in one
place each fail with a problem that names what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.checks.k8s import k8s_problems, main
from tests.deploy.support import REPO, copy_with, named

K8S = REPO / "deploy" / "k8s"
FILES = [str(p.relative_to(REPO)) for p in sorted(K8S.glob("*.yaml"))]


def test_the_real_manifests_have_no_problems() -> None:
    assert len(FILES) >= 6
    assert k8s_problems(K8S) == []
    assert main([str(K8S)]) == 0


ROUTER_LIVENESS = """          livenessProbe:
            grpc:
              port: 50053
              service: \"\""""
INFERENCE_READINESS = """          readinessProbe:
            grpc:
              port: 50054
              service: maas.v1.Inference
            periodSeconds: 5
"""

# (file edited, text there, its replacement, parts of the expected problem)
BROKEN = {
    "an invalid field": (
        "inference.yaml",
        "publishNotReadyAddresses: true",
        "publishNotReadyAddress: true",
        ["Service/inference-replicas", "invalid at spec", "'publishNotReadyAddress'"],
    ),
    "a value of the wrong type": (
        "gateway.yaml",
        "replicas: 2",
        "replicas: two",
        ["Deployment/gateway", "invalid at spec.replicas", "'two' is not of type 'integer'"],
    ),
    "an invalid value the deeper checks would trip on": (
        "inference.yaml",
        "terminationGracePeriodSeconds: 60",
        'terminationGracePeriodSeconds: "60"',
        ["Deployment/inference", "invalid at spec.template.spec.terminationGracePeriodSeconds"],
    ),
    "an unknown kind": (
        "inference.yaml",
        "kind: PodDisruptionBudget",
        "kind: PodDisruptionBudgt",
        ["PodDisruptionBudgt/inference", "Couldn't find schema for kind PodDisruptionBudgt"],
    ),
    "a file that is not YAML": (
        "auth.yaml",
        "kind: ConfigMap\n",
        "kind: [ConfigMap\n",
        ["auth.yaml: cannot be read as YAML"],
    ),
    "a missing probe": (
        "inference.yaml",
        INFERENCE_READINESS,
        "",
        ["Deployment/inference container inference", "no gRPC readinessProbe"],
    ),
    "a probe on another port": (
        "inference.yaml",
        "port: 50054\n              service: maas.v1.Inference",
        "port: 50055\n              service: maas.v1.Inference",
        ["container inference", "readinessProbe probes port 50055, not its gRPC port 50054"],
    ),
    "liveness on the readiness name": (
        "router.yaml",
        ROUTER_LIVENESS,
        ROUTER_LIVENESS.replace('""', "maas.v1.Router"),
        ["container router", "livenessProbe asks for 'maas.v1.Router'"],
    ),
    "a flag that does not exist": (
        "router.yaml",
        '"--port", "50053"]',
        '"--prot", "50053"]',
        ["container router", "unrecognized arguments: --prot"],
    ),
    "a flag the sidecar does not take": (
        "router.yaml",
        '"--interval-s", "10"]',
        '"--every", "10"]',
        ["container replica-sync", "--every: no such flag of deploy.runtime.replica_sync"],
    ),
    "an env var that is no setting": (
        "inference.yaml",
        "MAAS_INFERENCE_MAX_NUM_SEQS",
        "MAAS_INFERENCE_MAX_SEQS",
        ["container inference", "MAAS_INFERENCE_MAX_SEQS: no such setting of services.inference"],
    ),
    "a wrong port": (
        "gateway.yaml",
        "auth:50052",
        "auth:50062",
        ["container gateway", "auth:50062", "Service auth has port 50052, not 50062"],
    ),
    "an address naming no Service": (
        "gateway.yaml",
        "router:50053",
        "routr:50053",
        ["container gateway", "routr names no Service here"],
    ),
    "a loopback port nothing in the pod listens on": (
        "router.yaml",
        '"127.0.0.1:50053"',
        '"127.0.0.1:50054"',
        ["container replica-sync", "nothing in this pod listens on 50054"],
    ),
    "a container port the server does not listen on": (
        "gateway.yaml",
        "containerPort: 50051",
        "containerPort: 50052",
        ["container gateway", "declares containerPort 50052 (grpc), where it does not listen"],
    ),
    "a gateway without the mesh's service token": (
        "gateway.yaml",
        "            - name: MAAS_GATEWAY_SERVICE_TOKEN\n"
        "              valueFrom:\n"
        "                secretKeyRef:\n"
        "                  name: maas-secrets\n"
        "                  key: service-token\n",
        "",
        ["container gateway", "has no service token, which the mesh's other services hold"],
    ),
    "an internal service open beyond loopback": (
        "inference.yaml",
        "          env:\n"
        "            - name: MAAS_INFERENCE_SERVICE_TOKEN\n"
        "              valueFrom:\n"
        "                secretKeyRef:\n"
        "                  name: maas-secrets\n"
        "                  key: service-token\n",
        "",
        ["container inference", "host '0.0.0.0' is beyond loopback"],
    ),
    "a Service targeting no container port": (
        "auth.yaml",
        "targetPort: grpc",
        "targetPort: grcp",
        ["Service/auth", "targetPort grcp is no containerPort of auth"],
    ),
    "a ConfigMap that is not there": (
        "anomaly.yaml",
        "                name: anomaly-config",
        "                name: anomaly-conf",
        ["container anomaly", "ConfigMap anomaly-conf, which is not here"],
    ),
    "a kill before the server's own grace ends": (
        "inference.yaml",
        "terminationGracePeriodSeconds: 60",
        "terminationGracePeriodSeconds: 5",
        ["container inference", "terminationGracePeriodSeconds (5) is not longer"],
    ),
    "inference without a GPU": (
        "inference.yaml",
        "              nvidia.com/gpu: 1\n",
        "",
        ["container inference", "no nvidia.com/gpu limit"],
    ),
    "a single inference replica": (
        "inference.yaml",
        "replicas: 2",
        "replicas: 1",
        ["Deployment/inference", "2 or more replicas"],
    ),
    "a disruption budget selecting nothing": (
        "inference.yaml",
        "one engine at a time; the rest keep serving.\n  maxUnavailable: 1\n  selector:\n"
        "    matchLabels:\n      app.kubernetes.io/name: inference",
        "one engine at a time; the rest keep serving.\n  maxUnavailable: 1\n  selector:\n"
        "    matchLabels:\n      app.kubernetes.io/name: inferense",
        ["PodDisruptionBudget/inference", "selects no pods"],
    ),
    "a service only its own pod can reach": (
        "anomaly.yaml",
        '"--host", "0.0.0.0"',
        '"--host", "127.0.0.1"',
        ["container anomaly", "listens on 127.0.0.1"],
    ),
}

# Rules that ask the same of the compose file (tests/deploy/test_check_compose.py).
BROKEN.update(
    {
        "an address of another service than the one called": (
            "gateway.yaml",
            "MAAS_GATEWAY_AUTH_ADDRESS: auth:50052",
            "MAAS_GATEWAY_AUTH_ADDRESS: anomaly:50055",
            ["container gateway", "auth_address anomaly:50055", "anomaly runs services.anomaly, "
             "not services.auth"],
        ),
        "an address on the caller's own port": (
            "gateway.yaml",
            "MAAS_GATEWAY_ROUTER_ADDRESS: router:50053",
            "MAAS_GATEWAY_ROUTER_ADDRESS: 127.0.0.1:50051",
            ["container gateway", "router_address 127.0.0.1:50051", "gateway runs gateway, not "
             "services.router"],
        ),
        "a pod annotation naming the gRPC port": (
            "router.yaml",
            'prometheus.io/port: "9464"',
            'prometheus.io/port: "50053"',
            ["container router", "pod annotation prometheus.io/port 50053", "port 50053 of "
             "router is not its metrics port (9464)"],
        ),
        "a pod annotation naming a port nothing listens on": (
            "router.yaml",
            'prometheus.io/port: "9464"',
            'prometheus.io/port: "9465"',
            ["container router", "prometheus.io/port 9465: nothing in this pod listens on 9465"],
        ),
        "a service Prometheus does not scrape": (
            "anomaly.yaml",
            'prometheus.io/scrape: "true"',
            'prometheus.io/scrape: "false"',
            ["container anomaly: Prometheus does not scrape it"],
        ),
        "a CPU engine holding a GPU": (
            "inference.yaml",
            "image: maas:0.1.0-gpu",
            "image: maas:0.1.0-cpu",
            ["container inference", "limits nvidia.com/gpu but runs the CPU engine"],
        ),
    }
)  # fmt: skip


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_copy_fails_naming_the_problem(case: str, tmp_path: Path) -> None:
    edit, old, new, expected = BROKEN[case]
    root = copy_with(tmp_path, FILES, f"deploy/k8s/{edit}", old, new)
    problems = k8s_problems(root / "deploy" / "k8s")
    assert named(problems, *expected), problems


def test_main_fails_on_a_broken_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit, old, new, _ = BROKEN["a missing probe"]
    root = copy_with(tmp_path, FILES, f"deploy/k8s/{edit}", old, new)
    assert main([str(root / "deploy" / "k8s")]) == 1
    assert "no gRPC readinessProbe" in capsys.readouterr().err
