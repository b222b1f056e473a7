"""The ``exo-otel`` command: serve the embedded state manager, or run the demo."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

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
    commands.add_parser("demo", help="run a small graph on the embedded state manager and exit")
    return parser


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
    args = _parser().parse_args(argv)
    if args.command == "state-manager":
        try:
            return asyncio.run(_serve(args))
        except OSError as exc:
            print(f"exo-otel: cannot serve: {exc}", file=sys.stderr)
            return 1
    from exo_otel.demo import run_demo

    return run_demo()


if __name__ == "__main__":
    sys.exit(main())
