"""`host:port` addresses inside deploy values (plain, in URLs, in JSON lists,
in gRPC targets such as `dns:///auth:50052` or `ipv4:a:1,b:2`, and in
comma-separated lists)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD = frozenset({"0.0.0.0", "::", ""})

_ADDRESS = re.compile(
    # a scheme, or gRPC's dns resolver (`dns:///auth:50052`, `dns://8.8.8.8/auth:50052`)
    r"^(?:dns:(?://[^/\s]*/)?|[a-z][a-z0-9+.-]*://)?"
    r"(?:[^@/\s]*@)?"  # user:password@
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*)"
    r":(?P<port>\d{1,5})"
    r"(?:/\S*)?$"
)
# gRPC's name-resolver prefixes: dns:[//authority]/, ipv4:, ipv6:.
_GRPC_TARGET = re.compile(r"^(?:dns:(?://[^/]*)?/|ipv4:|ipv6:)")


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    # As written, for messages.
    text: str


def addresses_in(value: str) -> list[Address]:
    """The addresses a value names: itself, or the items of a list."""
    value = value.strip()
    if value.startswith("["):
        try:
            items = json.loads(value)
        except json.JSONDecodeError:
            items = None
        if isinstance(items, list):
            return [a for item in items if isinstance(item, str) for a in addresses_in(item)]
    target = _GRPC_TARGET.sub("", value)
    if target != value or ("," in value and "://" not in value):
        items = [item.strip() for item in target.split(",")]
        # One item is named as written ("dns:///auth:50052"); a list's by each.
        return [a for item in items for a in _address(item, value if len(items) == 1 else item)]
    return _address(value, value)


def _address(value: str, text: str) -> list[Address]:
    match = _ADDRESS.match(value)
    # A bare number before the colon is no host name ("10:30").
    if match is None or match["host"].isdigit():
        return []
    return [Address(match["host"].strip("[]").lower(), int(match["port"]), text)]


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in WILDCARD
