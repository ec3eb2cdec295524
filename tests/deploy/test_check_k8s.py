"""The static Kubernetes check on what each overlay renders (kustomize): the
real manifests pass; copies broken in one place each fail with a problem that
names what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.checks.k8s import k8s_problems, main
from deploy.checks.kustomize import render
from tests.deploy.support import REPO, copy_with, named

K8S = REPO / "deploy" / "k8s"
FILES = [str(p.relative_to(REPO)) for p in sorted(K8S.rglob("*.yaml"))]
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir())


def test_the_real_manifests_have_no_problems() -> None:
    assert OVERLAYS == ["cpu", "gpu"]
    assert k8s_problems(K8S) == []
    assert main([str(K8S)]) == 0
    for overlay in OVERLAYS:
        assert main([str(K8S / "overlays" / overlay)]) == 0


def test_without_kustomize_the_check_fails_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where nothing can be installed: under a file.
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MAAS_TOOLS_DIR", str(tmp_path / "file" / "tools"))
    problems = k8s_problems(K8S)
    expected = "overlays/cpu: kustomize build fails: cannot install kustomize"
    assert named(problems, expected), problems


def rendered(overlay: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The overlay's objects by (kind, name)."""
    docs = yaml.safe_load_all(render(K8S / "overlays" / overlay))
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def images(objects: dict[tuple[str, str], dict[str, Any]], name: str) -> set[str]:
    pod = objects["Deployment", name]["spec"]["template"]["spec"]
    return {c["image"] for c in pod["containers"]}


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_each_overlay_sets_the_images_and_the_replica_counts(overlay: str) -> None:
    objects = rendered(overlay)
    assert images(objects, "inference") == {f"maas-engine:0.1.0-{overlay}"}
    for name in ("gateway", "auth", "router", "anomaly"):
        assert images(objects, name) == {"maas-control:0.1.0"}, name
    replicas = {n: objects["Deployment", n]["spec"]["replicas"] for n in ("gateway", "auth")}
    assert replicas == {"gateway": 2, "auth": 2}
    assert objects["Deployment", "router"]["spec"]["replicas"] == 1
    limits = objects["Deployment", "inference"]["spec"]["template"]["spec"]["containers"][0]
    assert ("nvidia.com/gpu" in limits["resources"]["limits"]) == (overlay == "gpu")
    for kind in ("PodDisruptionBudget",):
        for name in ("gateway", "auth", "router", "inference"):
            assert (kind, name) in objects
    scaler = objects["HorizontalPodAutoscaler", "inference"]["spec"]
    assert scaler["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "inference",
    }


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_each_model_is_its_own_deployment_service_budget_and_autoscaler(overlay: str) -> None:
    objects = rendered(overlay)
    models = {
        "inference": ("/models/tiny-llama", None),
        "inference-embed": ("/models/tiny-embed", "pooling"),
    }
    services = {"inference": "inference-replicas", "inference-embed": "inference-replicas-embed"}
    for name, (model, runner) in models.items():
        deployment = objects["Deployment", name]["spec"]
        assert deployment["replicas"] == 2
        pod = deployment["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in pod["env"]}
        assert (env["MAAS_INFERENCE_MODEL"], env.get("MAAS_INFERENCE_RUNNER")) == (model, runner)
        assert pod["image"] == f"maas-engine:0.1.0-{overlay}"
        assert ("nvidia.com/gpu" in pod["resources"]["limits"]) == (overlay == "gpu")
        labels = deployment["template"]["metadata"]["labels"]
        # Its own pods only, and every model's under the one inference policy.
        assert deployment["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}
        assert labels["app.kubernetes.io/component"] == "inference"
        service = objects["Service", services[name]]["spec"]
        assert service["clusterIP"] == "None" and service["selector"] == {
            "app.kubernetes.io/name": name
        }
        budget = objects["PodDisruptionBudget", name]["spec"]
        assert budget["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}
        scaler = objects["HorizontalPodAutoscaler", name]["spec"]
        assert scaler["scaleTargetRef"]["name"] == name
    router = objects["Deployment", "router"]["spec"]["template"]["spec"]["containers"]
    sync = next(c for c in router if c["name"] == "replica-sync")["command"]
    assert sync[sync.index("--replicas") + 1].split(",") == [
        f"{services[name]}:50054" for name in models
    ]
    policy = objects["NetworkPolicy", "inference"]["spec"]["podSelector"]["matchLabels"]
    assert policy == {"app.kubernetes.io/component": "inference"}
    # The chat model holds tenants' private adapters, fetched from every auth
    # replica, which lets its pods in; the embedding model holds none.
    chat, embed = (
        {e["name"]: e.get("value") for e in objects["Deployment", n]["spec"]["template"]["spec"]
         ["containers"][0]["env"]}
        for n in models
    )  # fmt: skip
    slots = {"cpu": "2", "gpu": "8"}[overlay]
    assert chat["MAAS_INFERENCE_ADAPTER_SLOTS"] == slots
    assert chat["MAAS_INFERENCE_REGISTRY_ADDRESS"] == "dns:///auth-headless:50052"
    assert "MAAS_INFERENCE_ADAPTER_SLOTS" not in embed
    assert "MAAS_INFERENCE_ADAPTER_SLOTS" not in objects["ConfigMap", "inference-config"]["data"]
    auth_callers = objects["NetworkPolicy", "auth"]["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "inference"}}} in auth_callers
    auth_env = objects["ConfigMap", "auth-config"]["data"]
    assert auth_env["MAAS_AUTH_QUOTA_URL"] == "redis://redis:6379/0"
    gateway_env = objects["ConfigMap", "gateway-config"]["data"]
    assert gateway_env["MAAS_GATEWAY_AUTH_ADDRESS"] == "dns:///auth-headless:50052"
    assert objects["Service", "auth-headless"]["spec"]["clusterIP"] == "None"


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

GPU_OVERLAY = "overlays/gpu/kustomization.yaml"

# (file edited (in base/ unless a path), text there, its replacement, parts of the expected problem)
BROKEN = {
    "an invalid field": (
        "inference.yaml",
        "publishNotReadyAddresses: true",
        "publishNotReadyAddress: true",
        ["Service/inference-replicas", "invalid at spec", "'publishNotReadyAddress'"],
    ),
    "a value of the wrong type": (
        "gateway.yaml",
        "periodSeconds: 5",
        "periodSeconds: five",
        [
            "Deployment/gateway",
            "invalid at spec.template.spec.containers.0.readinessProbe.periodSeconds",
            "'five' is not of type 'integer'",
        ],
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
        ["overlays/gpu: kustomize build fails", "auth.yaml"],
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
        "auth-headless:50052",
        "auth-headless:50062",
        [
            "container gateway",
            "dns:///auth-headless:50062",
            "Service auth-headless has port 50052, not 50062",
        ],
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
        "              value: /models/tiny-llama\n"
        "            - name: MAAS_INFERENCE_SERVICE_TOKEN\n"
        "              valueFrom:\n"
        "                secretKeyRef:\n"
        "                  name: maas-secrets\n"
        "                  key: service-token\n",
        "              value: /models/tiny-llama\n",
        ["container inference", "host '0.0.0.0' is beyond loopback"],
    ),
    "a Service targeting no container port": (
        "auth.yaml",
        "targetPort: grpc\n---\n# One DNS",
        "targetPort: grcp\n---\n# One DNS",
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
        GPU_OVERLAY,
        "  - name: inference\n    count: 2",
        "  - name: inference\n    count: 1",
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
            "MAAS_GATEWAY_AUTH_ADDRESS: dns:///auth-headless:50052",
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
            GPU_OVERLAY,
            "newTag: 0.1.0-gpu",
            "newTag: 0.1.0-cpu",
            ["container inference", "limits nvidia.com/gpu but runs the CPU engine"],
        ),
    }
)  # fmt: skip


def broken_copy(tmp_path: Path, edit: str, old: str, new: str) -> Path:
    """A copy of deploy/k8s with one edit (a base file unless a path is given)."""
    path = edit if "/" in edit else f"base/{edit}"
    return copy_with(tmp_path, FILES, f"deploy/k8s/{path}", old, new) / "deploy" / "k8s"


# The console serves HTTP only: httpGet probes of its sign-in page.
CONSOLE_READY = (
    "          readinessProbe:\n"
    "            httpGet:\n"
    "              port: 8080\n"
    "              path: /signin\n"
    "            periodSeconds: 5\n"
)
BROKEN.update(
    {
        "the console probed over gRPC": (
            "console.yaml",
            CONSOLE_READY,
            "          readinessProbe:\n            grpc:\n              port: 8080\n",
            [
                "Deployment/console",
                "readinessProbe asks gRPC health; services.console serves HTTP only",
            ],
        ),
        "the console ready on another page": (
            "console.yaml",
            CONSOLE_READY,
            CONSOLE_READY.replace("path: /signin", "path: /"),
            [
                "Deployment/console",
                "readinessProbe GETs /; services.console is ready when /signin answers",
            ],
        ),
        "the console without a readiness probe": (
            "console.yaml",
            CONSOLE_READY,
            "",
            [
                "Deployment/console",
                "no HTTP readinessProbe (httpGet: {port: 8080, path: /signin})",
            ],
        ),
    }
)


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_copy_fails_naming_the_problem(case: str, tmp_path: Path) -> None:
    edit, old, new, expected = BROKEN[case]
    problems = k8s_problems(broken_copy(tmp_path, edit, old, new) / "overlays" / "gpu")
    assert named(problems, *expected), problems


def test_main_fails_on_a_broken_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit, old, new, _ = BROKEN["a missing probe"]
    assert main([str(broken_copy(tmp_path, edit, old, new))]) == 1
    assert "no gRPC readinessProbe" in capsys.readouterr().err


# Replicas, disruption budgets, network policies and autoscaling (deploy.checks.k8s_policy).
BROKEN_POLICY = {
    "a single auth replica": (
        GPU_OVERLAY,
        "  - name: auth\n    count: 2",
        "  - name: auth\n    count: 1",
        ["Deployment/auth", "runs 1 replica of services.auth", "2 or more"],
    ),
    "a single gateway": (
        GPU_OVERLAY,
        "  - name: gateway\n    count: 2",
        "  - name: gateway\n    count: 1",
        ["Deployment/gateway", "runs 1 replica of gateway"],
    ),
    "a broken budget selector": (
        "auth.yaml",
        "  maxUnavailable: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: auth",
        "  maxUnavailable: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: oauth",
        ["Deployment/auth", "no PodDisruptionBudget covers its pods"],
    ),
    "a budget that blocks every drain": (
        "router.yaml",
        "  maxUnavailable: 1",
        "  minAvailable: 1",
        ["PodDisruptionBudget/router", "lets no pod of Deployment/router",
         "blocks every node drain"],
    ),
    "an internal Service left open to every source": (
        "network-policy.yaml",
        "  ingress:\n    - from:\n        - podSelector:\n            matchLabels:\n"
        "              app.kubernetes.io/name: auth\n      ports:\n        - port: 6379",
        "  ingress:\n    - ports:\n        - port: 6379",
        ["Service/redis", "port 6379 is open beyond the mesh's pods",
         "NetworkPolicy/redis lets in every source"],
    ),
    "an internal Service open to an address block": (
        "network-policy.yaml",
        "        - podSelector:\n            matchLabels:\n"
        "              app.kubernetes.io/name: auth\n      ports:\n        - port: 5432",
        "        - ipBlock:\n            cidr: 0.0.0.0/0\n      ports:\n        - port: 5432",
        ["Service/postgres", "port 5432 is open beyond the mesh's pods", "ipBlock 0.0.0.0/0"],
    ),
    "no default deny": (
        "network-policy.yaml",
        "  podSelector: {}\n  policyTypes: [\"Ingress\"]\n---",
        "  podSelector: {}\n  policyTypes: [\"Ingress\"]\n  ingress:\n    - {}\n---",
        ["overlays/gpu: namespace maas: no default-deny ingress NetworkPolicy"],
    ),
    "inference pods kept from auth's adapter registry": (
        "network-policy.yaml",
        "              app.kubernetes.io/name: anomaly\n"
        "        - podSelector:\n            matchLabels:\n"
        "              app.kubernetes.io/name: inference\n",
        "              app.kubernetes.io/name: anomaly\n",
        ["Deployment/inference container inference: dns:///auth-headless:50052",
         "no NetworkPolicy lets Deployment/inference's pods reach Deployment/auth's "
         "on port 50052"],
    ),
    "adapter slots with no registry": (
        "inference.yaml",
        "            - name: MAAS_INFERENCE_REGISTRY_ADDRESS\n"
        "              value: dns:///auth-headless:50052\n",
        "",
        ["Deployment/inference container inference",
         "adapter_slots 8 needs registry_address"],
    ),
    "a caller the callee's policy does not let in": (
        "network-policy.yaml",
        "              app.kubernetes.io/name: router\n"
        "        - podSelector:\n            matchLabels:\n"
        "              app.kubernetes.io/name: gateway\n      ports:\n        - port: 50054",
        "              app.kubernetes.io/name: router\n      ports:\n        - port: 50054",
        ["container gateway", "MAAS_GATEWAY_ROUTING direct",
         "no NetworkPolicy lets Deployment/gateway's pods reach Deployment/inference's "
         "on port 50054"],
    ),
    "a metrics port Prometheus cannot reach": (
        "network-policy.yaml",
        "        - port: 9464",
        "        - port: 9465",
        ["Deployment/auth", "Prometheus cannot scrape port 9464"],
    ),
    "an autoscaler aimed elsewhere": (
        "autoscaling.yaml",
        "    name: inference",
        "    name: inferense",
        ["HorizontalPodAutoscaler/inference", "scales Deployment/inferense, which is not here"],
    ),
    "inference without an autoscaler": (
        "autoscaling.yaml",
        "    name: inference",
        "    name: inferense",
        ["Deployment/inference", "no HorizontalPodAutoscaler scales it"],
    ),
    "an autoscaler down to one replica": (
        "autoscaling.yaml",
        "minReplicas: 2",
        "minReplicas: 1",
        ["HorizontalPodAutoscaler/inference", "minReplicas 1"],
    ),
}  # fmt: skip


BROKEN_POLICY.update(
    {
        "auth closed to the console": (
            "network-policy.yaml",
            "              app.kubernetes.io/name: console\n      ports:\n        - port: 50052",
            "              app.kubernetes.io/name: nobody\n      ports:\n        - port: 50052",
            ["console", "auth"],
        ),
        "the replica sync not naming the embedding model": (
            "router.yaml",
            '"inference-replicas:50054,inference-replicas-embed:50054"',
            '"inference-replicas:50054"',
            ["Deployment/inference-embed", "the router never learns of its pods"],
        ),
        "the inference policy covering the chat model only": (
            "network-policy.yaml",
            "      app.kubernetes.io/component: inference",
            "      app.kubernetes.io/name: inference",
            ["container replica-sync", "inference-replicas-embed:50054",
             "no NetworkPolicy lets Deployment/router's pods reach "
             "Deployment/inference-embed's on port 50054"],
        ),
        "the embedding model without an autoscaler": (
            "inference-embed.yaml",
            "    kind: Deployment\n    name: inference-embed",
            "    kind: Deployment\n    name: inference-embedd",
            ["Deployment/inference-embed", "no HorizontalPodAutoscaler scales it"],
        ),
        "a single embedding model replica": (
            GPU_OVERLAY,
            "  - name: inference-embed\n    count: 2",
            "  - name: inference-embed\n    count: 1",
            ["Deployment/inference-embed", "2 or more replicas"],
        ),
        "the embedding model on a runner vLLM has not": (
            "inference-embed.yaml",
            "              value: pooling",
            "              value: embedding",
            ["Deployment/inference-embed container inference", "MAAS_INFERENCE_RUNNER"],
        ),
        "the embedding model's pods also the chat model's": (
            "inference-embed.yaml",
            "      app.kubernetes.io/name: inference-embed\n  template:",
            "      app.kubernetes.io/name: inference\n  template:",
            ["Deployment/inference-embed", "selector does not match its pod template's labels"],
        ),
    }
)  # fmt: skip


@pytest.mark.parametrize("case", list(BROKEN_POLICY))
def test_a_copy_breaking_a_cluster_rule_fails_naming_it(case: str, tmp_path: Path) -> None:
    edit, old, new, expected = BROKEN_POLICY[case]
    problems = k8s_problems(broken_copy(tmp_path, edit, old, new) / "overlays" / "gpu")
    assert named(problems, *expected), problems


def test_workloads_selecting_each_others_pods_fail_naming_both(tmp_path: Path) -> None:
    objects = rendered("gpu")
    chat = objects["Deployment", "inference"]
    copy = yaml.safe_load(yaml.safe_dump(chat))
    copy["metadata"]["name"] = "inference-copy"
    (tmp_path / "models.yaml").write_text(yaml.safe_dump_all([chat, copy]))
    problems = k8s_problems(tmp_path)
    assert named(
        problems,
        "Deployment/inference",
        "selector also matches the pods of Deployment/inference-copy",
    ), problems
