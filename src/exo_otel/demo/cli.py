"""The ``exo-otel`` command: serve the embedded state manager, run the demo, or find a run's trace."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from exo_otel.demo.links import run_links
from exo_otel.embedded import EmbeddedStateManager


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exo-otel", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("state-manager", help="serve the embedded, in-memory state manager")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="port to bind (default: a free one)")
    serve.add_argument("--api-key", default=None, help="key clients must send (default: a random one)")
    serve.add_argument(
        "--expose-run-context", action="store_true",
        help="add run_id, graph_name and parents to enqueued states",
    )
    demo = commands.add_parser(
        "demo", help="run the instrumented demo graph on the embedded state manager and print its traces"
    )
    demo.add_argument("--runs", type=_positive_int, default=3, help="runs to trigger (default 3)")
    demo.add_argument(
        "--hold", type=_seconds, default=0.0, metavar="SECONDS",
        help="keep serving metrics this long after the runs finished, for a Prometheus scrape "
        "(SIGINT/SIGTERM ends it early)",
    )
    demo.add_argument("--interval", type=_seconds, default=0.0, metavar="SECONDS",
                      help="pause between two triggers (default 0)")
    demo.add_argument(
        "--prometheus", action="store_true", default=None,
        help="serve metrics for Prometheus on $OTEL_EXPORTER_PROMETHEUS_HOST:$OTEL_EXPORTER_PROMETHEUS_PORT "
        "(default 127.0.0.1:9464); same as OTEL_METRICS_EXPORTER=prometheus",
    )
    demo.add_argument("--timeout", type=_seconds, default=30.0, metavar="SECONDS",
                      help="bound on each wait of the demo (default 30)")
    trace_id = commands.add_parser("trace-id", help="print the trace id (32 hex digits) of a run")
    trace_id.add_argument("run_id", help="the run id as Exosphere prints it")
    links = commands.add_parser(
        "links", help="print the Jaeger and Grafana Explore URLs of a run's trace "
        "($EXO_OTEL_JAEGER_URL, $EXO_OTEL_GRAFANA_URL)",
    )
    links.add_argument("run_id", help="the run id as Exosphere prints it")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds")
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
    from exo_otel.demo.run import DemoOptions, run_demo

    return run_demo(
        DemoOptions(
            runs=args.runs, hold_s=args.hold, interval_s=args.interval, prometheus=args.prometheus,
            timeout_s=args.timeout,
        )
    )


def _links(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    # Surrounding blanks come from copy and paste; Exosphere run ids never have them.
    run_id = args.run_id.strip()
    if not run_id:
        parser.error(f"{args.command}: RUN_ID is empty")  # exits with status 2
    if not run_id.isascii() and run_id != run_id.encode("utf-8", "replace").decode("utf-8"):
        # Bytes that are not UTF-8 reach argv as lone surrogates: no run id looks like that.
        parser.error(f"{args.command}: RUN_ID is not valid UTF-8 text")
    links = run_links(run_id)
    if args.command == "trace-id":
        print(links.trace_id)
    else:
        print(f"jaeger:  {links.jaeger}")
        print(f"grafana: {links.grafana}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
