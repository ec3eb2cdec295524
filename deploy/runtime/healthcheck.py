"""`python -m deploy.runtime.healthcheck HOST:PORT [SERVICE]`: exit 0 when SERVING.

The container health check: one standard gRPC health Check, no extra binary."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.runtime.spec import CommandSpec

# Positional HOST:PORT [SERVICE] only: no flags, no variables.
SPEC = CommandSpec(module="deploy.runtime.healthcheck")


def main() -> None:
    target = sys.argv[1]
    service = sys.argv[2] if len(sys.argv) > 2 else ""
    with grpc.insecure_channel(target) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=3.0
            )
        except grpc.RpcError as err:
            print(f"{target} {service}: {err.code().name}", file=sys.stderr)
            sys.exit(1)
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    sys.exit(0 if serving else 1)


if __name__ == "__main__":
    main()
