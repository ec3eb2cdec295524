"""The Kubernetes rules over whole objects rather than containers: enough
replicas where a service must survive a rollout, a disruption budget for each
replicated workload that lets drains proceed, network policies that close the
namespace and open each internal service to the mesh's pods that call it only
(and every metrics port to Prometheus), and an autoscaler on inference."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from deploy.checks.k8s_objects import WORKLOAD_KINDS, Manifest, at, selects
from services.catalog import DEPLOYED

GATEWAY_MODULE = "gateway"
# Modules people and clients reach from outside (the gateway, the console):
# their Services may be open beyond the mesh's pods.
PUBLIC_MODULES = frozenset(spec.module for spec in DEPLOYED if spec.public)
INFERENCE_MODULE = "services.inference"
# Modules that must run as 2 or more replicas, and why.
REPLICATED = {
    GATEWAY_MODULE: "a single gateway makes every rollout and node drain an outage",
    "services.auth": "auth's quota state is shared (Redis), so one replica is an avoidable outage",
}
# Modules whose pods need a disruption budget even as one replica (one active router).
BUDGETED = frozenset({"services.router"})
AUTOSCALER_KINDS = frozenset({"HorizontalPodAutoscaler"})


@dataclass(frozen=True)
class Reach:
    """A container dialling another workload's pods, on a container port there."""

    caller_where: str
    caller: Manifest
    callee: Manifest
    port: int
    said: str


@dataclass(frozen=True)
class Pods:
    """A workload with what the rules need of its containers."""

    workload: Manifest
    # The `python -m` modules its containers run.
    modules: frozenset[str]
    # containerPort numbers by name, over its containers.
    ports: dict[str, int]


def policy_problems(
    manifests: Sequence[Manifest],
    pods: Sequence[Pods],
    reaches: Sequence[Reach],
    scraped: Sequence[tuple[Manifest, int]],
) -> list[str]:
    """Every problem of replicas, budgets, network policies and autoscaling."""
    objects = [m for m in manifests if m.valid]
    return [
        *_replica_problems(pods),
        *_budget_problems(objects, pods),
        *_network_problems(objects, pods, reaches, scraped),
        *_autoscaling_problems(objects, pods),
    ]


def _replica_problems(pods: Sequence[Pods]) -> Iterator[str]:
    for p in pods:
        for module in sorted(p.modules & REPLICATED.keys()):
            if p.workload.replicas < 2:
                yield (
                    f"{p.workload.where}: runs {p.workload.replicas} replica of {module}; "
                    f"it should run 2 or more ({REPLICATED[module]})"
                )


def _budgets_of(objects: Sequence[Manifest], workload: Manifest) -> list[Manifest]:
    return [
        m
        for m in objects
        if m.kind == "PodDisruptionBudget"
        and m.namespace == workload.namespace
        and selects(at(m.doc, "spec", "selector", "matchLabels"), workload.pod_labels)
    ]


def _budget_problems(objects: Sequence[Manifest], pods: Sequence[Pods]) -> Iterator[str]:
    for p in pods:
        workload = p.workload
        if workload.kind not in WORKLOAD_KINDS:
            continue
        budgets = _budgets_of(objects, workload)
        if not budgets and (workload.replicas > 1 or p.modules & BUDGETED):
            yield f"{workload.where}: no PodDisruptionBudget covers its pods"
        for budget in budgets:
            spec = budget.doc.get("spec") or {}
            most_down = spec.get("maxUnavailable")
            least_up = spec.get("minAvailable")
            if most_down in (0, "0%") or (
                isinstance(least_up, int) and least_up >= workload.replicas
            ):
                yield (
                    f"{budget.where}: lets no pod of {workload.kind}/{workload.name} "
                    f"({workload.replicas} replicas) go: it blocks every node drain"
                )


def _policies_of(objects: Sequence[Manifest], workload: Manifest) -> list[Manifest]:
    """The NetworkPolicies for ingress that select the workload's pods."""
    found = []
    for m in objects:
        if m.kind != "NetworkPolicy" or m.namespace != workload.namespace:
            continue
        if "Ingress" not in (at(m.doc, "spec", "policyTypes") or ["Ingress"]):
            continue
        selector = at(m.doc, "spec", "podSelector") or {}
        labels = selector.get("matchLabels") or {}
        # An empty podSelector selects every pod of the namespace.
        if not labels or selects(labels, workload.pod_labels):
            found.append(m)
    return found


def _rules_on(policy: Manifest, port: int, names: dict[str, int]) -> Iterator[dict[str, Any]]:
    """The policy's ingress rules that cover `port` (by number or by name)."""
    for rule in at(policy.doc, "spec", "ingress") or []:
        ports = rule.get("ports")
        if not ports or any(
            p.get("port") is None or p.get("port") == port or names.get(p.get("port")) == port
            for p in ports
        ):
            yield rule


def _outsiders(rule: dict[str, Any]) -> str | None:
    """Who beyond the namespace's pods a rule lets in; None if no one."""
    peers = rule.get("from")
    if not peers:
        return "every source (no `from`)"
    for peer in peers:
        if "ipBlock" in peer:
            return f"ipBlock {at(peer, 'ipBlock', 'cidr')}"
        if "namespaceSelector" in peer:
            return "pods of other namespaces (namespaceSelector)"
    return None


def _lets_in(rule: dict[str, Any], caller: Manifest) -> bool:
    """Whether a rule lets the caller's pods (of the policy's namespace) in."""
    peers = rule.get("from")
    if not peers:
        return True
    return any(
        set(peer) == {"podSelector"}
        and (
            not at(peer, "podSelector", "matchLabels")
            or selects(at(peer, "podSelector", "matchLabels"), caller.pod_labels)
        )
        for peer in peers
    )


def _network_problems(
    objects: Sequence[Manifest],
    pods: Sequence[Pods],
    reaches: Sequence[Reach],
    scraped: Sequence[tuple[Manifest, int]],
) -> Iterator[str]:
    # Each namespace with pods, and the file (or overlay) that names it first.
    namespaces = {p.workload.namespace: p.workload.file for p in reversed(pods)}
    for namespace, file in sorted(namespaces.items()):
        if not any(
            m.kind == "NetworkPolicy"
            and m.namespace == namespace
            and not at(m.doc, "spec", "podSelector", "matchLabels")
            and not at(m.doc, "spec", "podSelector", "matchExpressions")
            and "Ingress" in (at(m.doc, "spec", "policyTypes") or [])
            and not at(m.doc, "spec", "ingress")
            for m in objects
        ):
            yield (
                f"{file}: namespace {namespace}: no default-deny ingress NetworkPolicy "
                "(podSelector {}, policyTypes [Ingress], no rules)"
            )
    yield from _internal_service_problems(objects, pods)
    by_workload = {id(p.workload): p for p in pods}
    for reach in reaches:
        if reach.callee is reach.caller:
            continue
        policies = _policies_of(objects, reach.callee)
        names = by_workload[id(reach.callee)].ports if id(reach.callee) in by_workload else {}
        if policies and not any(
            _lets_in(rule, reach.caller)
            for policy in policies
            for rule in _rules_on(policy, reach.port, names)
        ):
            yield (
                f"{reach.caller_where}: {reach.said}: no NetworkPolicy lets "
                f"{reach.caller.kind}/{reach.caller.name}'s pods reach "
                f"{reach.callee.kind}/{reach.callee.name}'s on port {reach.port}"
            )
    for workload, port in scraped:
        policies = _policies_of(objects, workload)
        names = by_workload[id(workload)].ports if id(workload) in by_workload else {}
        if policies and not any(next(_rules_on(policy, port, names), None) for policy in policies):
            yield (
                f"{workload.where}: Prometheus cannot scrape port {port}: "
                "no NetworkPolicy lets anyone in on it"
            )


def _internal_service_problems(objects: Sequence[Manifest], pods: Sequence[Pods]) -> Iterator[str]:
    """Each Service but a public one's (the gateway's, the console's): its pods
    selected by some policy, and no rule on its ports letting in anything but
    the namespace's pods."""
    for service in objects:
        if service.kind != "Service":
            continue
        selector = at(service.doc, "spec", "selector")
        selected = [
            p
            for p in pods
            if p.workload.namespace == service.namespace
            and selects(selector, p.workload.pod_labels)
        ]
        if not selected or any(PUBLIC_MODULES & set(p.modules) for p in selected):
            continue
        for p in selected:
            policies = _policies_of(objects, p.workload)
            if not policies:
                yield (
                    f"{service.where}: open to every pod of the cluster: no NetworkPolicy "
                    f"selects {p.workload.kind}/{p.workload.name}'s pods"
                )
                continue
            for port in at(service.doc, "spec", "ports") or []:
                target = port.get("targetPort", port.get("port"))
                number = p.ports.get(target) if isinstance(target, str) else target
                if not isinstance(number, int):
                    continue  # a targetPort naming no containerPort: told by the Service check
                for policy in policies:
                    for rule in _rules_on(policy, number, p.ports):
                        outsiders = _outsiders(rule)
                        if outsiders is not None:
                            yield (
                                f"{service.where}: port {port.get('port')} is open beyond "
                                f"the mesh's pods: {policy.kind}/{policy.name} lets in "
                                f"{outsiders}"
                            )


def _autoscaling_problems(objects: Sequence[Manifest], pods: Sequence[Pods]) -> Iterator[str]:
    scalers = [m for m in objects if m.kind in AUTOSCALER_KINDS]
    workloads = {(p.workload.kind, p.workload.name, p.workload.namespace) for p in pods}
    for scaler in scalers:
        spec = scaler.doc.get("spec") or {}
        target = spec.get("scaleTargetRef") or {}
        if (target.get("kind"), target.get("name"), scaler.namespace) not in workloads:
            yield (
                f"{scaler.where}: scales {target.get('kind')}/{target.get('name')}, "
                "which is not here"
            )
        least, most = int(spec.get("minReplicas") or 1), int(spec.get("maxReplicas") or 0)
        if least < 2:
            yield f"{scaler.where}: minReplicas {least}: below 2, one drain is an outage"
        if most < least:
            yield f"{scaler.where}: maxReplicas {most} is below minReplicas {least}"
        if not any(
            m.get("type") in {"Pods", "Object", "External"} for m in spec.get("metrics") or []
        ):
            yield (
                f"{scaler.where}: scales on no engine or queue metric "
                "(Pods, Object or External), only on CPU"
            )
    for p in pods:
        if INFERENCE_MODULE not in p.modules:
            continue
        if not any(
            at(s.doc, "spec", "scaleTargetRef", "kind") == p.workload.kind
            and at(s.doc, "spec", "scaleTargetRef", "name") == p.workload.name
            and s.namespace == p.workload.namespace
            for s in scalers
        ):
            yield f"{p.workload.where}: no HorizontalPodAutoscaler scales it"
