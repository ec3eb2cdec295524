"""How the CLI and the local stack reach the mesh's services.

Plaintext unless told otherwise. `MAAS_TLS_CA` names the CA that signed the
mesh's certificates (TLS to the gateway needs only that); `MAAS_TLS_CERT` and
`MAAS_TLS_KEY` a client certificate, which internal services under mutual TLS
ask for (the local stack's throwaway CA issues `operator.pem`). Operators'
calls to internal services (`maas usage --tenant`, `maas alerts`) carry the
mesh's service token: `MAAS_SERVICE_TOKEN`, or `service_token` in
.maas/secrets.json (written by `make run`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

# The environment variable that carries the mesh's service token.
SERVICE_TOKEN_VARIABLE = "MAAS_SERVICE_TOKEN"

SECRETS_FILE = Path(".maas/secrets.json")
# The mesh's own name for it is observability.channels.SERVICE_TOKEN_METADATA_KEY;
# the client package stays free of server code.
SERVICE_TOKEN_METADATA_KEY = "x-maas-service-token"


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _token_in(secrets_file: Path) -> str | None:
    try:
        token = json.loads(secrets_file.read_text()).get("service_token")
    except (OSError, ValueError):
        return None
    return token if isinstance(token, str) else None


@dataclass(frozen=True)
class Connection:
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    service_token: str | None = None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, secrets_file: Path = SECRETS_FILE
    ) -> Connection:
        env = os.environ if environ is None else environ
        return cls(
            ca=_path(env.get("MAAS_TLS_CA")),
            cert=_path(env.get("MAAS_TLS_CERT")),
            key=_path(env.get("MAAS_TLS_KEY")),
            service_token=env.get(SERVICE_TOKEN_VARIABLE) or _token_in(secrets_file),
        )

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials when a CA or a client certificate is given."""
        if self.ca is None and self.cert is None:
            return None
        if (self.cert is None) != (self.key is None):
            raise ValueError("MAAS_TLS_CERT and MAAS_TLS_KEY go together")
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )

    def channel(self, target: str) -> grpc.aio.Channel:
        credentials = self.credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(target)
        return grpc.aio.secure_channel(target, credentials)

    def service_metadata(self) -> tuple[tuple[str, str], ...]:
        """The service token as call metadata, when there is one."""
        if self.service_token is None:
            return ()
        return ((SERVICE_TOKEN_METADATA_KEY, self.service_token),)
