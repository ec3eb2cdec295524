"""`python -m deploy.checks.k8s [DIR]`: checks the Kubernetes manifests in
deploy/k8s/ without a cluster. Every object validates against the API schema
(strict: no unknown fields; offline, with kubernetes-validate); Services and
disruption budgets select pods; config maps referenced exist; inference runs
as 2 or more replicas under a disruption budget. The rest is
deploy.checks.rules over the pods' containers: a name resolves to a Service's
port, then through its targetPort to the selected pods' containers, loopback
to the caller's pod, and Prometheus scrapes the pods annotated for it."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import yaml

from deploy.checks.addresses import LOOPBACK, Address
from deploy.checks.entrypoints import invoke, python_module
from deploy.checks.model import Container, DeclaredPort, Deployment, Endpoint, Grace, Probe, Scrape
from deploy.checks.report import checked_path, report
from deploy.checks.rules import deployment_problems

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "k8s"
# The oldest Kubernetes the manifests must be valid for (gRPC probes are GA since 1.27).
KUBERNETES_VERSION = "1.30"
# What Kubernetes waits after SIGTERM when a pod sets no terminationGracePeriodSeconds.
DEFAULT_TERMINATION_GRACE_S = 30
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet"})
INFERENCE_MODULE = "services.inference"
GPU_RESOURCE = "nvidia.com/gpu"
_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass
class Manifest:
    file: str
    doc: dict[str, Any]
    # Passed the schema; only such objects are looked into further.
    valid: bool = True

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind"))

    @property
    def name(self) -> str:
        return str(_at(self.doc, "metadata", "name"))

    @property
    def namespace(self) -> str:
        return str(_at(self.doc, "metadata", "namespace") or "default")

    @property
    def where(self) -> str:
        return f"{self.file}: {self.kind}/{self.name}"


@dataclass
class PodContainer:
    """A container of a workload's pod, with its model for the rules."""

    workload: Manifest
    spec: dict[str, Any]
    model: Container
    # containerPort numbers by name (a port without a name under its number).
    declared: dict[str, int] = field(default_factory=dict)


def _at(node: Any, *keys: str) -> Any:
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` references to the container's own variables."""
    return _REFERENCE.sub(lambda m: env.get(m[1], m[0]), value)


def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, Any]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


class K8sCheck:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.problems: list[str] = []
        self.manifests: list[Manifest] = []
        self.containers: list[PodContainer] = []

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def run(self) -> list[str]:
        files = sorted(self.directory.glob("*.yaml"))
        if not files:
            return [f"{self.directory}: no manifests"]
        for path in files:
            self._load(path)
        namespaces = {m.name for m in self.manifests if m.kind == "Namespace"}
        for manifest in self.manifests:
            if manifest.kind != "Namespace" and namespaces and manifest.namespace not in namespaces:
                self.problem(manifest.where, f"namespace {manifest.namespace} is not created here")
            if manifest.kind in WORKLOAD_KINDS and manifest.valid:
                self._load_workload(manifest)
        for container in self.containers:
            spec = container.model.invocation.spec if container.model.invocation else None
            if spec is not None and spec.module == INFERENCE_MODULE:
                self._check_inference(container.workload)
        deployment = Deployment(
            [c.model for c in self.containers],
            self._resolve,
            list(self._scrapes()),
            declare_port="give it a containerPort",
            no_gpu=f"sets no {GPU_RESOURCE} limit",
        )
        self.problems += deployment_problems(deployment)
        for manifest in self.manifests:
            if not manifest.valid:
                continue
            if manifest.kind == "Service":
                self._check_service(manifest)
            elif manifest.kind == "PodDisruptionBudget":
                selector = _at(manifest.doc, "spec", "selector", "matchLabels")
                if not self._pods_of(manifest, selector):
                    self.problem(manifest.where, "selects no pods of these manifests")
        return list(dict.fromkeys(self.problems))

    def _load(self, path: Path) -> None:
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as err:
            self.problems.append(f"{path.name}: cannot be read as YAML: {err}")
            return
        for doc in docs:
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                self.problems.append(f"{path.name}: a document without kind and apiVersion")
                continue
            manifest = Manifest(path.name, doc)
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as err:
                at = ".".join(str(p) for p in err.path) or "(top)"
                self.problem(manifest.where, f"invalid at {at}: {err.message}")
                manifest.valid = False
            except kubernetes_validate.SchemaNotFoundError as err:
                self.problem(manifest.where, str(err.message))
                continue
            self.manifests.append(manifest)

    def _find(self, kind: str, name: str, namespace: str) -> Manifest | None:
        return next(
            (
                m
                for m in self.manifests
                if m.kind == kind and m.name == name and m.namespace == namespace
            ),
            None,
        )

    def _pods_of(self, owner: Manifest, selector: Mapping[str, Any] | None) -> list[Manifest]:
        """Workloads in the owner's namespace whose pods the selector matches."""
        return [
            m
            for m in self.manifests
            if m.kind in WORKLOAD_KINDS
            and m.namespace == owner.namespace
            and _selects(selector, _at(m.doc, "spec", "template", "metadata", "labels") or {})
        ]

    def _load_workload(self, workload: Manifest) -> None:
        pod = _at(workload.doc, "spec", "template", "spec") or {}
        for spec in [*(pod.get("initPodContainers") or []), *(pod.get("containers") or [])]:
            where = f"{workload.where} container {spec.get('name')}"
            model = Container(where, name=str(spec.get("name")), declares_every_port=True)
            container = PodContainer(workload, spec, model)
            model.env = self._environment(container)
            model.argv = [
                _expand(str(a), model.env)
                for a in [*(spec.get("command") or []), *(spec.get("args") or [])]
            ]
            for port in spec.get("ports") or []:
                number = port.get("containerPort")
                if isinstance(number, int):
                    name = str(port.get("name", number))
                    container.declared[name] = number
                    model.ports.append(
                        DeclaredPort(number, f"declares containerPort {number} ({name})")
                    )
            # A startup probe is optional; one given must be gRPC too.
            optional = ("startupProbe",) if "startupProbe" in spec else ()
            model.required_probes = ("readinessProbe", "livenessProbe", *optional)
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                grpc = _at(spec.get(kind), "grpc")
                if grpc is not None:
                    readiness = kind == "readinessProbe"
                    model.probes.append(
                        Probe(kind, grpc.get("port"), grpc.get("service", ""), readiness)
                    )
            grace = pod.get("terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE_S)
            model.grace = Grace(grace, f"terminationGracePeriodSeconds ({grace})")
            model.values = [*model.env.items(), *(("command", arg) for arg in model.argv[1:])]
            image = str(spec.get("image", ""))
            # The image's tag names the engine it was built with (maas:0.1.0-gpu).
            if image.rpartition(":")[2].endswith("gpu"):
                model.gpu_engine = f"runs image {image}"
            if _at(spec, "resources", "limits", GPU_RESOURCE) is not None:
                model.gpu = f"limits {GPU_RESOURCE}"
            if run := python_module(model.argv):
                model.invocation = invoke(run[0], run[1], model.env)
            elif image.rpartition("/")[2].startswith("maas"):
                self.problem(where, "a project image needs a `python -m` command")
            self.containers.append(container)

    def _environment(self, container: PodContainer) -> dict[str, str]:
        """Its variables as the process sees them; secrets and pod fields as placeholders."""
        where = container.model.where
        env: dict[str, str] = {}
        namespace = container.workload.namespace
        for source in container.spec.get("envFrom") or []:
            name = _at(source, "configMapRef", "name")
            if name is None:
                continue
            config = self._find("ConfigMap", name, namespace)
            if config is None:
                self.problem(where, f"envFrom names ConfigMap {name}, which is not here")
                continue
            prefix = str(source.get("prefix", ""))
            env.update({prefix + k: str(v) for k, v in (config.doc.get("data") or {}).items()})
        for item in container.spec.get("env") or []:
            name = str(item.get("name"))
            if "value" in item:
                env[name] = _expand(str(item["value"]), env)
                continue
            ref = _at(item, "valueFrom", "configMapKeyRef")
            if ref is not None:
                config = self._find("ConfigMap", ref.get("name"), namespace)
                data = (config.doc.get("data") or {}) if config else {}
                if ref.get("key") not in data and not ref.get("optional"):
                    self.problem(
                        where,
                        f"{name} reads key {ref.get('key')} of ConfigMap {ref.get('name')}, "
                        "which is not here",
                    )
                env[name] = str(data.get(ref.get("key"), f"<{name}>"))
            else:
                env[name] = f"<{name}>"
        return env

    def _check_inference(self, workload: Manifest) -> None:
        if workload.kind != "Deployment" or int(_at(workload.doc, "spec", "replicas") or 1) < 2:
            self.problem(workload.where, "inference should be a Deployment of 2 or more replicas")
        labels = _at(workload.doc, "spec", "template", "metadata", "labels") or {}
        if not any(
            m.kind == "PodDisruptionBudget"
            and m.namespace == workload.namespace
            and _selects(_at(m.doc, "spec", "selector", "matchLabels"), labels)
            for m in self.manifests
        ):
            self.problem(workload.where, "no PodDisruptionBudget covers its pods")

    def _resolve(self, caller: Container, address: Address) -> list[Endpoint] | str:
        """Loopback is the caller's pod; a name, a Service's port, mapped to
        the containers its targetPort names in the pods it selects."""
        workload = next(c.workload for c in self.containers if c.model is caller)
        if address.host in LOOPBACK:
            return self._in_pod(workload, address.port)
        service = self._service_named(address.host, workload.namespace)
        if service is None:
            return f"{address.host} names no Service here"
        ports = _at(service.doc, "spec", "ports") or []
        port = next((p for p in ports if p.get("port") == address.port), None)
        if port is None:
            listed = ", ".join(str(p) for p in sorted(p.get("port") for p in ports))
            return f"Service {service.name} has port {listed}, not {address.port}"
        target = port.get("targetPort", address.port)
        selected = self._pods_of(service, _at(service.doc, "spec", "selector"))
        # One naming no containerPort is told by _check_service.
        return [
            Endpoint(c.model, c.declared[target] if isinstance(target, str) else target)
            for c in self.containers
            if c.workload in selected and target in (*c.declared, *c.declared.values())
        ]

    def _in_pod(self, workload: Manifest, port: int) -> list[Endpoint] | str:
        pod = [c.model for c in self.containers if c.workload is workload]
        listening = [c for c in pod if c.listening is not None and port in c.listening]
        if listening:
            return [Endpoint(c, port) for c in listening]
        if any(c.listening is None for c in pod):
            return []  # a service whose settings do not validate (told already)
        return f"nothing in this pod listens on {port}"

    def _scrapes(self) -> Iterator[Scrape]:
        """The pods Prometheus scrapes by annotation, on the port it names."""
        for manifest in self.manifests:
            pod = [c.model for c in self.containers if c.workload is manifest]
            annotations = _at(manifest.doc, "spec", "template", "metadata", "annotations") or {}
            if not pod or annotations.get("prometheus.io/scrape") != "true":
                continue
            port = str(annotations.get("prometheus.io/port"))
            if not port.isdigit():
                self.problem(manifest.where, f"pod annotation prometheus.io/port is {port}")
                continue
            said = "pod annotation prometheus.io/port"
            yield Scrape(pod[0], said, Address("127.0.0.1", int(port), port))

    def _service_named(self, host: str, namespace: str) -> Manifest | None:
        for manifest in self.manifests:
            if manifest.kind != "Service":
                continue
            full = f"{manifest.name}.{manifest.namespace}"
            names = {full, f"{full}.svc", f"{full}.svc.cluster.local"}
            if manifest.namespace == namespace:
                names.add(manifest.name)
            if host in names:
                return manifest
        return None

    def _check_service(self, service: Manifest) -> None:
        workloads = self._pods_of(service, _at(service.doc, "spec", "selector"))
        if not workloads:
            self.problem(service.where, "selects no pods of these manifests")
            return
        if not all(w.valid for w in workloads):
            return
        containers = [c for c in self.containers if c.workload in workloads]
        for port in _at(service.doc, "spec", "ports") or []:
            target = port.get("targetPort", port.get("port"))
            if not any(target in (*c.declared, *c.declared.values()) for c in containers):
                self.problem(
                    service.where,
                    f"port {port.get('port')}: targetPort {target} is no containerPort of "
                    f"{', '.join(w.name for w in workloads)}",
                )


def k8s_problems(directory: Path) -> list[str]:
    """Every problem found in the manifests under `directory`; empty if none."""
    return K8sCheck(directory).run()


def main(argv: Sequence[str] | None = None) -> int:
    directory = checked_path(argv, DEFAULT_DIR)
    return report(k8s_problems(directory), str(directory))


if __name__ == "__main__":
    sys.exit(main())
