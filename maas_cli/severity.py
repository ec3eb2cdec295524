"""Alert severities as the command line names and colours them."""

from __future__ import annotations

from maas.v1 import anomaly_pb2

SEVERITIES = {
    "info": anomaly_pb2.SEVERITY_INFO,
    "warning": anomaly_pb2.SEVERITY_WARNING,
    "critical": anomaly_pb2.SEVERITY_CRITICAL,
}
SEVERITY_STYLES = {"info": "dim", "warning": "yellow", "critical": "bold red"}


def severity_markup(severity: anomaly_pb2.Severity) -> str:
    """The severity's name in its colour, as rich markup."""
    name = anomaly_pb2.Severity.Name(severity).removeprefix("SEVERITY_").lower()
    return f"[{SEVERITY_STYLES.get(name, '')}]{name}[/]"
