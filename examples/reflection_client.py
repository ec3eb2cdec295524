"""A gRPC client that knows no contract in advance, as grpcurl works: every
message type comes from the server's reflection service at run time, so it
needs no `.proto` file and no generated code (it never imports maas.v1).

    python examples/reflection_client.py list
    python examples/reflection_client.py list maas.v1.Gateway
    python examples/reflection_client.py call maas.v1.Gateway/Generate \\
        -H "authorization: Bearer $(cat .maas/dev_api_key)" \\
        -d '{"model": "tiny-llama", "prompt": "Hello", "max_tokens": 16}'

`call` prints each response as one line of JSON. A failed call prints its
status to stderr and exits with the gRPC status code (1-16).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

# Command-line mistakes; failed calls exit with their gRPC status code.
EXIT_USAGE = 2


class UsageError(Exception):
    """A request this client cannot make: unknown method, bad JSON, client streaming."""


class ReflectionClient:
    """Resolves services, methods and message types through server reflection."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self._db = ProtoReflectionDescriptorDatabase(channel)
        self._pool = descriptor_pool.DescriptorPool(self._db)

    def services(self) -> list[str]:
        return sorted(self._db.get_services())

    def methods(self, service: str) -> list[MethodDescriptor]:
        try:
            return list(self._pool.FindServiceByName(service).methods)
        except KeyError:
            raise UsageError(f"the server has no service {service!r}") from None

    def method(self, name: str) -> MethodDescriptor:
        """`pkg.Service/Method` (as in the HTTP/2 path) or `pkg.Service.Method`."""
        service, sep, method = name.replace("/", ".").rpartition(".")
        found = {m.name: m for m in self.methods(service)} if sep else {}
        if method not in found:
            raise UsageError(f"the server has no method {name!r}")
        return found[method]

    def call(
        self,
        method: MethodDescriptor,
        request_json: str,
        metadata: Sequence[tuple[str, str]],
        timeout_s: float | None,
    ) -> Iterable[Message]:
        """Sends one request built from JSON; yields the response or responses."""
        if method.client_streaming:
            raise UsageError(f"{method.full_name} takes a stream of requests; not supported")
        request = message_factory.GetMessageClass(method.input_type)()
        try:
            json_format.Parse(request_json, request, descriptor_pool=self._pool)
        except json_format.ParseError as err:
            raise UsageError(f"the request is not a {method.input_type.full_name}: {err}") from None
        response_type = message_factory.GetMessageClass(method.output_type)
        path = f"/{method.containing_service.full_name}/{method.name}"
        make_call: Callable[..., Any] = (
            self._channel.unary_stream if method.server_streaming else self._channel.unary_unary
        )
        rpc = make_call(
            path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        reply = rpc(request, metadata=tuple(metadata), timeout=timeout_s)
        return reply if method.server_streaming else [reply]

    def to_json(self, message: Message) -> str:
        return json_format.MessageToJson(message, indent=None, descriptor_pool=self._pool)


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"a header is 'name: value', not {text!r}")
    # gRPC metadata keys are lower case.
    return name.strip().lower(), value.strip()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="127.0.0.1:50051", help="host:port of the server")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the services, or one service's methods")
    listing.add_argument("service", nargs="?", help="list this service's methods")
    calling = commands.add_parser("call", help="call a unary or server-streaming method")
    calling.add_argument("method", help="e.g. maas.v1.Gateway/Generate")
    calling.add_argument("-d", "--data", default="{}", help="the request as JSON ('-': stdin)")
    calling.add_argument(
        "-H", "--header", type=_header, action="append", default=[], help="'name: value' metadata"
    )
    calling.add_argument("--timeout-s", type=float, default=None, help="the call's deadline")
    return parser


def _signature(method: MethodDescriptor) -> str:
    request = ("stream " if method.client_streaming else "") + method.input_type.full_name
    response = ("stream " if method.server_streaming else "") + method.output_type.full_name
    return f"{method.name}({request}) returns ({response})"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with grpc.insecure_channel(args.address) as channel:
        client = ReflectionClient(channel)
        try:
            if args.command == "list" and args.service:
                for method in client.methods(args.service):
                    print(_signature(method))
            elif args.command == "list":
                print("\n".join(client.services()))
            else:
                data = sys.stdin.read() if args.data == "-" else args.data
                method = client.method(args.method)
                for response in client.call(method, data, args.header, args.timeout_s):
                    print(client.to_json(response), flush=True)
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USAGE
        except grpc.RpcError as err:
            code: grpc.StatusCode = err.code()
            print(f"error: {code.name} (code {code.value[0]}): {err.details()}", file=sys.stderr)
            return int(code.value[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
