"""The ``exo-otel`` command: serve the embedded state manager, run the demo, or find a run's trace."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import textwrap
from collections.abc import Sequence
from importlib import metadata
from typing import Final

from exo_otel.cli import checked_run_id
from exo_otel.version import __version__
from exo_otel_demo.embedded import EmbeddedStateManager
from exo_otel_demo.links import run_links

DESCRIPTION: Final = (
    "exo-otel: OpenTelemetry for Exosphere. Runs the instrumented demo, serves the embedded state "
    "manager, and turns a run id into its trace id and links."
)


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps help at blanks only: variable names, options and URLs are never cut in two."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_long_words=False, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(
            " ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
            break_long_words=False, break_on_hyphens=False,
        )


def _version() -> str:
    parts = [f"exo-otel {__version__}"]
    for distribution in ("exospherehost", "opentelemetry-sdk"):
        try:
            parts.append(f"{distribution} {metadata.version(distribution)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{distribution} not installed")
    return f"{parts[0]} ({', '.join(parts[1:])})"


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str, description: str
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name, help=summary, description=f"{summary[0].upper()}{summary[1:]}. {description}",
        formatter_class=_HelpFormatter,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exo-otel", description=DESCRIPTION, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = _command(
        commands, "demo", "run the instrumented demo graph and print each run's trace",
        "Everything runs in this process: an embedded state manager, a runtime and the trigger. Spans "
        "stay in memory for the terminal waterfall; set OTEL_EXPORTER_OTLP_ENDPOINT to export them (and "
        "the metrics) over OTLP, and the Jaeger and Grafana links are printed too.",
    )
    demo.add_argument("--runs", type=_positive_int, default=3, metavar="N",
                      help="runs to trigger (default 3)")
    demo.add_argument("--interval", type=_seconds, default=0.0, metavar="SECONDS",
                      help="pause between two triggers (default 0)")
    demo.add_argument(
        "--hold", type=_seconds, default=0.0, metavar="SECONDS",
        help="keep serving metrics this long after the runs, for a Prometheus scrape (Ctrl-C ends it early)",
    )
    demo.add_argument(
        "--prometheus", action="store_true", default=None,
        help="serve metrics for Prometheus on OTEL_EXPORTER_PROMETHEUS_HOST and "
        "OTEL_EXPORTER_PROMETHEUS_PORT (default 127.0.0.1:9464); the same as "
        "OTEL_METRICS_EXPORTER=prometheus",
    )
    demo.add_argument("--timeout", type=_seconds, default=30.0, metavar="SECONDS",
                      help="bound on each wait of the demo (default 30)")
    demo.add_argument(
        "--server-side", action="store_true",
        help="load exo_otel's state manager side into the embedded state manager, as in production: "
        "the server emits each run's root (run GRAPH), its outcome (settle GRAPH) and the node spans",
    )
    serve = _command(
        commands, "state-manager", "serve the embedded, in-memory state manager",
        "The upstream state manager's HTTP API, in memory, until Ctrl-C. It prints the settings a runtime "
        "and a trigger need (EXOSPHERE_STATE_MANAGER_URI and EXOSPHERE_API_KEY), then a ready line.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=0, help="port to bind (default: a free one)")
    serve.add_argument("--api-key", default=None, type=_api_key,
                       help="key clients must send (default: a random one; not empty)")
    serve.add_argument(
        "--expose-run-context", action="store_true",
        help="add run_id, graph_name and parents to enqueued states",
    )
    trace_id = _command(
        commands, "trace-id", "print the trace id (32 hex digits) of a run",
        "The trace id is derived from the run id: no lookup, nothing needs to be running.",
    )
    trace_id.add_argument("run_id", metavar="RUN_ID", help="the run id as Exosphere prints it")
    links = _command(
        commands, "links", "print where to open a run's trace",
        "Its Jaeger page, the Grafana runs dashboard at the run, and Grafana Explore on the trace. "
        "EXO_OTEL_JAEGER_URL and EXO_OTEL_GRAFANA_URL set the base URLs (default: the local stack of "
        "deploy/jaeger).",
    )
    links.add_argument("run_id", metavar="RUN_ID", help="the run id as Exosphere prints it")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (0 to 65535), got {text!r}")
    return int(text)


def _api_key(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the API key must not be empty (leave it out for a random one)")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds (0 or more), got {text!r}")
    return value


async def _serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    sm = EmbeddedStateManager(
        api_key=args.api_key, host=args.host, port=args.port, expose_run_context=args.expose_run_context
    )
    async with sm:
        print(f"EXOSPHERE_STATE_MANAGER_URI={sm.uri}", flush=True)
        print(f"EXOSPHERE_API_KEY={sm.api_key}", flush=True)
        print(f"ready: the embedded state manager serves {sm.uri}; Ctrl-C stops it", flush=True)
        await stop.wait()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``exo-otel`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "state-manager":
        try:
            return asyncio.run(_serve(args))
        except OSError as exc:
            print(f"exo-otel: cannot serve: {exc}", file=sys.stderr)
            return 1
    if args.command in ("trace-id", "links"):
        return _links(parser, args)
    # Imported here: the SDK, the exporters and the demo graph load only for the demo.
    from exo_otel_demo.run import DemoOptions, run_demo

    return run_demo(
        DemoOptions(
            runs=args.runs, hold_s=args.hold, interval_s=args.interval, prometheus=args.prometheus,
            timeout_s=args.timeout, server_side=args.server_side,
        )
    )


def _links(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    run_id = checked_run_id(parser, args.command, args.run_id)
    links = run_links(run_id)
    if args.command == "trace-id":
        print(links.trace_id)
    else:
        print(f"jaeger:  {links.jaeger}")
        print(f"grafana: {links.grafana}")
        print(f"explore: {links.explore}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
