"""The instrumentation's command line: ``python -m exo_otel trace-id RUN_ID`` prints a run's trace id.

It needs nothing but this distribution (no server, no network): the trace id is derived from the
run id. The demo distribution's ``exo-otel`` command checks run ids with `checked_run_id` too.
"""

from __future__ import annotations

import argparse
import sys

from exo_otel.core.ids import format_trace_id, is_uuid_run_id


def checked_run_id(parser: argparse.ArgumentParser, command: str, raw: str) -> str:
    """The run id as given on a command line, stripped; exits with status 2 when it cannot be one, and
    warns on stderr when it is not a UUID (a typo still gives a valid-looking trace id: a hash)."""
    # Surrounding blanks come from copy and paste; Exosphere run ids never have them.
    run_id = raw.strip()
    if not run_id:
        parser.error(f"{command}: RUN_ID is empty")
    if not run_id.isascii() and run_id != run_id.encode("utf-8", "replace").decode("utf-8"):
        # Bytes that are not UTF-8 reach argv as lone surrogates: no run id looks like that.
        parser.error(f"{command}: RUN_ID is not valid UTF-8 text")
    if not is_uuid_run_id(run_id):
        print(
            f"{parser.prog}: warning: {run_id!r} is not a UUID, as Exosphere run ids are (a typo?); "
            "its trace id is a hash of the text",
            file=sys.stderr,
        )
    return run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exo_otel",
        description="exo_otel, OpenTelemetry for Exosphere: a run's trace id from its run id.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    trace_id = commands.add_parser(
        "trace-id",
        help="print the trace id (32 hex digits) of a run",
        description="The trace id is derived from the run id: no lookup, nothing needs to be running.",
    )
    trace_id.add_argument("run_id", metavar="RUN_ID", help="the run id as Exosphere prints it")
    args = parser.parse_args(argv)
    print(format_trace_id(checked_run_id(parser, args.command, args.run_id)))
    return 0
