"""`python -m deploy.checks.k8s [DIR]`: checks the Kubernetes manifests
without a cluster: what each overlay of deploy/k8s/overlays/ renders
(`kustomize build`, the pinned binary), so what is checked is what a user
applies; DIR may name one kustomization, or a folder of plain manifests.
Every object validates against the API schema
(strict: no unknown fields; offline, with kubernetes-validate); Services and
disruption budgets select pods; config maps referenced exist; inference runs
as 2 or more replicas under a disruption budget. The rest is
deploy.checks.rules over the pods' containers: a name resolves to a Service's
port, then through its targetPort to the selected pods' containers, loopback
to the caller's pod, and Prometheus scrapes the pods annotated for it; and
deploy.checks.k8s_policy over the objects: replicas, disruption budgets,
network policies and the inference autoscaler."""

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
from deploy.checks.k8s_objects import WORKLOAD_KINDS, Manifest, at, selects
from deploy.checks.k8s_policy import Pods, Reach, policy_problems
from deploy.checks.kustomize import KustomizeError, is_kustomization, render
from deploy.checks.model import Container, DeclaredPort, Deployment, Endpoint, Grace, Probe, Scrape
from deploy.checks.report import checked_path, report
from deploy.checks.rules import deployment_problems

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "k8s"
# The oldest Kubernetes the manifests must be valid for (gRPC probes are GA since 1.27).
KUBERNETES_VERSION = "1.30"
# What Kubernetes waits after SIGTERM when a pod sets no terminationGracePeriodSeconds.
DEFAULT_TERMINATION_GRACE_S = 30
INFERENCE_MODULE = "services.inference"
ROUTER_MODULE = "services.router"
GPU_RESOURCE = "nvidia.com/gpu"
# The gateway's setting that makes it stream from the inference pods themselves.
DIRECT_ROUTING = ("MAAS_GATEWAY_ROUTING", "direct")
_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass
class PodContainer:
    """A container of a workload's pod, with its model for the rules."""

    workload: Manifest
    spec: dict[str, Any]
    model: Container
    # containerPort numbers by name (a port without a name under its number).
    declared: dict[str, int] = field(default_factory=dict)


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` references to the container's own variables."""
    return _REFERENCE.sub(lambda m: env.get(m[1], m[0]), value)


class K8sCheck:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.problems: list[str] = []
        self.manifests: list[Manifest] = []
        self.containers: list[PodContainer] = []
        # Who dials whose pods, as names resolve (for the network policies).
        self.reaches: list[Reach] = []
        # The pods Prometheus scrapes, and on which port.
        self.scraped: list[tuple[Manifest, int]] = []

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def run(self) -> list[str]:
        if is_kustomization(self.directory):
            label = f"{self.directory.parent.name}/{self.directory.name}"
            try:
                self._load_text(label, render(self.directory))
            except KustomizeError as err:
                return [f"{label}: kustomize build fails: {err}"]
        else:
            files = sorted(self.directory.glob("*.yaml"))
            if not files:
                return [f"{self.directory}: no manifests"]
            for path in files:
                self._load_text(path.name, path.read_text())
        namespaces = {m.name for m in self.manifests if m.kind == "Namespace"}
        for manifest in self.manifests:
            if manifest.kind != "Namespace" and namespaces and manifest.namespace not in namespaces:
                self.problem(manifest.where, f"namespace {manifest.namespace} is not created here")
            if manifest.kind in WORKLOAD_KINDS and manifest.valid:
                self._load_workload(manifest)
                self._check_selector(manifest)
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
        self.reaches += self._direct_streams()
        self._check_routed()
        self.problems += policy_problems(self.manifests, self._pods(), self.reaches, self.scraped)
        for manifest in self.manifests:
            if not manifest.valid:
                continue
            if manifest.kind == "Service":
                self._check_service(manifest)
            elif manifest.kind == "PodDisruptionBudget":
                selector = at(manifest.doc, "spec", "selector", "matchLabels")
                if not self._pods_of(manifest, selector):
                    self.problem(manifest.where, "selects no pods of these manifests")
        return list(dict.fromkeys(self.problems))

    def _load_text(self, name: str, text: str) -> None:
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as err:
            self.problems.append(f"{name}: cannot be read as YAML: {err}")
            return
        for doc in docs:
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                self.problems.append(f"{name}: a document without kind and apiVersion")
                continue
            manifest = Manifest(name, doc)
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
            and selects(selector, at(m.doc, "spec", "template", "metadata", "labels") or {})
        ]

    def _load_workload(self, workload: Manifest) -> None:
        pod = at(workload.doc, "spec", "template", "spec") or {}
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
                grpc = at(spec.get(kind), "grpc")
                readiness = kind == "readinessProbe"
                if grpc is not None:
                    model.probes.append(
                        Probe(kind, grpc.get("port"), grpc.get("service", ""), readiness)
                    )
                http = at(spec.get(kind), "httpGet")
                if http is not None:
                    # A named port is the container's own containerPort of that name.
                    port = http.get("port")
                    number = container.declared.get(port, port) if isinstance(port, str) else port
                    path = str(http.get("path", "/"))
                    model.probes.append(Probe(kind, number, "", readiness, http_path=path))
            grace = pod.get("terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE_S)
            model.grace = Grace(grace, f"terminationGracePeriodSeconds ({grace})")
            model.values = [*model.env.items(), *(("command", arg) for arg in model.argv[1:])]
            image = str(spec.get("image", ""))
            # The image's tag names the engine it was built with (maas:0.1.0-gpu).
            if image.rpartition(":")[2].endswith("gpu"):
                model.gpu_engine = f"runs image {image}"
            if at(spec, "resources", "limits", GPU_RESOURCE) is not None:
                model.gpu = f"limits {GPU_RESOURCE}"
            if run := python_module(model.argv):
                model.invocation = invoke(run[0], run[1], model.env)
            elif image.rpartition("/")[2].startswith("maas"):
                self.problem(where, "a project image needs a `python -m` command")
            self.containers.append(container)

    def _check_selector(self, workload: Manifest) -> None:
        """Its selector matches its own pods (the API refuses it otherwise) and
        no other workload's: two Deployments that select each other's pods (a
        model copied without a name of its own) fight over them."""
        selector = at(workload.doc, "spec", "selector", "matchLabels")
        if not selects(selector, workload.pod_labels):
            self.problem(workload.where, "its selector does not match its pod template's labels")
            return
        for other in self.manifests:
            if (
                other is not workload
                and other.kind in WORKLOAD_KINDS
                and other.namespace == workload.namespace
                and selects(selector, other.pod_labels)
            ):
                self.problem(
                    workload.where,
                    f"its selector also matches the pods of {other.kind}/{other.name}",
                )

    def _environment(self, container: PodContainer) -> dict[str, str]:
        """Its variables as the process sees them; secrets and pod fields as placeholders."""
        where = container.model.where
        env: dict[str, str] = {}
        namespace = container.workload.namespace
        for source in container.spec.get("envFrom") or []:
            name = at(source, "configMapRef", "name")
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
            ref = at(item, "valueFrom", "configMapKeyRef")
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
        if workload.kind != "Deployment" or int(at(workload.doc, "spec", "replicas") or 1) < 2:
            self.problem(workload.where, "inference should be a Deployment of 2 or more replicas")
        labels = at(workload.doc, "spec", "template", "metadata", "labels") or {}
        if not any(
            m.kind == "PodDisruptionBudget"
            and m.namespace == workload.namespace
            and selects(at(m.doc, "spec", "selector", "matchLabels"), labels)
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
        ports = at(service.doc, "spec", "ports") or []
        port = next((p for p in ports if p.get("port") == address.port), None)
        if port is None:
            listed = ", ".join(str(p) for p in sorted(p.get("port") for p in ports))
            return f"Service {service.name} has port {listed}, not {address.port}"
        target = port.get("targetPort", address.port)
        selected = self._pods_of(service, at(service.doc, "spec", "selector"))
        # One naming no containerPort is told by _check_service.
        endpoints = [
            (c, Endpoint(c.model, c.declared[target] if isinstance(target, str) else target))
            for c in self.containers
            if c.workload in selected and target in (*c.declared, *c.declared.values())
        ]
        self.reaches += [
            Reach(caller.where, workload, c.workload, endpoint.port, address.text)
            for c, endpoint in endpoints
        ]
        return [endpoint for _, endpoint in endpoints]

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
            annotations = at(manifest.doc, "spec", "template", "metadata", "annotations") or {}
            if not pod or annotations.get("prometheus.io/scrape") != "true":
                continue
            port = str(annotations.get("prometheus.io/port"))
            if not port.isdigit():
                self.problem(manifest.where, f"pod annotation prometheus.io/port is {port}")
                continue
            said = "pod annotation prometheus.io/port"
            self.scraped.append((manifest, int(port)))
            yield Scrape(pod[0], said, Address("127.0.0.1", int(port), port))

    def _pods(self) -> list[Pods]:
        pods = []
        for workload in self.manifests:
            mine = [c for c in self.containers if c.workload is workload]
            if not mine:
                continue
            modules = frozenset(
                c.model.invocation.module for c in mine if c.model.invocation is not None
            )
            ports = {name: number for c in mine for name, number in c.declared.items()}
            pods.append(Pods(workload, modules, ports))
        return pods

    def _check_routed(self) -> None:
        """Every model's inference pods are among the replicas the router's pod
        dials (its replica sync's --replicas, or its own replicas setting):
        a model it never learns of is served to no one."""
        routers = {
            id(c.workload)
            for c in self.containers
            if c.model.invocation is not None and c.model.invocation.module == ROUTER_MODULE
        }
        if not routers:
            return
        reached = {id(r.callee) for r in self.reaches if id(r.caller) in routers}
        for container in self.containers:
            invocation = container.model.invocation
            if invocation is None or invocation.module != INFERENCE_MODULE:
                continue
            if id(container.workload) not in reached:
                self.problem(
                    container.workload.where,
                    "the router never learns of its pods: name its headless Service in the "
                    "replica sync's --replicas",
                )

    def _direct_streams(self) -> list[Reach]:
        """Routing direct, a gateway streams from the replicas' pod addresses,
        which it learns from the router: no setting names them."""
        reaches = []
        for caller in self.containers:
            if caller.model.env.get(DIRECT_ROUTING[0]) != DIRECT_ROUTING[1]:
                continue
            for replica in self.containers:
                invocation = replica.model.invocation
                if invocation is None or invocation.module != INFERENCE_MODULE:
                    continue
                if invocation.settings is not None:
                    said = f"{DIRECT_ROUTING[0]} {DIRECT_ROUTING[1]}"
                    port = invocation.settings.port
                    reaches.append(
                        Reach(caller.model.where, caller.workload, replica.workload, port, said)
                    )
        return reaches

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
        workloads = self._pods_of(service, at(service.doc, "spec", "selector"))
        if not workloads:
            self.problem(service.where, "selects no pods of these manifests")
            return
        if not all(w.valid for w in workloads):
            return
        containers = [c for c in self.containers if c.workload in workloads]
        for port in at(service.doc, "spec", "ports") or []:
            target = port.get("targetPort", port.get("port"))
            if not any(target in (*c.declared, *c.declared.values()) for c in containers):
                self.problem(
                    service.where,
                    f"port {port.get('port')}: targetPort {target} is no containerPort of "
                    f"{', '.join(w.name for w in workloads)}",
                )


def k8s_targets(directory: Path) -> list[Path]:
    """What to check: each overlay of a folder that has overlays/, else the folder."""
    overlays = directory / "overlays"
    if not is_kustomization(directory) and overlays.is_dir():
        return sorted(p for p in overlays.iterdir() if is_kustomization(p))
    return [directory]


def k8s_problems(directory: Path) -> list[str]:
    """Every problem found in the manifests under `directory` (each overlay's
    rendered output, where it has overlays); empty if none."""
    targets = k8s_targets(directory)
    if not targets:
        return [f"{directory}: no overlays"]
    return [problem for target in targets for problem in K8sCheck(target).run()]


def main(argv: Sequence[str] | None = None) -> int:
    directory = checked_path(argv, DEFAULT_DIR)
    return report(k8s_problems(directory), str(directory))


if __name__ == "__main__":
    sys.exit(main())
