"""Kubernetes objects as the checks read them: one parsed document, and the
label matching that Services, budgets and policies select pods with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet"})


def at(node: Any, *keys: str) -> Any:
    """node[k1][k2]...; None where a level is missing or no mapping."""
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, Any]) -> bool:
    """A Service's (or matchLabels') selector: every label given matches; an empty one, none."""
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


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
        return str(at(self.doc, "metadata", "name"))

    @property
    def namespace(self) -> str:
        return str(at(self.doc, "metadata", "namespace") or "default")

    @property
    def where(self) -> str:
        return f"{self.file}: {self.kind}/{self.name}"

    @property
    def pod_labels(self) -> dict[str, Any]:
        """A workload's pod template labels."""
        return dict(at(self.doc, "spec", "template", "metadata", "labels") or {})

    @property
    def replicas(self) -> int:
        """A workload's replica count (Kubernetes' default is 1)."""
        return int(at(self.doc, "spec", "replicas") or 1)
