"""How every `maas` command ends: its result as one JSON document (`--json`)
or for a person, and a failure as an exit status that follows the gRPC status.

Exit statuses, the Node example's convention (examples/node/client.js):
0 success; a failed call exits with its gRPC status code (3 INVALID_ARGUMENT,
5 NOT_FOUND, 7 PERMISSION_DENIED, 14 UNAVAILABLE, 16 UNAUTHENTICATED, ...);
2 bad command-line use (click's own, also UNKNOWN's code); 1 anything else."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Any, NoReturn

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

EXIT_FAILURE = 1
EXIT_USAGE = 2
# Wider than any table this CLI prints.
UNBOUNDED_WIDTH = 100_000

EXIT_STATUS_HELP = (
    "Exit status: 0 done; a failed call exits with its gRPC status code "
    "(3 INVALID_ARGUMENT, 5 NOT_FOUND, 7 PERMISSION_DENIED, 8 RESOURCE_EXHAUSTED, "
    "14 UNAVAILABLE, 16 UNAUTHENTICATED, ...); 2 bad command-line use; 1 anything else. "
    "With --json a failure is one JSON object on stderr: "
    '{"error": {"code": "NOT_FOUND", "status": 5, "message": "..."}}.'
)

# Whether the running command was given --json; set as its options are parsed,
# so a failure anywhere is reported in the same form.
_json_mode: ContextVar[bool] = ContextVar("json_mode", default=False)


def _remember_json_mode(value: bool) -> bool:
    _json_mode.set(value)
    return value


JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="print one JSON document on stdout, nothing else; errors as JSON on stderr",
        callback=_remember_json_mode,
    ),
]

console = Console()
errors = Console(stderr=True)


class CommandFailed(Exception):
    """A failure the command line finds itself, named by the gRPC status it matches."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def exit_code(code: grpc.StatusCode) -> int:
    """The one mapping from a gRPC status to the process's exit status."""
    value: int = code.value[0]
    return value


def json_mode() -> bool:
    """Whether the running command was given --json."""
    return _json_mode.get()


def fail(code: grpc.StatusCode, message: str) -> NoReturn:
    """Reports a failure on stderr and exits with the status's code."""
    if json_mode():
        error = {"code": code.name, "status": exit_code(code), "message": message}
        typer.echo(json.dumps({"error": error}), err=True)
    else:
        errors.print(f"[red]{code.name}[/red]: {message}", highlight=False, markup=True)
    raise typer.Exit(exit_code(code))


def bad_usage(message: str) -> NoReturn:
    """A command line this command cannot run (exit 2). With --json, reported
    as JSON like any failure; a line click cannot even parse stays click's text."""
    if not json_mode():
        raise typer.BadParameter(message)
    error = {"code": "USAGE", "status": EXIT_USAGE, "message": message}
    typer.echo(json.dumps({"error": error}), err=True)
    raise typer.Exit(EXIT_USAGE)


@contextmanager
def failures() -> Iterator[None]:
    """Turns a failed rpc (or a CommandFailed) into its report and exit status."""
    try:
        yield
    except grpc.aio.AioRpcError as err:
        fail(err.code(), err.details() or "")
    except CommandFailed as err:
        fail(err.code, err.message)


def to_dict(message: Message) -> dict[str, Any]:
    """The message in protobuf's JSON mapping: field names as in the .proto,
    every field (zeros too), 64-bit integers as numbers."""
    return MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )


def print_json(document: object) -> None:
    """The command's one JSON document on stdout."""
    typer.echo(json.dumps(document, indent=2, ensure_ascii=False))


def print_table(table: RenderableType, out: Console | None = None) -> None:
    """Prints the table at least as wide as its widest word, so an id is
    never cut: narrower columns wrap first; on a terminal too narrow even for
    that, lines run past its edge rather than lose characters."""
    out = out or console
    # Measured unbounded: a measurement is otherwise clamped to the terminal's width.
    unbounded = out.options.update(max_width=UNBOUNDED_WIDTH)
    needed = Measurement.get(out, unbounded, table).minimum
    if needed > out.width:
        # print(width=) cannot exceed the console's own width: a wider console on the same file.
        out = Console(
            file=out.file,
            width=needed,
            force_terminal=out.is_terminal,
            color_system=out.color_system,  # type: ignore[arg-type]
        )
    out.print(table)


def print_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], as_json: bool) -> None:
    """Records as one JSON list (every field), or as a table of `columns`."""
    if as_json:
        print_json(list(rows))
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    print_table(table)


def print_record(fields: Sequence[tuple[str, str]], out: Console | None = None) -> None:
    """One record as `name: value` lines: whole values at any width."""
    out = out or console
    width = max((len(name) for name, _ in fields), default=0)
    for name, value in fields:
        out.print(Text.assemble((name.ljust(width), "bold"), "  ", value), soft_wrap=True)


def id_table(*columns: str, ids: Sequence[str] = ()) -> Table:
    """A table whose `ids` columns never wrap."""
    table = Table()
    for name in columns:
        table.add_column(name, no_wrap=name in ids)
    return table
