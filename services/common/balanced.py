"""One channel over several replicas of a service: the address setting that
names them, and the service config that spreads calls over them round robin
and retries a call a dying replica dropped on another one.

An address setting is either one gRPC target (`auth:50052`,
`dns:///auth:50052`, `ipv4:10.0.0.1:50052,10.0.0.2:50052`) or a
comma-separated list of `host:port` whose hosts are IP literals, which becomes
gRPC's own `ipv4:`/`ipv6:` list. Several host names cannot be one gRPC target:
they are refused with the way out (one DNS name that resolves to every
replica, `dns:///name:port`), not resolved once here and then never again."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from typing import Any

# A target's scheme ("dns:///x", "ipv4:1.2.3.4:5", "unix:/path"): a name, a colon,
# and no digits-only port after it. A plain "host:port" has a port there.
_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")


def balanced_target(setting: str, text: str) -> str:
    """The gRPC target for an address setting: `text` unchanged when it is one
    target, the `ipv4:`/`ipv6:` list when it lists several IP `host:port`.
    A ValueError naming `setting` otherwise."""
    text = text.strip()
    if not text:
        raise ValueError(f"{setting}: empty; give host:port, a list of them, or a gRPC target")
    if text.startswith(_SCHEMES) or "," not in text:
        return text
    parts = [part.strip() for part in text.split(",")]
    families: set[int] = set()
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{setting}: {part!r} is not host:port")
        try:
            families.add(ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).version)
        except ValueError:
            raise ValueError(
                f"{setting}: {part!r} names a host; a list of several addresses takes IP "
                "addresses only (gRPC has no target for several names): give one DNS name "
                "that resolves to every replica as dns:///NAME:PORT"
            ) from None
    if len(families) > 1:
        raise ValueError(f"{setting}: mixes IPv4 and IPv6 addresses; gRPC takes one family a list")
    family = families.pop()
    return f"ipv{family}:" + ",".join(parts)


def list_authority(target: str) -> str | None:
    """For an `ipv4:`/`ipv6:` list, its first host: the name TLS checks every
    replica's certificate for (gRPC's own default for such a target is the
    whole list, which no certificate names). None for any other target.
    Replicas whose certificates name the service instead need
    `tls.server_name_override`."""
    if not target.startswith(("ipv4:", "ipv6:")):
        return None
    first = target.partition(":")[2].split(",")[0]
    return first.rpartition(":")[0]


def service_config(retried: Iterable[tuple[str, str | None]], *, max_attempts: int = 3) -> str:
    """A service config: round robin over every address the target resolves
    to (a replica that is down is skipped), and the `retried` (service, method
    or None for all of its methods) retried on UNAVAILABLE on another replica
    within the call's own deadline. Only calls safe to repeat belong there."""
    names: list[dict[str, str]] = [
        {"service": service} if method is None else {"service": service, "method": method}
        for service, method in retried
    ]
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if names:
        config["methodConfig"] = [
            {
                "name": names,
                "retryPolicy": {
                    # Three tries: the dying replica's, then two others'; gRPC caps it at 5.
                    "maxAttempts": max_attempts,
                    # Short: another replica is ready now; the backoff only
                    # spreads a burst of retries after a replica dropped them all.
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


def balanced_options(
    target: str, retried: Iterable[tuple[str, str | None]]
) -> Sequence[tuple[str, Any]]:
    """Channel options for `target`: `service_config(retried)`, retries on,
    and the authority of an address list."""
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", service_config(retried)),
        ("grpc.enable_retries", 1),
    ]
    authority = list_authority(target)
    if authority is not None:
        options.append(("grpc.default_authority", authority))
    return options
