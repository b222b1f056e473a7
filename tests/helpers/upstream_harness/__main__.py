"""``python -m helpers.upstream_harness build|source|python|serve``: the harness from a shell."""

from __future__ import annotations

import argparse
import contextlib
import signal

from . import in_process_server, secantus_database, server_python, state_manager_source, uvicorn_server
from .processes import Settings
from .venvs import SIDE_PIP


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m helpers.upstream_harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("source", help="print the extracted state-manager folder")
    python = sub.add_parser("python", help="build if needed; print the server venv's python")
    python.add_argument("--pip", nargs="*", default=[], help="extra pip arguments for the venv")
    serve = sub.add_parser("serve", help="serve until Ctrl-C; print the URIs and the API key")
    serve.add_argument("--db", choices=["memory", "secantus"], default="memory")
    serve.add_argument("--instances", type=int, default=1, help="servers (memory) or processes (secantus)")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn workers per process (secantus)")
    serve.add_argument("--instrument", action="store_true",
                       help="under opentelemetry-instrument with exo_otel's state manager side (secantus)")
    serve.add_argument("--pip", nargs="*", default=[])
    args = parser.parse_args()
    if args.command == "source":
        try:
            print(state_manager_source())
        except RuntimeError as exc:
            raise SystemExit(f"upstream_harness: {exc}") from None
    elif args.command == "python":
        print(server_python(args.pip))
    elif args.db == "memory":
        with in_process_server(args.instances, pip=args.pip) as server:
            _announce(server.uris, server.api_key)
    else:
        pip = [*args.pip, *SIDE_PIP.split()] if args.instrument else args.pip
        with secantus_database() as db:
            settings = Settings(mongo_uri=db.uri)
            servers = [
                uvicorn_server(settings, workers=args.workers, instrument=args.instrument, pip=pip)
                for _ in range(args.instances)
            ]
            with contextlib.ExitStack() as stack:
                uris = [stack.enter_context(s).uri for s in servers]
                _announce(tuple(uris), settings.api_key)


def _announce(uris: tuple[str, ...], key: str) -> None:
    for uri in uris:
        print(f"UPSTREAM_SM_URI={uri}")
    print(f"UPSTREAM_SM_KEY={key}", flush=True)
    signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # taken by sigwait, then the servers stop
    signal.sigwait(signals)


if __name__ == "__main__":
    main()
